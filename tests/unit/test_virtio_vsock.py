"""virtio-vsock with its hybrid unix-socket backend, against real unix
sockets in tmp_path: connections from either side, data both ways, credit
flow control, shutdown and reset, restore, and a fuzz of hostile rings."""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.devices.virtio import vsock as vs
from pyvirt.devices.virtio.vsock import (
    BUF_ALLOC, FIRST_HOST_PORT, HDR, HDR_SIZE, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
    OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUT_RCV, SHUT_SEND, TYPE_STREAM, VirtioVsock, VsockError, VsockState,
)
from pyvirt.memory.guest import GuestMemory
from pyvirt.testing.virtio import FakeDriverQueue, FakeInterrupt

CID = 3
GPORT = 1234




class Pkt:
    def __init__(self, raw: bytes) -> None:
        (self.src_cid, self.dst_cid, self.src_port, self.dst_port, self.len, self.type, self.op, self.flags,
         self.buf_alloc, self.fwd_cnt) = HDR.unpack(raw[:HDR_SIZE])
        self.data = raw[HDR_SIZE:]

    def __repr__(self) -> str:
        return f"Pkt(op={self.op}, {self.src_port}->{self.dst_port}, len={self.len}, flags={self.flags})"


class Rig:
    def __init__(self, path: Path, rx_buffers: int = 16, activate: bool = True) -> None:
        self.path = str(path / "v.sock")
        self.now = 10.0
        self.mem = GuestMemory.from_bytearray(16 << 20)
        self.rx = FakeDriverQueue(self.mem, 128, desc=0x0, buffers=(0x100000, 0x600000))
        self.tx = FakeDriverQueue(self.mem, 128, desc=0x10000, buffers=(0x600000, 0xF00000))
        self.ev = FakeDriverQueue(self.mem, 8, desc=0x20000, buffers=(0xF00000, 0x1000000))
        self.dev = VirtioVsock(CID, self.path, clock=lambda: self.now)
        self.irq = FakeInterrupt()
        self.servers: dict[int, socket.socket] = {}
        self.dev.driver_features = 1 << 32
        if activate:
            self.activate(rx_buffers)

    def activate(self, rx_buffers: int = 16) -> None:
        qs = [d.virtqueue(index=i, event_idx=True) for i, d in enumerate((self.rx, self.tx, self.ev))]
        self.dev.activate(self.mem, qs, self.irq)
        self.add_rx(rx_buffers)

    def add_rx(self, n: int, size: int = HDR_SIZE + 4096) -> None:
        for _ in range(n):
            self.rx.add_chain([], [size])
        self.dev.queue_notify(0)

    def listen(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(f"{self.path}_{port}")
        s.listen(4)
        s.settimeout(2)
        self.servers[port] = s
        return s

    def send(self, op: int, *, src_port: int = GPORT, dst_port: int = 52, data: bytes = b"", flags: int = 0,
             buf_alloc: int = 1 << 20, fwd_cnt: int = 0, dst_cid: int = HOST_CID, typ: int = TYPE_STREAM) -> None:
        h = HDR.pack(CID, dst_cid, src_port, dst_port, len(data), typ, op, flags, buf_alloc, fwd_cnt)
        self.tx.add_chain([h, data] if data else [h])
        self.dev.queue_notify(1)

    def recv(self) -> list[Pkt]:
        out = []
        for head, _ in self.rx.used():
            out.append(Pkt(self.rx.read_written(head)))
        return out

    def pump(self, rounds: int = 20, wait: float = 0.05) -> None:
        """What the I/O thread does: wait on host_fds, call host_ready, run timers."""
        for _ in range(rounds):
            fds = dict(self.dev.host_fds())
            ready, _, _ = select.select(list(fds), [], [], wait)
            for fd in ready:
                self.dev.host_ready(fds[fd])
            d = self.dev.next_deadline()
            if d is not None and d <= self.now:
                self.dev.on_timer()
            if not ready:
                break

    def close(self) -> None:
        self.dev.close()
        for s in self.servers.values():
            s.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def closed(s: socket.socket) -> bool:
    """The peer closed: EOF, or a reset when it closed with our data unread."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def connect_from_guest(rig: Rig, port: int = 52, buf_alloc: int = 1 << 20) -> socket.socket:
    server = rig.listen(port)
    rig.send(OP_REQUEST, dst_port=port, buf_alloc=buf_alloc)
    [p] = rig.recv()
    assert (p.op, p.src_cid, p.dst_cid, p.src_port, p.dst_port) == (OP_RESPONSE, HOST_CID, CID, port, GPORT)
    assert p.buf_alloc == BUF_ALLOC and p.type == TYPE_STREAM
    conn, _ = server.accept()
    conn.settimeout(2)
    return conn


# --- guest-initiated --------------------------------------------------------
def test_guest_connects_and_data_flows_both_ways(rig: Rig) -> None:
    assert rig.dev.config_bytes() == struct.pack("<Q", CID)
    c = connect_from_guest(rig)
    rig.send(OP_RW, data=b"hello")
    assert c.recv(100) == b"hello"
    c.sendall(b"world")
    rig.pump()
    [p] = rig.recv()
    assert (p.op, p.len, p.data, p.fwd_cnt) == (OP_RW, 5, b"world", 5)
    assert rig.irq.used_calls.count(0) >= 2
    assert rig.dev.statistics()["connections"] == 1
    c.close()


def test_refused_connect_gets_rst(rig: Rig) -> None:
    rig.send(OP_REQUEST, dst_port=53)
    [p] = rig.recv()
    assert (p.op, p.src_port, p.dst_port) == (OP_RST, 53, GPORT)
    assert rig.dev.statistics()["refused"] == 1


def test_packets_for_unknown_connections_get_rst_but_rst_does_not(rig: Rig) -> None:
    rig.send(OP_RW, data=b"x")
    rig.send(OP_RST)
    rig.send(OP_REQUEST, dst_cid=7)  # not the host: dropped silently
    assert [p.op for p in rig.recv()] == [OP_RST]


def test_seqpacket_is_refused(rig: Rig) -> None:
    rig.listen(52)
    rig.send(OP_REQUEST, typ=2)
    assert [p.op for p in rig.recv()] == [OP_RST]


# --- host-initiated ---------------------------------------------------------
def test_host_connects_to_guest_port(rig: Rig) -> None:
    cl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cl.settimeout(2)
    cl.connect(rig.path)
    cl.sendall(b"CONNECT 1024\nearly data")
    rig.pump()
    [p] = rig.recv()
    assert (p.op, p.src_port, p.dst_port, p.dst_cid) == (OP_REQUEST, FIRST_HOST_PORT, 1024, CID)
    rig.send(OP_RESPONSE, src_port=1024, dst_port=FIRST_HOST_PORT, buf_alloc=4096)
    assert cl.recv(100) == f"OK {FIRST_HOST_PORT}\n".encode()
    rig.pump()
    [p] = rig.recv()
    assert (p.op, p.data) == (OP_RW, b"early data")
    rig.send(OP_RW, src_port=1024, dst_port=FIRST_HOST_PORT, data=b"pong")
    assert cl.recv(100) == b"pong"
    cl.close()


def test_host_connect_refused_by_guest(rig: Rig) -> None:
    cl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cl.settimeout(2)
    cl.connect(rig.path)
    cl.sendall(b"CONNECT 9\n")
    rig.pump()
    [p] = rig.recv()
    rig.send(OP_RST, src_port=9, dst_port=p.src_port)
    assert cl.recv(100) == b""  # closed without OK
    cl.close()


@pytest.mark.parametrize("line", [b"CONNECT\n", b"HELLO 5\n", b"CONNECT -1\n", b"CONNECT 99999999999\n",
                                  b"X" * 40])
def test_bad_connect_line_closes(rig: Rig, line: bytes) -> None:
    cl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cl.settimeout(2)
    cl.connect(rig.path)
    cl.sendall(line)
    rig.pump()
    assert closed(cl)
    assert rig.recv() == [] and rig.dev.statistics()["connections"] == 0
    cl.close()


def test_silent_host_and_silent_guest_time_out(rig: Rig) -> None:
    quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    quiet.settimeout(2)
    quiet.connect(rig.path)
    asking = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    asking.settimeout(2)
    asking.connect(rig.path)
    asking.sendall(b"CONNECT 7\n")
    rig.pump()
    assert [p.op for p in rig.recv()] == [OP_REQUEST]
    rig.now += 60
    rig.pump()
    assert quiet.recv(10) == b"" and asking.recv(10) == b""
    assert [p.op for p in rig.recv()] == [OP_RST]
    quiet.close()
    asking.close()


# --- flow control -----------------------------------------------------------
def test_guest_credit_limits_what_host_sends(rig: Rig) -> None:
    c = connect_from_guest(rig, buf_alloc=100)
    c.sendall(bytes(range(250)))
    rig.pump()
    pkts = rig.recv()
    data = b"".join(p.data for p in pkts if p.op == OP_RW)
    assert data == bytes(range(100))
    assert pkts[-1].op == OP_CREDIT_REQUEST
    assert all(fd != c.fileno() for fd, _ in rig.dev.host_fds())  # not watched without credit
    rig.send(OP_CREDIT_UPDATE, buf_alloc=100, fwd_cnt=100)
    rig.pump()
    assert b"".join(p.data for p in rig.recv() if p.op == OP_RW) == bytes(range(100, 200))
    c.close()


def test_device_announces_credit_as_it_forwards(rig: Rig) -> None:
    c = connect_from_guest(rig)
    chunk = b"a" * 30000
    for _ in range(3):
        rig.send(OP_RW, data=chunk)
    got = b""
    while len(got) < 90000:
        got += c.recv(1 << 16)
    pkts = rig.recv()
    assert [p.op for p in pkts] == [OP_CREDIT_UPDATE]
    assert pkts[0].fwd_cnt == 90000 and pkts[0].buf_alloc == BUF_ALLOC
    c.close()


def test_slow_host_reader_buffers_then_flushes_in_order(rig: Rig) -> None:
    c = connect_from_guest(rig)
    sent = b""
    for i in range(8):  # ~512 KiB: more than the unix socket holds
        chunk = bytes([i]) * 60000
        rig.send(OP_RW, data=chunk)
        sent += chunk
        if rig.dev._conns[(52, GPORT)].pending:
            break
    assert rig.dev.next_deadline() is not None
    got = b""
    while len(got) < len(sent):
        got += c.recv(1 << 20)
        rig.now += 1
        rig.pump()
    assert got == sent
    assert rig.dev.next_deadline() is None
    c.close()


def test_guest_exceeding_credit_is_reset(rig: Rig) -> None:
    c = connect_from_guest(rig)
    for _ in range(12):  # 720 KiB against a 256 KiB window while the host reads nothing
        rig.send(OP_RW, data=b"z" * 60000)
    assert OP_RST in [p.op for p in rig.recv()]
    assert rig.dev.statistics()["connections"] == 0
    c.close()


# --- shutdown, reset, no buffers ------------------------------------------------
def test_host_close_then_guest_close(rig: Rig) -> None:
    c = connect_from_guest(rig)
    c.sendall(b"bye")
    c.close()
    rig.pump()
    pkts = rig.recv()
    assert [(p.op, p.flags) for p in pkts] == [(OP_RW, 0), (OP_SHUTDOWN, SHUT_SEND)]
    rig.send(OP_SHUTDOWN, flags=SHUT_RCV | SHUT_SEND)
    assert [p.op for p in rig.recv()] == [OP_RST]
    assert rig.dev.statistics()["connections"] == 0


def test_guest_close_then_host_sees_eof(rig: Rig) -> None:
    c = connect_from_guest(rig)
    rig.send(OP_RW, data=b"last")
    rig.send(OP_SHUTDOWN, flags=SHUT_SEND)
    assert c.recv(100) == b"last" and c.recv(100) == b""  # half-closed: EOF for the host
    c.sendall(b"reply")
    rig.pump()
    assert [p.data for p in rig.recv()] == [b"reply"]
    rig.send(OP_RST)
    assert rig.dev.statistics()["connections"] == 0
    c.close()


def test_no_rx_buffers_nothing_lost(tmp_path: Path) -> None:
    r = Rig(tmp_path, rx_buffers=1)
    try:
        c = connect_from_guest(r)  # uses the only buffer
        c.sendall(b"waiting")
        r.pump()
        assert r.recv() == []
        assert all(fd != c.fileno() for fd, _ in r.dev.host_fds())
        r.add_rx(2)
        r.pump()
        assert [p.data for p in r.recv()] == [b"waiting"]
        c.close()
    finally:
        r.close()


def test_io_thread_watches_a_connection_that_reuses_a_closed_fd(rig: Rig) -> None:
    """A connection closed and another opened in one notification: the new
    socket must not inherit the old one's (dead) epoll registration."""
    from pyvirt.vmm.iothread import IoThread

    io = IoThread()
    try:
        io.add_device(rig.dev)
        old = connect_from_guest(rig)
        io.after_notify(rig.dev)
        h = HDR.pack(CID, HOST_CID, GPORT, 52, 0, TYPE_STREAM, OP_RST, 0, 1 << 20, 0)
        rig.tx.add_chain([h])
        h = HDR.pack(CID, HOST_CID, GPORT + 1, 52, 0, TYPE_STREAM, OP_REQUEST, 0, 1 << 20, 0)
        rig.tx.add_chain([h])
        rig.dev.queue_notify(1)
        io.after_notify(rig.dev)
        assert [p.op for p in rig.recv()] == [OP_RESPONSE]
        new, _ = rig.servers[52].accept()
        new.sendall(b"to the new one")
        for _ in range(5):
            for key, _ in io._sel.select(0.2):
                if key.data is not None:
                    key.data()
        assert [(p.dst_port, p.data) for p in rig.recv()] == [(GPORT + 1, b"to the new one")]
        old.close()
        new.close()
    finally:
        io.close()


# --- life cycle -------------------------------------------------------------
def test_restore_resets_connections_and_sends_event(rig: Rig) -> None:
    c = connect_from_guest(rig)
    ev = rig.ev.add_chain([], [4])
    s = rig.dev.state()
    assert s == VsockState(guest_cid=CID)
    rig.dev.restore(VsockState(guest_cid=9))
    assert c.recv(10) == b""
    assert rig.ev.used() == [(ev, 4)] and rig.ev.read_written(ev) == b"\0\0\0\0"
    assert rig.dev.config_bytes() == struct.pack("<Q", 9)
    for bad in (VsockState(guest_cid=2), VsockState(guest_cid=-1), VsockState(version=9)):
        with pytest.raises(ValueError):
            rig.dev.restore(bad)
    c.close()


def test_restore_before_activation_sends_event_later(tmp_path: Path) -> None:
    r = Rig(tmp_path, activate=False)
    try:
        r.dev.restore(VsockState(guest_cid=CID))
        r.activate()
        assert r.ev.used() == []  # no event buffer yet
        ev = r.ev.add_chain([], [4])
        r.dev.queue_notify(2)
        assert r.ev.used() == [(ev, 4)]
    finally:
        r.close()


def test_socket_path_in_use(rig: Rig) -> None:
    with pytest.raises(VsockError, match="v.sock"):
        VirtioVsock(CID, rig.path)


def test_bad_cid() -> None:
    with pytest.raises(ValueError):
        VirtioVsock(2, "/nonexistent/x")


def test_close_removes_socket_and_reset_drops_connections(tmp_path: Path) -> None:
    r = Rig(tmp_path)
    c = connect_from_guest(r)
    r.dev.reset()
    assert c.recv(10) == b"" and r.dev.host_fds() == []
    r.close()
    assert not Path(r.path).exists()
    c.close()


# --- fuzz -------------------------------------------------------------------
_hdr = st.builds(lambda *a: HDR.pack(*a), st.sampled_from([CID, 0, 5]), st.sampled_from([HOST_CID, CID, 0]),
                 st.sampled_from([GPORT, 1, 0xFFFFFFFF]), st.sampled_from([52, 53, FIRST_HOST_PORT]),
                 st.integers(0, 1 << 32 - 1), st.sampled_from([1, 2, 0]), st.integers(0, 9), st.integers(0, 7),
                 st.integers(0, 1 << 32 - 1), st.integers(0, 1 << 32 - 1))
_desc = st.tuples(st.integers(0, (16 << 20) + 4096), st.integers(0, 70000), st.integers(0, 7), st.integers(0, 130))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packets=st.lists(st.tuples(_hdr, st.binary(max_size=200)), max_size=12),
       raw_tx=st.lists(_desc, max_size=6), raw_rx=st.lists(_desc, max_size=6),
       heads=st.lists(st.integers(0, 130), max_size=3), host_data=st.binary(max_size=3000))
