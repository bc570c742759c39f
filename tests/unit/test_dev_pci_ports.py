"""Tests of the PCI configuration ports and the 0xcf9 reset control register."""

from __future__ import annotations

from pyvirt.devices.legacy.pci_ports import PciConfigPorts


def addr(bus: int, dev: int, fn: int, reg: int, enable: bool = True) -> int:
    return (enable << 31) | (bus << 16) | (dev << 11) | (fn << 8) | reg


class Rig:
    def __init__(self, with_space: bool = True) -> None:
        self.resets = 0
        self.reads: list[tuple[int, ...]] = []
        self.writes: list[tuple[int, ...]] = []
        self.dev = PciConfigPorts(self._reset, self._read if with_space else None,
                                  self._write if with_space else None)

    def _reset(self) -> None:
        self.resets += 1

    def _read(self, bus: int, dev: int, fn: int, off: int, size: int) -> int | None:
        self.reads.append((bus, dev, fn, off, size))
        if (bus, dev, fn) != (0, 0, 0):
            return None
        return int.from_bytes(bytes(range(off, off + size)), "little") | 0xFF00_0000_0000  # too wide


    def _write(self, *args: int) -> None:
        self.writes.append(args)


def test_no_device_reads_all_ones() -> None:
    rig = Rig(with_space=False)
    rig.dev.write(0, 4, addr(0, 0, 0, 0))
    assert rig.dev.read(4, 4) == 0xFFFFFFFF
    assert rig.dev.read(6, 2) == 0xFFFF
    assert rig.dev.read(7, 1) == 0xFF
    rig.dev.write(4, 4, 0x1234)  # dropped, nowhere to go


def test_missing_function_and_disabled_address_read_all_ones() -> None:
    rig = Rig()
    rig.dev.write(0, 4, addr(0, 3, 0, 0))
    assert rig.dev.read(4, 4) == 0xFFFFFFFF
    rig.dev.write(0, 4, addr(0, 0, 0, 0, enable=False))
    assert rig.dev.read(4, 4) == 0xFFFFFFFF
    assert rig.reads == [(0, 3, 0, 0, 4)]  # the disabled access never reached the callback


def test_config_address_is_32_bit_only_and_masks_reserved_bits() -> None:
    rig = Rig()
    rig.dev.write(0, 4, 0xFFFFFFFF)
    assert rig.dev.read(0, 4) == 0x80FFFFFC
    rig.dev.write(0, 2, 0)
    rig.dev.write(0, 1, 0)
    assert rig.dev.read(0, 4) == 0x80FFFFFC
    assert rig.dev.read(0, 2) == 0xFFFF
    assert rig.dev.read(0, 1) == 0xFF


def test_data_port_decodes_bus_device_function_and_byte_offset() -> None:
    rig = Rig()
    rig.dev.write(0, 4, addr(0, 0, 0, 0x10))
    assert rig.dev.read(4, 4) == 0x13121110
    assert rig.dev.read(6, 2) == 0x1312
    assert rig.dev.read(7, 1) == 0x13
    assert rig.dev.read(5, 4) == 0xFFFFFFFF  # spills past the dword: not decoded
    rig.dev.write(0, 4, addr(0x12, 0x1F, 7, 0xFC))
    rig.dev.write(5, 2, 0xBEEF)
    assert rig.writes == [(0x12, 0x1F, 7, 0xFD, 2, 0xBEEF)]
    assert rig.reads[:3] == [(0, 0, 0, 0x10, 4), (0, 0, 0, 0x12, 2), (0, 0, 0, 0x13, 1)]


def test_reset_control_register() -> None:
    rig = Rig()
    assert rig.dev.read(1, 1) == 0
    rig.dev.write(1, 1, 0x02)  # SYS_RST: chooses a hard reset, does not start it
    assert rig.resets == 0
    assert rig.dev.read(1, 1) == 0x02
    rig.dev.write(1, 1, 0x06)  # RST_CPU
    assert rig.resets == 1
    assert rig.dev.read(1, 1) == 0x06
    rig.dev.write(1, 1, 0xF1)  # reserved bits
    assert rig.dev.read(1, 1) == 0x00
    rig.dev.write(0, 4, addr(0, 0, 0, 0))
    assert rig.dev.read(0, 4) == addr(0, 0, 0, 0)  # CONFIG_ADDRESS untouched by 0xcf9
    assert rig.resets == 1
