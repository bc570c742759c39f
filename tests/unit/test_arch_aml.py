"""The hand-rolled AML encoder: byte-exact checks against the ACPI spec's encodings."""

from __future__ import annotations

import pytest

from pyvirt.arch.x86 import aml


@pytest.mark.parametrize(
    ("content", "encoded"),
    [
        (0, b"\x01"),
        (62, b"\x3f"),
        (63, b"\x41\x04"),  # 63 + 2 = 65 = 0x41: low nibble 1, next byte 4
        (0xFFD, b"\x4f\xff"),  # largest two-byte length: 0xFFF
        (0xFFE, b"\x81\x00\x01"),  # 0xFFE + 3 = 0x1001
        (0x100000, b"\xc4\x00\x00\x01"),
    ],
)
def test_pkg_length(content: int, encoded: bytes) -> None:
    assert aml.pkg_length(content) == encoded


def test_pkg_length_limit() -> None:
    with pytest.raises(ValueError):
        aml.pkg_length(1 << 28)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"), (1, b"\x01"), (5, b"\x0a\x05"), (0x100, b"\x0b\x00\x01"),
        (0xD000_0000, b"\x0c\x00\x00\x00\xd0"), (1 << 32, b"\x0e" + (1 << 32).to_bytes(8, "little")),
        ((1 << 64) - 1, b"\xff"),
    ],
)
def test_integer(value: int, encoded: bytes) -> None:
    assert aml.integer(value) == encoded


def test_names() -> None:
    assert aml.name_string("_S5") == b"_S5_"
    assert aml.name_string("\\_SB_") == b"\\_SB_"
    assert aml.name_string("\\_SB_.COM1") == b"\\\x2e_SB_COM1"
    assert aml.name_string("^^A.B.C") == b"^^\x2f\x03A___B___C___"
    for bad in ("", "5ABC", "ABCDE", "a"):
        with pytest.raises(ValueError):
            aml.name_seg(bad)


def test_eisa_id() -> None:
    assert aml.eisa_id("PNP0501") == b"\x0c\x41\xd0\x05\x01"
    assert aml.eisa_id("PNP0A03") == b"\x0c\x41\xd0\x0a\x03"
    with pytest.raises(ValueError):
        aml.eisa_id("pnp0501")


def test_objects() -> None:
    assert aml.string("LNRO0005") == b"\x0dLNRO0005\x00"
    assert aml.package(aml.integer(5), aml.integer(0)) == b"\x12\x05\x02\x0a\x05\x00"
    assert aml.buffer(b"\x79\x00") == b"\x11\x05\x0a\x02\x79\x00"
    assert aml.name("_UID", aml.integer(0)) == b"\x08_UID\x00"
    assert aml.device("COM1") == b"\x5b\x82\x05COM1"
    assert aml.scope("\\_SB_") == b"\x10\x06\\_SB_"


def test_resource_descriptors() -> None:
    assert aml.io_port(0x3F8, 8) == bytes.fromhex("4701f803f8030108")
    assert aml.irq_no_flags(4) == bytes.fromhex("221000")
    assert aml.irq_no_flags(1, 12) == bytes.fromhex("220210")
    assert aml.memory32_fixed(0xD0000000, 0x200) == bytes.fromhex("86090001000000d000020000")
    # Large item 0x09, length 6, flags consumer|edge, one interrupt: GSI 5.
    assert aml.interrupt(5) == bytes.fromhex("890600" "03" "01" "05000000")
    assert aml.interrupt(33, edge=False, active_high=False, shared=True)[3] == 0x01 | 0x04 | 0x08
    rt = aml.resource_template(aml.irq_no_flags(4))
    assert rt == b"\x11\x08\x0a\x05\x22\x10\x00\x79\x00"
    with pytest.raises(ValueError):
        aml.irq_no_flags(16)
