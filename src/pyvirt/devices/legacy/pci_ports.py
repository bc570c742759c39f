"""PCI configuration mechanism #1 (ports 0xcf8-0xcff) and the 0xcf9 reset register.

CONFIG_ADDRESS (offset 0) takes only 32-bit accesses: bit 31 enable, bus
23:16, device 15:11, function 10:8, register 7:2; reserved bits 30:24 and
1:0 read as zero. CONFIG_DATA (offsets 4-7) forwards 1-, 2- and 4-byte
accesses that fit in the addressed dword to `config_read(bus, dev, fn,
offset, size)` / `config_write(bus, dev, fn, offset, size, value)`, where
offset = register + (port - 0xcfc). With no callback, with the enable bit
clear, or when `config_read` returns None, reads are all-ones: the
"no device here" answer a PCI bus scan expects.

Byte port 0xcf9 (offset 1) is the reset control register of the PIIX/ICH
chipsets: a write with RST_CPU (bit 2) set calls `on_reset`, which is how
Linux's reboot=pci and many firmwares reset the machine. Reads return the
last value written, keeping SYS_RST and FULL_RST (bits 1, 3) and RST_CPU
(bit 2); the reserved bits read as zero.

Any other access to 0xcf8-0xcfb (a byte at 0xcf8, a word anywhere) is not
decoded: reads are all-ones and writes are dropped, as on a PIIX.
"""

from __future__ import annotations

import threading

from ._common import VALID_SIZES, check_int, check_state_type, lazy_states, ones

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from .states import PciConfigPortsState

    ConfigRead = Callable[[int, int, int, int, int], "int | None"]
    ConfigWrite = Callable[[int, int, int, int, int, int], None]

__getattr__ = lazy_states(__name__, ("PciConfigPortsState",))

PORT = 0xCF8
LENGTH = 8
ADDR_ENABLE = 1 << 31
ADDR_MASK = 0x80FFFFFC
RCR_OFFSET = 1
RCR_SYS_RST, RCR_RST_CPU, RCR_FULL_RST = 0x02, 0x04, 0x08
RCR_MASK = RCR_SYS_RST | RCR_RST_CPU | RCR_FULL_RST


class PciConfigPorts:
    LENGTH = LENGTH

    def __init__(self, on_reset: Callable[[], None], config_read: ConfigRead | None = None,
                 config_write: ConfigWrite | None = None) -> None:
        self._on_reset = on_reset
        self._config_read = config_read
        self._config_write = config_write
        # Guards CONFIG_ADDRESS: two vCPUs each doing address-then-data must
        # not see each other's address mid-pair (guests serialise with a lock
        # of their own; this keeps our half consistent).
        self._lock = threading.Lock()
        self._address = 0
        self._rcr = 0

    def read(self, offset: int, size: int) -> int:
        if size not in VALID_SIZES:
            return ones(size)
        if offset == 0 and size == 4:
            return self._address
        if offset == RCR_OFFSET and size == 1:
            return self._rcr
        target = self._target(offset, size)
        if target is None or self._config_read is None:
            return ones(size)
        value = self._config_read(*target, size)
        return ones(size) if value is None else value & ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in VALID_SIZES:
            return
        if offset == 0 and size == 4:
            with self._lock:
                self._address = value & ADDR_MASK
        elif offset == RCR_OFFSET and size == 1:
            self._rcr = value & RCR_MASK
            if value & RCR_RST_CPU:
                self._on_reset()
        else:
            target = self._target(offset, size)
            if target is not None and self._config_write is not None:
                self._config_write(*target, size, value & ones(size))

    def _target(self, offset: int, size: int) -> tuple[int, int, int, int] | None:
        """(bus, device, function, config offset) of a CONFIG_DATA access, or None."""
        byte = offset - 4
        if byte < 0 or byte + size > 4:
            return None  # not CONFIG_DATA, or an access spilling past its dword
        with self._lock:
            addr = self._address
        if not addr & ADDR_ENABLE:
            return None
        return (addr >> 16) & 0xFF, (addr >> 11) & 0x1F, (addr >> 8) & 0x07, (addr & 0xFC) + byte

    def state(self) -> PciConfigPortsState:
        from .states import PciConfigPortsState

        with self._lock:
            return PciConfigPortsState(address=self._address, reset_control=self._rcr)

    def restore(self, state: PciConfigPortsState) -> None:
        from .states import PciConfigPortsState

        check_state_type(state, PciConfigPortsState)
        if check_int("pci address", state.address, 0, 0xFFFFFFFF) & ~ADDR_MASK:
            raise ValueError(f"pci address {state.address:#x} has reserved bits set")
        if check_int("pci reset_control", state.reset_control, 0, 0xFF) & ~RCR_MASK:
            raise ValueError(f"pci reset_control {state.reset_control:#x} has reserved bits set")
        with self._lock:
            self._address, self._rcr = state.address, state.reset_control
