"""The MC146818-style CMOS real-time clock and its 128 bytes of RAM.

Port 0x70 (offset 0) selects a register (bit 7, the NMI mask on real boards,
is ignored: KVM has no NMI line from here); port 0x71 (offset 1) reads and
writes it. A 16-bit write to 0x70 sets index and data in one go, as on ISA.

The time registers (0x00 sec, 0x02 min, 0x04 hour, 0x06 weekday, 0x07 day,
0x08 month, 0x09 year, 0x32 century) are computed from `clock()` + an offset
in UTC whenever they are read, honouring register B's binary (bit 2) and
24-hour (bit 1) modes. A guest that sets the clock moves the offset:
either register by register, or the usual way with register B's SET bit,
which freezes the time registers as plain RAM until SET is cleared. A date
that does not exist (31 February) is not accepted and the clock keeps going.
The weekday is always derived from the date.

Register A's update-in-progress bit is set for the last 244 us of every
second, as the datasheet times it (never while SET holds the clock), so a
guest that waits for UIP to fall before reading sees a consistent time.
There are no interrupts (no IRQ 8): no periodic, alarm or update-ended
interrupts, register C reads 0, and the alarm bytes are plain RAM. Register
D reads 0x80 (battery good).

`set_memory_size` fills the bytes firmware such as SeaBIOS reads, as QEMU
does: 0x15-0x16 base memory (640 KiB), 0x17-0x18 and 0x30-0x31 KiB above
1 MiB (capped at 0xffff), 0x34-0x35 64 KiB units from 16 MiB to the MMIO
hole, 0x5b-0x5d 64 KiB units above 4 GiB.
"""

from __future__ import annotations

import math
import threading
import time

from ...arch.x86.layout import low_ram_end
from ._common import VALID_SIZES, check_bytes, check_int, check_state_type, lazy_states, ones, read_bytes, write_bytes

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from .states import RtcState

__getattr__ = lazy_states(__name__, ("RtcState",))

PORT = 0x70
LENGTH = 2
SEC, MIN, HOUR, WEEKDAY, DAY, MONTH, YEAR, CENTURY = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
TIME_REGS = (SEC, MIN, HOUR, WEEKDAY, DAY, MONTH, YEAR, CENTURY)
A_UIP = 0x80
A_DEFAULT = 0x26  # 32.768 kHz time base, 1024 Hz rate
B_SET, B_BINARY, B_24H = 0x80, 0x04, 0x02
B_DEFAULT = B_24H
D_VRT = 0x80
UIP_WINDOW = 244e-6  # the update cycle starts this long before the second ticks
_OFFSET_LIMIT_NS = 10_000 * 366 * 86400 * 10**9  # beyond any year 1..9999 a guest can set
CMOS_POWER_ON = bytes(REG_A) + bytes([A_DEFAULT, B_DEFAULT, 0, D_VRT]) + bytes(128 - REG_A - 4)


