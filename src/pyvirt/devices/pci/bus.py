"""PCI bus 0: slots, the host bridge, both config access methods and BAR moves.

Functions sit at 00:dd.0 (dd = 0..31, function 0 only); 00:00.0 is the host
bridge. Config space is reached two ways that see the same bytes:

- configuration mechanism #1 through ports 0xcf8-0xcff: `config_ports()`
  builds the existing `PciConfigPorts` (which keeps the 0xcf9 reset
  register) with this bus as its backend;
- ECAM (PCI Express 4.0, 7.2.2): `ecam()` is a `BusDevice` for
  PCI_ECAM_BASE..+PCI_ECAM_SIZE, where the config byte of bus b, device d,
  function f, register r lives at (b << 20) | (d << 15) | (f << 12) | r.
  Accesses must be naturally aligned 1, 2 or 4 bytes.

Absent functions read all-ones (what a bus scan expects) and drop writes.

When a function's BAR moves (the guest rewrote it, or toggled Memory Space
Enable), the bus unregisters the BAR's handler from the MMIO `Bus` at the
old address and registers it at the new one, then calls
`on_bar_change(device, bar, old, new)` (with `device.mapped_bars()` already
updated) so the VMM can move what else hangs off the BAR (ioeventfds on
virtio notify addresses). A placement that
collides with another range is refused and logged, and the BAR decodes
nowhere until the guest moves it again.

`add(..., assign=True)` plays firmware: it places the BARs in the window
PCI_MMIO_START..PCI_MMIO_END (naturally aligned, largest first) and turns
on memory decoding, so a kernel booted directly finds them assigned.

The host bridge is 8086:0d57 with class 0x060000 (host bridge). The ID is
the one other KVM VMMs give their synthetic host bridge; no Linux quirk
keys on it, which is the point: the guest treats it as a plain bridge.
"""

from __future__ import annotations

import threading

from ..._log import get_logger
from ...arch.x86.layout import PCI_MMIO_END, PCI_MMIO_START
from ..bus import BusError
from ..legacy._common import check_state_type
from ..legacy.pci_ports import PciConfigPorts
from .config import CMD_MEMORY, COMMAND, INTERRUPT_LINE, PciConfigSpace
from .device import PciDevice

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..bus import Bus
    from .states import PciBusState

    BarChange = Callable[[PciDevice, int, "int | None", "int | None"], None]

log = get_logger(__name__)

NUM_SLOTS = 32
HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE = 0x8086, 0x0D57
CLASS_HOST_BRIDGE = 0x060000


class HostBridge(PciDevice):
    name = "pci-host-bridge"

    def __init__(self) -> None:
        super().__init__(PciConfigSpace(vendor_id=HOST_BRIDGE_VENDOR, device_id=HOST_BRIDGE_DEVICE,
                                        class_code=CLASS_HOST_BRIDGE))


