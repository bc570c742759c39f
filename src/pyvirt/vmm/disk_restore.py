"""The disks of a snapshot being restored: `pyvirt restore FILE [--disks MODE]`.

A snapshot taken with its disks (vmm/disk_snapshot.py) records each
writable disk in its config section as one of:

- "frozen": true: the image is exactly as the guest's memory knows it, and
  other overlays may sit on it (the VM that took the snapshot runs on
  one). The restored VM must never write it. Default mode "overlay": a new
  overlay `<image stem>.<snapshot stem>-restoreN.qcow2` is made next to the
  image (in the snapshot file's directory for a block device), announced
  on stderr, and the restored VM's disk is that overlay. Mode "direct"
  writes to the image itself (the snapshot and the overlays on the image
  are then no longer consistent: a warning says so).
- "internal_snapshot": TAG: a qcow2 internal snapshot of the image. If the
  image is still exactly at TAG, the restored VM uses it. If it changed,
  the default mode refuses (reverting throws away whatever was written
  since, perhaps by another VM); mode "revert" reverts the image to TAG
  first; "direct" uses it as it is (with a warning). `pyvirt image snapshot
  -a TAG IMAGE` reverts by hand.
- neither (older files, `--disks none`, read-only disks): the image is used
  as it is, with a warning if its size or mtime changed since the snapshot.

The new keys are optional, so files written before them restore as they
did. The config section is untrusted: every key is type-checked here.
"""

from __future__ import annotations

import os
import stat
import sys

from .._log import get_logger
from .disk_snapshot import DiskSnapshotError
from .snapshot_header import _Fields

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import VmConfig
    from .device_config import DiskConfig
    from .snapshot import Snapshot

log = get_logger(__name__)

MODES = ("overlay", "revert", "direct")


class DiskRecord:
    """One disk of a snapshot's config section (after snapshot_header's checks)."""

    __slots__ = ("path", "size", "mtime_ns", "frozen", "overlay", "internal_snapshot")

    def __init__(self, path: str, size: int, mtime_ns: int, frozen: bool, overlay: str,
                 internal_snapshot: str | None) -> None:
        self.path, self.size, self.mtime_ns = path, size, mtime_ns
        self.frozen, self.overlay, self.internal_snapshot = frozen, overlay, internal_snapshot


def recorded_disks(snap: Snapshot) -> list[DiskRecord]:
    """The disks of the config section, their snapshot keys type-checked."""
    err = snap.error
    top = _Fields(snap.header(), "config", err)
    machine = _Fields(top.get("machine", dict), "config.machine", err)
    raw = machine.get("disks", list)
    assert isinstance(raw, list)
    out = []
    for i, entry in enumerate(raw):
        d = _Fields(entry, f"config.machine.disks[{i}]", err)
        tag, overlay = d.get("internal_snapshot", (str, type(None)), None), d.get("overlay", str, "")
        frozen = d.get("frozen", bool, False) is True
        size, mtime = d.get("size", int, -1), d.get("mtime_ns", int, -1)
        assert (tag is None or isinstance(tag, str)) and isinstance(overlay, str)
        assert isinstance(size, int) and isinstance(mtime, int)
        if tag is not None and (frozen or not tag):
            raise err(f"config.machine.disks[{i}] is both frozen and an internal snapshot, or names no snapshot")
        out.append(DiskRecord(d.str_("path"), size, mtime, frozen, overlay, tag))
    return out