class Rtc:
    LENGTH = LENGTH
    _index: int
    _cmos: bytearray
    _offset_ns: int

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._index = 0
        self._cmos = bytearray(CMOS_POWER_ON)
        self._offset_ns = 0  # guest time minus host time (clock())

    def read(self, offset: int, size: int) -> int:
        if size not in VALID_SIZES or not 0 <= offset < LENGTH:
            return ones(size)
        with self._lock:
            return read_bytes(self._read_port, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in VALID_SIZES or not 0 <= offset < LENGTH:
            return
        with self._lock:
            write_bytes(self._write_port, offset, size, value)

    def set_memory_size(self, ram_size: int) -> None:
        """Record the guest's RAM size in the CMOS bytes firmware reads."""
        below_4g = low_ram_end(ram_size)
        above_4g = max(0, ram_size - below_4g)
        ext_kib = min(0xFFFF, max(0, below_4g // 1024 - 1024))  # above 1 MiB, in KiB
        above_16m = min(0xFFFF, max(0, (below_4g - (16 << 20)) >> 16))  # in 64 KiB units
        high = min(0xFFFFFF, above_4g >> 16)
        with self._lock:
            for reg, value, width in ((0x15, 640, 2), (0x17, ext_kib, 2), (0x30, ext_kib, 2),
                                      (0x34, above_16m, 2), (0x5B, high, 3)):
                self._cmos[reg:reg + width] = value.to_bytes(width, "little")

    # -- ports -----------------------------------------------------------
    def _read_port(self, offset: int) -> int:
        if offset != 1:
            return 0xFF  # the index register is write-only
        reg = self._index
        if reg in TIME_REGS and not self._cmos[REG_B] & B_SET:
            return self._time_fields(self._guest_time())[reg]
        if reg == REG_A:
            # No update cycles run while SET holds the clock.
            updating = not self._cmos[REG_B] & B_SET and self._guest_time() % 1.0 >= 1.0 - UIP_WINDOW
            return self._cmos[REG_A] | (A_UIP if updating else 0)
        if reg == REG_C:
            return 0
        if reg == REG_D:
            return D_VRT
        return self._cmos[reg]

    def _write_port(self, offset: int, value: int) -> None:
        if offset == 0:
            self._index = value & 0x7F
            return
        reg = self._index
        if reg in (REG_C, REG_D):
            return  # read-only
        if reg == REG_A:
            self._cmos[REG_A] = value & 0x7F
        elif reg == REG_B:
            self._write_reg_b(value)
        elif reg in TIME_REGS and not self._cmos[REG_B] & B_SET:
            now = self._guest_time()
            fields = self._time_fields(now)
            fields[reg] = value
            self._set_time(fields, now % 1.0)
        else:
            self._cmos[reg] = value

    def _write_reg_b(self, value: int) -> None:
        old = self._cmos[REG_B]
        if value & B_SET and not old & B_SET:
            # Freeze: the time registers become RAM holding the current time.
            for reg, field in self._time_fields(self._guest_time()).items():
                self._cmos[reg] = field
        elif old & B_SET and not value & B_SET:
            # Decode in the mode the fields were written in (a guest may switch
            # mode in the same write that releases SET); counting restarts at
            # a whole second, as the divider chain does.
            self._set_time({reg: self._cmos[reg] for reg in TIME_REGS}, 0.0)
        self._cmos[REG_B] = value

    # -- time ------------------------------------------------------------
    def _guest_time(self) -> float:
        return self._clock() + self._offset_ns / 1e9

    def _encode(self, value: int) -> int:
        if self._cmos[REG_B] & B_BINARY:
            return value & 0xFF
        return ((value // 10 % 10) << 4) | (value % 10)

    def _decode(self, value: int) -> int:
        if self._cmos[REG_B] & B_BINARY:
            return value
        return (value >> 4) * 10 + (value & 0x0F)

    def _time_fields(self, t: float) -> dict[int, int]:
        try:
            tm = time.gmtime(math.floor(t))
        except (OverflowError, OSError, ValueError):
            tm = time.gmtime(0)  # a host clock this broken has no right answer
        hour = tm.tm_hour
        if self._cmos[REG_B] & B_24H:
            hour_reg = self._encode(hour)
        else:
            hour_reg = self._encode(hour % 12 or 12) | (0x80 if hour >= 12 else 0)
        return {
            SEC: self._encode(tm.tm_sec), MIN: self._encode(tm.tm_min), HOUR: hour_reg,
            WEEKDAY: self._encode((tm.tm_wday + 1) % 7 + 1),  # Sunday is 1
            DAY: self._encode(tm.tm_mday), MONTH: self._encode(tm.tm_mon),
            YEAR: self._encode(tm.tm_year % 100), CENTURY: self._encode(tm.tm_year // 100),
        }

    def _set_time(self, fields: dict[int, int], frac: float) -> None:
        import calendar  # (with datetime) only once a guest sets the clock

        hour_reg = fields[HOUR]
        if self._cmos[REG_B] & B_24H:
            hour = self._decode(hour_reg)
        else:
            hour = self._decode(hour_reg & 0x7F) % 12 + (12 if hour_reg & 0x80 else 0)
        sec, minute = self._decode(fields[SEC]), self._decode(fields[MIN])
        day, month = self._decode(fields[DAY]), self._decode(fields[MONTH])
        year = self._decode(fields[CENTURY]) * 100 + self._decode(fields[YEAR])
        if not (1 <= year <= 9999 and 1 <= month <= 12 and sec < 60 and minute < 60 and hour < 24):
            return
        if not 1 <= day <= calendar.monthrange(year, month)[1]:
            return
        epoch = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0))
        self._offset_ns = round((epoch + frac - self._clock()) * 1e9)

    # -- state -----------------------------------------------------------
    def state(self) -> RtcState:
        from .states import RtcState

        with self._lock:
            return RtcState(index=self._index, cmos=bytes(self._cmos), offset_ns=self._offset_ns)

    def restore(self, state: RtcState) -> None:
        from .states import RtcState

        check_state_type(state, RtcState)
        check_int("rtc index", state.index, 0, 0x7F)
        cmos = check_bytes("rtc cmos", state.cmos, 128, exact=True)
        check_int("rtc offset_ns", state.offset_ns, -_OFFSET_LIMIT_NS, _OFFSET_LIMIT_NS)
        if cmos[REG_A] & A_UIP:
            raise ValueError("rtc register A has UIP set; it is computed, never stored")
        with self._lock:
            self._load(state)

    def _load(self, s: RtcState) -> None:
        self._index = s.index
        self._cmos = bytearray(s.cmos)
        self._offset_ns = s.offset_ns
