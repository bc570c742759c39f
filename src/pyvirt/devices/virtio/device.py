"""The device side of virtio, independent of the transport.

A `VirtioDevice` declares its type, queues, features and config space, and
processes its queues when the transport tells it the guest notified one. The
transport (MMIO or PCI) owns everything the virtio spec calls "common
configuration": device status, feature negotiation, queue addresses and
sizes, and interrupt delivery, and calls this class's hooks.

Specification: Virtual I/O Device (VIRTIO) Version 1.2, sections 2 (basic
facilities), 4.1/4.2 (transports) and 5 (device types).
"""

from __future__ import annotations

import threading

from ..._log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ...memory.guest import GuestMemory
    from ..protocols import VirtioInterrupt
    from .queue import Virtqueue

# device types (spec 5)
NET, BLOCK, CONSOLE, RNG, BALLOON, VSOCK = 1, 2, 3, 4, 5, 19

# device status bits (spec 2.1)
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET, FAILED = 1, 2, 4, 8, 0x40, 0x80

# feature bits shared by every device (spec 6)
F_INDIRECT_DESC = 1 << 28
F_EVENT_IDX = 1 << 29
F_VERSION_1 = 1 << 32
F_ACCESS_PLATFORM = 1 << 33
F_RING_PACKED = 1 << 34

COMMON_FEATURES = F_INDIRECT_DESC | F_EVENT_IDX | F_VERSION_1

log = get_logger(__name__)


class VirtioDevice:
    """Base class of every device model. Subclasses set the class attributes
    and override the hooks they need; all hooks run on the I/O thread except
    `config_read`/`config_write` (vCPU thread, under the transport's lock).

    The life cycle the transport drives:
      reset() -> driver negotiates `features` -> activate(mem, queues, irq)
      -> queue_notify(i)... -> reset()
    """

    device_type: int = 0
    num_queues: int = 1
    queue_max_size: int = 256
    name: str = "virtio"

    def __init__(self) -> None:
        self.device_features = COMMON_FEATURES
        self.driver_features = 0  # set by the transport when FEATURES_OK is accepted
        self.mem: GuestMemory | None = None
        self.queues: Sequence[Virtqueue] = ()
        self.interrupt: VirtioInterrupt | None = None
        # Held by the I/O thread while it processes queues and by the transport
        # (vCPU thread) around status changes, so a reset never races a request.
        self.lock = threading.RLock()
        # Set when the driver broke the protocol (a malformed ring, say): the
        # transport then shows DEVICE_NEEDS_RESET in the status register until
        # the driver resets the device.
        self.broken = False

    # --- config space (device-specific part, spec 5.x.4) --------------------
    def config_bytes(self) -> bytes:
        """The device-specific configuration space as it reads now."""
        return b""

    def config_read(self, offset: int, size: int) -> int:
        data = self.config_bytes()
        if offset < 0 or size <= 0 or offset + size > len(data):
            return 0
        return int.from_bytes(data[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Most config spaces are read-only; writes are ignored."""

    # --- life cycle -----------------------------------------------------------
    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], interrupt: VirtioInterrupt) -> None:
        """The driver set DRIVER_OK: queues are ready, features final."""
        self.mem, self.queues, self.interrupt = mem, queues, interrupt

    def reset(self) -> None:
        """The driver wrote 0 to the status register (or the VM reset)."""
        self.mem, self.queues, self.interrupt = None, (), None
        self.driver_features = 0
        self.broken = False

    def needs_reset(self, reason: str) -> None:
        """The driver gave the device something malformed: stop using the
        queues, tell the driver (NEEDS_RESET + config interrupt), log once."""
        if not self.broken:
            log.warning("virtio-%s: %s; the device stops until the driver resets it", self.name, reason)
        self.broken = True
        if self.interrupt is not None:
            self.interrupt.config_changed()

    def queue_notify(self, index: int) -> None:
        """The driver made buffers available in queue `index`."""

    def close(self) -> None:
        """The VM is going away: release host resources (files, sockets, taps)."""

    # --- host side ------------------------------------------------------------
    def host_fds(self) -> list[tuple[int, object]]:
        """File descriptors the I/O thread should watch for this device, with a
        token passed back to `host_ready` (e.g. a TAP fd for received frames)."""
        return []

    def host_ready(self, token: object) -> None:
        """A descriptor from `host_fds` is readable."""

    def negotiated(self, feature: int) -> bool:
        return bool(self.driver_features & feature)
