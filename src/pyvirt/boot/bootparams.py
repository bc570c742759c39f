"""Linux `struct boot_params` (the "zero page") and its setup header.

Offsets are those of Documentation/arch/x86/zero-page.rst and boot.rst. The setup
header sits at 0x1f1 both in a bzImage file and in boot_params; every field
offset below is relative to the start of boot_params (= of the file).

`SetupHeader.parse(data)` reads the header fields a loader needs into a
record; `build_zero_page` produces the 4 KiB boot_params for a given header
copy, command line, initrd and memory map.
"""

from __future__ import annotations

import struct

from pyvirt._record import FrozenRecord
from pyvirt.arch.x86 import layout

from .common import PAGE_SIZE, BootError

# boot_params fields outside the setup header
BP_ACPI_RSDP_ADDR = 0x070  # u64, protocol 2.14
BP_EXT_RAMDISK_IMAGE = 0x0C0  # u32
BP_EXT_RAMDISK_SIZE = 0x0C4  # u32
BP_EXT_CMD_LINE_PTR = 0x0C8  # u32
BP_E820_ENTRIES = 0x1E8  # u8
BP_SENTINEL = 0x1EF  # u8
BP_E820_TABLE = 0x2D0  # 128 x {u64 addr, u64 size, u32 type}
E820_MAX_ENTRIES_ZEROPAGE = 128
E820_ENTRY = struct.Struct("<QQI")

# setup header fields (offsets from the start of boot_params / the bzImage)
HDR_START = 0x1F1
HDR_MAX_END = 0x290  # edd_mbr_sig_buffer follows the header area
SETUP_SECTS = 0x1F1  # u8
BOOT_FLAG = 0x1FE  # u16 0xAA55
JUMP = 0x200  # u16; the second byte is the header length past 0x202
HEADER = 0x202  # "HdrS"
VERSION = 0x206  # u16
TYPE_OF_LOADER = 0x210  # u8
LOADFLAGS = 0x211  # u8
CODE32_START = 0x214  # u32
RAMDISK_IMAGE = 0x218  # u32
RAMDISK_SIZE = 0x21C  # u32
HEAP_END_PTR = 0x224  # u16
CMD_LINE_PTR = 0x228  # u32
INITRD_ADDR_MAX = 0x22C  # u32, 2.03+
KERNEL_ALIGNMENT = 0x230  # u32, 2.05+
RELOCATABLE_KERNEL = 0x234  # u8, 2.05+
MIN_ALIGNMENT = 0x235  # u8, 2.10+
XLOADFLAGS = 0x236  # u16, 2.12+
CMDLINE_SIZE = 0x238  # u32, 2.06+
PREF_ADDRESS = 0x258  # u64, 2.10+
INIT_SIZE = 0x260  # u32, 2.10+
HANDOVER_OFFSET = 0x264  # u32, 2.11+
KERNEL_INFO_OFFSET = 0x268  # u32, 2.15+

HDRS_MAGIC = b"HdrS"
BOOT_FLAG_MAGIC = 0xAA55

# loadflags
LOADED_HIGH = 0x01
KASLR_FLAG = 0x02
QUIET_FLAG = 0x20
KEEP_SEGMENTS = 0x40
CAN_USE_HEAP = 0x80

# xloadflags
XLF_KERNEL_64 = 0x01
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02
XLF_EFI_HANDOVER_32 = 0x04
XLF_EFI_HANDOVER_64 = 0x08
XLF_EFI_KEXEC = 0x10

TYPE_OF_LOADER_UNDEFINED = 0xFF  # "undefined" loader ID: pyvirt has none assigned
HEAP_END = 0xFE00  # end of the setup heap, relative to the real-mode code, minus 0x200
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF  # protocols before 2.03
MIN_VERSION = 0x0206


def _u8(data: bytes, off: int) -> int:
    return data[off]


