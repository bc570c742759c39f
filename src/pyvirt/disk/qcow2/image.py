"""`Qcow2Image`: a qcow2 file as a `BlockBackend`.

Guest reads and writes are translated cluster by cluster through the L1
table and the cached L2 tables (`core.py`); runs of clusters that are
contiguous in the file move in one preadv/pwritev, straight between the
file and the caller's views. A hit in the L2 cache costs no syscall
besides the data transfer.

Writes to a cluster that is not ours alone (unallocated, zero, compressed,
or shared with a snapshot: COPIED clear) allocate new clusters and fill the
parts of them the write does not cover from the old contents (copy on
write: the backing file, zeros, the shared cluster or the decompressed
one), in the same pwritev as the guest data. The crash-safe order of the
metadata updates that follow is described in `core.py`.
"""

from __future__ import annotations

import os
import threading

from ..backend import BlockBackend
from ..errors import DiskError
from ..raw import RawBackend, validate_serial
from . import chain, modify
from .compress import decompress_cluster
from .core import Qcow2Core
from .errors import Qcow2Error
from .header import INCOMPAT_DIRTY, Qcow2Header, pack_header, parse_header
from .hostfile import IOV_MAX, ZEROS, Cursor, HostFile, fill_from, fill_zero
from .tables import (COMPRESSED, NORMAL, OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO, UNALLOCATED,
                     Extent, cluster_type)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .check import CheckResult
    from .snapshot import SnapshotInfo

_INPLACE_MASK = OFLAG_COPIED | OFLAG_COMPRESSED | OFLAG_ZERO


