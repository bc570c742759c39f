"""`pyvirt vm migrate` (cli/migrate.py) with a fake API client, and
`pyvirt run --incoming`'s command line (cli/main.py): parsing, the request
body, the progress lines, and what is refused before anything listens."""

from __future__ import annotations

import json
import socket

import pytest

from pyvirt.cli import migrate
from pyvirt.cli.main import build_parser, main, parse_run
from pyvirt.cli.migrate import cmd_migrate, describe, request_body
from pyvirt.cli.vm import ClientError


def parse(*argv: str):
    return build_parser().parse_args(["vm", "migrate", "--api-socket", "S", *argv])


# --- the command line ------------------------------------------------------------------

def test_every_option_parses():
    args = parse("tcp:h:1", "--downtime", "20", "--postcopy", "--bandwidth", "100M", "--no-auto-converge",
                 "--max-rounds", "7")
    assert (args.vm_command, args.api_socket, args.uri) == ("migrate", "S", "tcp:h:1")
    assert (args.downtime, args.postcopy, args.bandwidth, args.auto_converge, args.max_rounds) == (
        20.0, True, "100M", False, 7)
    assert not args.detach and not args.cancel


def test_defaults():
    args = parse("tcp:h:1")
    assert (args.downtime, args.max_rounds, args.auto_converge, args.postcopy, args.bandwidth) == (
        50.0, 30, True, False, None)


def test_request_body():
    body = request_body(parse("tcp:h:1", "--downtime", "20", "--postcopy", "--bandwidth", "100M",
                              "--no-auto-converge"))
    assert body == {"uri": "tcp:h:1", "downtime_ms": 20.0, "max_rounds": 30, "auto_converge": False,
                    "postcopy": True, "bandwidth": 100 << 20}
    assert request_body(parse("tcp:[::1]:9")) == {"uri": "tcp:[::1]:9", "downtime_ms": 50.0, "max_rounds": 30,
                                                  "auto_converge": True, "postcopy": False}
    assert request_body(parse("tcp:h:1", "--bandwidth", "1G"))["bandwidth"] == 1 << 30


@pytest.mark.parametrize("value", ["fast", "100Mb/s", "-1M", "1.5.G"])
def test_a_bad_bandwidth_is_a_client_error(value):
    with pytest.raises(ClientError, match=f"--bandwidth {value!r} is not a size per second: use e.g. 100M"):
        request_body(parse("tcp:h:1", f"--bandwidth={value}"))


def test_no_destination_is_a_client_error():
    with pytest.raises(ClientError, match="migrate needs the destination, e.g. tcp:"):
        request_body(parse())


# --- progress ----------------------------------------------------------------------------

def progress(**fields: object) -> dict[str, object]:
    p: dict[str, object] = {"state": "precopy", "uri": "tcp:h:1", "round": 2, "transferred": 300 << 20,
                            "pages_sent": 76800, "remaining": 12 << 20, "dirty_rate": 40 << 20,
                            "bandwidth": 1 << 30, "expected_downtime": 0.0117, "throttle": 0.0, "elapsed": 1.2,
                            "downtime": None, "total_time": None, "postcopy_pages": 0, "final_pages": 0,
                            "switchover_ms": {}, "error": "", "memory": 1 << 30}
    p.update(fields)
    return p


def test_describe():
    assert describe(progress()) == ("precopy: round 2, sent 300.0 MiB, remaining 12.0 MiB, dirty 40.0 MiB/s, "
                                    "link 1024.0 MiB/s, expected downtime 12 ms")
    throttled = describe(progress(throttle=0.3))
    assert throttled.endswith(", vCPUs throttled 30%")
    done = describe(progress(state="completed", remaining=0, downtime=0.021))
    assert done.startswith("completed: round 2") and "expected downtime" not in done  # only while it matters
    assert describe({"state": "setup"}) == ("setup: round None, sent ?, remaining ?, dirty ?/s, link ?/s")


