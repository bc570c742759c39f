"""What the virtio-mmio and virtio-pci transports share: the common configuration.

Both transports expose the same state through different registers (spec
4.1.4.3 for PCI's common configuration structure, 4.2.2 for MMIO): device
status, the two 32-bit feature windows, a queue selector and per-queue size,
enable bit and ring addresses. `VirtioTransport` holds that state, enforces
the negotiation rules, builds the virtqueues and activates the device; a
transport subclass maps registers onto it and implements interrupt delivery
(`_signal_queue`, `_signal_config`, `_reset_interrupts`).

Rules the guest cannot break (spec 2.1, 2.2, 3.1):
- Status bits only accumulate until the driver writes 0, which resets the
  device and the transport; the device's own NEEDS_RESET bit survives the
  driver writing status back.
- FEATURES_OK sticks only if the driver's features are a subset of the
  device's and include VERSION_1 (legacy drivers are not served); after it,
  feature writes are ignored.
- Queue registers are frozen once DRIVER_OK is set (no VIRTIO_F_RING_RESET).
- DRIVER_OK builds a `Virtqueue` per enabled queue; a bad size or a ring
  outside guest memory sets NEEDS_RESET and raises a config interrupt
  instead of activating (logged at warning level once per transport).

The transport is the device's `VirtioInterrupt`. Locking: `device.lock` is
taken before the transport's own `lock`, never after, both by status writes
here and by the I/O thread (which holds `device.lock` while it processes
queues and calls `used()`, which takes `lock`). Kicks are made outside both.
"""

from __future__ import annotations

import threading

from ..._log import get_logger
from ...memory.errors import GuestMemoryError
from ..legacy._common import check_bool, check_int, check_state_type
from .device import (ACKNOWLEDGE, DRIVER, DRIVER_OK, F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, FAILED,
                     FEATURES_OK, NEEDS_RESET)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ...memory.guest import GuestMemory
    from .device import VirtioDevice
    from .queue import Virtqueue
    from .transport_states import VirtioTransportState

log = get_logger(__name__)

DRIVER_STATUS_BITS = ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK | FAILED
NO_VECTOR = 0xFFFF  # VIRTIO_MSI_NO_VECTOR
U32, U64 = (1 << 32) - 1, (1 << 64) - 1


class QueueConfig:
    """The driver's settings for one queue, before and after activation."""

    __slots__ = ("size", "ready", "desc", "driver", "device", "msix_vector")

    def __init__(self, size: int) -> None:
        self.size = size  # the device's maximum until the driver writes a smaller one
        self.ready = False
        self.desc = self.driver = self.device = 0
        self.msix_vector = NO_VECTOR


