"""`pyvirt restore --api-socket` started ahead, then `pyvirt vm restore FILE`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from test_migration import DIRTY, ENV, Serial, Vms
from vmrun import ROOT, kvm_usable, pyvirt_cmd, socket_listening, wait_for

pytestmark = [
    pytest.mark.skipif(kvm_usable() is not None, reason=str(kvm_usable())),
    pytest.mark.skipif(not DIRTY.exists(), reason="guest kit's dirty.elf not built (make -C guests)"),
]


def _vm(api: str, *args: str) -> tuple[int, dict[str, object], str]:
    p = subprocess.run([*pyvirt_cmd(), "vm", *args, "--api-socket", api, "-o", "json"], capture_output=True,
                       env=ENV, cwd=ROOT, timeout=120)
    out = p.stdout.decode()
    return p.returncode, json.loads(out) if out.strip().startswith("{") else {}, p.stderr.decode()


def _saved_dirty_vm(vms: Vms, tmp_path: Path, *save_options: str) -> str:
    """Run the dirty guest for a second, save it; the snapshot's path."""
    api = str(tmp_path / "vm.api")
    vms.start(["run", "--kernel", str(DIRTY), "--memory", "128M", "--cmdline", "rate=10 pages=4096 spread",
               "--serial", f"socket:{tmp_path / 'a.serial'}", "--api-socket", api])
    wait_for("the VM's API", lambda: socket_listening(api))
    Serial(str(tmp_path / "a.serial")).read_until(b"dirty: second 1 ")
    snap = str(tmp_path / "vm.snap")
    status, _, err = _vm(api, "save", snap, *save_options)
    assert status == 0, err
    return snap


def test_a_waiting_vmm_restores_on_request(tmp_path: Path) -> None:
    vms = Vms(tmp_path)
    try:
        snap = _saved_dirty_vm(vms, tmp_path)
        waiting = str(tmp_path / "w.api")
        w = vms.start(["restore", "--api-socket", waiting, "--serial", f"socket:{tmp_path / 'w.serial'}"])
        wait_for("the waiting VMM's API", lambda: socket_listening(waiting))
        assert _vm(waiting, "status")[1]["state"] == "waiting"
        status, reply, err = _vm(waiting, "restore", snap)
        assert status == 0, err
        assert reply["state"] == "running"
        assert isinstance(reply["restore_ms"], float) and isinstance(reply["to_run_ms"], float)
        Serial(str(tmp_path / "w.serial")).verify()  # the guest's memory came back whole
        status, reply, err = _vm(waiting, "restore", snap)  # one VM per process
        assert status == 1 and "already" in err
        assert _vm(waiting, "status")[1]["state"] == "running"
        assert _vm(waiting, "stop")[0] == 0
        assert w.wait(30) == 0
    finally:
        vms.close()


def test_lazy_restore_of_a_compressed_snapshot(tmp_path: Path) -> None:
    """--lazy: the guest runs before its compressed memory is decompressed;
    every page it touches comes in on demand and its memory verifies."""
    from pyvirt.memory.userfault import available
    from pyvirt.vmm.snapshot import available_codecs

    if available() is not None:
        pytest.skip(f"userfaultfd: {available()}")
    if "zstd" not in available_codecs():
        pytest.skip("zstandard is not installed")
    vms = Vms(tmp_path)
    try:
        snap = _saved_dirty_vm(vms, tmp_path, "--compress", "zstd")
        r = vms.start(["-v", "restore", snap, "--lazy", "--serial", f"socket:{tmp_path / 'r.serial'}"])
        serial = Serial(str(tmp_path / "r.serial"))
        serial.verify()
        assert "on demand" in vms.log(r)
        serial.sock.sendall(b"q")
        assert r.wait(30) == 1  # the guest's exit(0) through the debug-exit port
        assert "page server failed" not in vms.log(r)
    finally:
        vms.close()
