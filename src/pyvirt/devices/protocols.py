"""The interfaces devices are written against: `BusDevice`, `IrqLine`,
`VirtioInterrupt`, and `Stateful` (what a snapshot saves).

They are `typing.Protocol`s, needed only by type checkers. bus.py and irq.py
export them under their old names but load this module only on request, so
that `pyvirt run` does not import `typing` to start a VM.
"""

from __future__ import annotations

from typing import Any, Protocol


class BusDevice(Protocol):
    """What a bus needs of a device: sized reads and writes at an offset."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class IrqLine(Protocol):
    """A level-sensitive line into the interrupt controller."""

    def set_level(self, level: bool) -> None: ...


class VirtioInterrupt(Protocol):
    """How a virtio device tells the driver something happened; the transport
    implements it (MMIO: ISR bit + IRQ line; PCI: MSI-X vector or INTx)."""

    def used(self, queue: int) -> None:
        """Buffers were returned in the used ring of `queue`."""
        ...

    def config_changed(self) -> None:
        """The device's config space (or its NEEDS_RESET status) changed."""
        ...


class Stateful(Protocol):
    """A component whose state a snapshot saves: `state()` returns its
    frozen `XState` record, `restore()` validates and loads one."""

    def state(self) -> Any: ...

    def restore(self, state: Any) -> None: ...
