"""ACPI tables: build into plain guest memory, parse back, check every field we promise."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pyvirt.arch.x86 import acpi, acpi_parse, aml, layout
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
    end = max(mem_addr + len(t[sig]) for sig, mem_addr in _table_addresses(mem, t, rsdp).items())
    assert end < layout.ACPI_START + 4096


def _table_addresses(mem: GuestMemory, t: dict[str, bytes], rsdp: int) -> dict[str, int]:
    xsdt_addr = struct.unpack_from("<Q", t["RSDP"], 24)[0]
    rsdt_addr = struct.unpack_from("<I", t["RSDP"], 16)[0]
    listed = {mem.read(a, 4).decode(): a for (a,) in struct.iter_unpack("<Q", t["XSDT"][36:])}
    facs, dsdt = struct.unpack_from("<II", t["FACP"], 36)
    return {"RSDP": rsdp, "XSDT": xsdt_addr, "RSDT": rsdt_addr, **listed, "FACS": facs, "DSDT": dsdt}


def _assert_no_overlap(mem: GuestMemory, t: dict[str, bytes], rsdp: int) -> int:
    """Check the tables are disjoint; return where the last one ends."""
    spans = sorted((a, a + len(t[s])) for s, a in _table_addresses(mem, t, rsdp).items())
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start
    return spans[-1][1]


def test_tables_do_not_overlap() -> None:
    mem, rsdp, t = build(8)
    _assert_no_overlap(mem, t, rsdp)


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


# --- PCI and virtio-mmio ----------------------------------------------------

# SHA-256 of 0xE0000-0xFFFFF after build_acpi without devices, recorded before
# the PCI and virtio-mmio arguments existed: their defaults change nothing.
DEFAULT_OUTPUT_SHA256 = {
    1: "366e848e5bd9b136ecd32e364f574471bab4ac639c61d63ed4eb16b3a8b65d19",
    2: "d4890e1242c8d660ceec647aad0756cfb520ba231601ac2dee4402400c5d6866",
    8: "caf2d17b68ff8ab4432162ad90e825912c8b804796e92812a7dc43ded2fd9463",
    acpi.MAX_VCPUS: "4e43357596bea52c63c912d543c633b9bdce6d1541d0596cfc46c4da84f25d26",
}


def _bios_area_sha256(mem: GuestMemory) -> str:
    return hashlib.sha256(mem.read(layout.ACPI_START, layout.BIOS_END - layout.ACPI_START)).hexdigest()


@pytest.mark.parametrize("ncpus", sorted(DEFAULT_OUTPUT_SHA256))
def test_default_output_unchanged(ncpus: int) -> None:
    mem, _, _ = build(ncpus)
    assert _bios_area_sha256(mem) == DEFAULT_OUTPUT_SHA256[ncpus]
    mem, _, _ = build(ncpus, pci=None, mmio_devices=[])
    assert _bios_area_sha256(mem) == DEFAULT_OUTPUT_SHA256[ncpus]


def mmio_slots(n: int, gsis: tuple[int, ...] = (16, 17, 18, 19)) -> list[tuple[int, int, int]]:
    """`n` virtio-mmio devices in the layout's slots, GSIs taken round-robin."""
    return [(layout.VIRTIO_MMIO_BASE + i * layout.VIRTIO_MMIO_STRIDE, 0x200, gsis[i % len(gsis)])
            for i in range(n)]


PCI = acpi.PciRoot(irqs={1: 5, 2: 6, 3: 10, 4: 10, 5: 20})
MMIO = [(0xD000_0000, 0x200, 11), (0xD000_1000, 0x200, 12), (0xD000_2000, 0x200, 12)]


def test_pci_root_record() -> None:
    assert PCI.ecam_base == layout.PCI_ECAM_BASE and PCI.ecam_size == layout.PCI_ECAM_SIZE
    assert (PCI.mmio_start, PCI.mmio_end) == (layout.PCI_MMIO_START, layout.PCI_MMIO_END)
    assert PCI.end_bus == 0 and acpi.PciRoot(ecam_size=16 << 20).end_bus == 15
    assert PCI == acpi.PciRoot(irqs=dict(PCI.irqs)) and hash(PCI) == hash(acpi.PciRoot(irqs=dict(PCI.irqs)))
    with pytest.raises(AttributeError):
        PCI.ecam_base = 0  # type: ignore[misc]


