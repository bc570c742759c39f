"""Creating qcow2 images (`qemu-img create -f qcow2`).

Layout of a new image: cluster 0 the header (with the backing format and
feature name table extensions and the backing file name), then the
refcount table, the refcount blocks that count all of this, and the L1
table (zeros). Like qemu-img, an existing file is truncated, but only
once we hold its write lock, so an image in use by a VM is not clobbered.
"""

from __future__ import annotations

import os
from array import array

from ..errors import DiskError
from ..raw import RawBackend
from .chain import BACKING_FORMATS, backing_path
from .errors import Qcow2Error
from .header import (COMPAT_LAZY_REFCOUNTS, EXT_BACKING_FORMAT, MAX_L1_BYTES, MAX_VIRTUAL_SIZE, V3_HEADER_LENGTH,
                     HeaderExtension, Qcow2Header, feature_table_extension, l1_entries_needed, pack_header)
from .hostfile import ZEROS
from .refcount import _typecode, pack_refblock
from .tables import OFLAG_COPIED, dump_table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .image import Qcow2Image

PREALLOCATION = ("off", "metadata", "falloc", "full")


def create(path: str, size: int | None, *, cluster_size: int = 65536, version: int = 3,
           backing_file: str | None = None, backing_format: str | None = None, lazy_refcounts: bool = False,
           refcount_bits: int = 16, preallocation: str = "off") -> None:
    """Create (or truncate and re-create) a qcow2 image at `path`.

    `size` None takes the backing file's size. Raises Qcow2Error for bad
    options, DiskError if the file cannot be written or is locked."""
    if cluster_size < 512 or cluster_size > 2 << 20 or cluster_size & (cluster_size - 1):
        raise Qcow2Error(f"{path}: cluster size {cluster_size} must be a power of two from 512 bytes to 2 MiB")
    if version not in (2, 3):
        raise Qcow2Error(f"{path}: qcow2 version must be 2 (compat 0.10) or 3 (compat 1.1), not {version}")
    if refcount_bits not in (1, 2, 4, 8, 16, 32, 64):
        raise Qcow2Error(f"{path}: refcount_bits must be a power of two from 1 to 64, not {refcount_bits}")
    if version == 2 and refcount_bits != 16:
        raise Qcow2Error(f"{path}: version 2 images have 16-bit refcounts")
    if version == 2 and lazy_refcounts:
        raise Qcow2Error(f"{path}: lazy refcounts need version 3")
    if preallocation not in PREALLOCATION:
        raise Qcow2Error(f"{path}: preallocation must be one of {', '.join(PREALLOCATION)}")
    if backing_format is not None and backing_format not in BACKING_FORMATS:
        raise Qcow2Error(f"{path}: unsupported backing format {backing_format!r}")
    if backing_file is None and backing_format is not None:
        raise Qcow2Error(f"{path}: a backing format needs a backing file")
    if backing_file is not None and preallocation != "off":
        raise Qcow2Error(f"{path}: preallocation cannot be combined with a backing file")
    if size is None:
        if backing_file is None:
            raise Qcow2Error(f"{path}: an image size is needed (or a backing file to take it from)")
        from . import open_image

        with open_image(backing_path(path, backing_file), True, backing_format) as b:
            size = b.size
    if size < 0 or size > MAX_VIRTUAL_SIZE:
        raise Qcow2Error(f"{path}: image size {size} is out of range")
    size = (size + 511) & ~511
    cb = cluster_size.bit_length() - 1
    l1_size = l1_entries_needed(size, cb)
    if l1_size * 8 > MAX_L1_BYTES:
        raise Qcow2Error(f"{path}: {size} bytes need an L1 table over {MAX_L1_BYTES >> 20} MiB; "
                         "use a bigger cluster size")
    order = refcount_bits.bit_length() - 1
    rb_entries = cluster_size * 8 // refcount_bits
    l1_clusters = -(-l1_size * 8 // cluster_size)
    nblocks, tcl = 1, 1
    while True:  # enough refcount blocks for all the metadata, and a table for them
        meta = 1 + tcl + nblocks + l1_clusters
        need_blocks = -(-meta // rb_entries)
        need_tcl = -(-need_blocks * 8 // cluster_size)
        if (need_blocks, need_tcl) == (nblocks, tcl):
            break
        nblocks, tcl = max(nblocks, need_blocks), max(tcl, need_tcl)
    rt_off = cluster_size
    rb_off = rt_off + tcl * cluster_size
    l1_off = rb_off + nblocks * cluster_size if l1_size else 0
    end = rb_off + (nblocks + l1_clusters) * cluster_size

    exts = []
    if backing_format is not None:
        exts.append(HeaderExtension(EXT_BACKING_FORMAT, backing_format.encode()))
    if version == 3:
        exts.append(feature_table_extension())
    header = Qcow2Header(version=version, cluster_bits=cb, size=size, l1_size=l1_size, l1_table_offset=l1_off,
                         refcount_table_offset=rt_off, refcount_table_clusters=tcl,
                         compatible_features=COMPAT_LAZY_REFCOUNTS if lazy_refcounts else 0,
                         refcount_order=order if version == 3 else 4,
                         header_length=V3_HEADER_LENGTH if version == 3 else 72,
                         additional=bytes(V3_HEADER_LENGTH - 104) if version == 3 else b"",
                         extensions=tuple(exts), backing_file=backing_file)
    head = pack_header(header)
    table = array("Q", bytes(tcl * cluster_size))
    for k in range(nblocks):
        table[k] = rb_off + k * cluster_size
    blocks = []
    for k in range(nblocks):
        vals = array(_typecode(order), bytes(rb_entries * max(1, refcount_bits // 8)))
        for c in range(k * rb_entries, min((k + 1) * rb_entries, end // cluster_size)):
            vals[c - k * rb_entries] = 1
        blocks.append(pack_refblock(vals, order))

    _write_file(path, end, [(0, head), (rt_off, dump_table(table)), (rb_off, b"".join(blocks))])
    if preallocation != "off":
        from .image import Qcow2Image

        img = Qcow2Image(path)
        try:
            preallocate(img, preallocation)
        finally:
            img.close()


def _write_file(path: str, end: int, parts: list[tuple[int, bytes]]) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.close(fd)
    except OSError as e:
        raise DiskError(f"{path}: cannot create the image: {e.strerror}") from e
    raw = RawBackend(path, False)  # the exclusive lock: refuse to clobber an image in use
    try:
        if raw.is_block_device:
            raise Qcow2Error(f"{path}: is a block device; pyvirt creates qcow2 images in regular files")
        os.ftruncate(raw.fd, 0)
        for off, data in parts:
            os.pwrite(raw.fd, data, off)
        os.ftruncate(raw.fd, end)
        os.fsync(raw.fd)
    except OSError as e:
        raise DiskError(f"{path}: writing the new image failed: {e.strerror}") from e
    finally:
        raw.close()


def preallocate(img: Qcow2Image, mode: str) -> None:
    """Allocate every L2 table and data cluster ("metadata"), and reserve
    ("falloc") or write ("full") the data clusters' space in the file."""
    core = img._c
    cs = core.cs
    nclusters = core.clusters(img.size)
    per = 1 << core.l2_bits
    file_end = core.f.size
    for l1i in range(-(-nclusters // per)):
        n = min(per, nclusters - l1i * per)
        t = core.l2_write(l1i)
        host = core.alloc(n)
        t.entries[0:n] = array("Q", range(host | OFLAG_COPIED, (host | OFLAG_COPIED) + n * cs, cs))
        t.dirty = True
        file_end = max(file_end, host + n * cs)
        try:
            if mode == "falloc":
                os.posix_fallocate(core.f.fd, host, n * cs)
            elif mode == "full":
                for off in range(host, host + n * cs, len(ZEROS)):
                    core.f.write(off, ZEROS[:min(len(ZEROS), host + n * cs - off)])
        except OSError as e:
            raise DiskError(f"{img.path}: preallocating {n * cs} bytes failed: {e.strerror}") from e
    core.flush(sync=False)
    if core.f.size < file_end:
        core.f.truncate(file_end)
    core.flush()