class PciBus:
    def __init__(self, mmio_bus: Bus | None = None, *, on_bar_change: BarChange | None = None,
                 window: tuple[int, int] = (PCI_MMIO_START, PCI_MMIO_END)) -> None:
        self._mmio = mmio_bus
        self.on_bar_change = on_bar_change  # may be set later, before the guest runs
        # Serialises config accesses from different vCPUs: a BAR move must
        # not interleave with another access to the same function.
        self._lock = threading.RLock()
        self._slots: list[PciDevice | None] = [None] * NUM_SLOTS
        self._window_end = window[1]
        self._next_free = window[0]
        self.host_bridge = HostBridge()
        self.add(self.host_bridge, 0, assign=False)

    # --- building -------------------------------------------------------------
    def add(self, device: PciDevice, slot: int | None = None, *, irq: int | None = None,
            assign: bool = True) -> int:
        """Plug `device` in at 00:`slot`.0 (the first free slot if None); returns the slot.

        `irq` goes into Interrupt Line, where firmware records the INTx
        routing; `assign` places the BARs and enables memory decoding.
        """
        with self._lock:
            if slot is None:
                slot = next((i for i, d in enumerate(self._slots) if d is None), None)
                if slot is None:
                    raise ValueError("PCI bus 0 has no free slot")
            if not 0 <= slot < NUM_SLOTS or self._slots[slot] is not None:
                raise ValueError(f"PCI slot {slot} is taken or out of range")
            if irq is not None:
                device.config.set(INTERRUPT_LINE, 1, irq)
            if assign:
                self._assign(device)
            self._slots[slot] = device
            device.attach(self._map, self._moved)
            return slot

    def _assign(self, device: PciDevice) -> None:
        bars = sorted((b for b in device.config.bars if b is not None), key=lambda b: -b.size)
        placements = []
        cursor = self._next_free
        for bar in bars:
            addr = (cursor + bar.size - 1) & ~(bar.size - 1)
            if addr + bar.size > self._window_end:
                raise ValueError(f"{device.name}: BAR {bar.index} ({bar.size:#x} bytes) does not fit in "
                                 f"the PCI MMIO window ending at {self._window_end:#x}")
            placements.append((bar.index, addr))
            cursor = addr + bar.size
        for index, addr in placements:
            device.config.set_bar_address(index, addr)
        if placements:
            device.config.set(COMMAND, 2, device.config.command | CMD_MEMORY)
        self._next_free = cursor

    def device(self, slot: int) -> PciDevice | None:
        return self._slots[slot] if 0 <= slot < NUM_SLOTS else None

    def devices(self) -> list[tuple[int, PciDevice]]:
        return [(i, d) for i, d in enumerate(self._slots) if d is not None]

    def config_ports(self, on_reset: Callable[[], None]) -> PciConfigPorts:
        """The 0xcf8-0xcff handler (mechanism #1 and the 0xcf9 reset register)."""
        return PciConfigPorts(on_reset, self.config_read, self.config_write)

    def ecam(self) -> PciEcam:
        return PciEcam(self)

    # --- config access ----------------------------------------------------------
    def _function(self, bus: int, dev: int, fn: int) -> PciDevice | None:
        if bus != 0 or fn != 0 or not 0 <= dev < NUM_SLOTS:
            return None
        return self._slots[dev]

    def config_read(self, bus: int, dev: int, fn: int, offset: int, size: int) -> int | None:
        """Config bytes of bus:dev.fn, or None where no function answers."""
        with self._lock:
            device = self._function(bus, dev, fn)
            return None if device is None else device.config_read(offset, size)

    def config_write(self, bus: int, dev: int, fn: int, offset: int, size: int, value: int) -> None:
        with self._lock:
            device = self._function(bus, dev, fn)
            if device is not None:
                device.config_write(offset, size, value)

    # --- BAR moves ---------------------------------------------------------------
    def _map(self, device: PciDevice, index: int, old: int | None, new: int | None) -> bool:
        """Move BAR `index` of `device` on the MMIO bus; False if `new` is refused."""
        if self._mmio is None:
            return True
        if old is not None:
            self._mmio.unregister(old)
        if new is not None:
            bar = device.config.bars[index]
            size = bar.size if bar is not None else 0
            try:
                self._mmio.register(new, size, device.bar_device(index), f"{device.name} BAR{index}")
            except BusError as e:
                log.warning("%s: BAR %d not mapped at %#x: %s", device.name, index, new, e)
                return False
        return True

    def _moved(self, device: PciDevice, index: int, old: int | None, new: int | None) -> None:
        if self.on_bar_change is not None:
            self.on_bar_change(device, index, old, new)

    # --- state ------------------------------------------------------------------
    def state(self) -> PciBusState:
        from .states import PciBusState

        with self._lock:
            return PciBusState(host_bridge=self.host_bridge.config_state())

    def restore(self, state: PciBusState) -> None:
        from .states import PciBusState

        check_state_type(state, PciBusState)
        data = self.host_bridge.config.check_state(state.host_bridge)
        with self._lock:
            self.host_bridge.load_config(data)


class PciEcam:
    """The memory-mapped config space of bus 0 (a `BusDevice`)."""

    def __init__(self, bus: PciBus) -> None:
        self._bus = bus

    def read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4) or offset < 0 or offset % size:
            return (1 << (8 * size)) - 1 if size in (1, 2, 4, 8) else 0
        value = self._bus.config_read(offset >> 20, (offset >> 15) & 0x1F, (offset >> 12) & 7, offset & 0xFFF, size)
        return (1 << (8 * size)) - 1 if value is None else value

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4) or offset < 0 or offset % size:
            return
        self._bus.config_write(offset >> 20, (offset >> 15) & 0x1F, (offset >> 12) & 7, offset & 0xFFF, size,
                               value & ((1 << (8 * size)) - 1))
