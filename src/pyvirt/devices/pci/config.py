"""A PCI type-0 configuration space: 256 bytes, write masks, BARs, capabilities.

The model is the one the PCI Local Bus spec (3.0, ch. 6) describes in
registers: every byte has a mask of bits the guest may write; all other bits
read back what the device put there. That single mechanism gives the BAR
sizing protocol for free: a memory BAR of size S has the address bits
below log2(S) and the flag bits (0-3) read-only, so writing all-ones and
reading back yields ~(S-1) | flags, from which software computes S. A 64-bit
BAR is two dwords (the upper one has all bits writable for BARs under
4 GiB), and the BAR after it is consumed.

Header (type 0) offsets used here:

    0x00 vendor  0x02 device  0x04 command  0x06 status  0x08 revision
    0x09 class (prog-if, subclass, base class)  0x0e header type
    0x10-0x27 BAR0-5  0x2c subsystem vendor  0x2e subsystem id
    0x34 capabilities pointer  0x3c interrupt line  0x3d interrupt pin

Capabilities are appended from 0x40 as a linked list (byte 0 id, byte 1
next pointer, then the body); status bit 4 says the list exists.

Accesses from the guest (through `PciBus`) are 1, 2 or 4 bytes, naturally
aligned or at least within one dword; anything else reads 0 and writes
nothing, and offsets 0x100-0xfff (the PCIe extended space ECAM exposes) read
0, meaning "no extended capabilities".
"""

from __future__ import annotations

from ..legacy._common import check_bytes, check_state_type

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .states import PciConfigState

SIZE = 256
VENDOR_ID, DEVICE_ID, COMMAND, STATUS, REVISION_ID, CLASS_CODE = 0x00, 0x02, 0x04, 0x06, 0x08, 0x09
HEADER_TYPE, BAR0, SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID = 0x0E, 0x10, 0x2C, 0x2E
CAPABILITIES_POINTER, INTERRUPT_LINE, INTERRUPT_PIN = 0x34, 0x3C, 0x3D
NUM_BARS = 6
CAP_START = 0x40

# Command register bits (PCI 3.0 6.2.2)
CMD_IO, CMD_MEMORY, CMD_BUS_MASTER = 1 << 0, 1 << 1, 1 << 2
CMD_PARITY, CMD_SERR, CMD_INTX_DISABLE = 1 << 6, 1 << 8, 1 << 10
CMD_WRITABLE = CMD_IO | CMD_MEMORY | CMD_BUS_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE
# Status register bits
STATUS_INTERRUPT, STATUS_CAP_LIST = 1 << 3, 1 << 4

# Memory BAR flag bits (bits 3:0, read-only)
BAR_MEM_64 = 0b100
BAR_PREFETCH = 0b1000
BAR_FLAGS = 0xF

# PCI capability ids (PCI Code and ID Assignment spec)
CAP_ID_MSIX = 0x11
CAP_ID_VENDOR = 0x09


class Bar:
    """A memory BAR as declared by the device model."""

    __slots__ = ("index", "size", "is64", "prefetchable")

    def __init__(self, index: int, size: int, is64: bool, prefetchable: bool) -> None:
        self.index, self.size, self.is64, self.prefetchable = index, size, is64, prefetchable

    @property
    def limit(self) -> int:
        """One past the highest address the BAR can decode."""
        return 1 << (64 if self.is64 else 32)


