"""The user-space 8254 PIT: counting from a clock, latches, read-back, port 0x61, capped IRQ 0."""

import threading

from pyvirt.devices.bus import Bus, Window
from pyvirt.devices.legacy.pit import PIT_HZ, Pit, PitState
from pyvirt.testing.clock import FakeClock


def program(pit, channel, mode, count, access=3):
    pit.write(3, 1, (channel << 6) | (access << 4) | (mode << 1))
    if access in (1, 3):
        pit.write(channel, 1, count & 0xFF)
    if access in (2, 3):
        pit.write(channel, 1, count >> 8)


def read_word(pit, channel):
    lo = pit.read(channel, 1)
    return lo | (pit.read(channel, 1) << 8)


def test_counter_counts_down_with_the_clock():
    clock = FakeClock()
    pit = Pit(lambda: None, clock=clock)
    program(pit, 0, 2, 1193)  # 1 kHz rate generator
    clock.advance(0.0005)
    pit.write(3, 1, 0x00)  # latch channel 0
    assert read_word(pit, 0) == 1193 - int(0.0005 * PIT_HZ)
    clock.advance(0.01)  # periodic: wraps to the reload value
    assert 0 < read_word(pit, 0) <= 1193


def test_latch_holds_until_read_and_readback_status():
    clock = FakeClock()
    pit = Pit(lambda: None, clock=clock)
    program(pit, 2, 0, 0x4000)
    pit.write(3, 1, 0x80)  # latch channel 2
    first = read_word(pit, 2)
    clock.advance(0.001)
    assert first == 0x4000  # latched at the time of the command
    pit.write(3, 1, 0xE8)  # read-back: status only, channel 2
    assert pit.read(2, 1) == (3 << 4) | (0 << 1)  # access word, mode 0, output low


def test_speaker_port_gate_and_output():
    clock = FakeClock()
    pit = Pit(lambda: None, clock=clock)
    program(pit, 2, 0, 100)
    pit.speaker.write(0, 1, 1)
    assert pit.speaker.read(0, 1) & 0x20 == 0
    clock.advance(200 / PIT_HZ)
    assert pit.speaker.read(0, 1) & 0x20  # terminal count reached: OUT2 high
    assert pit.speaker.read(0, 1) & 0x10 != pit.speaker.read(0, 1) & 0x10  # refresh bit toggles


def test_irq0_rate_is_capped():
    fired = threading.Event()
    count = []

    def irq0():
        count.append(1)
        if len(count) >= 3:
            fired.set()

    pit = Pit(irq0, min_period=0.05)
    program(pit, 0, 2, 1193)  # asks for 1000 Hz
    stop = []
    t = threading.Thread(target=pit.run, args=(lambda: bool(stop),), daemon=True)
    import time

    start = time.monotonic()
    t.start()
    assert fired.wait(10)
    elapsed = time.monotonic() - start
    stop.append(1)
    assert elapsed >= 2 * 0.05 * 0.9  # at most one IRQ per 50 ms, not 1 per ms


def test_state_round_trip_and_validation():
    clock = FakeClock()
    a = Pit(lambda: None, clock=clock)
    program(a, 0, 3, 500)
    st = a.state()
    b = Pit(lambda: None, clock=clock)
    b.restore(st)
    assert b.state() == st
    import dataclasses

    import pytest

    with pytest.raises(ValueError):
        b.restore(dataclasses.replace(st, channels=st.channels[:2]))
    bad = ((9,) + st.channels[0][1:],) + st.channels[1:]
    with pytest.raises(ValueError):
        b.restore(PitState(channels=bad, speaker=0))


def test_window_shifts_offsets():
    class Rec:
        def __init__(self):
            self.seen = []

        def read(self, offset, size):
            return offset

        def write(self, offset, size, value):
            self.seen.append(offset)

    dev = Rec()
    bus = Bus("pio")
    bus.register(0x60, 1, dev)
    bus.register(0x64, 1, Window(dev, 4))
    bus.write(0x64, 1, 0xFE)
    assert dev.seen == [4] and bus.read(0x64, 1) == 4 and bus.read(0x60, 1) == 0


def test_hostile_accesses_do_not_raise():
    pit = Pit(lambda: None)
    for off in range(6):
        for size in (1, 2, 4, 3):
            pit.write(off, size, 0xFFFFFFFF)
            pit.read(off, size)
    for v in range(256):
        pit.write(3, 1, v)
        pit.read(0, 1)
