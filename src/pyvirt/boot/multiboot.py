"""Multiboot (version 0.6.96) kernels.

A multiboot kernel has, 4-byte aligned within its first 8192 bytes, the header

    u32 magic = 0x1BADB002; u32 flags; u32 checksum   (magic + flags + checksum == 0)
    if flags bit 16: u32 header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr
    if flags bit 2:  u32 mode_type, width, height, depth

Flag bits 0-15 are requirements: pyvirt honours bit 0 (page-aligned modules: the
initrd always is) and bit 1 (memory information: always given), and ignores
bit 2 (a video mode; pyvirt has no framebuffer, so it reports none). Any other
requirement bit makes the image unbootable. Bits 16-31 are optional; bit 16
selects the "a.out kludge" addresses instead of the ELF program headers.

The kernel starts in 32-bit protected mode, paging off, with EAX = 0x2BADB002
and EBX = the physical address of the multiboot information at
layout.MULTIBOOT_INFO:

    0  flags   4 mem_lower  8 mem_upper  12 boot_device  16 cmdline
    20 mods_count  24 mods_addr  28..43 syms  44 mmap_length  48 mmap_addr
    52 drives_length  56 drives_addr  60 config_table  64 boot_loader_name
    68 apm_table  72..87 VBE  88..115 framebuffer

The memory map follows the info block (entries u32 size = 20, u64 base_addr,
u64 length, u32 type), then the boot loader name. The module list (one entry
{u32 mod_start, mod_end, string, reserved} for the initrd) and its string live
at layout.MODULES; the command line, whose first word is the kernel's file
name as with other boot loaders, at layout.CMDLINE.
"""

from __future__ import annotations

import struct

from pyvirt._record import FrozenRecord
from pyvirt.arch.x86 import layout
from pyvirt.memory import GuestMemory

from .common import (
    MODULES_SIZE,
    PAGE_SIZE,
    BootError,
    BootSpec,
    check_range,
    encode_cmdline,
    place_initrd,
    write_cmdline,
    zero,
)
from .elf import entry_physical, is_elf, load_segments, parse_elf
from .multiboot_header import (  # the header format, which boot detection reads without this loader
    BAD_CHECKSUM,
    HEADER_MAGIC,
    HF_AOUT_KLUDGE,
    HF_MEMORY_INFO,
    HF_PAGE_ALIGN,
    HF_VIDEO_MODE,
    NO_LOAD_ADDRESSES,
    SEARCH_LIMIT,
    MultibootHeader,
    find_header,
    has_bad_checksum,
)

BOOTLOADER_MAGIC = 0x2BADB002
HF_SUPPORTED_REQUIRED = HF_PAGE_ALIGN | HF_MEMORY_INFO | HF_VIDEO_MODE

# info flags
MBI_MEMORY = 1 << 0
MBI_BOOTDEV = 1 << 1
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MEM_MAP = 1 << 6
MBI_BOOT_LOADER_NAME = 1 << 9

INFO_SIZE = 116
MMAP_OFFSET = 128  # memory map, from the start of the info block
MMAP_ENTRY = struct.Struct("<IQQI")  # size, base_addr, length, type
MODULE_ENTRY = struct.Struct("<IIII")  # mod_start, mod_end, string, reserved
BOOT_LOADER_NAME = b"pyvirt"


class AoutPlan(FrozenRecord):
    """Where an a.out-kludge image goes: file bytes [file_offset, +size) to `start`,
    then zeroes up to `end`."""

    __slots__ = __match_args__ = ("file_offset", "size", "start", "end", "entry")
    file_offset: int
    size: int
    start: int
    end: int
    entry: int

    def __init__(self, file_offset: int, size: int, start: int, end: int, entry: int) -> None:
        self._init(file_offset, size, start, end, entry)


def plan_aout(mem: GuestMemory, data: bytes, hdr: MultibootHeader, mem_size: int) -> AoutPlan:
    """Check the header's address fields against the file and guest RAM."""
    if hdr.load_addr > hdr.header_addr:
        raise BootError(
            f"bad multiboot header: load_addr {hdr.load_addr:#x} is above header_addr {hdr.header_addr:#x}"
        )
    file_off = hdr.offset - (hdr.header_addr - hdr.load_addr)
    if file_off < 0:
        raise BootError(
            f"bad multiboot header: header_addr - load_addr ({hdr.header_addr - hdr.load_addr:#x}) is more than "
            f"the header's file offset ({hdr.offset:#x})"
        )
    if hdr.load_end_addr:
        if hdr.load_end_addr < hdr.load_addr:
            raise BootError(f"bad multiboot header: load_end_addr {hdr.load_end_addr:#x} is below load_addr")
        size = hdr.load_end_addr - hdr.load_addr
        if file_off + size > len(data):
            raise BootError(
                f"truncated multiboot image: it should hold {size:#x} bytes from offset {file_off:#x} but the file "
                f"is {len(data)} bytes; the file is damaged or incompletely copied"
            )
    else:
        size = len(data) - file_off
    end = hdr.load_addr + size
    if hdr.bss_end_addr:
        if hdr.bss_end_addr < end:
            raise BootError(
                f"bad multiboot header: bss_end_addr {hdr.bss_end_addr:#x} is below the loaded image end {end:#x}"
            )
        mem_end = hdr.bss_end_addr
    else:
        mem_end = end
    if not hdr.load_addr <= hdr.entry_addr < max(mem_end, hdr.load_addr + 1):
        raise BootError(f"bad multiboot header: entry_addr {hdr.entry_addr:#x} is outside the image")
    check_range(mem, mem_size, hdr.load_addr, mem_end - hdr.load_addr, "multiboot kernel")
    return AoutPlan(file_off, size, hdr.load_addr, mem_end, hdr.entry_addr)


