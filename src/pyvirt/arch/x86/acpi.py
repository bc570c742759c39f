"""ACPI tables for an x86 guest: RSDP, RSDT/XSDT, FADT, FACS, MADT and DSDT.

`build_acpi` lays the tables out from `base` (the BIOS area, so the RSDP is
found by the legacy scan of 0xE0000-0xFFFFF that Linux and other OSes do when
no boot protocol hands them its address) and returns the RSDP address.

Layout, each table aligned to 16 bytes (the FACS to 64, as the spec requires)::

    base      RSDP (36 bytes, revision 2)
    +64       FACS (64 bytes)
              DSDT, FADT, MADT, XSDT, RSDT

What the tables describe is pyvirt's fixed platform (docs/internals.md): the
PM1a event/control blocks and PM timer of the pyvirt PM device at `pm_base`,
the SCI on ISA IRQ 9, the 0xCF9 reset register, KVM's in-kernel IOAPIC and
LAPICs, and COM1. SMI_CMD is 0, which tells the guest the platform is always
in ACPI mode (there is no SMM firmware to hand over from), so the PM device
must report SCI_EN set in PM1_CNT.

`parse_tables` walks the tables back out of guest memory, checking
signatures, lengths and checksums; tests and debugging tools use it. It
lives in acpi_parse.py, which a VM's start does not load, and is reachable
from here as well.

Structures follow the ACPI 6.5 specification, section 5.2.
"""

from __future__ import annotations

import struct

from pyvirt.memory import GuestMemory

from . import layout

OEM_ID = b"PYVIRT"
OEM_TABLE_ID = b"PYVIRTVM"
OEM_REVISION = 1
CREATOR_ID = b"PYVT"
CREATOR_REVISION = 1

HEADER_LEN = 36  # the common System Description Table header (section 5.2.6)
RSDP_LEN = 36
FADT_LEN = 276  # ACPI 6.x FADT, up to and including the hypervisor vendor id
FACS_LEN = 64

# Revisions we claim: ACPI 6.5 FADT (major 6, minor 5), MADT revision 5 (6.3+:
# the LAPIC "online capable" flag exists, and we leave it clear), DSDT
# revision 2 so AML integers are 64-bit.
FADT_REVISION = 6
FADT_MINOR_REVISION = 5
MADT_REVISION = 5
DSDT_REVISION = 2
FACS_VERSION = 2

# xAPIC ids are 8 bits and 0xFF is the broadcast id; the IOAPIC takes id
# `ncpus`, so 254 vCPUs (ids 0-253, IOAPIC 254) is the most the MADT's
# Processor Local APIC entries can describe. More would need x2APIC entries.
MAX_VCPUS = 254

# FADT flags (table 5.10).
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5  # no fixed-feature sleep button (the power button stays fixed)
FADT_RESET_REG_SUP = 1 << 10
FADT_HW_REDUCED_ACPI = 1 << 20

# IA-PC boot architecture flags (table 5.11).
BOOT_LEGACY_DEVICES = 1 << 0  # ISA devices (COM1, RTC, PIT) the OS cannot enumerate
BOOT_8042 = 1 << 1
BOOT_VGA_NOT_PRESENT = 1 << 2  # pyvirt has no VGA; keeps guests from poking 0x3C0

# Generic Address Structure address spaces and access sizes (section 5.2.3.2).
GAS_SYSTEM_IO = 1
ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD = 1, 2, 3

# MADT entry types (table 5.44) and MPS INTI flags (table 5.50).
MADT_LOCAL_APIC = 0
MADT_IO_APIC = 1
MADT_INT_SRC_OVERRIDE = 2
MADT_LOCAL_APIC_NMI = 4
MADT_PCAT_COMPAT = 1 << 0
LAPIC_ENABLED = 1 << 0
INTI_ACTIVE_HIGH = 0b01
INTI_EDGE = 0b01 << 2
INTI_LEVEL = 0b11 << 2
ALL_PROCESSORS = 0xFF

