"""Internal snapshots: create, apply (goto) and delete.

A snapshot is a copy of the active L1 table; everything reachable from it
(L2 tables and data clusters, counted once per L1 table that reaches them)
gets one more reference, so the next guest write copies on write.

Order of each operation (crash: leaks at worst, and never a COPIED flag
set on a shared cluster, which would let a write change a snapshot):
  create: clear COPIED in the active tables (written) -> increase the
          refcounts (written) -> L1 copy and new snapshot table (synced)
          -> header -> free the old snapshot table.
  apply:  increase the refcounts of the snapshot's clusters (written) ->
          overwrite the active L1 (synced) -> header (size) -> drop the
          references of the old active state -> recompute COPIED.
  delete: new snapshot table without the entry (synced) -> header -> free
          the old table -> drop the snapshot's references and its L1 ->
          recompute COPIED (clusters whose refcount fell to 1).
"""

from __future__ import annotations

import time
from array import array
from collections import Counter

from .check import fix_copied_flags
from .errors import Qcow2Error
from .header import MAX_SNAPSHOTS
from .snapshot import NEW_EXTRA_SIZE, SnapshotInfo, pack_snapshot_table
from .tables import COMPRESSED, NORMAL, NOT_COPIED, OFFSET_MASK, OFLAG_COPIED, ZERO_ALLOC, cluster_type, dump_table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .core import Qcow2Core
    from .image import Qcow2Image


def _writable(img: Qcow2Image) -> Qcow2Core:
    if img.readonly:
        raise Qcow2Error(f"{img.path}: the image is open read-only")
    return img._c


def find_snapshot(img: Qcow2Image, name_or_id: str) -> SnapshotInfo:
    snaps = img._c.snapshots
    for s in snaps:
        if s.id == name_or_id:
            return s
    for s in snaps:
        if s.name == name_or_id:
            return s
    raise Qcow2Error(f"{img.path}: no snapshot with id or name {name_or_id!r}")


def _adjust(core: Qcow2Core, l1: array[int], delta: int) -> None:
    """Add `delta` to the refcount of every L2 table and cluster `l1` reaches."""
    counts: Counter[int] = Counter()
    cb = core.cb
    end = core.clusters(core.f.size)  # a reference must start inside the file
    tables = Counter(e & OFFSET_MASK for e in l1 if e & OFFSET_MASK)
    for off, k in tables.items():  # a table used twice (only in a corrupt image) is read once
        entries = core.l2cache.get(off).entries
        counts[off >> cb] += k
        for x in entries:
            kind = cluster_type(x)
            if kind in (NORMAL, ZERO_ALLOC):
                host = x & OFFSET_MASK
                if host & (core.cs - 1) or host >> cb >= end:
                    raise Qcow2Error(f"{core.path}: L2 table {off:#x} points to {host:#x}, unaligned or past "
                                     "the end of the file (the image is corrupt)")
                counts[host >> cb] += k
            elif kind == COMPRESSED:
                clusters = core.compressed.host_clusters(x)
                if clusters[0] >= end:
                    raise Qcow2Error(f"{core.path}: L2 table {off:#x} has a compressed cluster past the end "
                                     "of the file (the image is corrupt)")
                for c in clusters:
                    counts[c] += k
    run_start = run_len = 0
    for c in sorted(counts):
        k = counts[c]
        if k == 1 and run_len and c == run_start + run_len:
            run_len += 1
            continue
        if run_len:
            core.rc.incref(run_start, run_len, delta)
            run_len = 0
        if k == 1:
            run_start, run_len = c, 1
        else:
            core.rc.incref(c, 1, delta * k)
    if run_len:
        core.rc.incref(run_start, run_len, delta)


def _write_table(core: Qcow2Core, snaps: list[SnapshotInfo]) -> None:
    """Write a new snapshot table, switch the header to it, free the old one."""
    data = pack_snapshot_table(snaps)
    new_off = 0
    if snaps:
        new_off = core.alloc(core.clusters(len(data)))
        core.f.write(new_off, data)
        core.rc.write_back()
        core.f.sync()
    old_off, old_size = core.header.snapshots_offset, core.snapshot_table_size
    had = core.header.nb_snapshots
    core.snapshots, core.snapshot_table_size = list(snaps), len(data)
    core.update_header(nb_snapshots=len(snaps), snapshots_offset=new_off)
    if had and old_size:
        core.rc.incref(old_off >> core.cb, core.clusters(old_size), -1)


