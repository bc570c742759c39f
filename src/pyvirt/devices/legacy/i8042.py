"""The i8042 keyboard controller: mostly here so guests can reset the machine.

The device covers ports 0x60-0x64 (`PORT`, `LENGTH` 5): offset 0 is the
data port, offset 4 the command (write) / status (read) port. Offsets 1-3
(ports 0x61-0x63) read all-ones: port 0x61 belongs to KVM's in-kernel PIT
speaker model and never reaches us.

Modelled from the IBM PC/AT technical reference and the 8042 command set:

* Controller commands: 0x20-0x3f read and 0x60-0x7f write internal RAM
  (RAM byte 0 is the command byte), 0xa7/0xa8 disable/enable the AUX port,
  0xa9/0xab interface tests (0x00 = ok), 0xaa self-test (0x55), 0xad/0xae
  disable/enable the keyboard, 0xc0 input port, 0xd0/0xd1 read/write output
  port (bit 0 clear resets the CPU), 0xd2/0xd3 echo a byte as keyboard/AUX
  data, 0xd4 send to the mouse (none is attached: the byte is dropped), and
  0xf0-0xff pulse output lines, where a low bit 0 (0xfe) resets the CPU.
* A keyboard that answers its command set (reset with 0xfa 0xaa, identify as
  MF2 with 0xab 0x41 translated or 0xab 0x83 raw, echo, LEDs, typematic,
  scan-code set, enable/disable) but never sends keystrokes.
* Status bit 2 (system flag) mirrors command-byte bit 2, which starts set as
  firmware leaves it after POST; OBF and AUX-OBF follow the output queue.
* With `irq` given, IRQ 1 is held high while keyboard data waits and the
  command byte enables the keyboard interrupt. There is no AUX interrupt, so
  Linux's AUX IRQ test fails and it does not look for a mouse.

The output queue holds `QUEUE_LIMIT` bytes; a guest spamming commands loses
the excess rather than growing host memory.
"""

from __future__ import annotations

import threading

from ._common import VALID_SIZES, check_bool, check_bytes, check_int, check_state_type, lazy_states, ones

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..protocols import IrqLine
    from .states import I8042State

__getattr__ = lazy_states(__name__, ("I8042State",))

PORT = 0x60
LENGTH = 5
KBD_IRQ = 1
QUEUE_LIMIT = 16

STS_OBF, STS_SYS, STS_CMD, STS_UNLOCKED, STS_AUX_OBF = 0x01, 0x04, 0x08, 0x10, 0x20
CTR_KBDINT, CTR_SYS, CTR_KBDDIS, CTR_AUXDIS, CTR_XLATE = 0x01, 0x04, 0x10, 0x20, 0x40
CTR_DEFAULT = CTR_KBDINT | CTR_SYS | CTR_AUXDIS | CTR_XLATE
OUTPORT_RESET = 0x01  # active low: clearing it resets the CPU
OUTPORT_DEFAULT = 0xCF
RAM_POWER_ON = bytes([CTR_DEFAULT]) + bytes(31)  # byte 0 is the command byte

ACK, RESEND, BAT_OK, ECHO = 0xFA, 0xFE, 0xAA, 0xEE
KBD_PARAM_COMMANDS = (0xED, 0xF0, 0xF3)  # LEDs, scan-code set, typematic rate
_XLATED_SET_ID = {1: 0x43, 2: 0x41, 3: 0x3F}
# Controller commands whose parameter is the next data-port byte.
_CTL_PARAM_COMMANDS = frozenset(range(0x60, 0x80)) | {0xD1, 0xD2, 0xD3, 0xD4}


