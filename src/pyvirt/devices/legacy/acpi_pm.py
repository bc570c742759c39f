"""ACPI fixed-hardware power management registers (PM1a event/control, PM timer).

The FADT points the guest at this 12-byte block at `PORT` (0x600):

    +0  PM1a_STS  16 bits, write 1 to clear (TMR, BM, GBL, PWRBTN, SLPBTN, RTC, WAK)
    +2  PM1a_EN   16 bits (TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN)
    +4  PM1a_CNT  16 bits: SCI_EN reads 1 (the platform is always in ACPI mode,
                  so there is no SMI_CMD port to switch it), SLP_TYP 12:10, SLP_EN 13
    +6  RESET_REG 8 bits: writing `RESET_VALUE` calls `on_reset` (the FADT's
                  RESET_REG can name it: SystemIO, 8 bits, PORT + 6)
    +8  PM_TMR    32-bit read-only 3.579545 MHz counter, 24 bits wide
                  (`TMR_VAL_EXT` False, so the FADT must not set that flag)

Setting SLP_EN with SLP_TYP = `SLP_TYP_S5` calls `on_poweroff`; the DSDT's
\\_S5 package must name that value. Other sleep states are not supported and
the write is ignored, so a guest trying S3 just carries on.

Every register can be accessed a byte at a time as well as at full width.
TMR_STS is set when bit 23 of the counter has toggled since it was last
cleared, worked out when a register is accessed; there is no timer thread, so
a guest that enables TMR_EN gets its SCI only on its next access here (Linux
does not use TMR_EN). `power_button()` presses the power button, which a
guest with ACPI handles as an orderly shutdown request.
"""

from __future__ import annotations

import math
import threading
import time

from ._common import VALID_SIZES, check_int, check_state_type, lazy_states, ones, register_slice

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..protocols import IrqLine
    from .states import AcpiPmState

__getattr__ = lazy_states(__name__, ("AcpiPmState",))

PORT = 0x600
LENGTH = 12
SCI_IRQ = 9
PM1_STS, PM1_EN, PM1_CNT, RESET_REG, PM_TMR = 0, 2, 4, 6, 8
RESET_VALUE = 0x01

STS_TMR, STS_BM, STS_GBL, STS_PWRBTN, STS_SLPBTN, STS_RTC, STS_WAK = (
    1 << 0, 1 << 4, 1 << 5, 1 << 8, 1 << 9, 1 << 10, 1 << 15)
STS_MASK = STS_TMR | STS_BM | STS_GBL | STS_PWRBTN | STS_SLPBTN | STS_RTC | STS_WAK
# Enable bits sit at the same positions as the status bits they gate.
EN_MASK = STS_TMR | STS_GBL | STS_PWRBTN | STS_SLPBTN | STS_RTC
CNT_SCI_EN, CNT_BM_RLD, CNT_SLP_EN = 1 << 0, 1 << 1, 1 << 13
SLP_TYP_SHIFT = 10
CNT_SLP_TYP = 7 << SLP_TYP_SHIFT
CNT_STORED = CNT_BM_RLD | CNT_SLP_TYP  # GBL_RLS and SLP_EN are write-only
SLP_TYP_S5 = 5

PM_TIMER_HZ = 3_579_545
TMR_VAL_EXT = False
TIMER_MASK = 0xFFFFFF
_TIMER_MSB_SHIFT = 23
_TICKS_LIMIT = 2**64 - 1