class PciConfigSpace:
    """One function's 256-byte configuration space."""

    def __init__(self, *, vendor_id: int, device_id: int, class_code: int, revision: int = 0,
                 subsystem_vendor_id: int = 0, subsystem_id: int = 0, interrupt_pin: int = 0) -> None:
        self.data = bytearray(SIZE)
        self.wmask = bytearray(SIZE)
        # Read-only bits the device itself changes (the status INTx bit): a
        # restore may carry any value there.
        self.dynmask = bytearray(SIZE)
        self.bars: list[Bar | None] = [None] * NUM_BARS
        self._bar_slots: set[int] = set()  # BAR registers in use, upper halves of 64-bit BARs too
        self._cap_tail = CAPABILITIES_POINTER  # where the next capability's offset goes
        self._cap_free = CAP_START
        self.set(VENDOR_ID, 2, vendor_id)
        self.set(DEVICE_ID, 2, device_id)
        self.set(REVISION_ID, 1, revision)
        self.set(CLASS_CODE, 3, class_code)
        self.set(HEADER_TYPE, 1, 0)
        self.set(SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        self.set(SUBSYSTEM_ID, 2, subsystem_id)
        self.set(INTERRUPT_PIN, 1, interrupt_pin)
        self.set_mask(COMMAND, 2, CMD_WRITABLE)
        self.set_mask(INTERRUPT_LINE, 1, 0xFF)
        self.dynmask[STATUS] |= STATUS_INTERRUPT

    # --- building (device model side) --------------------------------------
    def set(self, offset: int, size: int, value: int) -> None:
        """Store `value` regardless of the write mask (the device's own view)."""
        self.data[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size], "little")

    def set_mask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset:offset + size] = mask.to_bytes(size, "little")

    def add_memory_bar(self, index: int, size: int, *, is64: bool = True, prefetchable: bool = False) -> Bar:
        """Declare memory BAR `index` of `size` bytes (a power of two, at least 16)."""
        if size < 16 or size & (size - 1):
            raise ValueError(f"BAR size {size:#x} must be a power of two of at least 16 bytes")
        slots = {index, index + 1} if is64 else {index}
        if not 0 <= index < NUM_BARS - is64 or slots & self._bar_slots:
            raise ValueError(f"BAR {index} is taken or out of range")
        if not is64 and size > 1 << 31:
            raise ValueError(f"a 32-bit BAR cannot decode {size:#x} bytes")
        bar = Bar(index, size, is64, prefetchable)
        self.bars[index] = bar
        self._bar_slots |= slots
        flags = (BAR_MEM_64 if is64 else 0) | (BAR_PREFETCH if prefetchable else 0)
        off = BAR0 + 4 * index
        self.set(off, 4, flags)
        self.set_mask(off, 4, ~(size - 1) & 0xFFFFFFF0)
        if is64:
            self.set(off + 4, 4, 0)
            self.set_mask(off + 4, 4, ~((size - 1) >> 32) & 0xFFFFFFFF)
        return bar

    def add_capability(self, cap_id: int, body: bytes, wmask: bytes = b"") -> int:
        """Append a capability (id, next, `body`) to the list; returns its offset.

        `wmask` gives the guest-writable bits of `body`, byte for byte.
        """
        offset = self._cap_free
        length = 2 + len(body)
        if offset + length > SIZE or len(wmask) > len(body):
            raise ValueError(f"capability {cap_id:#x} of {length} bytes does not fit at {offset:#x}")
        self.data[offset] = cap_id
        self.data[offset + 1] = 0
        self.data[offset + 2:offset + length] = body
        self.wmask[offset + 2:offset + 2 + len(wmask)] = wmask
        self.data[self._cap_tail] = offset
        self.data[STATUS] |= STATUS_CAP_LIST
        self._cap_tail = offset + 1
        self._cap_free = (offset + length + 3) & ~3
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        """(id, offset) of each capability, walking the list as a driver does."""
        found: list[tuple[int, int]] = []
        ptr = self.data[CAPABILITIES_POINTER] & ~3
        while ptr and len(found) < 48:
            found.append((self.data[ptr], ptr))
            ptr = self.data[ptr + 1] & ~3
        return found

    # --- guest access -------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if not valid_access(offset, size) or offset >= SIZE:
            return 0
        return int.from_bytes(self.data[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> bool:
        """A guest write through the masks; False if the access was not decoded."""
        if not valid_access(offset, size) or offset >= SIZE:
            return False
        for i in range(size):
            mask = self.wmask[offset + i]
            if mask:
                byte = (value >> (8 * i)) & 0xFF
                self.data[offset + i] = (self.data[offset + i] & ~mask) | (byte & mask)
        return True

    # --- decoded views ----------------------------------------------------
    @property
    def command(self) -> int:
        return self.get(COMMAND, 2)

    def bar_address(self, index: int) -> int:
        """The address programmed into memory BAR `index` (flags stripped)."""
        bar = self.bars[index]
        if bar is None:
            return 0
        off = BAR0 + 4 * index
        addr = self.get(off, 4) & ~BAR_FLAGS
        if bar.is64:
            addr |= self.get(off + 4, 4) << 32
        return addr

    def set_bar_address(self, index: int, address: int) -> None:
        """Program a BAR as firmware would (the address must fit the BAR)."""
        bar = self.bars[index]
        if bar is None or address & (bar.size - 1) or not 0 < address <= bar.limit - bar.size:
            raise ValueError(f"BAR {index}: cannot place it at {address:#x}")
        off = BAR0 + 4 * index
        self.set(off, 4, (self.get(off, 4) & BAR_FLAGS) | (address & 0xFFFFFFF0))
        if bar.is64:
            self.set(off + 4, 4, address >> 32)

    def set_interrupt_status(self, pending: bool) -> None:
        if pending:
            self.data[STATUS] |= STATUS_INTERRUPT
        else:
            self.data[STATUS] &= ~STATUS_INTERRUPT & 0xFF

    # --- state ----------------------------------------------------------------
    def state(self) -> PciConfigState:
        from .states import PciConfigState

        return PciConfigState(data=bytes(self.data))

    def check_state(self, state: PciConfigState) -> bytes:
        """Validate saved config bytes against this device model; returns them.

        Read-only bits must match what this model built (a mismatch means the
        state belongs to another device); writable bits may be anything the
        guest could have written.
        """
        from .states import PciConfigState

        check_state_type(state, PciConfigState)
        data = check_bytes("pci config space", state.data, SIZE, exact=True)
        for i in range(SIZE):
            fixed = ~(self.wmask[i] | self.dynmask[i]) & 0xFF
            if (data[i] ^ self.data[i]) & fixed:
                raise ValueError(f"pci config space: read-only byte {i:#x} is {data[i]:#04x}, "
                                 f"this device has {self.data[i]:#04x}")
        return data

    def load(self, data: bytes) -> None:
        """Install bytes that `check_state` accepted."""
        self.data[:] = data


def valid_access(offset: int, size: int) -> bool:
    """A 1-, 2- or 4-byte access that stays within one dword."""
    return size in (1, 2, 4) and offset >= 0 and (offset & 3) + size <= 4


def overlaps(offset: int, size: int, start: int, length: int) -> bool:
    return offset < start + length and start < offset + size
