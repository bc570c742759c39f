"""A 16550A UART: the console every PC guest knows how to find.

Eight byte-wide registers at `COM1_PORT` (0x3f8), interrupt on `COM1_IRQ`.
What is modelled, from the National/TI PC16550D datasheet:

* Transmit is instant: each THR write goes to `out` and THR/TEMT are always
  empty, so there is no baud-rate timing and no TX FIFO to overflow.
* Receive: host bytes from `receive()` wait in an input buffer (with the
  FIFO, at most `INPUT_LIMIT` bytes; extra bytes are dropped and counted) and move into
  the RX FIFO (16 bytes with FCR bit 0 set, else the single RBR) as the guest
  reads. The host buffer is the flow control, so host data never overruns.
* Interrupts in datasheet priority: line status, RX data, THR empty, modem
  status. The RX trigger level is treated as 1 byte, so the character-timeout
  identification (IIR 0x0c) never appears; drivers handle both alike.
* IIR bits 7:6 read 11 with FIFOs enabled, which is how Linux tells a 16550A.
* Loopback (MCR bit 4) feeds THR into the RX FIFO and mirrors DTR/RTS/OUT1/
  OUT2 onto DSR/CTS/RI/DCD, which Linux's autoconfig probes. An overrun here
  sets LSR OE (FIFO mode loses the new byte, 16450 mode the old one).
* OUT2 does not gate the interrupt line, as in QEMU: guests always set it.

Locking: vCPU threads call read/write and an I/O thread calls `receive`, so
one lock guards the registers; `out` is called after the lock is dropped so a
slow console never blocks input.
"""

from __future__ import annotations

import threading

from ._common import (VALID_SIZES, check_bool, check_bytes, check_int, check_state_type, lazy_states, ones,
                      read_bytes, write_bytes)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..protocols import IrqLine
    from .states import SerialState, SerialStatistics

__getattr__ = lazy_states(__name__, ("SerialState", "SerialStatistics"))

COM1_PORT = 0x3F8
COM1_IRQ = 4
LENGTH = 8
INPUT_LIMIT = 4096
FIFO_SIZE = 16

IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08
IIR_MSI, IIR_NONE, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_FIFO = 0x00, 0x01, 0x02, 0x04, 0x06, 0xC0
FCR_ENABLE, FCR_CLEAR_RX, FCR_CLEAR_TX = 0x01, 0x02, 0x04
FCR_STORED = 0xC9  # enable, DMA mode select, RX trigger level
LCR_DLAB = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
LSR_DR, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40
LSR_ERRORS = 0x1E  # OE, PE, FE, BI: cleared by reading LSR
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
MSR_IDLE = MSR_CTS | MSR_DSR | MSR_DCD  # a host that is always ready to talk
DLL_POWER_ON = 0x0C  # 9600 baud, what firmware usually leaves


def _modem_status(mcr: int) -> int:
    if not mcr & MCR_LOOP:
        return MSR_IDLE
    return ((MSR_CTS if mcr & MCR_RTS else 0) | (MSR_DSR if mcr & MCR_DTR else 0)
            | (MSR_RI if mcr & MCR_OUT1 else 0) | (MSR_DCD if mcr & MCR_OUT2 else 0))


