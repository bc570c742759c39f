"""Pause/resume (VcpuGate) and MachineControl over a fake Machine: vCPU
threads that behave like the real loop (KVM_RUN returns EINTR when kicked
or with immediate_exit set), with real virtio devices. No /dev/kvm needed."""

from __future__ import annotations

import threading
import time

import pytest

from pyvirt.devices.virtio.balloon import VirtioBalloon
from pyvirt.devices.virtio.rng import VirtioRng
from pyvirt.vmm import exit_status
from pyvirt.vmm.config import VmConfig
from pyvirt.vmm.control import ControlError
from pyvirt.vmm.machine import Machine
from pyvirt.vmm.machine_control import MachineControl, VcpuGate
from pyvirt.vmm.vcpu_loop import StopFlag


class FakeVcpu:
    def __init__(self, index: int) -> None:
        self.index = index
        self.immediate_exit = False
        self.kicked = threading.Event()
        self.runs = 0  # times it "entered the guest"

    def set_immediate_exit(self, on: bool) -> None:
        self.immediate_exit = on


class FakeVirtio:
    def __init__(self, devices: list) -> None:
        self.devices = devices
        self.balloon = next((d for d in devices if isinstance(d, VirtioBalloon)), None)


class FakeMachine:
    """What MachineControl and VcpuGate use of a Machine, with Machine's own
    pause/resume/paused/_interrupt_hook."""

    pause = Machine.pause
    resume = Machine.resume
    paused = Machine.paused
    _interrupt_hook = Machine._interrupt_hook
    _gate_lock = threading.Lock()

    def __init__(self, cpus: int = 2, devices: list | None = None, stuck: int | None = None) -> None:
        self.cfg = VmConfig(kernel="k.elf", cpus=cpus, memory=128 << 20)
        self.virtio = FakeVirtio(devices) if devices is not None else None
        self._flag = StopFlag()
        self.status: int | None = None
        self.reason = ""
        self.vcpus = [FakeVcpu(i) for i in range(cpus)]
        self._by_thread: dict[threading.Thread, FakeVcpu] = {}
        self._gate: VcpuGate | None = VcpuGate(self, kick=lambda t: self._by_thread[t].kicked.set())  # type: ignore[arg-type]
        self.threads: list[threading.Thread] = []
        hook = self._interrupt_hook(None)
        for v in self.vcpus:
            target = self._stuck if v.index == stuck else self._loop
            t = threading.Thread(target=target, args=(v, hook), daemon=True)
            self._by_thread[t] = v
            self.threads.append(t)
        for t in self.threads:
            t.start()

    def _loop(self, vcpu: FakeVcpu, hook) -> None:
        while not self._flag.stopping:
            if vcpu.immediate_exit:  # KVM_RUN returns EINTR at once
                hook(vcpu)
                continue
            kicked = vcpu.kicked.wait(0.005)  # in the guest until a signal
            vcpu.runs += 1
            if kicked:
                vcpu.kicked.clear()
                hook(vcpu)

    def _stuck(self, vcpu: FakeVcpu, hook) -> None:
        while not self._flag.stopping:  # never leaves "KVM_RUN" (a hung ioctl)
            time.sleep(0.01)

    def stop(self, status: int, reason: str, vcpu_index: int | None = None) -> None:
        if not self._flag.stopping:
            self._flag.stopping = True
            self.status, self.reason = status, reason
            for v in self.vcpus:
                v.set_immediate_exit(True)
                v.kicked.set()

    def end(self) -> None:
        """What Machine.run does last."""
        self.stop(exit_status.ERROR, "test over")
        if self._gate is not None:
            self._gate.wake()
        for t in self.threads:
            t.join(5)
        assert not any(t.is_alive() for t in self.threads)


def _advances(vcpu: FakeVcpu) -> bool:
    before = vcpu.runs
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if vcpu.runs > before:
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def machine():
    m = FakeMachine(cpus=3)
    yield m
    m.end()


# --- VcpuGate -----------------------------------------------------------------------------

def test_pause_parks_every_vcpu_and_resume_releases_them(machine):
    machine.pause(timeout=10)
    assert machine.paused and machine._gate.parked == {0, 1, 2}
    runs = [v.runs for v in machine.vcpus]
    time.sleep(0.05)
    assert [v.runs for v in machine.vcpus] == runs  # nobody re-entered the guest
    assert not any(v.immediate_exit for v in machine.vcpus)  # parked ones cleared it for their return
    machine.resume()
    assert not machine.paused
    assert all(_advances(v) for v in machine.vcpus)


