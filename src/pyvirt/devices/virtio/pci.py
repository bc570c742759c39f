"""The modern virtio-pci transport (VIRTIO 1.2, section 4.1), non-transitional.

IDs (4.1.2): vendor 0x1af4, device 0x1040 + device type, revision 1,
subsystem 0x1af4:0x0040. Everything lives in one 64-bit memory BAR 0 of
`BAR_SIZE` (16 KiB), described by vendor capabilities (id 0x09, 4.1.4):

    0x0000 COMMON_CFG  (0x38 bytes, struct virtio_pci_common_cfg)
    0x0800 ISR_CFG     (1 byte; reading returns and clears it)
    0x1000 DEVICE_CFG  (the device's config space, if it has one)
    0x2000 NOTIFY_CFG  (notify_off_multiplier 4: queue i's address is 0x2000 + 4*i)
    0x3000 MSI-X table (one vector per queue plus one for config changes)
    0x3800 MSI-X PBA

plus a PCI_CFG capability (4.1.4.9), the window through config space into
the BAR that the spec requires a device to offer. The common configuration
takes each field at its natural width (64-bit fields also as two 32-bit
halves, as Linux writes them); other accesses read 0 and write nothing.

One notify address per queue lets the VMM bind an ioeventfd to each
(`notify_address(queue)` is the offset in BAR 0); a write that does reach
this class calls `kick(queue)`.

Interrupts: with MSI-X enabled, a used buffer signals the queue's vector
(queue_msix_vector) and a config change msix_config, through the injected
`send_msi(address, data)`; VIRTIO_MSI_NO_VECTOR (0xffff) means none. With
MSI-X disabled, the device sets an ISR bit (0: queue, 1: config) and holds
INTx (pin A) high until the driver reads ISR. A vector number beyond the
table reads back as NO_VECTOR, telling the driver the mapping failed.
"""

from __future__ import annotations

from ..legacy._common import check_int, check_state_type
from ..pci.config import CAP_ID_VENDOR, PciConfigSpace, overlaps
from ..pci.device import PciDevice
from ..pci.msix import Msix
from .common import NO_VECTOR, VirtioTransport
from .device import BLOCK, CONSOLE, NET

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ...memory.guest import GuestMemory
    from ..protocols import BusDevice, IrqLine
    from .device import VirtioDevice
    from .transport_states import VirtioPciState

VENDOR_ID = 0x1AF4
DEVICE_ID_BASE = 0x1040
REVISION = 1
SUBSYSTEM_ID = 0x0040
CLASS_CODES = {NET: 0x020000, BLOCK: 0x018000, CONSOLE: 0x078000}  # others: 0xff0000, "unassigned"

BAR = 0
BAR_SIZE = 0x4000
COMMON_OFFSET, COMMON_LENGTH = 0x0000, 0x38
ISR_OFFSET, ISR_LENGTH = 0x0800, 4
DEVICE_OFFSET, DEVICE_MAX = 0x1000, 0x1000
NOTIFY_OFFSET, NOTIFY_MULTIPLIER, NOTIFY_LENGTH = 0x2000, 4, 0x1000
MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET = 0x3000, 0x3800
MAX_VECTORS = (MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) // 16
MAX_QUEUES = NOTIFY_LENGTH // NOTIFY_MULTIPLIER

# virtio_pci_cap.cfg_type (4.1.4)
COMMON_CFG, NOTIFY_CFG, ISR_CFG, DEVICE_CFG, PCI_CFG = 1, 2, 3, 4, 5
ISR_QUEUE, ISR_CONFIG = 1, 2

# struct virtio_pci_common_cfg: offset -> (width, field)
(DEVICE_FEATURE_SELECT, DEVICE_FEATURE, DRIVER_FEATURE_SELECT, DRIVER_FEATURE, CONFIG_MSIX_VECTOR, NUM_QUEUES,
 DEVICE_STATUS, CONFIG_GENERATION, QUEUE_SELECT, QUEUE_SIZE, QUEUE_MSIX_VECTOR, QUEUE_ENABLE, QUEUE_NOTIFY_OFF,
 QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE) = (0x00, 0x04, 0x08, 0x0C, 0x10, 0x12, 0x14, 0x15, 0x16, 0x18, 0x1A,
                                            0x1C, 0x1E, 0x20, 0x28, 0x30)