def test_mcfg() -> None:
    mem, _, t = build(2, pci=PCI)
    assert set(t) == {"RSDP", "XSDT", "RSDT", "FACP", "APIC", "DSDT", "FACS", "MCFG"}
    m = t["MCFG"]
    assert len(m) == struct.unpack_from("<I", m, 4)[0] == 36 + 8 + 16
    assert sum(m) & 0xFF == 0 and m[8] == acpi.MCFG_REVISION
    assert m[10:16] == b"PYVIRT" and m[36:44] == bytes(8)
    assert struct.unpack_from("<QHBBI", m, 44) == (layout.PCI_ECAM_BASE, 0, 0, 0, 0)
    assert acpi.parse_mcfg(m) == [acpi_parse.McfgAllocation(layout.PCI_ECAM_BASE, 0, 0, 0)]
    # The FADT stays first; the MCFG follows the MADT in both lists.
    xsdt = [a for (a,) in struct.iter_unpack("<Q", t["XSDT"][36:])]
    assert xsdt == [a for (a,) in struct.iter_unpack("<I", t["RSDT"][36:])]
    assert [mem.read(a, 4) for a in xsdt] == [b"FACP", b"APIC", b"MCFG"]

    _, _, t = build(2, pci=acpi.PciRoot(ecam_base=0xB000_0000, ecam_size=256 << 20))
    assert acpi.parse_mcfg(t["MCFG"]) == [acpi_parse.McfgAllocation(0xB000_0000, 0, 0, 255)]


def test_parse_mcfg_rejects_bad_tables() -> None:
    _, _, t = build(2, pci=PCI)
    with pytest.raises(ValueError, match="not an MCFG"):
        acpi.parse_mcfg(t["APIC"])
    with pytest.raises(ValueError, match="allocations"):
        acpi.parse_mcfg(t["MCFG"][:-4])
    backwards = bytearray(t["MCFG"])
    backwards[54:56] = b"\x05\x01"  # start bus 5, end bus 1
    with pytest.raises(ValueError, match="buses 5-1"):
        acpi.parse_mcfg(bytes(backwards))


def _overrides(madt: bytes) -> list[tuple[int, int, int]]:
    out = []
    for kind, e in madt_entries(madt):
        if kind == acpi.MADT_INT_SRC_OVERRIDE:
            bus, src, gsi, flags = struct.unpack_from("<BBIH", e, 2)
            assert bus == 0 and len(e) == 10
            out.append((src, gsi, flags))
    return out


def test_madt_marks_pci_irqs_level() -> None:
    level = acpi.INTI_ACTIVE_HIGH | acpi.INTI_LEVEL
    assert level == 0b1101  # polarity 01 (active high), trigger 11 (level)
    _, _, t = build(2, pci=PCI, mmio_devices=MMIO)
    # IRQ0 -> GSI2 and the SCI stay as they were; each ISA GSI a PCI slot uses
    # gets one level override however many slots share it. GSI 20 is above the
    # ISA range (no override: _PRT says level) and virtio-mmio's edge GSIs
    # 11 and 12 keep the ISA default.
    assert _overrides(t["APIC"]) == [
        (0, 2, acpi.INTI_ACTIVE_HIGH | acpi.INTI_EDGE), (9, 9, level), (5, 5, level), (6, 6, level), (10, 10, level),
    ]
    # The SCI's line is not a device line.
    with pytest.raises(ValueError, match="GSI 9, which is not free"):
        build(2, pci=acpi.PciRoot(irqs={1: 9, 2: 11}), sci_irq=9)


