"""Refcounts: the refcount table, a cache of refcount blocks, and the cluster
allocator built on them.

Ordering (what keeps a crashed image free of anything worse than leaks):
  * increments are applied to cached blocks at once and written back
    before any table that references the cluster (`Qcow2Core` writes
    refcounts first, then L2 tables, then the L1 table);
  * decrements are queued (`defer_free`) and applied only after the tables
    that dropped the reference have been written (`apply_frees`), so a
    freed cluster is never reused while a table on disk still points to it;
  * a new refcount block is written before the table entry that points to
    it; a grown refcount table is written, with the blocks that count it,
    in free space past the end of the image, synced, and only then does the
    header point to it; the old table is freed after that.

Refcount blocks hold 1 << refcount_order bit entries; 8/16/32/64-bit blocks
are arrays of that width, 1/2/4-bit blocks are unpacked into bytes.
"""

from __future__ import annotations

import sys
from array import array

from .errors import Qcow2Error
from .header import MAX_REFTABLE_BYTES
from .tables import Table, TableCache, dump_table, load_table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .hostfile import HostFile

RT_OFFSET_MASK = 0xFFFF_FFFF_FFFF_FE00  # refcount table entry: bits 9-63
SLACK_CLUSTERS = 1024  # how far past the end of the file (and of our own allocations) a free cluster may lie
_TYPECODES = {3: "B", 4: "H", 5: "I", 6: "Q"}
_SWAP = sys.byteorder == "little"


def _typecode(order: int) -> str:
    return _TYPECODES.get(order, "B")


def unpack_refblock(buf: bytes, order: int) -> array[int]:
    """A refcount block's bytes as one array item per cluster."""
    if order >= 3:
        arr = array(_typecode(order))
        assert arr.itemsize == 1 << (order - 3)
        arr.frombytes(buf)
        if _SWAP and order > 3:
            arr.byteswap()
        return arr
    bits = 1 << order
    per = 8 // bits
    mask = (1 << bits) - 1
    out = array("B", bytes(len(buf) * per))
    for k in range(per):
        out[k::per] = array("B", [(b >> (k * bits)) & mask for b in buf])
    return out


