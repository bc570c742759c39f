"""The control API server (vmm/api.py) against a fake VmControl, over a real unix
socket: every endpoint, every error class, malformed and hostile requests,
concurrent clients, and the socket file's life cycle. No /dev/kvm needed."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from pyvirt.cli.vm import UnixHTTPConnection
from pyvirt.vmm.api import MAX_BODY, ApiError, ApiServer
from pyvirt.vmm.control import ControlError


class FakeVm:
    """A VmControl that records calls; `gate` (an Event) holds pause() open."""

    def __init__(self) -> None:
        self.state = "running"
        self.target = 0
        self.has_balloon = True
        self.calls: list[tuple[str, object]] = []
        self.fail: Exception | None = None
        self.gate: threading.Event | None = None
        self.pausing = threading.Event()

    def _call(self, name: str, arg: object = None) -> None:
        self.calls.append((name, arg))
        if self.fail is not None:
            raise self.fail

    def status(self) -> dict[str, object]:
        self._call("status")
        return {"state": self.state, "vcpus": 2, "memory": 128 << 20, "uptime": 1.5, "pid": 42,
                "devices": [{"id": "balloon0", "type": "virtio-balloon", "transport": "pci"}]}

    def statistics(self) -> dict[str, object]:
        self._call("statistics")
        return {"devices": {"balloon0": {"inflated_pages": 3}}, "vcpus": [{"index": 0, "state": "running"}]}

    def pause(self) -> None:
        self._call("pause")
        self.pausing.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.state == "paused":
            raise ControlError("the VM is already paused")
        self.state = "paused"

    def resume(self) -> None:
        self._call("resume")
        if self.state != "paused":
            raise ControlError("the VM is not paused")
        self.state = "running"

    def balloon_set(self, target_bytes: int) -> None:
        self._call("balloon_set", target_bytes)
        if not self.has_balloon:
            raise ControlError("the VM has no balloon device")
        if target_bytes > 128 << 20:
            raise ControlError("too big", status=400)
        self.target = target_bytes

    def balloon_info(self) -> dict[str, object]:
        self._call("balloon_info")
        if not self.has_balloon:
            raise ControlError("the VM has no balloon device")
        return {"target": self.target, "actual": 0, "memory": 128 << 20, "statistics": {}}

    def stop(self) -> None:
        self._call("stop")
        self.state = "stopped"

    def save(self, path: str, compression: str) -> dict[str, object]:
        self._call("save", (path, compression))
        self.state = "stopped"
        return {"state": "stopped", "path": path, "size": 8 << 20, "seconds": 0.25, "memory_pages": 2048,
                "memory_runs": 3, "notes": []}

    def snapshot(self, path: str, compression: str, disks: str = "overlay") -> dict[str, object]:
        self._call("snapshot", (path, compression))
        return {"state": self.state, "path": path, "size": 8 << 20, "seconds": 0.25, "memory_pages": 2048,
                "memory_runs": 3, "notes": ["vCPU 0: MSRs that do not read back, not saved: 0x1"]}


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "api.sock")


@pytest.fixture
def vm() -> FakeVm:
    return FakeVm()


@pytest.fixture
def server(sock_path: str, vm: FakeVm):
    srv = ApiServer(sock_path, vm, header_timeout=2.0, max_clients=8).start()
    yield srv
    srv.close(grace=0.5)


def call(path: str, method: str, target: str, body: object = None, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict, dict[str, str]]:
    conn = UnixHTTPConnection(path, timeout=10)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, target, body=data, headers=headers or {})
        r = conn.getresponse()
        payload = r.read()
        return r.status, json.loads(payload) if payload else {}, dict(r.getheaders())
    finally:
        conn.close()


def raw_exchange(path: str, request: bytes, timeout: float = 10) -> bytes:
    """Send bytes, read until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(request)
        except BrokenPipeError:  # it answered and hung up before reading everything
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:  # closed with our unread bytes: what came before is the reply
            pass
        return out