_WIDTH = {DEVICE_FEATURE_SELECT: 4, DEVICE_FEATURE: 4, DRIVER_FEATURE_SELECT: 4, DRIVER_FEATURE: 4,
          CONFIG_MSIX_VECTOR: 2, NUM_QUEUES: 2, DEVICE_STATUS: 1, CONFIG_GENERATION: 1, QUEUE_SELECT: 2,
          QUEUE_SIZE: 2, QUEUE_MSIX_VECTOR: 2, QUEUE_ENABLE: 2, QUEUE_NOTIFY_OFF: 2,
          QUEUE_DESC: 8, QUEUE_DRIVER: 8, QUEUE_DEVICE: 8}
_RING_FIELDS = {QUEUE_DESC: "desc", QUEUE_DRIVER: "driver", QUEUE_DEVICE: "device"}


def _common_field(offset: int, size: int) -> tuple[int, int] | None:
    """(field offset, bit shift) of a well-formed common-config access, or None."""
    width = _WIDTH.get(offset)
    if width == size:
        return offset, 0
    if size == 4:  # one half of a 64-bit field
        if _WIDTH.get(offset) == 8:
            return offset, 0
        if _WIDTH.get(offset - 4) == 8:
            return offset - 4, 32
    return None


class VirtioPci(VirtioTransport, PciDevice):
    """A virtio device behind PCI; also the `BusDevice` for its BAR 0."""

    def __init__(self, device: VirtioDevice, mem: GuestMemory, kick: Callable[[int], None],
                 send_msi: Callable[[int, int], None], intx: IrqLine) -> None:
        if device.num_queues > MAX_QUEUES:
            raise ValueError(f"virtio-pci: {device.num_queues} queues, at most {MAX_QUEUES}")
        VirtioTransport.__init__(self, device, mem, kick)
        config = PciConfigSpace(vendor_id=VENDOR_ID, device_id=DEVICE_ID_BASE + device.device_type,
                                class_code=CLASS_CODES.get(device.device_type, 0xFF0000), revision=REVISION,
                                subsystem_vendor_id=VENDOR_ID, subsystem_id=SUBSYSTEM_ID, interrupt_pin=1)
        PciDevice.__init__(self, config, intx)
        self.name = f"virtio-pci-{device.name}"
        self.isr = 0
        self.config_vector = NO_VECTOR
        config.add_memory_bar(BAR, BAR_SIZE, is64=True)
        self.msix = Msix(min(device.num_queues + 1, MAX_VECTORS), send_msi, bar=BAR,
                         table_offset=MSIX_TABLE_OFFSET, pba_offset=MSIX_PBA_OFFSET)
        self.msix.install(config)
        self._add_cap(COMMON_CFG, COMMON_OFFSET, COMMON_LENGTH)
        self._add_cap(NOTIFY_CFG, NOTIFY_OFFSET, NOTIFY_MULTIPLIER * device.num_queues,
                      NOTIFY_MULTIPLIER.to_bytes(4, "little"))
        self._add_cap(ISR_CFG, ISR_OFFSET, ISR_LENGTH)
        self.device_cfg_length = min(len(device.config_bytes()), DEVICE_MAX)
        if self.device_cfg_length:
            self._add_cap(DEVICE_CFG, DEVICE_OFFSET, self.device_cfg_length)
        # PCI_CFG: bar, offset, length and the 4-byte data window are the driver's to write.
        self.pci_cfg_cap = self._add_cap(PCI_CFG, 0, 0, bytes(4),
                                         wmask=bytes([0, 0, 0xFF, 0, 0, 0]) + b"\xff" * 12)

    def _add_cap(self, cfg_type: int, offset: int, length: int, extra: bytes = b"", wmask: bytes = b"") -> int:
        # struct virtio_pci_cap after id/next: cap_len, cfg_type, bar, id, padding[2], offset, length
        cap_len = 16 + len(extra)
        body = (bytes([cap_len, cfg_type, BAR, 0, 0, 0]) + offset.to_bytes(4, "little")
                + length.to_bytes(4, "little") + extra)
        return self.config.add_capability(CAP_ID_VENDOR, body, wmask)

    def notify_address(self, queue: int) -> int:
        """Offset in BAR 0 of queue `queue`'s notify register (for an ioeventfd)."""
        return NOTIFY_OFFSET + NOTIFY_MULTIPLIER * queue

    def bar_device(self, index: int) -> BusDevice:
        return self

    # --- interrupts --------------------------------------------------------------
    def _signal(self, vector: int, isr_bit: int) -> None:
        if self.msix.enabled:
            if vector != NO_VECTOR:
                self.msix.signal(vector)
        else:
            self.isr |= isr_bit
            self.set_intx(True)

    def _signal_queue(self, index: int) -> None:
        q = self.queues[index] if 0 <= index < len(self.queues) else None
        self._signal(q.msix_vector if q is not None else NO_VECTOR, ISR_QUEUE)

    def _signal_config(self) -> None:
        self._signal(self.config_vector, ISR_CONFIG)

    def _reset_interrupts(self) -> None:
        self.isr = 0
        self.config_vector = NO_VECTOR
        self.set_intx(False)

    def intx_allowed(self) -> bool:
        return not self.msix.enabled

    def update_intx(self) -> None:
        with self.lock:  # the I/O thread changes the level under it too
            super().update_intx()

    def _vector(self, value: int) -> int:
        """What a vector register keeps: the value, or NO_VECTOR if the table lacks it."""
        return value if value < self.msix.vectors else NO_VECTOR

    # --- PCI config space hooks ------------------------------------------------------
    def config_written(self, offset: int, size: int) -> None:
        if overlaps(offset, size, self.msix.control_offset, 2):
            self.msix.control_written(self.config)
            self.update_intx()
        if overlaps(offset, size, self.pci_cfg_cap + 16, 4):
            self._pci_cfg_window(write=True)

    def config_reading(self, offset: int, size: int) -> None:
        if overlaps(offset, size, self.pci_cfg_cap + 16, 4):
            self._pci_cfg_window(write=False)

    def _pci_cfg_window(self, write: bool) -> None:
        """An access to pci_cfg_data: forward it to BAR 0 (4.1.4.9.2)."""
        cap = self.pci_cfg_cap
        bar, offset, length = self.config.get(cap + 4, 1), self.config.get(cap + 8, 4), self.config.get(cap + 12, 4)
        if bar != BAR or length not in (1, 2, 4) or offset % length or offset + length > BAR_SIZE:
            return
        if write:
            self.write(offset, length, self.config.get(cap + 16, length))
        else:
            self.config.set(cap + 16, length, self.read(offset, length))

    # --- BAR 0 ---------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8) or offset < 0:
            return 0
        if offset + size <= COMMON_LENGTH:
            field = _common_field(offset, size)
            if field is None:
                return 0
            with self.lock:
                return (self._common_read(field[0]) >> field[1]) & ((1 << (8 * size)) - 1)
        if offset == ISR_OFFSET:
            with self.lock:
                value, self.isr = self.isr, 0
                self.set_intx(False)
                return value
        if DEVICE_OFFSET <= offset and offset + size <= DEVICE_OFFSET + DEVICE_MAX:
            with self.lock:
                return self.device.config_read(offset - DEVICE_OFFSET, size) & ((1 << (8 * size)) - 1)
        if MSIX_TABLE_OFFSET <= offset and offset + size <= MSIX_TABLE_OFFSET + self.msix.table_size:
            return self.msix.table_read(offset - MSIX_TABLE_OFFSET, size)
        if MSIX_PBA_OFFSET <= offset and offset + size <= MSIX_PBA_OFFSET + self.msix.pba_size:
            return self.msix.pba_read(offset - MSIX_PBA_OFFSET, size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4, 8) or offset < 0:
            return
        value &= (1 << (8 * size)) - 1
        if offset + size <= COMMON_LENGTH:
            field = _common_field(offset, size)
            if field is None:
                return
            if field[0] == DEVICE_STATUS:
                self.write_status(value)  # takes device.lock before self.lock
            else:
                with self.lock:
                    self._common_write(field[0], field[1], size, value)
        elif NOTIFY_OFFSET <= offset < NOTIFY_OFFSET + NOTIFY_MULTIPLIER * self.device.num_queues:
            self.notify((offset - NOTIFY_OFFSET) // NOTIFY_MULTIPLIER)
        elif DEVICE_OFFSET <= offset and offset + size <= DEVICE_OFFSET + DEVICE_MAX:
            with self.lock:
                self.device.config_write(offset - DEVICE_OFFSET, size, value)
        elif MSIX_TABLE_OFFSET <= offset and offset + size <= MSIX_TABLE_OFFSET + self.msix.table_size:
            self.msix.table_write(offset - MSIX_TABLE_OFFSET, size, value)

    def _common_read(self, field: int) -> int:
        q = self.selected_queue()
        if field == DEVICE_FEATURE_SELECT:
            return self.device_features_sel
        if field == DEVICE_FEATURE:
            return self.device_features_word()
        if field == DRIVER_FEATURE_SELECT:
            return self.driver_features_sel
        if field == DRIVER_FEATURE:
            return self.driver_features_word()
        if field == CONFIG_MSIX_VECTOR:
            return self.config_vector
        if field == NUM_QUEUES:
            return len(self.queues)
        if field == DEVICE_STATUS:
            return self.status_register()
        if field == CONFIG_GENERATION:
            return self.config_generation & 0xFF
        if field == QUEUE_SELECT:
            return self.queue_sel
        if q is None:
            return 0  # every per-queue field of a queue that does not exist reads 0
        if field == QUEUE_SIZE:
            return q.size & 0xFFFF
        if field == QUEUE_MSIX_VECTOR:
            return q.msix_vector
        if field == QUEUE_ENABLE:
            return int(q.ready)
        if field == QUEUE_NOTIFY_OFF:
            return self.queue_sel
        return int(getattr(q, _RING_FIELDS[field]))

    def _common_write(self, field: int, shift: int, size: int, value: int) -> None:
        if field == DEVICE_FEATURE_SELECT:
            self.device_features_sel = value
        elif field == DRIVER_FEATURE_SELECT:
            self.driver_features_sel = value
        elif field == DRIVER_FEATURE:
            self.set_driver_features_word(value)
        elif field == CONFIG_MSIX_VECTOR:
            self.config_vector = self._vector(value)
        elif field == QUEUE_SELECT:
            self.queue_sel = value
        elif field == QUEUE_MSIX_VECTOR:
            # Only routing: the driver may re-point it at any time (Linux
            # writes NO_VECTOR when it tears queues down).
            q = self.selected_queue()
            if q is not None:
                q.msix_vector = self._vector(value)
        elif field in (QUEUE_SIZE, QUEUE_ENABLE) or field in _RING_FIELDS:
            q = self.writable_queue()
            if q is None:
                return
            if field == QUEUE_SIZE:
                q.size = value
            elif field == QUEUE_ENABLE:
                q.ready = value == 1  # the driver never writes 0 (4.1.4.3.2)
            else:
                name = _RING_FIELDS[field]
                mask = ((1 << (8 * size)) - 1) << shift
                setattr(q, name, (getattr(q, name) & ~mask) | (value << shift))

    # --- state ---------------------------------------------------------------------
    def state(self) -> VirtioPciState:
        from .transport_states import VirtioPciState

        with self.device.lock, self.lock:
            return VirtioPciState(transport=self.transport_state(), config=self.config.state(),
                                  msix=self.msix.state(), isr=self.isr, config_vector=self.config_vector)

    def restore(self, state: VirtioPciState) -> None:
        """Load untrusted saved state (ValueError if it is not valid): config
        space (the BARs move to their saved addresses), MSI-X table, virtio
        registers; the device is re-activated with its rings if it was running."""
        from .transport_states import VirtioPciState

        check_state_type(state, VirtioPciState)
        config = self.config.check_state(state.config)
        table, pending = self.msix.check_state(state.msix)
        isr = check_int("virtio-pci isr", state.isr, 0, ISR_QUEUE | ISR_CONFIG)
        vector = check_int("virtio-pci config_vector", state.config_vector, 0, 0xFFFF)
        if vector != NO_VECTOR and vector >= self.msix.vectors:
            raise ValueError(f"virtio-pci config_vector {vector} is beyond the MSI-X table")
        configs, rings = self.check_transport_state(state.transport)
        for i, q in enumerate(configs):
            if q.msix_vector != NO_VECTOR and q.msix_vector >= self.msix.vectors:
                raise ValueError(f"virtqueue {i}: MSI-X vector {q.msix_vector} is beyond the table")
            if q.size > 0xFFFF:
                raise ValueError(f"virtqueue {i}: size {q.size} does not fit the 16-bit register")
        with self.device.lock, self.lock:
            self.load_config(config)
            self.msix.load(table, pending, self.config)
            self.load_transport_state(state.transport, configs, rings)
            self.isr, self.config_vector = isr, vector
            self.set_intx(bool(isr))
