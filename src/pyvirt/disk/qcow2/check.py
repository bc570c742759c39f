"""Consistency check and refcount rebuild (`qemu-img check [-r all]`).

The check counts every reference the image makes (header, L1 tables of the
active state and of each snapshot, L2 tables, data and compressed
clusters, refcount table and blocks, snapshot table, consistent bitmaps)
and compares the counts with the stored refcounts: stored < referenced is
a corruption (a cluster in use could be handed out again), stored >
referenced a leak (space wasted, harmless). It also checks COPIED flags
of the active tables against the stored refcounts, and pointers that are
unaligned or outside the file.

Repair rebuilds the refcount structures from the counted references: a
new refcount table and blocks are written past the end of the image,
synced, and the header switched to them (the old ones become free
clusters), then COPIED flags are recomputed. Opening a dirty image (lazy
refcounts, after a crash) writable does the same, as the spec allows.
"""

from __future__ import annotations

import struct
from array import array
from collections import Counter
from dataclasses import dataclass, field

from .errors import Qcow2Error
from .header import AUTOCLEAR_BITMAPS, EXT_BITMAPS
from .refcount import RT_OFFSET_MASK, pack_refblock, unpack_refblock
from .tables import (COMPRESSED, L1E_RESERVED, NORMAL, OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO, ZERO_ALLOC,
                     ZERO_PLAIN, cluster_type, dump_table, load_table)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .core import Qcow2Core
    from .image import Qcow2Image

MAX_CHECK_CLUSTERS = 1 << 27  # the reference counts of 128 Mi clusters take 512 MiB
MAX_MESSAGES = 10000


@dataclass
class CheckResult:
    """What `qemu-img check` reports. After a repair, `corruptions` and
    `leaks` are what the second check still found."""

    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    image_end_offset: int = 0
    allocated_clusters: int = 0
    total_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """qemu-img check's: 0 clean, 1 check errors, 2 corruptions, 3 leaks only."""
        if self.corruptions:
            return 2
        if self.check_errors:
            return 1
        return 3 if self.leaks else 0

    def qemu_json(self, filename: str) -> dict[str, object]:
        """The object `qemu-img check --output json` prints."""
        d: dict[str, object] = {"image-end-offset": self.image_end_offset, "total-clusters": self.total_clusters,
                                "check-errors": self.check_errors}
        for key, value in (("leaks", self.leaks), ("corruptions", self.corruptions),
                           ("leaks-fixed", self.leaks_fixed), ("corruptions-fixed", self.corruptions_fixed)):
            if value:
                d[key] = value
        d["allocated-clusters"] = self.allocated_clusters
        d["filename"] = filename
        d["format"] = "qcow2"
        if self.fragmented_clusters:
            d["fragmented-clusters"] = self.fragmented_clusters
        if self.compressed_clusters:
            d["compressed-clusters"] = self.compressed_clusters
        return d

    def _say(self, msg: str) -> None:
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(msg)
        elif len(self.messages) == MAX_MESSAGES:
            self.messages.append("... (more messages left out)")


