"""Save, snapshot and restore with real guests.

The guest kit's `dirty` guest rewrites one page of a memory area per tick
and checks the whole area every tick (any page lost or stale: `dirty: FAIL`),
printing `dirty: tick N sum S` every few ticks. It is deterministic: the sum
at tick N depends on N only. So a restored guest must print exactly the
ticks that follow the last one before the save, and a guest restored from a
snapshot taken while it ran must print, for every tick, the sum the
original printed for that tick.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyvirt.testing import images

from test_vm_control import TICKER
from vmrun import GUESTS, ROOT, WAIT, kvm_usable, run_pyvirt, socket_listening, wait_for

pytestmark = pytest.mark.skipif(kvm_usable() is not None, reason=str(kvm_usable()))

TICK = re.compile(rb"dirty: tick (\d+) sum (0x[0-9a-f]+)\r?\n")



class Proc:
    """`pyvirt run ...` or `pyvirt restore ...` with --api-socket and a serial file."""

    def __init__(self, tmp_path: Path, name: str, *argv: str) -> None:
        self.sock = str(tmp_path / f"{name}.sock")
        self.serial = tmp_path / f"{name}.serial"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyvirt", *argv, "--serial", f"file:{self.serial}", "--api-socket", self.sock],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        wait_for("the API socket", lambda: self._listening() or self.proc.poll() is not None)
        if self.proc.poll() is not None:
            out, err = self.proc.communicate()
            raise AssertionError(f"pyvirt ended with {self.proc.returncode}: {err.decode()}")

    def _listening(self) -> bool:
        return socket_listening(self.sock)

    def vm(self, *args: str) -> dict:
        r = run_pyvirt(["vm", *args, "--api-socket", self.sock, "-o", "json"], timeout=WAIT * 2)
        assert r.status == 0, r.stderr
        return json.loads(r.stdout)

    def output(self) -> bytes:
        return self.serial.read_bytes() if self.serial.exists() else b""

    def ticks(self) -> list[tuple[int, str]]:
        return [(int(n), s.decode()) for n, s in TICK.findall(self.output())]

    def wait(self) -> int:
        status = self.proc.wait(timeout=WAIT)
        self.stderr = self.proc.stderr.read().decode()  # type: ignore[union-attr]
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()  # type: ignore[union-attr]


@pytest.fixture
def procs():
    started: list[Proc] = []

    def start(*args, **kw) -> Proc:
        p = Proc(*args, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def _consecutive(ticks: list[tuple[int, str]], step: int) -> bool:
    return all(b[0] == a[0] + step for a, b in zip(ticks, ticks[1:]))


DIRTY = GUESTS / "dirty.elf"
needs_dirty = pytest.mark.skipif(not DIRTY.exists(), reason="guest kit's dirty.elf not built (make -C guests)")


@needs_dirty
def test_snapshot_save_restore_continues_where_it_left_off(tmp_path: Path, procs) -> None:
    vm = procs(tmp_path, "run", "run", "--kernel", str(DIRTY), "--cmdline", "print=32", "--cpus", "2")
    wait_for("ticks", lambda: len(vm.ticks()) >= 3)

    # A snapshot: the VM runs on.
    snap = tmp_path / "running.snap"
    reply = vm.vm("snapshot", str(snap))
    assert reply["state"] == "running" and snap.exists() and reply["memory_pages"] >= 1024
    at_snapshot = vm.ticks()[-1][0]
    wait_for("ticks after the snapshot", lambda: vm.ticks()[-1][0] >= at_snapshot + 5 * 32)
    assert vm.vm("status")["state"] == "running"

    # A save: the VM stops, with status 0, and never runs again.
    saved = tmp_path / "vm.save"
    reply = vm.vm("save", str(saved))
    assert reply["state"] == "stopped" and reply["path"] == str(saved)
    assert vm.wait() == 0, vm.stderr
    before = vm.ticks()
    assert b"FAIL" not in vm.output() and _consecutive(before, 32)

    # Restored, it counts on from where it stopped: no new start, no gap, no repeat.
    restored = procs(tmp_path, "restored", "restore", str(saved))
    wait_for("ticks after the restore", lambda: len(restored.ticks()) >= 5)
    assert b"pages at" not in restored.output()  # the guest did not start over
    both = TICK.findall(vm.output() + restored.output())
    ticks = [(int(n), s.decode()) for n, s in both]
    assert _consecutive(ticks, 32) and ticks[len(before)][0] == before[-1][0] + 32, (before[-5:], ticks[-8:])
    assert restored.vm("status")["state"] == "running"
    assert restored.vm("stop")["state"] == "stopped"
    assert restored.wait() == 0
    assert b"FAIL" not in restored.output()

    # Restored from the snapshot taken while it ran: the same ticks, with the same sums.
    again = procs(tmp_path, "again", "restore", str(snap))
    wait_for("ticks after restoring the snapshot", lambda: len(again.ticks()) >= 5)
    first = dict(before)
    replay = again.ticks()
    assert replay[0][0] <= at_snapshot + 32 * 2 and _consecutive(replay, 32)
    assert all(first[n] == s for n, s in replay if n in first)
    assert again.vm("stop")["state"] == "stopped" and again.wait() == 0
    assert b"FAIL" not in again.output()


@needs_dirty
@pytest.mark.parametrize("memory, cmdline, compression", [
    ("512M", "print=4 pages=4096 spread", "none"),  # thousands of runs of pages, each mapped on its own
    ("256M", "print=32 pages=2048", "zstd"),  # compressed: restore reads and decompresses
    ("256M", "print=32 pages=2048", "lz4"),
])
def test_spread_and_compressed_memory(tmp_path: Path, procs, memory: str, cmdline: str, compression: str) -> None:
    vm = procs(tmp_path, "run", "run", "--kernel", str(DIRTY), "-m", memory, "--cmdline", cmdline)
    wait_for("ticks", lambda: len(vm.ticks()) >= 2)
    saved = tmp_path / "vm.save"
    args = ["--compress", compression] if compression != "none" else []
    reply = vm.vm("save", str(saved), *args)
    assert vm.wait() == 0
    if "spread" in cmdline:
        assert reply["memory_runs"] > 4000
    else:
        assert reply["size"] < reply["memory_pages"] * 4096  # the patterns compress a little at least
    before = vm.ticks()
    restored = procs(tmp_path, "restored", "restore", str(saved))
    wait_for("ticks after the restore", lambda: len(restored.ticks()) >= 3)
    step = int(re.search(r"print=(\d+)", cmdline).group(1))  # type: ignore[union-attr]
    ticks = [(int(n), s.decode()) for n, s in TICK.findall(vm.output() + restored.output())]
    assert _consecutive(ticks, step) and ticks[len(before)][0] == before[-1][0] + step
    assert restored.vm("stop")["state"] == "stopped" and restored.wait() == 0
    assert b"FAIL" not in restored.output()


def test_interrupts_and_timers_continue_after_restore(tmp_path: Path, procs) -> None:
    """The TICKER guest halts and prints a dot per PIT interrupt: after a
    restore the dots go on, so the PIC, the PIT (KVM's, or the user-space
    one on kvm_pvm), the LAPIC and the halted vCPU were all restored."""
    kernel = tmp_path / "ticker.elf"
    kernel.write_bytes(images.pvh_elf(TICKER))
    vm = procs(tmp_path, "run", "run", "--kernel", str(kernel))
    wait_for("ticks", lambda: len(vm.output()) >= 5)
    saved = tmp_path / "vm.save"
    vm.vm("save", str(saved))
    assert vm.wait() == 0
    restored = procs(tmp_path, "restored", "restore", str(saved))
    wait_for("ticks after the restore", lambda: len(restored.output()) >= 10)
    assert set(restored.output()) == {ord(".")}
    restored.vm("pause")
    restored.vm("resume")
    wait_for("ticks after a pause", lambda: len(restored.output()) >= 15)
    assert restored.vm("stop")["state"] == "stopped" and restored.wait() == 0


def test_bad_files_are_refused(tmp_path: Path, procs) -> None:
    kernel = tmp_path / "ticker.elf"
    kernel.write_bytes(images.pvh_elf(TICKER))
    vm = procs(tmp_path, "run", "run", "--kernel", str(kernel))
    r = run_pyvirt(["vm", "save", "--api-socket", vm.sock, str(tmp_path / "no" / "such.snap")])
    assert r.status == 1 and "is not a directory" in r.stderr
    assert vm.vm("status")["state"] == "running"  # a failed save leaves the VM running
    saved = tmp_path / "vm.save"
    vm.vm("save", str(saved))
    assert vm.wait() == 0
    data = saved.read_bytes()

    def refused(content: bytes, message: str) -> None:
        bad = tmp_path / "bad.snap"
        bad.write_bytes(content)
        r = run_pyvirt(["restore", str(bad), "--serial", "null"], timeout=WAIT)
        assert r.status == 1 and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr

    refused(data[:-1], "truncated")
    refused(data[: len(data) // 2], "truncated")
    corrupt = bytearray(data)
    corrupt[200] ^= 0xFF  # inside the config section
    refused(bytes(corrupt), "fails its CRC check")
    refused(kernel.read_bytes(), "ELF kernel, not a pyvirt snapshot")
    from pyvirt.vmm.snapshot import Snapshot

    with Snapshot.open(str(saved)) as snap:  # guest memory is checked with --verify (it is mapped, not read)
        run = snap.memory_runs([(0, 128 << 20)])[-1]
    corrupt = bytearray(data)
    corrupt[run.offset + run.length - 1] ^= 0xFF
    bad = tmp_path / "bad-memory.snap"
    bad.write_bytes(bytes(corrupt))
    r = run_pyvirt(["restore", "--verify", str(bad), "--serial", "null"], timeout=WAIT)
    assert r.status == 1 and f"guest memory at {run.gpa:#x} fails its CRC check" in r.stderr, r.stderr
    refused(b"", "not a pyvirt snapshot")
    r = run_pyvirt(["restore", str(tmp_path / "missing.snap")])
    assert r.status == 1 and "No such file" in r.stderr


@pytest.mark.skipif(not (GUESTS / "hello.elf").exists(), reason="guest kit not built")
def test_virtio_blk_and_transport_state_round_trip(tmp_path: Path) -> None:
    """In one process, no guest code: a driver (pyvirt.testing's fake queue)
    brings up virtio-blk on virtio-mmio in a real Machine, has one read done
    and leaves a second one available but not yet processed; the machine is
    saved and restored; the restored device has the same state, finds the
    pending request (its notification was lost with the old eventfd) and
    completes it into the restored guest memory."""
    from pyvirt.devices.virtio import mmio as M
    from pyvirt.devices.virtio.device import ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, F_VERSION_1
    from pyvirt.testing.virtio import FakeDriverQueue
    from pyvirt.vmm import snapshot
    from pyvirt.vmm.config import SerialConfig, VmConfig
    from pyvirt.vmm.device_config import DiskConfig
    from pyvirt.vmm.machine import Machine
    from pyvirt.vmm.restore import restore_machine
    from pyvirt.vmm.save import capture_vcpu, save_machine, saveable_msrs, xsave_size
    from pyvirt.vmm.state_codec import decode
    from pyvirt.vmm.vmstate import VcpuState

    disk = tmp_path / "disk.img"
    disk.write_bytes(b"".join(bytes([s]) * 512 for s in range(16)))
    cfg = VmConfig(kernel=str(GUESTS / "hello.elf"), memory=64 << 20, cpus=2, transport="mmio",
                   serial=SerialConfig("null"), disks=[DiskConfig(str(disk))], rng=True)
    m = Machine(cfg)
    try:
        base = m.virtio.mmio_slots[0][0]  # type: ignore[union-attr]

        def w(reg: int, value: int) -> None:
            m.mmio.write(base + reg, 4, value)

        for status in (ACKNOWLEDGE, ACKNOWLEDGE | DRIVER):
            w(M.STATUS, status)
        w(M.DRIVER_FEATURES_SEL, 1)
        w(M.DRIVER_FEATURES, F_VERSION_1 >> 32)
        w(M.STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK)
        drv = FakeDriverQueue(m.mem, 16, desc=0x200000, buffers=(0x210000, 0x300000))
        w(M.QUEUE_SEL, 0)
        w(M.QUEUE_NUM, 16)
        for reg, addr in ((M.QUEUE_DESC_LOW, drv.desc_addr), (M.QUEUE_DRIVER_LOW, drv.avail_addr),
                          (M.QUEUE_DEVICE_LOW, drv.used_addr)):
            w(reg, addr)
        w(M.QUEUE_READY, 1)
        w(M.STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
        blk = m.virtio.devices[0]  # type: ignore[union-attr]

        def read(sector: int) -> int:
            return drv.add_chain([(0).to_bytes(4, "little") + bytes(4) + sector.to_bytes(8, "little")], [512, 1])

        first = read(3)
        blk.queue_notify(0)
        assert drv.used() == [(first, 513)] and drv.read_written(first)[:512] == bytes([3]) * 512
        pending = read(7)  # available, never processed before the save
        saved_transports = [t.state() for t in m.virtio.transports]  # type: ignore[union-attr]
        saved_devices = [d.state() for d in m.virtio.devices]  # type: ignore[union-attr]
        path = tmp_path / "vm.save"
        save_machine(m, str(path), sync=False)
    finally:
        m.close()

    r = restore_machine(str(path), SerialConfig("null"))
    try:
        assert [t.state() for t in r.virtio.transports] == saved_transports  # type: ignore[union-attr]
        assert [d.state() for d in r.virtio.devices] == saved_devices  # type: ignore[union-attr]
        r.virtio.devices[0].queue_notify(0)  # what the I/O thread does for restore's kick  # type: ignore[union-attr]
        used_idx = r.mem.read_u16(drv.used_addr + 2)
        assert used_idx == 2
        head, length = r.mem.read_u32(drv.used_addr + 4 + 8), r.mem.read_u32(drv.used_addr + 4 + 8 + 4)
        assert (head, length) == (pending, 513)
        buf = drv.sent[pending].writable[0][0]
        assert r.mem.read(buf, 512) == bytes([7]) * 512
        # The vCPUs: every part as saved (the TSC has moved on; nothing else ran).
        with snapshot.Snapshot.open(str(path)) as snap:
            saved_vcpus = [decode(VcpuState, snap.json(s)) for s in snap.find(snapshot.VCPU)]
        msrs = saveable_msrs(r.kvm)
        for v, st in zip(r.vcpus, saved_vcpus):
            now = capture_vcpu(v, msrs, xsave_size(r.vm), [])
            for name in ("regs", "sregs", "lapic", "mp_state", "cpuid", "xsave", "fpu", "xcrs", "debugregs"):
                assert getattr(now, name) == getattr(st, name), (v.index, name)
            assert {i for i, _ in now.msrs} == {i for i, _ in st.msrs}
            assert dict(now.msrs)[0x10] >= dict(st.msrs)[0x10]  # the TSC continues from the saved value
    finally:
        r.close()
