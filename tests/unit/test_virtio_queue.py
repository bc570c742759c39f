"""The split virtqueue (device side) against the fake driver.

Well-formed chains (direct, indirect, mixed), the byte helpers of `Chain`,
16-bit index wrap-around, interrupt and notification suppression (flags and
event_idx), every malformed ring a hostile guest can build, saved state and
its validation, and fuzzing: whatever the guest writes into its rings,
`pop()` returns a chain whose buffers all lie in guest memory, or None, or
raises VirtqueueError, and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.devices.virtio.queue import (
    MAX_CHAIN_LEN,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT as IND,
    VIRTQ_DESC_F_NEXT as NEXT,
    VIRTQ_DESC_F_WRITE as WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
    Chain,
    QueueState,
    Virtqueue,
    VirtqueueError,
    ring_sizes,
)
from pyvirt.memory.guest import GuestMemory, Region
from pyvirt.testing.virtio import BufferAllocator, FakeDriverQueue

MEM = 1 << 20


def rig(size: int = 16, mem_size: int = MEM, **kw: Any) -> tuple[GuestMemory, FakeDriverQueue]:
    mem = GuestMemory.from_bytearray(mem_size)
    return mem, FakeDriverQueue(mem, size, **kw)


def check_chain(mem: GuestMemory, c: Chain, size: int) -> None:
    """What every chain pop() returns must satisfy."""
    assert 0 <= c.head < size
    for gpa, n in c.readable + c.writable:
        assert n > 0 and mem.contains(gpa, n)
    assert c.readable_len == sum(n for _, n in c.readable)
    assert c.writable_len == sum(n for _, n in c.writable)
    assert c.readable_len + c.writable_len <= MAX_CHAIN_LEN


# --- well-formed chains --------------------------------------------------------

def test_empty_queue():
    _, drv = rig()
    q = drv.virtqueue()
    assert q.pop() is None and not q.pending()


def test_chain_read_write_and_used():
    mem, drv = rig()
    q = drv.virtqueue()
    head = drv.add_chain([b"hello", b" world"], [4, 8])
    assert q.pending()
    c = q.pop()
    assert c is not None and c.head == head
    assert c.readable == drv.readable_buffers(head) and c.writable == drv.writable_buffers(head)
    assert (c.readable_len, c.writable_len) == (11, 12)
    assert c.read(mem) == b"hello world"
    assert c.read(mem, 7) == b"hello w" and c.read(mem, 0) == b"" and c.read(mem, 100) == b"hello world"
    assert c.write(mem, b"abcdefghijklmnop") == 12
    q.push(c.head, 12)
    assert q.pop() is None and not q.pending()
    assert drv.used() == [(head, 12)]
    assert drv.read_written(head) == b"abcdefghijkl"
    assert drv.used() == []


def test_write_at_offset_spans_buffers_and_truncates():
    mem, drv = rig()
    q = drv.virtqueue()
    head = drv.add_chain([], [4, 4, 4])
    c = q.pop()
    assert c is not None
    assert c.write(mem, b"WXYZ", offset=6) == 4
    assert c.write(mem, bytearray(b"12345"), offset=10) == 2
    assert c.write(mem, memoryview(b"q"), offset=12) == 0
    assert c.write(mem, b"") == 0
    with pytest.raises(ValueError):
        c.write(mem, b"x", offset=-1)
    assert drv.read_written(head) == b"\0" * 6 + b"WXYZ12"


def test_views_for_vectored_io():
    mem, drv = rig()
    q = drv.virtqueue()
    head = drv.add_chain([b"abc", b"defg"], [2, 5])
    c = q.pop()
    assert c is not None
    with tempfile.TemporaryFile() as f:
        assert os.pwritev(f.fileno(), c.readable_views(mem), 0) == 7
        assert os.preadv(f.fileno(), c.writable_views(mem), 0) == 7
    q.push(head, 7)
    drv.used()
    assert drv.read_written(head) == b"abcdefg"


def test_out_of_order_completion_reuses_descriptors():
    mem, drv = rig(size=4)
    q = drv.virtqueue()
    heads = [drv.add_chain([b"a"], [1]), drv.add_chain([b"b"], [1])]
    chains = [q.pop(), q.pop()]
    assert [c.head for c in chains if c] == heads
    with pytest.raises(ValueError, match="queue full"):
        drv.add_chain([b"c"], [1])
    for c in reversed(chains):
        assert c is not None
        q.push(c.head, c.write(mem, c.read(mem).upper()))
    assert drv.used() == [(heads[1], 1), (heads[0], 1)]
    assert drv.read_written(heads[0]) == b"A" and drv.read_written(heads[1]) == b"B"
    for _ in range(10):
        h = drv.add_chain([b"x", b"y"], [])
        c = q.pop()
        assert c is not None and c.head == h and c.read(mem) == b"xy"
        q.push(h, 0)
        drv.used()


def test_indirect_chain():
    mem, drv = rig()
    q = drv.virtqueue(indirect=True)
    head = drv.add_chain([b"ab", b"cd", b"ef"], [3, 3], indirect=True)
    assert len(drv.free) == 15  # one ring descriptor for the whole chain
    c = q.pop()
    assert c is not None and c.head == head
    assert c.read(mem) == b"abcdef" and c.writable == drv.writable_buffers(head)
    q.push(head, c.write(mem, b"123456"))
    assert drv.used() == [(head, 6)] and drv.read_written(head) == b"123456"
    assert len(drv.free) == 16


def test_direct_descriptors_then_an_indirect_table():
    mem, drv = rig()
    q = drv.virtqueue(indirect=True)
    a, b = drv.alloc.alloc(4), drv.alloc.alloc(8)
    table, tlen = drv.write_table([(b, 8, WRITE, 0)])
    # The write flag of the descriptor pointing to a table is ignored (spec 2.7.5.3.2).
    drv.add_raw([(a, 4, NEXT, 1), (table, tlen, IND | WRITE, 0)])
    c = q.pop()
    assert c is not None and c.readable == [(a, 4)] and c.writable == [(b, 8)]


def test_zero_length_descriptors_are_skipped():
    mem, drv = rig()
    q = drv.virtqueue()
    a, b = drv.alloc.alloc(4), drv.alloc.alloc(4)
    drv.add_raw([(a, 4, NEXT, 1), (2**64 - 1, 0, NEXT, 2), (b, 4, WRITE | NEXT, 3), (0, 0, NEXT, 4), (MEM, 0, 0, 0)])
    c = q.pop()
    assert c is not None and c.readable == [(a, 4)] and c.writable == [(b, 4)]


def test_chain_may_be_empty_of_bytes():
    _, drv = rig()
    q = drv.virtqueue()
    drv.add_raw([(0, 0, 0, 0)])
    c = q.pop()
    assert c is not None and c.readable == c.writable == [] and c.read(drv.mem) == b""


def test_buffers_in_a_second_region():
    mem = GuestMemory([Region(0, 0x10000, bytearray(0x10000)), Region(0x100000, 0x10000, bytearray(0x10000))])
    drv = FakeDriverQueue(mem, 8, desc=0x100000, buffers=(0x100000 + 0x1000, 0x110000))
    q = drv.virtqueue()
    head = drv.add_chain([b"far"], [3])
    c = q.pop()
    assert c is not None and c.read(mem) == b"far"
    # A buffer in the hole between regions, and one across a region's end.
    drv.add_raw([(0x10000, 4, 0, 0)], at=1)
    with pytest.raises(VirtqueueError, match="not inside guest memory"):
        q.pop()
    q.push(head, 0)


def test_allocator_wraps():
    a = BufferAllocator(0x1000, 0x1100)
    assert a.alloc(0x80) == 0x1000 and a.alloc(0x40) == 0x1080
    assert a.alloc(0x80) == 0x1000  # no room left at the end: back to the start
    with pytest.raises(ValueError):
        a.alloc(0x101)


# --- 16-bit indices ------------------------------------------------------------

@pytest.mark.parametrize("start", [0xFFF0, 0xFFFF, 0])
def test_indices_wrap_past_65535(start):
    mem, drv = rig(size=8, start_idx=start)
    q = drv.virtqueue()
    for i in range(40):
        heads = [drv.add_chain([bytes([i])], [1]) for _ in range(1 + i % 3)]
        for h in heads:
            c = q.pop()
            assert c is not None and c.head == h and c.read(mem) == bytes([i])
            q.push(h, c.write(mem, b"!"))
        assert q.pop() is None
        assert drv.used() == [(h, 1) for h in heads]
    assert q.next_avail == q.next_used == drv.used_idx == drv.avail_idx
    assert q.next_used == (start + sum(1 + i % 3 for i in range(40))) & 0xFFFF


def test_many_round_trips_wrap_the_ring_indices():
    # All the way round the 16-bit index space, one chain at a time.
    mem, drv = rig(size=2)
    q = drv.virtqueue()
    buf = drv.alloc.alloc(8)
    drv.write_desc(0, buf, 8, WRITE)
    for i in range(0x10010):
        drv.publish(0)
        c = q.pop()
        assert c is not None
        q.push(c.head, i & 7)
    assert q.pop() is None
    assert q.next_avail == q.next_used == drv.used_idx == 0x10
    drv.last_used = 0x0E  # the last two entries, for i = 0x1000e and 0x1000f
    assert drv.used() == [(0, 0x1000E & 7), (0, 0x1000F & 7)]


# --- interrupts and notifications -------------------------------------------------

def _complete(q: Virtqueue, drv: FakeDriverQueue, n: int) -> None:
    for _ in range(n):
        drv.add_chain([b"x"])
        c = q.pop()
        assert c is not None
        q.push(c.head, 0)


def test_no_interrupt_flag():
    _, drv = rig()
    q = drv.virtqueue()
    assert not q.should_notify()  # nothing pushed
    _complete(q, drv, 1)
    assert q.should_notify()
    assert not q.should_notify()  # nothing new since
    drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    _complete(q, drv, 2)
    assert not q.should_notify()
    drv.set_avail_flags(0)
    _complete(q, drv, 1)
    assert q.should_notify()


def test_event_idx_suppresses_interrupts():
    _, drv = rig(track_used_event=False)
    q = drv.virtqueue(event_idx=True)
    drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)  # ignored with event_idx
    drv.set_used_event(0)
    _complete(q, drv, 1)  # used idx 0 -> 1 passes used_event 0
    assert q.should_notify()
    _complete(q, drv, 1)  # 1 -> 2: the driver still wants the one after 0 only
    assert not q.should_notify()
    drv.set_used_event(4)
    _complete(q, drv, 2)  # 2 -> 4: not past 4 yet
    assert not q.should_notify()
    _complete(q, drv, 3)  # 4 -> 7 in one batch crosses 4
    assert q.should_notify()
    assert not q.should_notify()


def test_event_idx_across_the_wrap():
    _, drv = rig(start_idx=0xFFFE, track_used_event=False)
    q = drv.virtqueue(event_idx=True)
    drv.set_used_event(0xFFFF)
    _complete(q, drv, 1)  # 0xfffe -> 0xffff
    assert not q.should_notify()
    _complete(q, drv, 1)  # 0xffff -> 0
    assert q.should_notify()
    drv.set_used_event(0xFFFF)  # far behind: next wanted after 65535 more
    _complete(q, drv, 3)
    assert not q.should_notify()


def test_fake_driver_rearms_used_event():
    _, drv = rig()
    q = drv.virtqueue(event_idx=True)
    for _ in range(3):
        _complete(q, drv, 2)
        assert q.should_notify()
        drv.used()


def test_set_notification_flag():
    _, drv = rig()
    q = drv.virtqueue()
    q.set_notification(False)
    assert drv.used_flags == VIRTQ_USED_F_NO_NOTIFY
    q.set_notification(True)
    assert drv.used_flags == 0


def test_set_notification_event_idx():
    _, drv = rig()
    q = drv.virtqueue(event_idx=True)
    _complete(q, drv, 3)
    q.set_notification(True)
    assert drv.avail_event == 3 and drv.used_flags == 0
    _complete(q, drv, 2)
    q.set_notification(False)  # leaves avail_event stale
    assert drv.avail_event == 3


# --- hostile rings ------------------------------------------------------------

def _buf(drv: FakeDriverQueue, n: int = 8) -> int:
    return drv.alloc.alloc(n)


def _head_beyond_size(drv: FakeDriverQueue) -> None:
    drv.publish(16)


def _next_beyond_size(drv: FakeDriverQueue) -> None:
    drv.add_raw([(_buf(drv), 8, NEXT, 16)])


def _loop(drv: FakeDriverQueue) -> None:
    b = _buf(drv)
    drv.add_raw([(b, 8, NEXT, 1), (b, 8, NEXT, 2), (b, 8, NEXT, 0)])


def _self_loop_of_empty_descriptors(drv: FakeDriverQueue) -> None:
    drv.add_raw([(0, 0, NEXT, 0)])


def _indirect(drv: FakeDriverQueue, table: list[tuple[int, int, int, int]], flags: int = IND,
              length: int | None = None) -> None:
    gpa, n = drv.write_table(table)
    drv.add_raw([(gpa, n if length is None else length, flags, 0)])


def _table_entries(drv: FakeDriverQueue, n: int) -> list[tuple[int, int, int, int]]:
    b = _buf(drv)
    return [(b, 8, NEXT if i + 1 < n else 0, i + 1) for i in range(n)]


CASES = {
    "head beyond size": (_head_beyond_size, "beyond the queue size"),
    "next beyond size": (_next_beyond_size, "links to descriptor 16"),
    "loop": (_loop, "loops"),
    "loop of empty descriptors": (_self_loop_of_empty_descriptors, "loops"),
    "readable after writable": (lambda d: d.add_raw([(_buf(d), 8, WRITE | NEXT, 1), (_buf(d), 8, 0, 0)]),
                                "follows a device-writable"),
    "buffer past the end": (lambda d: d.add_raw([(MEM - 4, 8, 0, 0)]), "not inside guest memory"),
    "buffer at the end": (lambda d: d.add_raw([(MEM, 1, WRITE, 0)]), "not inside guest memory"),
    "buffer at 2**64-1": (lambda d: d.add_raw([(2**64 - 1, 1, 0, 0)]), "not inside guest memory"),
    "buffer of 4 GiB": (lambda d: d.add_raw([(0, 0xFFFFFFFF, 0, 0)]), "not inside guest memory"),
    "indirect not negotiated": (lambda d: _indirect(d, _table_entries(d, 1)), "not negotiated"),
    "indirect with next": (lambda d: _indirect(d, _table_entries(d, 1), IND | NEXT), "both INDIRECT and NEXT"),
    "indirect length 0": (lambda d: _indirect(d, _table_entries(d, 1), length=0), "indirect table of 0x0"),
    "indirect length 24": (lambda d: _indirect(d, _table_entries(d, 2), length=24), "not a positive multiple"),
    "indirect too long": (lambda d: _indirect(d, _table_entries(d, 1), length=16 * 32769), "up to 32768"),
    "indirect outside memory": (lambda d: d.add_raw([(MEM - 16, 32, IND, 0)]), "indirect table at"),
    "nested indirect": (lambda d: _indirect(d, [(_buf(d), 16, IND, 0)]), "nested"),
    "indirect next beyond table": (lambda d: _indirect(d, [(_buf(d), 8, NEXT, 1)]), "beyond the table's 1"),
    "indirect loop": (lambda d: _indirect(d, [(_buf(d), 8, NEXT, 1), (_buf(d), 8, NEXT, 0)]), "loops in the indirect"),
    "indirect readable after writable": (lambda d: _indirect(d, [(_buf(d), 8, WRITE | NEXT, 1), (_buf(d), 8, 0, 0)]),
                                         "follows a device-writable"),
    "indirect buffer outside memory": (lambda d: _indirect(d, [(MEM, 8, 0, 0)]), "not inside guest memory"),
    "avail idx jumps": (lambda d: d.set_avail_idx(18), "more than the queue size"),
    "avail idx goes back": (lambda d: d.set_avail_idx(0xFFFF), "more than the queue size"),
}


@pytest.mark.parametrize("case,indirect", [(c, i) for c in CASES for i in (False, True)
                                           if not (i and c == "indirect not negotiated")])
def test_malformed_rings_raise(case, indirect):
    build, message = CASES[case]
    if not indirect and case.startswith(("indirect", "nested")) and case != "indirect not negotiated":
        message = "not negotiated"
    mem, drv = rig()
    q = drv.virtqueue(indirect=indirect)
    drv.add_chain([b"fine"], [4])  # a good chain first: errors must not depend on position
    c = q.pop()
    assert c is not None
    build(drv)
    with pytest.raises(VirtqueueError, match=message):
        q.pop()
    with pytest.raises(VirtqueueError):
        q.pop()  # the bad chain is not consumed
    assert q.next_avail == 1


def test_avail_idx_exactly_size_ahead_is_fine():
    _, drv = rig(size=4)
    q = drv.virtqueue()
    b = _buf(drv)
    drv.write_desc(0, b, 8)
    for _ in range(4):
        drv.publish(0)
    assert all(q.pop() is not None for _ in range(4)) and q.pop() is None


def test_chain_length_cap():
    # 4096 descriptors of 1 MiB each: all inside memory, 4 GiB in total.
    mem = GuestMemory.from_bytearray(2 << 20)
    drv = FakeDriverQueue(mem, 8, buffers=(1 << 20, 2 << 20))
    q = drv.virtqueue(indirect=True)
    _indirect(drv, [(0, 1 << 20, NEXT, i + 1) for i in range(4095)] + [(0, 1 << 20, 0, 0)])
    with pytest.raises(VirtqueueError, match="add up to more than"):
        q.pop()
    drv.set_avail_idx(0)
    _indirect(drv, [(0, 1 << 20, NEXT, i + 1) for i in range(4095)] + [(0, (1 << 20) - 1, 0, 0)])
    drv.set_avail_idx(1)
    c = q.pop()
    assert c is not None and c.readable_len == MAX_CHAIN_LEN


def test_push_is_checked():
    _, drv = rig()
    q = drv.virtqueue()
    for head, written in ((16, 0), (-1, 0), (0, -1), (0, 1 << 32)):
        with pytest.raises(VirtqueueError):
            q.push(head, written)
    assert drv.used_idx == 0


# --- construction and state --------------------------------------------------------

def test_ring_sizes():
    assert ring_sizes(256) == (4096, 518, 2054)


@pytest.mark.parametrize("kw", [
    dict(size=0), dict(size=3), dict(size=65536), dict(size=True), dict(size=16.0),
    dict(desc=8), dict(avail=1), dict(used=2), dict(desc=MEM), dict(used=MEM - 100), dict(avail=-2),
    dict(desc=2**64), dict(event_idx=1), dict(indirect="yes"),
])
def test_construction_is_validated(kw):
    mem = GuestMemory.from_bytearray(MEM)
    args: dict[str, Any] = dict(size=16, desc=0, avail=0x100, used=0x200, event_idx=False, indirect=False)
    args.update(kw)
    with pytest.raises(VirtqueueError):
        Virtqueue(mem, args.pop("size"), args.pop("desc"), args.pop("avail"), args.pop("used"), **args)


def test_ring_straddling_regions_is_refused():
    mem = GuestMemory([Region(0, 0x1000, bytearray(0x1000)), Region(0x1000, 0x1000, bytearray(0x1000))])
    with pytest.raises(VirtqueueError, match="descriptor table"):
        Virtqueue(mem, 16, 0xF80, 0x1100, 0x1200)
    Virtqueue(mem, 8, 0xF80, 0x1100, 0x1200)


def test_largest_queue():
    mem = GuestMemory.from_bytearray(MEM)
    q = Virtqueue(mem, 32768, 0, 0x80000, 0x90000, index=3)
    assert q.pop() is None and q.size == 32768 and q.index == 3


def test_state_round_trip():
    mem, drv = rig(start_idx=0xFFFE)
    q = drv.virtqueue(event_idx=True, indirect=True)
    heads = [drv.add_chain([b"1"], [1]), drv.add_chain([b"2"], [1], indirect=True), drv.add_chain([b"3"], [1])]
    a, b = q.pop(), q.pop()
    assert a is not None and b is not None
    q.push(a.head, 0)
    q.should_notify()
    s = q.state()
    assert s == QueueState(16, drv.desc_addr, drv.avail_addr, drv.used_addr, 0, 0xFFFF, True, True, 0xFFFF, 1)
    r = Virtqueue.from_state(mem, s, index=2)
    assert r.state() == s and r.index == 2
    c = r.pop()
    assert c is not None and c.head == heads[2] and c.read(mem) == b"3"
    r.push(b.head, 1)
    r.push(c.head, 1)
    assert drv.used() == [(heads[0], 0), (heads[1], 1), (heads[2], 1)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.size = 8  # type: ignore[misc]


BAD_STATES = [
    dict(version=2), dict(version="1"), dict(size=0), dict(size=24), dict(size=65536), dict(size="16"),
    dict(desc=8), dict(avail=3), dict(used=6), dict(desc=MEM), dict(used=-4), dict(avail=None),
    dict(next_avail=65536), dict(next_avail=-1), dict(next_used=1.5), dict(signalled_used=True),
    dict(next_used=None), dict(event_idx=1), dict(indirect="no"),
]


@pytest.mark.parametrize("change", BAD_STATES)
def test_bad_state_is_refused(change):
    mem, drv = rig()
    good = drv.virtqueue().state()
    with pytest.raises(VirtqueueError):
        Virtqueue.from_state(mem, dataclasses.replace(good, **change))


def test_state_of_wrong_type_is_refused():
    mem, drv = rig()
    with pytest.raises(VirtqueueError):
        Virtqueue.from_state(mem, dataclasses.asdict(drv.virtqueue().state()))  # type: ignore[arg-type]


# --- fuzzing -----------------------------------------------------------------------

# derandomize: one CI run spent 10+ minutes in Hypothesis's mutation loop on
# test_fuzz_structured_rings with a random seed (every local seed took ~2 s);
# a fixed seed keeps the suite's time bounded and failures reproducible.
FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_MEM = 0x10000
TABLE = 0x8000  # where the fuzzed indirect table goes

addrs = st.one_of(st.integers(0, FUZZ_MEM + 64), st.sampled_from([0, TABLE, FUZZ_MEM - 16, FUZZ_MEM - 1, FUZZ_MEM,
                                                                  2**63, 2**64 - 16, 2**64 - 1]),
                  st.integers(0, 2**64 - 1))
lens = st.one_of(st.integers(0, 64), st.sampled_from([16, 32, 48, 0x100, FUZZ_MEM, 16 * 32768, 0xFFFFFFFF]),
                 st.integers(0, 0xFFFFFFFF))
flags = st.one_of(st.integers(0, 7), st.integers(0, 0xFFFF))


def descs(size: int, in_table: bool = False) -> st.SearchStrategy[list[tuple[int, int, int, int]]]:
    nexts = st.one_of(st.integers(0, size - 1), st.integers(0, size + 1), st.integers(0, 0xFFFF))
    plain = st.tuples(addrs, lens, flags, nexts)
    # Mostly in-range buffers and links, so the walk gets deep before it fails.
    sane = st.tuples(st.integers(0, FUZZ_MEM - 64), st.integers(0, 64), st.integers(0, 3), st.integers(0, size - 1))
    to_table = st.tuples(st.just(TABLE), st.integers(0, 20).map(lambda n: 16 * n), st.sampled_from([IND, IND | WRITE]),
                         nexts)
    entries = st.one_of(sane, sane, plain) if in_table else st.one_of(sane, sane, to_table, plain)
    return st.lists(entries, min_size=1, max_size=size)


def mostly(data: st.DataObject, sane: st.SearchStrategy[int], wild: st.SearchStrategy[int]) -> int:
    """One in ten draws from `wild`. (A one_of would not do: Hypothesis soon
    runs out of new small values and then explores the wide branch.)"""
    return data.draw(wild) if data.draw(st.integers(0, 9)) == 0 else data.draw(sane)


def _drain(mem: GuestMemory, q: Virtqueue) -> None:
    """Pop until empty or broken, checking each chain and using it as a device would."""
    for _ in range(q.size + 2):
        try:
            c = q.pop()
        except VirtqueueError:
            return
        if c is None:
            return
        check_chain(mem, c, q.size)
        c.read(mem, 64)
        c.write(mem, b"\xAA" * 64, offset=c.writable_len // 2)
        q.push(c.head, min(c.writable_len, 64))
        q.should_notify()


@FUZZ
@given(st.data(), st.sampled_from([1, 2, 4, 8, 16]), st.booleans(), st.booleans())
def test_fuzz_structured_rings(data, size, indirect, event_idx):
    mem = GuestMemory.from_bytearray(FUZZ_MEM)
    drv = FakeDriverQueue(mem, size, buffers=(0x4000, TABLE))
    q = drv.virtqueue(indirect=indirect, event_idx=event_idx)
    for i, d in enumerate(data.draw(descs(size))):
        drv.write_desc(i, *d)
    drv.write_table(data.draw(descs(16, in_table=True)), gpa=TABLE)
    for slot in range(size):
        drv.write_avail_entry(slot, mostly(data, st.integers(0, size - 1), st.integers(0, 0xFFFF)))
    drv.set_avail_idx(mostly(data, st.integers(1, size), st.integers(0, 0xFFFF)))
    drv.set_used_event(data.draw(st.integers(0, 0xFFFF)))
    _drain(mem, q)
    q.set_notification(True)
    q.pending()


@FUZZ
@given(st.sampled_from([1, 4, 16]), st.binary(min_size=16 * 16, max_size=16 * 16),
       st.binary(min_size=6 + 2 * 16, max_size=6 + 2 * 16), st.binary(max_size=256), st.booleans())
def test_fuzz_random_bytes(size, desc_bytes, avail_bytes, table_bytes, indirect):
    mem = GuestMemory.from_bytearray(FUZZ_MEM)
    drv = FakeDriverQueue(mem, size)
    q = drv.virtqueue(indirect=indirect, event_idx=True)
    dlen, alen, _ = ring_sizes(size)
    mem.write(drv.desc_addr, desc_bytes[:dlen])
    mem.write(drv.avail_addr, avail_bytes[:alen])
    mem.write(TABLE, table_bytes)
    _drain(mem, q)


@FUZZ
@given(st.builds(QueueState, st.one_of(st.sampled_from([1, 16, 32768]), st.integers(-2, 70000)),
                 addrs, addrs, addrs, st.integers(-2, 70000), st.integers(-2, 70000), st.booleans(), st.booleans(),
                 st.integers(-2, 70000), st.integers(0, 2)))
def test_fuzz_state(state):
    mem = GuestMemory.from_bytearray(FUZZ_MEM)
    try:
        q = Virtqueue.from_state(mem, state)
    except VirtqueueError:
        return
    assert q.state() == state
    _drain(mem, q)


def test_event_idx_idle_queue_asks_for_a_kick_on_the_next_buffer():
    """With event_idx the driver kicks only when it adds the buffer at
    avail_event: a device that drained its queue must publish where it
    stopped, or a Linux driver never kicks again."""
    from pyvirt.testing.virtio import FakeDriverQueue

    drv = FakeDriverQueue(GuestMemory.from_bytearray(1 << 20), size=8)
    q = drv.virtqueue(event_idx=True)
    avail_event_at = drv.used_addr + 4 + 8 * 8
    for n in range(1, 20):
        drv.add_chain([b"x"], [4])
        chain = q.pop()
        assert chain is not None
        assert q.pop() is None
        assert drv.mem.read_u16(avail_event_at) == n
        q.push(chain.head, 0)
        assert [head for head, _ in drv.used()] == [chain.head]
