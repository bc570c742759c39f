"""Legacy PC devices behind port I/O: the UART, i8042, CMOS RTC, POST and
debug-exit ports, ACPI PM registers, PCI config ports and fw_cfg.

Each module has one device class with a `LENGTH` (its port range) and a
`PORT` constant (where a PC puts it), a frozen `XState` dataclass, and
`state()` / `restore()`. The VMM registers them on the port-I/O `Bus`:

    bus.register(0x3f8, Serial.LENGTH, Serial(irq4, console.write))
"""

from .acpi_pm import SLP_TYP_S5, TMR_VAL_EXT, AcpiPm, AcpiPmState
from .debug_exit import DebugExit, DebugExitState
from .fw_cfg import FwCfg, FwCfgState
from .i8042 import I8042, I8042State
from .pci_ports import PciConfigPorts, PciConfigPortsState
from .post import PostCode, PostCodeState
from .rtc import Rtc, RtcState
from .serial import Serial, SerialState, SerialStatistics

__all__ = [
    "SLP_TYP_S5", "TMR_VAL_EXT",
    "AcpiPm", "AcpiPmState", "DebugExit", "DebugExitState", "FwCfg", "FwCfgState",
    "I8042", "I8042State", "PciConfigPorts", "PciConfigPortsState", "PostCode", "PostCodeState",
    "Rtc", "RtcState", "Serial", "SerialState", "SerialStatistics",
]
