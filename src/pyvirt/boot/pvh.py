"""PVH boot: an ELF kernel that announces a 32-bit physical entry point.

A kernel supports PVH when it carries the ELF note name "Xen", type 18
(XEN_ELFNOTE_PHYS32_ENTRY) whose descriptor is the entry address (4 or 8 bytes).
The loader copies the PT_LOAD segments to p_paddr and starts the vCPU in 32-bit
protected mode, paging off, at that address with EBX pointing at a
`struct hvm_start_info`:

    struct hvm_start_info {          /* xen/include/public/arch-x86/hvm/start_info.h */
        uint32_t magic;              /* 0x336ec578 */
        uint32_t version;            /* 1: memmap fields are valid */
        uint32_t flags;
        uint32_t nr_modules;
        uint64_t modlist_paddr;      /* array of struct hvm_modlist_entry */
        uint64_t cmdline_paddr;
        uint64_t rsdp_paddr;
        uint64_t memmap_paddr;       /* array of struct hvm_memmap_table_entry */
        uint32_t memmap_entries;
        uint32_t reserved;
    };
    struct hvm_memmap_table_entry { uint64_t addr, size; uint32_t type, reserved; };
    struct hvm_modlist_entry { uint64_t paddr, size, cmdline_paddr, reserved; };

pyvirt writes the start info at layout.PVH_INFO, the memory map right after it,
then the module list (the initrd, if any); the command line goes to
layout.CMDLINE. Memory map types are the E820 ones.
"""

from __future__ import annotations

import struct

from pyvirt.arch.x86 import layout
from pyvirt.memory import GuestMemory

from .common import PAGE_SIZE, BootError, BootSpec, encode_cmdline, place_initrd, write_cmdline
from .elf import ElfFile, entry_physical, load_segments

XEN_NOTE_NAME = b"Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18
HVM_START_MAGIC = 0x336EC578
HVM_START_VERSION = 1

START_INFO = struct.Struct("<IIIIQQQQII")  # 56 bytes
MEMMAP_ENTRY = struct.Struct("<QQII")  # 24 bytes
MODLIST_ENTRY = struct.Struct("<QQQQ")  # 32 bytes


def pvh_entry(elf: ElfFile) -> int | None:
    """The PHYS32_ENTRY address, or None if the kernel has no PVH note."""
    note = elf.find_note(XEN_NOTE_NAME, XEN_ELFNOTE_PHYS32_ENTRY)
    if note is None:
        return None
    if len(note.desc) == 4:
        return int(struct.unpack("<I", note.desc)[0])
    if len(note.desc) == 8:
        return int(struct.unpack("<Q", note.desc)[0])
    raise BootError(f"corrupt PVH note: its entry address is {len(note.desc)} bytes, expected 4 or 8")


def load_pvh(
    mem: GuestMemory,
    data: bytes,
    elf: ElfFile,
    *,
    mem_size: int,
    cmdline: str = "",
    initrd: bytes | None = None,
    rsdp_addr: int | None = None,
) -> BootSpec:
    entry = pvh_entry(elf)
    if entry is None:
        raise BootError("the kernel has no PVH entry note (Xen, type 18); build it with CONFIG_PVH=y")
    if entry >= 1 << 32:
        raise BootError(f"the PVH entry point {entry:#x} is above 4 GiB; a 32-bit entry must be below it")
    if not any(p.paddr <= entry < p.paddr + p.memsz for p in elf.loads):
        # Some toolchains record the entry as a link-time virtual address.
        entry = entry_physical(elf, entry)
    cmd = encode_cmdline(cmdline, layout.CMDLINE_MAX - 1)

    initrd_spec = None
    if initrd is not None:
        initrd_spec = (place_initrd(mem, mem_size, len(initrd), above=elf.span()[1]), len(initrd))
    start, end = load_segments(mem, data, elf, mem_size)
    if initrd is not None and initrd_spec is not None:
        mem.write(initrd_spec[0], initrd)
    write_cmdline(mem, cmd)
    write_start_info(mem, mem_size, rsdp_addr=rsdp_addr, initrd=initrd_spec)
    return BootSpec(
        protocol="pvh",
        mode="protected32",
        entry=entry,
        regs={"rbx": layout.PVH_INFO},
        kernel_start=start,
        kernel_end=end,
        initrd=initrd_spec,
    )


def write_start_info(
    mem: GuestMemory, mem_size: int, *, rsdp_addr: int | None, initrd: tuple[int, int] | None
) -> None:
    """Fill the PVH_INFO page: start info, memory map, module list."""
    e820 = layout.e820_map(mem_size)
    memmap_at = layout.PVH_INFO + START_INFO.size
    modlist_at = memmap_at + len(e820) * MEMMAP_ENTRY.size
    if modlist_at + MODLIST_ENTRY.size > layout.PVH_INFO + PAGE_SIZE:
        raise BootError(f"the memory map has {len(e820)} entries, too many for the PVH start info page")
    page = bytearray(PAGE_SIZE)
    START_INFO.pack_into(
        page, 0,
        HVM_START_MAGIC, HVM_START_VERSION, 0,
        1 if initrd else 0,
        modlist_at if initrd else 0,
        layout.CMDLINE,
        rsdp_addr or 0,
        memmap_at,
        len(e820),
        0,
    )
    for i, e in enumerate(e820):
        MEMMAP_ENTRY.pack_into(page, memmap_at - layout.PVH_INFO + i * MEMMAP_ENTRY.size, e.addr, e.size, e.type, 0)
    if initrd:
        MODLIST_ENTRY.pack_into(page, modlist_at - layout.PVH_INFO, initrd[0], initrd[1], 0, 0)
    mem.write(layout.PVH_INFO, page)
