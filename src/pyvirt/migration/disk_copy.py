"""Copying disks during a migration, for hosts without shared storage.

With `copy_disks`, the destination creates each disk anew (same format,
same virtual size; an existing file is never overwritten) and the source
sends what its guest sees, chunk by chunk, while the guest keeps running
and writing:

- the source wraps each disk in a `WriteTracker`, which records the chunks
  the guest's writes, discards and zeroing touch, once they have completed
  (a chunk written after it was read is then sent again; one written before
  was read with the write in it);
- the bulk pass reads every chunk and sends those that are not all zero
  (the new file reads as zeros already);
- every pre-copy round sends the chunks written since, and the final round
  (the VM paused, the devices drained) the last of them, before the memory
  and the state.

A copied disk's contents are flattened: a qcow2 disk with a backing chain
arrives as one qcow2 image without a backing file.
"""

from __future__ import annotations

import os
import threading

from ..disk import DiskError, open_disk
from ..disk.backend import BlockBackend
from .stream import Channel, MigrationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..devices.virtio.blk import VirtioBlk

CHUNK = 1 << 20  # bytes per DISK message, and the dirty-tracking granularity


class WriteTracker(BlockBackend):
    """A backend that passes everything on and records the chunks written."""

    def __init__(self, inner: BlockBackend) -> None:
        self.inner = inner
        self.path, self.size, self.readonly, self.id = inner.path, inner.size, inner.readonly, inner.id
        self.block_size, self.discard_supported = inner.block_size, inner.discard_supported
        self._lock = threading.Lock()
        self.dirty: set[int] = set()

    def _mark(self, offset: int, length: int) -> None:
        if length > 0:
            with self._lock:
                self.dirty.update(range(offset // CHUNK, (offset + length - 1) // CHUNK + 1))

    def take(self) -> list[int]:
        with self._lock:
            taken, self.dirty = self.dirty, set()
        return sorted(taken)

    def read_into(self, offset: int, views: Sequence[memoryview]) -> int:
        return self.inner.read_into(offset, views)

    def write_from(self, offset: int, views: Sequence[memoryview]) -> int:
        try:
            return self.inner.write_from(offset, views)
        finally:  # even a failed write may have changed part of the range
            self._mark(offset, sum(len(v) for v in views))

    def flush(self) -> None:
        self.inner.flush()

    def discard(self, offset: int, length: int) -> None:
        try:
            self.inner.discard(offset, length)
        finally:
            self._mark(offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        try:
            self.inner.write_zeroes(offset, length, may_unmap)
        finally:
            self._mark(offset, length)

    def close(self) -> None:
        self.inner.close()


class DiskCopySource:
    """The source side: tracks the guest's writes and sends the disks."""

    def __init__(self, devices: Sequence[VirtioBlk]) -> None:
        self.devices = [d for d in devices if not d.backend.readonly]
        self.trackers = []
        for dev in self.devices:
            tracker = WriteTracker(dev.backend)
            dev.backend = tracker
            self.trackers.append(tracker)
        self.sent = 0

    def describe(self) -> list[dict[str, object]]:
        """What the destination creates: one entry per copied disk, by its index among the VM's disks."""
        return [{"size": t.size, "format": _format(t.inner)} for t in self.trackers]

    def _send_chunk(self, ch: Channel, index: int, tracker: WriteTracker, chunk: int, buf: bytearray,
                    skip_zero: bool) -> None:
        offset = chunk * CHUNK
        n = min(CHUNK, tracker.size - offset)
        view = memoryview(buf)[:n]
        tracker.inner.read_into(offset, [view])
        if skip_zero and not any(view):  # bytes.count would copy; any() on a memoryview stops early
            return
        ch.send_disk(index, offset, view)
        self.sent += n

    def bulk(self, ch: Channel, check: Callable[[], None]) -> None:
        """Every chunk that is not zero, while the guest runs."""
        buf = bytearray(CHUNK)
        for index, tracker in enumerate(self.trackers):
            for chunk in range((tracker.size + CHUNK - 1) // CHUNK):
                self._send_chunk(ch, index, tracker, chunk, buf, skip_zero=True)
                if chunk % 64 == 0:
                    check()

    def dirty_bytes(self) -> int:
        return sum(len(t.dirty) for t in self.trackers) * CHUNK

    def send_dirty(self, ch: Channel) -> int:
        """The chunks written since the last call; returns the bytes sent."""
        before = self.sent
        buf = bytearray(CHUNK)
        for index, tracker in enumerate(self.trackers):
            for chunk in tracker.take():
                self._send_chunk(ch, index, tracker, chunk, buf, skip_zero=False)
        return self.sent - before

    def finish(self) -> None:
        """Unwrap the disks (the trackers' records are no longer needed)."""
        for dev, tracker in zip(self.devices, self.trackers):
            if dev.backend is tracker:
                dev.backend = tracker.inner


def _format(backend: BlockBackend) -> str:
    return "qcow2" if type(backend).__name__ == "Qcow2Image" else "raw"


def copied_disk_indexes(readonly: Sequence[bool]) -> list[int]:
    """The VM's disks that are copied: the writable ones (a read-only disk
    must already be on the destination, like shared storage)."""
    return [i for i, ro in enumerate(readonly) if not ro]


def create_target(path: str, size: int, fmt: str) -> None:
    """Create the destination's copy of a disk; MigrationError if the path exists."""
    if os.path.lexists(path):
        raise MigrationError(f"{path} exists: the copy of a disk is created anew (remove it, or give another "
                             "--disk path=...)")
    try:
        if fmt == "qcow2":
            from ..disk.qcow2.create import create

            create(path, size)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
    except (OSError, DiskError) as e:
        raise MigrationError(f"cannot create {path} for the disk's copy: {e}") from e


class DiskCopyTarget:
    """The destination side: writes DISK messages into the new disks."""

    def __init__(self) -> None:
        self.backends: dict[int, BlockBackend] = {}  # copy index -> open backend
        self.created: list[str] = []

    def open(self, index: int, path: str, readonly: bool, fmt: str, serial: str | None) -> BlockBackend:
        backend = open_disk(path, readonly, fmt, serial=serial)
        self.backends[index] = backend
        return backend

    def receive(self, ch: Channel, length: int) -> int:
        from .stream import DISK_HEADER

        head = bytearray(DISK_HEADER.size)
        if length < len(head):
            raise MigrationError(f"{ch.peer} sent a DISK message of {length} bytes")
        ch.recv_into(memoryview(head), "receiving a disk")
        index, offset = DISK_HEADER.unpack(head)
        n = length - len(head)
        backend = self.backends.get(index)
        if backend is None:
            raise MigrationError(f"{ch.peer} sent data for disk {index}, which is not being copied")
        if n == 0 or offset % 512 or offset + n > backend.size:
            raise MigrationError(f"{ch.peer} sent disk data at {offset:#x}+{n:#x}, outside disk {index} "
                                 f"({backend.size:#x} bytes)")
        data = bytearray(n)
        ch.recv_into(memoryview(data), "receiving a disk")
        try:
            backend.write_from(offset, [memoryview(data)])
        except DiskError as e:
            raise MigrationError(f"writing the copy of disk {index}: {e}") from e
        return n

    def flush(self) -> None:
        for b in self.backends.values():
            b.flush()

    def remove_created(self) -> None:
        """After a failed migration: delete the copies this side created."""
        for b in self.backends.values():
            b.close()
        for path in self.created:
            try:
                os.unlink(path)
            except OSError:
                pass
