"""The disks' half of `pyvirt vm snapshot`: freeze them with the guest's memory.

A snapshot's memory is taken at one instant; its disks must be too, or a
restore pairs old memory with newer disks. `DiskSnapshot` does that inside
the snapshot's quiet window (vCPUs parked, I/O thread held, virtio-blk
drained: `save_machine` calls `take` there), for every writable disk:

- "overlay" (the default; libvirt's external snapshot): write the image
  back, create `<image stem>.<snapshot stem>.qcow2` next to it (in the
  snapshot file's directory for a block device) with the image as its
  backing file, and switch the running virtio-blk device to it. The image
  is frozen from then on: it belongs to the snapshot, whose config section
  records it with "frozen": true (and the overlay the VM went on with).
- "internal": a qcow2 internal snapshot of the image, named after the
  snapshot file; recorded as "internal_snapshot". Raw images have none:
  refused before the VM pauses.
- "none": nothing (what pyvirt did before; a restore warns that the disk
  changed).

Read-only disks need nothing. If anything fails (no space for an overlay,
a lock in the way) or the snapshot file cannot be written, `undo` puts
every disk back as it was (the devices serve their old backends, which
were never closed, and the overlays are deleted), so nothing is lost and
the VM runs on. `commit`, after the file is written, closes the old
backends. vmm/disk_restore.py is the other half.
"""

from __future__ import annotations

import os
import stat

from .._log import get_logger
from .machine import VmError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..devices.virtio.blk import VirtioBlk
    from ..disk.backend import BlockBackend
    from .device_config import DiskConfig
    from .machine import Machine

log = get_logger(__name__)

MODES = ("overlay", "internal", "none")


class DiskSnapshotError(VmError):
    """The disks cannot be snapshotted (or restored) as asked; the message says what to do."""


class _Disk:
    """A writable disk of the machine: its index in cfg.disks and its device."""

    __slots__ = ("index", "dev", "cfg", "path", "overlay_dir")

    def __init__(self, index: int, dev: VirtioBlk, cfg: DiskConfig, overlay_dir: str) -> None:
        self.index, self.dev, self.cfg, self.overlay_dir = index, dev, cfg, overlay_dir
        self.path = os.path.abspath(cfg.path)


class _Done:
    """What `take` did to one disk, step by step, so `undo` can reverse exactly that."""

    __slots__ = ("disk", "old", "overlay", "shared", "new", "switched", "tag")

    def __init__(self, disk: _Disk, old: BlockBackend) -> None:
        self.disk, self.old = disk, old
        self.overlay = ""  # the file, once reserved
        self.shared = False  # the old backend's lock made shared
        self.new: BlockBackend | None = None  # the overlay, open
        self.switched = False  # the device serves the overlay
        self.tag = ""  # the internal snapshot, once made


