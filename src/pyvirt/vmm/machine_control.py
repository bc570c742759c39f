"""The Machine side of the control API: `MachineControl` (a `VmControl`) and
`VcpuGate`, which parks vCPU threads while the VM is paused.

Pausing: a vCPU thread spends its life in KVM_RUN, and the only way to get
it out without the guest's help is the one `Machine.stop` uses: set
`immediate_exit` in its run page and send it the kick signal. KVM_RUN then
returns EINTR (at once, if the thread was about to enter it), and the vCPU
loop calls its interrupt hook (`Machine._interrupt_hook`), where
`VcpuGate.park` holds the thread on a condition variable until the VM
resumes or stops. The gate's lock orders "pause sets immediate_exit" against
"a vCPU clears it", so a kick is never lost between the loop's check and
its next KVM_RUN; the hot path (port I/O exits) is not touched at all.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import cast

from . import exit_status
from .control import ControlError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..devices.virtio.balloon import VirtioBalloon
    from ..devices.virtio.device import VirtioDevice
    from ..kvm import Vcpu
    from ..migration.source import MigrationOptions, OutgoingMigration
    from .api import ApiServer
    from .machine import Machine

PAUSE_TIMEOUT = 5.0  # seconds for every vCPU to park before a pause fails
PAGE_SIZE = 4096
_POLL = 0.05  # how often a pause re-checks for vCPU threads that ended meanwhile


class VcpuGate:
    """Where vCPU threads wait while the VM is paused. One per Machine,
    made by its first `pause()`."""

    def __init__(self, machine: Machine, kick: Callable[[threading.Thread], None] | None = None) -> None:
        self._m = machine
        self._kick = kick or _kick
        self._cond = threading.Condition()
        self.paused = False
        self.parked: set[int] = set()  # indexes of the vCPUs waiting here

    def park(self, vcpu: Vcpu) -> None:
        """On a vCPU thread that KVM_RUN returned EINTR to: wait here while
        the VM is paused. Never parks a stopping VM's vCPU."""
        flag = self._m._flag
        with self._cond:
            if flag.stopping:
                return  # leave immediate_exit set: the loop ends anyway
            # Under the lock: either pause() sets immediate_exit after this
            # (and the next KVM_RUN returns at once), or we see `paused`.
            vcpu.set_immediate_exit(False)
            if not self.paused:
                return
            self.parked.add(vcpu.index)
            self._cond.notify_all()
            while self.paused and not flag.stopping:
                self._cond.wait()
            self.parked.discard(vcpu.index)

    def pause(self, timeout: float = PAUSE_TIMEOUT) -> None:
        """Park every running vCPU; returns once all are parked. TimeoutError
        (and the VM runs on) if one has not after `timeout` seconds;
        ControlError if the VM stops meanwhile."""
        m = self._m
        with self._cond:
            self.paused = True
            for vcpu in m.vcpus:
                vcpu.set_immediate_exit(True)
        me = threading.get_ident()
        for t in m.threads:
            if t.ident != me and t.is_alive():
                self._kick(t)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                # Stopping first: a stopping VM's vCPU threads end, which
                # would look like "all parked".
                if m._flag.stopping:
                    raise ControlError("the VM is stopping")
                if self._all_parked():
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    self.paused = False
                    self._cond.notify_all()
                    raise TimeoutError(f"vCPUs {sorted(self._running())} did not stop within {timeout:g} s")
                self._cond.wait(min(left, _POLL))

    def _running(self) -> set[int]:
        return {v.index for v, t in zip(self._m.vcpus, self._m.threads)
                if t.is_alive() and v.index not in self.parked}

    def _all_parked(self) -> bool:
        # vCPU threads that ended (an exit error) have nothing to park.
        return len(self._m.threads) == len(self._m.vcpus) and not self._running()

    def resume(self) -> None:
        """Let parked vCPUs run again (also what ends their wait at stop)."""
        with self._cond:
            self.paused = False
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every parked vCPU so it can see the VM is stopping."""
        with self._cond:
            self._cond.notify_all()


def _kick(t: threading.Thread) -> None:
    from .machine import _KICK

    if t.ident is not None:
        try:
            signal.pthread_kill(t.ident, _KICK)
        except (ProcessLookupError, OSError):  # the thread just ended
            pass


def _plain(stats: object) -> dict[str, object]:
    """A device's statistics() (a dict or a dataclass) as JSON-ready data."""
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        stats = dataclasses.asdict(stats)
    if not isinstance(stats, dict):
        return {"value": str(stats)}
    return {str(k): v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for k, v in stats.items()}