class VirtioTransport:
    def __init__(self, device: VirtioDevice, mem: GuestMemory, kick: Callable[[int], None]) -> None:
        self.device = device
        self.mem = mem
        self._kick = kick
        self.lock = threading.RLock()
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.config_generation = 0
        self.queues = self._fresh_queues()
        self.active: list[Virtqueue] | None = None  # what the device was handed at DRIVER_OK
        self._warned = False
        self.errors = 0  # setup errors that set NEEDS_RESET

    def _fresh_queues(self) -> list[QueueConfig]:
        return [QueueConfig(self.device.queue_max_size) for _ in range(self.device.num_queues)]

    # --- hooks for the concrete transport --------------------------------------
    def _signal_queue(self, index: int) -> None:
        raise NotImplementedError

    def _signal_config(self) -> None:
        raise NotImplementedError

    def _reset_interrupts(self) -> None:
        """The driver reset the device: clear pending interrupts and vectors."""

    # --- VirtioInterrupt ------------------------------------------------------------
    def used(self, queue: int) -> None:
        with self.lock:
            self._signal_queue(queue)

    def config_changed(self) -> None:
        with self.lock:
            self.config_generation = (self.config_generation + 1) & U32
            self._signal_config()

    # --- features --------------------------------------------------------------------
    def device_features_word(self) -> int:
        sel = self.device_features_sel
        return (self.device.device_features >> (32 * sel)) & U32 if sel < 2 else 0

    def driver_features_word(self) -> int:
        sel = self.driver_features_sel
        return (self.driver_features >> (32 * sel)) & U32 if sel < 2 else 0

    def set_driver_features_word(self, value: int) -> None:
        sel = self.driver_features_sel
        if sel >= 2 or self.status & FEATURES_OK:
            return
        shift = 32 * sel
        self.driver_features = (self.driver_features & ~(U32 << shift)) | ((value & U32) << shift)

    def features_acceptable(self, features: int) -> bool:
        return bool(features & F_VERSION_1) and not features & ~self.device.device_features

    # --- queues ----------------------------------------------------------------------
    def selected_queue(self) -> QueueConfig | None:
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    def writable_queue(self) -> QueueConfig | None:
        """The selected queue if the driver may still change its settings: until
        DRIVER_OK. virtio-pci has no way to disable a queue, so a driver that
        rewrites an enabled queue before DRIVER_OK (QEMU allows it) gets the
        new settings, checked like any others at DRIVER_OK."""
        q = self.selected_queue()
        if q is None or self.status & DRIVER_OK:
            return None
        return q

    def notify(self, index: int) -> None:
        """The driver notified queue `index`: pass it on if that queue runs.
        Called without locks held (the kick may run the device at once)."""
        active = self.active
        if active is not None and any(q.index == index for q in active):
            self._kick(index)

    # --- status ----------------------------------------------------------------------
    def write_status(self, value: int) -> None:
        value &= 0xFF
        with self.device.lock, self.lock:
            if value == 0:
                self._reset()
                return
            old = self.status
            new = old | (value & DRIVER_STATUS_BITS)
            if new & FEATURES_OK and not old & FEATURES_OK:
                if self.features_acceptable(self.driver_features):
                    self.device.driver_features = self.driver_features
                else:
                    new &= ~FEATURES_OK
            if new & DRIVER_OK and not old & DRIVER_OK and not new & FEATURES_OK:
                new &= ~DRIVER_OK  # negotiation never finished: nothing to run
            self.status = new
            if new & DRIVER_OK and not old & DRIVER_OK:
                self._activate()

    def reset(self) -> None:
        """Reset device and transport, as the driver writing 0 does (VM reset too)."""
        with self.device.lock, self.lock:
            self._reset()

    def _reset(self) -> None:
        self.device.reset()
        self.status = 0
        self.device_features_sel = self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.queues = self._fresh_queues()
        self.active = None
        self._reset_interrupts()

    def _build_queues(self) -> list[Virtqueue]:
        from .queue import Virtqueue

        event_idx = bool(self.driver_features & F_EVENT_IDX)
        indirect = bool(self.driver_features & F_INDIRECT_DESC)
        queues = []
        for i, q in enumerate(self.queues):
            if not q.ready:
                continue
            if not 1 <= q.size <= self.device.queue_max_size:
                from .queue import VirtqueueError

                raise VirtqueueError(f"virtqueue {i}: size {q.size} is not in 1..{self.device.queue_max_size}")
            queues.append(Virtqueue(self.mem, q.size, q.desc, q.driver, q.device, event_idx=event_idx,
                                    indirect=indirect, index=i))
        return queues

    def _activate(self) -> None:
        from .queue import VirtqueueError

        try:
            queues = self._build_queues()
        except VirtqueueError as e:
            self.set_needs_reset(str(e))
            return
        try:
            self.device.activate(self.mem, queues, self)
        except (VirtqueueError, GuestMemoryError) as e:
            self.device.reset()
            self.set_needs_reset(str(e))
            return
        self.active = queues

    def status_register(self) -> int:
        """The status the driver reads: a device that found the driver's rings
        malformed (`device.broken`) shows NEEDS_RESET too."""
        return self.status | (NEEDS_RESET if self.device.broken else 0)

    def set_needs_reset(self, reason: str) -> None:
        """The device cannot go on until the driver resets it (spec 2.1.2)."""
        with self.lock:
            self.errors += 1
            if not self._warned:
                self._warned = True
                log.warning("%s: needs reset: %s", self.device.name, reason)
            else:
                log.debug("%s: needs reset: %s", self.device.name, reason)
            self.status |= NEEDS_RESET
            self.config_changed()

    # --- state ---------------------------------------------------------------------
    def transport_state(self) -> VirtioTransportState:
        """The common state; the caller holds `device.lock` and `lock` so no
        queue moves while it is read."""
        from .transport_states import VirtioTransportState, VirtqueueConfigState

        rings = {q.index: q.state() for q in self.active or ()}
        return VirtioTransportState(
            status=self.status, device_features_sel=self.device_features_sel,
            driver_features_sel=self.driver_features_sel, driver_features=self.driver_features,
            queue_sel=self.queue_sel, config_generation=self.config_generation,
            queues=tuple(VirtqueueConfigState(size=q.size, ready=q.ready, desc=q.desc, driver=q.driver,
                                              device=q.device, msix_vector=q.msix_vector, ring=rings.get(i))
                         for i, q in enumerate(self.queues)),
            active=self.active is not None)

    def check_transport_state(self, state: VirtioTransportState) -> tuple[list[QueueConfig], list[Virtqueue] | None]:
        """Validate untrusted saved state; returns the queue configs and, if
        the device was active, its rebuilt virtqueues. Raises ValueError."""
        from .queue import QueueState, Virtqueue, VirtqueueError
        from .transport_states import VirtioTransportState, VirtqueueConfigState

        check_state_type(state, VirtioTransportState)
        status = check_int("virtio status", state.status, 0, 0xFF)
        if status & ~(DRIVER_STATUS_BITS | NEEDS_RESET):
            raise ValueError(f"virtio status {status:#x} has undefined bits")
        check_int("virtio device_features_sel", state.device_features_sel, 0, U32)
        check_int("virtio driver_features_sel", state.driver_features_sel, 0, U32)
        features = check_int("virtio driver_features", state.driver_features, 0, U64)
        if status & FEATURES_OK and not self.features_acceptable(features):
            raise ValueError(f"virtio driver features {features:#x} were never acceptable to this device")
        if status & DRIVER_OK and not status & FEATURES_OK:
            raise ValueError("virtio status has DRIVER_OK without FEATURES_OK")
        check_int("virtio queue_sel", state.queue_sel, 0, U32)
        check_int("virtio config_generation", state.config_generation, 0, U32)
        active = check_bool("virtio active", state.active)
        if active and (not status & DRIVER_OK or status & NEEDS_RESET):
            raise ValueError("virtio state is active without DRIVER_OK, or with NEEDS_RESET")
        if not isinstance(state.queues, tuple) or len(state.queues) != len(self.queues):
            raise ValueError(f"virtio state has {len(state.queues) if isinstance(state.queues, tuple) else '?'} "
                             f"queues, this device has {len(self.queues)}")
        configs: list[QueueConfig] = []
        rings: list[Virtqueue] = []
        for i, qs in enumerate(state.queues):
            check_state_type(qs, VirtqueueConfigState)
            q = QueueConfig(check_int(f"virtqueue {i} size", qs.size, 0, U32))
            q.ready = check_bool(f"virtqueue {i} ready", qs.ready)
            q.desc = check_int(f"virtqueue {i} desc", qs.desc, 0, U64)
            q.driver = check_int(f"virtqueue {i} driver", qs.driver, 0, U64)
            q.device = check_int(f"virtqueue {i} device", qs.device, 0, U64)
            q.msix_vector = check_int(f"virtqueue {i} msix_vector", qs.msix_vector, 0, 0xFFFF)
            configs.append(q)
            if not (active and q.ready):
                if qs.ring is not None:
                    raise ValueError(f"virtqueue {i}: ring state for a queue that is not running")
                continue
            ring = qs.ring
            if not isinstance(ring, QueueState):
                raise ValueError(f"virtqueue {i}: running, but no ring state")
            if ((ring.size, ring.desc, ring.avail, ring.used) != (q.size, q.desc, q.driver, q.device)
                    or ring.event_idx != bool(features & F_EVENT_IDX)
                    or ring.indirect != bool(features & F_INDIRECT_DESC)):
                raise ValueError(f"virtqueue {i}: ring state disagrees with the queue registers or features")
            if q.size > self.device.queue_max_size:
                raise ValueError(f"virtqueue {i}: size {q.size} exceeds the device maximum")
            try:
                rings.append(Virtqueue.from_state(self.mem, ring, index=i))
            except VirtqueueError as e:
                raise ValueError(str(e)) from e
        return configs, rings if active else None

    def load_transport_state(self, state: VirtioTransportState, configs: list[QueueConfig],
                             rings: list[Virtqueue] | None) -> None:
        """Install state `check_transport_state` accepted; re-activates the
        device with the saved rings. The caller holds `device.lock` and `lock`."""
        if self.active is not None:
            self.device.reset()
        self.status = state.status
        self.device_features_sel = state.device_features_sel
        self.driver_features_sel = state.driver_features_sel
        self.driver_features = state.driver_features
        self.queue_sel = state.queue_sel
        self.config_generation = state.config_generation
        self.queues = configs
        self.device.driver_features = state.driver_features if state.status & FEATURES_OK else 0
        self.active = None
        if rings is not None:
            self.device.activate(self.mem, rings, self)
            self.active = rings