class DiskSnapshot:
    """The disk work of one snapshot of machine `m` to `snapshot_path`.
    The constructor refuses (DiskSnapshotError) what cannot be done, before
    anything changes; `take`, `undo`, `commit` as described above."""

    def __init__(self, m: Machine, snapshot_path: str, mode: str) -> None:
        if mode not in MODES:
            raise DiskSnapshotError(f"disk snapshot method {mode!r} is unknown (use {', '.join(MODES)})")
        self.m, self.mode = m, mode
        self.snapshot_path = os.path.abspath(snapshot_path)
        self._done: list[_Done] = []
        self._all: list[tuple[str, bool]] = []  # (path, read-only) of every disk, for the reply
        self._disks: list[_Disk] = []
        blks = [d for d in (m.virtio.devices if m.virtio is not None else ()) if d.name == "blk"]
        disks = list(m.cfg.disks)
        if len(blks) != len(disks):
            raise DiskSnapshotError(f"the VM has {len(disks)} disks configured and {len(blks)} virtio-blk "
                                    "devices; cannot tell which is which")
        for i, (cfg, dev) in enumerate(zip(disks, blks)):
            dev = _blk(dev)
            self._all.append((os.path.abspath(cfg.path), dev.backend.readonly))
            if dev.backend.readonly or mode == "none":
                continue
            disk = _Disk(i, dev, cfg, self._overlay_dir(cfg.path))
            self._check(disk)
            self._disks.append(disk)

    @property
    def needed(self) -> bool:
        """Whether `take` has anything to do."""
        return bool(self._disks)

    def _overlay_dir(self, path: str) -> str:
        try:
            block = stat.S_ISBLK(os.stat(path).st_mode)
        except OSError:
            block = False
        # Next to the image it sits on; /dev is no place for files.
        return os.path.dirname(self.snapshot_path if block else os.path.abspath(path))

    def _check(self, disk: _Disk) -> None:
        from ..disk.overlay import format_of

        if self.mode == "internal" and format_of(disk.dev.backend) != "qcow2":
            raise DiskSnapshotError(f"disk {disk.path} is a raw image, which has no internal snapshots: "
                                    "take the snapshot with --disks overlay (the default) or --disks none")
        if self.mode == "overlay" and not os.access(disk.overlay_dir, os.W_OK | os.X_OK):
            raise DiskSnapshotError(f"cannot create the overlay for disk {disk.path} in {disk.overlay_dir}: no "
                                    "permission to create files there (make it writable, or take the snapshot "
                                    "with --disks none)")

    # --- in the quiet window ------------------------------------------------------
    def take(self, header: dict[str, object]) -> Callable[[], None]:
        """Snapshot every writable disk and complete the config section's disk
        entries (`header`, from snapshot_header.machine_header); returns
        `undo`, for a snapshot file that then cannot be written. On failure
        everything is undone and DiskSnapshotError says why."""
        from ..disk import DiskError

        entries = _disk_entries(header)
        try:
            for disk in self._disks:
                entry = entries[disk.index]
                if entry.get("path") != disk.path:
                    raise DiskSnapshotError(f"the config section's disk {disk.index} is {entry.get('path')!r}, "
                                            f"not {disk.path!r}")
                if self.mode == "overlay":
                    self._overlay(disk, entry)
                else:
                    self._internal(disk, entry)
        except BaseException as e:
            self.undo()
            if isinstance(e, (DiskError, OSError, ValueError)):  # ValueError: replace_backend's size check
                raise DiskSnapshotError(f"cannot snapshot the disks: {e}; every disk was left as it was") from e
            raise
        return self.undo

    def _overlay(self, disk: _Disk, entry: dict[str, object]) -> None:
        from ..disk import open_disk
        from ..disk.overlay import candidates, create_overlay, format_of, quiesce, reserve, set_lock, stem
        from .device_config import DiskConfig

        dev = disk.dev
        with dev.lock:  # no request starts meanwhile (the I/O thread is held too)
            dev.drain()
            old = dev.backend
            done = _Done(disk, old)
            self._done.append(done)
            quiesce(old)
            st = os.stat(disk.path)  # the frozen image, as the snapshot will have it
            fmt = format_of(old)
            done.overlay = reserve(candidates(disk.overlay_dir, f"{stem(disk.path)}.{stem(self.snapshot_path)}"))
            create_overlay(done.overlay, disk.path, fmt, old.size)
            set_lock(old, exclusive=False)  # the overlay reads the image: shared locks from now on
            done.shared = True
            done.new = open_disk(done.overlay, False, "qcow2", serial=old.id)  # the guest keeps its disk's serial
            dev.replace_backend(done.new)
            done.switched = True
        c = disk.cfg
        self.m.cfg.disks[disk.index] = DiskConfig(done.overlay, False, old.id, "qcow2", c.iops, c.bps)
        entry.update(frozen=True, overlay=done.overlay, format=fmt, serial=c.serial or old.id,
                     size=st.st_size, mtime_ns=st.st_mtime_ns)

    def _internal(self, disk: _Disk, entry: dict[str, object]) -> None:
        from ..disk.overlay import stem

        dev = disk.dev
        with dev.lock:
            dev.drain()
            img = dev.backend
            names = {n for s in img.snapshots() for n in (s.name, s.id)}  # type: ignore[attr-defined]  # qcow2 (_check)
            base = stem(self.snapshot_path)
            if base.isdigit():
                base = f"pyvirt-{base}"  # qcow2 tools would take an all-digit name for a snapshot ID
            tag = next(t for t in [base, *(f"{base}-{n}" for n in range(2, len(names) + 3))] if t not in names)
            done = _Done(disk, img)
            img.create_snapshot(tag)  # type: ignore[attr-defined]
            done.tag = tag
            self._done.append(done)
        st = os.stat(disk.path)
        entry.update(internal_snapshot=tag, format="qcow2", size=st.st_size, mtime_ns=st.st_mtime_ns)

    def undo(self) -> None:
        """Put every disk back as it was before `take`. Never raises: what
        cannot be undone is logged (and the VM still has a working disk)."""
        from ..disk.overlay import remove, set_lock

        while self._done:
            done = self._done.pop()
            disk = done.disk
            steps: list[tuple[str, object]] = []
            if done.tag:
                steps.append((f"deleting internal snapshot {done.tag!r}",
                               lambda: done.old.delete_snapshot(done.tag)))  # type: ignore[attr-defined]
            if done.switched:
                steps.append(("switching back to the image", lambda: disk.dev.replace_backend(done.old)))
            if done.new is not None:
                steps.append(("closing the overlay", done.new.close))
            if done.shared:
                steps.append(("taking back the image's exclusive lock", lambda: set_lock(done.old, exclusive=True)))
            if done.overlay:
                steps.append(("removing the overlay", lambda: remove(done.overlay)))
            for what, step in steps:
                try:
                    step()  # type: ignore[operator]
                except Exception as e:  # noqa: BLE001 - go on: the other steps still help
                    log.error("disk %s: %s failed while undoing the disk snapshot: %s", disk.path, what, e)
            self.m.cfg.disks[disk.index] = disk.cfg

    def commit(self) -> None:
        """The snapshot file is written: close the frozen images' old backends
        (the overlays keep them open read-only as their backing files)."""
        for done in self._done:
            if done.switched:
                try:
                    done.old.close()
                except Exception as e:  # noqa: BLE001 - the VM runs on the overlay either way
                    log.warning("disk %s: closing it after the snapshot failed: %s", done.disk.path, e)

    def report(self) -> list[dict[str, object]]:
        """What the snapshot did to each disk, for the API's reply."""
        by_path = {d.disk.path: d for d in self._done}
        out: list[dict[str, object]] = []
        for path, readonly in self._all:
            done = by_path.get(path)
            if readonly:
                out.append({"path": path, "method": "read-only"})
            elif done is not None and done.switched:
                out.append({"path": path, "method": "overlay", "overlay": done.overlay})
            elif done is not None and done.tag:
                out.append({"path": path, "method": "internal", "internal_snapshot": done.tag})
            else:
                out.append({"path": path, "method": "none"})
        return out


def _blk(dev: object) -> VirtioBlk:
    from ..devices.virtio.blk import VirtioBlk

    if not isinstance(dev, VirtioBlk):
        raise DiskSnapshotError(f"virtio device {dev!r} is named blk but is no VirtioBlk")
    return dev


def _disk_entries(header: dict[str, object]) -> list[dict[str, object]]:
    machine = header.get("machine")
    disks = machine.get("disks") if isinstance(machine, dict) else None
    if not isinstance(disks, list) or not all(isinstance(d, dict) for d in disks):
        raise DiskSnapshotError("the config section has no disk list to record the disks' snapshot in")
    return disks
