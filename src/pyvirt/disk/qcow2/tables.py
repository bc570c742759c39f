"""L1/L2 table entries, big-endian tables as native arrays, and the LRU
cache of tables. Pure code: nothing here reads or writes a file.

L1 entry:  bits 9-55 offset of an L2 table, bit 63 COPIED (refcount is 1).
L2 entry:  bit 63 COPIED, bit 62 compressed; standard clusters: bit 0 reads
           as zeros, bits 9-55 host cluster offset; compressed clusters:
           host byte offset in the low `x` bits and (sectors - 1) above them,
           x = 62 - (cluster_bits - 8).
A table is held as `array('Q')` in host byte order, converted with one
byteswap per load/store; an entry is a plain int.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55
L1E_RESERVED = 0x7F00_0000_0000_01FF
L2E_STD_RESERVED = 0x3F00_0000_0000_01FE
NOT_COPIED = OFLAG_COPIED - 1  # mask that clears bit 63

# Cluster types (what an L2 entry says about its guest cluster)
UNALLOCATED, ZERO_PLAIN, ZERO_ALLOC, NORMAL, COMPRESSED = range(5)
KIND_NAMES = {UNALLOCATED: "unallocated", ZERO_PLAIN: "zero", ZERO_ALLOC: "zero", NORMAL: "data",
              COMPRESSED: "compressed"}

_SWAP = sys.byteorder == "little"


def load_table(buf: bytes | bytearray | memoryview) -> array[int]:
    """Big-endian u64s as a native array."""
    arr = array("Q")
    arr.frombytes(buf)
    if _SWAP:
        arr.byteswap()
    return arr


def dump_table(arr: array[int], start: int = 0, end: int | None = None) -> bytes:
    """Entries [start, end) of a native array as big-endian bytes."""
    part = arr[start:end] if (start or end is not None) else array("Q", arr)
    if _SWAP:
        part.byteswap()
    return part.tobytes()


def cluster_type(entry: int) -> int:
    if entry & OFLAG_COMPRESSED:
        return COMPRESSED
    if entry & OFLAG_ZERO:
        return ZERO_ALLOC if entry & OFFSET_MASK else ZERO_PLAIN
    if entry & OFFSET_MASK:
        return NORMAL
    return UNALLOCATED


@dataclass(frozen=True)
class CompressedLayout:
    """Where a compressed cluster's descriptor keeps its offset and size."""

    cluster_bits: int

    @property
    def shift(self) -> int:
        return 62 - (self.cluster_bits - 8)

    def decode(self, entry: int) -> tuple[int, int]:
        """(host byte offset, bytes the compressed data may span from it)."""
        shift = self.shift
        offset = entry & ((1 << shift) - 1)
        sectors = ((entry >> shift) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        return offset, sectors * 512 - (offset & 511)

    def encode(self, offset: int, length: int) -> int:
        """The L2 entry for `length` compressed bytes at `offset`."""
        sectors = ((offset & 511) + length + 511) >> 9
        if not 1 <= sectors <= 1 << (self.cluster_bits - 8) or offset >> self.shift:
            raise ValueError(f"compressed cluster {offset:#x}+{length:#x} does not fit a descriptor")
        return OFLAG_COMPRESSED | ((sectors - 1) << self.shift) | offset

    def host_clusters(self, entry: int) -> range:
        """Host cluster indices the descriptor's sectors touch (what refcounts count)."""
        offset, _ = self.decode(entry)
        sectors = ((entry >> self.shift) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        first = (offset & ~511) >> self.cluster_bits
        last = ((offset & ~511) + sectors * 512 - 1) >> self.cluster_bits
        return range(first, last + 1)


@dataclass(frozen=True)
class Extent:
    """A run of guest bytes with one allocation state at one layer.

    kind: "data" (host_offset is where it starts in the image file),
    "zero" (reads as zeros without reading the backing file),
    "unallocated" (falls through to the backing file, or zeros),
    "compressed" (host_offset None).
    """

    start: int
    length: int
    kind: str
    host_offset: int | None = None


def iter_entry_runs(entries: array[int], first: int, count: int, cluster_bits: int) -> Iterator[tuple[int, int, int, int]]:
    """Group entries[first:first+count] into runs of one kind:
    yields (index, n, kind, host_offset or 0); data runs are host-contiguous."""
    i, end = first, first + count
    cs = 1 << cluster_bits
    while i < end:
        e = entries[i]
        kind = cluster_type(e)
        j = i + 1
        if kind == NORMAL:
            host = e & OFFSET_MASK
            nxt = host + cs
            while j < end:
                f = entries[j]
                if cluster_type(f) != NORMAL or f & OFFSET_MASK != nxt:
                    break
                nxt += cs
                j += 1
            yield i, j - i, kind, host
        elif kind == COMPRESSED:
            yield i, 1, kind, 0
        else:
            while j < end and cluster_type(entries[j]) == kind:
                j += 1
            yield i, j - i, kind, 0
        i = j


class Table:
    """A cached metadata cluster: an L2 table or a refcount block."""

    __slots__ = ("offset", "entries", "dirty")

    def __init__(self, offset: int, entries: array[int], dirty: bool = False) -> None:
        self.offset = offset
        self.entries = entries
        self.dirty = dirty


class TableCache:
    """An LRU cache of tables keyed by file offset. A dirty table is handed
    to `store` before it is evicted; `load` reads a missing one."""

    def __init__(self, capacity: int, load: Callable[[int], array[int]], store: Callable[[Table], None]) -> None:
        self.capacity = max(2, capacity)
        self._load = load
        self._store = store
        self._tables: OrderedDict[int, Table] = OrderedDict()

    def get(self, offset: int) -> Table:
        tables = self._tables
        t = tables.get(offset)
        if t is not None:
            tables.move_to_end(offset)
            return t
        entries = self._load(offset)
        return self._insert(Table(offset, entries))

    def peek(self, offset: int) -> Table | None:
        return self._tables.get(offset)

    def add(self, offset: int, entries: array[int]) -> Table:
        """Install a new table (dirty) at `offset`, replacing a stale one."""
        self._tables.pop(offset, None)
        return self._insert(Table(offset, entries, dirty=True))

    def _insert(self, t: Table) -> Table:
        while len(self._tables) >= self.capacity:
            _, old = next(iter(self._tables.items()))
            if old.dirty:
                self._store(old)  # may itself touch other caches, never this one's order
                old.dirty = False
            self._tables.pop(old.offset, None)
        self._tables[t.offset] = t
        return t

    def drop(self, offset: int) -> Table | None:
        return self._tables.pop(offset, None)

    def dirty(self) -> list[Table]:
        return sorted((t for t in self._tables.values() if t.dirty), key=lambda t: t.offset)

    def has_dirty(self) -> bool:
        return any(t.dirty for t in self._tables.values())

    def clear(self) -> None:
        self._tables.clear()

    def __len__(self) -> int:
        return len(self._tables)
