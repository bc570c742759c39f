"""The migration's control API: PUT/GET/DELETE /migrate parsed into commands
(vmm/commands.py), the spec's schemas matching them, and MachineControl's
migrate/migration/migrate_cancel over a fake machine (no /dev/kvm)."""

from __future__ import annotations

import dataclasses
import re
import socket
import time
from pathlib import Path

import pytest

from pyvirt.migration import source
from pyvirt.migration.source import MigrationOptions, Progress
from pyvirt.vmm.commands import (CancelMigration, GetMigration, RequestError, StartMigration, find_command,
                                 parse_request)
from pyvirt.vmm.config import VmConfig
from pyvirt.vmm.control import ControlError
from pyvirt.vmm.machine_control import MachineControl
from pyvirt.vmm.vcpu_loop import StopFlag

SPEC = Path(__file__).resolve().parents[2] / "docs" / "api.yaml"


# --- requests -> commands ------------------------------------------------------------

def test_a_uri_alone_takes_the_defaults():
    cmd = parse_request("PUT", "/migrate", b'{"uri": "tcp:10.0.0.2:4444"}')
    assert cmd == StartMigration(uri="tcp:10.0.0.2:4444")
    assert cmd.options() == MigrationOptions(uri="tcp:10.0.0.2:4444", downtime_limit=0.05, max_rounds=30,
                                             auto_converge=True, postcopy=False, bandwidth=0)


def test_every_field_reaches_the_options():
    body = (b'{"uri": "tcp:[::1]:5000", "downtime_ms": 20, "max_rounds": 5, "auto_converge": false, '
            b'"postcopy": true, "bandwidth": 104857600}')
    cmd = parse_request("PUT", "/migrate", body)
    assert isinstance(cmd, StartMigration)
    opt = cmd.options()
    assert opt == MigrationOptions(uri="tcp:[::1]:5000", downtime_limit=0.02, max_rounds=5, auto_converge=False,
                                   postcopy=True, bandwidth=100 << 20)
    assert parse_request("PUT", "/migrate", b'{"uri": "tcp:h:1", "downtime_ms": 0.5}').options().downtime_limit \
        == pytest.approx(0.0005)  # type: ignore[attr-defined]


@pytest.mark.parametrize("body, words", [
    (b"", '"uri" (tcp:HOST:PORT of `pyvirt run --incoming`) is required'),
    (b'{"downtime_ms": 20}', '"uri"'),
    (b'{"uri": "10.0.0.2:4444"}', "use tcp:HOST:PORT"),
    (b'{"uri": "tcp:host:0"}', "from 1 to 65535"),
    (b'{"uri": "tcp::4444"}', "no host"),
    (b'{"uri": 4444}', "field 'uri' must be a string"),
    (b'{"uri": "tcp:h:1", "downtime_ms": "20"}', "field 'downtime_ms' must be a number"),
    (b'{"uri": "tcp:h:1", "downtime_ms": true}', "field 'downtime_ms' must be a number"),
    (b'{"uri": "tcp:h:1", "max_rounds": 2.5}', "field 'max_rounds' must be an integer"),
    (b'{"uri": "tcp:h:1", "max_rounds": true}', "field 'max_rounds' must be an integer"),
    (b'{"uri": "tcp:h:1", "auto_converge": 1}', "field 'auto_converge' must be true or false"),
    (b'{"uri": "tcp:h:1", "postcopy": "yes"}', "field 'postcopy' must be true or false"),
    (b'{"uri": "tcp:h:1", "bandwidth": "100M"}', "field 'bandwidth' must be an integer"),
    (b'{"uri": "tcp:h:1", "downtime_ms": 0}', "must be above 0"),
    (b'{"uri": "tcp:h:1", "downtime_ms": -5}', "must be above 0"),
    (b'{"uri": "tcp:h:1", "downtime_ms": 60001}', "at most 60 s"),
    (b'{"uri": "tcp:h:1", "downtime_ms": 1e400}', "must be above 0"),  # JSON's "infinity" is no limit
    (b'{"uri": "tcp:h:1", "max_rounds": 0}', "must be 1 to 10000"),
    (b'{"uri": "tcp:h:1", "max_rounds": 10001}', "must be 1 to 10000"),
    (b'{"uri": "tcp:h:1", "bandwidth": -1}', "bandwidth must be positive"),
    (b'{"uri": "tcp:h:1", "speed": 1}', "unknown field 'speed'"),
    (b'{"uri": "tcp:h:1", "uri": "tcp:h:2"}', "given twice"),
])
def test_bad_migration_requests_are_400(body, words):
    with pytest.raises(RequestError) as e:
        parse_request("PUT", "/migrate", body)
    assert e.value.status == 400 and words in e.value.message