class RestoredDisks:
    """The overlays a restore made; `discard` deletes them if the restore fails."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def discard(self) -> None:
        from ..disk.overlay import remove

        for path in self.created:
            remove(path)
        self.created.clear()


def restore_disks(snapshot_path: str, snap: Snapshot, cfg: VmConfig, mode: str = "overlay") -> RestoredDisks:
    """Get the disks of `cfg` (just read from `snap`) ready for the restored
    VM as `mode` says, changing `cfg.disks` where it runs on a new overlay.
    DiskSnapshotError (a VmError) for a disk that cannot be used so."""
    if mode not in MODES:
        raise DiskSnapshotError(f"--disks {mode!r}: use {', '.join(MODES)}")
    records = recorded_disks(snap)
    if len(records) != len(cfg.disks):
        raise snap.error("the disk list of the config section changed while it was read")
    out = RestoredDisks()
    try:
        for i, rec in enumerate(records):
            d = cfg.disks[i]
            if d.readonly:
                _warn_if_changed(rec)
            elif rec.internal_snapshot is not None:
                _internal(d, rec.internal_snapshot, mode)
            elif rec.frozen and mode != "direct":
                _warn_if_changed(rec)
                cfg.disks[i] = _overlay(snapshot_path, d, out)
            else:
                _warn_if_changed(rec)
                if rec.frozen:
                    log.warning("disk %s belongs to snapshot %s; --disks direct writes to it, so neither that "
                                "snapshot nor the VMs on overlays of the image will find it as they expect",
                                d.path, snapshot_path)
    except BaseException:
        out.discard()
        raise
    return out


def _warn_if_changed(rec: DiskRecord) -> None:
    try:
        st = os.stat(rec.path)
    except OSError:
        return  # opening it reports that
    if st.st_mtime_ns != rec.mtime_ns or st.st_size != rec.size:
        why = " (it should be frozen: something wrote to it)" if rec.frozen else ""
        log.warning("disk %s changed after the snapshot was taken%s: the guest may find its data "
                    "inconsistent with what it had cached", rec.path, why)


def _overlay(snapshot_path: str, d: DiskConfig, out: RestoredDisks) -> DiskConfig:
    """A new overlay on the frozen image `d` for the restored VM, as its disk."""
    from ..disk import DiskError, open_disk
    from ..disk.overlay import candidates, create_overlay, format_of, reserve, stem
    from .device_config import DiskConfig

    try:
        with open_disk(d.path, readonly=True, format=d.format or None) as frozen:
            size, serial, fmt = frozen.size, d.serial or frozen.id, format_of(frozen)
        try:
            block = stat.S_ISBLK(os.stat(d.path).st_mode)
        except OSError:
            block = False
        directory = os.path.dirname(os.path.abspath(snapshot_path if block else d.path))
        path = reserve(candidates(directory, f"{stem(d.path)}.{stem(snapshot_path)}-restore", numbered=True))
        out.created.append(path)
        create_overlay(path, d.path, fmt, size)
    except DiskError as e:
        raise DiskSnapshotError(f"disk {d.path} is frozen by the snapshot, and the restored VM needs an overlay "
                                f"on it: {e} (or restore with --disks direct to write to the image itself)") from e
    sys.stderr.write(f"pyvirt: disk {d.path} belongs to the snapshot; the restored VM writes to the new "
                     f"overlay {path}\n")
    return DiskConfig(path, False, serial, "qcow2", d.iops, d.bps)


def _internal(d: DiskConfig, tag: str, mode: str) -> None:
    """Check (or, mode "revert", make) that image `d` is at its internal snapshot `tag`."""
    from ..disk import DiskError
    from ..disk.detect import detect_format
    from ..disk.qcow2 import Qcow2Image
    from ..disk.qcow2.snapshot_current import at_snapshot

    try:
        if (d.format or detect_format(d.path)) != "qcow2":
            raise DiskSnapshotError(f"disk {d.path} has an internal snapshot {tag!r} recorded but is not a qcow2 "
                                    "image (was it replaced?)")
        img = Qcow2Image(d.path, True)
        try:
            current = at_snapshot(img, tag)
        finally:
            img.close()
        if current:
            return
        if mode == "direct":
            log.warning("disk %s changed since its internal snapshot %r was taken with this snapshot; --disks "
                        "direct uses it as it is, and the guest may find it inconsistent", d.path, tag)
            return
        if mode == "overlay":
            raise DiskSnapshotError(
                f"disk {d.path} changed since its internal snapshot {tag!r} was taken with this snapshot. Restore "
                f"with --disks revert to revert the image to it (what was written to it since is lost), or with "
                f"--disks direct to use it as it is; `pyvirt image snapshot -a {tag} {d.path}` reverts it by hand")
        img = Qcow2Image(d.path)
        try:
            img.apply_snapshot(tag)
        finally:
            img.close()
    except DiskError as e:
        raise DiskSnapshotError(f"disk {d.path}: {e}") from e
    sys.stderr.write(f"pyvirt: disk {d.path} reverted to its internal snapshot {tag!r}\n")


def restored_disk_paths(snap: Snapshot, cfg: VmConfig) -> dict[str, str]:
    """Saved disk path -> the one the restored machine serves it from: a
    frozen image's new overlay (virtio-blk refuses a state saved for another
    path; restore.DeviceLoader applies this to the device records)."""
    return {rec.path: d.path for rec, d in zip(recorded_disks(snap), cfg.disks) if rec.path != d.path}