class Serial:
    LENGTH = LENGTH
    # Register file: power-on values from _reset, a SerialState's from _load.
    _dll: int
    _dlm: int
    _ier: int
    _lcr: int
    _mcr: int
    _lsr_errors: int
    _msr_delta: int
    _scr: int
    _fcr: int
    _thr_pending: bool
    _rx: bytearray
    _input: bytearray

    def __init__(self, irq: IrqLine, out: Callable[[bytes], None]) -> None:
        self._irq = irq
        self._out = out
        self._lock = threading.Lock()
        self._irq_level = False
        self._tx: list[int] = []
        self._tx_bytes = self._rx_bytes = self._rx_dropped = self._overruns = 0
        self._reset()

    # -- bus interface ---------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if size not in VALID_SIZES or not 0 <= offset < LENGTH:
            return ones(size)
        with self._lock:
            value = read_bytes(self._read_reg, offset, size)
            self._update_irq()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in VALID_SIZES or not 0 <= offset < LENGTH:
            return
        with self._lock:
            write_bytes(self._write_reg, offset, size, value)
            self._update_irq()
            tx, self._tx = self._tx, []
        for byte in tx:
            self._out(bytes([byte]))

    # -- host side -------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Queue bytes typed on the host for the guest to read."""
        with self._lock:
            room = max(0, INPUT_LIMIT - len(self._input) - len(self._rx))
            self._input += data[:room]
            self._rx_dropped += max(0, len(data) - room)
            self._refill()
            self._update_irq()

    def pending_input(self) -> int:
        """Bytes received from the host that the guest has not read yet."""
        with self._lock:
            return len(self._input) + len(self._rx)

    def statistics(self) -> SerialStatistics:
        from .states import SerialStatistics

        with self._lock:
            return SerialStatistics(self._tx_bytes, self._rx_bytes, self._rx_dropped, self._overruns)

    # -- registers -------------------------------------------------------
    def _read_reg(self, offset: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if offset == 0:
            return self._dll if dlab else self._pop_rx()
        if offset == 1:
            return self._dlm if dlab else self._ier
        if offset == 2:
            reason = self._interrupt_reason()
            if reason == IIR_THRI:
                self._thr_pending = False  # reading IIR acknowledges THR empty
            return reason | (IIR_FIFO if self._fcr & FCR_ENABLE else 0)
        if offset == 3:
            return self._lcr
        if offset == 4:
            return self._mcr
        if offset == 5:
            value = (LSR_DR if self._rx else 0) | self._lsr_errors | LSR_THRE | LSR_TEMT
            self._lsr_errors = 0
            return value
        if offset == 6:
            value = _modem_status(self._mcr) | self._msr_delta
            self._msr_delta = 0
            return value
        if offset == 7:
            return self._scr
        return 0xFF  # the tail of a wide access past the last register

    def _write_reg(self, offset: int, value: int) -> None:
        dlab = self._lcr & LCR_DLAB
        if offset == 0:
            if dlab:
                self._dll = value
            else:
                self._transmit(value)
        elif offset == 1:
            if dlab:
                self._dlm = value
            else:
                value &= 0x0F
                if (self._ier ^ value) & IER_THRI:
                    # THR is always empty, so enabling its interrupt fires it.
                    self._thr_pending = bool(value & IER_THRI)
                self._ier = value
        elif offset == 2:
            self._write_fcr(value)
        elif offset == 3:
            self._lcr = value
        elif offset == 4:
            self._write_mcr(value & 0x1F)
        elif offset == 7:
            self._scr = value
        # LSR and MSR writes (factory test only) are ignored.

    def _transmit(self, value: int) -> None:
        if self._mcr & MCR_LOOP:
            if len(self._rx) < self._rx_capacity():
                self._rx.append(value)
            else:
                self._lsr_errors |= LSR_OE
                self._overruns += 1
                if not self._fcr & FCR_ENABLE:
                    self._rx[0] = value  # 16450 mode: the new byte overwrites RBR
        else:
            self._tx.append(value)
            self._tx_bytes += 1
        self._thr_pending = bool(self._ier & IER_THRI)

    def _write_fcr(self, value: int) -> None:
        if (value ^ self._fcr) & FCR_ENABLE:
            value |= FCR_CLEAR_RX | FCR_CLEAR_TX  # switching modes empties the FIFOs
        if value & FCR_CLEAR_RX:
            self._rx.clear()
        # The other FCR bits only take when bit 0 is written as 1.
        self._fcr = value & FCR_STORED if value & FCR_ENABLE else 0
        self._refill()

    def _write_mcr(self, value: int) -> None:
        old, new = _modem_status(self._mcr), _modem_status(value)
        changed = old ^ new
        self._msr_delta |= ((MSR_DCTS if changed & MSR_CTS else 0) | (MSR_DDSR if changed & MSR_DSR else 0)
                            | (MSR_TERI if old & MSR_RI and not new & MSR_RI else 0)
                            | (MSR_DDCD if changed & MSR_DCD else 0))
        self._mcr = value
        self._refill()  # leaving loopback reconnects the host input

    def _pop_rx(self) -> int:
        if not self._rx:
            return 0
        value = self._rx.pop(0)
        self._rx_bytes += 1
        self._refill()
        return value

    def _rx_capacity(self) -> int:
        return FIFO_SIZE if self._fcr & FCR_ENABLE else 1

    def _refill(self) -> None:
        if self._mcr & MCR_LOOP:
            return  # in loopback the serial input pin is disconnected
        room = self._rx_capacity() - len(self._rx)
        if room > 0 and self._input:
            self._rx += self._input[:room]
            del self._input[:room]

    def _interrupt_reason(self) -> int:
        ier = self._ier
        if ier & IER_RLSI and self._lsr_errors:
            return IIR_RLSI
        if ier & IER_RDI and self._rx:
            return IIR_RDI
        if self._thr_pending:
            return IIR_THRI
        if ier & IER_MSI and self._msr_delta:
            return IIR_MSI
        return IIR_NONE

    def _update_irq(self, force: bool = False) -> None:
        level = self._interrupt_reason() != IIR_NONE
        if level != self._irq_level or force:
            self._irq_level = level
            self._irq.set_level(level)

    # -- state -----------------------------------------------------------
    def state(self) -> SerialState:
        from .states import SerialState

        with self._lock:
            return SerialState(
                dll=self._dll, dlm=self._dlm, ier=self._ier, lcr=self._lcr, mcr=self._mcr,
                lsr_errors=self._lsr_errors, msr_delta=self._msr_delta, scr=self._scr, fcr=self._fcr,
                thr_pending=self._thr_pending, rx_fifo=bytes(self._rx), rx_input=bytes(self._input))

    def restore(self, state: SerialState) -> None:
        from .states import SerialState

        check_state_type(state, SerialState)
        for name in ("dll", "dlm", "lcr", "scr"):
            check_int(f"serial {name}", getattr(state, name), 0, 0xFF)
        check_int("serial ier", state.ier, 0, 0x0F)
        check_int("serial mcr", state.mcr, 0, 0x1F)
        check_int("serial msr_delta", state.msr_delta, 0, 0x0F)
        if check_int("serial lsr_errors", state.lsr_errors, 0, 0xFF) & ~LSR_ERRORS:
            raise ValueError(f"serial lsr_errors {state.lsr_errors:#x} has bits outside {LSR_ERRORS:#x}")
        fcr = check_int("serial fcr", state.fcr, 0, 0xFF)
        if fcr & ~FCR_STORED or (fcr and not fcr & FCR_ENABLE):
            raise ValueError(f"serial fcr {fcr:#x} is not a value the FIFO control register can hold")
        if check_bool("serial thr_pending", state.thr_pending) and not state.ier & IER_THRI:
            raise ValueError("serial thr_pending is set but the THR interrupt is disabled")
        check_bytes("serial rx_fifo", state.rx_fifo, FIFO_SIZE if fcr & FCR_ENABLE else 1)
        if len(check_bytes("serial rx_input", state.rx_input, INPUT_LIMIT)) + len(state.rx_fifo) > INPUT_LIMIT:
            raise ValueError(f"serial holds more than {INPUT_LIMIT} bytes of pending input")
        with self._lock:
            self._load(state)
            self._refill()
            self._update_irq(force=True)

    def _reset(self) -> None:
        """The power-on register values (SerialState's defaults)."""
        self._dll, self._dlm, self._ier, self._lcr = DLL_POWER_ON, 0, 0, 0
        self._mcr = self._lsr_errors = self._msr_delta = self._scr = self._fcr = 0
        self._thr_pending = False
        self._rx = bytearray()
        self._input = bytearray()

    def _load(self, s: SerialState) -> None:
        self._dll, self._dlm, self._ier, self._lcr = s.dll, s.dlm, s.ier, s.lcr
        self._mcr, self._lsr_errors, self._msr_delta, self._scr = s.mcr, s.lsr_errors, s.msr_delta, s.scr
        self._fcr, self._thr_pending = s.fcr, s.thr_pending
        self._rx = bytearray(s.rx_fifo)
        self._input = bytearray(s.rx_input)
