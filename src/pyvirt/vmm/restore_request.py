"""`pyvirt restore --api-socket PATH` without a file: a VMM started ahead of
time that restores a snapshot when asked (`PUT /restore {"path": FILE}`).

Starting a Python process and importing what a restore needs takes longer
than the restore itself (tens of milliseconds on a slow host). A fleet
that resumes VMs on demand (serverless, CI runners) starts these processes
ahead, as Firecracker users start `firecracker --api-sock` and then load a
snapshot: everything is imported and warmed up while nobody waits, and the
request only maps the file, loads the state and starts the vCPUs. The reply
says how long that took (`restore_ms`, and `to_run_ms`: until the vCPU
threads were entering KVM_RUN).

Before the restore the API answers status ("waiting") and /restore; after
it, it is the restored VM's control API, on the same socket.
"""

from __future__ import annotations

import os
import threading
import time

from .control import ControlError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..migration.source import MigrationOptions
    from .config import SerialConfig
    from .machine_control import MachineControl
    from .restore import RestoredMachine

RUN_WAIT = 5.0  # seconds the reply waits for the vCPUs to start


def preload() -> None:
    """Import and warm up what a restore needs."""
    from ..devices.legacy import pit, states  # noqa: F401
    from ..devices.virtio import balloon, blk, console, net, rng, vsock  # noqa: F401
    from ..kvm import structs_extra  # noqa: F401
    from . import device_config, disk_restore, machine_control, pvm, restore, snapshot_header  # noqa: F401
    from . import state_codec, vmstate  # noqa: F401
    from .state_codec import _hints

    for module in (states, vmstate):
        for value in vars(module).values():
            if isinstance(value, type) and hasattr(value, "__dataclass_fields__"):
                _hints(value)


class RestoreOnRequest:
    """A `VmControl` that has no VM until PUT /restore, then is the VM's."""

    def __init__(self, serial: SerialConfig | None, *, verify_memory: bool = False,
                 disk_mode: str = "overlay") -> None:
        self.serial = serial
        self.verify_memory = verify_memory
        self.disk_mode = disk_mode
        self.machine: RestoredMachine | None = None
        self.inner: MachineControl | None = None
        self.ready = threading.Event()
        self._lock = threading.Lock()

    def restore(self, path: str) -> dict[str, object]:
        from .machine import VmError
        from .machine_control import MachineControl
        from .restore import restore_machine
        from .snapshot import SnapshotError

        with self._lock:
            if self.machine is not None:
                raise ControlError("this process has restored a VM already (start another `pyvirt restore "
                                   "--api-socket` for the next one)")
            start = time.monotonic()
            try:
                m = restore_machine(path, self.serial, None, verify_memory=self.verify_memory,
                                    disk_mode=self.disk_mode)
            except (SnapshotError, VmError) as e:
                raise ControlError(str(e), status=400) from e
            restored = time.monotonic()
            m.started = threading.Event()
            self.machine, self.inner = m, MachineControl(m)
            self.ready.set()  # the main thread runs the VM
        m.started.wait(RUN_WAIT)
        running = m.started_at if m.started.is_set() else None
        return {"state": "running", "path": os.path.abspath(path),
                "restore_ms": round((restored - start) * 1000, 2),
                "to_run_ms": round((running - start) * 1000, 2) if running is not None else None}

    # --- before the restore: only status; after it, the VM's API ---------------------
    def _vm(self) -> MachineControl:
        if self.inner is None:
            raise ControlError("no VM yet: PUT /restore with a snapshot file first (`pyvirt vm restore`)")
        return self.inner

    def status(self) -> dict[str, object]:
        if self.inner is None:
            return {"state": "waiting", "pid": os.getpid()}
        return self.inner.status()

    def statistics(self) -> dict[str, object]:
        return self._vm().statistics()

    def pause(self) -> None:
        self._vm().pause()

    def resume(self) -> None:
        self._vm().resume()

    def stop(self) -> None:
        if self.inner is None:
            self.ready.set()  # nothing to run: the process ends
            return
        self.inner.stop()

    def balloon_set(self, target_bytes: int) -> None:
        self._vm().balloon_set(target_bytes)

    def balloon_info(self) -> dict[str, object]:
        return self._vm().balloon_info()

    def save(self, path: str, compression: str) -> dict[str, object]:
        return self._vm().save(path, compression)

    def snapshot(self, path: str, compression: str, disks: str = "overlay") -> dict[str, object]:
        return self._vm().snapshot(path, compression, disks)

    def migrate(self, options: MigrationOptions) -> dict[str, object]:
        return self._vm().migrate(options)

    def migration(self) -> dict[str, object]:
        return self._vm().migration()

    def migrate_cancel(self) -> dict[str, object]:
        return self._vm().migrate_cancel()


def serve_and_restore(api_socket: str, serial: SerialConfig | None, *, verify_memory: bool = False,
                      disk_mode: str = "overlay") -> int:
    """Serve the API, wait for PUT /restore, run the VM; the exit status."""
    import sys

    from .api import ApiError, ApiServer

    preload()
    control = RestoreOnRequest(serial, verify_memory=verify_memory, disk_mode=disk_mode)
    try:
        server = ApiServer(api_socket, control).start()  # type: ignore[arg-type]
    except ApiError as e:
        print(f"pyvirt: {e}", file=sys.stderr)
        return 1
    try:
        from .._log import get_logger

        get_logger(__name__).warning("waiting for PUT /restore on %s", api_socket)
        control.ready.wait()
        m = control.machine
        if m is None:
            return 0  # stopped before any restore
        try:
            return m.run()
        finally:
            m.close()
    finally:
        server.close()
