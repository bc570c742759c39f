"""Regions and the bounds-checked GuestMemory interface."""

from __future__ import annotations

import bisect
import ctypes
import mmap
import struct
from .._record import Record
from .errors import GuestMemoryError

PAGE_SIZE = 4096


class Region(Record):
    """`size` bytes of host memory that the guest sees at `gpa`; `view` is a
    memoryview of `buf`."""

    __slots__ = ("gpa", "size", "buf", "view")
    __match_args__ = ("gpa", "size", "buf")
    gpa: int
    size: int
    buf: "mmap.mmap | bytearray"
    view: memoryview

    def __init__(self, gpa: int, size: int, buf: "mmap.mmap | bytearray") -> None:
        self.gpa = gpa
        self.size = size
        self.buf = buf
        self.view = memoryview(buf)

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def host_address(self) -> int:
        """Host virtual address of the region's first byte (for KVM slots)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.buf))

    @classmethod
    def anonymous(cls, gpa: int, size: int) -> "Region":
        """Zero-filled private memory, populated lazily by the kernel."""
        if size <= 0 or size % PAGE_SIZE:
            raise GuestMemoryError(f"region size {size:#x} must be a positive multiple of {PAGE_SIZE}")
        try:
            buf = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0),
                            mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise GuestMemoryError(f"cannot map {size >> 20} MiB of guest memory: {e.strerror}") from e
        if size >= 2 << 20 and hasattr(mmap, "MADV_HUGEPAGE"):
            # Transparent huge pages: one fault maps 2 MiB, and guest TLB misses
            # walk one level less. Harmless where THP is off.
            try:
                buf.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        return cls(gpa, size, buf)


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemory:
    """All of a guest's RAM, as sorted non-overlapping regions."""

    def __init__(self, regions: list[Region]) -> None:
        regions = sorted(regions, key=lambda r: r.gpa)
        for a, b in zip(regions, regions[1:]):
            if a.end > b.gpa:
                raise GuestMemoryError(f"regions overlap at {b.gpa:#x}")
        self.regions = regions
        self._starts = [r.gpa for r in regions]

    @classmethod
    def from_bytearray(cls, size: int, gpa: int = 0) -> "GuestMemory":
        """Plain-bytes guest memory for tests; no /dev/kvm, no mmap."""
        return cls([Region(gpa, size, bytearray(size))])

    @property
    def size(self) -> int:
        return sum(r.size for r in self.regions)

    def _find(self, gpa: int, length: int) -> tuple[Region, int]:
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0:
            r = self.regions[i]
            off = gpa - r.gpa
            if length >= 0 and off + length <= r.size:
                return r, off
        raise GuestMemoryError(f"guest access {gpa:#x}+{length:#x} is outside guest memory")

    def contains(self, gpa: int, length: int = 1) -> bool:
        try:
            self._find(gpa, length)
            return True
        except GuestMemoryError:
            return False

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy window onto guest memory (must not cross regions)."""
        r, off = self._find(gpa, length)
        return r.view[off : off + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: "bytes | bytearray | memoryview") -> None:
        self.view(gpa, len(data))[:] = data

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        self.view(gpa, length)[:] = bytes([byte]) * length

    def read_u16(self, gpa: int) -> int:
        return _U16.unpack(self.view(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return _U32.unpack(self.view(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return _U64.unpack(self.view(gpa, 8))[0]

    def write_u16(self, gpa: int, v: int) -> None:
        _U16.pack_into(self.view(gpa, 2), 0, v)

    def write_u32(self, gpa: int, v: int) -> None:
        _U32.pack_into(self.view(gpa, 4), 0, v)

    def write_u64(self, gpa: int, v: int) -> None:
        _U64.pack_into(self.view(gpa, 8), 0, v)

    def discard(self, gpa: int, length: int) -> None:
        """Give whole pages in [gpa, gpa+length) back to the host: they read as
        zero afterwards and cost no host memory until touched (balloon, free
        page reporting). Partial pages at the ends are left alone."""
        start = (gpa + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        end = (gpa + length) & ~(PAGE_SIZE - 1)
        if end <= start:
            return
        r, off = self._find(start, end - start)
        if isinstance(r.buf, mmap.mmap):
            r.buf.madvise(mmap.MADV_DONTNEED, off, end - start)
        else:
            r.view[off:off + end - start] = bytes(end - start)

    def read_cstr(self, gpa: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string starting at gpa, at most `limit` bytes."""
        r, off = self._find(gpa, 1)
        end = min(r.size, off + limit)
        chunk = bytes(r.view[off:end])
        n = chunk.find(b"\0")
        return chunk if n < 0 else chunk[:n]