def test_pause_resume_repeatedly(machine):
    for _ in range(20):
        machine.pause(timeout=10)
        assert machine._gate.parked == {0, 1, 2}
        machine.resume()
    assert all(_advances(v) for v in machine.vcpus)


def test_a_resume_before_the_vcpu_noticed_leaves_it_running():
    m = FakeMachine(cpus=1)
    try:
        gate = m._gate
        with gate._cond:  # pause's first step only: the flag and immediate_exit
            gate.paused = True
            m.vcpus[0].set_immediate_exit(True)
        gate.resume()
        assert _advances(m.vcpus[0]) and not m.vcpus[0].immediate_exit
    finally:
        m.end()


def test_a_vcpu_that_never_parks_times_out_and_the_vm_runs_on():
    m = FakeMachine(cpus=2, stuck=1)
    try:
        with pytest.raises(TimeoutError, match=r"vCPUs \[1\]"):
            m.pause(timeout=0.2)
        assert not m.paused
        assert _advances(m.vcpus[0])
    finally:
        m.end()


def test_ended_vcpu_threads_need_no_parking():
    m = FakeMachine(cpus=2, stuck=1)
    ended = threading.Thread(target=lambda: None)  # vCPU 1's thread, had its KVM_RUN failed
    ended.start()
    ended.join()
    m.threads[1] = ended
    try:
        m.pause(timeout=10)
        assert m._gate.parked == {0}
    finally:
        m.end()


def test_stop_while_paused_ends_the_parked_threads(machine):
    machine.pause(timeout=10)
    machine.end()  # joins every thread, or fails


def test_pause_fails_when_the_vm_stops_meanwhile():
    m = FakeMachine(cpus=2, stuck=1)
    try:
        threading.Timer(0.1, lambda: m.stop(exit_status.POWEROFF, "bye")).start()
        with pytest.raises(ControlError, match="stopping"):
            m.pause(timeout=10)
    finally:
        m.end()


# --- MachineControl ---------------------------------------------------------------------------

def test_status(machine):
    s = MachineControl(machine).status()
    assert s["state"] == "running" and s["vcpus"] == 3 and s["memory"] == 128 << 20
    assert s["devices"] == [] and isinstance(s["pid"], int) and s["uptime"] >= 0


def test_status_lists_virtio_devices_by_kind():
    m = FakeMachine(cpus=1, devices=[VirtioRng(), VirtioBalloon(lambda gpa, n: None), VirtioRng()])
    try:
        ids = [d["id"] for d in MachineControl(m).status()["devices"]]
        assert ids == ["rng0", "balloon0", "rng1"]
    finally:
        m.end()


def test_pause_resume_states(machine):
    c = MachineControl(machine)
    c.pause()
    assert c.status()["state"] == "paused"
    assert [v["state"] for v in c.statistics()["vcpus"]] == ["parked"] * 3
    with pytest.raises(ControlError, match="already paused") as e:
        c.pause()
    assert e.value.status == 409
    c.resume()
    assert c.status()["state"] == "running"
    with pytest.raises(ControlError, match="not paused"):
        c.resume()


def test_pause_timeout_is_a_500():
    m = FakeMachine(cpus=1, stuck=0)
    try:
        with pytest.raises(ControlError) as e:
            MachineControl(m, pause_timeout=0.1).pause()
        assert e.value.status == 500 and "runs on" in e.value.message
    finally:
        m.end()


def test_stop(machine):
    c = MachineControl(machine)
    c.pause()
    c.stop()
    assert (machine.status, machine.reason) == (exit_status.POWEROFF, "stopped through the control API")
    s = c.status()
    assert s["state"] == "stopped" and s["stop_reason"] == machine.reason
    for action in (c.stop, c.pause, c.resume):
        with pytest.raises(ControlError, match="stopping"):
            action()


def test_balloon_without_a_device_is_409(machine):
    c = MachineControl(machine)
    for action in (lambda: c.balloon_set(4096), c.balloon_info):
        with pytest.raises(ControlError, match="no balloon") as e:
            action()
        assert e.value.status == 409


