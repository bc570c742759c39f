"""The metadata of one open qcow2 image: header, L1 table, cached L2 tables,
refcounts, snapshot table, and the order in which changes reach the disk.

Crash safety: after a kill -9 at any point, `qemu-img check` finds at most
leaked clusters. The write order that guarantees it:

  1. allocate: the refcount increase goes into a cached refcount block;
  2. guest data goes to the new cluster at once (pwritev), before any table
     points to it (the L2 entry is changed in the cache only after that);
  3. write-back (`flush`, or evicting a dirty L2 table) writes refcount
     blocks (then refcount table entries) first, syncs, writes L2 tables,
     syncs, then L1 sectors: every table reaches the disk after the
     refcounts and the data it points to;
  4. freeing: the table entry is cleared first; the refcount decrease is
     queued (`Refcounts.defer_free`) and applied only after step 3 has
     written the tables (then synced), so no table on disk points to a
     cluster counted free, and a freed cluster is reused only after that;
  5. structures that move (L1 table on growth, refcount table, snapshot
     table) are written complete in new clusters and synced before the
     header points to them; the old copy is freed after the header write.
  Each sync is fdatasync, so the order also holds across a power loss.
  With lazy refcounts (a compatible feature) the dirty bit is set before
  the first change, and steps 3-4 skip the syncs between stages: after a
  crash the next writable open rebuilds the refcounts from the tables.

COPIED (bit 63) is kept exact in the active tables: set when a table or
cluster is allocated (its refcount is then 1), cleared on tables copied
on write (their clusters are shared), recomputed by the snapshot code.
"""

from __future__ import annotations

import dataclasses
from array import array

from .errors import Qcow2Error
from .header import INCOMPAT_DIRTY, MAX_L1_BYTES, Qcow2Header, pack_header
from .refcount import Refcounts
from .snapshot import SnapshotInfo, TruncatedTable, parse_snapshot_table
from .tables import (COMPRESSED, NOT_COPIED, OFFSET_MASK, OFLAG_COPIED, ZERO_ALLOC, NORMAL, CompressedLayout,
                     Table, TableCache, cluster_type, dump_table, load_table)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .hostfile import HostFile

L2_CACHE_BYTES = 32 << 20  # enough to map 256 GiB at 64 KiB clusters (qemu's default limit)
REFBLOCK_CACHE_BYTES = 4 << 20
MAX_PENDING_FREES = 4096  # clusters queued for freeing before an internal write-back