def status_and_body(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# --- every endpoint ----------------------------------------------------------------------

def test_get_status(server, sock_path, vm):
    status, body, headers = call(sock_path, "GET", "/status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body["state"] == "running" and body["vcpus"] == 2 and body["devices"][0]["id"] == "balloon0"
    assert vm.calls == [("status", None)]


def test_get_stats(server, sock_path):
    status, body, _ = call(sock_path, "GET", "/stats")
    assert status == 200 and body["devices"]["balloon0"]["inflated_pages"] == 3


def test_pause_resume_stop(server, sock_path, vm):
    assert call(sock_path, "PUT", "/pause")[:2] == (200, {"state": "paused"})
    assert call(sock_path, "PUT", "/resume", {})[:2] == (200, {"state": "running"})
    assert call(sock_path, "PUT", "/stop")[:2] == (200, {"state": "stopped"})
    assert [c for c, _ in vm.calls] == ["pause", "resume", "stop"]


@pytest.mark.parametrize("body, target", [({"target": 64 << 20}, 64 << 20), ({"target_mib": 32}, 32 << 20),
                                          ({"target": 0}, 0)])
def test_set_balloon(server, sock_path, vm, body, target):
    status, reply, _ = call(sock_path, "PUT", "/balloon", body)
    assert status == 200 and reply["target"] == target
    assert ("balloon_set", target) in vm.calls


def test_get_balloon(server, sock_path):
    status, reply, _ = call(sock_path, "GET", "/balloon")
    assert status == 200 and set(reply) == {"target", "actual", "memory", "statistics"}


def test_keep_alive_serves_several_requests_on_one_connection(server, sock_path):
    conn = UnixHTTPConnection(sock_path, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/status")
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["pid"] == 42
    finally:
        conn.close()


# --- errors --------------------------------------------------------------------------------

def test_unknown_path_is_404(server, sock_path, vm):
    status, body, _ = call(sock_path, "GET", "/nope")
    assert status == 404 and "/nope" in body["error"] and "/status" in body["error"]
    assert vm.calls == []


def test_wrong_method_is_405_with_allow(server, sock_path, vm):
    status, body, headers = call(sock_path, "POST", "/pause")
    assert status == 405 and headers["Allow"] == "PUT" and "PUT" in body["error"]
    status, _, headers = call(sock_path, "DELETE", "/balloon")
    assert status == 405 and headers["Allow"] == "GET, PUT"
    assert vm.calls == []


def test_unknown_http_method_is_json(server, sock_path):
    status, body = status_and_body(raw_exchange(sock_path, b"BREW /status HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 501 and "error" in body


def test_query_string_is_400(server, sock_path):
    status, body, _ = call(sock_path, "GET", "/status?verbose=1")
    assert status == 400 and "query" in body["error"]


def test_state_conflict_is_409(server, sock_path, vm):
    assert call(sock_path, "PUT", "/resume")[:2] == (409, {"error": "the VM is not paused"})
    vm.has_balloon = False
    status, body, _ = call(sock_path, "PUT", "/balloon", {"target": 4096})
    assert status == 409 and "balloon" in body["error"]
    assert call(sock_path, "GET", "/balloon")[0] == 409


def test_control_error_carries_its_status(server, sock_path):
    status, body, _ = call(sock_path, "PUT", "/balloon", {"target": 1 << 30})
    assert (status, body) == (400, {"error": "too big"})


def test_internal_error_is_500_without_traceback(server, sock_path, vm):
    vm.fail = KeyError("vcpu7")
    status, body, _ = call(sock_path, "GET", "/stats")
    assert status == 500 and set(body) == {"error"}
    assert "KeyError" in body["error"] and "Traceback" not in body["error"] and "File " not in body["error"]
    vm.fail = None
    assert call(sock_path, "GET", "/status")[0] == 200  # and the server serves on


@pytest.mark.parametrize("raw, words", [
    (b"{", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'"target"', "JSON object"),
    (b'{"target": NaN}', "NaN"),
    (b'{"target": 4096, "target": 8192}', "twice"),
    (b"\xff\xfe{}", "UTF-8"),
    (b"[" * 60000, "JSON"),
    (b'{"target": "64M"}', "integer"),
    (b'{"target": true}', "integer"),
    (b'{"target": 4096.0}', "integer"),
    (b'{"target": null}', "integer"),
    (b'{"target": -4096}', "negative"),
    (b'{"target": 4097}', "multiple"),
    (b'{"size": 4096}', "unknown field"),
    (b'{"target": 4096, "target_mib": 1}', "exactly one"),
    (b"{}", "exactly one"),
])
def test_malformed_balloon_bodies_are_400(server, sock_path, vm, raw, words):
    status, body, _ = call(sock_path, "PUT", "/balloon", raw=raw, headers={"Content-Type": "application/json"})
    assert status == 400 and words in body["error"], body
    assert vm.calls == []


@pytest.mark.parametrize("raw", [b'{"force": true}', b"[]", b"null"])
def test_bodiless_commands_reject_bodies(server, sock_path, vm, raw):
    status, body, _ = call(sock_path, "PUT", "/pause", raw=raw)
    assert status == 400 and "error" in body
    assert vm.calls == []


def test_body_over_the_limit_is_413(server, sock_path, vm):
    raw = b'{"target": 4096' + b" " * MAX_BODY + b"}"
    status, body, _ = call(sock_path, "PUT", "/balloon", raw=raw)
    assert status == 413 and str(MAX_BODY) in body["error"]
    assert vm.calls == []


def test_huge_content_length_is_refused_without_reading(server, sock_path):
    # The client never sends the 10 GB: the reply must come anyway.
    status, body = status_and_body(raw_exchange(
        sock_path, b"PUT /balloon HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{"))
    assert status == 413


@pytest.mark.parametrize("header, code", [(b"Content-Length: -1", 400), (b"Content-Length: 12abc", 400),
                                          (b"Transfer-Encoding: chunked", 411)])
def test_bad_body_framing(server, sock_path, header, code):
    status, body = status_and_body(raw_exchange(sock_path, b"PUT /balloon HTTP/1.1\r\nHost: x\r\n" + header +
                                                b"\r\n\r\n0\r\n\r\n"))
    assert status == code and "error" in body


def test_conflicting_content_lengths_are_400(server, sock_path):
    status, _ = status_and_body(raw_exchange(
        sock_path, b"PUT /pause HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"))
    assert status == 400


@pytest.mark.parametrize("request_bytes", [b"garbage\r\n\r\n", b"GET\r\n\r\n", b"GET /status HTTP/9.9\r\n\r\n",
                                           b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"])
def test_garbage_requests_get_json_errors(server, sock_path, request_bytes):
    status, body = status_and_body(raw_exchange(sock_path, request_bytes))
    assert 400 <= status < 600 and "error" in body


def test_truncated_body_gets_no_command(server, sock_path, vm):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(b'PUT /balloon HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"target": 4096}')
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400") and vm.calls == []


# --- clients at once ---------------------------------------------------------------------------

def test_silent_client_does_not_block_others_and_is_dropped(sock_path, vm):
    with ApiServer(sock_path, vm, header_timeout=0.5) as srv:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.settimeout(10)
            idle.connect(sock_path)
            idle.sendall(b"GET /sta")  # and nothing more
            assert call(srv.path, "GET", "/status")[0] == 200
            assert idle.recv(100) == b""  # the server hung up after its header timeout


def test_slow_command_does_not_block_others(server, sock_path, vm):
    vm.gate = threading.Event()
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(call(sock_path, "PUT", "/pause")[0]))
    t.start()
    try:
        assert vm.pausing.wait(10)
        assert call(sock_path, "GET", "/status")[1]["state"] == "running"  # while pause() still runs
    finally:
        vm.gate.set()
        t.join(10)
    assert results == [200]


def test_concurrent_clients(server, sock_path):
    results: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(5):
            status = call(sock_path, "GET", "/status")[0]
            with lock:
                results.append(status)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 40


def test_too_many_clients_get_503(sock_path, vm):
    with ApiServer(sock_path, vm, header_timeout=5, max_clients=2):
        held = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        try:
            for s in held:
                s.connect(sock_path)
                s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: the slot stays taken
                s.settimeout(10)
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
            status, body = status_and_body(raw_exchange(sock_path, b"GET /status HTTP/1.1\r\n\r\n"))
            assert status == 503 and "too many" in body["error"]
        finally:
            for s in held:
                s.close()


# --- the socket file -------------------------------------------------------------------------------

def test_socket_is_private_and_removed_at_close(sock_path, vm):
    srv = ApiServer(sock_path, vm).start()
    st = os.lstat(sock_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    srv.close()
    assert not os.path.exists(sock_path)
    srv.close()  # twice is harmless


def test_live_socket_is_refused(sock_path, vm):
    with ApiServer(sock_path, vm):
        with pytest.raises(ApiError, match="running VM"):
            ApiServer(sock_path, FakeVm())
        assert call(sock_path, "GET", "/status")[0] == 200  # the first one is untouched


def test_stale_socket_is_replaced(sock_path, vm):
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.close()  # the file stays, nobody listens
    with ApiServer(sock_path, vm):
        assert call(sock_path, "GET", "/status")[0] == 200


def test_other_files_are_not_replaced(sock_path, vm):
    Path(sock_path).write_text("precious")
    with pytest.raises(ApiError, match="not a socket"):
        ApiServer(sock_path, vm)
    assert Path(sock_path).read_text() == "precious"


@pytest.mark.parametrize("name", ["missing-dir/api.sock", "x" * 120])
def test_unusable_paths_are_api_errors(tmp_path, vm, name):
    with pytest.raises(ApiError, match="cannot create"):
        ApiServer(str(tmp_path / name), vm)


def test_close_does_not_remove_a_socket_that_replaced_ours(sock_path, vm):
    srv = ApiServer(sock_path, vm).start()
    os.unlink(sock_path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(sock_path)
    try:
        srv.close()
        assert os.path.exists(sock_path)
    finally:
        other.close()


def test_close_cuts_off_a_stuck_client(sock_path, vm):
    srv = ApiServer(sock_path, vm, header_timeout=60).start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
        stuck.settimeout(10)
        stuck.connect(sock_path)
        stuck.sendall(b"GET /status HTTP/1.1\r\n")  # headers never end
        srv.close(grace=0.1)
        reply = stuck.recv(1000)
        # Cut off, or told the API is closing; never served.
        assert reply == b"" or reply.startswith(b"HTTP/1.1 503"), reply
        assert vm.calls == []


def test_close_ends_idle_keep_alive_connections_at_once(sock_path, vm):
    srv = ApiServer(sock_path, vm, header_timeout=60).start()
    conn = UnixHTTPConnection(sock_path, timeout=10)
    try:
        conn.request("GET", "/status")
        assert conn.getresponse().read()  # the connection stays open, its thread waits for more
        srv.close(grace=60)
        # Its thread ended within the grace period (no forced cut-off needed).
        assert not srv._server.active
    finally:
        conn.close()


def test_reply_of_a_command_in_flight_survives_close(sock_path, vm):
    vm.gate = threading.Event()
    srv = ApiServer(sock_path, vm).start()
    results: list[tuple[int, dict, dict]] = []
    t = threading.Thread(target=lambda: results.append(call(sock_path, "PUT", "/pause")))
    t.start()
    assert vm.pausing.wait(10)
    threading.Timer(0.1, vm.gate.set).start()
    srv.close(grace=30)
    t.join(10)
    assert results[0][:2] == (200, {"state": "paused"})
