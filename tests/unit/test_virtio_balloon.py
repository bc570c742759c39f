"""virtio-balloon: inflate discards the right host ranges, deflate and
bogus PFNs touch nothing, the target reaches the guest, statistics are
parsed and re-requested, free page reporting, state, and a fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.devices.virtio.balloon import (
    F_DEFLATE_ON_OOM, F_REPORTING, F_STATS_VQ, BalloonState, VirtioBalloon,
)
from pyvirt.memory.guest import GuestMemory, Region
from pyvirt.testing.virtio import FakeDriverQueue, FakeInterrupt

MEM = 16 << 20  # guest RAM at 0..16 MiB; the rings and buffers live in its first MiB




class Rig:
    def __init__(self, features: int = F_STATS_VQ | F_REPORTING, *, regions: list[Region] | None = None,
                 activate: bool = True, **kw: object) -> None:
        self.mem = GuestMemory(regions or [Region(0, MEM, bytearray(MEM))])
        self.discarded: list[tuple[int, int]] = []
        self.now = 0.0
        self.dev = VirtioBalloon(lambda gpa, n: self.discarded.append((gpa, n)), clock=lambda: self.now,
                                 **kw)  # type: ignore[arg-type]
        self.irq = FakeInterrupt()
        self.drv = [FakeDriverQueue(self.mem, 16, desc=i * 0x4000, buffers=(0x80000 + i * 0x20000,
                                                                           0xA0000 + i * 0x20000))
                    for i in range(4)]
        self.dev.driver_features = features | (1 << 32)
        if activate:
            n = 2 + bool(features & F_STATS_VQ) + bool(features & F_REPORTING)
            self.dev.activate(self.mem, [d.virtqueue(index=i) for i, d in enumerate(self.drv[:n])], self.irq)

    def pfns(self, queue: int, pfns: list[int]) -> int:
        head = self.drv[queue].add_chain([struct.pack(f"<{len(pfns)}I", *pfns)])
        self.dev.queue_notify(queue)
        return head


def test_features_and_queue_count() -> None:
    d = VirtioBalloon(lambda g, n: None)
    offered = F_STATS_VQ | F_DEFLATE_ON_OOM | F_REPORTING
    assert d.device_features & offered == offered
    assert d.num_queues == 4
    assert VirtioBalloon(lambda g, n: None, stats=False, free_page_reporting=False).num_queues == 2


def test_inflate_discards_merged_ranges() -> None:
    r = Rig()
    head = r.pfns(0, [0x200, 0x201, 0x202, 0x300, 0x204, 0x205])
    assert r.discarded == [(0x200000, 0x3000), (0x300000, 0x1000), (0x204000, 0x2000)]
    assert r.drv[0].used() == [(head, 0)] and r.irq.used_calls == [0]
    assert r.dev.statistics()["inflated_pages"] == 6


def test_inflate_ignores_pfns_outside_memory() -> None:
    r = Rig()
    r.pfns(0, [0xFFF, 0x1000, 0xFFFFFFFF, 0x10_0000, 0x5])
    assert r.discarded == [(0xFFF000, 0x1000), (0x5000, 0x1000)]
    assert r.dev.statistics()["ignored_pfns"] == 3


def test_inflate_runs_split_at_region_boundaries() -> None:
    regions = [Region(0, 1 << 20, bytearray(1 << 20)), Region(1 << 20, 1 << 20, bytearray(1 << 20))]
    r = Rig(regions=regions)
    r.pfns(0, [0xFE, 0xFF, 0x100, 0x101])
    assert r.discarded == [(0xFE000, 0x2000), (0x100000, 0x2000)]


def test_deflate_touches_nothing() -> None:
    r = Rig()
    head = r.pfns(1, [0x200, 0x201])
    assert r.discarded == [] and r.drv[1].used() == [(head, 0)]
    assert r.dev.statistics()["deflated_pages"] == 2


def test_discard_failure_is_survived() -> None:
    def fail(gpa: int, n: int) -> None:
        raise OSError(22, "Invalid argument")

    r = Rig()
    r.dev._discard = fail
    head = r.pfns(0, [0x200])
    assert r.drv[0].used() == [(head, 0)] and not r.dev.broken


def test_set_target_and_actual() -> None:
    r = Rig()
    r.dev.set_target(1000)
    assert r.irq.config == 1 and r.dev.config_read(0, 4) == 1000
    r.dev.config_write(4, 4, 600)
    r.dev.config_write(0, 4, 5)  # num_pages is the host's: ignored
    assert r.dev.config_bytes() == struct.pack("<II", 1000, 600)
    r.dev.config_write(5, 1, 0x01)
    assert r.dev.config_read(4, 4) == 600 - 0x200 + 0x100
    s = r.dev.statistics()
    assert s["target_pages"] == 1000 and s["actual_pages"] == 600 - 0x100
    with pytest.raises(ValueError):
        r.dev.set_target(-1)


def _stats(*pairs: tuple[int, int]) -> bytes:
    return b"".join(struct.pack("<HQ", t, v) for t, v in pairs)


def test_stats_parsed_held_and_rerequested() -> None:
    r = Rig()
    h1 = r.drv[2].add_chain([_stats((0, 1), (4, 1 << 30), (5, 4 << 30), (15, 7), (99, 3)) + b"\x01\x02"])
    r.dev.queue_notify(2)
    assert r.drv[2].used() == []  # held until the host wants more
    s = r.dev.statistics()
    assert s["swap_in"] == 1 and s["free_memory"] == 1 << 30 and s["total_memory"] == 4 << 30
    assert s["direct_reclaims"] == 7 and s["tag_99"] == 3 and "swap_out" not in s
    assert r.dev.request_statistics()
    assert r.drv[2].used() == [(h1, 0)] and r.irq.used_calls == [2]
    assert not r.dev.request_statistics()  # nothing to return until the guest answers
    r.drv[2].add_chain([_stats((4, 5))])
    r.dev.queue_notify(2)
    assert r.dev.statistics()["free_memory"] == 5


def test_stats_interval_timer() -> None:
    r = Rig(stats_interval=5.0)
    h = r.drv[2].add_chain([_stats((6, 9))])
    r.dev.queue_notify(2)
    assert r.dev.next_deadline() == 5.0
    r.now = 5.0
    r.dev.on_timer()
    assert r.drv[2].used() == [(h, 0)] and r.dev.next_deadline() == 10.0


def test_free_page_reporting_queue_index() -> None:
    r = Rig()
    head = r.drv[3].add_chain([], [0x1000])
    [(gpa, n)] = r.drv[3].writable_buffers(head)
    r.dev.queue_notify(3)
    assert r.drv[3].used() == [(head, 0)]
    lo = -(-gpa // 4096) * 4096
    assert r.discarded == ([(lo, 4096)] if lo + 4096 <= gpa + n else [])
    # without STATS_VQ the reporting queue is number 2
    r2 = Rig(F_REPORTING)
    head = r2.drv[2].add_chain([], [0x3000])
    r2.dev.queue_notify(2)
    assert r2.drv[2].used() == [(head, 0)] and r2.dev.statistics()["reported_pages"] >= 2


def test_bad_chain_needs_reset() -> None:
    r = Rig()
    r.drv[0].add_raw([(0x80000, 16, 1, 0)])  # NEXT to itself: a loop
    r.dev.queue_notify(0)
    assert r.dev.broken and r.irq.config == 1


def test_state_roundtrip_keeps_stats_buffer() -> None:
    r = Rig()
    r.dev.set_target(77)
    r.dev.config_write(4, 4, 70)
    h = r.drv[2].add_chain([_stats((4, 123))])
    r.dev.queue_notify(2)
    s = r.dev.state()
    assert s == BalloonState(num_pages=77, actual=70, stats=((4, 123),), stats_head=h)
    other = Rig(activate=False)
    other.dev.restore(s)
    assert other.dev.state() == s
    other.dev.activate(r.mem, [d.virtqueue(index=i) for i, d in enumerate(r.drv)], other.irq)
    other.dev._q[2].next_avail = r.dev._q[2].next_avail  # as the transport restores the ring
    assert other.dev.request_statistics()
    assert r.drv[2].used() == [(h, 0)]
    for bad in (BalloonState(num_pages=-1), BalloonState(stats_head=40000), BalloonState(version=3),
                BalloonState(stats=((1, 2, 3),)), BalloonState(stats=((1, -2),))):  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            other.dev.restore(bad)
    assert other.dev.state().num_pages == 77


_desc = st.tuples(st.integers(0, MEM + 8192), st.integers(0, 9000), st.integers(0, 7), st.integers(0, 17))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.lists(st.tuples(st.integers(0, 3), _desc), max_size=12),
       heads=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 17)), max_size=6),
       pfns=st.lists(st.integers(0, 0xFFFFFFFF), max_size=40), stats=st.binary(max_size=100),
       features=st.sampled_from([0, F_STATS_VQ, F_REPORTING, F_STATS_VQ | F_REPORTING]))
def test_fuzz_hostile_rings(raw: list[tuple[int, tuple[int, int, int, int]]], heads: list[tuple[int, int]],
                            pfns: list[int], stats: bytes, features: int) -> None:
    r = Rig(features)
    r.pfns(0, pfns)
    r.drv[2].add_chain([stats])
    for k, (q, d) in enumerate(raw):
        r.drv[q].write_desc(15 - k % 8, *d)
    for q, h in heads:
        r.drv[q].publish(h)
    for q in range(4):
        r.dev.queue_notify(q)
    r.dev.request_statistics()
    r.dev.statistics()
    assert all(0 <= g and g + n <= MEM and g % 4096 == 0 and n % 4096 == 0 for g, n in r.discarded)


def test_inflate_with_real_anonymous_memory() -> None:
    """With GuestMemory.discard on an mmap region, inflated pages read back as zeros."""
    mem = GuestMemory([Region.anonymous(0, MEM)])
    dev = VirtioBalloon(mem.discard)
    drv = [FakeDriverQueue(mem, 16, desc=i * 0x4000, buffers=(0x80000 + i * 0x20000, 0xA0000 + i * 0x20000))
           for i in range(2)]
    dev.driver_features = 1 << 32
    dev.activate(mem, [d.virtqueue(index=i) for i, d in enumerate(drv)], FakeInterrupt())
    mem.fill(0x400000, 0x3000, 0xAB)
    drv[0].add_chain([struct.pack("<3I", 0x400, 0x401, 0x40000)])  # the last one is beyond RAM
    dev.queue_notify(0)
    assert mem.read(0x400000, 0x2000) == bytes(0x2000)
    assert mem.read(0x402000, 0x1000) == b"\xab" * 0x1000