class AcpiPm:
    LENGTH = LENGTH
    # Registers and timer origin: power-on values from _reset, an AcpiPmState's from _load.
    _status: int
    _enable: int
    _control: int
    _t0: float
    _tick_base: int
    _high_water: int
    _tmr_epoch: int

    def __init__(self, on_poweroff: Callable[[], None], on_reset: Callable[[], None] | None = None,
                 sci: IrqLine | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._on_poweroff = on_poweroff
        self._on_reset = on_reset
        self._sci = sci
        self._sci_level = False
        self._clock = clock
        self._lock = threading.Lock()
        self._poweroffs = self._resets = 0
        self._reset()

    def read(self, offset: int, size: int) -> int:
        if size not in VALID_SIZES or not 0 <= offset < LENGTH:
            return ones(size)
        with self._lock:
            ticks = self._fold_timer()
            image = b"".join((self._status.to_bytes(2, "little"), self._enable.to_bytes(2, "little"),
                              (self._control | CNT_SCI_EN).to_bytes(2, "little"), bytes(2),
                              (ticks & TIMER_MASK).to_bytes(4, "little")))
            self._update_sci()
        data = image[offset:offset + size]
        return int.from_bytes(data + b"\xff" * (size - len(data)), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in VALID_SIZES or not 0 <= offset < LENGTH:
            return
        with self._lock:
            self._fold_timer()
            hit = register_slice(offset, size, value, PM1_STS, 2)
            if hit:
                self._status &= ~(hit[0] & hit[1])
            hit = register_slice(offset, size, value, PM1_EN, 2)
            if hit:
                self._enable = (self._enable & ~hit[1] | hit[0]) & EN_MASK
            hit = register_slice(offset, size, value, PM1_CNT, 2)
            if hit:
                self._write_control(*hit)
            hit = register_slice(offset, size, value, RESET_REG, 1)
            if hit and hit[0] == RESET_VALUE and self._on_reset is not None:
                self._resets += 1
            self._update_sci()
            poweroffs, resets, self._poweroffs, self._resets = self._poweroffs, self._resets, 0, 0
        for _ in range(poweroffs):
            self._on_poweroff()
        if self._on_reset is not None:
            for _ in range(resets):
                self._on_reset()

    def power_button(self) -> None:
        """Press the power button: the guest sees PWRBTN_STS (and an SCI if enabled)."""
        with self._lock:
            self._status |= STS_PWRBTN
            self._update_sci()

    def timer(self) -> int:
        """The PM timer's 24-bit value now, as the guest would read it."""
        with self._lock:
            return self._ticks() & TIMER_MASK

    def _write_control(self, bits: int, mask: int) -> None:
        self._control = (self._control & ~mask | bits & mask) & CNT_STORED
        slp_typ = (self._control & CNT_SLP_TYP) >> SLP_TYP_SHIFT
        if bits & mask & CNT_SLP_EN and slp_typ == SLP_TYP_S5:
            self._poweroffs += 1

    # -- timer -----------------------------------------------------------
    def _ticks(self) -> int:
        elapsed = (self._clock() - self._t0) * PM_TIMER_HZ
        ticks = self._tick_base + (math.floor(elapsed) if elapsed > 0 and math.isfinite(elapsed) else 0)
        # A clock that steps backwards must not move the counter back: guests
        # measure intervals with it.
        self._high_water = max(self._high_water, ticks)
        return self._high_water

    def _fold_timer(self) -> int:
        ticks = self._ticks()
        if ticks >> _TIMER_MSB_SHIFT != self._tmr_epoch:
            self._status |= STS_TMR
            self._tmr_epoch = ticks >> _TIMER_MSB_SHIFT
        return ticks

    def _update_sci(self, force: bool = False) -> None:
        if self._sci is None:
            return
        level = bool(self._status & self._enable)
        if level != self._sci_level or force:
            self._sci_level = level
            self._sci.set_level(level)

    # -- state -----------------------------------------------------------
    def state(self) -> AcpiPmState:
        from .states import AcpiPmState

        with self._lock:
            ticks = self._fold_timer()
            self._update_sci()  # the fold may have set TMR_STS; keep the line in step with the state
            return AcpiPmState(status=self._status, enable=self._enable, control=self._control,
                               timer_ticks=ticks & _TICKS_LIMIT)

    def restore(self, state: AcpiPmState) -> None:
        from .states import AcpiPmState

        check_state_type(state, AcpiPmState)
        for name, mask in (("status", STS_MASK), ("enable", EN_MASK), ("control", CNT_STORED)):
            value = check_int(f"acpi_pm {name}", getattr(state, name), 0, 0xFFFF)
            if value & ~mask:
                raise ValueError(f"acpi_pm {name} {value:#06x} has bits outside {mask:#06x}")
        check_int("acpi_pm timer_ticks", state.timer_ticks, 0, _TICKS_LIMIT)
        with self._lock:
            self._load(state)
            self._update_sci(force=True)

    def _reset(self) -> None:
        """The power-on values (AcpiPmState's defaults)."""
        self._set(status=0, enable=0, control=0, timer_ticks=0)

    def _load(self, s: AcpiPmState) -> None:
        self._set(s.status, s.enable, s.control, s.timer_ticks)

    def _set(self, status: int, enable: int, control: int, timer_ticks: int) -> None:
        self._status, self._enable, self._control = status, enable, control
        self._t0 = self._clock()
        self._tick_base = self._high_water = timer_ticks
        self._tmr_epoch = timer_ticks >> _TIMER_MSB_SHIFT
