"""Regions and the bounds-checked GuestMemory interface."""

from __future__ import annotations

import bisect
import ctypes
import mmap
import struct

from .._record import Record
from .errors import GuestMemoryError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

PAGE_SIZE = 4096


class Region(Record):
    """`size` bytes of host memory that the guest sees at `gpa`; `view` is a
    memoryview of `buf`."""

    __slots__ = ("gpa", "size", "buf", "view", "file_backed")
    __match_args__ = ("gpa", "size", "buf")
    gpa: int
    size: int
    buf: "mmap.mmap | bytearray"
    view: memoryview
    file_backed: bool  # some pages are private mappings of a file (map_file)

    def __init__(self, gpa: int, size: int, buf: "mmap.mmap | bytearray") -> None:
        self.gpa = gpa
        self.size = size
        self.buf = buf
        self.view = memoryview(buf)
        self.file_backed = False

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

    def map_file(self, fd: int, pieces: Iterable[tuple[int, int, int]]) -> int:
        """Replace parts of this (mmap) region with private mappings of the
        file `fd`: each piece is (offset in the region, length, offset in the
        file), all in whole pages. The pages load from the file on first
        touch, and a write copies the page, leaving the file alone. This is
        how a snapshot's memory is restored without reading it. Returns the
        number of pieces mapped."""
        if not isinstance(self.buf, mmap.mmap):
            raise GuestMemoryError("only mmap-backed regions can map a file")
        base = self.host_address()
        n = 0
        for offset, length, file_offset in pieces:
            if (offset | length | file_offset) % PAGE_SIZE or length <= 0 or offset < 0 or offset + length > self.size:
                raise GuestMemoryError(f"file mapping {offset:#x}+{length:#x} (file offset {file_offset:#x}) is "
                                       f"not whole pages inside the region of {self.size:#x} bytes")
            _map_fixed(base + offset, length, mmap.MAP_PRIVATE, fd, file_offset)
            self.file_backed = True
            n += 1
        return n

    def discard(self, offset: int, length: int) -> None:
        """Drop whole pages: they read as zero afterwards and cost no host memory."""
        if not isinstance(self.buf, mmap.mmap):
            self.view[offset:offset + length] = bytes(length)
        elif self.file_backed:
            # MADV_DONTNEED on a private file mapping would bring back the
            # file's bytes, not zeros: put anonymous memory there instead.
            _map_fixed(self.host_address() + offset, length,
                       mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0), -1, 0)
        else:
            self.buf.madvise(mmap.MADV_DONTNEED, offset, length)


_MAP_FIXED = 0x10
_libc_mmap = None


def _map_fixed(address: int, length: int, flags: int, fd: int, offset: int) -> None:
    """mmap(address, length, PROT_READ|PROT_WRITE, flags|MAP_FIXED, fd, offset)
    over memory this process already maps there (Python's mmap cannot)."""
    global _libc_mmap
    if _libc_mmap is None:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.mmap
        fn.restype = ctypes.c_void_p
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        _libc_mmap = fn
    got = _libc_mmap(address, length, mmap.PROT_READ | mmap.PROT_WRITE, flags | _MAP_FIXED, fd, offset)
    if got != address:
        import os

        err = ctypes.get_errno()
        raise GuestMemoryError(f"cannot map {length:#x} bytes at {address:#x}: {os.strerror(err)}")


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemory:
    """All of a guest's RAM, as sorted non-overlapping regions.

    Write tracking (`track_writes`): KVM's dirty log sees only what the guest
    writes; what the VMM itself writes (devices filling buffers, used rings)
    goes through this object, so while a migration runs every page handed out
    by `view` (and every page given back by `discard`) is recorded as
    written. Reads are recorded too (a view does not say which it is for):
    a few more pages are sent, none is missed.
    """

    # Page numbers (gpa >> 12) handed out while tracking; None: not tracking.
    written: set[int] | None = None

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
        w = self.written  # once: take_written may swap it meanwhile
        if w is not None and length:
            w.update(range(gpa >> 12, ((gpa + length - 1) >> 12) + 1))
        return r.view[off : off + length]

    def track_writes(self, on: bool) -> None:
        """Start (with an empty record) or stop recording written pages."""
        self.written = set() if on else None

    def take_written(self) -> set[int]:
        """The pages recorded since the last call; recording goes on."""
        taken = self.written
        if taken is None:
            return set()
        self.written = set()
        return taken

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
        r.discard(off, end - start)
        w = self.written
        if w is not None:
            w.update(range(start >> 12, end >> 12))

    def read_cstr(self, gpa: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string starting at gpa, at most `limit` bytes."""
        r, off = self._find(gpa, 1)
        end = min(r.size, off + limit)
        chunk = bytes(r.view[off:end])
        n = chunk.find(b"\0")
        return chunk if n < 0 else chunk[:n]