class Qcow2Core:
    """Everything but guest-data I/O: `Qcow2Image` drives it."""

    def __init__(self, f: HostFile, header: Qcow2Header, readonly: bool) -> None:
        self.f = f
        self.path = f.path
        self.header = header
        self.readonly = readonly
        self.cb = header.cluster_bits
        self.cs = 1 << self.cb
        self.l2_bits = self.cb - 3
        self.l2_mask = (1 << self.l2_bits) - 1
        self.version = header.version
        self.compressed = CompressedLayout(self.cb)
        self.l1 = self.read_l1(header.l1_table_offset, header.l1_size, "the L1 table")
        self._l1_dirty: set[int] = set()
        self.l2cache = TableCache(max(4, min(max(header.l1_size, 1), L2_CACHE_BYTES // self.cs)),
                                  self._load_l2, self._store_l2)
        self.rc = self._refcounts()
        self.snapshots, self.snapshot_table_size = self._read_snapshots()
        self.unsynced = False
        self._update_protected()

    def _refcounts(self) -> Refcounts:
        h = self.header
        return Refcounts(self.f, self.cb, h.refcount_order, h.refcount_table_offset, h.refcount_table_clusters,
                         self._reftable_moved, max(4, REFBLOCK_CACHE_BYTES // self.cs))

    def reload_refcounts(self) -> None:
        """Drop the refcount state and read it again (after the header points to new structures)."""
        self.rc = self._refcounts()
        self._update_protected()

    # --- fixed metadata ---------------------------------------------------------
    def read_l1(self, offset: int, size: int, what: str) -> array[int]:
        if size * 8 > MAX_L1_BYTES:
            raise Qcow2Error(f"{self.path}: {what} ({size} entries) is too large")
        return load_table(self.f.read(offset, size * 8, what)) if size else array("Q")

    def _read_snapshots(self) -> tuple[list[SnapshotInfo], int]:
        h = self.header
        if not h.nb_snapshots:
            return [], 0
        chunk = 1 << 16
        while True:
            n = min(chunk, self.f.size - h.snapshots_offset)
            buf = self.f.read(h.snapshots_offset, n, "the snapshot table")
            try:
                return parse_snapshot_table(buf, h.nb_snapshots, self.cs, self.f.size, self.path,
                                            h.snapshots_offset)
            except TruncatedTable:
                if n < chunk:
                    raise Qcow2Error(f"{self.path}: the snapshot table at {h.snapshots_offset:#x} runs past "
                                     "the end of the file") from None
                chunk *= 4

    def clusters(self, nbytes: int) -> int:
        return -(-nbytes // self.cs)

    def _update_protected(self) -> None:
        h, cb = self.header, self.cb
        prot = [(0, 1, "the header"), (h.refcount_table_offset >> cb, h.refcount_table_clusters, "the refcount table")]
        if h.l1_size:
            prot.append((h.l1_table_offset >> cb, self.clusters(h.l1_size * 8), "the L1 table"))
        if h.nb_snapshots:
            prot.append((h.snapshots_offset >> cb, self.clusters(self.snapshot_table_size), "the snapshot table"))
        self.rc.protected = prot
        self.protected = [(first << cb, n << cb, what) for first, n, what in prot]
        for i, (a, an, aw) in enumerate(self.protected):
            for b, bn, bw in self.protected[i + 1:]:
                if a < b + bn and b < a + an:
                    raise Qcow2Error(f"{self.path}: {aw} at {a:#x} overlaps {bw} at {b:#x}")

    def overlaps_metadata(self, offset: int, length: int) -> str | None:
        for a, an, what in self.protected:
            if offset < a + an and a < offset + length:
                return what
        return None

    def update_header(self, **changes: object) -> None:
        """Rewrite the header with `changes` (field=value) and sync."""
        h = dataclasses.replace(self.header, **changes)  # type: ignore[arg-type]
        self.f.write(0, pack_header(h))
        self.f.sync()
        self.header = h
        self._update_protected()

    def _reftable_moved(self, offset: int, clusters: int) -> None:
        self.update_header(refcount_table_offset=offset, refcount_table_clusters=clusters)

    def mark_dirty(self) -> None:
        """Before the first metadata change under lazy refcounts: set the dirty bit."""
        if self.header.lazy_refcounts and not self.header.dirty:
            self.update_header(incompatible_features=self.header.incompatible_features | INCOMPAT_DIRTY)

    # --- L2 tables ------------------------------------------------------------------
    def _load_l2(self, offset: int) -> array[int]:
        what = self.overlaps_metadata(offset, self.cs)
        if offset & (self.cs - 1) or what:
            raise Qcow2Error(f"{self.path}: L2 table offset {offset:#x} is "
                             f"{'unaligned' if not what else 'inside ' + what} (the image is corrupt)")
        return load_table(self.f.read(offset, self.cs, "an L2 table"))

    def _store_l2(self, t: Table) -> None:
        self.mark_dirty()
        if not self.header.lazy_refcounts and self.rc.has_dirty():
            self.rc.write_back()
            self.f.sync()
        self.f.write(t.offset, dump_table(t.entries))

    def l1_offset(self, l1i: int) -> int:
        if l1i >= len(self.l1):
            return 0
        return self.l1[l1i] & OFFSET_MASK

    def l2_read(self, l1i: int) -> Table | None:
        off = self.l1_offset(l1i)
        return self.l2cache.get(off) if off else None

    def l2_write(self, l1i: int) -> Table:
        """The L2 table for `l1i`, ready to modify: allocated, or copied when shared."""
        if l1i >= len(self.l1):
            raise Qcow2Error(f"{self.path}: L1 index {l1i} is beyond the L1 table ({len(self.l1)} entries)")
        e = self.l1[l1i]
        off = e & OFFSET_MASK
        if off and e & OFLAG_COPIED:
            return self.l2cache.get(off)
        self.mark_dirty()
        if off:
            old = self.l2cache.get(off)
            entries = array("Q", [x & NOT_COPIED for x in old.entries])
            if old.dirty:
                self._store_l2(old)
            self.l2cache.drop(off)
        new = self.rc.alloc(1)
        if off:
            self.rc.defer_free(off >> self.cb)
        else:
            entries = array("Q", bytes(self.cs))
        t = self.l2cache.add(new, entries)
        self.set_l1(l1i, new | OFLAG_COPIED)
        return t

    def set_l1(self, l1i: int, entry: int) -> None:
        self.l1[l1i] = entry
        self._l1_dirty.add(l1i >> 6)

    # --- clusters ----------------------------------------------------------------------
    def alloc(self, n: int) -> int:
        self.mark_dirty()
        return self.rc.alloc(n)

    def free_entry(self, entry: int) -> None:
        """Queue the release of whatever an L2 entry (already replaced) pointed to."""
        kind = cluster_type(entry)
        if kind in (NORMAL, ZERO_ALLOC):
            self.rc.defer_free((entry & OFFSET_MASK) >> self.cb)
        elif kind == COMPRESSED:
            for c in self.compressed.host_clusters(entry):
                self.rc.defer_free(c)

    # --- write-back ------------------------------------------------------------------
    def flush(self, sync: bool = True) -> None:
        """Write back dirty metadata in the crash-safe order, then fdatasync."""
        if self.readonly:
            return
        strict = not self.header.lazy_refcounts
        if not strict and (self.rc.has_dirty() or self.l2cache.has_dirty() or self._l1_dirty
                           or self.rc.pending_count):
            self.mark_dirty()  # before any metadata write goes out without barriers
        wrote = False
        if self.rc.has_dirty():
            self.rc.write_back(barrier=strict)
            wrote = True
        l2s = self.l2cache.dirty()
        if l2s:
            if wrote and strict:
                self.f.sync()
            for t in l2s:
                self.f.write(t.offset, dump_table(t.entries))
                t.dirty = False
            wrote = True
        if self._l1_dirty:
            if strict:  # the L2 tables it points to may have been written (evicted) unsynced
                self.f.sync()
            self._write_l1_sectors()
            wrote = True
        if self.rc.pending_count:
            if wrote and strict:
                self.f.sync()
            self.rc.apply_frees()
            self.rc.write_back(barrier=strict)
            wrote = True
        if sync and (wrote or self.unsynced):
            self.f.sync()
            self.unsynced = False

    def _write_l1_sectors(self) -> None:
        base = self.header.l1_table_offset
        for s in sorted(self._l1_dirty):
            self.f.write(base + s * 512, dump_table(self.l1, s * 64, min(s * 64 + 64, len(self.l1))))
        self._l1_dirty.clear()

    def maybe_flush(self) -> None:
        """Apply queued frees once there are many (they hold clusters back)."""
        if self.rc.pending_count > MAX_PENDING_FREES:
            self.flush(sync=False)

    def grow_l1(self, min_entries: int) -> None:
        """Move the active L1 table to a bigger one (the header switches last)."""
        h = self.header
        if min_entries <= h.l1_size:
            return
        if min_entries * 8 > MAX_L1_BYTES:
            raise Qcow2Error(f"{self.path}: the L1 table would exceed {MAX_L1_BYTES >> 20} MiB "
                             "(use a bigger cluster size for a disk this large)")
        self.flush(sync=False)
        new_l1 = array("Q", self.l1) + array("Q", bytes(8 * (min_entries - len(self.l1))))
        new_off = self.alloc(self.clusters(min_entries * 8))
        self.rc.write_back()
        self.f.write(new_off, dump_table(new_l1).ljust(self.clusters(min_entries * 8) * self.cs, b"\0"))
        self.f.sync()
        old_off, old_clusters = h.l1_table_offset, self.clusters(h.l1_size * 8)
        self.update_header(l1_table_offset=new_off, l1_size=min_entries)
        self.l1 = new_l1
        if old_clusters:
            self.rc.incref(old_off >> self.cb, old_clusters, -1)
        self.flush(sync=True)

    def close(self) -> None:
        """Final write-back; clears the dirty bit lazy refcounts set."""
        if self.readonly:
            return
        self.flush()
        if self.header.dirty and self.header.lazy_refcounts:
            self.update_header(incompatible_features=self.header.incompatible_features & ~INCOMPAT_DIRTY)