def test_dsdt_pci0() -> None:
    _, _, t = build(2, pci=PCI)
    d = t["DSDT"]
    body = _sb_scope(d)
    com1 = body.index(b"COM1")
    pci0 = body.index(b"PCI0")
    assert com1 < pci0 < body.index(b"ECAM")
    assert b"\x08_HID" + aml.eisa_id("PNP0A08") in d
    assert b"\x08_CID" + aml.eisa_id("PNP0A03") in d
    for obj in (b"_SEG", b"_BBN", b"_UID"):
        assert b"\x08" + obj + b"\x00" in body[pci0:]  # Name(obj, Zero)
    crs = b"".join([
        aml.word_bus_number(0, 0),
        aml.io_port(0xCF8, 8),
        aml.word_io(0, 0xCF7),
        aml.word_io(0xD00, 0xFFFF),
        aml.dword_memory(layout.PCI_MMIO_START, layout.PCI_MMIO_END - 1),
    ])
    assert b"\x08_CRS" + aml.resource_template(crs) in d
    prt = aml.package(*(
        aml.package(aml.integer(slot << 16 | 0xFFFF), aml.integer(0), aml.integer(0), aml.integer(gsi))
        for slot, gsi in [(1, 5), (2, 6), (3, 10), (4, 10), (5, 20)]
    ))
    assert b"\x08_PRT" + prt in d
    # Package(){0x0001FFFF, Zero, Zero, 5}, spelled out.
    assert bytes.fromhex("12 0b 04 0c ffff0100 00 00 0a05") in prt
    # The ECAM is reserved as a motherboard resource.
    assert aml.eisa_id("PNP0C02") in d
    assert aml.memory32_fixed(layout.PCI_ECAM_BASE, layout.PCI_ECAM_SIZE) in d


def test_dsdt_pci0_windows_above_4g() -> None:
    pci = acpi.PciRoot(ecam_base=0x40_0000_0000, mmio_start=0x80_0000_0000, mmio_end=0x90_0000_0000)
    _, _, t = build(2, pci=pci)
    d = t["DSDT"]
    assert aml.qword_memory(0x80_0000_0000, 0x8F_FFFF_FFFF) in d
    assert aml.qword_memory(0x40_0000_0000, 0x40_000F_FFFF, producer=False) in d
    assert acpi.parse_mcfg(t["MCFG"])[0].base == 0x40_0000_0000


def test_dsdt_virtio_mmio_devices() -> None:
    _, _, t = build(2, mmio_devices=MMIO)
    assert "MCFG" not in t and b"PCI0" not in t["DSDT"]
    body = _sb_scope(t["DSDT"])
    assert body.count(b"\x08_HID" + aml.string("LNRO0005")) == 3
    starts = [body.index(b"VR%02d" % i) for i in range(3)]
    assert body.index(b"COM1") < starts[0] < starts[1] < starts[2]
    for i, (base, size, gsi) in enumerate(MMIO):
        dev = body[starts[i] : starts[i + 1] if i + 1 < len(starts) else len(body)]
        assert b"\x08_UID" + aml.integer(i) in dev
        shared = gsi == 12  # VR01 and VR02 share GSI 12; VR00 has 11 alone
        assert aml.memory32_fixed(base, size) + aml.interrupt(gsi, shared=shared) in dev
        # Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive|Shared){gsi}
        assert dev.count(bytes([0x89, 6, 0, 0x03 | (0x08 if shared else 0), 1, gsi, 0, 0, 0])) == 1


def test_devices_and_extra_aml_together() -> None:
    extra = aml.device("XTRA", aml.name("_HID", aml.string("PYVT0001")))
    _, _, t = build(2, pci=PCI, mmio_devices=MMIO, extra_dsdt_aml=extra)
    body = _sb_scope(t["DSDT"])
    assert body.endswith(extra)
    assert body.index(b"PCI0") < body.index(b"VR00") < body.index(b"XTRA")


def test_largest_configuration_fits() -> None:
    """All 32 virtio-mmio slots, 31 PCI slots and the most vCPUs fit below BIOS_END."""
    pci = acpi.PciRoot(irqs={slot: (5, 6, 7, 10)[slot % 4] for slot in range(1, 32)})
    devices = mmio_slots(layout.VIRTIO_MMIO_SLOTS)
    mem, rsdp, t = build(acpi.MAX_VCPUS, pci=pci, mmio_devices=devices)
    end = _assert_no_overlap(mem, t, rsdp)
    assert end <= layout.BIOS_END
    assert b"VR1F" in t["DSDT"] and b"VR20" not in t["DSDT"]
    assert t["DSDT"].count(b"\x08_HID" + aml.string("LNRO0005")) == 32
    assert end - layout.ACPI_START < 16 * 1024, "a few KiB, far from the 128 KiB BIOS area"


