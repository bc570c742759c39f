"""The virtio-mmio transport, version 2 (VIRTIO 1.2, section 4.2.2).

A `BusDevice` of `LENGTH` (0x200) bytes: 32-bit registers from 0x000, the
device-specific configuration space from 0x100. Register map (R: read, W:
write):

    0x000 R MagicValue "virt"      0x004 R Version (2)       0x008 R DeviceID
    0x00c R VendorID               0x010 R DeviceFeatures    0x014 W DeviceFeaturesSel
    0x020 W DriverFeatures         0x024 W DriverFeaturesSel 0x030 W QueueSel
    0x034 R QueueNumMax            0x038 W QueueNum          0x044 RW QueueReady
    0x050 W QueueNotify            0x060 R InterruptStatus   0x064 W InterruptACK
    0x070 RW Status                0x080/0x084 W QueueDescLow/High
    0x090/0x094 W QueueDriverLow/High  0x0a0/0x0a4 W QueueDeviceLow/High
    0x0ac W SHMSel  0x0b0-0x0bc R SHMLen/SHMBase (no shared memory: all-ones)
    0x0fc R ConfigGeneration       0x100+ RW device configuration

Registers take aligned 32-bit accesses only; the configuration space takes
1-, 2-, 4- and 8-byte accesses. Anything else reads 0 and is ignored: a
guest's odd access must never stop the VM. Write-only registers read back
the value last written (the spec leaves such reads undefined).

VendorID is 0x54565950: little-endian, its bytes spell "PYVT" (QEMU's
0x554d4551 spells "QEMU" the same way). Linux ignores it.

Interrupts: the line is level-triggered. `used()` sets InterruptStatus bit 0
("used buffer"), `config_changed()` bit 1 ("configuration change"), and the
line is high while any bit is set; InterruptACK clears the bits written.
QueueNotify calls `kick(index)`; in a VM that write is an ioeventfd and
never reaches this class, and the I/O thread runs `device.queue_notify`.

The kernel finds the device from the command line:
`VirtioMmio.cmdline_param(base, irq)` gives `virtio_mmio.device=4K@0x...:irq`.
"""

from __future__ import annotations

from ..legacy._common import check_int, check_state_type
from .common import U32, VirtioTransport
from .device import DRIVER_OK

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ...memory.guest import GuestMemory
    from ..protocols import IrqLine
    from .device import VirtioDevice
    from .transport_states import VirtioMmioState

LENGTH = 0x200
CONFIG = 0x100
MAGIC = 0x74726976  # "virt"
VERSION = 2
VENDOR_ID = 0x54565950  # "PYVT"
INT_VRING, INT_CONFIG = 1, 2

(MAGIC_VALUE, VERSION_REG, DEVICE_ID, VENDOR_ID_REG, DEVICE_FEATURES, DEVICE_FEATURES_SEL,
 DRIVER_FEATURES, DRIVER_FEATURES_SEL, QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY,
 QUEUE_NOTIFY, INTERRUPT_STATUS, INTERRUPT_ACK, STATUS) = (
    0x000, 0x004, 0x008, 0x00C, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044,
    0x050, 0x060, 0x064, 0x070)
QUEUE_DESC_LOW, QUEUE_DESC_HIGH, QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH = 0x080, 0x084, 0x090, 0x094
QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH = 0x0A0, 0x0A4
SHM_SEL, SHM_LEN_LOW, SHM_BASE_HIGH, CONFIG_GENERATION = 0x0AC, 0x0B0, 0x0BC, 0x0FC
_ADDRESS_REGS = {QUEUE_DESC_LOW: "desc", QUEUE_DRIVER_LOW: "driver", QUEUE_DEVICE_LOW: "device"}