class Qcow2Image(BlockBackend):
    """An open qcow2 image (version 2 or 3) and its backing chain.

    `backing=False` opens the image alone (reads of unallocated clusters
    then return zeros); `lock=False` skips the OFD locks. Raises Qcow2Error
    for corrupt or unsupported images, DiskError for I/O and lock failures.
    """

    backing: BlockBackend | None = None
    _core: Qcow2Core | None = None
    _raw: RawBackend | None = None

    def __init__(self, path: str, readonly: bool = False, *, serial: str | None = None, lock: bool = True,
                 backing: bool = True, _seen: frozenset[tuple[int, int]] = frozenset()) -> None:
        self.path = path
        self.readonly = readonly
        self.backing = None
        # virtio-blk calls from its I/O thread and a worker pool: one lock
        # serializes requests (metadata and the data transfer with it).
        self._lock = threading.RLock()
        if serial is not None:
            validate_serial(path, serial)
        self._raw = RawBackend(path, readonly, lock=lock)
        try:
            self._open(serial, lock, backing, _seen)
        except BaseException:
            self.close()
            raise

    def _open(self, serial: str | None, lock: bool, open_backing: bool, seen: frozenset[tuple[int, int]]) -> None:
        assert self._raw is not None
        f = HostFile(self.path, self._raw.fd, self._raw.size, self.readonly)
        head = f.read(0, min(f.size, 1 << 16), "the header")
        if len(head) >= 24:
            bits = int.from_bytes(head[20:24], "big")
            if 16 < bits <= 21 and len(head) < min(f.size, 1 << bits):
                head = f.read(0, min(f.size, 1 << bits), "the header")
        header = parse_header(head, f.size, self.path)
        if not self.readonly:
            if header.corrupt:
                raise Qcow2Error(f"{self.path}: the image is marked corrupt; open it read-only, or repair it "
                                 "with 'qemu-img check -r all'")
            if header.autoclear_features:  # features we do not maintain: the spec says clear them first
                header = _replace(header, autoclear_features=0)
                f.write(0, pack_header(header))
                f.sync()
        self._core = core = Qcow2Core(f, header, self.readonly)
        self._f = f
        if not self.readonly and header.dirty:
            from .check import rebuild_after_crash

            rebuild_after_crash(core)
            core.update_header(incompatible_features=core.header.incompatible_features & ~INCOMPAT_DIRTY)
        self.size = header.size
        self.cluster_size = core.cs
        self.version = header.version
        self.id = serial if serial is not None else self._raw.id
        self.discard_supported = not self.readonly
        self._zcache: tuple[int, int, bytes] | None = None
        self._cfree = (0, -1)  # (next free byte in the compressed-data cluster, free epoch it is valid for)
        st = os.fstat(f.fd)
        self._seen = seen | {(st.st_dev, st.st_ino)}
        self._use_locks = lock
        if open_backing and header.backing_file is not None:
            self.backing = chain.open_backing(self, self._seen, lock)

    # --- attributes -------------------------------------------------------------------
    @property
    def header(self) -> Qcow2Header:
        return self._c.header

    @property
    def backing_file(self) -> str | None:
        return self._c.header.backing_file

    @property
    def backing_format(self) -> str | None:
        return self._c.header.backing_format

    @property
    def _c(self) -> Qcow2Core:
        if self._core is None:
            raise DiskError(f"{self.path}: the image is closed")
        return self._core

    # --- reads ---------------------------------------------------------------------------
    def _fast_host(self, offset: int, n: int, write: bool) -> int:
        """The file offset of [offset, offset+n) when it lies in one cluster
        that is plainly allocated (and, for `write`, ours alone: COPIED in L1
        and L2) and sits where data may; else -1 (take the general path)."""
        core = self._core
        if core is None or n <= 0 or offset < 0 or offset + n > self.size:
            return -1
        cb = core.cb
        cmask = (1 << cb) - 1
        if (offset & cmask) + n > cmask + 1:
            return -1
        l1e = core.l1[offset >> (cb + core.l2_bits)]
        if not l1e & OFFSET_MASK or (write and not l1e & OFLAG_COPIED):
            return -1
        e = core.l2cache.get(l1e & OFFSET_MASK).entries[(offset >> cb) & core.l2_mask]
        host = e & OFFSET_MASK
        if e & (OFLAG_COMPRESSED | OFLAG_ZERO) or not host or host & cmask or (write and not e & OFLAG_COPIED):
            return -1
        if write and (host >= self._f.size or core.overlaps_metadata(host, cmask + 1)):
            return -1
        return host + (offset & cmask)

    def read_into(self, offset: int, views: Sequence[memoryview]) -> int:
        with self._lock:
            return self._read(offset, views)

    def _read(self, offset: int, views: Sequence[memoryview]) -> int:
        if len(views) == 1:  # the common request: one buffer inside one allocated cluster
            n = len(views[0])
            at = self._fast_host(offset, n, False)
            if at >= 0:
                try:
                    if os.preadv(self._f.fd, views, at) == n:
                        return n
                except OSError as err:
                    raise DiskError(f"{self.path}: read at {at:#x} failed: {err.strerror}") from err
        total = 0
        for v in views:
            total += len(v)
        self.check_range(offset, total)
        core = self._c
        cb, l2_bits, l2_mask = core.cb, core.l2_bits, core.l2_mask
        cs = 1 << cb
        cmask = cs - 1
        l1, get = core.l1, core.l2cache.get
        fd = self._f.fd
        cur = Cursor(views)
        pos, end = offset, offset + total
        while pos < end:
            l1i = pos >> (cb + l2_bits)
            chunk_end = min(end, (l1i + 1) << (cb + l2_bits))
            l2off = l1[l1i] & OFFSET_MASK
            if not l2off:
                self._read_unallocated(pos, chunk_end - pos, cur)
                pos = chunk_end
                continue
            entries = get(l2off).entries
            last = ((chunk_end - 1) >> cb) & l2_mask
            while pos < chunk_end:
                i = (pos >> cb) & l2_mask
                e = entries[i]
                j = i + 1
                if e & OFLAG_COMPRESSED:
                    n = min(chunk_end, (pos | cmask) + 1) - pos
                    data = self._decompress(e)
                    fill_from(cur.take(n), memoryview(data)[pos & cmask:(pos & cmask) + n])
                elif e & OFLAG_ZERO:
                    while j <= last and entries[j] & (OFLAG_ZERO | OFLAG_COMPRESSED) == OFLAG_ZERO:
                        j += 1
                    n = min(chunk_end, (((pos >> cb) + j - i) << cb)) - pos
                    fill_zero(cur.take(n))
                elif e & OFFSET_MASK:
                    host = e & OFFSET_MASK
                    if host & cmask:
                        raise Qcow2Error(f"{self.path}: L2 entry {e:#x} for guest offset {pos:#x} points to an "
                                         "unaligned cluster (the image is corrupt)")
                    nxt = host + cs
                    while j <= last and entries[j] & ~OFLAG_COPIED == nxt:
                        j += 1
                        nxt += cs
                    n = min(chunk_end, (((pos >> cb) + j - i) << cb)) - pos
                    bufs = cur.take(n)
                    at = host + (pos & cmask)
                    try:
                        got = os.preadv(fd, bufs, at) if len(bufs) <= IOV_MAX else 0
                    except OSError as e2:
                        raise DiskError(f"{self.path}: read at {at:#x} failed: {e2.strerror}") from e2
                    if got < n:
                        self._f.readv(at, bufs)  # short: past the end of the file, or interrupted
                else:
                    while j <= last and not entries[j] & ~OFLAG_COPIED:
                        j += 1
                    n = min(chunk_end, (((pos >> cb) + j - i) << cb)) - pos
                    self._read_unallocated(pos, n, cur)
                pos += n
        return total

    def _read_unallocated(self, pos: int, n: int, cur: Cursor) -> None:
        b = self.backing
        inside = 0 if b is None else max(0, min(n, b.size - pos))
        if inside:
            assert b is not None
            b.read_into(pos, cur.take(inside))
        if n > inside:
            fill_zero(cur.take(n - inside))

    def _decompress(self, entry: int) -> bytes:
        core = self._c
        z = self._zcache
        if z is not None and z[0] == entry and z[1] == core.rc.free_epoch:
            return z[2]
        off, length = core.compressed.decode(entry)
        avail = min(length, self._f.size - off)
        where = f"{self.path}: compressed cluster at {off:#x}"
        if avail <= 0:
            raise Qcow2Error(f"{where} lies outside the file")
        data = decompress_cluster(self._f.read(off, avail, "compressed cluster data"), core.cs, where)
        self._zcache = (entry, core.rc.free_epoch, data)
        return data

    def _old_data(self, entry: int, guest: int, a: int, b: int) -> list[memoryview] | None:
        """Bytes [a, b) of the guest cluster at `guest` before this write
        (copy on write); None when they read as zeros."""
        kind = cluster_type(entry)
        if kind == NORMAL:
            buf = memoryview(bytearray(b - a))
            self._f.readv((entry & OFFSET_MASK) + a, [buf])
            return [buf]
        if kind == COMPRESSED:
            return [memoryview(self._decompress(entry))[a:b]]
        if kind == UNALLOCATED and self.backing is not None and guest + a < self.backing.size:
            buf = memoryview(bytearray(b - a))
            self._read_unallocated(guest + a, b - a, Cursor([buf]))
            return [buf]
        return None

    # --- writes -----------------------------------------------------------------------------
    def write_from(self, offset: int, views: Sequence[memoryview]) -> int:
        with self._lock:
            return self._write_from(offset, views)

    def _write_from(self, offset: int, views: Sequence[memoryview]) -> int:
        if len(views) == 1 and not self.readonly:  # one buffer inside one cluster that is ours: in place
            n = len(views[0])
            at = self._fast_host(offset, n, True)
            if at >= 0:
                self._c.unsynced = True
                try:
                    done = os.pwritev(self._f.fd, views, at)
                except OSError as err:
                    raise DiskError(f"{self.path}: write at {at:#x} failed: {err.strerror}") from err
                if done < n:
                    self._f.writev(at + done, [views[0][done:]])
                return n
        total = 0
        for v in views:
            total += len(v)
        self.check_range(offset, total, write=True)
        if total:
            self._write(offset, total, Cursor(views))
        return total

    def _write(self, pos: int, total: int, cur: Cursor) -> None:
        core = self._c
        cb, l2_bits, l2_mask = core.cb, core.l2_bits, core.l2_mask
        cs = 1 << cb
        cmask = cs - 1
        f = self._f
        end = pos + total
        core.unsynced = True
        while pos < end:
            l1i = pos >> (cb + l2_bits)
            chunk_end = min(end, (l1i + 1) << (cb + l2_bits))
            t = core.l2_write(l1i)
            entries = t.entries
            last = ((chunk_end - 1) >> cb) & l2_mask
            while pos < chunk_end:
                i = (pos >> cb) & l2_mask
                e = entries[i]
                j = i + 1
                if e & _INPLACE_MASK == OFLAG_COPIED and e & OFFSET_MASK:
                    host = e & OFFSET_MASK
                    nxt = host + cs
                    while j <= last and entries[j] == nxt | OFLAG_COPIED:
                        j += 1
                        nxt += cs
                    n = min(chunk_end, ((pos >> cb) + j - i) << cb) - pos
                    self._check_host(host, nxt - host)
                    f.writev(host + (pos & cmask), cur.take(n))
                    pos += n
                    continue
                while j <= last and not (entries[j] & _INPLACE_MASK == OFLAG_COPIED and entries[j] & OFFSET_MASK):
                    j += 1
                k = j - i
                g0 = (pos >> cb) << cb
                run_end = min(chunk_end, g0 + (k << cb))
                host = core.alloc(k)
                # Past the end of the file the new clusters read as zeros already: zero
                # fills there are left as holes (qemu-img check only wants each cluster to
                # start inside the file, which the guest data guarantees).
                sparse = host >= f.size
                start = host
                iov: list[memoryview] = []
                if pos > g0:
                    head = self._old_data(e, g0, 0, pos - g0)
                    if head is not None:
                        iov = head
                    elif sparse:
                        start = host + (pos - g0)
                    else:
                        iov = [ZEROS[:pos - g0]]
                iov += cur.take(run_end - pos)
                if run_end & cmask:
                    g_last = run_end & ~cmask
                    tail = self._old_data(entries[i + k - 1], g_last, run_end - g_last, cs)
                    if tail is not None:
                        iov += tail
                    elif not sparse:
                        iov.append(ZEROS[:cs - (run_end - g_last)])
                f.writev(start, iov)
                for m in range(k):
                    old = entries[i + m]
                    entries[i + m] = (host + (m << cb)) | OFLAG_COPIED
                    if old:
                        core.free_entry(old)
                t.dirty = True
                pos = run_end
        core.maybe_flush()

    def _check_host(self, host: int, length: int) -> None:
        core = self._c
        if host & (core.cs - 1) or host >= self._f.size:
            raise Qcow2Error(f"{self.path}: L2 entry points to {host:#x}, "
                             f"{'unaligned' if host & (core.cs - 1) else 'past the end of the file'} "
                             "(the image is corrupt)")
        what = core.overlaps_metadata(host, length)
        if what:
            raise Qcow2Error(f"{self.path}: a data cluster at {host:#x} overlaps {what} (the image is corrupt)")

    def write_compressed_cluster(self, cluster_index: int, data: bytes) -> None:
        """Store guest cluster `cluster_index` deflated (raw zlib, 4 KiB
        window) when that is smaller, else as a normal cluster. `data` is
        the cluster (shorter only for the disk's last cluster: zero padded)."""
        with self._lock:
            modify.write_compressed_cluster(self, cluster_index, data)

    def discard(self, offset: int, length: int) -> None:
        with self._lock:
            modify.discard(self, offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        with self._lock:
            modify.write_zeroes(self, offset, length, may_unmap)

    # --- durability and teardown ------------------------------------------------------------
    def flush(self) -> None:
        if not self.readonly:
            with self._lock:
                self._c.flush()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        core, self._core = self._core, None
        err: BaseException | None = None
        try:
            if core is not None:
                core.close()
        except BaseException as e:  # still release the file and the chain
            err = e
        finally:
            backing, self.backing = self.backing, None
            if backing is not None:
                backing.close()
            raw, self._raw = self._raw, None
            if raw is not None:
                raw.close()
        if err is not None:
            raise err

    # --- image operations (in their own modules) ------------------------------------------------
    def allocation(self, offset: int, length: int) -> list[Extent]:
        from .status import allocation

        with self._lock:
            return allocation(self, offset, length)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int, int, bool, bool, int | None]]:
        from .status import block_status

        with self._lock:
            return block_status(self, offset, length)

    def map_entries(self, offset: int = 0, length: int | None = None) -> list[dict[str, object]]:
        from .status import map_entries

        with self._lock:
            return map_entries(self, offset, self.size - offset if length is None else length)

    def info(self) -> dict[str, object]:
        from .status import info

        with self._lock:
            return info(self)

    def check(self, repair: bool = False) -> CheckResult:
        from .check import check

        with self._lock:
            return check(self, repair)

    def resize(self, new_size: int) -> None:
        from .resize import resize

        with self._lock:
            resize(self, new_size)

    def snapshots(self) -> list[SnapshotInfo]:
        return list(self._c.snapshots)

    def create_snapshot(self, name: str) -> None:
        from .snapshot_ops import create_snapshot

        with self._lock:
            create_snapshot(self, name)

    def apply_snapshot(self, name_or_id: str) -> None:
        from .snapshot_ops import apply_snapshot

        with self._lock:
            apply_snapshot(self, name_or_id)

    def delete_snapshot(self, name_or_id: str) -> None:
        from .snapshot_ops import delete_snapshot

        with self._lock:
            delete_snapshot(self, name_or_id)

    def set_backing(self, backing_file: str | None, backing_format: str | None) -> None:
        with self._lock:
            chain.set_backing(self, backing_file, backing_format)


def _replace(h: Qcow2Header, **changes: int) -> Qcow2Header:
    import dataclasses

    return dataclasses.replace(h, **changes)  # type: ignore[arg-type]