class MachineControl:
    """`VmControl` over a running Machine."""

    def __init__(self, machine: Machine, clock: Callable[[], float] = time.monotonic,
                 pause_timeout: float = PAUSE_TIMEOUT) -> None:
        self.m = machine
        self._clock = clock
        self._started = clock()
        self._pause_timeout = pause_timeout
        self._lock = threading.Lock()  # one pause/resume at a time: their checks and actions are one step
        self._migration: OutgoingMigration | None = None

    # --- reading ----------------------------------------------------------------
    def _state(self) -> str:
        if self.m._flag.stopping:
            return "stopped"
        return "paused" if self.m.paused else "running"

    def _devices(self) -> list[tuple[str, VirtioDevice]]:
        """(id, device) of every virtio device; ids number each kind from 0."""
        virtio = self.m.virtio
        if virtio is None:
            return []
        counts: dict[str, int] = {}
        out = []
        for dev in virtio.devices:
            n = counts.get(dev.name, 0)
            counts[dev.name] = n + 1
            out.append((f"{dev.name}{n}", dev))
        return out

    def status(self) -> dict[str, object]:
        cfg = self.m.cfg
        out: dict[str, object] = {
            "state": self._state(), "vcpus": cfg.cpus, "memory": cfg.memory,
            "uptime": round(self._clock() - self._started, 3), "pid": os.getpid(), "kernel": cfg.kernel,
            "devices": [{"id": name, "type": f"virtio-{dev.name}", "transport": cfg.transport}
                        for name, dev in self._devices()],
        }
        if self.m._flag.stopping and self.m.reason:
            out["stop_reason"] = self.m.reason
        return out

    def statistics(self) -> dict[str, object]:
        devices = {}
        for name, dev in self._devices():
            stats = getattr(dev, "statistics", None)
            if callable(stats):
                devices[name] = _plain(stats())
        gate = self.m._gate
        parked = set(gate.parked) if gate is not None else set()
        vcpus = []
        for i, vcpu in enumerate(self.m.vcpus):
            t = self.m.threads[i] if i < len(self.m.threads) else None
            state = "parked" if vcpu.index in parked else "running" if t is not None and t.is_alive() else "stopped"
            vcpus.append({"index": vcpu.index, "state": state})
        out: dict[str, object] = {"devices": devices, "vcpus": vcpus}
        if self._migration is not None:
            out["migration"] = self._migration.snapshot()
        return out

    # --- pause and resume -------------------------------------------------------
    def pause(self) -> None:
        with self._lock:
            self._check_running()
            self._check_no_migration()
            if self.m.paused:
                raise ControlError("the VM is already paused")
            try:
                self.m.pause(self._pause_timeout)
            except TimeoutError as e:
                raise ControlError(f"cannot pause: {e}; the VM runs on", status=500) from e

    def resume(self) -> None:
        with self._lock:
            self._check_running()
            self._check_no_migration()
            if not self.m.paused:
                raise ControlError("the VM is not paused")
            self.m.resume()

    def _check_running(self) -> None:
        if self.m._flag.stopping:
            raise ControlError("the VM is stopping")

    def _check_no_migration(self) -> None:
        if self._migration is not None and self._migration.active:
            raise ControlError("a migration is running (cancel it with DELETE /migrate, "
                               "`pyvirt vm migrate --cancel`)")

    def stop(self) -> None:
        self._check_running()
        self.m.stop(exit_status.POWEROFF, "stopped through the control API")

    # --- save and snapshot --------------------------------------------------------
    def save(self, path: str, compression: str) -> dict[str, object]:
        return self._write_state(path, compression, stop=True)

    def snapshot(self, path: str, compression: str, disks: str = "overlay") -> dict[str, object]:
        return self._write_state(path, compression, stop=False, disks=disks)

    def _write_state(self, path: str, compression: str, stop: bool, disks: str | None = None) -> dict[str, object]:
        from .disk_snapshot import DiskSnapshot, DiskSnapshotError
        from .save import save_machine
        from .snapshot import SnapshotError

        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            raise ControlError(f"cannot write {path}: {directory} is not a directory", status=400)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ControlError(f"cannot write {path}: no permission to create files in {directory}", status=400)
        if os.path.isdir(path):
            raise ControlError(f"cannot write {path}: it is a directory", status=400)
        with self._lock:
            self._check_running()
            self._check_no_migration()
            try:  # the disks' snapshot refuses what it cannot do before the VM pauses
                plan = DiskSnapshot(self.m, path, disks) if disks is not None else None
            except DiskSnapshotError as e:
                raise ControlError(str(e), status=400) from e
            was_paused = self.m.paused
            if not was_paused:
                try:
                    self.m.pause(self._pause_timeout)
                except TimeoutError as e:
                    raise ControlError(f"cannot pause to save: {e}; the VM runs on", status=500) from e
            try:
                result = save_machine(self.m, path, kind="save" if stop else "snapshot", compression=compression,
                                      freeze=plan.take if plan is not None and plan.needed else None)
            except BaseException as e:
                if not was_paused:
                    self.m.resume()
                if isinstance(e, (SnapshotError, DiskSnapshotError)):
                    raise ControlError(f"{e}; the VM runs on", status=500) from e
                raise
            if plan is not None:
                plan.commit()
            if stop:
                # Still paused: the guest must not run after its state was taken.
                self.m.stop(exit_status.POWEROFF, f"saved to {result.path}")
                state = "stopped"
            else:
                if not was_paused:
                    self.m.resume()
                state = "paused" if was_paused else "running"
        return {"state": state, **result.as_dict(), **({"disks": plan.report()} if plan is not None else {})}

    def restore(self, path: str) -> dict[str, object]:
        raise ControlError("this process runs a VM already: restore into a `pyvirt restore --api-socket PATH` "
                           "started without a file")

    # --- live migration -----------------------------------------------------------
    def migrate(self, options: MigrationOptions) -> dict[str, object]:
        from ..migration.source import OutgoingMigration

        with self._lock:
            self._check_running()
            self._check_no_migration()
            if self.m.paused:
                raise ControlError("the VM is paused: resume it first (a migration moves a running VM)")
            self._migration = OutgoingMigration(self.m, options)
            self._migration.start()
        return self._migration.snapshot()

    def migration(self) -> dict[str, object]:
        if self._migration is None:
            raise ControlError("no migration has been started", status=404)
        return self._migration.snapshot()

    def migrate_cancel(self) -> dict[str, object]:
        mig = self._migration
        if mig is None or not mig.active:
            raise ControlError("no migration is running")
        mig.cancel()
        return mig.snapshot()

    # --- balloon ----------------------------------------------------------------
    def _balloon(self) -> VirtioBalloon:
        virtio = self.m.virtio
        balloon = virtio.balloon if virtio is not None else None
        if balloon is None:
            raise ControlError("the VM has no balloon device (start it with --balloon)")
        return cast("VirtioBalloon", balloon)

    def balloon_set(self, target_bytes: int) -> None:
        balloon = self._balloon()
        self._check_running()
        memory = self.m.cfg.memory
        if target_bytes % PAGE_SIZE:
            raise ControlError(f"balloon target {target_bytes} is not a multiple of 4 KiB", status=400)
        if target_bytes > memory:
            raise ControlError(f"balloon target {target_bytes >> 20} MiB exceeds the guest's "
                               f"{memory >> 20} MiB of memory", status=400)
        balloon.set_target(target_bytes // PAGE_SIZE)

    def balloon_info(self) -> dict[str, object]:
        balloon = self._balloon()
        stats = _plain(balloon.statistics())
        target, actual = stats.pop("target_pages"), stats.pop("actual_pages")
        # Fresh numbers for the next call: returning the guest's buffer asks for them.
        balloon.request_statistics()
        assert isinstance(target, int) and isinstance(actual, int)
        return {"target": target * PAGE_SIZE, "actual": actual * PAGE_SIZE, "memory": self.m.cfg.memory,
                "statistics": stats}


def start_api(machine: Machine) -> ApiServer:
    """Serve the control API of `machine` on its cfg.api_socket (Machine.run
    closes it); VmError if the socket cannot be created."""
    from .api import ApiError, ApiServer
    from .machine import VmError

    assert machine.cfg.api_socket is not None
    try:
        return ApiServer(machine.cfg.api_socket, MachineControl(machine)).start()
    except ApiError as e:
        raise VmError(str(e)) from e
