"""virtio-blk against a temporary raw image, driven through the fake driver queue."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.devices.virtio import blk as blkmod
from pyvirt.devices.virtio.blk import (
    CONFIG, F_DISCARD, F_RO, F_WRITE_ZEROES, S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT,
    T_WRITE_ZEROES, BlkState, VirtioBlk)
from pyvirt.devices.virtio.device import VirtioDevice
from pyvirt.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from pyvirt.disk import DiskError
from pyvirt.disk.ratelimit import RateLimiter
from pyvirt.disk.raw import RawBackend
from pyvirt.memory.guest import GuestMemory
from pyvirt.testing import FakeClock
from pyvirt.testing.virtio import FakeDriverQueue, FakeInterrupt

DISK = 256 * 1024
TAIL = 100  # bytes after the last whole sector: outside the disk
PATTERN = bytes((i * 7 + 3) & 0xFF for i in range(DISK + TAIL))




def header(rtype: int, sector: int = 0) -> bytes:
    return struct.pack("<IIQ", rtype, 0, sector)


def segment(sector: int, count: int, flags: int = 0) -> bytes:
    return struct.pack("<QII", sector, count, flags)


class Rig:
    def __init__(self, path: Path, *, readonly: bool = False, limiter: RateLimiter | None = None,
                 clock: FakeClock | None = None, event_idx: bool = False, serial: str | None = "disk-serial-1") -> None:
        self.path = path
        self.backend = RawBackend(str(path), readonly, serial=serial)
        kw = {} if clock is None else {"clock": clock}
        self.dev = VirtioBlk(self.backend, rate_limiter=limiter, **kw)
        self.mem = GuestMemory.from_bytearray(2 << 20)
        self.drv = FakeDriverQueue(self.mem, size=64)
        self.irq = FakeInterrupt()
        self.resets: list[str] = []
        real = self.dev.needs_reset  # record the reasons, keep the base class's behaviour
        self.dev.needs_reset = lambda reason: (self.resets.append(reason), real(reason))[1]  # type: ignore[method-assign]
        self.dev.driver_features = self.dev.device_features
        self.dev.activate(self.mem, [self.drv.virtqueue(event_idx=event_idx, indirect=True)], self.irq)

    def submit(self, readable: list[bytes], writable: list[int], *, indirect: bool = False) -> int:
        head = self.drv.add_chain(readable, writable, indirect=indirect)
        self.dev.queue_notify(0)
        self.dev.drain()  # large requests complete on the worker pool
        return head

    def status(self, head: int) -> int:
        gpa, n = self.drv.writable_buffers(head)[-1]
        return self.mem.read(gpa + n - 1, 1)[0]

    def data(self, head: int, length: int) -> bytes:
        out = b"".join(self.mem.read(g, n) for g, n in self.drv.writable_buffers(head))
        return out[:length]

    def request(self, rtype: int, sector: int = 0, payload: bytes = b"", wsize: int = 0) -> tuple[int, int]:
        """Submit one request; (status, used length)."""
        head = self.submit([header(rtype, sector) + payload], [wsize, 1] if wsize else [1])
        used = dict(self.drv.used())
        return self.status(head), used[head]

    def file(self) -> bytes:
        return self.path.read_bytes()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "disk.raw"
    p.write_bytes(PATTERN)
    return p


@pytest.fixture
def rig(image: Path) -> Rig:
    return Rig(image)


def test_config_and_features(rig: Rig) -> None:
    fields = CONFIG.unpack(rig.dev.config_bytes())
    assert fields[0] == DISK // 512  # capacity: the partial sector is not addressable
    assert fields[2] == 254  # seg_max: queue size less header and status
    assert fields[6] == 512  # blk_size
    assert fields[14:19] == (blkmod.MAX_DISCARD_SECTORS, 32, 8, blkmod.MAX_WRITE_ZEROES_SECTORS, 32)
    assert fields[19] == 1  # write_zeroes_may_unmap
    assert rig.dev.config_read(0, 8) == DISK // 512
    f = rig.dev.device_features
    assert f & F_DISCARD and f & F_WRITE_ZEROES and not f & F_RO
    assert f & (1 << 32)  # VERSION_1


def test_readonly_features(image: Path) -> None:
    r = Rig(image, readonly=True)
    f = r.dev.device_features
    assert f & F_RO and not f & (F_DISCARD | F_WRITE_ZEROES)


def test_read(rig: Rig) -> None:
    status, used = rig.request(T_IN, 3, wsize=1024)
    assert (status, used) == (S_OK, 1025)
    head = rig.drv.add_chain([header(T_IN, 3)], [1024, 1])
    rig.dev.queue_notify(0)
    rig.drv.used()
    assert rig.data(head, 1024) == PATTERN[3 * 512:3 * 512 + 1024]
    assert rig.irq.used_calls == [0, 0]


@pytest.mark.parametrize("indirect", [False, True])
def test_read_with_odd_framing(rig: Rig, indirect: bool) -> None:
    # Header split 5 + 11, data in uneven pieces, status sharing the last data buffer.
    h = header(T_IN, 10)
    head = rig.submit([h[:5], h[5:]], [100, 412, 999, 25 + 1], indirect=indirect)
    assert rig.drv.used() == [(head, 1537)]
    assert rig.status(head) == S_OK
    assert rig.data(head, 1536) == PATTERN[5120:5120 + 1536]


def test_write(rig: Rig) -> None:
    payload = bytes(range(256)) * 4
    h = header(T_OUT, 7)
    head = rig.submit([h[:3], h[3:] + payload[:10], payload[10:]], [1])
    assert rig.drv.used() == [(head, 1)]
    assert rig.status(head) == S_OK
    expect = bytearray(PATTERN)
    expect[7 * 512:7 * 512 + 1024] = payload
    assert rig.file() == bytes(expect)


def test_flush(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    assert rig.request(T_FLUSH) == (S_OK, 1)
    assert calls == [rig.backend.fd]


def test_get_id(rig: Rig) -> None:
    head = rig.submit([header(T_GET_ID)], [20, 1])
    assert rig.drv.used() == [(head, 21)]
    assert rig.data(head, 20) == b"disk-serial-1" + bytes(7)
    assert rig.status(head) == S_OK


def test_get_id_full_length_serial(image: Path) -> None:
    r = Rig(image, serial="ABCDEFGHIJKLMNOPQRST")
    head = r.submit([header(T_GET_ID)], [20, 1])
    r.drv.used()
    assert r.data(head, 20) == b"ABCDEFGHIJKLMNOPQRST" and r.status(head) == S_OK


def test_discard_punches_and_zeros(rig: Rig) -> None:
    status, _ = rig.request(T_DISCARD, payload=segment(8, 16) + segment(100, 8))
    assert status == S_OK
    data = rig.file()
    assert data[8 * 512:24 * 512] == bytes(16 * 512) and data[100 * 512:108 * 512] == bytes(8 * 512)
    assert data[:8 * 512] == PATTERN[:8 * 512] and data[24 * 512:100 * 512] == PATTERN[24 * 512:100 * 512]
    assert data[108 * 512:] == PATTERN[108 * 512:]


@pytest.mark.parametrize("flags", [0, 1])
def test_write_zeroes(rig: Rig, flags: int) -> None:
    assert rig.request(T_WRITE_ZEROES, payload=segment(2, 3, flags))[0] == S_OK
    data = rig.file()
    assert data[1024:2560] == bytes(1536)
    assert data[:1024] == PATTERN[:1024] and data[2560:] == PATTERN[2560:]


@pytest.mark.parametrize("rtype,payload,want", [
    (T_DISCARD, segment(0, 1, 1), S_UNSUPP),  # unmap is reserved for discard
    (T_DISCARD, segment(0, 1, 2), S_UNSUPP),  # unknown flag
    (T_WRITE_ZEROES, segment(0, 1, 4), S_UNSUPP),
    (T_DISCARD, segment(DISK // 512, 1), S_IOERR),  # past the end
    (T_WRITE_ZEROES, segment(DISK // 512 - 1, 2), S_IOERR),
    (T_DISCARD, segment(2**64 - 1, 2**32 - 1), S_IOERR),
    (T_DISCARD, b"", S_IOERR),  # no segment
    (T_DISCARD, segment(0, 1)[:15], S_IOERR),  # not a whole segment
    (T_DISCARD, segment(0, 1) * 33, S_IOERR),  # more than max_discard_seg
    (T_WRITE_ZEROES, segment(0, blkmod.MAX_WRITE_ZEROES_SECTORS + 1), S_IOERR),
    (T_DISCARD, segment(0, 1) + segment(DISK, 1), S_IOERR),  # one bad segment: nothing done
])
def test_discard_write_zeroes_refused(rig: Rig, rtype: int, payload: bytes, want: int) -> None:
    assert rig.request(rtype, payload=payload)[0] == want
    assert rig.file() == PATTERN


def test_discard_not_negotiated(rig: Rig) -> None:
    rig.dev.driver_features &= ~(F_DISCARD | F_WRITE_ZEROES)
    assert rig.request(T_DISCARD, payload=segment(0, 1))[0] == S_UNSUPP
    assert rig.request(T_WRITE_ZEROES, payload=segment(0, 1))[0] == S_UNSUPP
    assert rig.file() == PATTERN


@pytest.mark.parametrize("rtype", [2, 3, 10, 14, 0xFFFFFFFF])
def test_unsupported_types(rig: Rig, rtype: int) -> None:
    assert rig.request(rtype, wsize=512) == (S_UNSUPP, 1)
    assert rig.dev.statistics().unsupported == 1


@pytest.mark.parametrize("sector,length", [(DISK // 512, 512), (DISK // 512 - 1, 1024), (2**64 - 1, 512),
                                           (0, 100), (0, 513)])
def test_out_of_range_and_unaligned(rig: Rig, sector: int, length: int) -> None:
    assert rig.request(T_IN, sector, wsize=length) == (S_IOERR, 1)
    assert rig.request(T_OUT, sector, payload=b"\xee" * length) == (S_IOERR, 1)
    assert rig.file() == PATTERN


def test_last_sector(rig: Rig) -> None:
    last = DISK // 512 - 1
    assert rig.request(T_OUT, last, payload=b"\x55" * 512) == (S_OK, 1)
    assert rig.file() == PATTERN[:last * 512] + b"\x55" * 512 + PATTERN[DISK:]


def test_readonly_disk(image: Path) -> None:
    r = Rig(image, readonly=True)
    assert r.request(T_OUT, 0, payload=b"x" * 512) == (S_IOERR, 1)
    assert r.request(T_DISCARD, payload=segment(0, 1))[0] == S_UNSUPP
    assert r.request(T_WRITE_ZEROES, payload=segment(0, 1))[0] == S_UNSUPP
    assert r.request(T_IN, 0, wsize=512) == (S_OK, 513)
    assert r.request(T_FLUSH) == (S_OK, 1)
    assert image.read_bytes() == PATTERN


def test_io_error(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(offset: int, views: object) -> int:
        raise DiskError("disk.raw: read failed: Input/output error")

    monkeypatch.setattr(rig.backend, "read_into", broken)
    assert rig.request(T_IN, 0, wsize=512) == (S_IOERR, 1)
    monkeypatch.setattr(rig.backend, "flush", lambda: (_ for _ in ()).throw(OSError(5, "EIO")))
    assert rig.request(T_FLUSH) == (S_IOERR, 1)
    assert rig.dev.statistics().io_errors == 2


def test_malformed_chains_are_returned_unanswered(rig: Rig) -> None:
    heads = [
        rig.submit([header(T_IN)[:8]], [512, 1]),  # header too short
        rig.submit([header(T_OUT) + b"x" * 512], []),  # no status byte
        rig.submit([], [16, 512, 1]),  # header in a writable buffer
    ]
    assert rig.drv.used() == [(h, 0) for h in heads]
    assert rig.dev.statistics().bad_chains == 3
    assert rig.file() == PATTERN
    assert rig.request(T_IN, 0, wsize=512) == (S_OK, 513)  # the device goes on
    assert rig.resets == []


def test_broken_ring_needs_reset(rig: Rig) -> None:
    drv = rig.drv
    drv.add_raw([(0x10_0000_0000, 16, VIRTQ_DESC_F_NEXT, 1), (0x1000, 1, VIRTQ_DESC_F_WRITE, 0)], at=40)
    rig.dev.queue_notify(0)
    assert len(rig.resets) == 1 and "not inside guest memory" in rig.resets[0]
    assert str(rig.path) in rig.resets[0] and rig.dev.broken and rig.irq.config_calls == 1
    rig.dev.queue_notify(0)  # stays quiet until reset
    assert len(rig.resets) == 1 and drv.used() == []
    rig.dev.reset()
    assert not rig.dev.broken


def test_event_idx_interrupts(image: Path) -> None:
    r = Rig(image, event_idx=True)
    r.drv.track_used_event = False
    r.drv.set_used_event(1)  # interrupt once used.idx passes 1
    r.request(T_IN, 0, wsize=512)
    assert r.irq.used_calls == []
    r.request(T_IN, 0, wsize=512)
    assert r.irq.used_calls == [0]


# --- rate limiting -------------------------------------------------------------
def test_rate_limited_bandwidth(image: Path) -> None:
    clock = FakeClock(100.0)
    limiter = RateLimiter.per_second(bytes_per_sec=4096, clock=clock)
    r = Rig(image, limiter=limiter, clock=clock)
    heads = [r.drv.add_chain([header(T_IN, i)], [4096, 1]) for i in range(3)]
    r.dev.queue_notify(0)
    assert r.drv.used() == [(heads[0], 4097)]
    assert r.dev.next_deadline() == pytest.approx(101.0)
    q = r.dev.queues[0]
    assert q.pending()  # the throttled chain is still in the ring
    r.dev.queue_notify(0)  # a kick while throttled does nothing
    assert r.drv.used() == []
    clock.advance(0.5)
    r.dev.on_timer()  # early: still not enough tokens
    assert r.drv.used() == [] and r.dev.next_deadline() == pytest.approx(101.0)
    clock.advance(0.5)
    r.dev.on_timer()
    assert r.drv.used() == [(heads[1], 4097)]
    clock.advance(1.0)
    r.dev.on_timer()
    assert r.drv.used() == [(heads[2], 4097)] and r.dev.next_deadline() is None
    assert r.data(heads[2], 4096) == PATTERN[1024:1024 + 4096]
    assert r.dev.statistics().throttled >= 2
    r.dev.on_timer()  # no deadline: nothing happens


def test_rate_limited_ops(image: Path) -> None:
    clock = FakeClock()
    limiter = RateLimiter.per_second(ops_per_sec=10, ops_burst=2, clock=clock)
    r = Rig(image, limiter=limiter, clock=clock)
    for _ in range(4):
        r.drv.add_chain([header(T_FLUSH)], [1])
    r.dev.queue_notify(0)
    assert len(r.drv.used()) == 2
    assert r.dev.next_deadline() == pytest.approx(0.1)
    clock.advance(0.1)
    r.dev.on_timer()
    assert len(r.drv.used()) == 1
    r.dev.reset()  # a reset forgets the timer
    assert r.dev.next_deadline() is None


# --- state -----------------------------------------------------------------------
def test_state_roundtrip(image: Path, rig: Rig) -> None:
    rig.dev.driver_features = rig.dev.device_features & ~F_DISCARD
    s = rig.dev.state()
    assert isinstance(s, BlkState) and s.path == str(image) and s.capacity == DISK // 512
    other = VirtioBlk(RawBackend(str(image), lock=False, serial="x"))
    other.restore(s)
    assert other.driver_features == s.driver_features and other.state() == s


def test_restore_refuses_bad_state(image: Path, tmp_path: Path, rig: Rig) -> None:
    import dataclasses

    s = rig.dev.state()
    other = VirtioBlk(RawBackend(str(image), lock=False))
    for bad in (dataclasses.replace(s, version=2), dataclasses.replace(s, path="/elsewhere"),
                dataclasses.replace(s, readonly=True), dataclasses.replace(s, capacity=1),
                dataclasses.replace(s, driver_features=1 << 63), dataclasses.replace(s, config=b"x"),
                dataclasses.replace(s, driver_features="1")):
        with pytest.raises(ValueError):
            other.restore(bad)  # type: ignore[arg-type]
    assert other.driver_features == 0
    with pytest.raises(ValueError):
        other.restore(object())  # type: ignore[arg-type]


# --- fuzz ----------------------------------------------------------------------------
TYPES = st.sampled_from([T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES, 2, 10, 0xFFFFFFFF])
SECTORS = st.one_of(st.integers(0, DISK // 512 + 2), st.integers(0, 2**64 - 1))


@st.composite
def requests(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    hdr = struct.pack("<IIQ", draw(TYPES), draw(st.integers(0, 2**32 - 1)), draw(SECTORS))
    if draw(st.booleans()):
        count = draw(st.integers(0, 3))
        body = b"".join(segment(draw(SECTORS), draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 3)))
                        for _ in range(count))
    else:
        body = b"\xa5" * draw(st.sampled_from([0, 1, 511, 512, 1024, 4096]))
    raw = hdr + body
    if draw(st.booleans()):
        raw = raw[:draw(st.integers(0, len(raw)))]  # truncated
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=3)))
    readable = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
    writable = draw(st.lists(st.sampled_from([0, 1, 7, 20, 511, 512, 513, 4096]), max_size=4))
    return readable, writable


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=st.lists(requests(), min_size=1, max_size=8), indirect=st.booleans())
def test_fuzz_requests(image: Path, reqs: list[tuple[list[bytes], list[int]]], indirect: bool) -> None:
    r = Rig(image, serial=None)
    try:
        for readable, writable in reqs:
            if not readable and not writable:
                continue
            r.drv.add_chain(readable, writable, indirect=indirect)
            r.dev.queue_notify(0)
            r.drv.used()
        assert r.resets == []  # well-formed rings never need a reset
        data = image.read_bytes()
        assert len(data) == DISK + TAIL and data[DISK:] == PATTERN[DISK:]
    finally:
        r.backend.close()


DESCS = st.tuples(st.one_of(st.integers(0, (2 << 20) + 4096), st.integers(0, 2**64 - 1)),
                  st.one_of(st.integers(0, 4096), st.integers(0, 2**32 - 1)),
                  st.integers(0, 7), st.integers(0, 70))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(descs=st.lists(DESCS, min_size=1, max_size=6), head=st.integers(0, 70), hdr=requests())
def test_fuzz_hostile_rings(image: Path, descs: list[tuple[int, int, int, int]], head: int,
                            hdr: tuple[list[bytes], list[int]]) -> None:
    r = Rig(image, serial=None)
    try:
        # Plant a plausible request in guest memory for descriptors that happen to point at it.
        raw = b"".join(hdr[0]) or header(T_OUT)
        r.mem.write(0x10_0000, raw)
        r.drv.add_raw([(a if i % 2 else 0x10_0000 + (a % 64), n, f, x) for i, (a, n, f, x) in enumerate(descs)],
                      at=0, head=head % 64)
        r.dev.queue_notify(0)  # nothing may escape: at worst the device asks for a reset
        assert len(r.resets) <= 1
        data = image.read_bytes()
        assert len(data) == DISK + TAIL and data[DISK:] == PATTERN[DISK:]
    finally:
        r.backend.close()


def test_large_requests_run_in_parallel_and_complete(rig: Rig, image: Path) -> None:
    """Requests of PARALLEL_MIN bytes or more go to the worker pool: all of
    them complete, with the right data, and each is used exactly once."""
    big = blkmod.PARALLEL_MIN
    heads = {}
    for i in range(3):  # three writes of distinct patterns, submitted in one batch
        data = bytes([0x40 + i]) * big
        heads[rig.drv.add_chain([header(blkmod.T_OUT, i * big // 512) + data], [1])] = data
    reads = [rig.drv.add_chain([header(blkmod.T_IN, 0)], [big, 1]) for _ in range(2)]
    rig.dev.queue_notify(0)
    rig.dev.drain()
    used = dict(rig.drv.used())
    assert set(used) == set(heads) | set(reads)
    for head in heads:
        assert rig.status(head) == blkmod.S_OK
    disk = rig.file()
    for i, data in enumerate(heads.values()):
        assert disk[i * big:(i + 1) * big] == data
    st = rig.dev.statistics()
    assert st.writes == 3 and st.write_bytes == 3 * big and st.reads == 2
    assert rig.irq.used_calls  # the guest was told


def test_reset_waits_for_requests_in_flight(rig: Rig) -> None:
    big = blkmod.PARALLEL_MIN
    rig.drv.add_chain([header(blkmod.T_IN, 0)], [big, 1])
    rig.dev.queue_notify(0)
    rig.dev.reset()  # must not return while a worker still uses the queue
    assert rig.dev._inflight == 0
    rig.dev.close()
