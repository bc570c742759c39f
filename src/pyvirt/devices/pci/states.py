"""The saved state of the PCI models: frozen dataclasses of plain data.

Like devices/legacy/states.py, these load only when state is saved or
restored, so building a VM does not import `dataclasses`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PciConfigState:
    """One function's 256 configuration bytes (BAR addresses, command, capability registers)."""

    data: bytes = b""
    version: int = 1


@dataclass(frozen=True)
class MsixState:
    """The MSI-X table (16 bytes per vector) and the pending bit array as an int."""

    table: bytes = b""
    pending: int = 0
    version: int = 1


@dataclass(frozen=True)
class PciBusState:
    """The host bridge's config space; every other function saves its own."""

    host_bridge: PciConfigState = PciConfigState()
    version: int = 1
