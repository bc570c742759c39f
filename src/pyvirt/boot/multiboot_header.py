"""The multiboot (0.6.96) header: finding and parsing it in a kernel image.

    u32 magic = 0x1BADB002; u32 flags; u32 checksum   (magic + flags + checksum == 0)
    if flags bit 16: u32 header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr
    if flags bit 2:  u32 mode_type, width, height, depth

4-byte aligned within the first 8192 bytes. Boot detection looks for it in
every image, so it lives apart from the loader (multiboot.py), which a VM's
start imports only for a multiboot kernel; multiboot.py re-exports all of it.
"""

from __future__ import annotations

import struct

from pyvirt._record import FrozenRecord

from .common import BootError

HEADER_MAGIC = 0x1BADB002
SEARCH_LIMIT = 8192
BAD_CHECKSUM = "the multiboot header's checksum is wrong (magic + flags + checksum must be 0); the kernel is damaged"
NO_LOAD_ADDRESSES = (
    "the multiboot kernel is not ELF and its header has no load addresses (flag bit 16); "
    "link it as ELF or fill in the header's address fields"
)

# header flags
HF_PAGE_ALIGN = 1 << 0
HF_MEMORY_INFO = 1 << 1
HF_VIDEO_MODE = 1 << 2
HF_AOUT_KLUDGE = 1 << 16

_HEAD = struct.Struct("<III")
_AOUT = struct.Struct("<IIIII")
_VIDEO = struct.Struct("<IIII")


class MultibootHeader(FrozenRecord):
    __slots__ = __match_args__ = ("offset", "flags", "header_addr", "load_addr", "load_end_addr", "bss_end_addr",
                                  "entry_addr")
    offset: int  # file offset of the magic
    flags: int
    # a.out kludge (flag bit 16), else 0
    header_addr: int
    load_addr: int
    load_end_addr: int
    bss_end_addr: int
    entry_addr: int

    def __init__(self, offset: int, flags: int, header_addr: int = 0, load_addr: int = 0, load_end_addr: int = 0,
                 bss_end_addr: int = 0, entry_addr: int = 0) -> None:
        self._init(offset, flags, header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr)

    @property
    def aout_kludge(self) -> bool:
        return bool(self.flags & HF_AOUT_KLUDGE)


def find_header(data: bytes) -> MultibootHeader | None:
    """The first multiboot header with a valid checksum in the first 8 KiB, or None.

    Raises BootError if the header is found but its address fields are cut off.
    """
    limit = min(len(data), SEARCH_LIMIT) - _HEAD.size
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = _HEAD.unpack_from(data, off)
        if magic != HEADER_MAGIC or (magic + flags + checksum) & 0xFFFFFFFF:
            continue
        if not flags & HF_AOUT_KLUDGE:
            return MultibootHeader(off, flags)
        at = off + _HEAD.size
        if at + _AOUT.size > len(data):
            raise BootError("truncated multiboot header: its address fields run past the end of the file")
        return MultibootHeader(off, flags, *_AOUT.unpack_from(data, at))
    return None


def has_bad_checksum(data: bytes) -> bool:
    """True if a multiboot magic is present but no header checks out (for messages)."""
    magic = struct.pack("<I", HEADER_MAGIC)
    head = data[:SEARCH_LIMIT]
    pos = head.find(magic)
    while pos >= 0:
        if pos % 4 == 0:
            return True
        pos = head.find(magic, pos + 1)
    return False
