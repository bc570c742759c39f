"""Legacy devices wired to fakes, for conformance and fuzz tests.

`legacy_rigs()` maps a device name to a factory that builds the device with
a `FakeIrq`, a `FakeClock` and callbacks that record what the device asked
the VMM to do in `events` (("out", b"x"), ("reset",), ("poweroff",),
("exit", value)). Two calls of a factory build identical devices, which is
what a save -> restore -> compare test needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..devices.legacy import AcpiPm, DebugExit, FwCfg, I8042, PciConfigPorts, PostCode, Rtc, Serial
from .clock import FakeClock
from .irq import FakeIrq

# 2024-02-29 12:34:56 UTC: a leap day, so date arithmetic gets exercised.
RIG_EPOCH = 1709210096.0


@dataclass
class LegacyRig:
    name: str
    device: Any
    length: int
    irq: FakeIrq = field(default_factory=FakeIrq)
    clock: FakeClock = field(default_factory=lambda: FakeClock(RIG_EPOCH))
    events: list[tuple[Any, ...]] = field(default_factory=list)


def _rig(name: str, build: Callable[[LegacyRig], Any]) -> Callable[[], LegacyRig]:
    def factory() -> LegacyRig:
        rig = LegacyRig(name, None, 0)
        rig.device = build(rig)
        rig.length = rig.device.LENGTH
        return rig
    return factory


def _config_space(bus: int, dev: int, fn: int, offset: int, size: int) -> int | None:
    """One fake function at 00:01.0 whose config space reads as its offsets."""
    if (bus, dev, fn) != (0, 1, 0):
        return None
    return int.from_bytes(bytes(range(offset, offset + size)), "little")


def legacy_rigs() -> dict[str, Callable[[], LegacyRig]]:
    def record(rig: LegacyRig, what: str) -> Callable[..., None]:
        return lambda *args: rig.events.append((what, *args))

    return {
        "serial": _rig("serial", lambda r: Serial(r.irq, record(r, "out"))),
        "i8042": _rig("i8042", lambda r: I8042(record(r, "reset"), irq=r.irq)),
        "rtc": _rig("rtc", lambda r: Rtc(clock=r.clock)),
        "debug_exit": _rig("debug_exit", lambda r: DebugExit(record(r, "exit"))),
        "post": _rig("post", lambda r: PostCode()),
        "acpi_pm": _rig("acpi_pm", lambda r: AcpiPm(record(r, "poweroff"), record(r, "reset"), sci=r.irq,
                                                     clock=r.clock)),
        "pci_ports": _rig("pci_ports", lambda r: PciConfigPorts(record(r, "reset"), _config_space,
                                                               record(r, "config_write"))),
        "fw_cfg": _rig("fw_cfg", lambda r: FwCfg.for_vm(2, 256 << 20, b"console=ttyS0",
                                                         e820=bytes(range(40)))),
    }
