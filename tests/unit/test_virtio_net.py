"""virtio-net against a socketpair standing in for the TAP: frames both ways
(header passed through), merged receive buffers, running out of receive
buffers, rate limits, malformed chains, state, and a fuzz of hostile rings."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.devices.virtio.net import (
    F_GUEST_CSUM, F_GUEST_TSO4, F_MRG_RXBUF, F_STATUS, HDR_SIZE, DatagramBackend, NetState, VirtioNet, parse_mac,
)
from pyvirt.devices.virtio.queue import VIRTQ_DESC_F_NEXT
from pyvirt.memory.guest import GuestMemory
from pyvirt.testing.virtio import FakeDriverQueue, FakeInterrupt

MAC = bytes.fromhex("525400123456")




class Limiter:
    def __init__(self) -> None:
        self.allow = True
        self.asked: list[int] = []

    def consume(self, nbytes: int) -> tuple[bool, float]:
        self.asked.append(nbytes)
        return (True, 0.0) if self.allow else (False, 0.5)


class Rig:
    def __init__(self, features: int = F_MRG_RXBUF, qsize: int = 64, event_idx: bool = False,
                 **kw: object) -> None:
        self.mem = GuestMemory.from_bytearray(8 << 20)
        self.rx = FakeDriverQueue(self.mem, qsize, desc=0x0, buffers=(0x100000, 0x400000))
        self.tx = FakeDriverQueue(self.mem, qsize, desc=0x10000, buffers=(0x400000, 0x800000))
        self.host, guest_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.host.settimeout(2)
        self.now = 100.0
        self.dev = VirtioNet(DatagramBackend(guest_side), mac=MAC, clock=lambda: self.now,
                             **kw)  # type: ignore[arg-type]
        self.irq = FakeInterrupt()
        self.dev.driver_features = features | (1 << 32)
        queues = [d.virtqueue(index=i, indirect=True, event_idx=event_idx) for i, d in enumerate((self.rx, self.tx))]
        self.dev.activate(self.mem, queues, self.irq)

    def close(self) -> None:
        self.dev.close()
        self.host.close()

    def pump_rx(self) -> None:
        """What the I/O thread does while the backend is readable."""
        for fd, token in self.dev.host_fds():
            self.dev.host_ready(token)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def hdr(num_buffers: int = 0, flags: int = 0) -> bytes:
    return struct.pack("<BBHHHHH", flags, 0, 0, 0, 0, 0, num_buffers)


def frame(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i) & 0xFF for i in range(n))


# --- transmit ---------------------------------------------------------------
def test_tx_frame_reaches_backend_with_header(rig: Rig) -> None:
    f = frame(60)
    head = rig.tx.add_chain([hdr(flags=1), f])
    rig.dev.queue_notify(1)
    assert rig.host.recv(70000) == hdr(flags=1) + f
    assert rig.tx.used() == [(head, 0)]
    assert rig.irq.used_calls == [1]
    assert rig.dev.statistics()["tx_bytes"] == 60


def test_tx_indirect_and_scattered(rig: Rig) -> None:
    rig.tx.add_chain([hdr()[:5], hdr()[5:] + b"ab", b"cdef"], indirect=True)
    rig.tx.add_chain([hdr() + frame(1500)])
    rig.dev.queue_notify(1)
    assert rig.host.recv(70000) == hdr() + b"abcdef"
    assert rig.host.recv(70000) == hdr() + frame(1500)
    assert len(rig.tx.used()) == 2


def test_backend_hangup_stops_watching(rig: Rig) -> None:
    rig.rx.add_chain([], [2048])
    rig.host.close()
    rig.pump_rx()
    assert rig.dev.host_fds() == [] and rig.rx.used() == []


def test_tx_runt_dropped_but_returned(rig: Rig) -> None:
    head = rig.tx.add_chain([b"short"])
    rig.dev.queue_notify(1)
    assert rig.tx.used() == [(head, 0)]
    assert rig.dev.statistics()["tx_errors"] == 1
    rig.host.setblocking(False)
    with pytest.raises(BlockingIOError):
        rig.host.recv(100)


def test_tx_budget_then_timer() -> None:
    r = Rig(qsize=128)
    try:
        for i in range(100):
            r.tx.add_chain([hdr() + frame(10, i)])
        r.dev.queue_notify(1)
        assert r.dev.statistics()["tx_frames"] == 64  # a budget per call, then other devices' turn
        assert r.dev.next_deadline() == r.now
        r.dev.on_timer()
        assert r.dev.next_deadline() is None
        assert len(r.tx.used()) == 100
        assert [r.host.recv(100) for _ in range(100)] == [hdr() + frame(10, i) for i in range(100)]
    finally:
        r.close()


def test_tx_rate_limited_chain_stays_available() -> None:
    lim = Limiter()
    r = Rig(tx_limiter=lim)
    try:
        lim.allow = False
        head = r.tx.add_chain([hdr() + frame(100)])
        r.dev.queue_notify(1)
        assert r.tx.used() == [] and lim.asked == [HDR_SIZE + 100]
        assert r.dev.next_deadline() == r.now + 0.5
        r.now += 0.5
        lim.allow = True
        r.dev.on_timer()
        assert r.tx.used() == [(head, 0)]
        assert r.host.recv(1000) == hdr() + frame(100)
    finally:
        r.close()


# --- receive ----------------------------------------------------------------
def test_rx_single_buffer_without_mrg() -> None:
    r = Rig(features=F_GUEST_CSUM)
    try:
        head = r.rx.add_chain([], [HDR_SIZE + 1518])
        r.host.send(hdr(num_buffers=0x7777, flags=2) + frame(1000))
        r.pump_rx()
        n = HDR_SIZE + 1000
        assert r.rx.used() == [(head, n)]
        data = r.rx.read_written(head)
        assert data == hdr(num_buffers=1, flags=2) + frame(1000)
        assert r.irq.used_calls == [0]
    finally:
        r.close()


def test_rx_merged_buffers(rig: Rig) -> None:
    heads = [rig.rx.add_chain([], [512]) for _ in range(8)]
    f = frame(1200 - HDR_SIZE, 7)
    rig.host.send(hdr() + f)
    rig.host.send(hdr() + frame(20, 3))
    rig.pump_rx()
    used = rig.rx.used()
    assert used == [(heads[0], 512), (heads[1], 512), (heads[2], 176), (heads[3], HDR_SIZE + 20)]
    got = b"".join(rig.rx.read_written(h) for h in heads[:3])
    assert struct.unpack_from("<H", got, 10)[0] == 3
    assert got[HDR_SIZE:] == f
    second = rig.rx.read_written(heads[3])
    assert struct.unpack_from("<H", second, 10)[0] == 1 and second[HDR_SIZE:] == frame(20, 3)
    # the four chains not needed are still the guest's, in order
    rig.host.send(hdr() + b"x" * 50)
    rig.pump_rx()
    assert rig.rx.used() == [(heads[4], HDR_SIZE + 50)]


@pytest.mark.parametrize("event_idx", [False, True])
def test_rx_without_buffers_loses_nothing_and_unwatches(event_idx: bool) -> None:
    rig = Rig(event_idx=event_idx)
    try:
        _starve(rig, event_idx)
    finally:
        rig.close()


def _starve(rig: Rig, event_idx: bool) -> None:
    fd = rig.dev.backend.fileno()
    assert rig.dev.host_fds() == [(fd, 0)]
    for i in range(3):
        rig.host.send(hdr() + frame(100, i))
    rig.dev.host_ready(0)
    assert rig.dev.host_fds() == []  # starved: the I/O thread stops polling the backend
    assert rig.rx.used() == [] and rig.irq.used_calls == []
    assert rig.dev.statistics()["rx_starved"] == 1
    if event_idx:  # the device asked to be kicked for the very next buffer
        assert rig.rx.avail_event == rig.rx.avail_idx
    else:
        assert rig.rx.used_flags == 0
    heads = [rig.rx.add_chain([], [2048]) for _ in range(4)]
    rig.dev.queue_notify(0)  # the guest refilled: receive resumes at once
    assert rig.dev.host_fds() == [(fd, 0)]  # and a buffer is left for the next frame
    assert [h for h, _ in rig.rx.used()] == heads[:3]
    for i, h in enumerate(heads[:3]):
        assert rig.rx.read_written(h)[HDR_SIZE:] == frame(100, i)


def test_rx_too_little_buffer_space_puts_chains_back(rig: Rig) -> None:
    small = [rig.rx.add_chain([], [256]) for _ in range(4)]  # 1 KiB < one MTU frame
    rig.host.send(hdr() + frame(60))
    rig.pump_rx()
    assert rig.rx.used() == [] and rig.dev.host_fds() == []
    big = rig.rx.add_chain([], [2048])
    rig.dev.queue_notify(0)
    used = rig.rx.used()
    assert used == [(small[0], HDR_SIZE + 60)]
    assert big not in [h for h, _ in used]


def test_rx_gso_prefers_room_for_a_64k_frame_but_makes_do() -> None:
    r = Rig(features=F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4)
    try:
        heads = [r.rx.add_chain([], [4096]) for _ in range(4)]
        big = frame(9000)
        r.host.send(hdr() + big)
        r.pump_rx()
        used = r.rx.used()
        assert [h for h, _ in used] == heads[:3]
        assert b"".join(r.rx.read_written(h) for h in heads[:3])[HDR_SIZE:] == big
    finally:
        r.close()


def test_rx_batch_with_gso_keeps_ring_order() -> None:
    """Room for a 64 KiB frame is gathered once per batch; the chains left
    over go back to the ring in order."""
    r = Rig(features=F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4, qsize=64)
    try:
        heads = [r.rx.add_chain([], [1536]) for _ in range(60)]
        for i in range(30):
            r.host.send(hdr() + frame(100, i))
        r.pump_rx()
        used = r.rx.used()
        assert [h for h, _ in used] == heads[:30]
        assert all(r.rx.read_written(h)[HDR_SIZE:] == frame(100, i) for i, h in enumerate(heads[:30]))
        r.host.send(hdr() + frame(3000, 9))  # two buffers, the next two in the ring
        r.pump_rx()
        assert [h for h, _ in r.rx.used()] == heads[30:32]
    finally:
        r.close()


def test_rx_rate_limit_pauses_reading() -> None:
    lim = Limiter()
    r = Rig(rx_limiter=lim)
    try:
        for _ in range(4):
            r.rx.add_chain([], [2048])
        lim.allow = False
        r.host.send(hdr() + frame(100))
        r.host.send(hdr() + frame(100))
        r.pump_rx()
        assert len(r.rx.used()) == 1  # delivered, then the device owes the limiter
        assert r.dev.host_fds() == [] and r.dev.next_deadline() == r.now + 0.5
        lim.allow = True
        r.now += 1
        r.dev.on_timer()
        assert len(r.rx.used()) == 1
        assert r.dev.host_fds() != []
    finally:
        r.close()


def test_rx_chain_longer_than_iov_max() -> None:
    r = Rig(features=0)
    try:
        head = r.rx.add_chain([], [16] * 1100, indirect=True)  # more buffers than readv takes
        r.host.send(hdr() + frame(100))
        r.pump_rx()
        assert r.rx.used() == [(head, HDR_SIZE + 100)]
        assert r.rx.read_written(head)[HDR_SIZE:] == frame(100)
        r.tx.add_chain([hdr()] + [b"x"] * 1100, indirect=True)
        r.dev.queue_notify(1)
        assert r.dev.statistics()["tx_errors"] == 1 and len(r.tx.used()) == 1
    finally:
        r.close()


class FailingBackend(DatagramBackend):
    def recv_into(self, bufs: object) -> int:
        raise OSError(5, "Input/output error")


def test_rx_error_backs_off_instead_of_spinning() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    now = [0.0]
    dev = VirtioNet(FailingBackend(a), clock=lambda: now[0])
    mem = GuestMemory.from_bytearray(1 << 20)
    rx, tx = FakeDriverQueue(mem, 8, desc=0), FakeDriverQueue(mem, 8, desc=0x1000, buffers=(0x80000, 0x100000))
    dev.driver_features = 1 << 32
    dev.activate(mem, [rx.virtqueue(index=0), tx.virtqueue(index=1)], FakeInterrupt())
    rx.add_chain([], [2048])
    dev.host_ready(0)
    assert dev.host_fds() == [] and dev.next_deadline() == 1.0
    assert rx.used() == []  # the buffer stays the guest's
    now[0] = 1.0
    dev.on_timer()  # tries again, fails again, backs off again
    assert dev.next_deadline() == 2.0 and dev.statistics()["rx_errors"] == 2
    dev.close()
    b.close()


# --- malformed chains -------------------------------------------------------
def test_rx_chain_with_readable_part_needs_reset(rig: Rig) -> None:
    rig.rx.add_chain([b"x" * 16], [2048])
    rig.host.send(hdr() + frame(60))
    rig.pump_rx()
    assert rig.dev.broken and rig.irq.config == 1
    assert rig.rx.used() == [] and rig.dev.host_fds() == []


def test_tx_looping_chain_needs_reset(rig: Rig) -> None:
    gpa = rig.tx.alloc.alloc(64)
    rig.tx.add_raw([(gpa, 32, VIRTQ_DESC_F_NEXT, 1), (gpa, 32, VIRTQ_DESC_F_NEXT, 0)])
    rig.dev.queue_notify(1)
    assert rig.dev.broken and rig.irq.config == 1
    rig.dev.queue_notify(1)  # stays quiet until reset
    assert rig.irq.config == 1
    rig.dev.reset()
    assert not rig.dev.broken


# --- config and state -------------------------------------------------------
def test_config_space_and_link(rig: Rig) -> None:
    cfg = rig.dev.config_bytes()
    assert cfg[:6] == MAC and struct.unpack_from("<HH", cfg, 6) == (1, 1)
    rig.dev.set_link(False)
    assert rig.dev.config_read(6, 2) == 0 and rig.irq.config == 0  # STATUS not negotiated
    r = Rig(features=F_STATUS)
    try:
        r.dev.set_link(False)
        assert r.irq.config == 1
    finally:
        r.close()


def test_state_roundtrip_and_validation(rig: Rig) -> None:
    rig.dev.set_link(False)
    s = rig.dev.state()
    assert s == NetState(mac=MAC, link_up=False)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    other = VirtioNet(DatagramBackend(a))
    other.restore(s)
    assert other.state() == s and other.config_bytes() == rig.dev.config_bytes()
    for bad in (NetState(mac=b"\x01" * 6), NetState(mac=b"12345"), NetState(version=2),
                NetState(link_up=1)):  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            other.restore(bad)
    assert other.state() == s
    other.close()
    b.close()


def test_parse_mac() -> None:
    assert parse_mac("52:54:00:12:34:56") == MAC
    for bad in ("52:54:00:12:34", "01:00:5e:00:00:01", "zz:54:00:12:34:56"):
        with pytest.raises(ValueError):
            parse_mac(bad)


# --- fuzz -------------------------------------------------------------------
_desc = st.tuples(st.integers(0, (8 << 20) + 4096), st.integers(0, 70000), st.integers(0, 7), st.integers(0, 70))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rx=st.lists(_desc, max_size=8), tx=st.lists(_desc, max_size=8),
       frames=st.lists(st.binary(max_size=3000), max_size=4), features=st.sampled_from(
           [0, F_MRG_RXBUF, F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4]),
       rx_heads=st.lists(st.integers(0, 70), max_size=4), tx_heads=st.lists(st.integers(0, 70), max_size=4))
def test_fuzz_hostile_rings(rx: list[tuple[int, int, int, int]], tx: list[tuple[int, int, int, int]],
                            frames: list[bytes], features: int, rx_heads: list[int], tx_heads: list[int]) -> None:
    r = Rig(features=features)
    try:
        for k, d in enumerate(rx):
            r.rx.write_desc(k, *d)
        for k, d in enumerate(tx):
            r.tx.write_desc(k, *d)
        for h in rx_heads:
            r.rx.publish(h)
        for h in tx_heads:
            r.tx.publish(h)
        for f in frames:
            r.host.send(f)
        r.dev.queue_notify(1)
        r.pump_rx()
        r.dev.queue_notify(0)
        r.dev.on_timer()
        assert r.mem.size == 8 << 20
    finally:
        r.close()