class _Scan:
    """One pass over the image: computed references and the findings."""

    def __init__(self, core: Qcow2Core) -> None:
        self.core = core
        self.res = CheckResult()
        self.nb = core.clusters(core.f.size)
        if self.nb > MAX_CHECK_CLUSTERS:
            raise Qcow2Error(f"{core.path}: the image file is too large to check ({self.nb} clusters)")
        self.refs = array("I", bytes(4 * self.nb))
        self.rc_clusters: list[int] = []  # the refcount structures' own clusters
        self.stored: dict[int, array[int]] = {}  # refcount table index -> block

    def corrupt(self, msg: str) -> None:
        self.res.corruptions += 1
        self.res._say(f"ERROR {msg}")

    def add(self, offset: int, length: int, what: str, times: int = 1) -> bool:
        cb = self.core.cb
        first, last = offset >> cb, (offset + length - 1) >> cb
        if last >= self.nb:
            self.corrupt(f"{what} at {offset:#x} is beyond the end of the image file")
            return False
        refs = self.refs
        for c in range(first, last + 1):
            refs[c] = min(0xFFFFFFFF, refs[c] + times)
        return True

    def stored_refcount(self, cluster: int) -> int:
        blk = self.stored.get(cluster >> self.core.rc.rb_bits)
        return 0 if blk is None else blk[cluster & self.core.rc.rb_mask]

    # --- the passes ---------------------------------------------------------------
    def run(self) -> CheckResult:
        core, res = self.core, self.res
        h = core.header
        res.total_clusters = core.clusters(h.size)
        self.add(0, core.cs, "the header")
        self._refcount_structures()
        if h.l1_size:
            self.add(h.l1_table_offset, h.l1_size * 8, "the L1 table")
        self._walk_l1(core.l1, active=True)
        if h.nb_snapshots:
            self.add(h.snapshots_offset, core.snapshot_table_size, "the snapshot table")
        seen: list[tuple[int, int]] = [(h.l1_table_offset, h.l1_size * 8)] if h.l1_size else []
        for sn in core.snapshots:
            span = (sn.l1_table_offset, sn.l1_size * 8)
            if sn.l1_size and any(a < span[0] + span[1] and span[0] < a + n for a, n in seen):
                # (also keeps a hostile image from making us walk one huge table many times)
                self.corrupt(f"the L1 table of snapshot {sn.id} at {span[0]:#x} overlaps another L1 table")
                continue
            seen.append(span)
            if sn.l1_size and self.add(sn.l1_table_offset, sn.l1_size * 8, f"the L1 table of snapshot {sn.id}"):
                try:
                    l1 = core.read_l1(sn.l1_table_offset, sn.l1_size, f"the L1 table of snapshot {sn.id}")
                except Qcow2Error as e:
                    self.corrupt(str(e))
                    continue
                self._walk_l1(l1, active=False)
        if h.autoclear_features & AUTOCLEAR_BITMAPS:
            self._bitmaps()
        self._compare()
        return res

    def _refcount_structures(self) -> None:
        core = self.core
        rc = core.rc
        self.add(rc.table_offset, rc.table_clusters * core.cs, "the refcount table")
        self.rc_clusters.extend(range(rc.table_offset >> core.cb, (rc.table_offset >> core.cb) + rc.table_clusters))
        for ti, e in enumerate(rc.table):
            off = e & RT_OFFSET_MASK
            if not off:
                continue
            if e & ~RT_OFFSET_MASK or off & (core.cs - 1) or off + core.cs > core.f.size:
                self.corrupt(f"refcount block {ti} at {e:#x} is unaligned or outside the image file")
                continue
            self.add(off, core.cs, f"refcount block {ti}")
            self.rc_clusters.append(off >> core.cb)
            self.stored[ti] = unpack_refblock(core.f.read(off, core.cs, "a refcount block"), rc.order)

    def _walk_l1(self, l1: array[int], active: bool) -> None:
        core = self.core
        cs, cb = core.cs, core.cb
        tables: Counter[int] = Counter()
        for i, e in enumerate(l1):
            off = e & OFFSET_MASK
            if not off:
                continue
            if e & L1E_RESERVED or off & (cs - 1):
                self.corrupt(f"L1 entry {i} ({e:#x}) has reserved bits set or is unaligned")
                continue
            tables[off] += 1
            if active and (self.stored_refcount(off >> cb) == 1) != bool(e & OFLAG_COPIED):
                self.corrupt(f"OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} "
                             f"refcount={self.stored_refcount(off >> cb)}")
        for off in sorted(tables):  # each table once, its references times the L1 entries using it
            k = tables[off]
            if k > 1:
                self.corrupt(f"L2 table {off:#x} is used by {k} entries of one L1 table")
            if self.add(off, cs, "an L2 table", k):
                self._walk_l2(off, k, active)

    def _walk_l2(self, off: int, k: int, active: bool) -> None:
        core, res = self.core, self.res
        cs, cb = core.cs, core.cb
        try:
            entries = load_table(core.f.read(off, cs, "an L2 table"))
        except Qcow2Error as err:
            self.corrupt(str(err))
            return
        next_contiguous = 0  # fragmentation as qemu counts it: within one table
        for x in entries:
            kind = cluster_type(x)
            if kind == ZERO_PLAIN or not x:
                if x & OFLAG_ZERO and core.version < 3:
                    self.corrupt(f"L2 entry {x:#x} (table {off:#x}) has the zero flag in a version 2 image")
                continue
            if kind == COMPRESSED:
                if x & OFLAG_COPIED:
                    self.corrupt(f"compressed cluster L2 entry {x:#x} has OFLAG_COPIED set")
                for c in core.compressed.host_clusters(x):
                    self.add(c << cb, cs, "compressed cluster data", k)
                if active:  # (qemu counts compressed clusters as fragmented by nature)
                    res.allocated_clusters += k
                    res.compressed_clusters += k
                    res.fragmented_clusters += k
                continue
            if kind not in (NORMAL, ZERO_ALLOC):
                continue
            host = x & OFFSET_MASK
            if host & (cs - 1):
                self.corrupt(f"data cluster offset {host:#x} (L2 entry {x:#x}) is unaligned")
                continue
            if kind == ZERO_ALLOC and core.version < 3:
                self.corrupt(f"L2 entry {x:#x} has the zero flag in a version 2 image")
            if not self.add(host, cs, f"data cluster (L2 entry {x:#x})", k):
                continue
            if active:
                res.allocated_clusters += k
                if next_contiguous and host != next_contiguous:
                    res.fragmented_clusters += k
                next_contiguous = host + cs
                rcount = self.stored_refcount(host >> cb)
                if (rcount == 1) != bool(x & OFLAG_COPIED):
                    self.corrupt(f"OFLAG_COPIED data cluster: l2_entry={x:x} refcount={rcount}")

    def _bitmaps(self) -> None:
        """Clusters of consistent persistent bitmaps (directory, tables, data)."""
        core = self.core
        data = core.header.extension(EXT_BITMAPS)
        if data is None or len(data) < 24:
            return
        nb, _, dir_size, dir_off = struct.unpack_from(">IIQQ", data)
        if not dir_size or dir_off & (core.cs - 1) or dir_size > 64 << 20:
            self.corrupt("the bitmap directory is malformed")
            return
        if not self.add(dir_off, dir_size, "the bitmap directory"):
            return
        d = core.f.read(dir_off, dir_size, "the bitmap directory")
        pos = 0
        for _ in range(nb):
            if pos + 24 > len(d):
                self.corrupt("the bitmap directory is truncated")
                return
            t_off, t_size, _flags, _type, _gran, name_len, extra = struct.unpack_from(">QIIBBHI", d, pos)
            pos += (24 + extra + name_len + 7) & ~7
            if not t_size:
                continue
            if t_off & (core.cs - 1) or not self.add(t_off, t_size * 8, "a bitmap table"):
                continue
            for e in load_table(core.f.read(t_off, t_size * 8, "a bitmap table")):
                if e & OFFSET_MASK:
                    self.add(e & OFFSET_MASK, core.cs, "bitmap data")

    def _compare(self) -> None:
        core, res, rc = self.core, self.res, self.core.rc
        n = 1 << rc.rb_bits
        highest = (len(self.refs.tobytes().rstrip(b"\0")) + 3) // 4
        for ti in range(max(len(rc.table), -(-self.nb // n))):
            base = ti << rc.rb_bits
            if base >= self.nb:
                break
            end = min(self.nb, base + n)
            computed = self.refs[base:end]
            blk = self.stored.get(ti)
            stored = array("I", blk[:end - base]) if blk is not None else array("I", bytes(4 * (end - base)))
            used = (len(stored.tobytes().rstrip(b"\0")) + 3) // 4
            if used:
                highest = max(highest, base + used)
            if stored == computed:
                continue
            for k in range(end - base):
                s, c = stored[k], computed[k]
                if s < c:
                    self.corrupt(f"cluster {base + k} refcount={s} reference={c}")
                elif s > c:
                    res.leaks += 1
                    res._say(f"Leaked cluster {base + k} refcount={s} reference={c}")
        res.image_end_offset = highest * core.cs


def scan(core: Qcow2Core) -> _Scan:
    s = _Scan(core)
    s.run()
    return s


def check(img: Qcow2Image, repair: bool = False) -> CheckResult:
    core = img._c
    if not img.readonly:
        core.flush()
    first = scan(core)
    res = first.res
    if not repair or not (res.corruptions or res.leaks):
        return res
    if img.readonly:
        raise Qcow2Error(f"{img.path}: cannot repair an image opened read-only")
    rebuild_refcounts(core, first)
    fix_copied_flags(core)
    after = scan(core).res
    after.corruptions_fixed = max(0, res.corruptions - after.corruptions)
    after.leaks_fixed = max(0, res.leaks - after.leaks)
    after.messages = res.messages + ["The refcounts were rebuilt; checking again."] + after.messages
    return after


def rebuild_after_crash(core: Qcow2Core) -> None:
    """On a writable open of a dirty image: make the refcounts match the tables."""
    s = scan(core)
    if s.res.corruptions or s.res.leaks:
        rebuild_refcounts(core, s)
        fix_copied_flags(core)


def rebuild_refcounts(core: Qcow2Core, s: _Scan) -> None:
    """Write refcount structures holding the counted references past the end
    of the image, then switch the header to them."""
    core.flush(sync=False)
    rc = core.rc
    refs = array("I", s.refs)
    for c in s.rc_clusters:
        if c < len(refs) and refs[c]:
            refs[c] -= 1
    if max(refs, default=0) > rc.max:
        raise Qcow2Error(f"{core.path}: a cluster has more references than refcount_bits can count")
    cs, rb_bits = core.cs, rc.rb_bits
    n, epc = 1 << rb_bits, cs // 8
    start = len(refs)
    used = {ti for ti in range(-(-len(refs) // n)) if refs[ti * n:(ti + 1) * n].count(0) != len(refs[ti * n:(ti + 1) * n])}
    nblocks = tcl = 0
    while True:
        end = start + nblocks + tcl
        tis = used | set(range(start >> rb_bits, ((end - 1) >> rb_bits) + 1 if end > start else start >> rb_bits))
        need_tcl = -(-((max(tis) + 1) * 8) // cs) if tis else 1
        if len(tis) == nblocks and need_tcl == tcl:
            break
        nblocks, tcl = len(tis), need_tcl
    refs.extend(array("I", [1]) * (end - len(refs)))
    table = array("Q", bytes(tcl * cs))
    blocks = []
    for k, ti in enumerate(sorted(tis)):
        table[ti] = (start + k) << core.cb
        vals = array(rc._zero_block().typecode, refs[ti * n:(ti + 1) * n])
        vals.extend(array(vals.typecode, bytes(vals.itemsize * (n - len(vals)))))
        blocks.append(pack_refblock(vals, rc.order))
    core.f.write(start << core.cb, b"".join(blocks))
    core.f.write((start + nblocks) << core.cb, dump_table(table))
    core.f.sync()
    core.update_header(refcount_table_offset=(start + nblocks) << core.cb, refcount_table_clusters=tcl)
    core.reload_refcounts()


def fix_copied_flags(core: Qcow2Core) -> None:
    """Set COPIED in the active tables exactly where the refcount is 1."""
    rc = core.rc
    done: set[int] = set()
    for i, e in enumerate(core.l1):
        off = e & OFFSET_MASK
        if not off or off & (core.cs - 1) or off + core.cs > core.f.size:
            continue
        want = (e & ~OFLAG_COPIED) | (OFLAG_COPIED if rc.refcount(off >> core.cb) == 1 else 0)
        if want != e:
            core.set_l1(i, want)
        if off in done:
            continue
        done.add(off)
        try:
            t = core.l2cache.get(off)
        except Qcow2Error:
            continue
        entries = t.entries
        for j, x in enumerate(entries):
            kind = cluster_type(x)
            if kind in (NORMAL, ZERO_ALLOC):
                host = x & OFFSET_MASK
                if host & (core.cs - 1) or host >= core.f.size:
                    continue
                y = (x & ~OFLAG_COPIED) | (OFLAG_COPIED if rc.refcount(host >> core.cb) == 1 else 0)
            elif kind == COMPRESSED:
                y = x & ~OFLAG_COPIED
            else:
                continue
            if y != x:
                entries[j] = y
                t.dirty = True
    core.flush()
