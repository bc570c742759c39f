"""An 8254 programmable interval timer in user space, with a capped interrupt rate.

KVM has an in-kernel PIT, and pyvirt uses it on ordinary hosts. Where guest
kernel code is emulated (kvm_pvm) one timer interrupt costs the guest about
10 ms, so a 250 Hz tick leaves it no time for anything else and Linux stalls
in its timer code once it switches to one-shot mode. This model lets pyvirt
deliver IRQ 0 no more often than `min_period` seconds: the guest's jiffies
run slow, its clocksource (kvmclock/TSC) keeps true time.

Counters are computed from the host's monotonic clock at 1.193182 MHz, so
polling loops (calibration, udelay) see a counter that really counts. Ports:
0x40-0x42 counters, 0x43 control word; `speaker` is the port-0x61 register
(channel 2 gate and output).
"""

from __future__ import annotations

import threading
import time
from ._common import VALID_SIZES, lazy_states, ones

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from .states import PitState

__getattr__ = lazy_states(__name__, ("PitState",))

PIT_HZ = 1_193_182
BASE = 0x40
LENGTH = 4
SPEAKER_PORT = 0x61

# access modes in the control word (bits 5:4)
LATCH, LOBYTE, HIBYTE, WORD = 0, 1, 2, 3


class _Channel:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.mode = 0
        self.access = WORD
        self.reload = 0x10000
        self.start = clock()
        self.latched: int | None = None
        self.status: int | None = None
        self.write_hi = False  # next WORD write is the high byte
        self.read_hi = False
        self.pending_lo = 0
        self.armed = False  # a count was written: the channel counts

    def ticks(self) -> int:
        return int((self.clock() - self.start) * PIT_HZ)

    def count(self) -> int:
        if not self.armed:
            return 0
        t = self.ticks()
        if self.mode in (2, 3):
            return self.reload - (t % self.reload)
        return (self.reload - t) & 0xFFFF  # modes 0/1/4/5 count down and wrap

    def output(self) -> bool:
        if not self.armed:
            return False
        t = self.ticks()
        if self.mode in (2, 3):
            return (t % self.reload) < self.reload // 2 if self.mode == 3 else (t % self.reload) != self.reload - 1
        return t >= self.reload if self.mode == 0 else t != self.reload

    def set_reload(self, value: int) -> None:
        self.reload = value or 0x10000
        self.start = self.clock()
        self.armed = True

    def next_deadline(self, now: float) -> float | None:
        """When channel 0's output next rises (the IRQ 0 edge)."""
        if not self.armed:
            return None
        period = self.reload / PIT_HZ
        if self.mode in (2, 3):
            k = int((now - self.start) / period) + 1
            return self.start + k * period
        end = self.start + period
        return end if end > now else None


