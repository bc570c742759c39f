"""Register-level tests of the ACPI PM1a / PM timer block."""

from __future__ import annotations

import pytest

from pyvirt.devices.legacy import acpi_pm
from pyvirt.devices.legacy.acpi_pm import PM_TIMER_HZ, SLP_TYP_S5, TMR_VAL_EXT, AcpiPm
from pyvirt.testing import FakeClock, FakeIrq

STS, EN, CNT, RESET, TMR = 0, 2, 4, 6, 8


class Pm:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.clock = FakeClock(1000.0)
        self.sci = FakeIrq()
        self.dev = AcpiPm(lambda: self.events.append("off"), lambda: self.events.append("reset"),
                          sci=self.sci, clock=self.clock)


def test_constants() -> None:
    assert SLP_TYP_S5 == 5
    assert TMR_VAL_EXT is False
    assert acpi_pm.LENGTH == 12


def test_sci_enabled_and_write_only_bits_read_zero() -> None:
    pm = Pm()
    assert pm.dev.read(CNT, 2) == 0x0001
    pm.dev.write(CNT, 2, 0x0000)  # SCI_EN cannot be cleared: there is no legacy mode
    assert pm.dev.read(CNT, 2) & 1
    pm.dev.write(CNT, 2, (3 << 10) | 0x0002 | 0x0004)
    assert pm.dev.read(CNT, 2) == (3 << 10) | 0x0003  # SLP_TYP and BM_RLD kept, GBL_RLS not


@pytest.mark.parametrize("typ", [0, 1, 3, 4, 6, 7])
def test_other_sleep_types_do_nothing(typ: int) -> None:
    pm = Pm()
    pm.dev.write(CNT, 2, (typ << 10) | (1 << 13))
    assert pm.events == []


def test_s5_powers_off_only_with_slp_en() -> None:
    pm = Pm()
    pm.dev.write(CNT, 2, SLP_TYP_S5 << 10)
    assert pm.events == []
    pm.dev.write(CNT, 2, (SLP_TYP_S5 << 10) | (1 << 13))
    assert pm.events == ["off"]
    assert not pm.dev.read(CNT, 2) & (1 << 13)


def test_s5_by_byte_write_of_the_high_byte() -> None:
    pm = Pm()
    pm.dev.write(CNT + 1, 1, ((SLP_TYP_S5 << 10) | (1 << 13)) >> 8)
    assert pm.events == ["off"]


def test_s5_by_32_bit_write_spanning_cnt_and_reset() -> None:
    pm = Pm()
    pm.dev.write(CNT, 4, (SLP_TYP_S5 << 10) | (1 << 13))
    assert pm.events == ["off"]  # the zero byte at +6 is not the reset value


def test_reset_register() -> None:
    pm = Pm()
    pm.dev.write(RESET, 1, 0x02)
    assert pm.events == []
    pm.dev.write(RESET, 1, acpi_pm.RESET_VALUE)
    assert pm.events == ["reset"]
    assert pm.dev.read(RESET, 1) == 0


def test_timer_counts_at_3_579545_mhz_in_24_bits() -> None:
    pm = Pm()
    t0 = pm.dev.read(TMR, 4)
    pm.clock.advance(1.0)
    t1 = pm.dev.read(TMR, 4)
    assert (t1 - t0) & 0xFFFFFF == PM_TIMER_HZ & 0xFFFFFF
    for _ in range(20):
        pm.clock.advance(0.7)
        assert pm.dev.read(TMR, 4) < 1 << 24
    pm.dev.write(TMR, 4, 0)  # read-only
    assert pm.dev.read(TMR, 4) == pm.dev.timer()


def test_timer_is_monotonic_until_it_wraps() -> None:
    pm = Pm()
    last = pm.dev.read(TMR, 4)
    for _ in range(1000):
        pm.clock.advance(1e-5)
        now = pm.dev.read(TMR, 4)
        assert now >= last
        last = now
    pm.clock.advance(-5)  # a host clock stepping back does not move the counter back
    assert pm.dev.read(TMR, 4) >= last


def test_timer_by_bytes_matches_dword() -> None:
    pm = Pm()
    pm.clock.advance(1.234567)
    whole = pm.dev.read(TMR, 4)
    assert whole
    assert sum(pm.dev.read(TMR + i, 1) << (8 * i) for i in range(4)) == whole
    assert pm.dev.read(TMR, 2) | pm.dev.read(TMR + 2, 2) << 16 == whole


def test_tmr_sts_on_bit_23_toggle_and_write_one_to_clear() -> None:
    pm = Pm()
    assert pm.dev.read(STS, 2) & 1 == 0
    pm.clock.advance((1 << 23) / PM_TIMER_HZ + 1e-3)
    assert pm.dev.read(STS, 2) & 1
    pm.dev.write(STS, 2, 0xFFFE)  # writing 0 to TMR_STS leaves it
    assert pm.dev.read(STS, 2) & 1
    pm.dev.write(STS, 2, 0x0001)
    assert pm.dev.read(STS, 2) & 1 == 0


def test_power_button_raises_sci_only_when_enabled() -> None:
    pm = Pm()
    pm.dev.power_button()
    assert pm.dev.read(STS, 2) & 0x100
    assert not pm.sci.level
    pm.dev.write(EN, 2, 0x100)
    assert pm.sci.level
    assert pm.dev.read(EN, 2) == 0x100
    pm.dev.write(STS + 1, 1, 0x01)  # byte-wise write-1-to-clear of PWRBTN_STS
    assert not pm.sci.level
    assert pm.dev.read(STS, 2) & 0x100 == 0


def test_enable_register_keeps_only_defined_bits() -> None:
    pm = Pm()
    pm.dev.write(EN, 2, 0xFFFF)
    assert pm.dev.read(EN, 2) == 0x0721
    pm.dev.write(EN, 1, 0x00)
    assert pm.dev.read(EN, 2) == 0x0700


def test_out_of_range_reads_float() -> None:
    pm = Pm()
    assert pm.dev.read(10, 4) >> 16 == 0xFFFF  # the last two timer bytes, then nothing
    assert pm.dev.read(12, 1) == 0xFF
