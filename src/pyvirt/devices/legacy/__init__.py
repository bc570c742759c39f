"""Legacy PC devices behind port I/O: the UART, i8042, CMOS RTC, POST and
debug-exit ports, ACPI PM registers, PCI config ports and fw_cfg.

Each module has one device class with a `LENGTH` (its port range) and a
`PORT` constant (where a PC puts it), a frozen `XState` dataclass (defined
in states.py, loaded on first use), and `state()` / `restore()`. The VMM
registers them on the port-I/O `Bus`:

    bus.register(0x3f8, Serial.LENGTH, Serial(irq4, console.write))
"""

from ._common import lazy_states
from .acpi_pm import SLP_TYP_S5, TMR_VAL_EXT, AcpiPm
from .debug_exit import DebugExit
from .fw_cfg import FwCfg
from .i8042 import I8042
from .pci_ports import PciConfigPorts
from .post import PostCode
from .rtc import Rtc
from .serial import Serial

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .states import (AcpiPmState, DebugExitState, FwCfgState, I8042State, PciConfigPortsState, PostCodeState,
                         RtcState, SerialState, SerialStatistics)

_STATES = ("AcpiPmState", "DebugExitState", "FwCfgState", "I8042State", "PciConfigPortsState", "PostCodeState",
           "RtcState", "SerialState", "SerialStatistics")
__getattr__ = lazy_states(__name__, _STATES)

__all__ = [
    "SLP_TYP_S5", "TMR_VAL_EXT",
    "AcpiPm", "AcpiPmState", "DebugExit", "DebugExitState", "FwCfg", "FwCfgState",
    "I8042", "I8042State", "PciConfigPorts", "PciConfigPortsState", "PostCode", "PostCodeState",
    "Rtc", "RtcState", "Serial", "SerialState", "SerialStatistics",
]
