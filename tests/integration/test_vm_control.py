"""The control API on a real VM: `pyvirt run --api-socket` in a subprocess,
driven by `pyvirt vm ...` as a user would.

The guest prints a dot on COM1 at every PIT tick (18.2 Hz) and halts in
between, for as long as it is left running: a paused VM's output stops
growing, a resumed one's grows again. It is written out here as bytes (the
assembly is below), like the other tiny guests of pyvirt.testing.images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyvirt.testing import images

from vmrun import GUESTS, ROOT, WAIT, kvm_usable, run_pyvirt, socket_listening, wait_for

pytestmark = pytest.mark.skipif(kvm_usable() is not None, reason=str(kvm_usable()))

# 32-bit PVH entry (flat protected mode, paging off), loaded at 0x100000:
#       mov   $0x8000, %esp
#       mov   $handler, %eax            ; IDT gate 0x20 at 0x9100: a 32-bit interrupt gate
#       mov   %ax, 0x9100 ; mov %cs, %dx ; mov %dx, 0x9102
#       movw  $0x8e00, 0x9104 ; shr $16, %eax ; mov %ax, 0x9106
#       movw  $0x107, 0x8ff0 ; movl $0x9000, 0x8ff2 ; lidt 0x8ff0
#       PIC: ICW1 0x11, vectors 0x20/0x28, cascade 4/2, 8086 mode; mask all but IRQ0
#       PIT: out 0x34 -> 0x43, count 0 (65536) -> 0x40 twice: mode 2, 18.2 Hz
# idle: sti ; hlt ; jmp .-1
# handler:                              ; no iret (kvm_pvm cannot emulate it in 32-bit
#       mov $0x8000, %esp               ; mode): drop the frame and idle again
#       mov $0x3f8, %dx ; mov $'.', %al ; out %al, %dx
#       mov $0x20, %al ; out %al, $0x20  ; EOI
#       jmp idle
TICKER = bytes.fromhex(
    "bc00800000b87800100066a300910000668cca6689150291000066c70504910000008ec1e81066a306910000"
    "66c705f08f00000701c705f28f0000009000000f011df08f0000b011e620e6a0b020e621b028e6a1b004e621"
    "b002e6a1b001e621e6a1b0fee621b0ffe6a1b034e64330c0e640e640fbf4ebfdbc0080000066baf803b02eee"
    "b020e620ebea"
)



class Vm:
    """A `pyvirt run --api-socket` process and the files it writes."""

    def __init__(self, tmp_path: Path, kernel: str, *args: str) -> None:
        self.sock = str(tmp_path / "api.sock")
        self.serial = tmp_path / "serial.txt"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyvirt", "run", "--kernel", kernel, "--serial", f"file:{self.serial}",
             "--api-socket", self.sock, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        wait_for("the API socket", lambda: self._listening() or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.proc.communicate()

    def _listening(self) -> bool:
        return socket_listening(self.sock)

    def vm(self, *args: str) -> tuple[int, dict, str]:
        """`pyvirt vm ARGS --api-socket SOCK -o json` -> (status, reply, stderr)."""
        r = run_pyvirt(["vm", *args, "--api-socket", self.sock, "-o", "json"], timeout=WAIT)
        return r.status, json.loads(r.stdout) if r.status == 0 else {}, r.stderr

    def output(self) -> bytes:
        return self.serial.read_bytes() if self.serial.exists() else b""

    def wait(self) -> int:
        return self.proc.wait(timeout=WAIT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()  # type: ignore[union-attr]


@pytest.fixture
def ticker(tmp_path: Path):
    kernel = tmp_path / "ticker.elf"
    kernel.write_bytes(images.pvh_elf(TICKER))
    vm = Vm(tmp_path, str(kernel), "--cpus", "2")
    try:
        wait_for("the guest's first ticks", lambda: len(vm.output()) >= 2)
        yield vm
    finally:
        vm.close()


def _grows(vm: Vm) -> bool:
    start = len(vm.output())
    try:
        wait_for("serial output", lambda: len(vm.output()) > start)
    except AssertionError:
        return False
    return True


def test_status_pause_resume_stop(ticker: Vm):
    status, reply, err = ticker.vm("status")
    assert status == 0, err
    assert reply["state"] == "running" and reply["vcpus"] == 2 and reply["memory"] == 128 << 20
    assert reply["pid"] == ticker.proc.pid and reply["devices"] == []

    status, reply, err = ticker.vm("pause")
    assert (status, reply) == (0, {"state": "paused"}), err
    assert ticker.vm("status")[1]["state"] == "paused"
    assert [v["state"] for v in ticker.vm("stats")[1]["vcpus"]] == ["parked", "parked"]
    # Parked vCPUs run no guest code: not one more tick reaches the serial port,
    # over more than two ticks' worth of time (a check that cannot pass by luck).
    before = ticker.output()
    time.sleep(0.5)
    assert ticker.output() == before

    status, _, err = ticker.vm("pause")
    assert status == 1 and "already paused" in err

    status, reply, err = ticker.vm("resume")
    assert (status, reply) == (0, {"state": "running"}), err
    assert [v["state"] for v in ticker.vm("stats")[1]["vcpus"]] == ["running", "running"]
    assert _grows(ticker)

    status, reply, err = ticker.vm("stop")
    assert (status, reply) == (0, {"state": "stopped"}), err
    assert ticker.wait() == 0
    assert not os.path.exists(ticker.sock)  # removed on the way out


def test_stop_a_paused_vm(ticker: Vm):
    assert ticker.vm("pause")[0] == 0
    assert ticker.vm("stop")[0] == 0
    assert ticker.wait() == 0


def test_signal_ends_a_paused_vm(ticker: Vm):
    assert ticker.vm("pause")[0] == 0
    ticker.proc.terminate()
    assert ticker.wait() == 0
    assert not os.path.exists(ticker.sock)


def test_balloon_without_a_device(ticker: Vm):
    status, _, err = ticker.vm("balloon", "16M")
    assert status == 1 and "no balloon device" in err
    assert ticker.vm("status")[1]["state"] == "running"


def test_a_second_vm_cannot_take_the_socket(ticker: Vm, tmp_path: Path):
    kernel = tmp_path / "ticker.elf"
    r = run_pyvirt(["run", "--kernel", str(kernel), "--serial", "null", "--api-socket", ticker.sock], timeout=WAIT)
    assert r.status == 1 and "running VM" in r.stderr
    assert ticker.vm("status")[0] == 0  # the first VM's socket still works


def test_client_without_a_vm(tmp_path: Path):
    sock = str(tmp_path / "nothing.sock")
    r = run_pyvirt(["vm", "status", "--api-socket", sock])
    assert r.status == 1 and f"is the VM running with --api-socket {sock}?" in r.stderr


@pytest.mark.skipif(not (GUESTS / "virtio-balloon.elf").exists(), reason="guest kit's virtio-balloon.elf not built")
def test_balloon_inflates_and_deflates(tmp_path: Path):
    """The guest-kit balloon guest follows the target set through the API:
    inflate to 8 MiB, then back to 0, after which it checks its pages and
    exits with success (status 1)."""
    vm = Vm(tmp_path, str(GUESTS / "virtio-balloon.elf"), "--balloon", "--cmdline", "timeout=120")
    try:
        wait_for("the guest's balloon driver", lambda: b"balloon: touched" in vm.output())
        status, reply, err = vm.vm("balloon", "8M")
        assert status == 0 and reply["target"] == 8 << 20, err
        wait_for("inflation", lambda: vm.vm("balloon")[1].get("actual") == 8 << 20)
        assert vm.vm("stats")[1]["devices"]["balloon0"]["inflated_pages"] >= 2048
        assert vm.vm("balloon", "0")[0] == 0
        assert vm.wait() == 1, vm.output().decode(errors="replace")
        assert b"balloon: PASS" in vm.output()
    finally:
        vm.close()
