"""What the control API can do to a VM: the `VmControl` interface and its error.

The API server (`api.py`) and its commands (`commands.py`) see a VM only
through `VmControl`, so they are tested against a fake and the Machine's
side (`machine_control.py`) is tested without HTTP. A new API action (save,
snapshot, migrate...) is a method here, a command in commands.py and a path
in docs/api.yaml.
"""

from __future__ import annotations

from typing import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..migration.source import MigrationOptions


class ControlError(Exception):
    """The VM cannot do what was asked. `status` is the HTTP status the API
    answers with: 409 (the default) for an action that does not fit the VM's
    state, 400 for a value this VM cannot take, 500 for a failure."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class VmControl(Protocol):
    """The actions of the control API. Every method may raise ControlError;
    the dicts returned are JSON-ready (str keys, plain values)."""

    def status(self) -> dict[str, object]:
        """state (running|paused|stopped), vcpus, memory, uptime, pid, devices."""
        ...

    def statistics(self) -> dict[str, object]:
        """{"devices": {id: counters}, "vcpus": [{"index", "state"}]}."""
        ...

    def pause(self) -> None:
        """Returns once no vCPU runs guest code."""
        ...

    def resume(self) -> None:
        ...

    def balloon_set(self, target_bytes: int) -> None:
        """Ask the guest to give back `target_bytes` (the balloon's size)."""
        ...

    def balloon_info(self) -> dict[str, object]:
        """target, actual, memory (bytes) and the guest's statistics."""
        ...

    def stop(self) -> None:
        """Power the VM off (returns at once; the VM ends shortly after)."""
        ...

    def save(self, path: str, compression: str) -> dict[str, object]:
        """Write the VM's state to the snapshot file `path`, then stop the VM
        (it never runs again after the state was taken)."""
        ...

    def snapshot(self, path: str, compression: str, disks: str = "overlay") -> dict[str, object]:
        """Write the VM's state to `path`; the VM runs on (pause, save, resume).
        `disks`: how writable disks are frozen with it (overlay, internal,
        none; vmm/disk_snapshot.py)."""
        ...

    def restore(self, path: str) -> dict[str, object]:
        """Restore the snapshot at `path` in this process (only a `pyvirt
        restore --api-socket` waiting for one; a running VM refuses)."""
        ...

    def migrate(self, options: MigrationOptions) -> dict[str, object]:
        """Start a live migration in the background; returns its progress."""
        ...

    def migration(self) -> dict[str, object]:
        """The progress of the current or last migration."""
        ...

    def migrate_cancel(self) -> dict[str, object]:
        """Cancel the running migration before switchover; the VM runs on."""
        ...
