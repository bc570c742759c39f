"""The saved state of every legacy device: one frozen dataclass per device.

Each `XState` is plain data (ints, bytes, bools) with a `version` field, and
its defaults are the device's power-on values. A device's `state()` returns
one, `restore()` validates one (loaded state is untrusted) and loads it.

These live apart from the device models so that a VM's start, which builds
every device but saves nothing, imports neither this module nor
`dataclasses`: `state()`, `restore()` and `statistics()` import it when
called. The names stay importable from the device modules and from
`pyvirt.devices.legacy`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .i8042 import OUTPORT_DEFAULT, RAM_POWER_ON
from .rtc import CMOS_POWER_ON
from .serial import DLL_POWER_ON


@dataclass(frozen=True)
class AcpiPmState:
    status: int = 0
    enable: int = 0
    control: int = 0
    timer_ticks: int = 0  # counter value at save time, before the 24-bit wrap
    version: int = 1


@dataclass(frozen=True)
class DebugExitState:
    """Nothing to keep: present so every device passes the same state checks."""

    version: int = 1


@dataclass(frozen=True)
class FwCfgState:
    selector: int = 0
    offset: int = 0
    version: int = 1


@dataclass(frozen=True)
class I8042State:
    ram: bytes = RAM_POWER_ON  # byte 0 is the command byte
    outport: int = OUTPORT_DEFAULT
    queue: bytes = b""
    queue_aux: bytes = b""  # per queued byte: 1 if it came from the AUX port
    last_data: int = 0
    last_was_command: bool = False
    ctl_pending: int = 0  # controller command awaiting its data byte, 0 if none
    kbd_pending: int = 0  # keyboard command awaiting its parameter, 0 if none
    scan_set: int = 2
    scanning: bool = True
    version: int = 1


@dataclass(frozen=True)
class PciConfigPortsState:
    address: int = 0
    reset_control: int = 0
    version: int = 1


@dataclass(frozen=True)
class PostCodeState:
    last: int = 0
    count: int = 0
    version: int = 1


@dataclass(frozen=True)
class RtcState:
    index: int = 0
    cmos: bytes = CMOS_POWER_ON
    offset_ns: int = 0  # guest time minus host time (clock())
    version: int = 1


@dataclass(frozen=True)
class SerialState:
    """Guest-visible UART state; the defaults are the power-on values."""

    dll: int = DLL_POWER_ON
    dlm: int = 0
    ier: int = 0
    lcr: int = 0
    mcr: int = 0
    lsr_errors: int = 0
    msr_delta: int = 0
    scr: int = 0
    fcr: int = 0
    thr_pending: bool = False
    rx_fifo: bytes = b""
    rx_input: bytes = b""  # host bytes not yet in the FIFO
    version: int = 1


@dataclass(frozen=True)
class SerialStatistics:
    tx_bytes: int
    rx_bytes: int
    rx_dropped: int
    overruns: int


@dataclass(frozen=True)
class PitState:
    """Plain data of one PIT: per channel (mode, access, reload, elapsed ticks, latch, toggles)."""

    channels: tuple[tuple[int, int, int, int, int, int, int, int], ...]
    speaker: int
    version: int = 1