@pytest.mark.parametrize("body", [b'{"downtime_ms": 60000, "uri": "tcp:h:1"}', b'{"uri": "tcp:h:1", "max_rounds": 1}',
                                  b'{"uri": "tcp:h:1", "max_rounds": 10000, "bandwidth": 0}'])
def test_limits_are_inclusive(body):
    assert isinstance(parse_request("PUT", "/migrate", body), StartMigration)


def test_get_and_delete_routes():
    assert parse_request("GET", "/migrate", b"") == GetMigration()
    assert parse_request("DELETE", "/migrate", b"{}") == CancelMigration()
    with pytest.raises(RequestError, match="unknown field 'now'"):
        parse_request("DELETE", "/migrate", b'{"now": true}')
    with pytest.raises(RequestError) as e:
        find_command("POST", "/migrate")
    assert (e.value.status, e.value.allow) == (405, ("DELETE", "GET", "PUT"))


class RecordingVm:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def migrate(self, options: MigrationOptions) -> dict[str, object]:
        self.calls.append(("migrate", options))
        return {"state": "setup"}

    def migration(self) -> dict[str, object]:
        self.calls.append(("migration", None))
        return {"state": "precopy"}

    def migrate_cancel(self) -> dict[str, object]:
        self.calls.append(("migrate_cancel", None))
        return {"state": "precopy"}


def test_commands_call_their_control_method():
    vm = RecordingVm()
    assert parse_request("PUT", "/migrate", b'{"uri": "tcp:h:9", "postcopy": true}').execute(vm) == {"state": "setup"}  # type: ignore[arg-type]
    assert GetMigration().execute(vm) == {"state": "precopy"}  # type: ignore[arg-type]
    CancelMigration().execute(vm)  # type: ignore[arg-type]
    assert vm.calls == [("migrate", MigrationOptions(uri="tcp:h:9", postcopy=True)), ("migration", None),
                        ("migrate_cancel", None)]


# --- the spec's schemas ----------------------------------------------------------------------

def _schema_properties(name: str) -> set[str]:
    """The property names of components.schemas.NAME in docs/api.yaml (plain
    two-space YAML: properties sit 8 spaces in)."""
    lines = SPEC.read_text().splitlines()
    start = lines.index(f"    {name}:")
    names: set[str] = set()
    in_props = False
    for line in lines[start + 1:]:
        if re.match(r"^ {0,4}\S", line):
            break
        if line == "      properties:":
            in_props = True
        elif re.match(r"^ {6}\S", line):
            in_props = False
        elif in_props and (m := re.match(r"^ {8}(\w+):", line)):
            names.add(m.group(1))
    return names


def test_the_spec_documents_every_request_field_and_progress_field():
    assert _schema_properties("MigrationRequest") == set(StartMigration.fields)
    assert _schema_properties("MigrationProgress") == {f.name for f in dataclasses.fields(Progress)}
    assert "migration" in _schema_properties("Statistics")


# --- MachineControl --------------------------------------------------------------------------

class FakeMachine:
    """What MachineControl's migration methods and checks use of a Machine."""

    def __init__(self) -> None:
        self.cfg = VmConfig(kernel="k.elf", cpus=1, memory=64 << 20)
        self._flag = StopFlag()
        self.paused = False
        self.virtio = None
        self.vcpus: list[object] = []
        self.threads: list[object] = []
        self._gate = None
        self.dirty_rings: list[object] = []
        self.reason = ""

    def pause(self, timeout: float = 5.0) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def stop(self, status: int, reason: str) -> None:
        self._flag.stopping = True
        self.reason = reason


class FakeMigration:
    """OutgoingMigration's face to MachineControl; the test moves its state."""

    made: list[FakeMigration] = []

    def __init__(self, m: FakeMachine, options: MigrationOptions) -> None:
        self.m, self.options = m, options
        self.progress = Progress(uri=options.uri, memory=m.cfg.memory)
        self.started = self.cancelled = False
        FakeMigration.made.append(self)

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def active(self) -> bool:
        return self.progress.state not in ("completed", "failed", "cancelled")

    def snapshot(self) -> dict[str, object]:
        return self.progress.as_dict()


@pytest.fixture
def ctl(monkeypatch):
    FakeMigration.made = []
    monkeypatch.setattr(source, "OutgoingMigration", FakeMigration)
    return MachineControl(FakeMachine())  # type: ignore[arg-type]