def _file_name(path: str) -> str:
    """The last component of a POSIX path, as PurePosixPath(path).name (without pathlib)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return parts[-1] if parts else ""


def load_multiboot(
    mem: GuestMemory,
    data: bytes,
    *,
    mem_size: int,
    cmdline: str = "",
    initrd: bytes | None = None,
    kernel_name: str = "kernel",
    initrd_name: str = "initrd",
) -> BootSpec:
    hdr = find_header(data)
    if hdr is None:
        if has_bad_checksum(data):
            raise BootError(BAD_CHECKSUM)
        raise BootError("no multiboot header in the first 8192 bytes of the kernel")
    unsupported = hdr.flags & 0xFFFF & ~HF_SUPPORTED_REQUIRED
    if unsupported:
        bits = ", ".join(str(b) for b in range(16) if unsupported >> b & 1)
        raise BootError(f"the multiboot header requires features pyvirt does not provide (flag bits {bits})")

    name = _file_name(kernel_name) or "kernel"
    full = f"{name} {cmdline}" if cmdline else name
    cmd = encode_cmdline(full, layout.CMDLINE_MAX - 1)
    module_string = initrd_name.encode("utf-8", "replace").replace(b"\0", b"")[: MODULES_SIZE - MODULE_ENTRY.size - 1]

    # Validate and place everything before writing anything.
    plan = elf = None
    if hdr.aout_kludge:
        plan = plan_aout(mem, data, hdr, mem_size)
        start, end, entry = plan.start, plan.end, plan.entry
    elif is_elf(data):
        elf = parse_elf(data)
        start, end = elf.span()
        entry = entry_physical(elf)
    else:
        raise BootError(NO_LOAD_ADDRESSES)
    if entry >= 1 << 32:
        raise BootError(f"the multiboot entry point {entry:#x} is above 4 GiB")

    initrd_spec = None
    if initrd is not None:
        initrd_spec = (place_initrd(mem, mem_size, len(initrd), above=end), len(initrd))

    if elf is not None:
        start, end = load_segments(mem, data, elf, mem_size)
    elif plan is not None:
        mem.write(plan.start, memoryview(data)[plan.file_offset : plan.file_offset + plan.size])
        zero(mem, plan.start + plan.size, plan.end - plan.start - plan.size)
    if initrd is not None and initrd_spec is not None:
        mem.write(initrd_spec[0], initrd)

    write_cmdline(mem, cmd)
    write_info(mem, mem_size, initrd=initrd_spec, module_string=module_string)
    return BootSpec(
        protocol="multiboot",
        mode="protected32",
        entry=entry,
        regs={"rax": BOOTLOADER_MAGIC, "rbx": layout.MULTIBOOT_INFO},
        kernel_start=start,
        kernel_end=end,
        initrd=initrd_spec,
    )


def write_info(
    mem: GuestMemory, mem_size: int, *, initrd: tuple[int, int] | None, module_string: bytes
) -> None:
    """Fill the multiboot information page and the module list."""
    e820 = layout.e820_map(mem_size)
    lower = next((e.size for e in e820 if e.addr == 0 and e.type == layout.E820_RAM), 0)
    upper = next((e.size for e in e820 if e.addr == layout.HIMEM_START and e.type == layout.E820_RAM), 0)
    mmap_at = layout.MULTIBOOT_INFO + MMAP_OFFSET
    mmap_len = len(e820) * MMAP_ENTRY.size
    name_at = mmap_at + mmap_len
    if name_at + len(BOOT_LOADER_NAME) + 1 > layout.MULTIBOOT_INFO + PAGE_SIZE:
        raise BootError(f"the memory map has {len(e820)} entries, too many for the multiboot info page")

    page = bytearray(PAGE_SIZE)
    flags = MBI_MEMORY | MBI_CMDLINE | MBI_MEM_MAP | MBI_BOOT_LOADER_NAME
    struct.pack_into("<III", page, 4, min(lower // 1024, 640), upper // 1024, 0)
    struct.pack_into("<I", page, 16, layout.CMDLINE)
    if initrd is not None:
        flags |= MBI_MODS
        struct.pack_into("<II", page, 20, 1, layout.MODULES)
    struct.pack_into("<II", page, 44, mmap_len, mmap_at)
    struct.pack_into("<I", page, 64, name_at)
    struct.pack_into("<I", page, 0, flags)
    for i, e in enumerate(e820):
        MMAP_ENTRY.pack_into(page, MMAP_OFFSET + i * MMAP_ENTRY.size, MMAP_ENTRY.size - 4, e.addr, e.size, e.type)
    off = name_at - layout.MULTIBOOT_INFO
    page[off : off + len(BOOT_LOADER_NAME)] = BOOT_LOADER_NAME
    mem.write(layout.MULTIBOOT_INFO, page)

    modules = bytearray(MODULES_SIZE)
    if initrd is not None:
        string_at = layout.MODULES + MODULE_ENTRY.size
        MODULE_ENTRY.pack_into(modules, 0, initrd[0], initrd[0] + initrd[1], string_at, 0)
        modules[MODULE_ENTRY.size : MODULE_ENTRY.size + len(module_string)] = module_string
    mem.write(layout.MODULES, modules)