# C2/C3 latencies above these limits mean "state not supported" (section 5.2.9).
P_LVL2_LAT_NONE = 101
P_LVL3_LAT_NONE = 1001

SLP_TYP_S5 = 5  # what the pyvirt PM device treats as "power off"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .acpi_parse import parse_tables


def __getattr__(name: str) -> object:
    if name == "parse_tables":
        from .acpi_parse import parse_tables

        return parse_tables
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_HEADER = struct.Struct("<4sIBB6s8sI4sI")
_GAS = struct.Struct("<BBBBQ")


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes `data` (with that byte as 0) sum to 0 mod 256."""
    return -sum(data) & 0xFF


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def _gas(space: int, bit_width: int, access: int, address: int) -> bytes:
    return _GAS.pack(space, bit_width, 0, access, address)


def _sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """Wrap `body` in a table header and fill in the checksum (offset 9)."""
    length = HEADER_LEN + len(body)
    table = bytearray(
        _HEADER.pack(signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, OEM_REVISION,
                     CREATOR_ID, CREATOR_REVISION) + body
    )
    table[9] = checksum(table)
    return bytes(table)


def _rsdp(rsdt_addr: int, xsdt_addr: int) -> bytes:
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, rsdt_addr, RSDP_LEN, xsdt_addr, 0))
    rsdp[8] = checksum(rsdp[:20])  # the ACPI 1.0 checksum covers the first 20 bytes
    rsdp[32] = checksum(rsdp)  # the extended checksum covers all 36
    return bytes(rsdp)


def _facs() -> bytes:
    # No firmware waking vector, no global lock users, no S4BIOS: all zero.
    facs = struct.pack("<4sIIIIIQB3xI24x", b"FACS", FACS_LEN, 0, 0, 0, 0, 0, FACS_VERSION, 0)
    assert len(facs) == FACS_LEN
    return facs


def _fadt(*, facs: int, dsdt: int, pm_base: int, sci_irq: int, reset_port: int, reset_value: int) -> bytes:
    pm1_evt, pm1_cnt, pm_tmr = pm_base, pm_base + 4, pm_base + 8
    body = bytearray(FADT_LEN - HEADER_LEN)

    def put(offset: int, fmt: str, *values: int | bytes) -> None:
        struct.pack_into("<" + fmt, body, offset - HEADER_LEN, *values)

    # Both the 32-bit and the 64-bit (X_) fields are filled, with equal
    # values: ACPI 1.0 guests read only the former, and ACPICA warns when the
    # two disagree.
    put(36, "II", facs, dsdt)  # FIRMWARE_CTRL, DSDT
    put(45, "BH", 0, sci_irq)  # Preferred_PM_Profile (unspecified), SCI_INT
    put(48, "IBBBB", 0, 0, 0, 0, 0)  # SMI_CMD = 0: always in ACPI mode
    put(56, "IIIIII", pm1_evt, 0, pm1_cnt, 0, 0, pm_tmr)  # PM1a/b_EVT, PM1a/b_CNT, PM2_CNT, PM_TMR
    put(80, "II", 0, 0)  # no GPE blocks
    put(88, "BBBBBB", 4, 2, 0, 4, 0, 0)  # PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN, GPE0/1 lengths
    put(96, "HH", P_LVL2_LAT_NONE, P_LVL3_LAT_NONE)
    put(109, "H", BOOT_LEGACY_DEVICES | BOOT_8042 | BOOT_VGA_NOT_PRESENT)  # IAPC_BOOT_ARCH
    # Flags. TMR_VAL_EXT stays clear: a 24-bit timer claim is safe whether the
    # PM device counts 24 or 32 bits, since guests then mask to 24.
    put(112, "I", FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RESET_REG_SUP)
    body[116 - HEADER_LEN : 128 - HEADER_LEN] = _gas(GAS_SYSTEM_IO, 8, ACCESS_BYTE, reset_port)
    put(128, "BHB", reset_value, 0, FADT_MINOR_REVISION)  # RESET_VALUE, ARM_BOOT_ARCH, minor version
    put(132, "QQ", facs, dsdt)  # X_FIRMWARE_CTRL, X_DSDT
    body[148 - HEADER_LEN : 160 - HEADER_LEN] = _gas(GAS_SYSTEM_IO, 32, ACCESS_WORD, pm1_evt)  # X_PM1a_EVT_BLK
    body[172 - HEADER_LEN : 184 - HEADER_LEN] = _gas(GAS_SYSTEM_IO, 16, ACCESS_WORD, pm1_cnt)  # X_PM1a_CNT_BLK
    body[208 - HEADER_LEN : 220 - HEADER_LEN] = _gas(GAS_SYSTEM_IO, 32, ACCESS_DWORD, pm_tmr)  # X_PM_TMR_BLK
    put(268, "8s", OEM_ID)  # Hypervisor Vendor Identity
    return _sdt(b"FACP", FADT_REVISION, bytes(body))


def _madt(ncpus: int, *, lapic_addr: int, ioapic_addr: int, sci_irq: int) -> bytes:
    body = bytearray(struct.pack("<II", lapic_addr, MADT_PCAT_COMPAT))  # PCAT_COMPAT: 8259s exist too
    for cpu in range(ncpus):
        # ACPI processor UID = APIC id = vCPU index, matching CPUID and the MP table.
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, cpu, cpu, LAPIC_ENABLED)
    # The IOAPIC takes the first id after the CPUs' so no two APICs share one.
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, ncpus, 0, ioapic_addr, 0)
    # The PIT's IRQ0 is wired to IOAPIC pin 2 (pin 0 carries the 8259's ExtINT).
    body += struct.pack("<BBBBIH", MADT_INT_SRC_OVERRIDE, 10, 0, 0, 2, INTI_ACTIVE_HIGH | INTI_EDGE)
    if sci_irq < 16:
        # The SCI is level-triggered; without this override an ISA IRQ would
        # be taken as edge-triggered and an SCI held asserted would be lost.
        body += struct.pack("<BBBBIH", MADT_INT_SRC_OVERRIDE, 10, 0, sci_irq, sci_irq,
                            INTI_ACTIVE_HIGH | INTI_LEVEL)
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS, 0, 1)  # NMI on LINT1
    return _sdt(b"APIC", MADT_REVISION, bytes(body))


def _dsdt_aml(extra_aml: bytes) -> bytes:
    from . import aml

    s5 = aml.name("_S5_", aml.package(*(aml.integer(v) for v in (SLP_TYP_S5, SLP_TYP_S5, 0, 0))))
    com1 = aml.device(
        "COM1",
        aml.name("_HID", aml.eisa_id("PNP0501")),
        aml.name("_UID", aml.integer(0)),
        aml.name("_CRS", aml.resource_template(aml.io_port(0x3F8, 8), aml.irq_no_flags(4))),
    )
    return s5 + aml.scope("\\_SB_", com1, extra_aml)


# What `_dsdt_aml(b"")` encodes, written out so that starting a VM without
# extra devices does not load the AML encoder; tests/unit/test_arch_acpi.py
# checks that the two agree.
_DSDT_AML = bytes.fromhex(
    "08 5f53355f 12 08 04 0a05 0a05 00 00"  # Name(_S5_, Package(){5, 5, 0, 0})
    "10 33 5c5f53425f"  # Scope(\\_SB_) {
    "5b82 2b 434f4d31"  #   Device(COM1) {
    "08 5f484944 0c 41d00501"  #     Name(_HID, EisaId("PNP0501"))
    "08 5f554944 00"  #     Name(_UID, 0)
    "08 5f435253 11 10 0a0d"  #     Name(_CRS, ResourceTemplate() {
    "47 01 f803 f803 01 08"  #       IO(Decode16, 0x3F8, 0x3F8, 1, 8)
    "22 1000"  #       IRQNoFlags() {4}
    "79 00"  #     }) } }
)


def _dsdt(extra_aml: bytes) -> bytes:
    return _sdt(b"DSDT", DSDT_REVISION, _dsdt_aml(extra_aml) if extra_aml else _DSDT_AML)


def build_acpi(
    mem: GuestMemory,
    ncpus: int,
    *,
    base: int = layout.ACPI_START,
    limit: int = layout.BIOS_END,
    pm_base: int = 0x600,
    sci_irq: int = 9,
    ioapic_addr: int = layout.IOAPIC_ADDR,
    lapic_addr: int = layout.LAPIC_ADDR,
    reset_port: int = 0xCF9,
    reset_value: int = 0x06,
    extra_dsdt_aml: bytes = b"",
) -> int:
    """Write the ACPI tables for `ncpus` vCPUs at `base`; return the RSDP address.

    `extra_dsdt_aml` is a TermList (e.g. `aml.device(...)` terms) placed inside
    the \\_SB_ scope. Raises ValueError if the arguments are out of range or
    the tables would not end at or below `limit`.
    """
    if not 1 <= ncpus <= MAX_VCPUS:
        raise ValueError(
            f"ACPI MADT supports 1-{MAX_VCPUS} vCPUs with 8-bit xAPIC ids, got {ncpus} "
            "(too many vCPUs: APIC id 255 is broadcast and the IOAPIC needs an id too)"
        )
    if base % 16:
        raise ValueError(f"RSDP address {base:#x} must be 16-byte aligned for the legacy scan to find it")
    if not 1 <= sci_irq <= 23 or sci_irq == 2:
        raise ValueError(f"SCI IRQ {sci_irq} must be an IOAPIC pin 1-23 other than 2 (the PIT's)")
    if not 0 <= pm_base <= 0xFFFF - 12 or not 0 <= reset_port <= 0xFFFF or not 0 <= reset_value <= 0xFF:
        raise ValueError(
            f"bad port arguments: pm_base={pm_base:#x} reset_port={reset_port:#x} reset_value={reset_value:#x}"
        )

    facs_addr = _align(base + RSDP_LEN, 64)
    dsdt_addr = _align(facs_addr + FACS_LEN, 16)
    dsdt = _dsdt(extra_dsdt_aml)
    fadt_addr = _align(dsdt_addr + len(dsdt), 16)
    fadt = _fadt(facs=facs_addr, dsdt=dsdt_addr, pm_base=pm_base, sci_irq=sci_irq,
                 reset_port=reset_port, reset_value=reset_value)
    madt_addr = _align(fadt_addr + len(fadt), 16)
    madt = _madt(ncpus, lapic_addr=lapic_addr, ioapic_addr=ioapic_addr, sci_irq=sci_irq)
    # The FADT comes first: some OSes expect it at entry 0 of the RSDT/XSDT.
    tables = [fadt_addr, madt_addr]
    xsdt_addr = _align(madt_addr + len(madt), 16)
    xsdt = _sdt(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in tables))
    rsdt_addr = _align(xsdt_addr + len(xsdt), 16)
    rsdt = _sdt(b"RSDT", 1, b"".join(struct.pack("<I", a) for a in tables))
    end = rsdt_addr + len(rsdt)
    if end > 1 << 32:
        raise ValueError("ACPI tables must sit below 4 GiB (the RSDT and FADT hold 32-bit pointers)")
    if end > limit:
        raise ValueError(
            f"ACPI tables for {ncpus} vCPUs need {end - base} bytes from {base:#x} "
            f"but only {max(limit - base, 0)} fit below {limit:#x}"
        )

    mem.fill(base, end - base)  # alignment gaps are zero, not stale data
    mem.write(base, _rsdp(rsdt_addr, xsdt_addr))
    mem.write(facs_addr, _facs())
    mem.write(dsdt_addr, dsdt)
    mem.write(fadt_addr, fadt)
    mem.write(madt_addr, madt)
    mem.write(xsdt_addr, xsdt)
    mem.write(rsdt_addr, rsdt)
    return base
