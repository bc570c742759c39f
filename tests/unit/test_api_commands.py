"""Control API requests → command objects (vmm/commands.py), and the OpenAPI
spec (docs/api.yaml) agreeing with the routes the server has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirt.vmm.commands import (ROUTES, GetBalloon, GetStatistics, GetStatus, Pause, RequestError, Resume, Save,
                                 SetBalloon, Snapshot, Stop, find_command, parse_body, parse_request)

SPEC = Path(__file__).resolve().parents[2] / "docs" / "api.yaml"


@pytest.mark.parametrize("method, path, body, command", [
    ("GET", "/status", b"", GetStatus()),
    ("GET", "/stats", b"", GetStatistics()),
    ("PUT", "/pause", b"", Pause()),
    ("PUT", "/pause", b"{}", Pause()),
    ("PUT", "/resume", b" {} \n", Resume()),
    ("PUT", "/stop", b"", Stop()),
    ("GET", "/balloon", b"", GetBalloon()),
    ("PUT", "/balloon", b'{"target": 67108864}', SetBalloon(target=64 << 20)),
    ("PUT", "/balloon", b'{"target_mib": 64}', SetBalloon(target=64 << 20)),
    ("PUT", "/balloon", b'{"target": 0}', SetBalloon(target=0)),
    ("PUT", "/save", b'{"path": "/tmp/vm.snap"}', Save(file="/tmp/vm.snap")),
    ("PUT", "/snapshot", b'{"path": "/x y", "compression": "zstd"}', Snapshot(file="/x y", compression="zstd")),
    ("PUT", "/snapshot", b'{"path": "/x", "compression": "none"}', Snapshot(file="/x")),
])
def test_requests_become_commands(method, path, body, command):
    assert parse_request(method, path, body) == command


@pytest.mark.parametrize("method, path, status, allow", [
    ("GET", "/", 404, ()), ("GET", "/status/", 404, ()), ("GET", "/STATUS", 404, ()), ("GET", "status", 404, ()),
    ("PUT", "/status", 405, ("GET",)), ("GET", "/pause", 405, ("PUT",)), ("POST", "/balloon", 405, ("GET", "PUT")),
    ("GET", "/status?x=1", 400, ()),
])
def test_routing_errors(method, path, status, allow):
    with pytest.raises(RequestError) as e:
        find_command(method, path)
    assert (e.value.status, e.value.allow) == (status, allow)


@pytest.mark.parametrize("body, words", [
    ({"target": "1G"}, "must be an integer"),
    ({"target": True}, "must be an integer"),
    ({"target": 1.0}, "must be an integer"),
    ({"target": [4096]}, "must be an integer"),
    ({"target": -1}, "negative"),
    ({"target_mib": -1}, "negative"),
    ({"target": 100}, "multiple of the 4 KiB"),
    ({"target": 4096, "x": 1}, "unknown field 'x'"),
    ({"target": 4096, "target_mib": 0}, "exactly one"),
    ({}, "exactly one"),
])
def test_set_balloon_validation(body, words):
    with pytest.raises(RequestError, match=words) as e:
        SetBalloon.from_body(body)
    assert e.value.status == 400


def test_bodiless_commands_take_no_fields():
    with pytest.raises(RequestError, match="unknown field 'now'.*fields: none"):
        Stop.from_body({"now": True})


@pytest.mark.parametrize("raw, words", [
    (b"{", "not valid JSON"), (b"1", "JSON object"), (b"null", "JSON object"), (b'{"a": Infinity}', "Infinity"),
    (b'{"a": 1, "a": 2}', "given twice"), (b"\x80", "UTF-8"), (b"[" * 100000, "JSON"),
])
def test_malformed_bodies(raw, words):
    with pytest.raises(RequestError, match=words):
        parse_body(raw)


def test_huge_integers_stay_exact():
    # No float on the way: a target beyond memory is the VM's to refuse, with the right number.
    assert SetBalloon.from_body({"target_mib": 10**30}) == SetBalloon(target=10**30 << 20)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["GET", "PUT", "POST", "DELETE"]), st.sampled_from([*ROUTES, "/x", "/status?"]),
       st.binary(max_size=64) | st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                                            lambda c: st.lists(c, max_size=3) | st.dictionaries(
                                                st.sampled_from(["target", "target_mib", "x"]), c, max_size=3),
                                            max_leaves=6).map(lambda v: repr(v).encode()))
def test_any_request_is_a_command_or_a_request_error(method, path, body):
    try:
        command = parse_request(method, path, body)
    except RequestError as e:
        assert e.status in (400, 404, 405) and e.message
    else:
        assert (command.method, command.path) == (method, path.partition("?")[0])


def _spec_operations() -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in docs/api.yaml (its `paths:` block
    is plain two-space YAML; no parser needed)."""
    ops: set[tuple[str, str]] = set()
    path = None
    in_paths = False
    for line in SPEC.read_text().splitlines():
        if re.match(r"^\S", line):
            in_paths = line.startswith("paths:")
            continue
        if not in_paths:
            continue
        if m := re.match(r"^  (/\S*):\s*$", line):
            path = m.group(1)
        elif (m := re.match(r"^    (get|put|post|delete|patch):\s*$", line)) and path:
            ops.add((m.group(1).upper(), path))
    return ops


def test_spec_and_routes_agree():
    served = {(method, path) for path, methods in ROUTES.items() for method in methods}
    assert _spec_operations() == served


def test_spec_names_every_operation_after_its_control_method():
    ids = set(re.findall(r"operationId: (\w+)", SPEC.read_text()))
    assert ids == {"status", "statistics", "pause", "resume", "stop", "balloon_info", "balloon_set", "save", "snapshot",
                   "migrate", "migration", "migrate_cancel", "restore"}


@pytest.mark.parametrize("body, message", [
    (b"", "is required"), (b'{"path": ""}', "is required"), (b'{"path": "vm.snap"}', "must be absolute"),
    (b'{"path": 3}', "must be a string"), (b'{"path": "/a", "compression": "gzip"}', "not available"),
    (b'{"path": "/a", "where": 1}', "unknown field"), (b'{"path": "/a\\u0000b"}', "NUL"),
])
def test_save_requests_are_checked(body, message):
    for path in ("/save", "/snapshot"):
        with pytest.raises(RequestError) as e:
            parse_request("PUT", path, body)
        assert e.value.status == 400 and message in e.value.message
