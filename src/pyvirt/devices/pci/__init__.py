"""PCI: a type-0 config space model, MSI-X, and bus 0 with its host bridge.

`PciBus` holds the functions and answers configuration mechanism #1 (ports
0xcf8-0xcff, through `PciConfigPorts`) and ECAM; `PciDevice` is the base of
every function and `Msix` the MSI-X table a function embeds in a BAR.
States (`PciConfigState`, `MsixState`, `PciBusState`) live in states.py and
load on first use.
"""

from .bus import PciBus, PciEcam
from .config import PciConfigSpace
from .device import PciDevice
from .msix import Msix


def __getattr__(name: str) -> object:
    if name in ("PciConfigState", "MsixState", "PciBusState"):
        from . import states

        return getattr(states, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Msix", "PciBus", "PciConfigSpace", "PciDevice", "PciEcam"]