class VirtioMmio(VirtioTransport):
    LENGTH = LENGTH

    def __init__(self, device: VirtioDevice, mem: GuestMemory, irq: IrqLine, kick: Callable[[int], None]) -> None:
        super().__init__(device, mem, kick)
        self._irq = irq
        self.interrupt_status = 0

    @staticmethod
    def cmdline_param(base: int, irq: int, size: int = 0x1000) -> str:
        """The kernel parameter that declares a device at `base` on `irq`."""
        return f"virtio_mmio.device={size // 1024}K@{base:#x}:{irq}"

    # --- interrupts --------------------------------------------------------------
    def _raise(self, bits: int) -> None:
        was = self.interrupt_status
        self.interrupt_status |= bits
        if not was:
            self._irq.set_level(True)

    def _signal_queue(self, index: int) -> None:
        self._raise(INT_VRING)

    def _signal_config(self) -> None:
        self._raise(INT_CONFIG)

    def _reset_interrupts(self) -> None:
        if self.interrupt_status:
            self.interrupt_status = 0
            self._irq.set_level(False)

    def _ack(self, bits: int) -> None:
        if self.interrupt_status and not self.interrupt_status & ~bits:
            self.interrupt_status = 0
            self._irq.set_level(False)
        else:
            self.interrupt_status &= ~bits

    @property
    def irq_level(self) -> bool:
        return bool(self.interrupt_status)

    # --- bus interface -------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset >= CONFIG:
            if size not in (1, 2, 4, 8) or offset + size > LENGTH:
                return 0
            with self.lock:
                return self.device.config_read(offset - CONFIG, size) & ((1 << (8 * size)) - 1)
        if size != 4 or offset < 0 or offset & 3:
            return 0
        with self.lock:
            return self._read_reg(offset) & U32

    def _read_reg(self, offset: int) -> int:
        q = self.selected_queue()
        if offset == MAGIC_VALUE:
            return MAGIC
        if offset == VERSION_REG:
            return VERSION
        if offset == DEVICE_ID:
            return self.device.device_type
        if offset == VENDOR_ID_REG:
            return VENDOR_ID
        if offset == DEVICE_FEATURES:
            return self.device_features_word()
        if offset == DEVICE_FEATURES_SEL:
            return self.device_features_sel
        if offset == DRIVER_FEATURES:
            return self.driver_features_word()
        if offset == DRIVER_FEATURES_SEL:
            return self.driver_features_sel
        if offset == QUEUE_SEL:
            return self.queue_sel
        if offset == QUEUE_NUM_MAX:
            return self.device.queue_max_size if q is not None else 0
        if offset == QUEUE_NUM:
            return q.size if q is not None else 0
        if offset == QUEUE_READY:
            return int(q.ready) if q is not None else 0
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return self.status_register()
        if QUEUE_DESC_LOW <= offset <= QUEUE_DEVICE_HIGH:
            name = _ADDRESS_REGS.get(offset & ~4)
            if name is None or q is None:
                return 0
            return getattr(q, name) >> (32 if offset & 4 else 0)
        if SHM_LEN_LOW <= offset <= SHM_BASE_HIGH:
            return U32  # no shared memory region: length and base read as -1
        if offset == CONFIG_GENERATION:
            return self.config_generation
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= CONFIG:
            if size in (1, 2, 4, 8) and offset + size <= LENGTH:
                with self.lock:
                    self.device.config_write(offset - CONFIG, size, value & ((1 << (8 * size)) - 1))
            return
        if size != 4 or offset < 0 or offset & 3:
            return
        value &= U32
        if offset == QUEUE_NOTIFY:
            self.notify(value & 0xFFFF)
        elif offset == STATUS:
            self.write_status(value)
        else:
            with self.lock:
                self._write_reg(offset, value)

    def _write_reg(self, offset: int, value: int) -> None:
        if offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES:
            self.set_driver_features_word(value)
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == INTERRUPT_ACK:
            self._ack(value)
        elif offset == QUEUE_READY:
            q = self.selected_queue()
            # Ready may go back to 0 before DRIVER_OK (a driver abandoning a
            # queue it set up); the registers are frozen after.
            if q is not None and not self.status & DRIVER_OK:
                q.ready = bool(value & 1)
        else:
            q = self.writable_queue()
            if q is None:
                return
            if offset == QUEUE_NUM:
                q.size = value
            elif QUEUE_DESC_LOW <= offset <= QUEUE_DEVICE_HIGH and (offset & ~4) in _ADDRESS_REGS:
                name = _ADDRESS_REGS[offset & ~4]
                shift = 32 if offset & 4 else 0
                setattr(q, name, (getattr(q, name) & ~(U32 << shift)) | (value << shift))

    # --- state ---------------------------------------------------------------------
    def state(self) -> VirtioMmioState:
        from .transport_states import VirtioMmioState

        with self.device.lock, self.lock:
            return VirtioMmioState(transport=self.transport_state(), interrupt_status=self.interrupt_status)

    def restore(self, state: VirtioMmioState) -> None:
        """Load untrusted saved state (ValueError if it is not valid); the
        device is re-activated with its rings if it was running."""
        from .transport_states import VirtioMmioState

        check_state_type(state, VirtioMmioState)
        isr = check_int("virtio-mmio interrupt_status", state.interrupt_status, 0, INT_VRING | INT_CONFIG)
        configs, rings = self.check_transport_state(state.transport)
        with self.device.lock, self.lock:
            self.load_transport_state(state.transport, configs, rings)
            if isr != self.interrupt_status:
                self.interrupt_status = isr
                self._irq.set_level(bool(isr))