def create_snapshot(img: Qcow2Image, name: str) -> None:
    core = _writable(img)
    if not name:
        raise Qcow2Error(f"{img.path}: a snapshot needs a name")
    if any(s.name == name for s in core.snapshots):
        raise Qcow2Error(f"{img.path}: a snapshot named {name!r} already exists")
    if len(core.snapshots) >= MAX_SNAPSHOTS:
        raise Qcow2Error(f"{img.path}: the image already has {MAX_SNAPSHOTS} snapshots")
    core.flush()
    # 1. The active tables are about to be shared: no COPIED flags.
    done: set[int] = set()
    for i, e in enumerate(core.l1):
        off = e & OFFSET_MASK
        if not off:
            continue
        if e & OFLAG_COPIED:
            core.set_l1(i, e & NOT_COPIED)
        if off in done:
            continue
        done.add(off)
        t = core.l2cache.get(off)
        entries = t.entries
        for j, x in enumerate(entries):
            if x & OFLAG_COPIED:
                entries[j] = x & NOT_COPIED
                t.dirty = True
    core.flush()
    # 2. One more reference to everything the active L1 reaches.
    _adjust(core, core.l1, 1)
    core.flush()
    # 3. The L1 copy and the new snapshot table, then the header.
    l1_size = len(core.l1)
    l1_off = 0
    if l1_size:
        l1_off = core.alloc(core.clusters(l1_size * 8))
        core.f.write(l1_off, dump_table(core.l1))
    ids = [int(s.id) for s in core.snapshots if s.id.isdigit()]
    now = time.time_ns()
    sn = SnapshotInfo(id=str(max(ids, default=0) + 1), name=name, l1_table_offset=l1_off, l1_size=l1_size,
                      date_sec=now // 1_000_000_000, date_nsec=(now % 1_000_000_000) // 1000 * 1000,
                      vm_clock_nsec=0, vm_state_size=0, disk_size=img.size, icount=None,
                      extra=bytes(NEW_EXTRA_SIZE))
    _write_table(core, core.snapshots + [sn])
    core.flush()


def apply_snapshot(img: Qcow2Image, name_or_id: str) -> None:
    core = _writable(img)
    sn = find_snapshot(img, name_or_id)
    core.flush()
    sn_l1 = core.read_l1(sn.l1_table_offset, sn.l1_size, f"the L1 table of snapshot {sn.id}")
    # 1. The snapshot's clusters gain the active state's reference.
    _adjust(core, sn_l1, 1)
    core.flush()
    # 2. The active L1 becomes a copy of the snapshot's (same place, or a bigger table).
    if sn.l1_size > len(core.l1):
        core.grow_l1(sn.l1_size)
    old_l1 = array("Q", core.l1)
    new_l1 = array("Q", sn_l1) + array("Q", bytes(8 * (len(core.l1) - len(sn_l1))))
    core.f.write(core.header.l1_table_offset, dump_table(new_l1))
    core.f.sync()
    core.l1 = new_l1
    core.l2cache.clear()
    if sn.disk_size is not None and sn.disk_size != img.size:
        core.update_header(size=sn.disk_size)
        img.size = sn.disk_size
    # 3. The old active state loses its references.
    _adjust(core, old_l1, -1)
    core.flush()
    core.l2cache.clear()
    fix_copied_flags(core)


def delete_snapshot(img: Qcow2Image, name_or_id: str) -> None:
    core = _writable(img)
    sn = find_snapshot(img, name_or_id)
    core.flush()
    sn_l1 = core.read_l1(sn.l1_table_offset, sn.l1_size, f"the L1 table of snapshot {sn.id}")
    _write_table(core, [s for s in core.snapshots if s is not sn])
    core.flush()
    _adjust(core, sn_l1, -1)
    if sn.l1_size:
        core.rc.incref(sn.l1_table_offset >> core.cb, core.clusters(sn.l1_size * 8), -1)
    core.flush()
    core.l2cache.clear()
    fix_copied_flags(core)