def test_fuzz_hostile_guest(tmp_path_factory: pytest.TempPathFactory, packets: list[tuple[bytes, bytes]],
                            raw_tx: list[tuple[int, int, int, int]], raw_rx: list[tuple[int, int, int, int]],
                            heads: list[int], host_data: bytes) -> None:
    r = Rig(tmp_path_factory.mktemp("fz"), rx_buffers=4)
    accepted: list[socket.socket] = []
    try:
        server = r.listen(52)
        opening = HDR.pack(CID, HOST_CID, GPORT, 52, 0, TYPE_STREAM, OP_REQUEST, 0, 300, 0)
        for h, data in [(opening, b"")] + packets:
            r.tx.add_chain([h + data])
            r.dev.queue_notify(1)
        server.settimeout(0)
        while True:
            try:
                c, _ = server.accept()
            except OSError:
                break
            accepted.append(c)
            try:
                c.send(host_data)
            except OSError:
                pass  # the device may have reset it already
        for k, d in enumerate(raw_rx):
            r.rx.write_desc(127 - k, *d)
        for k, d in enumerate(raw_tx):
            r.tx.write_desc(127 - k, *d)
        for h in heads:
            r.rx.publish(h)
            r.tx.publish(h)
        r.dev.queue_notify(1)
        r.pump(wait=0)
        r.now += 100
        r.dev.on_timer()
        r.dev.queue_notify(0)
    finally:
        r.close()
        for c in accepted:
            c.close()


def test_module_constants() -> None:
    assert HDR_SIZE == 44 and vs.HOST_CID == 2