def pack_refblock(arr: array[int], order: int) -> bytes:
    if order >= 3:
        part = array(arr.typecode, arr)
        if _SWAP and order > 3:
            part.byteswap()
        return part.tobytes()
    bits = 1 << order
    per = 8 // bits
    acc = [0] * (len(arr) // per)
    for k in range(per):
        acc = [a | (v << (k * bits)) for a, v in zip(acc, arr[k::per])]
    return bytes(acc)


class Refcounts:
    """The refcount structures of one open image, and its cluster allocator."""

    def __init__(self, f: HostFile, cluster_bits: int, order: int, table_offset: int, table_clusters: int,
                 on_table_moved: Callable[[int, int], None], cache_blocks: int = 16) -> None:
        self.f = f
        self.path = f.path
        self.cb = cluster_bits
        self.cs = 1 << cluster_bits
        self.order = order
        self.max = (1 << (1 << order)) - 1
        self.rb_bits = cluster_bits + 3 - order
        self.rb_mask = (1 << self.rb_bits) - 1
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        self.table = load_table(f.read(table_offset, table_clusters * self.cs, "the refcount table"))
        self._table_dirty: set[int] = set()  # 512-byte sectors of the table
        self._cache = TableCache(cache_blocks, self._load_block, self._store_block)
        self._pending: list[tuple[int, int]] = []
        self.pending_count = 0
        self._reserved: list[tuple[int, int]] = []
        self.hint = 1
        self.top = -(-f.size // self.cs)  # clusters up to here may be in use
        self.free_epoch = 0  # bumped whenever a refcount drops: cached "this cluster is ours" goes stale
        self.on_table_moved = on_table_moved
        self.protected: list[tuple[int, int, str]] = []  # (first cluster, count, what)

    # --- reading ------------------------------------------------------------
    def _block_offset(self, ti: int) -> int:
        e = self.table[ti]
        off = e & RT_OFFSET_MASK
        if e & ~RT_OFFSET_MASK or off & (self.cs - 1):
            raise Qcow2Error(f"{self.path}: refcount table entry {ti} ({e:#x}) is not a cluster offset "
                             "(run 'qemu-img check -r all')")
        return off

    def _load_block(self, off: int) -> array[int]:
        return unpack_refblock(self.f.read(off, self.cs, "a refcount block"), self.order)

    def _store_block(self, t: Table) -> None:
        self.f.write(t.offset, pack_refblock(t.entries, self.order))

    def refcount(self, cluster: int) -> int:
        ti = cluster >> self.rb_bits
        if ti >= len(self.table):
            return 0
        off = self._block_offset(ti)
        if not off:
            return 0
        return self._cache.get(off).entries[cluster & self.rb_mask]

    @property
    def covered_clusters(self) -> int:
        return len(self.table) << self.rb_bits

    # --- allocation -----------------------------------------------------------
    def alloc(self, n: int) -> int:
        """Allocate `n` contiguous clusters (refcount 1); their byte offset."""
        c = self._find_free(n)
        self._reserved.append((c, n))
        try:
            self._update(c, n, 1)
        finally:
            self._reserved.remove((c, n))
        self.hint = c + n
        self.top = max(self.top, c + n)
        return c << self.cb

    def incref(self, cluster: int, n: int = 1, delta: int = 1) -> None:
        """Change refcounts now (increments may be written back any time;
        callers decrement directly only for structures no table points to)."""
        self._reserved.append((cluster, n))
        try:
            self._update(cluster, n, delta)
        finally:
            self._reserved.remove((cluster, n))
        if delta < 0:
            self.hint = min(self.hint, max(cluster, 1))
            self.free_epoch += 1

    def defer_free(self, cluster: int, n: int = 1) -> None:
        """Drop one reference to `n` clusters once the tables are written."""
        self._pending.append((cluster, n))
        self.pending_count += n

    def apply_frees(self) -> bool:
        pending, self._pending = self._pending, []
        self.pending_count = 0
        for c, n in pending:
            self.incref(c, n, -1)
        return bool(pending)

    def _find_free(self, n: int) -> int:
        c = max(self.hint, 1)
        # Past the end of the file nothing is in use but what we allocated (written soon): a
        # cluster much further out means refcounts claim nonexistent clusters (a hostile image).
        limit = max(self.top, -(-self.f.size // self.cs)) + SLACK_CLUSTERS
        while True:
            if c > limit:
                raise Qcow2Error(f"{self.path}: the refcounts are corrupt: no free cluster before "
                                 f"{c << self.cb:#x}, far past the end of the file (run 'qemu-img check -r all')")
            c = self._past_reserved(c, n)
            ti = c >> self.rb_bits
            if ti < len(self.table):
                off = self._block_offset(ti)
                if off:
                    blk = self._cache.get(off).entries
                    try:
                        c = (ti << self.rb_bits) + blk.index(0, c & self.rb_mask)
                    except ValueError:
                        c = (ti + 1) << self.rb_bits
                        continue
                    if self._past_reserved(c, n) != c:
                        continue
            run = self._free_run(c, n)
            for rs, rn in self._reserved:
                if c < rs < c + run:
                    run = rs - c
            if run >= n:
                self._check_protected(c, n)
                return c
            c += run + 1

    def _past_reserved(self, c: int, n: int) -> int:
        moved = True
        while moved:
            moved = False
            for rs, rn in self._reserved:
                if c < rs + rn and rs < c + n:
                    c = rs + rn
                    moved = True
        return c

    def _free_run(self, c: int, n: int) -> int:
        """How many clusters from `c` (at most `n`) have refcount 0."""
        k = 0
        while k < n:
            x = c + k
            ti = x >> self.rb_bits
            if ti >= len(self.table):
                return n
            span = min(n - k, (1 << self.rb_bits) - (x & self.rb_mask))
            off = self._block_offset(ti)
            if off:
                start = x & self.rb_mask
                seg = self._cache.get(off).entries[start:start + span]
                if seg.count(0) != span:
                    return k + next(j for j, v in enumerate(seg) if v)
            k += span
        return n

    def _check_protected(self, c: int, n: int) -> None:
        for first, count, what in self.protected:
            if c < first + count and first < c + n:
                raise Qcow2Error(f"{self.path}: the refcounts are corrupt: cluster {c << self.cb:#x} is counted "
                                 f"free but holds {what} (run 'qemu-img check -r all')")

    def _update(self, c: int, n: int, delta: int) -> None:
        end = c + n
        tc = _typecode(self.order)
        while c < end:
            ti = c >> self.rb_bits
            if ti >= len(self.table):
                if delta < 0:
                    raise self._underflow(c)
                if c > max(self.top, -(-self.f.size // self.cs)) + SLACK_CLUSTERS:
                    raise Qcow2Error(f"{self.path}: a reference to cluster {c << self.cb:#x}, far past the end of "
                                     "the file (the image is corrupt)")
                self._grow_table(ti)
            off = self._block_offset(ti)
            if not off:
                if delta < 0:
                    raise self._underflow(c)
                off = self._new_block(ti)
            t = self._cache.get(off)
            blk = t.entries
            a = c & self.rb_mask
            b = min(end - (ti << self.rb_bits), 1 << self.rb_bits)
            seg = blk[a:b]
            if delta == 1 and seg.count(0) == b - a:
                blk[a:b] = array(tc, [1]) * (b - a)
            elif delta == -1 and seg.count(1) == b - a:
                blk[a:b] = array(tc, bytes(blk.itemsize * (b - a)))
            else:
                for j in range(a, b):
                    v = blk[j] + delta
                    if v < 0:
                        raise self._underflow((ti << self.rb_bits) + j)
                    if v > self.max:
                        raise Qcow2Error(f"{self.path}: refcount of cluster {((ti << self.rb_bits) + j) << self.cb:#x} "
                                         f"would exceed {self.max} (refcount_bits {1 << self.order})")
                    blk[j] = v
            t.dirty = True
            c = (ti << self.rb_bits) + b

    def _underflow(self, c: int) -> Qcow2Error:
        return Qcow2Error(f"{self.path}: the refcounts are corrupt: freeing cluster {c << self.cb:#x} whose "
                          "refcount is already 0 (run 'qemu-img check -r all')")

    def _new_block(self, ti: int) -> int:
        """Allocate the refcount block for table entry `ti`, inside the
        clusters it describes when it can (then it counts itself)."""
        r = self._find_free(1)
        entries = self._zero_block()
        self._reserved.append((r, 1))
        try:
            if r >> self.rb_bits == ti:
                entries[r & self.rb_mask] = 1
                self._cache.add(r << self.cb, entries)
            else:
                self._cache.add(r << self.cb, entries)
                self._update(r, 1, 1)
        finally:
            self._reserved.remove((r, 1))
        self.table[ti] = r << self.cb
        self._table_dirty.add(ti >> 6)
        if r == self.hint:
            self.hint = r + 1
        self.top = max(self.top, r + 1)
        return r << self.cb

    def _grow_table(self, min_ti: int) -> None:
        """Move the refcount table to a bigger one past the end of the image."""
        cs, cb, rb_bits = self.cs, self.cb, self.rb_bits
        old_len, epc = len(self.table), cs // 8
        start = max(old_len << rb_bits, -(-self.f.size // cs), *(rs + rn for rs, rn in self._reserved))
        first_ti = start >> rb_bits
        nb, new_len = 1, max(min_ti + 1, 2 * old_len)
        while True:
            new_len = -(-new_len // epc) * epc
            end = start + nb + new_len // epc
            need = ((end - 1) >> rb_bits) - first_ti + 1
            if need > nb:
                nb = need
            elif first_ti + nb > new_len:
                new_len = first_ti + nb
            else:
                break
        if new_len * 8 > MAX_REFTABLE_BYTES:
            raise Qcow2Error(f"{self.path}: the refcount table would exceed {MAX_REFTABLE_BYTES >> 20} MiB "
                             "(the image is too large for its cluster size)")
        tcl = new_len // epc
        blocks = []
        for k in range(nb):
            arr = self._zero_block()
            lo, hi = (first_ti + k) << rb_bits, (first_ti + k + 1) << rb_bits
            for x in range(max(lo, start), min(hi, end)):
                arr[x & self.rb_mask] = 1
            blocks.append(pack_refblock(arr, self.order))
        table = array("Q", self.table) + array("Q", bytes(8 * (new_len - old_len)))
        for k in range(nb):
            table[first_ti + k] = (start + k) << cb
        self.write_back(barrier=False)
        self.f.write(start << cb, b"".join(blocks))
        self.f.write((start + nb) << cb, dump_table(table))
        self.f.sync()
        old_off, old_clusters = self.table_offset, self.table_clusters
        self.on_table_moved((start + nb) << cb, tcl)
        self.table, self.table_offset, self.table_clusters = table, (start + nb) << cb, tcl
        self._table_dirty.clear()
        self.incref(old_off >> cb, old_clusters, -1)

    def _zero_block(self) -> array[int]:
        tc = _typecode(self.order)
        return array(tc, bytes((1 << self.rb_bits) * array(tc).itemsize))

    # --- write-back -------------------------------------------------------------
    def has_dirty(self) -> bool:
        return bool(self._table_dirty) or self._cache.has_dirty()

    def write_back(self, barrier: bool = True) -> None:
        """Write dirty blocks, then (after a sync when `barrier`) dirty table sectors."""
        wrote = False
        for t in self._cache.dirty():
            self._store_block(t)
            t.dirty = False
            wrote = True
        if self._table_dirty:
            if wrote and barrier:
                self.f.sync()
            for s in sorted(self._table_dirty):
                self.f.write(self.table_offset + s * 512, dump_table(self.table, s * 64, s * 64 + 64))
            self._table_dirty.clear()

    def drop_cache(self) -> None:
        self.write_back()
        self._cache.clear()