def _u16(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", data, off)[0])


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def _u64(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", data, off)[0])


def format_version(version: int) -> str:
    return f"{version >> 8}.{version & 0xFF:02d}"


class SetupHeader(FrozenRecord):
    """The fields of a bzImage setup header that a 32/64-bit loader uses.

    Fields a protocol version does not define get the documented defaults.
    (A plain record, not a dataclass, like the other records a VM's start makes.)
    """

    __slots__ = __match_args__ = (
        "setup_sects", "version", "loadflags", "code32_start", "initrd_addr_max", "kernel_alignment",
        "relocatable_kernel", "min_alignment", "xloadflags", "cmdline_size", "pref_address", "init_size",
        "handover_offset", "kernel_info_offset", "header_end",
    )
    setup_sects: int  # 0 already replaced by 4
    version: int
    loadflags: int
    code32_start: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable_kernel: bool
    min_alignment: int
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int
    handover_offset: int
    kernel_info_offset: int
    header_end: int  # one past the last header byte (0x202 + byte at 0x201)

    def __init__(self, setup_sects: int, version: int, loadflags: int, code32_start: int, initrd_addr_max: int,
                 kernel_alignment: int, relocatable_kernel: bool, min_alignment: int, xloadflags: int,
                 cmdline_size: int, pref_address: int, init_size: int, handover_offset: int,
                 kernel_info_offset: int, header_end: int) -> None:
        self._init(setup_sects, version, loadflags, code32_start, initrd_addr_max, kernel_alignment,
                   relocatable_kernel, min_alignment, xloadflags, cmdline_size, pref_address, init_size,
                   handover_offset, kernel_info_offset, header_end)

    @property
    def setup_size(self) -> int:
        """Bytes of real-mode code (boot sector included) before the protected-mode part."""
        return (self.setup_sects + 1) * 512

    @classmethod
    def parse(cls, data: bytes) -> "SetupHeader":
        """Parse the setup header of a bzImage; BootError if it is not one pyvirt can boot."""
        if len(data) < 0x206 or data[HEADER : HEADER + 4] != HDRS_MAGIC:
            raise BootError("not a Linux bzImage (no 'HdrS' signature at 0x202)")
        version = _u16(data, VERSION) if len(data) >= VERSION + 2 else 0
        if version < MIN_VERSION:
            raise BootError(
                f"boot protocol {format_version(version)} is too old; pyvirt needs 2.06+ "
                f"(Linux 2.6.22 or newer)"
            )
        header_end = min(0x202 + data[0x201], HDR_MAX_END)
        # 2.06 defines fields up to cmdline_size (0x23c); newer ones go further.
        if header_end < CMDLINE_SIZE + 4:
            raise BootError(
                f"corrupt bzImage: its setup header ends at {header_end:#x} but boot protocol "
                f"{format_version(version)} needs it to reach {CMDLINE_SIZE + 4:#x}; the file is damaged"
            )
        if len(data) < header_end:
            raise BootError(
                f"truncated bzImage: the {len(data)}-byte file ends inside its setup header; "
                f"the file is damaged or incompletely copied"
            )
        padded = bytes(data[:HDR_MAX_END]).ljust(HDR_MAX_END, b"\0")
        # Bytes past header_end belong to the setup code, not the header: read as 0.
        padded = padded[:header_end].ljust(HDR_MAX_END, b"\0")
        v210 = version >= 0x020A
        initrd_addr_max = _u32(padded, INITRD_ADDR_MAX) or DEFAULT_INITRD_ADDR_MAX
        return cls(
            setup_sects=_u8(padded, SETUP_SECTS) or 4,
            version=version,
            loadflags=_u8(padded, LOADFLAGS),
            code32_start=_u32(padded, CODE32_START),
            initrd_addr_max=initrd_addr_max,
            kernel_alignment=_u32(padded, KERNEL_ALIGNMENT),
            relocatable_kernel=bool(_u8(padded, RELOCATABLE_KERNEL)),
            min_alignment=_u8(padded, MIN_ALIGNMENT) if v210 else 0,
            xloadflags=_u16(padded, XLOADFLAGS) if version >= 0x020C else 0,
            cmdline_size=_u32(padded, CMDLINE_SIZE),
            pref_address=_u64(padded, PREF_ADDRESS) if v210 else 0,
            init_size=_u32(padded, INIT_SIZE) if v210 else 0,
            handover_offset=_u32(padded, HANDOVER_OFFSET) if version >= 0x020B else 0,
            kernel_info_offset=_u32(padded, KERNEL_INFO_OFFSET) if version >= 0x020F else 0,
            header_end=header_end,
        )


def synthetic_header(cmdline_size: int) -> bytes:
    """A setup header for a kernel that has none (an ELF vmlinux): bytes
    HDR_START..HDR_MAX_END of boot_params, with the signature, version and the
    fields the kernel reads filled in."""
    hdr = bytearray(HDR_MAX_END)
    struct.pack_into("<H", hdr, BOOT_FLAG, BOOT_FLAG_MAGIC)
    hdr[JUMP] = 0xEB
    hdr[JUMP + 1] = (KERNEL_INFO_OFFSET + 4) - 0x202
    hdr[HEADER : HEADER + 4] = HDRS_MAGIC
    struct.pack_into("<H", hdr, VERSION, 0x020F)
    hdr[LOADFLAGS] = LOADED_HIGH
    struct.pack_into("<I", hdr, KERNEL_ALIGNMENT, 0x200000)
    struct.pack_into("<I", hdr, CMDLINE_SIZE, cmdline_size)
    struct.pack_into("<I", hdr, INITRD_ADDR_MAX, 0xFFFFFFFF)
    return bytes(hdr[HDR_START:])


def build_zero_page(
    header: bytes,
    *,
    mem_size: int,
    cmdline_ptr: int,
    initrd: tuple[int, int] | None,
    rsdp_addr: int | None,
    code32_start: int | None = None,
) -> bytes:
    """A 4 KiB boot_params: `header` (the bytes from 0x1f1 to the header end) copied
    in, the loader fields set, and the memory map from layout.e820_map."""
    if len(header) > HDR_MAX_END - HDR_START:
        raise BootError("setup header is longer than boot_params allows; the kernel is damaged")
    bp = bytearray(PAGE_SIZE)
    bp[HDR_START : HDR_START + len(header)] = header
    bp[TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED
    bp[LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<H", bp, HEAP_END_PTR, HEAP_END)
    struct.pack_into("<I", bp, CMD_LINE_PTR, cmdline_ptr)
    if code32_start is not None:
        struct.pack_into("<I", bp, CODE32_START, code32_start)
    if initrd is not None:
        struct.pack_into("<I", bp, RAMDISK_IMAGE, initrd[0] & 0xFFFFFFFF)
        struct.pack_into("<I", bp, RAMDISK_SIZE, initrd[1] & 0xFFFFFFFF)
        struct.pack_into("<I", bp, BP_EXT_RAMDISK_IMAGE, initrd[0] >> 32)
        struct.pack_into("<I", bp, BP_EXT_RAMDISK_SIZE, initrd[1] >> 32)
    if rsdp_addr:
        struct.pack_into("<Q", bp, BP_ACPI_RSDP_ADDR, rsdp_addr)
    e820 = layout.e820_map(mem_size)
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise BootError(f"the memory map has {len(e820)} entries; boot_params holds at most 128")
    bp[BP_E820_ENTRIES] = len(e820)
    for i, e in enumerate(e820):
        E820_ENTRY.pack_into(bp, BP_E820_TABLE + i * E820_ENTRY.size, e.addr, e.size, e.type)
    return bytes(bp)
