"""Handing a VM's disks from the source to the destination of a migration.

With shared storage both hosts open the same image, and only one may write
it: the source holds its OFD lock until switchover. So the source flushes
and closes its images after the last guest write (`release`), and reopens
them if the migration fails before the destination took over
(`Released.reacquire`); the destination builds its virtio-blk devices over a
`PendingDisk` (the geometry, read without a lock) and opens the images for
real only when the source has let go (`activate`). A qcow2 image is read
afresh there, so nothing cached before the last source write is used.
"""

from __future__ import annotations

from ..disk import DiskError, open_disk
from ..disk.backend import BlockBackend

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..devices.virtio.blk import VirtioBlk
    from ..vmm.machine import Machine


def blk_devices(m: Machine) -> list[VirtioBlk]:
    from ..devices.virtio.blk import VirtioBlk

    return [d for d in (m.virtio.devices if m.virtio is not None else ()) if isinstance(d, VirtioBlk)]


def image_format(backend: BlockBackend) -> str:
    return "qcow2" if type(backend).__name__ == "Qcow2Image" else "raw"


class Released:
    """The source's disks, flushed and closed; `reacquire` opens them again."""

    def __init__(self, devices: Sequence[VirtioBlk]) -> None:
        self.items: list[tuple[VirtioBlk, str, bool, str, str]] = []
        for dev in devices:
            b = dev.backend
            self.items.append((dev, b.path, b.readonly, image_format(b), b.id))

    def reacquire(self, attempts: int = 20, delay: float = 0.1) -> list[str]:
        """Reopen every released image; returns the errors (the device is then
        broken). A lock still held (a destination that is closing) is retried."""
        import time

        errors = []
        for dev, path, readonly, fmt, ident in self.items:
            for attempt in range(attempts):
                try:
                    dev.backend = open_disk(path, readonly, fmt, serial=ident)
                    break
                except DiskError as e:
                    if attempt == attempts - 1 or "lock" not in str(e):
                        errors.append(str(e))
                        break
                    time.sleep(delay)
        return errors


def release(m: Machine) -> Released:
    """Flush and close every disk of a quiesced machine (DiskError if a flush
    fails: then nothing was closed)."""
    devices = blk_devices(m)
    for dev in devices:
        if not dev.backend.readonly:
            dev.backend.flush()
    released = Released(devices)
    for dev in devices:
        dev.backend.close()
    return released


class PendingDisk(BlockBackend):
    """A disk the destination will open at switchover: its geometry (read
    without taking the lock), no I/O (the guest does not run before)."""

    def __init__(self, path: str, readonly: bool, fmt: str, serial: str | None) -> None:
        with open_disk(path, True, fmt or None, serial=serial, lock=False) as probe:
            self.size, self.block_size, self.id = probe.size, probe.block_size, probe.id
        self.path, self.readonly, self.format = path, readonly, fmt
        self.discard_supported = not readonly
        self.serial = serial

    def _no_io(self, *args: object) -> int:
        raise DiskError(f"{self.path}: the disk is not open yet (the migration has not switched over)")

    read_into = write_from = _no_io  # type: ignore[assignment]

    def flush(self) -> None:
        pass

    def discard(self, offset: int, length: int) -> None:
        self._no_io()

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self._no_io()

    def close(self) -> None:
        pass

    def open(self) -> BlockBackend:
        """The image, opened and locked; DiskError if it changed size meanwhile."""
        real = open_disk(self.path, self.readonly, self.format or None, serial=self.id)
        if real.size != self.size:
            real.close()
            raise DiskError(f"{self.path}: its size changed from {self.size} to {real.size} during the migration")
        return real


def activate(m: Machine) -> None:
    """Open every PendingDisk of the destination machine for real."""
    opened: list[tuple[VirtioBlk, BlockBackend]] = []
    try:
        for dev in blk_devices(m):
            if isinstance(dev.backend, PendingDisk):
                opened.append((dev, dev.backend.open()))
    except DiskError:
        for _, b in opened:
            b.close()
        raise
    for dev, b in opened:
        dev.backend = b
