"""Snapshots that freeze the disks with the guest's memory, with a guest
that writes its disk all the time.

The guest kit's virtio-bench guest (`bench=blk`) starts with a phase of
`seconds` of back-to-back 1 MiB writes over the whole disk, so a disk image
changes every few milliseconds while it runs. A snapshot taken meanwhile
must leave the image exactly as it was at the snapshot (the VM going on in
an overlay), and a VM restored from the snapshot must get an overlay of its
own rather than write the image.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from test_snapshot import procs  # noqa: F401 - the fixture
from vmrun import GUESTS, kvm_usable, run_pyvirt, wait_for

pytestmark = pytest.mark.skipif(kvm_usable() is not None, reason=str(kvm_usable()))

BENCH = GUESTS / "virtio-bench.elf"
needs_bench = pytest.mark.skipif(not BENCH.exists(), reason="guest kit's virtio-bench.elf not built (make -C guests)")
WRITER = ("--kernel", str(BENCH), "--cmdline", "bench=blk seconds=600 seq_qd=2")  # writes for 10 minutes


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60)


def own_data(image: Path) -> bool:
    """Whether qcow2 `image` holds data of its own (not only its backing file's)."""
    r = qemu_img("map", "--output", "json", str(image))
    assert r.returncode == 0, r.stderr
    return any(e["depth"] == 0 and e["data"] for e in json.loads(r.stdout))


def writes(vm) -> int:
    return vm.vm("stats")["devices"]["blk0"]["writes"]


@needs_bench
def test_overlay_snapshot_freezes_the_disk_and_restore_gets_its_own_overlay(tmp_path: Path, procs) -> None:  # noqa: F811
    disk = tmp_path / "vm.raw"
    with open(disk, "wb") as f:
        f.truncate(32 << 20)
    vm = procs(tmp_path, "run", "run", *WRITER, "--disk", f"path={disk}")
    wait_for("the guest writing its disk", lambda: writes(vm) > 100)

    snap = tmp_path / "snap1.snap"
    reply = vm.vm("snapshot", str(snap))
    overlay = tmp_path / "vm.snap1.qcow2"
    assert reply["state"] == "running"
    assert reply["disks"] == [{"path": str(disk), "method": "overlay", "overlay": str(overlay)}]
    frozen, mtime = digest(disk), disk.stat().st_mtime_ns
    assert frozen != hashlib.sha256(bytes(32 << 20)).hexdigest()  # the guest did write it before

    # The VM writes on, into the overlay; the image stays as the snapshot has it.
    at_snapshot = writes(vm)
    wait_for("writes after the snapshot", lambda: writes(vm) > at_snapshot + 200)
    assert vm.vm("status")["state"] == "running"
    assert digest(disk) == frozen and disk.stat().st_mtime_ns == mtime

    # Restored, it runs on a fresh overlay of the frozen image (the first VM still runs on its own).
    restored = procs(tmp_path, "restored", "restore", str(snap))
    mine = tmp_path / "vm.snap1-restore1.qcow2"
    assert mine.exists()
    wait_for("the restored guest writing", lambda: writes(restored) > 200)
    assert digest(disk) == frozen and disk.stat().st_mtime_ns == mtime

    for p in (vm, restored):
        assert p.vm("stop")["state"] == "stopped"
        assert p.wait() == 0, p.stderr
        assert b"FAIL" not in p.output()
    assert f"the restored VM writes to the new overlay {mine}" in restored.stderr
    assert digest(disk) == frozen
    for image in (overlay, mine):
        info = json.loads(qemu_img("info", "--output", "json", str(image)).stdout)
        assert info["format"] == "qcow2" and info["backing-filename"] == str(disk)
        assert info["backing-filename-format"] == "raw"
        r = qemu_img("check", str(image))
        assert r.returncode == 0, r.stdout + r.stderr
        assert own_data(image)


@needs_bench
def test_internal_snapshot_and_its_restore(tmp_path: Path, procs) -> None:  # noqa: F811
    disk = tmp_path / "vm.qcow2"
    r = run_pyvirt(["image", "create", "-f", "qcow2", str(disk), "32M"])
    assert r.status == 0, r.stderr
    raw = tmp_path / "data.raw"
    with open(raw, "wb") as f:
        f.truncate(1 << 20)
    vm = procs(tmp_path, "run", "run", *WRITER, "--disk", f"path={disk}", "--disk", f"path={raw},readonly=on")
    wait_for("the guest writing its disk", lambda: writes(vm) > 20)

    snap = tmp_path / "before-upgrade.snap"
    reply = vm.vm("snapshot", str(snap), "--disks", "internal")
    assert reply["disks"] == [{"path": str(disk), "method": "internal", "internal_snapshot": "before-upgrade"},
                              {"path": str(raw), "method": "read-only"}]
    at_snapshot = writes(vm)
    wait_for("writes after the snapshot", lambda: writes(vm) > at_snapshot + 20)

    # While the VM uses the image, a restore cannot (the image's lock says who has it).
    r = run_pyvirt(["restore", str(snap), "--serial", "null"])
    assert r.status == 1 and "lock" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert vm.vm("stop")["state"] == "stopped" and vm.wait() == 0
    assert "before-upgrade" in qemu_img("snapshot", "-l", str(disk)).stdout

    # The image changed since: restoring refuses to revert it unasked.
    r = run_pyvirt(["restore", str(snap), "--serial", "null"])
    assert r.status == 1 and "--disks revert" in r.stderr and "Traceback" not in r.stderr, r.stderr
    restored = procs(tmp_path, "restored", "restore", str(snap), "--disks", "revert")
    wait_for("the restored guest writing", lambda: writes(restored) > 20)
    assert restored.vm("stop")["state"] == "stopped" and restored.wait() == 0
    assert "reverted to its internal snapshot 'before-upgrade'" in restored.stderr
    assert qemu_img("check", str(disk)).returncode == 0


@needs_bench
def test_disk_snapshot_refusals_leave_the_vm_running(tmp_path: Path, procs) -> None:  # noqa: F811
    disk = tmp_path / "vm.raw"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    vm = procs(tmp_path, "run", "run", *WRITER, "--disk", f"path={disk}")
    wait_for("the guest writing its disk", lambda: writes(vm) > 20)
    r = run_pyvirt(["vm", "snapshot", "--api-socket", vm.sock, str(tmp_path / "s.snap"), "--disks", "internal"])
    assert r.status == 1 and f"disk {disk} is a raw image" in r.stderr, r.stderr
    assert not (tmp_path / "s.snap").exists()
    before = writes(vm)
    time.sleep(0.2)
    assert vm.vm("status")["state"] == "running" and writes(vm) > before
    # --disks none: the old behaviour; the disk keeps changing and a restore warns.
    reply = vm.vm("snapshot", str(tmp_path / "s.snap"), "--disks", "none")
    assert reply["disks"] == [{"path": str(disk), "method": "none"}]
    assert vm.vm("stop")["state"] == "stopped" and vm.wait() == 0
    assert sorted(p.name for p in tmp_path.glob("*.qcow2")) == []
