"""MSI-X: the capability, the vector table and the pending bit array (PBA).

PCI Local Bus 3.0, 6.8.2. The capability (id 0x11) holds Message Control
(table size - 1 in bits 10:0, Function Mask bit 14, MSI-X Enable bit 15),
then Table Offset/BIR and PBA Offset/BIR (offset in bits 31:3 of a BAR,
BAR index in bits 2:0). The table lives in a memory BAR: per vector 16
bytes, Message Address low/high, Message Data, Vector Control (bit 0 masks
the vector; it starts masked). The PBA has one read-only bit per vector.

`signal(vector)` sends the vector's message through the injected
`send_msi(address, data)` (the VMM turns that into KVM_SIGNAL_MSI or an
irqfd), or, while the vector or the whole function is masked, sets its
pending bit; unmasking delivers the pending message once and clears the bit.
Table and PBA accept aligned 4- and 8-byte accesses (the spec allows QWORD
access); anything else reads 0 and writes nothing.
"""

from __future__ import annotations

import threading

from ..legacy._common import check_bytes, check_int, check_state_type

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import PciConfigSpace
    from .states import MsixState

    SendMsi = Callable[[int, int], None]

CAP_ID = 0x11
CTRL_ENABLE, CTRL_FUNCTION_MASK = 1 << 15, 1 << 14
ENTRY_SIZE = 16
VECTOR_MASKED = 1
MAX_VECTORS = 2048


