"""`pyvirt vm ...` (cli/vm.py) against an API server with a fake VM: output
forms, exit statuses, and the messages for a VM that is not there."""

from __future__ import annotations

import json
import socket

import pytest
from test_api import FakeVm

from pyvirt.cli.main import main
from pyvirt.cli.vm import format_text
from pyvirt.vmm.api import ApiServer


@pytest.fixture
def vm() -> FakeVm:
    return FakeVm()


@pytest.fixture
def sock(tmp_path, vm):
    path = str(tmp_path / "api.sock")
    with ApiServer(path, vm):
        yield path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["vm", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_status_json(capsys, sock):
    status, out, err = run(capsys, "status", "--api-socket", sock, "--output", "json")
    assert status == 0 and err == ""
    assert json.loads(out)["state"] == "running"


def test_status_text(capsys, sock):
    status, out, _ = run(capsys, "status", "--api-socket", sock)
    assert status == 0
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["state"] == "running" and lines["memory"] == "128 MiB" and lines["uptime"] == "1.5 s"
    assert lines["devices"] == "balloon0 (virtio-balloon, pci)"


def test_stats_text(capsys, sock):
    status, out, _ = run(capsys, "stats", "--api-socket", sock)
    assert status == 0 and "devices.balloon0.inflated_pages  3" in out and "0: running" in out


@pytest.mark.parametrize("command, state", [("pause", "paused"), ("stop", "stopped")])
def test_actions(capsys, sock, vm, command, state):
    status, out, _ = run(capsys, command, "--api-socket", sock)
    assert status == 0 and out.split() == ["state", state] and vm.state == state


def test_save_and_snapshot_send_an_absolute_path(capsys, sock, vm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "snapshot", "--api-socket", sock, "vm.snap", "--compress", "zstd")
    assert status == 0 and err == ""
    assert vm.calls[-1] == ("snapshot", (str(tmp_path / "vm.snap"), "zstd"))
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["state"] == "running" and lines["size"] == "8 MiB" and lines["memory_pages"] == "2048"
    assert "0x1" in lines["notes"]
    status, out, _ = run(capsys, "save", "--api-socket", sock, str(tmp_path / "b.snap"), "-o", "json")
    assert status == 0 and json.loads(out)["state"] == "stopped"
    assert vm.calls[-1] == ("save", (str(tmp_path / "b.snap"), "none"))


def test_balloon_set_and_show(capsys, sock, vm):
    status, out, _ = run(capsys, "balloon", "--api-socket", sock, "64M", "-o", "json")
    assert status == 0 and json.loads(out)["target"] == 64 << 20 and vm.target == 64 << 20
    status, out, _ = run(capsys, "balloon", "--api-socket", sock)
    assert status == 0 and "target" in out and "64 MiB" in out and ("balloon_info", None) in vm.calls


def test_bad_balloon_target_is_reported_without_asking(capsys, sock, vm):
    status, _, err = run(capsys, "balloon", "--api-socket", sock, "lots")
    assert status == 1 and "'lots' is not a size" in err and vm.calls == []


def test_server_errors_go_to_stderr(capsys, sock):
    status, out, err = run(capsys, "resume", "--api-socket", sock)
    assert (status, out) == (1, "") and err == "pyvirt: the VM is not paused\n"
    status, _, err = run(capsys, "balloon", "--api-socket", sock, "1G")
    assert status == 1 and err == "pyvirt: too big\n"


def test_missing_socket(capsys, tmp_path):
    path = str(tmp_path / "none.sock")
    status, _, err = run(capsys, "status", "--api-socket", path)
    assert status == 1 and f"is the VM running with --api-socket {path}?" in err


def test_stale_socket(capsys, tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    status, _, err = run(capsys, "pause", "--api-socket", path)
    assert status == 1 and "nothing listens" in err and "--api-socket" in err


def test_api_socket_is_required(capsys):
    with pytest.raises(SystemExit) as e:
        main(["vm", "status"])
    assert e.value.code == 2


def test_format_text_flattens():
    assert format_text("x", {"a": {"b": 1, "memory": 1 << 30}, "l": []}) == "a.b       1\na.memory  1 GiB\nl         none"
