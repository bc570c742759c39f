"""virtio-console: a fast guest console (Linux's hvc0) with one port.

Specification: VIRTIO 1.2 section 5.3, without VIRTIO_CONSOLE_F_MULTIPORT:
queue 0 (receiveq) carries host input to the guest in buffers the guest
posts, queue 1 (transmitq) carries guest output to the host. Offered
features: F_EMERG_WRITE (the guest may write one character to the
`emerg_wr` config field, e.g. before its queues work or in a panic) and
F_SIZE when the host gave a terminal size (cols/rows; `resize` changes it).

The host side mirrors the 16550's (`devices/legacy/serial.py`) so the VMM
can wire either as its console: guest output goes to `output(data)`;
`input(data)` queues host bytes until the guest posts receive buffers. The
input buffer is bounded (`INPUT_LIMIT`); beyond it the oldest bytes are
dropped and counted, since for a console the newest keystrokes matter most.

Guest output is copied out under the device lock in batches of at most
`TX_BATCH` bytes and handed to `output` after the lock is dropped, so a
slow console never blocks host input; a single chain yields at most
`TX_CHAIN_MAX` bytes (a guest cannot make the host copy gigabytes at once;
Linux sends at most a page per buffer).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .device import CONSOLE, VirtioDevice
from .queue import VirtqueueError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ...memory.guest import GuestMemory
    from ..protocols import VirtioInterrupt
    from .queue import Virtqueue

# feature bits (spec 5.3.3)
F_SIZE = 1 << 0
F_MULTIPORT = 1 << 1
F_EMERG_WRITE = 1 << 2

RECEIVEQ, TRANSMITQ = 0, 1
CONFIG = struct.Struct("<HHII")  # cols, rows, max_nr_ports, emerg_wr
EMERG_WR_OFFSET = 8

INPUT_LIMIT = 64 << 10
TX_BATCH = 1 << 20
TX_CHAIN_MAX = 1 << 20


@dataclass(frozen=True)
class ConsoleState:
    device_features: int
    driver_features: int
    cols: int = 0
    rows: int = 0
    rx_pending: bytes = b""  # host input the guest has not taken yet
    version: int = 1


@dataclass(frozen=True)
class ConsoleStatistics:
    tx_bytes: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0
    tx_truncated: int = 0  # bytes beyond TX_CHAIN_MAX in one chain, not output


class VirtioConsole(VirtioDevice):
    """One-port virtio console. `output` receives guest output (on the I/O
    thread, or a vCPU thread for emergency writes); call `input` from any
    thread with host input."""

    device_type = CONSOLE
    num_queues = 2
    queue_max_size = 256
    name = "console"

    def __init__(self, output: Callable[[bytes], None], *, cols: int = 0, rows: int = 0) -> None:
        super().__init__()
        self.output = output
        self.device_features |= F_EMERG_WRITE | (F_SIZE if cols or rows else 0)
        self._cols, self._rows = self._check_size(cols, rows)
        self._rx = bytearray()
        self._tx_bytes = self._rx_bytes = self._rx_dropped = self._tx_truncated = 0

    @staticmethod
    def _check_size(cols: int, rows: int) -> tuple[int, int]:
        if not (0 <= cols <= 0xFFFF and 0 <= rows <= 0xFFFF):
            raise ValueError(f"console size {cols}x{rows} does not fit 16-bit cols and rows")
        return cols, rows

    # --- config space ---------------------------------------------------------
    def config_bytes(self) -> bytes:
        return CONFIG.pack(self._cols, self._rows, 1, 0)

    def config_write(self, offset: int, size: int, value: int) -> None:
        # emerg_wr: a write of any width starting at the field puts its low byte out.
        if offset == EMERG_WR_OFFSET and size in (1, 2, 4) and self.device_features & F_EMERG_WRITE:
            self._tx_bytes += 1
            self.output(bytes([value & 0xFF]))

    def resize(self, cols: int, rows: int) -> None:
        """The host terminal changed size: tell a driver that took F_SIZE."""
        cols, rows = self._check_size(cols, rows)
        with self.lock:
            changed = (cols, rows) != (self._cols, self._rows)
            self._cols, self._rows = cols, rows
            irq = self.interrupt if self.negotiated(F_SIZE) else None
        if changed and irq is not None:
            irq.config_changed()

    # --- life cycle -------------------------------------------------------------
    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], interrupt: VirtioInterrupt) -> None:
        super().activate(mem, queues, interrupt)
        with self.lock:
            # Input typed before the driver was ready, into buffers it posted
            # before DRIVER_OK (their notifications were not delivered).
            self._receive()

    def queue_notify(self, index: int) -> None:
        if index == RECEIVEQ:
            with self.lock:
                self._receive()
        elif index == TRANSMITQ:
            self._transmit()

    # --- host side ----------------------------------------------------------------
    def input(self, data: bytes) -> None:
        """Host bytes for the guest: delivered now if the guest has receive
        buffers posted, else kept (the newest INPUT_LIMIT bytes) until it does."""
        with self.lock:
            self._rx += data
            excess = len(self._rx) - INPUT_LIMIT
            if excess > 0:
                del self._rx[:excess]
                self._rx_dropped += excess
            self._receive()

    def pending_input(self) -> int:
        with self.lock:
            return len(self._rx)

    def statistics(self) -> ConsoleStatistics:
        with self.lock:
            return ConsoleStatistics(self._tx_bytes, self._rx_bytes, self._rx_dropped, self._tx_truncated)

    # --- queues -------------------------------------------------------------------
    def _active_queue(self, index: int) -> Virtqueue | None:
        if self.broken or self.mem is None or self.interrupt is None or len(self.queues) <= index:
            return None
        return self.queues[index]

    def _receive(self) -> None:
        """Move buffered input into posted receive buffers (lock held)."""
        q = self._active_queue(RECEIVEQ)
        if q is None or not self._rx:
            return
        assert self.mem is not None and self.interrupt is not None
        try:
            while self._rx and (chain := q.pop()) is not None:
                n = chain.write(self.mem, self._rx[:chain.writable_len]) if chain.writable_len else 0
                del self._rx[:n]
                self._rx_bytes += n
                q.push(chain.head, n)
        except VirtqueueError as e:
            self.needs_reset(str(e))
        if q.should_notify():
            self.interrupt.used(RECEIVEQ)

    def _transmit(self) -> None:
        """Drain the transmit queue to `output`, a batch at a time."""
        more = True
        while more:
            out: list[bytes] = []
            with self.lock:
                q = self._active_queue(TRANSMITQ)
                if q is None:
                    return
                assert self.mem is not None and self.interrupt is not None
                total = 0
                more = False
                try:
                    while (chain := q.pop()) is not None:
                        data = chain.read(self.mem, TX_CHAIN_MAX)
                        self._tx_truncated += chain.readable_len - len(data)
                        q.push(chain.head, 0)
                        if data:
                            out.append(data)
                            total += len(data)
                        if total >= TX_BATCH:
                            more = True
                            break
                except VirtqueueError as e:
                    self.needs_reset(str(e))
                self._tx_bytes += total
                if q.should_notify():
                    self.interrupt.used(TRANSMITQ)
            if out:
                self.output(b"".join(out))

    # --- state ----------------------------------------------------------------------
    def state(self) -> ConsoleState:
        with self.lock:
            return ConsoleState(self.device_features, self.driver_features, self._cols, self._rows, bytes(self._rx))

    def restore(self, state: ConsoleState) -> None:
        from ..legacy._common import check_bytes, check_int, check_state_type

        check_state_type(state, ConsoleState)
        check_int("virtio-console device_features", state.device_features, 0, (1 << 64) - 1)
        check_int("virtio-console driver_features", state.driver_features, 0, (1 << 64) - 1)
        check_int("virtio-console cols", state.cols, 0, 0xFFFF)
        check_int("virtio-console rows", state.rows, 0, 0xFFFF)
        pending = check_bytes("virtio-console rx_pending", state.rx_pending, INPUT_LIMIT)
        if state.device_features != self.device_features or state.driver_features & ~self.device_features:
            raise ValueError(f"virtio-console features {state.driver_features:#x} of {state.device_features:#x} "
                             f"saved; this device offers {self.device_features:#x}")
        with self.lock:
            self.driver_features = state.driver_features
            self._cols, self._rows = state.cols, state.rows
            self._rx = bytearray(pending)