class Pit:
    LENGTH = LENGTH

    def __init__(self, irq0: Callable[[], None], *, min_period: float = 0.02,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._irq0 = irq0
        self.min_period = min_period
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.channels = [_Channel(clock) for _ in range(3)]
        self._speaker = 0
        self._refresh = 0
        self._reprogrammed = False  # channel 0 got a new count: recompute its next edge
        self.interrupts = 0
        self.speaker = _SpeakerPort(self)

    # --- ports 0x40-0x43 ----------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if size not in VALID_SIZES or offset > 2:
            return ones(size)
        with self._lock:
            ch = self.channels[offset]
            if ch.status is not None:
                v, ch.status = ch.status, None
                return v
            value = ch.latched if ch.latched is not None else ch.count()
            if ch.access == LOBYTE:
                ch.latched = None
                return value & 0xFF
            if ch.access == HIBYTE:
                ch.latched = None
                return (value >> 8) & 0xFF
            byte = (value >> 8) & 0xFF if ch.read_hi else value & 0xFF
            if ch.read_hi:
                ch.latched = None
            ch.read_hi = not ch.read_hi
            return byte

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in VALID_SIZES or offset > 3:
            return
        value &= 0xFF
        with self._lock:
            if offset == 3:
                self._control(value)
            else:
                self._load(self.channels[offset], offset, value)
            self._changed.notify_all()

    def _control(self, value: int) -> None:
        sel = value >> 6
        if sel == 3:  # read-back: bits 3:1 select channels, bit 5 = don't latch count, bit 4 = don't latch status
            for i in range(3):
                if value & (2 << i):
                    ch = self.channels[i]
                    if not value & 0x20 and ch.latched is None:
                        ch.latched = ch.count()
                    if not value & 0x10:
                        ch.status = (int(ch.output()) << 7) | (ch.access << 4) | (ch.mode << 1)
            return
        ch = self.channels[sel]
        access = (value >> 4) & 3
        if access == LATCH:
            if ch.latched is None:
                ch.latched = ch.count()
            return
        ch.access, ch.mode = access, (value >> 1) & 7
        if ch.mode > 5:
            ch.mode -= 4  # 6 and 7 alias 2 and 3
        ch.write_hi = ch.read_hi = False
        ch.latched = None
        ch.armed = False  # mode 0 output goes low; counting waits for the new count
        if sel == 0:
            self._reprogrammed = True

    def _load(self, ch: _Channel, index: int, byte: int) -> None:
        if ch.access == LOBYTE:
            ch.set_reload(byte)
        elif ch.access == HIBYTE:
            ch.set_reload(byte << 8)
        elif not ch.write_hi:
            ch.pending_lo, ch.write_hi = byte, True
            return
        else:
            ch.write_hi = False
            ch.set_reload(ch.pending_lo | (byte << 8))
        if index == 0:
            self._reprogrammed = True

    # --- IRQ 0 --------------------------------------------------------------
    def run(self, stopping: Callable[[], bool]) -> None:
        """Deliver channel 0's interrupts until `stopping()`; a thread of its own."""
        last = 0.0
        next_due: float | None = None
        with self._lock:
            while not stopping():
                now = self._clock()
                ch = self.channels[0]
                if self._reprogrammed:
                    self._reprogrammed = False
                    next_due = ch.next_deadline(now)
                if next_due is None:
                    self._changed.wait(0.1)
                    continue
                due = max(next_due, last + self.min_period)
                if due > now:
                    self._changed.wait(due - now)
                    continue
                last = now
                # periodic modes: the next edge after now (missed ones are dropped);
                # one-shot modes fire once per count written
                next_due = ch.next_deadline(now) if ch.mode in (2, 3) else None
                self.interrupts += 1
                self._lock.release()
                try:
                    self._irq0()
                finally:
                    self._lock.acquire()

    def state(self) -> PitState:
        from .states import PitState

        with self._lock:
            now = self._clock()
            return PitState(
                channels=tuple((c.mode, c.access, c.reload, int((now - c.start) * PIT_HZ),
                                -1 if c.latched is None else c.latched, int(c.write_hi), int(c.read_hi), int(c.armed))
                               for c in self.channels),
                speaker=self._speaker,
            )

    def restore(self, state: PitState) -> None:
        from .states import PitState

        if not isinstance(state, PitState) or state.version != 1 or len(state.channels) != 3:
            raise ValueError("not a version-1 PIT state with 3 channels")
        for mode, access, reload, _elapsed, latched, *_ in state.channels:
            if not (0 <= mode <= 5 and 0 <= access <= 3 and 1 <= reload <= 0x10000 and -1 <= latched <= 0xFFFF):
                raise ValueError(f"bad PIT channel state {(mode, access, reload, latched)}")
        with self._lock:
            now = self._clock()
            for c, (mode, access, reload, elapsed, latched, whi, rhi, armed) in zip(self.channels, state.channels):
                c.mode, c.access, c.reload = mode, access, reload
                c.start = now - elapsed / PIT_HZ
                c.latched = None if latched < 0 else latched
                c.write_hi, c.read_hi, c.armed = bool(whi), bool(rhi), bool(armed)
            self._speaker = state.speaker & 0x0F
            self._reprogrammed = True
            self._changed.notify_all()


class _SpeakerPort:
    """Port 0x61: bit 0 gates channel 2, bit 1 drives the speaker; reads show
    channel 2's output (bit 5) and a refresh bit that toggles (bit 4), which
    old delay loops poll."""

    def __init__(self, pit: Pit) -> None:
        self.pit = pit

    def read(self, offset: int, size: int) -> int:
        p = self.pit
        with p._lock:
            p._refresh ^= 0x10
            return (p._speaker & 0x0F) | p._refresh | (0x20 if p.channels[2].output() else 0)

    def write(self, offset: int, size: int, value: int) -> None:
        p = self.pit
        with p._lock:
            gate_rising = not p._speaker & 1 and value & 1
            p._speaker = value & 0x0F
            if gate_rising and p.channels[2].armed:
                p.channels[2].start = p._clock()  # a rising gate restarts modes 1 and 5 (and 0's count)
