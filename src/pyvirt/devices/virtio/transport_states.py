"""The saved state of the virtio transports: frozen dataclasses of plain data.

Loaded only by `state()` and `restore()`, so building a VM does not import
`dataclasses` for them. The contents of the rings are in guest memory and
travel with it; what is here is where the rings are and how far the device
got (`QueueState`), plus every register the driver can read back.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..pci.states import MsixState, PciConfigState
from .queue import QueueState


@dataclass(frozen=True)
class VirtqueueConfigState:
    """One queue's registers; `ring` is the running queue's state once the
    device is active (None for a queue the driver did not enable)."""

    size: int = 0
    ready: bool = False
    desc: int = 0
    driver: int = 0
    device: int = 0
    msix_vector: int = 0xFFFF
    ring: QueueState | None = None
    version: int = 1


@dataclass(frozen=True)
class VirtioTransportState:
    """The common configuration (spec 4.1.4.3 / 4.2.2) every transport has."""

    status: int = 0
    device_features_sel: int = 0
    driver_features_sel: int = 0
    driver_features: int = 0
    queue_sel: int = 0
    config_generation: int = 0
    queues: tuple[VirtqueueConfigState, ...] = ()
    active: bool = False  # the device was handed its queues (DRIVER_OK, no setup error)
    version: int = 1


@dataclass(frozen=True)
class VirtioMmioState:
    transport: VirtioTransportState = VirtioTransportState()
    interrupt_status: int = 0
    version: int = 1


@dataclass(frozen=True)
class VirtioPciState:
    transport: VirtioTransportState = VirtioTransportState()
    config: PciConfigState = PciConfigState()
    msix: MsixState = MsixState()
    isr: int = 0
    config_vector: int = 0xFFFF
    version: int = 1
