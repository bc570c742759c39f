"""Harvesting a KVM dirty ring, over a plain buffer (no /dev/kvm)."""

from __future__ import annotations

import pytest

from pyvirt.kvm.dirty_ring import F_DIRTY, F_RESET, GFN, DirtyRing


def _push(buf: bytearray, entries: int, at: int, slot: int, offset: int) -> None:
    GFN.pack_into(buf, (at % entries) * GFN.size, F_DIRTY, slot, offset)


def test_harvest_takes_pushed_entries_in_order_and_marks_them_reset() -> None:
    buf = bytearray(8 * GFN.size)
    ring = DirtyRing(buf, 8)
    assert ring.harvest() == []
    for i, (slot, off) in enumerate([(0, 5), (1, 7), (0, 6)]):
        _push(buf, 8, i, slot, off)
    assert ring.harvest() == [(0, 5), (1, 7), (0, 6)]
    assert all(GFN.unpack_from(buf, i * GFN.size)[0] == F_RESET for i in range(3))
    assert ring.harvest() == []  # reset entries are not taken twice


def test_harvest_wraps_around_the_ring() -> None:
    buf = bytearray(4 * GFN.size)
    ring = DirtyRing(buf, 4)
    for i in range(3):
        _push(buf, 4, i, 0, i)
    assert len(ring.harvest()) == 3
    # KVM recycles entries after KVM_RESET_DIRTY_RINGS: the next ones wrap.
    for i in range(3, 7):
        _push(buf, 4, i, 0, i)
    assert ring.harvest() == [(0, 3), (0, 4), (0, 5), (0, 6)]
    assert ring.index == 7


@pytest.mark.parametrize("entries,size", [(0, 0), (3, 48), (8, 64)])
def test_bad_geometry_is_refused(entries: int, size: int) -> None:
    with pytest.raises(ValueError):
        DirtyRing(bytearray(size), entries)