class FakeClient:
    """ApiClient.request answering from a script: PUT and DELETE once, GET in turn."""

    def __init__(self, gets: list[dict[str, object] | Exception], put: dict[str, object] | None = None) -> None:
        self.gets = gets
        self.put = put or progress(state="setup", round=0)
        self.calls: list[tuple[str, str, object]] = []

    def request(self, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        self.calls.append((method, path, body))
        if method in ("PUT", "DELETE"):
            return self.put
        reply = self.gets.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


@pytest.fixture(autouse=True)
def no_wait(monkeypatch):
    monkeypatch.setattr(migrate, "POLL", 0.0)


def test_follows_to_completion_one_line_per_round(capsys):
    client = FakeClient([progress(round=1), progress(round=1, transferred=400 << 20), progress(round=2),
                         progress(state="switchover", round=3),
                         progress(state="completed", round=3, downtime=0.0123, total_time=2.5)])
    status = cmd_migrate(parse("tcp:h:1", "--downtime", "20"), client)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert status == 0
    assert client.calls[0] == ("PUT", "/migrate", request_body(parse("tcp:h:1", "--downtime", "20")))
    assert [c[:2] for c in client.calls[1:]] == [("GET", "/migrate")] * 5 and client.gets == []
    lines = err.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["precopy", "precopy", "switchover", "completed"]
    assert all(line.startswith("pyvirt: ") for line in lines)
    assert out == "migrated to tcp:h:1 in 2.5 s: 3 rounds, 300.0 MiB sent, downtime 12.3 ms\n"


def test_a_failed_migration_is_status_1_with_its_error(capsys):
    client = FakeClient([progress(state="failed", error="did not converge in 30 rounds; the VM runs on here")])
    assert cmd_migrate(parse("tcp:h:1"), client) == 1  # type: ignore[arg-type]
    _, err = capsys.readouterr()
    assert err.splitlines()[-1] == ("pyvirt: migration failed: did not converge in 30 rounds; "
                                    "the VM runs on here")


def test_json_output_prints_the_final_record(capsys):
    final = progress(state="completed", switchover_ms={"pause": 0.4, "send_state": 3.1})
    assert cmd_migrate(parse("tcp:h:1", "-o", "json"), FakeClient([final])) == 0  # type: ignore[arg-type]
    out, _ = capsys.readouterr()
    assert json.loads(out) == final


def test_detach_only_starts_it(capsys):
    client = FakeClient([])
    assert cmd_migrate(parse("tcp:h:1", "--detach"), client) == 0  # type: ignore[arg-type]
    out, _ = capsys.readouterr()
    assert [c[0] for c in client.calls] == ["PUT"] and "migration to tcp:h:1 started" in out and "--api-socket S" in out


def test_cancel_sends_delete(capsys):
    client = FakeClient([], put=progress(state="precopy", round=4))
    assert cmd_migrate(parse("--cancel"), client) == 0  # type: ignore[arg-type]
    out, _ = capsys.readouterr()
    assert client.calls == [("DELETE", "/migrate", None)] and out.startswith("cancelling: precopy: round 4")


def test_losing_the_vm_while_following_says_where_it_may_be():
    client = FakeClient([progress(), ClientError("nothing listens on S (a VM that ended?)")])
    with pytest.raises(ClientError, match=r"a VM that ended\?\) \(the VM may have moved: check the destination\)"):
        cmd_migrate(parse("tcp:h:1"), client)  # type: ignore[arg-type]


def test_main_reports_client_errors_before_any_request(capsys, tmp_path):
    status = main(["vm", "migrate", "--api-socket", str(tmp_path / "none.sock"), "tcp:h:1", "--bandwidth", "x"])
    _, err = capsys.readouterr()
    assert status == 1 and "--bandwidth 'x' is not a size" in err


# --- pyvirt run --incoming ---------------------------------------------------------------------

def test_the_fast_parser_reads_incoming():
    args = parse_run(["run", "--incoming", "tcp:127.0.0.1:5000"])
    assert args is not None and args.incoming == "tcp:127.0.0.1:5000"
    args = parse_run(["run", "--incoming=tcp:[::1]:5000", "--api-socket", "/run/vm.sock", "-v"])
    assert args is not None and (args.incoming, args.api_socket, args.run_verbose) == ("tcp:[::1]:5000",
                                                                                         "/run/vm.sock", 1)
    assert parse_run(["run", "--kernel", "k"]).incoming is None  # type: ignore[union-attr]
    assert build_parser().parse_args(["run", "--incoming", "tcp:h:1"]).incoming == "tcp:h:1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("extra, words", [
    (["--kernel", "k"], "--kernel is not used"),
    (["--cmdline", "quiet"], "--cmdline is not used"),
    (["--initrd", "i"], "--initrd is not used"),
    (["--memory", "lots"], "is not a size"),
    (["--disk", "readonly=on"], "--disk"),  # argparse's path: a disk spec without a path
])
def test_run_incoming_refuses_what_it_cannot_use_without_listening(capsys, extra, words):
    port = _free_port()
    status = main(["run", "--incoming", f"tcp:127.0.0.1:{port}", *extra])
    _, err = capsys.readouterr()
    assert status == 1 and words in err and err.startswith("pyvirt: ")
    if "not used" in words:
        assert "takes the machine from the migration source" in err
    with socket.socket() as s:  # it returned without listening
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("uri", ["127.0.0.1:5000", "tcp:127.0.0.1", "tcp:127.0.0.1:0", "unix:/x"])
def test_run_incoming_refuses_a_bad_address(capsys, uri):
    assert main(["run", "--incoming", uri]) == 1
    _, err = capsys.readouterr()
    assert f"migration address {uri!r}" in err