def test_balloon_set_and_info():
    balloon = VirtioBalloon(lambda gpa, n: None)
    m = FakeMachine(cpus=1, devices=[balloon])
    try:
        c = MachineControl(m)
        c.balloon_set(64 << 20)
        assert balloon.num_pages == 16384
        balloon.config_write(4, 4, 1000)  # the driver reports 1000 pages in the balloon
        info = c.balloon_info()
        assert (info["target"], info["actual"], info["memory"]) == (64 << 20, 1000 * 4096, 128 << 20)
        assert info["statistics"]["inflated_pages"] == 0 and "target_pages" not in info["statistics"]
        assert c.statistics()["devices"]["balloon0"]["target_pages"] == 16384
        for bad, words in ((100, "multiple"), (256 << 20, "exceeds")):
            with pytest.raises(ControlError, match=words) as e:
                c.balloon_set(bad)
            assert e.value.status == 400
    finally:
        m.end()


def test_statistics_takes_dataclass_statistics():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Stats:
        reads: int = 7

    rng = VirtioRng()
    rng.statistics = lambda: Stats()  # type: ignore[attr-defined]
    m = FakeMachine(cpus=1, devices=[rng])
    try:
        assert MachineControl(m).statistics()["devices"] == {"rng0": {"reads": 7}}
    finally:
        m.end()


# --- save and snapshot --------------------------------------------------------------------

@pytest.fixture
def saves(monkeypatch):
    """save_machine replaced by a recorder that checks the VM is paused while it runs."""
    from pyvirt.vmm import save as save_module
    from pyvirt.vmm.snapshot import SnapshotError

    calls: list[tuple[str, str, bool]] = []
    fail: list[Exception] = []

    def fake_save(m, path, *, kind, compression="none", sync=True, freeze=None):
        calls.append((path, kind, m.paused and m._gate.parked == {v.index for v in m.vcpus}))
        if fail:
            raise fail.pop()
        return save_module.SaveResult(path=path, size=4096, seconds=0.01, memory_pages=1, memory_runs=1)

    monkeypatch.setattr(save_module, "save_machine", fake_save)
    return calls, fail, SnapshotError


def test_snapshot_pauses_saves_and_resumes(machine, saves, tmp_path):
    calls, _, _ = saves
    ctl = MachineControl(machine, pause_timeout=10)
    reply = ctl.snapshot(str(tmp_path / "a.snap"), "none")
    assert calls == [(str(tmp_path / "a.snap"), "snapshot", True)]
    assert reply["state"] == "running" and reply["size"] == 4096 and reply["notes"] == []
    assert not machine.paused and all(_advances(v) for v in machine.vcpus)
    ctl.pause()
    assert ctl.snapshot(str(tmp_path / "b.snap"), "none")["state"] == "paused"
    assert machine.paused  # a VM the user paused stays paused


def test_save_stops_the_vm_without_running_it_again(machine, saves, tmp_path):
    calls, _, _ = saves
    ctl = MachineControl(machine, pause_timeout=10)
    reply = ctl.save(str(tmp_path / "a.snap"), "none")
    assert reply["state"] == "stopped" and calls[0][1:] == ("save", True)
    assert machine.status == exit_status.POWEROFF and "saved to" in machine.reason
    with pytest.raises(ControlError) as e:
        ctl.snapshot(str(tmp_path / "b.snap"), "none")
    assert e.value.status == 409


def test_a_failed_save_leaves_the_vm_running(machine, saves, tmp_path):
    calls, fail, SnapshotError = saves
    ctl = MachineControl(machine, pause_timeout=10)
    fail.append(SnapshotError("writing x: No space left on device"))
    with pytest.raises(ControlError) as e:
        ctl.save(str(tmp_path / "a.snap"), "none")
    assert e.value.status == 500 and "No space left" in e.value.message and "runs on" in e.value.message
    assert not machine.paused and machine.status is None and all(_advances(v) for v in machine.vcpus)


@pytest.mark.parametrize("where, message", [("missing/a.snap", "is not a directory"), ("", "it is a directory")])
def test_save_to_an_unusable_path_is_a_400(machine, saves, tmp_path, where, message):
    ctl = MachineControl(machine, pause_timeout=10)
    with pytest.raises(ControlError) as e:
        ctl.save(str(tmp_path / where) if where else str(tmp_path), "none")
    assert e.value.status == 400 and message in e.value.message
    assert saves[0] == [] and not machine.paused