def test_no_migration_yet(ctl):
    with pytest.raises(ControlError) as e:
        ctl.migration()
    assert e.value.status == 404 and "no migration has been started" in e.value.message
    with pytest.raises(ControlError) as e:
        ctl.migrate_cancel()
    assert e.value.status == 409 and "no migration is running" in e.value.message
    assert "migration" not in ctl.statistics()


def test_migrate_starts_one_in_the_background(ctl):
    reply = ctl.migrate(MigrationOptions(uri="tcp:h:1"))
    (mig,) = FakeMigration.made
    assert mig.started and mig.m is ctl.m and mig.options.uri == "tcp:h:1"
    assert reply["state"] == "setup" and reply["uri"] == "tcp:h:1" and reply["memory"] == 64 << 20
    mig.progress.state, mig.progress.round = "precopy", 3
    assert ctl.migration()["round"] == 3
    assert ctl.statistics()["migration"]["state"] == "precopy"


def test_a_paused_or_stopping_vm_is_not_migrated(ctl):
    ctl.m.paused = True
    with pytest.raises(ControlError, match="the VM is paused: resume it first") as e:
        ctl.migrate(MigrationOptions(uri="tcp:h:1"))
    assert e.value.status == 409
    ctl.m.paused = False
    ctl.m._flag.stopping = True
    with pytest.raises(ControlError, match="the VM is stopping"):
        ctl.migrate(MigrationOptions(uri="tcp:h:1"))
    assert FakeMigration.made == []


def test_while_a_migration_runs_the_vm_is_left_alone(ctl, tmp_path):
    ctl.migrate(MigrationOptions(uri="tcp:h:1"))
    (mig,) = FakeMigration.made
    for state in ("setup", "precopy", "switchover", "postcopy"):
        mig.progress.state = state
        for action in (ctl.pause, ctl.resume, lambda: ctl.save(str(tmp_path / "a.snap"), "none"),
                       lambda: ctl.snapshot(str(tmp_path / "a.snap"), "none"),
                       lambda: ctl.migrate(MigrationOptions(uri="tcp:h:2"))):
            with pytest.raises(ControlError) as e:
                action()
            assert e.value.status == 409 and "a migration is running" in e.value.message
            assert "DELETE /migrate" in e.value.message
    assert not ctl.m.paused and len(FakeMigration.made) == 1
    assert not (tmp_path / "a.snap").exists()


def test_cancel_asks_the_migration_to_stop(ctl):
    ctl.migrate(MigrationOptions(uri="tcp:h:1"))
    (mig,) = FakeMigration.made
    mig.progress.state = "precopy"
    assert ctl.migrate_cancel()["state"] == "precopy"  # it stops at its next check
    assert mig.cancelled
    mig.progress.state, mig.progress.error = "cancelled", "cancelled through the control API"
    with pytest.raises(ControlError, match="no migration is running") as e:
        ctl.migrate_cancel()
    assert e.value.status == 409
    assert ctl.migration()["state"] == "cancelled"  # the last one stays readable


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
def test_after_a_migration_ends_the_vm_is_controllable_again(ctl, end):
    ctl.migrate(MigrationOptions(uri="tcp:h:1"))
    FakeMigration.made[0].progress.state = end
    ctl.pause()
    ctl.resume()
    ctl.migrate(MigrationOptions(uri="tcp:h:2"))  # a new one replaces the record
    assert len(FakeMigration.made) == 2 and ctl.migration()["uri"] == "tcp:h:2"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_migration_to_nowhere_fails_and_the_vm_runs_on():
    """The real OutgoingMigration thread: nothing listens at the address."""
    m = FakeMachine()
    ctl = MachineControl(m)  # type: ignore[arg-type]
    port = _closed_port()
    first = ctl.migrate(MigrationOptions(uri=f"tcp:127.0.0.1:{port}", connect_timeout=5))
    assert first["state"] in ("setup", "failed")
    deadline = time.monotonic() + 10
    while ctl.migration()["state"] == "setup" and time.monotonic() < deadline:
        time.sleep(0.01)
    p = ctl.migration()
    assert p["state"] == "failed"
    assert f"cannot connect to 127.0.0.1:{port}" in p["error"] and "--incoming" in p["error"]
    assert p["total_time"] is not None and p["elapsed"] == p["total_time"] and p["transferred"] == 0
    assert not m.paused and not m._flag.stopping
    ctl.pause()  # no longer refused
    assert m.paused