class I8042:
    LENGTH = LENGTH
    # Controller state: power-on values from _reset, an I8042State's from _load.
    _ram: bytearray
    _outport: int
    _last_data: int
    _queue: bytearray
    _queue_aux: bytearray
    _last_was_command: bool
    _ctl_pending: int
    _kbd_pending: int
    _scan_set: int
    _scanning: bool

    def __init__(self, on_reset: Callable[[], None], irq: IrqLine | None = None) -> None:
        self._on_reset = on_reset
        self._irq = irq
        self._irq_level = False
        self._lock = threading.Lock()
        self._resets = 0
        self._reset()

    def read(self, offset: int, size: int) -> int:
        if size not in VALID_SIZES or offset not in (0, 4):
            return ones(size)
        with self._lock:
            value = self._read_data() if offset == 0 else self._status()
            self._update_irq()
        # Wider reads see the neighbouring (unused) ports as all-ones.
        return value | (ones(size) & ~0xFF)

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in VALID_SIZES or offset not in (0, 4):
            return
        with self._lock:
            if offset == 0:
                self._write_data(value & 0xFF)
            else:
                self._command(value & 0xFF)
            self._update_irq()
            resets, self._resets = self._resets, 0
        for _ in range(resets):
            self._on_reset()

    # -- controller ------------------------------------------------------
    def _status(self) -> int:
        status = STS_UNLOCKED | (self._ram[0] & CTR_SYS)
        if self._queue:
            status |= STS_OBF | (STS_AUX_OBF if self._queue_aux[0] else 0)
        return status | (STS_CMD if self._last_was_command else 0)

    def _read_data(self) -> int:
        if self._queue:
            self._last_data = self._queue.pop(0)
            self._queue_aux.pop(0)
        return self._last_data  # an empty buffer re-reads the last byte

    def _push(self, *data: int, aux: bool = False) -> None:
        for byte in data:
            if len(self._queue) < QUEUE_LIMIT:
                self._queue.append(byte)
                self._queue_aux.append(int(aux))

    def _command(self, cmd: int) -> None:
        self._last_was_command = True
        self._ctl_pending = 0
        ctr = self._ram[0]
        if 0x20 <= cmd <= 0x3F:
            self._push(self._ram[cmd - 0x20])
        elif cmd in _CTL_PARAM_COMMANDS:
            self._ctl_pending = cmd
        elif cmd in (0xA7, 0xA8):
            self._ram[0] = ctr | CTR_AUXDIS if cmd == 0xA7 else ctr & ~CTR_AUXDIS
        elif cmd in (0xA9, 0xAB):
            self._push(0x00)
        elif cmd == 0xAA:
            self._ram[0] = ctr | CTR_SYS
            self._push(0x55)
        elif cmd in (0xAD, 0xAE):
            self._ram[0] = ctr | CTR_KBDDIS if cmd == 0xAD else ctr & ~CTR_KBDDIS
        elif cmd == 0xC0:
            self._push(0x80)  # input port: keyboard not inhibited
        elif cmd == 0xD0:
            self._push(self._outport)
        elif cmd >= 0xF0 and not cmd & 0x01:
            self._resets += 1  # pulsing output line 0 is the CPU reset
        # Anything else (A20 gate 0xdd/0xdf, vendor commands) is ignored.

    def _write_data(self, value: int) -> None:
        self._last_was_command = False
        cmd, self._ctl_pending = self._ctl_pending, 0
        if 0x60 <= cmd <= 0x7F:
            self._ram[cmd - 0x60] = value
        elif cmd == 0xD1:
            self._outport = value
            if not value & OUTPORT_RESET:
                self._resets += 1
        elif cmd in (0xD2, 0xD3):
            self._push(value, aux=cmd == 0xD3)
        elif cmd == 0xD4:
            pass  # no mouse on the AUX port
        else:
            self._ram[0] &= ~CTR_KBDDIS  # sending to the keyboard enables its clock
            self._keyboard(value)

    # -- keyboard --------------------------------------------------------
    def _keyboard(self, value: int) -> None:
        cmd, self._kbd_pending = self._kbd_pending, 0
        if cmd == 0xF0:
            if value == 0:
                set_id = self._scan_set
                if self._ram[0] & CTR_XLATE:
                    set_id = _XLATED_SET_ID[set_id]
                self._push(ACK, set_id)
                return
            if value in (1, 2, 3):
                self._scan_set = value
            self._push(ACK)
            return
        if cmd:
            self._push(ACK)  # LED state or typematic rate: nothing to show
            return
        if value in KBD_PARAM_COMMANDS:
            self._kbd_pending = value
            self._push(ACK)
        elif value == 0xFF:
            self._scan_set, self._scanning = 2, True
            self._push(ACK, BAT_OK)
        elif value == 0xF2:
            self._push(ACK, 0xAB, 0x41 if self._ram[0] & CTR_XLATE else 0x83)
        elif value == 0xEE:
            self._push(ECHO)
        elif value in (0xF4, 0xF5, 0xF6):
            self._scanning = value != 0xF5
            if value != 0xF4:
                self._scan_set = 2
            self._push(ACK)
        elif 0xF7 <= value <= 0xFD:
            self._push(ACK)  # scan-code set 3 key modes
        else:
            self._push(RESEND)

    def _update_irq(self, force: bool = False) -> None:
        if self._irq is None:
            return
        level = bool(self._queue) and not self._queue_aux[0] and bool(self._ram[0] & CTR_KBDINT)
        if level != self._irq_level or force:
            self._irq_level = level
            self._irq.set_level(level)

    # -- state -----------------------------------------------------------
    def state(self) -> I8042State:
        from .states import I8042State

        with self._lock:
            return I8042State(
                ram=bytes(self._ram), outport=self._outport, queue=bytes(self._queue),
                queue_aux=bytes(self._queue_aux), last_data=self._last_data,
                last_was_command=self._last_was_command, ctl_pending=self._ctl_pending,
                kbd_pending=self._kbd_pending, scan_set=self._scan_set, scanning=self._scanning)

    def restore(self, state: I8042State) -> None:
        from .states import I8042State

        check_state_type(state, I8042State)
        check_bytes("i8042 ram", state.ram, 32, exact=True)
        check_int("i8042 outport", state.outport, 0, 0xFF)
        check_int("i8042 last_data", state.last_data, 0, 0xFF)
        queue = check_bytes("i8042 queue", state.queue, QUEUE_LIMIT)
        aux = check_bytes("i8042 queue_aux", state.queue_aux, QUEUE_LIMIT)
        if len(aux) != len(queue) or any(b > 1 for b in aux):
            raise ValueError("i8042 queue_aux must hold one 0/1 flag per queued byte")
        check_bool("i8042 last_was_command", state.last_was_command)
        check_bool("i8042 scanning", state.scanning)
        if check_int("i8042 ctl_pending", state.ctl_pending, 0, 0xFF) not in _CTL_PARAM_COMMANDS | {0}:
            raise ValueError(f"i8042 ctl_pending {state.ctl_pending:#x} is not a command that takes data")
        if check_int("i8042 kbd_pending", state.kbd_pending, 0, 0xFF) not in (0, *KBD_PARAM_COMMANDS):
            raise ValueError(f"i8042 kbd_pending {state.kbd_pending:#x} is not a keyboard command with a parameter")
        check_int("i8042 scan_set", state.scan_set, 1, 3)
        with self._lock:
            self._load(state)
            self._update_irq(force=True)

    def _reset(self) -> None:
        """The power-on values (I8042State's defaults)."""
        self._ram = bytearray(RAM_POWER_ON)
        self._outport, self._last_data = OUTPORT_DEFAULT, 0
        self._queue, self._queue_aux = bytearray(), bytearray()
        self._last_was_command, self._ctl_pending, self._kbd_pending = False, 0, 0
        self._scan_set, self._scanning = 2, True

    def _load(self, s: I8042State) -> None:
        self._ram = bytearray(s.ram)
        self._outport, self._last_data = s.outport, s.last_data
        self._queue, self._queue_aux = bytearray(s.queue), bytearray(s.queue_aux)
        self._last_was_command, self._ctl_pending, self._kbd_pending = (
            s.last_was_command, s.ctl_pending, s.kbd_pending)
        self._scan_set, self._scanning = s.scan_set, s.scanning
