"""MP spec 1.4 tables: build into plain guest memory and decode them as an OS would."""

from __future__ import annotations

import struct

import pytest

from pyvirt.arch.x86 import layout, mptable
from pyvirt.memory import GuestMemory


def build(ncpus: int, **kw: object) -> tuple[GuestMemory, int]:
    mem = GuestMemory.from_bytearray(layout.BIOS_END)
    return mem, mptable.build_mptable(mem, ncpus, **kw)  # type: ignore[arg-type]


def decode(mem: GuestMemory, fp: int) -> tuple[bytes, bytes, list[bytes]]:
    """Floating pointer, config header and entries, checking lengths on the way."""
    floating = mem.read(fp, 16)
    table_addr = struct.unpack_from("<I", floating, 4)[0]
    length, count = mem.read_u16(table_addr + 4), mem.read_u16(table_addr + 34)
    table = mem.read(table_addr, length)
    entries, off = [], 44
    for _ in range(count):
        size = 20 if table[off] == mptable.PROCESSOR else 8
        entries.append(table[off : off + size])
        off += size
    assert off == length, "entry count and table length disagree"
    return floating, table, entries


def of_type(entries: list[bytes], kind: int) -> list[bytes]:
    return [e for e in entries if e[0] == kind]


@pytest.mark.parametrize("ncpus", [1, 2, 8, 32, 40])
def test_structure_and_checksums(ncpus: int) -> None:
    mem, fp = build(ncpus)
    assert fp == layout.MPTABLE
    floating, table, entries = decode(mem, fp)
    assert floating[:4] == b"_MP_"
    assert floating[8] == 1 and floating[9] == 4  # length in paragraphs, spec 1.4
    assert floating[11] == 0  # a configuration table is present
    assert sum(floating) & 0xFF == 0
    assert table[:4] == b"PCMP" and table[6] == 4
    assert sum(table) & 0xFF == 0
    assert table[8:16] == b"PYVIRT  "
    assert struct.unpack_from("<I", table, 36)[0] == layout.LAPIC_ADDR
    assert fp + 16 + len(table) <= layout.LOW_RAM_END
    assert len(table) + 16 == mptable.mptable_size(ncpus)
    # Entries come sorted by type, as the spec requires.
    assert [e[0] for e in entries] == sorted(e[0] for e in entries)


@pytest.mark.parametrize("ncpus", [1, 4, 32])
def test_processors(ncpus: int) -> None:
    mem, fp = build(ncpus)
    procs = of_type(decode(mem, fp)[2], mptable.PROCESSOR)
    assert len(procs) == ncpus
    for i, p in enumerate(procs):
        apic_id, version, flags, signature, features = struct.unpack_from("<BBBII", p, 1)
        assert apic_id == i and version == mptable.LAPIC_VERSION
        assert flags & mptable.CPU_ENABLED
        assert bool(flags & mptable.CPU_BSP) == (i == 0)
        assert signature == mptable.DEFAULT_CPU_SIGNATURE and features & (1 << 9)


def test_bus_ioapic_and_interrupts() -> None:
    mem, fp = build(4)
    entries = decode(mem, fp)[2]
    (bus,) = of_type(entries, mptable.BUS)
    assert bus[1] == 0 and bus[2:8] == b"ISA   "
    (ioapic,) = of_type(entries, mptable.IOAPIC)
    ioapic_id, _, flags, addr = struct.unpack_from("<BBBI", ioapic, 1)
    assert (ioapic_id, flags & 1, addr) == (4, 1, layout.IOAPIC_ADDR)

    ints = [struct.unpack_from("<BHBBBB", e, 1) for e in of_type(entries, mptable.IO_INTERRUPT)]
    assert all(bus_id == 0 and dest == ioapic_id for _, _, bus_id, _, dest, _ in ints)
    extint = [(irq, pin) for kind, _, _, irq, _, pin in ints if kind == mptable.EXTINT]
    assert extint == [(0, 0)]
    routes = {irq: pin for kind, _, _, irq, _, pin in ints if kind == mptable.INT}
    assert routes[0] == 2  # the PIT on pin 2
    assert 2 not in routes  # the cascade has no entry; its pin is IRQ0's
    assert routes == {0: 2, **{irq: irq for irq in range(1, 16) if irq != 2}}
    assert len(set(routes.values())) == len(routes)

    lints = [struct.unpack_from("<BHBBBB", e, 1) for e in of_type(entries, mptable.LOCAL_INTERRUPT)]
    assert [(kind, dest, lint) for kind, _, _, _, dest, lint in lints] == [
        (mptable.EXTINT, 0xFF, 0),
        (mptable.NMI, 0xFF, 1),
    ]


def test_overrides() -> None:
    mem, fp = build(2, ioapic_id=9, ioapic_addr=0xFEC01000, lapic_addr=0xFEE01000, cpu_signature=0xA00F11)
    _, table, entries = decode(mem, fp)
    assert struct.unpack_from("<I", table, 36)[0] == 0xFEE01000
    (ioapic,) = of_type(entries, mptable.IOAPIC)
    assert ioapic[1] == 9 and struct.unpack_from("<I", ioapic, 4)[0] == 0xFEC01000
    assert all(e[6] == 9 for e in of_type(entries, mptable.IO_INTERRUPT))  # destination IOAPIC
    assert all(struct.unpack_from("<I", p, 4)[0] == 0xA00F11 for p in of_type(entries, mptable.PROCESSOR))


def test_found_by_linux_style_scan() -> None:
    mem, fp = build(8)
    # Linux scans the last KiB of base memory (639 KiB) in 16-byte steps.
    hits = [a for a in range(639 * 1024, 640 * 1024, 16)
            if mem.read(a, 4) == b"_MP_" and sum(mem.read(a, 16)) & 0xFF == 0]
    assert hits == [fp]


def test_capacity() -> None:
    assert mptable.mptable_size(40) <= layout.LOW_RAM_END - layout.EBDA_START < mptable.mptable_size(41)
    mem = GuestMemory.from_bytearray(layout.BIOS_END)
    with pytest.raises(ValueError, match="at most 40 vCPUs"):
        mptable.build_mptable(mem, 41)
    assert mem.read(layout.MPTABLE, 4) == bytes(4), "nothing is written on error"


def test_bad_arguments() -> None:
    mem = GuestMemory.from_bytearray(layout.BIOS_END)
    with pytest.raises(ValueError):
        mptable.build_mptable(mem, 0)
    with pytest.raises(ValueError, match="IOAPIC id"):
        mptable.build_mptable(mem, 4, ioapic_id=3)  # clashes with CPU 3
    with pytest.raises(ValueError, match="aligned"):
        mptable.build_mptable(mem, 1, addr=layout.MPTABLE + 4)
