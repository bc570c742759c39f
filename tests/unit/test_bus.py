"""Bus dispatch: ranges, offsets, overlaps, unclaimed accesses."""

import pytest

from pyvirt.devices.bus import Bus, BusError


class Recorder:
    def __init__(self):
        self.writes = []

    def read(self, offset, size):
        return 0x1000 + offset

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


def test_dispatch_with_offsets():
    bus = Bus("pio")
    a, b = Recorder(), Recorder()
    bus.register(0x3F8, 8, a, "uart")
    bus.register(0x60, 5, b, "kbd")
    assert bus.read(0x3FA, 1) == (0x1002 & 0xFF)
    bus.write(0x64, 1, 0xFE)
    assert b.writes == [(4, 1, 0xFE)]
    assert bus.read(0x3F8 + 7, 2) == 0x1007
    assert [r.name for r in bus.ranges()] == ["kbd", "uart"]


def test_unclaimed_reads_all_ones_and_counts():
    bus = Bus("pio")
    assert bus.read(0x1234, 1) == 0xFF
    assert bus.read(0x1234, 2) == 0xFFFF
    assert bus.read(0x1234, 4) == 0xFFFFFFFF
    bus.write(0x1234, 4, 7)
    assert bus.unclaimed_reads == 3 and bus.unclaimed_writes == 1


@pytest.mark.parametrize("base,length", [(0x3F8, 1), (0x3F0, 9), (0x3FF, 4), (0x3F0, 0x100)])
def test_overlap_rejected(base, length):
    bus = Bus("pio")
    bus.register(0x3F8, 8, Recorder(), "uart")
    with pytest.raises(BusError, match="overlaps"):
        bus.register(base, length, Recorder(), "other")


def test_adjacent_ranges_and_unregister():
    bus = Bus("mmio")
    bus.register(0x1000, 0x100, Recorder(), "a")
    bus.register(0x1100, 0x100, Recorder(), "b")
    assert bus.find(0x10FF).name == "a" and bus.find(0x1100).name == "b"
    bus.unregister(0x1000)
    assert bus.find(0x1000) is None
    with pytest.raises(BusError):
        bus.register(0x2000, 0, Recorder())
