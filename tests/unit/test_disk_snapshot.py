"""Disk-consistent snapshots without a VM: virtio-blk devices over temporary
images, driven through the fake driver queue, frozen by DiskSnapshot (the
snapshot side) and put back in service by restore_disks (the restore side)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pyvirt.devices.virtio.blk import S_OK, T_IN, T_OUT, VirtioBlk
from pyvirt.disk import DiskError, open_disk
from pyvirt.disk import overlay as overlay_mod
from pyvirt.disk.qcow2 import Qcow2Image, create
from pyvirt.disk.qcow2.snapshot_current import at_snapshot
from pyvirt.disk.raw import RawBackend
from pyvirt.memory.guest import GuestMemory
from pyvirt.testing.virtio import FakeDriverQueue, FakeInterrupt
from pyvirt.vmm.commands import RequestError, Snapshot, parse_request
from pyvirt.vmm.config import VmConfig
from pyvirt.vmm.device_config import DiskConfig
from pyvirt.vmm.disk_restore import recorded_disks, restore_disks, restored_disk_paths
from pyvirt.vmm.disk_snapshot import DiskSnapshot, DiskSnapshotError
from pyvirt.vmm.snapshot import SnapshotError
from pyvirt.vmm.snapshot_header import config_from_header, machine_header

SIZE = 1 << 20
SECTOR = 512


def pattern(seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(SIZE))


class Disk:
    """A VirtioBlk device over an image, with a driver to read and write it."""

    def __init__(self, backend) -> None:
        self.dev = VirtioBlk(backend)
        self.mem = GuestMemory.from_bytearray(4 << 20)
        self.drv = FakeDriverQueue(self.mem, size=64)
        self.dev.driver_features = self.dev.device_features
        self.dev.activate(self.mem, [self.drv.virtqueue()], FakeInterrupt())

    def _request(self, readable: list[bytes], writable: list[int]) -> int:
        head = self.drv.add_chain(readable, writable)
        self.dev.queue_notify(0)
        self.dev.drain()
        self.drv.used()
        gpa, n = self.drv.writable_buffers(head)[-1]
        assert self.mem.read(gpa + n - 1, 1)[0] == S_OK
        return head

    def write(self, sector: int, data: bytes) -> None:
        self._request([struct.pack("<IIQ", T_OUT, 0, sector) + data], [1])

    def read(self, sector: int, length: int) -> bytes:
        head = self._request([struct.pack("<IIQ", T_IN, 0, sector)], [length, 1])
        return b"".join(self.mem.read(g, n) for g, n in self.drv.writable_buffers(head))[:length]


class FakeVirtio:
    def __init__(self, devices: list) -> None:
        self.devices = devices


class FakeMachine:
    """What DiskSnapshot uses of a Machine: the configuration and the virtio devices."""

    def __init__(self, disks: list[Disk], paths: list[str]) -> None:
        self.cfg = VmConfig(kernel="k.elf", disks=[DiskConfig(p) for p in paths])
        self.virtio = FakeVirtio([d.dev for d in disks])


class FakeSnapshot:
    """What the restore side reads of a snapshot file: its config section."""

    def __init__(self, path: str, header: dict) -> None:
        self.path = path
        self._header = json.loads(json.dumps(header))  # as a file would give it back

    def header(self) -> dict:
        return self._header

    def error(self, message: str) -> SnapshotError:
        return SnapshotError(f"{self.path}: {message}")


def header_for(m: FakeMachine) -> dict:
    return machine_header(m.cfg, kind="snapshot", pvm=False, backend="test", tsc_khz=0, regions=[], macs=[],
                          compression="none", created=0.0)


def raw_disk(tmp_path: Path, name: str, seed: int) -> tuple[Path, Disk]:
    path = tmp_path / name
    path.write_bytes(pattern(seed))
    return path, Disk(open_disk(str(path), format="raw"))


def can_lock_exclusively(path: Path) -> bool:
    try:
        RawBackend(str(path)).close()
        return True
    except DiskError:
        return False


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60)


# --- virtio-blk's backend switch ------------------------------------------------------------

def test_replace_backend_switches_and_returns_the_old_one(tmp_path: Path) -> None:
    a, disk = raw_disk(tmp_path, "a.raw", 1)
    b = tmp_path / "b.raw"
    b.write_bytes(pattern(2))
    old = disk.dev.backend
    new = RawBackend(str(b))
    assert disk.dev.replace_backend(new) is old
    assert disk.read(3, SECTOR) == pattern(2)[3 * SECTOR:4 * SECTOR]
    assert old.fd >= 0  # still open: the caller closes it (or switches back)
    old.close()
    small = tmp_path / "small.raw"
    small.write_bytes(bytes(SIZE // 2))
    with pytest.raises(ValueError, match="sectors"):
        disk.dev.replace_backend(RawBackend(str(small), lock=False))
    assert disk.dev.backend is new


# --- the snapshot side: overlays ---------------------------------------------------------------

def test_overlay_snapshot_freezes_the_image(tmp_path: Path) -> None:
    path, disk = raw_disk(tmp_path, "vm.raw", 1)
    old = disk.dev.backend
    m = FakeMachine([disk], [str(path)])
    plan = DiskSnapshot(m, str(tmp_path / "snap1.snap"), "overlay")  # type: ignore[arg-type]
    assert plan.needed
    header = header_for(m)
    plan.take(header)
    plan.commit()
    overlay = tmp_path / "vm.snap1.qcow2"
    entry = header["machine"]["disks"][0]
    assert entry["path"] == str(path) and entry["frozen"] is True and entry["overlay"] == str(overlay)
    assert entry["format"] == "raw" and entry["serial"] == old.id
    assert entry["mtime_ns"] == os.stat(path).st_mtime_ns and entry["size"] == SIZE
    assert isinstance(disk.dev.backend, Qcow2Image) and disk.dev.backend.path == str(overlay)
    assert disk.dev.backend.id == old.id  # the guest's disk keeps its serial
    assert disk.dev.state().path == str(overlay)  # a later save records the overlay
    assert m.cfg.disks[0].path == str(overlay) and m.cfg.disks[0].format == "qcow2"
    assert plan.report() == [{"path": str(path), "method": "overlay", "overlay": str(overlay)}]

    frozen = path.read_bytes()
    disk.write(5, b"\xaa" * 4096)
    disk.dev.backend.flush()
    assert path.read_bytes() == frozen  # the frozen image never changes again
    assert disk.read(5, 4096) == b"\xaa" * 4096
    assert disk.read(100, SECTOR) == frozen[100 * SECTOR:101 * SECTOR]  # the rest comes from the image
    assert not can_lock_exclusively(path)  # the overlay holds it (shared): nobody writes it meanwhile
    if shutil.which("qemu-img"):
        disk.dev.close()
        info = json.loads(qemu_img("info", "--output", "json", str(overlay)).stdout)
        assert info["backing-filename"] == str(path) and info["backing-filename-format"] == "raw"
        assert qemu_img("check", str(overlay)).returncode == 0
        assert qemu_img("compare", "-f", "raw", str(path), str(overlay)).returncode == 1  # the write is only there


def test_overlay_names_do_not_clobber_files(tmp_path: Path) -> None:
    path, disk = raw_disk(tmp_path, "vm.raw", 1)
    (tmp_path / "vm.s.qcow2").write_bytes(b"someone else's")
    m = FakeMachine([disk], [str(path)])
    plan = DiskSnapshot(m, str(tmp_path / "s.snap"), "overlay")  # type: ignore[arg-type]
    plan.take(header_for(m))
    plan.commit()
    assert disk.dev.backend.path == str(tmp_path / "vm.s-2.qcow2")
    assert (tmp_path / "vm.s.qcow2").read_bytes() == b"someone else's"


def test_a_failure_on_the_second_disk_undoes_the_first(tmp_path: Path, monkeypatch) -> None:
    p1, d1 = raw_disk(tmp_path, "one.raw", 1)
    p2, d2 = raw_disk(tmp_path, "two.raw", 2)
    olds = [d1.dev.backend, d2.dev.backend]
    m = FakeMachine([d1, d2], [str(p1), str(p2)])
    real = overlay_mod.create_overlay
    calls: list[str] = []

    def failing(path: str, *args) -> None:
        calls.append(path)
        if len(calls) == 2:
            overlay_mod.remove(path)
            raise DiskError(f"cannot create the overlay {path}: No space left on device")
        real(path, *args)

    monkeypatch.setattr(overlay_mod, "create_overlay", failing)
    plan = DiskSnapshot(m, str(tmp_path / "s.snap"), "overlay")  # type: ignore[arg-type]
    with pytest.raises(DiskSnapshotError, match="No space left.*every disk was left as it was"):
        plan.take(header_for(m))
    assert len(calls) == 2
    assert [d1.dev.backend, d2.dev.backend] == olds  # back on the images, the same open backends
    assert sorted(os.listdir(tmp_path)) == ["one.raw", "two.raw"]  # no overlay left behind
    assert [d.path for d in m.cfg.disks] == [str(p1), str(p2)]
    # The first image got its exclusive lock back, and the guest writes to it again.
    assert not can_lock_exclusively(p1) and olds[0].fd >= 0
    d1.write(0, b"\x55" * SECTOR)
    assert p1.read_bytes()[:SECTOR] == b"\x55" * SECTOR
    with pytest.raises(DiskError, match="lock"):
        open_disk(str(p1), readonly=True)  # exclusive again: not even a reader


def test_undo_after_the_file_could_not_be_written(tmp_path: Path) -> None:
    path, disk = raw_disk(tmp_path, "vm.raw", 1)
    old = disk.dev.backend
    m = FakeMachine([disk], [str(path)])
    undo = DiskSnapshot(m, str(tmp_path / "s.snap"), "overlay").take(header_for(m))  # type: ignore[arg-type]
    assert disk.dev.backend is not old
    undo()  # what save_machine does when the snapshot file cannot be written
    assert disk.dev.backend is old and os.listdir(tmp_path) == ["vm.raw"] and m.cfg.disks[0].path == str(path)


def test_read_only_disks_and_none_need_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ro.raw"
    path.write_bytes(pattern(1))
    disk = Disk(open_disk(str(path), readonly=True, format="raw"))
    m = FakeMachine([disk], [str(path)])
    assert not DiskSnapshot(m, str(tmp_path / "s.snap"), "overlay").needed  # type: ignore[arg-type]
    assert DiskSnapshot(m, str(tmp_path / "s.snap"), "overlay").report() == [  # type: ignore[arg-type]
        {"path": str(path), "method": "read-only"}]
    rw_path, rw = raw_disk(tmp_path, "rw.raw", 2)
    assert not DiskSnapshot(FakeMachine([rw], [str(rw_path)]), str(tmp_path / "s.snap"), "none").needed  # type: ignore[arg-type]
    with pytest.raises(DiskSnapshotError, match="unknown"):
        DiskSnapshot(m, str(tmp_path / "s.snap"), "copy")  # type: ignore[arg-type]


# --- the snapshot side: qcow2 internal snapshots --------------------------------------------------

def qcow2_disk(tmp_path: Path, name: str) -> tuple[Path, Disk]:
    path = tmp_path / name
    create(str(path), SIZE)
    disk = Disk(open_disk(str(path), format="qcow2"))
    disk.write(0, pattern(3)[:8192])
    return path, disk


def test_internal_snapshot_of_a_qcow2_disk(tmp_path: Path) -> None:
    path, disk = qcow2_disk(tmp_path, "vm.qcow2")
    m = FakeMachine([disk], [str(path)])
    plan = DiskSnapshot(m, str(tmp_path / "snap1.snap"), "internal")  # type: ignore[arg-type]
    header = header_for(m)
    plan.take(header)
    plan.commit()
    img = disk.dev.backend
    assert isinstance(img, Qcow2Image) and img.path == str(path)  # the VM stays on its image
    assert [s.name for s in img.snapshots()] == ["snap1"]
    assert header["machine"]["disks"][0]["internal_snapshot"] == "snap1"
    assert at_snapshot(img, "snap1")
    disk.write(1, b"\x11" * SECTOR)
    assert not at_snapshot(img, "snap1")
    # A second snapshot to the same file name gets a tag of its own.
    plan = DiskSnapshot(m, str(tmp_path / "snap1.snap"), "internal")  # type: ignore[arg-type]
    undo = plan.take(header_for(m))
    assert [s.name for s in img.snapshots()] == ["snap1", "snap1-2"]
    undo()
    assert [s.name for s in img.snapshots()] == ["snap1"]


def test_internal_snapshots_refuse_raw_disks_before_anything_changes(tmp_path: Path) -> None:
    qpath, q = qcow2_disk(tmp_path, "a.qcow2")
    rpath, r = raw_disk(tmp_path, "b.raw", 1)
    m = FakeMachine([q, r], [str(qpath), str(rpath)])
    with pytest.raises(DiskSnapshotError, match=f"{rpath} is a raw image.*overlay"):
        DiskSnapshot(m, str(tmp_path / "s.snap"), "internal")  # type: ignore[arg-type]
    assert q.dev.backend.snapshots() == []  # type: ignore[attr-defined]


# --- the restore side --------------------------------------------------------------------------

def snapshot_of(tmp_path: Path, disks: list[Disk], paths: list[str], mode: str, name: str = "snap1") -> FakeSnapshot:
    m = FakeMachine(disks, paths)
    header = header_for(m)
    plan = DiskSnapshot(m, str(tmp_path / f"{name}.snap"), mode)  # type: ignore[arg-type]
    plan.take(header)
    plan.commit()
    return FakeSnapshot(str(tmp_path / f"{name}.snap"), header)


def test_restore_puts_a_frozen_image_under_a_new_overlay(tmp_path: Path, capsys) -> None:
    path, disk = raw_disk(tmp_path, "vm.raw", 1)
    snap = snapshot_of(tmp_path, [disk], [str(path)], "overlay")
    disk.write(9, b"\x99" * SECTOR)  # the VM that took the snapshot runs on
    frozen = path.read_bytes()
    cfg, _, _ = config_from_header(snap)  # type: ignore[arg-type]
    restored = restore_disks(snap.path, snap, cfg)  # type: ignore[arg-type]
    first = tmp_path / "vm.snap1-restore1.qcow2"
    assert restored.created == [str(first)] and cfg.disks[0].path == str(first)
    assert cfg.disks[0].format == "qcow2" and cfg.disks[0].serial == disk.dev.backend.id
    assert f"the restored VM writes to the new overlay {first}" in capsys.readouterr().err
    assert restored_disk_paths(snap, cfg) == {str(path): str(first)}  # type: ignore[arg-type]
    # The restored VM's disk: the frozen contents, its writes its own.
    again = Disk(open_disk(cfg.disks[0].path, serial=cfg.disks[0].serial, format="qcow2"))
    assert again.read(9, SECTOR) == frozen[9 * SECTOR:10 * SECTOR] != b"\x99" * SECTOR
    again.write(2, b"\x22" * SECTOR)
    again.dev.close()
    assert path.read_bytes() == frozen
    # Each restore gets its own overlay; a failed one leaves none.
    cfg2, _, _ = config_from_header(snap)  # type: ignore[arg-type]
    second = restore_disks(snap.path, snap, cfg2)  # type: ignore[arg-type]
    assert cfg2.disks[0].path == str(tmp_path / "vm.snap1-restore2.qcow2")
    second.discard()
    assert not (tmp_path / "vm.snap1-restore2.qcow2").exists()
    # --disks direct: the image itself (with a warning that it belongs to a snapshot).
    cfg3, _, _ = config_from_header(snap)  # type: ignore[arg-type]
    assert restore_disks(snap.path, snap, cfg3, "direct").created == []  # type: ignore[arg-type]
    assert cfg3.disks[0].path == str(path)


def test_restore_of_an_internal_snapshot(tmp_path: Path, capsys) -> None:
    path, disk = qcow2_disk(tmp_path, "vm.qcow2")
    snap = snapshot_of(tmp_path, [disk], [str(path)], "internal")
    disk.dev.close()  # the VM that took it has ended
    cfg, _, _ = config_from_header(snap)  # type: ignore[arg-type]
    assert restore_disks(snap.path, snap, cfg).created == [] and cfg.disks[0].path == str(path)  # unchanged: used

    img = Qcow2Image(str(path))
    img.write_from(0, [memoryview(b"\x77" * SECTOR)])
    img.close()
    with pytest.raises(DiskSnapshotError, match="changed since its internal snapshot 'snap1'.*--disks revert"):
        restore_disks(snap.path, snap, config_from_header(snap)[0])  # type: ignore[arg-type]
    restore_disks(snap.path, snap, config_from_header(snap)[0], "direct")  # type: ignore[arg-type]
    restore_disks(snap.path, snap, config_from_header(snap)[0], "revert")  # type: ignore[arg-type]
    assert "reverted to its internal snapshot 'snap1'" in capsys.readouterr().err
    img = Qcow2Image(str(path), True)
    try:
        assert at_snapshot(img, "snap1")
        buf = bytearray(SECTOR)
        img.read_into(0, [memoryview(buf)])
        assert bytes(buf) == pattern(3)[:SECTOR]
    finally:
        img.close()


def test_older_files_restore_as_before_and_new_keys_are_type_checked(tmp_path: Path) -> None:
    path, disk = raw_disk(tmp_path, "vm.raw", 1)
    m = FakeMachine([disk], [str(path)])
    header = header_for(m)
    disk.dev.close()
    snap = FakeSnapshot(str(tmp_path / "old.snap"), header)  # no snapshot keys: written before them
    cfg, _, _ = config_from_header(snap)  # type: ignore[arg-type]
    assert restore_disks(snap.path, snap, cfg).created == [] and cfg.disks[0].path == str(path)  # type: ignore[arg-type]
    for key, value in (("frozen", "yes"), ("internal_snapshot", 3), ("overlay", None)):
        bad = json.loads(json.dumps(header))
        bad["machine"]["disks"][0][key] = value
        with pytest.raises(SnapshotError, match=f"disks\\[0\\].{key} has the wrong type"):
            recorded_disks(FakeSnapshot("x.snap", bad))  # type: ignore[arg-type]
    with pytest.raises(DiskSnapshotError, match="--disks 'copy'"):
        restore_disks(snap.path, snap, cfg, "copy")  # type: ignore[arg-type]


# --- the API ---------------------------------------------------------------------------------

def test_snapshot_request_takes_a_disk_method() -> None:
    assert parse_request("PUT", "/snapshot", b'{"path": "/a"}') == Snapshot(file="/a", disks="overlay")
    cmd = parse_request("PUT", "/snapshot", b'{"path": "/a", "disks": "internal", "compression": "none"}')
    assert cmd == Snapshot(file="/a", disks="internal")
    for body, message in ((b'{"path": "/a", "disks": "copy"}', "not a disk snapshot method"),
                          (b'{"path": "/a", "disks": 1}', "must be a string")):
        with pytest.raises(RequestError, match=message):
            parse_request("PUT", "/snapshot", body)
    with pytest.raises(RequestError, match="unknown field"):
        parse_request("PUT", "/save", b'{"path": "/a", "disks": "none"}')  # a save stops the VM: nothing to freeze
