"""Register-level tests of the CMOS RTC model against a fixed fake clock."""

from __future__ import annotations

import calendar

import pytest

from pyvirt.devices.legacy.rtc import Rtc
from pyvirt.testing import FakeClock

# Thursday 2024-02-29 12:34:56 UTC
NOW = calendar.timegm((2024, 2, 29, 12, 34, 56, 0, 0, 0))


def make(now: float = NOW) -> tuple[Rtc, FakeClock]:
    clock = FakeClock(now)
    return Rtc(clock=clock), clock


def get(rtc: Rtc, reg: int) -> int:
    rtc.write(0, 1, reg)
    return rtc.read(1, 1)


def put(rtc: Rtc, reg: int, value: int) -> None:
    rtc.write(0, 1, reg)
    rtc.write(1, 1, value)


def clock_regs(rtc: Rtc) -> tuple[int, ...]:
    return tuple(get(rtc, r) for r in (0x32, 0x09, 0x08, 0x07, 0x06, 0x04, 0x02, 0x00))


def test_defaults_bcd_24h() -> None:
    rtc, _ = make()
    assert get(rtc, 0x0A) == 0x26
    assert get(rtc, 0x0B) == 0x02
    assert get(rtc, 0x0C) == 0x00
    assert get(rtc, 0x0D) == 0x80
    # century, year, month, day, weekday (Thursday = 5), hour, min, sec
    assert clock_regs(rtc) == (0x20, 0x24, 0x02, 0x29, 0x05, 0x12, 0x34, 0x56)


def test_binary_mode() -> None:
    rtc, _ = make()
    put(rtc, 0x0B, 0x06)
    assert clock_regs(rtc) == (20, 24, 2, 29, 5, 12, 34, 56)


@pytest.mark.parametrize("hms,reg", [((0, 15, 0), 0x12), ((11, 0, 0), 0x11), ((12, 0, 0), 0x92),
                                     ((13, 5, 0), 0x81), ((23, 59, 59), 0x91)])
def test_twelve_hour_mode(hms: tuple[int, int, int], reg: int) -> None:
    rtc, _ = make(calendar.timegm((2024, 2, 29, *hms, 0, 0, 0)))
    put(rtc, 0x0B, 0x00)
    assert get(rtc, 0x04) == reg


def test_time_follows_the_clock_and_rolls_over() -> None:
    rtc, clock = make()
    clock.advance(1.5)
    assert get(rtc, 0x00) == 0x57
    clock.set(calendar.timegm((2099, 12, 31, 23, 59, 59, 0, 0, 0)))
    clock.advance(1)
    assert clock_regs(rtc) == (0x21, 0x00, 0x01, 0x01, 0x06, 0x00, 0x00, 0x00)


def test_guest_write_of_one_register_moves_the_offset() -> None:
    rtc, clock = make()
    put(rtc, 0x00, 0x00)  # seconds = 0
    put(rtc, 0x04, 0x08)  # hour = 8
    assert clock_regs(rtc) == (0x20, 0x24, 0x02, 0x29, 0x05, 0x08, 0x34, 0x00)
    clock.advance(65)
    assert (get(rtc, 0x02), get(rtc, 0x00)) == (0x35, 0x05)
    assert rtc.state().offset_ns == (-4 * 3600 - 56) * 10**9


def test_set_bit_freezes_then_applies_the_new_time() -> None:
    rtc, clock = make()
    put(rtc, 0x0B, 0x82)  # SET, 24h, BCD
    for reg, value in ((0x32, 0x19), (0x09, 0x99), (0x08, 0x12), (0x07, 0x31), (0x04, 0x23),
                       (0x02, 0x59), (0x00, 0x58)):
        put(rtc, reg, value)
    clock.advance(10)  # frozen while SET
    assert get(rtc, 0x00) == 0x58
    assert not get(rtc, 0x0A) & 0x80
    put(rtc, 0x0B, 0x02)
    clock.advance(3)
    # 1999-12-31 23:59:58 + 3 s = Saturday 2000-01-01 00:00:01
    assert clock_regs(rtc) == (0x20, 0x00, 0x01, 0x01, 0x07, 0x00, 0x00, 0x01)


def test_set_in_binary_twelve_hour_mode() -> None:
    rtc, _ = make()
    put(rtc, 0x0B, 0x84)  # SET, binary, 12h
    for reg, value in ((0x32, 20), (0x09, 30), (0x08, 6), (0x07, 15), (0x04, 0x80 | 3), (0x02, 4),
                       (0x00, 5)):
        put(rtc, reg, value)
    put(rtc, 0x0B, 0x06)  # binary, 24h
    assert clock_regs(rtc) == (20, 30, 6, 15, 7, 15, 4, 5)  # 2030-06-15 is a Saturday


def test_impossible_date_is_ignored() -> None:
    rtc, _ = make()
    put(rtc, 0x08, 0x04)  # April 29 exists
    put(rtc, 0x07, 0x31)  # April 31 does not
    assert (get(rtc, 0x08), get(rtc, 0x07)) == (0x04, 0x29)
    put(rtc, 0x00, 0x99)  # invalid BCD / out of range
    assert get(rtc, 0x00) == 0x56


def test_update_in_progress_just_before_the_second() -> None:
    rtc, clock = make(NOW + 0.5)
    assert get(rtc, 0x0A) == 0x26
    clock.set(NOW + 0.9999)
    assert get(rtc, 0x0A) == 0xA6
    put(rtc, 0x0A, 0xA6)  # UIP is read-only
    assert rtc.state().cmos[0x0A] == 0x26


def test_nmi_bit_is_ignored_and_index_port_is_write_only() -> None:
    rtc, _ = make()
    rtc.write(0, 1, 0x80 | 0x00)
    assert rtc.read(1, 1) == 0x56
    assert rtc.read(0, 1) == 0xFF


def test_cmos_ram_and_word_write_sets_index_and_data() -> None:
    rtc, _ = make()
    rtc.write(0, 2, 0xAB40)  # index 0x40, data 0xab in one 16-bit write
    assert get(rtc, 0x40) == 0xAB
    put(rtc, 0x7F, 0x11)
    assert get(rtc, 0x7F) == 0x11
    put(rtc, 0x0D, 0x00)  # read-only
    assert get(rtc, 0x0D) == 0x80


def test_memory_size_registers() -> None:
    rtc, _ = make()
    rtc.set_memory_size(8 << 30)
    cmos = rtc.state().cmos
    assert cmos[0x15:0x17] == (640).to_bytes(2, "little")
    assert cmos[0x30:0x32] == b"\xff\xff"  # capped: more than 64 MiB
    assert int.from_bytes(cmos[0x34:0x36], "little") == ((3 << 30) - (16 << 20)) >> 16
    assert int.from_bytes(cmos[0x5B:0x5E], "little") == (5 << 30) >> 16
    rtc.set_memory_size(32 << 20)
    cmos = rtc.state().cmos
    assert int.from_bytes(cmos[0x30:0x32], "little") == 31 * 1024
    assert int.from_bytes(cmos[0x34:0x36], "little") == 256
    assert cmos[0x5B:0x5E] == bytes(3)
