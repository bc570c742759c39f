"""The hand-rolled AML encoder: byte-exact checks against the ACPI spec's encodings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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


def test_interrupt_variants() -> None:
    # Level, ActiveHigh, Shared, two GSIs: flags consumer|shared, count 2.
    assert aml.interrupt(5, 33, edge=False, shared=True) == bytes.fromhex("890a00" "09" "02" "05000000" "21000000")
    # Edge, ActiveLow, Exclusive.
    assert aml.interrupt(16, active_high=False)[3] == 0x01 | 0x02 | 0x04
    for bad in ((), tuple(range(256)), (-1,), (1 << 32,)):
        with pytest.raises(ValueError):
            aml.interrupt(*bad)


# Address space descriptors: tag, length, resource type, general flags,
# type-specific flags, then granularity, minimum, maximum, translation, length.
ADDRESS_SPACE_CASES = [
    (aml.word_bus_number(0, 0xFF), "880d00" "02" "0c" "00" "0000" "0000" "ff00" "0000" "0001",
     "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0xFF, 0, 0x100)"),
    (aml.word_io(0, 0xCF7), "880d00" "01" "0c" "03" "0000" "0000" "f70c" "0000" "f80c",
     "WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, 0, 0xCF7, 0, 0xCF8)"),
    (aml.word_io(0xD00, 0xFFFF), "880d00" "01" "0c" "03" "0000" "000d" "ffff" "0000" "00f3",
     "WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, 0xD00, 0xFFFF, 0, 0xF300)"),
    (aml.dword_memory(0xC000_0000, 0xCFFF_FFFF),
     "871700" "00" "0c" "01" "00000000" "000000c0" "ffffffcf" "00000000" "00000010",
     "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, "
     "0, 0xC0000000, 0xCFFFFFFF, 0, 0x10000000)"),
    (aml.dword_memory(0xE000_0000, 0xE00F_FFFF, producer=False, prefetchable=True),
     "871700" "00" "0d" "07" "00000000" "000000e0" "ffff0fe0" "00000000" "00001000",
     "DWordMemory (ResourceConsumer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite, "
     "0, 0xE0000000, 0xE00FFFFF, 0, 0x100000)"),
    (aml.qword_memory(1 << 32, (2 << 32) - 1, cacheable=True, writable=False),
     "8a2b00" "00" "0c" "02" + "00" * 8 + "0000000001000000" "ffffffff01000000" + "00" * 8 + "0000000001000000",
     "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadOnly, "
     "0, 0x100000000, 0x1FFFFFFFF, 0, 0x100000000)"),
]


@pytest.mark.parametrize(("encoded", "expected", "asl"), ADDRESS_SPACE_CASES,
                         ids=[asl.split(" ")[0] for _, _, asl in ADDRESS_SPACE_CASES])
def test_address_space_descriptors(encoded: bytes, expected: str, asl: str) -> None:
    assert encoded == bytes.fromhex(expected)


def test_address_space_limits() -> None:
    for call in (
        lambda: aml.word_io(0x100, 0xFF),  # backwards
        lambda: aml.word_io(0, 0x10000),  # past 16 bits
        lambda: aml.word_io(0, 0xFFFF),  # length 0x10000 does not fit its field
        lambda: aml.word_bus_number(0, 0x100),
        lambda: aml.dword_memory(0xF000_0000, 1 << 32),
        lambda: aml.qword_memory(-1, 5),
    ):
        with pytest.raises(ValueError):
            call()


IASL = shutil.which("iasl")


@pytest.mark.skipif(IASL is None, reason="iasl (acpica-tools) not installed")
def test_descriptors_match_iasl(tmp_path: Path) -> None:
    """iasl compiles the ASL spelling of each descriptor to the same bytes."""
    assert IASL is not None
    body = "\n".join(asl for _, _, asl in ADDRESS_SPACE_CASES)
    body += "\nInterrupt (ResourceConsumer, Level, ActiveHigh, Shared) {5, 33}"
    (tmp_path / "t.asl").write_text(
        'DefinitionBlock ("", "SSDT", 2, "PYVIRT", "TEST", 1) {\n'
        f"Name (RES, ResourceTemplate () {{\n{body}\n}})\n}}\n"
    )
    run = subprocess.run([IASL, "-oa", "t.asl"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    compiled = (tmp_path / "t.aml").read_bytes()
    ours = b"".join(encoded for encoded, _, _ in ADDRESS_SPACE_CASES)
    ours += aml.interrupt(5, 33, edge=False, shared=True)
    assert compiled.endswith(ours + b"\x79\x00")  # our descriptors, then the end tag
