"""A VMM waiting for PUT /restore: its control before and after, without KVM."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvirt.vmm.commands import RequestError, parse_request
from pyvirt.vmm.control import ControlError
from pyvirt.vmm.restore_request import RestoreOnRequest


def test_waiting_status_and_refusals() -> None:
    c = RestoreOnRequest(None)
    assert c.status()["state"] == "waiting"
    for call in (c.pause, c.resume, c.statistics, c.balloon_info, c.migration):
        with pytest.raises(ControlError, match="PUT /restore"):
            call()
    assert not c.ready.is_set()
    c.stop()  # nothing to run: the waiting process may end
    assert c.ready.is_set() and c.machine is None


def test_a_bad_file_is_a_400_and_the_process_keeps_waiting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"\x7fELF" + bytes(100))
    c = RestoreOnRequest(None)
    with pytest.raises(ControlError) as e:
        c.restore(str(bad))
    assert e.value.status == 400 and "ELF kernel" in e.value.message
    with pytest.raises(ControlError) as e:
        c.restore(str(tmp_path / "missing.snap"))
    assert e.value.status == 400
    assert c.machine is None and not c.ready.is_set()


def test_restore_request_parsing() -> None:
    cmd = parse_request("PUT", "/restore", b'{"path": "/x/vm.snap"}')
    assert cmd.file == "/x/vm.snap"  # type: ignore[attr-defined]
    for body in (b"{}", b'{"path": "rel.snap"}', b'{"path": 3}', b'{"path": "/a", "x": 1}'):
        with pytest.raises(RequestError) as e:
            parse_request("PUT", "/restore", body)
        assert e.value.status == 400
