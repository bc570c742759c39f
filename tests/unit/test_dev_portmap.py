"""The legacy devices fit the PC port map in docs/internals.md, through a Bus."""

from __future__ import annotations

from pyvirt.devices.bus import Bus
from pyvirt.devices.legacy import acpi_pm, debug_exit, fw_cfg, i8042, pci_ports, post, rtc, serial
from pyvirt.testing import legacy_rigs

PORTS = {
    "serial": serial.COM1_PORT, "i8042": i8042.PORT, "rtc": rtc.PORT, "post": post.PORT,
    "debug_exit": debug_exit.PORT, "fw_cfg": fw_cfg.PORT, "acpi_pm": acpi_pm.PORT, "pci_ports": pci_ports.PORT,
}


def test_pc_port_map() -> None:
    assert PORTS == {"serial": 0x3F8, "i8042": 0x60, "rtc": 0x70, "post": 0x80, "debug_exit": 0xF4,
                     "fw_cfg": 0x510, "acpi_pm": 0x600, "pci_ports": 0xCF8}
    bus = Bus("pio")
    rigs = {name: factory() for name, factory in legacy_rigs().items()}
    for name, rig in rigs.items():
        bus.register(PORTS[name], rig.device.LENGTH, rig.device, name)  # raises on overlap

    assert bus.read(0x3FD, 1) == 0x60  # LSR: transmitter empty
    assert bus.read(0x64, 1) & 0x04  # i8042 system flag
    bus.write(0x70, 1, 0x0D)
    assert bus.read(0x71, 1) == 0x80  # RTC register D: valid
    bus.write(0x510, 2, 0)
    assert bytes(bus.read(0x511, 1) for _ in range(4)) == b"QEMU"
    assert bus.read(0x604, 2) & 1  # SCI_EN
    bus.write(0xCF8, 4, 0x8000_0000)
    assert bus.read(0xCFC, 4) == 0xFFFFFFFF  # 00:00.0 absent in the rig's fake config space
    bus.write(0xF4, 1, 0x10)
    assert rigs["debug_exit"].events == [("exit", 0x10)]
    bus.write(0x64, 1, 0xFE)
    assert rigs["i8042"].events == [("reset",)]
    assert bus.unclaimed_reads == 0
