"""ACPI tables: build into plain guest memory, parse back, check every field we promise."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pyvirt.arch.x86 import acpi, aml, layout
from pyvirt.memory import GuestMemory

MEM_SIZE = 0x100000


def build(ncpus: int = 2, **kw: object) -> tuple[GuestMemory, int, dict[str, bytes]]:
    mem = GuestMemory.from_bytearray(MEM_SIZE)
    rsdp = acpi.build_acpi(mem, ncpus, **kw)  # type: ignore[arg-type]
    return mem, rsdp, acpi.parse_tables(mem, rsdp)


def madt_entries(madt: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 44
    while off < len(madt):
        kind, length = madt[off], madt[off + 1]
        assert length >= 2, "zero-length MADT entry"
        out.append((kind, madt[off : off + length]))
        off += length
    assert off == len(madt)
    return out


def gas(table: bytes, offset: int) -> tuple[int, int, int, int, int]:
    return struct.unpack_from("<BBBBQ", table, offset)


def test_all_tables_present_with_valid_checksums() -> None:
    _, rsdp, t = build()
    assert set(t) == {"RSDP", "XSDT", "RSDT", "FACP", "APIC", "DSDT", "FACS"}
    assert sum(t["RSDP"][:20]) & 0xFF == 0
    assert sum(t["RSDP"]) & 0xFF == 0
    for sig in ("XSDT", "RSDT", "FACP", "APIC", "DSDT"):
        table = t[sig]
        assert table[:4] == sig.encode()
        assert struct.unpack_from("<I", table, 4)[0] == len(table)
        assert sum(table) & 0xFF == 0, sig
        assert table[10:16] == b"PYVIRT"
        assert table[16:24] == b"PYVIRTVM"
        assert table[28:32] == b"PYVT"


def test_rsdp_found_by_legacy_scan() -> None:
    mem, rsdp, t = build()
    assert rsdp == layout.ACPI_START and rsdp % 16 == 0
    # What an OS does without a boot-protocol hint: every 16 bytes of 0xE0000-0xFFFFF.
    found = [
        a for a in range(0xE0000, 0x100000, 16)
        if mem.read(a, 8) == b"RSD PTR " and sum(mem.read(a, 20)) & 0xFF == 0
    ]
    assert found == [rsdp]
    r = t["RSDP"]
    assert r[15] == 2  # revision
    assert struct.unpack_from("<I", r, 20)[0] == 36
    assert r[9:15] == b"PYVIRT"


def test_rsdt_and_xsdt_list_fadt_and_madt() -> None:
    mem, _, t = build()
    xsdt = [a for (a,) in struct.iter_unpack("<Q", t["XSDT"][36:])]
    rsdt = [a for (a,) in struct.iter_unpack("<I", t["RSDT"][36:])]
    assert xsdt == rsdt
    assert [mem.read(a, 4) for a in xsdt] == [b"FACP", b"APIC"]
    assert all(layout.ACPI_START <= a < layout.BIOS_END for a in xsdt)


def test_fadt_fields() -> None:
    mem, _, t = build()
    f = t["FACP"]
    assert len(f) == 276 and f[8] == 6 and f[131] == acpi.FADT_MINOR_REVISION
    facs32, dsdt32 = struct.unpack_from("<II", f, 36)
    facs64, dsdt64 = struct.unpack_from("<QQ", f, 132)
    assert facs32 == facs64 and dsdt32 == dsdt64
    assert facs32 % 64 == 0
    assert mem.read(dsdt32, 4) == b"DSDT" and mem.read(facs32, 4) == b"FACS"

    assert struct.unpack_from("<H", f, 46)[0] == 9  # SCI_INT
    assert struct.unpack_from("<I", f, 48)[0] == 0  # SMI_CMD: always in ACPI mode
    pm1a_evt, pm1b_evt, pm1a_cnt, pm1b_cnt, pm2_cnt, pm_tmr = struct.unpack_from("<6I", f, 56)
    assert (pm1a_evt, pm1a_cnt, pm_tmr) == (0x600, 0x604, 0x608)
    assert pm1b_evt == pm1b_cnt == pm2_cnt == 0
    assert struct.unpack_from("<4B", f, 88) == (4, 2, 0, 4)  # PM1_EVT, PM1_CNT, PM2_CNT, PM_TMR lengths
    assert struct.unpack_from("<II", f, 80) == (0, 0)  # no GPE blocks

    assert gas(f, 148) == (acpi.GAS_SYSTEM_IO, 32, 0, acpi.ACCESS_WORD, 0x600)  # X_PM1a_EVT_BLK
    assert gas(f, 172) == (acpi.GAS_SYSTEM_IO, 16, 0, acpi.ACCESS_WORD, 0x604)  # X_PM1a_CNT_BLK
    assert gas(f, 208) == (acpi.GAS_SYSTEM_IO, 32, 0, acpi.ACCESS_DWORD, 0x608)  # X_PM_TMR_BLK

    flags = struct.unpack_from("<I", f, 112)[0]
    for bit in (acpi.FADT_WBINVD, acpi.FADT_PROC_C1, acpi.FADT_SLP_BUTTON, acpi.FADT_RESET_REG_SUP):
        assert flags & bit
    assert not flags & acpi.FADT_HW_REDUCED_ACPI
    assert gas(f, 116) == (acpi.GAS_SYSTEM_IO, 8, 0, acpi.ACCESS_BYTE, 0xCF9)
    assert f[128] == 0x06

    boot = struct.unpack_from("<H", f, 109)[0]
    assert boot & acpi.BOOT_8042 and boot & acpi.BOOT_LEGACY_DEVICES


def test_fadt_follows_arguments() -> None:
    _, _, t = build(pm_base=0xB000, sci_irq=11, reset_port=0x64, reset_value=0xFE)
    f = t["FACP"]
    assert struct.unpack_from("<H", f, 46)[0] == 11
    pm = struct.unpack_from("<6I", f, 56)
    assert (pm[0], pm[2], pm[5]) == (0xB000, 0xB004, 0xB008)
    assert gas(f, 148)[4] == 0xB000 and gas(f, 172)[4] == 0xB004 and gas(f, 208)[4] == 0xB008
    assert gas(f, 116)[4] == 0x64 and f[128] == 0xFE
    overrides = [e for k, e in madt_entries(t["APIC"]) if k == acpi.MADT_INT_SRC_OVERRIDE]
    assert [(e[3], struct.unpack_from("<I", e, 4)[0]) for e in overrides] == [(0, 2), (11, 11)]


def test_facs() -> None:
    _, _, t = build()
    facs = t["FACS"]
    assert facs[:4] == b"FACS" and struct.unpack_from("<I", facs, 4)[0] == 64
    assert facs[32] == acpi.FACS_VERSION
    assert struct.unpack_from("<I", facs, 12)[0] == 0  # firmware waking vector


@pytest.mark.parametrize("ncpus", [1, 2, 8, 64, acpi.MAX_VCPUS])
def test_madt(ncpus: int) -> None:
    _, _, t = build(ncpus)
    m = t["APIC"]
    assert m[8] == acpi.MADT_REVISION
    lapic_addr, flags = struct.unpack_from("<II", m, 36)
    assert lapic_addr == layout.LAPIC_ADDR and flags & acpi.MADT_PCAT_COMPAT
    entries = madt_entries(m)

    lapics = [e for k, e in entries if k == acpi.MADT_LOCAL_APIC]
    assert len(lapics) == ncpus
    for i, e in enumerate(lapics):
        assert len(e) == 8
        uid, apic_id, lflags = struct.unpack_from("<BBI", e, 2)
        assert uid == apic_id == i and lflags == acpi.LAPIC_ENABLED

    (ioapic,) = [e for k, e in entries if k == acpi.MADT_IO_APIC]
    ioapic_id, _, addr, gsi_base = struct.unpack_from("<BBII", ioapic, 2)
    assert (ioapic_id, addr, gsi_base) == (ncpus, layout.IOAPIC_ADDR, 0)

    overrides = {}
    for k, e in entries:
        if k == acpi.MADT_INT_SRC_OVERRIDE:
            bus, src, gsi, iflags = struct.unpack_from("<BBIH", e, 2)
            assert bus == 0
            overrides[src] = (gsi, iflags)
    assert overrides == {
        0: (2, acpi.INTI_ACTIVE_HIGH | acpi.INTI_EDGE),
        9: (9, acpi.INTI_ACTIVE_HIGH | acpi.INTI_LEVEL),
    }

    (nmi,) = [e for k, e in entries if k == acpi.MADT_LOCAL_APIC_NMI]
    assert struct.unpack_from("<BHB", nmi, 2) == (0xFF, 0, 1)


def test_dsdt_s5_and_com1() -> None:
    _, _, t = build()
    d = t["DSDT"]
    assert d[8] == 2
    # Name(_S5_, Package(){5, 5, 0, 0}): NameOp, name, PackageOp, PkgLength 8,
    # 4 elements, BytePrefix 5, BytePrefix 5, Zero, Zero.
    assert b"\x08_S5_\x12\x08\x04\x0a\x05\x0a\x05\x00\x00" in d
    assert b"\x10" in d and b"\\_SB_" in d
    assert b"\x5b\x82" in d and b"COM1" in d
    assert b"\x0c\x41\xd0\x05\x01" in d  # EisaId("PNP0501")
    assert bytes.fromhex("4701f803f8030108") in d  # IO(Decode16, 0x3F8, 0x3F8, 1, 8)
    assert bytes.fromhex("221000") in d  # IRQNoFlags(){4}


def _sb_scope(dsdt: bytes) -> bytes:
    """The body of the Scope(\\_SB_) term, decoded with the PkgLength rules."""
    start = 36 + 14  # the header, then the 14-byte _S5_ name
    assert dsdt[start] == aml.SCOPE_OP
    lead = dsdt[start + 1]
    extra = lead >> 6
    length = lead & 0x3F if extra == 0 else lead & 0x0F
    for i in range(extra):
        length |= dsdt[start + 2 + i] << (4 + 8 * i)
    body = dsdt[start + 1 : start + 1 + length]
    assert start + 1 + length == len(dsdt), "the scope should end the table"
    return body[1 + extra :]


def test_precomputed_dsdt_matches_the_encoder() -> None:
    assert acpi._DSDT_AML == acpi._dsdt_aml(b"")


def test_extra_aml_goes_inside_sb() -> None:
    dev = aml.device(
        "VR00",
        aml.name("_HID", aml.string("LNRO0005")),
        aml.name("_CRS", aml.resource_template(aml.memory32_fixed(0xD000_0000, 0x200), aml.interrupt(5))),
    )
    extra = dev * 8  # large enough to need a multi-byte PkgLength
    _, _, t = build(extra_dsdt_aml=extra)
    body = _sb_scope(t["DSDT"])
    assert body.startswith(b"\\_SB_")
    assert body.endswith(extra)


@pytest.mark.parametrize("ncpus", [0, acpi.MAX_VCPUS + 1, 300])
def test_bad_cpu_counts(ncpus: int) -> None:
    mem = GuestMemory.from_bytearray(MEM_SIZE)
    with pytest.raises(ValueError, match="vCPUs"):
        acpi.build_acpi(mem, ncpus)


def test_tables_must_fit_below_limit() -> None:
    mem = GuestMemory.from_bytearray(MEM_SIZE)
    with pytest.raises(ValueError, match="fit below"):
        acpi.build_acpi(mem, 64, limit=layout.ACPI_START + 512)
    with pytest.raises(ValueError, match="fit below"):
        acpi.build_acpi(mem, 1, extra_dsdt_aml=b"\x00" * 0x20000)
    assert mem.read(layout.ACPI_START, 8) == bytes(8), "nothing is written on error"


def test_bad_arguments() -> None:
    mem = GuestMemory.from_bytearray(MEM_SIZE)
    with pytest.raises(ValueError, match="aligned"):
        acpi.build_acpi(mem, 1, base=layout.ACPI_START + 8)
    with pytest.raises(ValueError, match="SCI"):
        acpi.build_acpi(mem, 1, sci_irq=2)


def test_parser_rejects_corruption() -> None:
    mem, rsdp, t = build()
    madt_addr = struct.unpack_from("<Q", t["XSDT"], 36 + 8)[0]
    mem.write(madt_addr + 40, b"\x00")  # flip a byte without fixing the checksum
    with pytest.raises(ValueError, match="checksum"):
        acpi.parse_tables(mem, rsdp)
    with pytest.raises(ValueError, match="RSDP"):
        acpi.parse_tables(mem, rsdp + 16)


def test_sizes_leave_room() -> None:
    """Even the largest MADT keeps the tables well inside the BIOS area."""
    mem, rsdp, t = build(acpi.MAX_VCPUS)
    end = max(mem_addr + len(t[sig]) for sig, mem_addr in _table_addresses(t, rsdp).items())
    assert end < layout.ACPI_START + 4096


def _table_addresses(t: dict[str, bytes], rsdp: int) -> dict[str, int]:
    xsdt_addr = struct.unpack_from("<Q", t["RSDP"], 24)[0]
    rsdt_addr = struct.unpack_from("<I", t["RSDP"], 16)[0]
    fadt_addr, madt_addr = (a for (a,) in struct.iter_unpack("<Q", t["XSDT"][36:]))
    facs, dsdt = struct.unpack_from("<II", t["FACP"], 36)
    return {"RSDP": rsdp, "XSDT": xsdt_addr, "RSDT": rsdt_addr, "FACP": fadt_addr,
            "APIC": madt_addr, "FACS": facs, "DSDT": dsdt}


def test_tables_do_not_overlap() -> None:
    _, rsdp, t = build(8)
    spans = sorted((a, a + len(t[s])) for s, a in _table_addresses(t, rsdp).items())
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start


IASL = shutil.which("iasl")


@pytest.mark.skipif(IASL is None, reason="iasl (acpica-tools) not installed")
def test_iasl_accepts_tables(tmp_path: Path) -> None:
    assert IASL is not None
    iasl = IASL
    extra = aml.device("VR00", aml.name("_HID", aml.string("LNRO0005")), aml.name("_UID", aml.integer(0)))
    _, _, t = build(4, extra_dsdt_aml=extra)
    for sig in ("FACP", "APIC", "FACS", "XSDT", "RSDT", "DSDT"):
        path = tmp_path / f"{sig.lower()}.dat"
        path.write_bytes(t[sig])
        run = subprocess.run([iasl, "-d", str(path)], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        dsl = path.with_suffix(".dsl").read_text()
        for bad in ("Incorrect", "Invalid", "****"):
            assert bad not in dsl, f"{sig}: {bad!r} in iasl output"
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert "Name (_S5, Package (0x04)" in dsl and 'EisaId ("PNP0501")' in dsl and "Device (VR00)" in dsl
    # Compile the disassembly back, unoptimised: the AML must be byte-identical to ours.
    run = subprocess.run([iasl, "-oa", "-p", "again", "dsdt.dsl"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "again.aml").read_bytes()[36:] == t["DSDT"][36:]
