"""Changes that are mostly metadata: discard, zeroing (the v3 zero flag,
or unallocating / writing zeros in v2), and compressed clusters.

Every entry change goes through `set_entries`, which copies a shared L2
table first (`Qcow2Core.l2_write`) and queues the release of what the old
entries pointed to, so the crash-safe order of `core.py` holds here too.
"""

from __future__ import annotations

from ..errors import DiskError
from .compress import compress_cluster
from .hostfile import ZeroCursor
from .tables import COMPRESSED, NORMAL, OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO, ZERO_ALLOC, cluster_type

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .image import Qcow2Image


def write_compressed_cluster(img: Qcow2Image, cluster_index: int, data: bytes) -> None:
    """Store guest cluster `cluster_index` deflated (raw zlib, 4 KiB
    window) when that is smaller, else as a normal cluster. `data` is
    the cluster (shorter only for the disk's last cluster: zero padded)."""
    core = img._c
    cs = core.cs
    start = cluster_index * cs
    if cluster_index < 0 or start >= img.size or len(data) > cs:
        raise DiskError(f"{img.path}: compressed write of cluster {cluster_index} ({len(data)} bytes) "
                        f"does not fit the disk ({img.size:#x} bytes, {cs}-byte clusters)")
    img.check_range(start, 0, write=True)
    buf = bytes(data).ljust(cs, b"\0")
    packed = compress_cluster(buf, cs)
    if packed is None:
        img.write_from(start, [memoryview(buf)[:min(cs, img.size - start)]])
        return
    t = core.l2_write(start >> (core.cb + core.l2_bits))
    i = cluster_index & core.l2_mask
    off = _alloc_compressed(img, len(packed))
    img._f.write(off, packed)
    old = t.entries[i]
    t.entries[i] = core.compressed.encode(off, len(packed))
    t.dirty = True
    if old:
        core.free_entry(old)
    img._zcache = None
    core.unsynced = True
    core.maybe_flush()


def _alloc_compressed(img: Qcow2Image, n: int) -> int:
    """Bytes for compressed data, packed into partly used clusters: each
    compressed cluster adds one reference to every host cluster it touches."""
    core = img._c
    off, epoch = img._cfree
    if off & (core.cs - 1) and epoch == core.rc.free_epoch and (off & (core.cs - 1)) + n <= core.cs:
        core.rc.incref(off >> core.cb)
    else:
        off = core.alloc(1)
    img._cfree = (off + n, core.rc.free_epoch)
    return off


def _full_clusters(img: Qcow2Image, offset: int, length: int) -> tuple[int, int]:
    cs = img._c.cs
    a = -(-offset // cs) * cs
    end = offset + length
    b = end if end == img.size else end // cs * cs
    return a, max(a, b)


def set_entries(img: Qcow2Image, a: int, b: int, new_entry: Callable[[int], int | None]) -> None:
    """For the guest clusters in [a, b): entry = new_entry(old) (None: keep)."""
    core = img._c
    cb, l2_bits = core.cb, core.l2_bits
    pos = a
    while pos < b:
        l1i = pos >> (cb + l2_bits)
        chunk_end = min(b, (l1i + 1) << (cb + l2_bits))
        first = (pos >> cb) & core.l2_mask
        count = (chunk_end - pos + core.cs - 1) >> cb
        t = core.l2_read(l1i)
        olds = list(t.entries[first:first + count]) if t is not None else [0] * count
        if any(n is not None and n != o for n, o in ((new_entry(o), o) for o in olds)):
            t = core.l2_write(l1i)  # may be a copy (the table was shared): decide again from it
            for k in range(count):
                old = t.entries[first + k]
                n = new_entry(old)
                if n is None or n == old:
                    continue
                t.entries[first + k] = n
                if n & OFFSET_MASK != old & OFFSET_MASK or cluster_type(old) == COMPRESSED:
                    core.free_entry(old)
            t.dirty = True
        pos = chunk_end
    core.maybe_flush()


def discard(img: Qcow2Image, offset: int, length: int) -> None:
    img.check_range(offset, length, write=True)
    a, b = _full_clusters(img, offset, length)
    if a >= b:
        return
    keep_zero = img.version >= 3 and img.backing is not None
    set_entries(img, a, b, lambda old: OFLAG_ZERO if keep_zero else 0)


def write_zeroes(img: Qcow2Image, offset: int, length: int, may_unmap: bool) -> None:
    img.check_range(offset, length, write=True)
    if not length:
        return
    a, b = _full_clusters(img, offset, length)
    if a >= b:
        img._write(offset, length, ZeroCursor())
        return
    if offset < a:
        img._write(offset, a - offset, ZeroCursor())
    if b < offset + length:
        img._write(b, offset + length - b, ZeroCursor())
    backing = img.backing is not None
    if img.version >= 3:

        def zero3(old: int) -> int | None:
            if not backing and not old:
                return None  # reads as zeros already
            if not may_unmap and old & OFLAG_COPIED and cluster_type(old) in (NORMAL, ZERO_ALLOC):
                return (old & OFFSET_MASK) | OFLAG_COPIED | OFLAG_ZERO
            return OFLAG_ZERO
        set_entries(img, a, b, zero3)
    elif not backing:
        _zero_v2(img, a, b, may_unmap)
    else:
        img._write(a, b - a, ZeroCursor())


def _zero_v2(img: Qcow2Image, a: int, b: int, may_unmap: bool) -> None:
    """Version 2 has no zero flag: unallocate, or zero in place when asked to keep allocations."""
    if may_unmap:
        set_entries(img, a, b, lambda old: 0)
        return
    for ext in img.allocation(a, b - a):
        if ext.kind == "data":  # through the write path: in place only where COPIED
            img._write(ext.start, ext.length, ZeroCursor())
        elif ext.kind == "compressed":
            set_entries(img, ext.start, ext.start + ext.length, lambda old: 0)