class Msix:
    """MSI-X for one function, with its table at `table_offset` and its PBA
    at `pba_offset` of BAR `bar`."""

    def __init__(self, vectors: int, send_msi: SendMsi, *, bar: int, table_offset: int, pba_offset: int) -> None:
        if not 1 <= vectors <= MAX_VECTORS:
            raise ValueError(f"MSI-X: {vectors} vectors, want 1..{MAX_VECTORS}")
        if table_offset & 7 or pba_offset & 7 or not 0 <= bar < 6:
            raise ValueError("MSI-X: table and PBA must be 8-byte aligned in BAR 0-5")
        self.vectors = vectors
        self.bar, self.table_offset, self.pba_offset = bar, table_offset, pba_offset
        self._send = send_msi
        self._lock = threading.Lock()
        self._table = self._reset_table()
        self._pending = 0
        self.enabled = False
        self.function_masked = False
        self.cap_offset = 0  # set by install()

    @property
    def table_size(self) -> int:
        return self.vectors * ENTRY_SIZE

    @property
    def pba_size(self) -> int:
        return (self.vectors + 63) // 64 * 8  # QWORDs, as the spec lays the PBA out

    def _reset_table(self) -> bytearray:
        table = bytearray(self.table_size)
        for v in range(self.vectors):
            table[v * ENTRY_SIZE + 12] = VECTOR_MASKED
        return table

    # --- capability ----------------------------------------------------------
    def install(self, config: PciConfigSpace) -> int:
        """Add the MSI-X capability to `config`; returns its offset."""
        body = ((self.vectors - 1).to_bytes(2, "little") + (self.table_offset | self.bar).to_bytes(4, "little")
                + (self.pba_offset | self.bar).to_bytes(4, "little"))
        self.cap_offset = config.add_capability(CAP_ID, body, wmask=bytes([0x00, 0xC0]))
        return self.cap_offset

    @property
    def control_offset(self) -> int:
        return self.cap_offset + 2

    def control_written(self, config: PciConfigSpace) -> None:
        """Message Control may have changed: follow its Enable and Function Mask bits."""
        ctrl = config.get(self.control_offset, 2)
        with self._lock:
            self.enabled = bool(ctrl & CTRL_ENABLE)
            self.function_masked = bool(ctrl & CTRL_FUNCTION_MASK)
            self._flush()

    # --- table and PBA (BAR side) -------------------------------------------------
    def table_read(self, offset: int, size: int) -> int:
        if not _qword_or_dword(offset, size) or offset + size > self.table_size:
            return 0
        with self._lock:
            return int.from_bytes(self._table[offset:offset + size], "little")

    def table_write(self, offset: int, size: int, value: int) -> None:
        if not _qword_or_dword(offset, size) or offset + size > self.table_size:
            return
        with self._lock:
            for dw in range(offset, offset + size, 4):
                part = (value >> (8 * (dw - offset))) & 0xFFFFFFFF
                field = dw % ENTRY_SIZE
                if field == 0:
                    part &= ~3  # Message Address is dword aligned; bits 1:0 are zero
                elif field == 12:
                    part &= VECTOR_MASKED  # the other Vector Control bits are reserved
                self._table[dw:dw + 4] = part.to_bytes(4, "little")
            self._flush()

    def pba_read(self, offset: int, size: int) -> int:
        if not _qword_or_dword(offset, size) or offset + size > self.pba_size:
            return 0
        with self._lock:
            return (self._pending >> (8 * offset)) & ((1 << (8 * size)) - 1)

    # --- delivery --------------------------------------------------------------
    def signal(self, vector: int) -> bool:
        """Raise `vector`: send it, or mark it pending while masked.

        Returns False (and does nothing) when MSI-X is disabled or the vector
        does not exist, so the caller can fall back to INTx or drop it.
        """
        with self._lock:
            if not self.enabled or not 0 <= vector < self.vectors:
                return False
            if self._masked(vector):
                self._pending |= 1 << vector
            else:
                self._deliver(vector)
            return True

    def is_masked(self, vector: int) -> bool:
        with self._lock:
            return self._masked(vector)

    def is_pending(self, vector: int) -> bool:
        with self._lock:
            return bool(self._pending >> vector & 1)

    def message(self, vector: int) -> tuple[int, int]:
        """(address, data) the table holds for `vector`."""
        with self._lock:
            return self._message(vector)

    def _masked(self, vector: int) -> bool:
        return self.function_masked or bool(self._table[vector * ENTRY_SIZE + 12] & VECTOR_MASKED)

    def _message(self, vector: int) -> tuple[int, int]:
        entry = self._table[vector * ENTRY_SIZE:(vector + 1) * ENTRY_SIZE]
        return int.from_bytes(entry[0:8], "little"), int.from_bytes(entry[8:12], "little")

    def _deliver(self, vector: int) -> None:
        self._send(*self._message(vector))

    def _flush(self) -> None:
        """Send the pending messages of vectors that are no longer masked."""
        if not self._pending or not self.enabled or self.function_masked:
            return
        for vector in range(self.vectors):
            if self._pending >> vector & 1 and not self._masked(vector):
                self._pending &= ~(1 << vector)
                self._deliver(vector)

    def reset(self) -> None:
        """Function reset: every vector masked, nothing pending, MSI-X off."""
        with self._lock:
            self._table = self._reset_table()
            self._pending = 0
            self.enabled = self.function_masked = False

    # --- state ----------------------------------------------------------------
    def state(self) -> MsixState:
        from .states import MsixState

        with self._lock:
            return MsixState(table=bytes(self._table), pending=self._pending)

    def check_state(self, state: MsixState) -> tuple[bytes, int]:
        from .states import MsixState

        check_state_type(state, MsixState)
        table = check_bytes("msix table", state.table, self.table_size, exact=True)
        for v in range(self.vectors):
            entry = table[v * ENTRY_SIZE:(v + 1) * ENTRY_SIZE]
            if entry[0] & 3 or int.from_bytes(entry[12:16], "little") & ~VECTOR_MASKED:
                raise ValueError(f"msix vector {v}: reserved bits set")
        pending = check_int("msix pending", state.pending, 0, (1 << self.vectors) - 1)
        return table, pending

    def load(self, table: bytes, pending: int, config: PciConfigSpace) -> None:
        """Install state `check_state` accepted; Enable and Function Mask come
        from the (already restored) capability in `config`. Sends nothing:
        pending messages wait for the next unmask, as they would have."""
        ctrl = config.get(self.control_offset, 2)
        with self._lock:
            self._table[:] = table
            self._pending = pending
            self.enabled = bool(ctrl & CTRL_ENABLE)
            self.function_masked = bool(ctrl & CTRL_FUNCTION_MASK)

    def restore(self, state: MsixState, config: PciConfigSpace) -> None:
        self.load(*self.check_state(state), config)


def _qword_or_dword(offset: int, size: int) -> bool:
    return size in (4, 8) and offset >= 0 and offset % size == 0
