"""What an image says about its clusters: allocation at one layer, block
status through the chain (`qemu-img map`), and `qemu-img info` fields."""

from __future__ import annotations

import errno
import os

from ..raw import RawBackend
from .chain import backing_path
from .tables import KIND_NAMES, NORMAL, Extent, iter_entry_runs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..backend import BlockBackend
    from .image import Qcow2Image

# (start, length, depth, data, zero, host_offset, present)
Status = tuple[int, int, int, bool, bool, int | None, bool]


def allocation(img: Qcow2Image, offset: int, length: int) -> list[Extent]:
    """Extents of [offset, offset+length) (clipped to the disk) at this layer only."""
    core = img._c
    cb, span_bits = core.cb, core.cb + core.l2_bits
    end = min(offset + length, img.size)
    out: list[Extent] = []

    def add(start: int, n: int, kind: str, host: int | None) -> None:
        if n <= 0:
            return
        if out:
            p = out[-1]
            if p.kind == kind and p.start + p.length == start and (
                    host is None or (p.host_offset is not None and p.host_offset + p.length == host)):
                out[-1] = Extent(p.start, p.length + n, kind, p.host_offset)
                return
        out.append(Extent(start, n, kind, host))

    pos = max(0, offset)
    while pos < end:
        l1i = pos >> span_bits
        chunk_end = min(end, (l1i + 1) << span_bits)
        t = core.l2_read(l1i)
        if t is None:
            add(pos, chunk_end - pos, "unallocated", None)
        else:
            first = (pos >> cb) & core.l2_mask
            count = ((chunk_end - 1) >> cb) - (pos >> cb) + 1
            base = (pos >> cb) - first  # guest cluster of the table's entry 0
            for idx, n, kind, host in iter_entry_runs(t.entries, first, count, cb):
                g = (base + idx) << cb
                s, e = max(pos, g), min(chunk_end, g + (n << cb))
                add(s, e - s, KIND_NAMES[kind], host + (s - g) if kind == NORMAL else None)
        pos = chunk_end
    return out


def _seek_status(fd: int, start: int, n: int, depth: int) -> list[Status]:
    """Data and holes of a file (SEEK_DATA/SEEK_HOLE), as qemu reports a raw file's."""
    out: list[Status] = []
    pos, end = start, start + n
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole up to the end
                data = end
            else:
                return out + [(pos, end - pos, depth, True, False, pos, True)]
        if data > pos:
            hole_end = min(data, end)
            out.append((pos, hole_end - pos, depth, False, True, pos, True))
            pos = hole_end
            continue
        try:
            hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        except OSError:
            hole = end
        hole = max(hole, pos + 1)
        out.append((pos, min(hole, end) - pos, depth, True, False, pos, True))
        pos = min(hole, end)
    return out


def _host_pieces(fd: int, start: int, n: int) -> list[tuple[int, int, bool]]:
    """[start, start+n) of the image file split into (offset, length, is_hole):
    qemu reports data clusters in holes of the file as reading zero."""
    return [(s, k, not data) for s, k, _, data, _, _, _ in _seek_status(fd, start, n, 0)]


def _layer_status(b: BlockBackend, start: int, n: int, depth: int) -> list[Status]:
    from .image import Qcow2Image

    if isinstance(b, Qcow2Image):
        return _status(b, start, n, depth)
    if isinstance(b, RawBackend) and not b.is_block_device:
        return _seek_status(b.fd, start, n, depth)
    return [(start, n, depth, True, False, start, True)]


def _status(img: Qcow2Image, offset: int, length: int, depth: int) -> list[Status]:
    out: list[Status] = []
    for ext in allocation(img, offset, length):
        s, n = ext.start, ext.length
        if ext.kind == "data":
            assert ext.host_offset is not None
            for hs, hn, zero in _host_pieces(img._c.f.fd, ext.host_offset, n):
                out.append((s + hs - ext.host_offset, hn, depth, True, zero, hs, True))
        elif ext.kind == "compressed":
            out.append((s, n, depth, True, False, None, True))
        elif ext.kind == "zero":
            out.append((s, n, depth, False, True, None, True))
        else:
            b = img.backing
            inside = 0 if b is None else max(0, min(s + n, b.size) - s)
            if inside:
                assert b is not None
                out.extend(_layer_status(b, s, inside, depth + 1))
            if n > inside:
                out.append((s + inside, n - inside, depth, False, True, None, False))
    return out


def _merge(entries: list[Status]) -> list[Status]:
    out: list[Status] = []
    for e in entries:
        if out:
            p = out[-1]
            if (p[2:5] == e[2:5] and p[6] == e[6] and p[0] + p[1] == e[0]
                    and ((p[5] is None and e[5] is None)
                         or (p[5] is not None and e[5] is not None and p[5] + p[1] == e[5]))):
                out[-1] = (p[0], p[1] + e[1], p[2], p[3], p[4], p[5], p[6])
                continue
        out.append(e)
    return out


def block_status(img: Qcow2Image, offset: int, length: int) -> list[tuple[int, int, int, bool, bool, int | None]]:
    """(start, length, depth, data, zero, host_offset) through the chain, as
    `qemu-img map --output json` reports it (depth 0 is this image)."""
    return [e[:6] for e in _merge(_status(img, offset, length, 0))]


def map_entries(img: Qcow2Image, offset: int, length: int) -> list[dict[str, object]]:
    """The entries of `qemu-img map --output json`, with its "present" flag."""
    out: list[dict[str, object]] = []
    for s, n, depth, data, zero, host, present in _merge(_status(img, offset, length, 0)):
        d: dict[str, object] = {"start": s, "length": n, "depth": depth, "present": present, "zero": zero,
                                "data": data}
        if host is not None:
            d["offset"] = host
        out.append(d)
    return out


def info(img: Qcow2Image) -> dict[str, object]:
    """The fields of `qemu-img info --output json` that apply."""
    core = img._c
    h = core.header
    d: dict[str, object] = {}
    if h.backing_file is not None and h.backing_format is not None:
        d["backing-filename-format"] = h.backing_format
    if core.snapshots:
        d["snapshots"] = [s.info() for s in core.snapshots]
    d["virtual-size"] = img.size
    d["filename"] = img.path
    d["cluster-size"] = core.cs
    d["format"] = "qcow2"
    d["actual-size"] = os.fstat(core.f.fd).st_blocks * 512
    data: dict[str, object]
    if h.version >= 3:
        data = {"compat": "1.1", "compression-type": "zlib", "lazy-refcounts": h.lazy_refcounts,
                "refcount-bits": h.refcount_bits, "corrupt": h.corrupt, "extended-l2": False}
    else:
        data = {"compat": "0.10", "compression-type": "zlib", "refcount-bits": h.refcount_bits}
    d["format-specific"] = {"type": "qcow2", "data": data}
    if h.backing_file is not None:
        d["full-backing-filename"] = backing_path(img.path, h.backing_file)
        d["backing-filename"] = h.backing_file
    d["dirty-flag"] = h.dirty
    return d
