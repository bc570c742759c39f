"""Register-level tests of the i8042 keyboard controller model."""

from __future__ import annotations

import pytest

from pyvirt.devices.legacy.i8042 import I8042, QUEUE_LIMIT
from pyvirt.testing import FakeIrq

DATA, CMD = 0, 4


class Kbc:
    def __init__(self, irq: FakeIrq | None = None) -> None:
        self.resets = 0
        self.dev = I8042(self._reset, irq=irq)

    def _reset(self) -> None:
        self.resets += 1

    def status(self) -> int:
        return self.dev.read(CMD, 1)

    def command(self, cmd: int, *data: int) -> None:
        self.dev.write(CMD, 1, cmd)
        for byte in data:
            self.dev.write(DATA, 1, byte)

    def send(self, *data: int) -> None:
        for byte in data:
            self.dev.write(DATA, 1, byte)

    def drain(self) -> list[int]:
        out = []
        while self.status() & 0x01:
            out.append(self.dev.read(DATA, 1))
        return out


def test_status_after_power_on() -> None:
    kbc = Kbc()
    status = kbc.status()
    assert status & 0x04  # system flag: POST passed
    assert not status & 0x01  # nothing to read
    assert not status & 0x02  # input buffer always free: commands run at once


def test_pulse_reset_line() -> None:
    kbc = Kbc()
    kbc.command(0xFE)
    assert kbc.resets == 1
    kbc.command(0xFF)  # bit 0 high: no pulse on the reset line
    kbc.command(0xF1)
    assert kbc.resets == 1
    kbc.command(0xF0)
    assert kbc.resets == 2


def test_write_output_port_with_reset_bit_clear_resets() -> None:
    kbc = Kbc()
    kbc.command(0xD1, 0xDF)
    assert kbc.resets == 0
    kbc.command(0xD0)
    assert kbc.drain() == [0xDF]
    kbc.command(0xD1, 0xFE)
    assert kbc.resets == 1


def test_command_byte_read_write_and_system_flag() -> None:
    kbc = Kbc()
    kbc.command(0x20)
    assert kbc.status() & 0x01 and kbc.status() & 0x08  # OBF, last write was a command
    assert kbc.drain() == [0x65]
    kbc.command(0x60, 0x41)  # clear SYS
    assert not kbc.status() & 0x04
    assert not kbc.status() & 0x08
    kbc.command(0x20)
    assert kbc.drain() == [0x41]
    kbc.command(0xAA)  # self-test passes and sets SYS again
    assert kbc.drain() == [0x55]
    assert kbc.status() & 0x04


@pytest.mark.parametrize("cmd", [0xA9, 0xAB])
def test_interface_tests_pass(cmd: int) -> None:
    kbc = Kbc()
    kbc.command(cmd)
    assert kbc.drain() == [0x00]


@pytest.mark.parametrize("off,on,bit", [(0xAD, 0xAE, 0x10), (0xA7, 0xA8, 0x20)])
def test_port_disable_enable_bits(off: int, on: int, bit: int) -> None:
    kbc = Kbc()
    kbc.command(off)
    kbc.command(0x20)
    assert kbc.drain()[0] & bit
    kbc.command(on)
    kbc.command(0x20)
    assert not kbc.drain()[0] & bit


def test_keyboard_reset_identify_and_enable() -> None:
    kbc = Kbc()
    kbc.send(0xFF)
    assert kbc.drain() == [0xFA, 0xAA]
    kbc.send(0xF2)
    assert kbc.drain() == [0xFA, 0xAB, 0x41]  # translated MF2 id
    kbc.command(0x60, 0x05)  # translation off
    kbc.send(0xF2)
    assert kbc.drain() == [0xFA, 0xAB, 0x83]
    kbc.send(0xF5)
    kbc.send(0xF4)
    assert kbc.drain() == [0xFA, 0xFA]
    kbc.send(0xEE)
    assert kbc.drain() == [0xEE]
    kbc.send(0x01)  # not a keyboard command
    assert kbc.drain() == [0xFE]


def test_keyboard_commands_with_a_parameter() -> None:
    kbc = Kbc()
    kbc.send(0xED, 0x07)  # LEDs
    assert kbc.drain() == [0xFA, 0xFA]
    kbc.send(0xF0, 0x00)  # which scan-code set? ACK, ACK, then the answer
    assert kbc.drain() == [0xFA, 0xFA, 0x41]
    kbc.send(0xF0, 0x01, 0xF0, 0x00)
    assert kbc.drain() == [0xFA, 0xFA, 0xFA, 0xFA, 0x43]


def test_loopback_commands_mark_the_source() -> None:
    kbc = Kbc()
    kbc.command(0xD3, 0x5A)
    assert kbc.status() & 0x21 == 0x21  # AUX data
    assert kbc.drain() == [0x5A]
    kbc.command(0xD2, 0x33)
    assert kbc.status() & 0x21 == 0x01
    assert kbc.drain() == [0x33]
    kbc.command(0xD4, 0xFF)  # to the (absent) mouse: no answer
    assert kbc.drain() == []


def test_empty_buffer_rereads_last_byte_and_unused_ports_float() -> None:
    kbc = Kbc()
    kbc.command(0xAA)
    assert kbc.drain() == [0x55]
    assert kbc.dev.read(DATA, 1) == 0x55
    for off in (1, 2, 3):
        assert kbc.dev.read(off, 1) == 0xFF


def test_keyboard_irq_follows_output_buffer_and_enable() -> None:
    irq = FakeIrq()
    kbc = Kbc(irq)
    kbc.send(0xF4)
    assert irq.level
    kbc.drain()
    assert not irq.level
    kbc.command(0x60, 0x64)  # keyboard interrupt off
    kbc.send(0xF4)
    assert not irq.level
    kbc.drain()
    kbc.command(0xD3, 0x01)  # AUX data never raises IRQ 1
    kbc.command(0x60, 0x65)
    assert not irq.level


def test_output_queue_is_bounded() -> None:
    kbc = Kbc()
    for _ in range(100):
        kbc.send(0xFF)
    assert len(kbc.drain()) == QUEUE_LIMIT