def test_device_errors() -> None:
    mem = GuestMemory.from_bytearray(MEM_SIZE)
    cases: list[tuple[dict[str, object], str]] = [
        ({"pci": acpi.PciRoot(ecam_base=0xE008_0000)}, "ECAM base 0xe0080000 must be 1 MiB aligned"),
        ({"pci": acpi.PciRoot(ecam_size=0x18_0000)}, "ECAM size"),
        ({"pci": acpi.PciRoot(ecam_size=512 << 20)}, "ECAM size"),
        ({"pci": acpi.PciRoot(mmio_start=0xD000_0000, mmio_end=0xC000_0000)}, "MMIO window"),
        ({"pci": acpi.PciRoot(mmio_end=0xE000_1000)}, "overlaps"),
        ({"pci": acpi.PciRoot(irqs={32: 5})}, "slot 32 out of range"),
        ({"pci": acpi.PciRoot(irqs={1: 24})}, "GSI 24"),
        ({"pci": acpi.PciRoot(irqs={1: 2})}, "GSI 2"),
        ({"pci": acpi.PciRoot(irqs={1: 4})}, "GSI 4"),  # COM1's
        ({"mmio_devices": [(0xD000_0000, 0x200, 0)]}, "GSI 0"),
        ({"mmio_devices": [(0xD000_0000, 0x200, 99)]}, "GSI 99"),
        ({"mmio_devices": [(0xD000_0000, 0x200, 5), (0xD000_0100, 0x200, 6)]}, "overlaps"),
        ({"mmio_devices": [(0xFFFF_F000, 0x2000, 5)]}, "below 4 GiB"),
        ({"mmio_devices": [(0xD000_0000, 0, 5)]}, "non-empty"),
        ({"mmio_devices": [(0xCFFF_F000, 0x1000, 7)], "pci": PCI}, "overlaps the PCI MMIO window"),
        ({"mmio_devices": [(0xD000_0000, 0x200, 5)], "pci": PCI}, "level-triggered for PCI INTx"),
        ({"mmio_devices": [(0xD000_0000, 0x200, 9)]}, "GSI 9, which is not free"),
        ({"mmio_devices": mmio_slots(257)}, "too many"),
        ({"mmio_devices": mmio_slots(32), "limit": layout.ACPI_START + 2048},
         "0 PCI slots and 32 virtio-mmio devices need"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            acpi.build_acpi(mem, 1, **kw)  # type: ignore[arg-type]
    assert mem.read(layout.ACPI_START, 0x1000) == bytes(0x1000), "nothing is written on error"


@pytest.mark.skipif(IASL is None, reason="iasl (acpica-tools) not installed")
def test_iasl_accepts_device_tables(tmp_path: Path) -> None:
    assert IASL is not None
    iasl = IASL
    pci = acpi.PciRoot(irqs={1: 5, 2: 6, 31: 21})
    _, _, t = build(2, pci=pci, mmio_devices=mmio_slots(17))
    for sig in ("APIC", "MCFG", "XSDT", "RSDT", "DSDT"):
        path = tmp_path / f"{sig.lower()}.dat"
        path.write_bytes(t[sig])
        run = subprocess.run([iasl, "-d", str(path)], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        for bad in ("Incorrect", "Invalid", "****"):
            assert bad not in path.with_suffix(".dsl").read_text(), f"{sig}: {bad!r} in iasl output"
    mcfg = (tmp_path / "mcfg.dsl").read_text()
    assert "Base Address : 00000000E0000000" in mcfg and "End Bus Number : 00" in mcfg
    dsl = (tmp_path / "dsdt.dsl").read_text()
    for text in ('Device (PCI0)', 'EisaId ("PNP0A08")', 'EisaId ("PNP0A03")', 'EisaId ("PNP0C02")',
                 "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode",
                 "WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange",
                 "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite",
                 "0x0001FFFF", "0x0002FFFF", "0x001FFFFF", "Device (VR00)", "Device (VR10)",
                 'Name (_HID, "LNRO0005")', "Interrupt (ResourceConsumer, Edge, ActiveHigh, Shared"):
        assert text in dsl, text
    assert dsl.count('"LNRO0005"') == 17
    run = subprocess.run([iasl, "-oa", "-p", "again", "dsdt.dsl"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "again.aml").read_bytes()[36:] == t["DSDT"][36:]
