"""ACPI tables for an x86 guest: RSDP, RSDT/XSDT, FADT, FACS, MADT, DSDT, MCFG.

`build_acpi` lays the tables out from `base` (the BIOS area, so the RSDP is
found by the legacy scan of 0xE0000-0xFFFFF that Linux and other OSes do when
no boot protocol hands them its address) and returns the RSDP address.

Layout, each table aligned to 16 bytes (the FACS to 64, as the spec requires)::

    base      RSDP (36 bytes, revision 2)
    +64       FACS (64 bytes)
              DSDT, FADT, MADT, [MCFG], XSDT, RSDT

What the tables describe is pyvirt's fixed platform (docs/internals.md): the
PM1a event/control blocks and PM timer of the pyvirt PM device at `pm_base`,
the SCI on ISA IRQ 9, the 0xCF9 reset register, KVM's in-kernel IOAPIC and
LAPICs, and COM1. SMI_CMD is 0, which tells the guest the platform is always
in ACPI mode (there is no SMM firmware to hand over from), so the PM device
must report SCI_EN set in PM1_CNT.

Optionally they also describe, in the DSDT's \\_SB_ scope:

- a PCI Express host bridge (`PciRoot`): \\_SB_.PCI0 with its bus, I/O and
  memory windows and a _PRT routing each slot's INTA straight to a GSI; an
  MCFG table for its ECAM; a PNP0C02 device reserving the ECAM range, which
  is where Linux looks before it trusts the MCFG (PCI Firmware 3.x, 4.1.2);
  and an MADT override making each of those GSIs below 16 level-triggered;
- virtio-mmio devices VR00, VR01, ... with the _HID "LNRO0005" that Linux's
  virtio_mmio driver matches, each with its register window and interrupt.

A VM without them gets the precomputed DSDT and never loads aml.py.

`parse_tables` walks the tables back out of guest memory, checking
signatures, lengths and checksums, and `parse_mcfg` decodes an MCFG; tests
and debugging tools use them. They live in acpi_parse.py, which a VM's start
does not load, and are reachable from here as well.

Structures follow the ACPI 6.5 specification, section 5.2.
"""

from __future__ import annotations

import struct

from pyvirt.memory import GuestMemory

from ..._record import FrozenRecord
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

MCFG_REVISION = 1
MCFG_ALLOCATION_LEN = 16  # PCI Firmware 3.x table 4-3: base, segment, start bus, end bus, reserved
ECAM_BUS_SIZE = 1 << 20  # 32 devices x 8 functions x 4 KiB per bus
IOAPIC_PINS = 24  # KVM's in-kernel IOAPIC: GSIs 0-23
PCI_SLOTS = 32
# Device interrupts may use the ISA IRQs the platform leaves free, and the
# IOAPIC pins above the ISA range.
DEVICE_GSIS = frozenset(layout.DEVICE_IRQS) | frozenset(range(16, IOAPIC_PINS))
MAX_MMIO_DEVICES = 256  # named VR00-VRFF

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .acpi_parse import parse_mcfg, parse_tables


def __getattr__(name: str) -> object:
    if name in ("parse_tables", "parse_mcfg"):
        from . import acpi_parse

        return getattr(acpi_parse, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PciRoot(FrozenRecord):
    """PCI segment 0 as the tables describe it.

    `ecam_base`/`ecam_size`: the memory-mapped configuration space; it decodes
    buses 0 to (ecam_size >> 20) - 1. `mmio_start`/`mmio_end`: the window BARs
    live in, end exclusive. `irqs`: slot -> the GSI its INTA is wired to.
    `build_acpi` validates the values.
    """

    __slots__ = __match_args__ = ("ecam_base", "ecam_size", "mmio_start", "mmio_end", "irqs")
    ecam_base: int
    ecam_size: int
    mmio_start: int
    mmio_end: int
    irqs: dict[int, int]

    def __init__(self, ecam_base: int = layout.PCI_ECAM_BASE, ecam_size: int = layout.PCI_ECAM_SIZE,
                 mmio_start: int = layout.PCI_MMIO_START, mmio_end: int = layout.PCI_MMIO_END,
                 irqs: Mapping[int, int] | None = None) -> None:
        self._init(ecam_base, ecam_size, mmio_start, mmio_end, dict(irqs or {}))

    def __hash__(self) -> int:  # the dict field is not hashable itself
        return hash((self.ecam_base, self.ecam_size, self.mmio_start, self.mmio_end,
                     tuple(sorted(self.irqs.items()))))

    @property
    def end_bus(self) -> int:
        return (self.ecam_size >> 20) - 1


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


def _madt(ncpus: int, *, lapic_addr: int, ioapic_addr: int, sci_irq: int,
          level_irqs: Sequence[int] = ()) -> bytes:
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
    for irq in level_irqs:
        # ISA IRQs that carry PCI INTx: level-triggered like the SCI, for the
        # same reason (the VMM holds the line asserted until the guest acks the
        # device). GSIs 16-23 need no override: there, _PRT says level.
        if irq < 16 and irq != sci_irq:
            body += struct.pack("<BBBBIH", MADT_INT_SRC_OVERRIDE, 10, 0, irq, irq, INTI_ACTIVE_HIGH | INTI_LEVEL)
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


def _pci_aml(pci: PciRoot) -> bytes:
    """\\_SB_.PCI0 and the motherboard device reserving its ECAM."""
    from . import aml

    windows = [
        aml.word_bus_number(0, pci.end_bus),
        # A host bridge consumes the configuration mechanism #1 ports itself
        # and forwards every other port, legacy ones included, to the bus.
        aml.io_port(0xCF8, 8),
        aml.word_io(0x0000, 0x0CF7),
        aml.word_io(0x0D00, 0xFFFF),
        _memory_window(pci.mmio_start, pci.mmio_end, producer=True),
    ]
    # Direct GSI form (Source 0): no link devices, INTA only, since pyvirt's
    # functions all use INTA. The OS takes such a GSI as level-triggered and
    # active-low; KVM's IOAPIC ignores the polarity bit, so KVM_IRQ_LINE 1
    # still means asserted.
    prt = aml.package(*(
        aml.package(aml.integer((slot << 16) | 0xFFFF), aml.integer(0), aml.integer(0), aml.integer(gsi))
        for slot, gsi in sorted(pci.irqs.items())
    ))
    pci0 = aml.device(
        "PCI0",
        aml.name("_HID", aml.eisa_id("PNP0A08")),  # PCI Express root bridge
        aml.name("_CID", aml.eisa_id("PNP0A03")),  # ... compatible with a PCI one
        aml.name("_SEG", aml.integer(0)),
        aml.name("_BBN", aml.integer(0)),
        aml.name("_UID", aml.integer(0)),
        aml.name("_CRS", aml.resource_template(*windows)),
        aml.name("_PRT", prt),
    )
    ecam = aml.device(
        "ECAM",
        aml.name("_HID", aml.eisa_id("PNP0C02")),
        aml.name("_UID", aml.integer(0)),
        aml.name("_CRS", aml.resource_template(_memory_window(pci.ecam_base, pci.ecam_base + pci.ecam_size,
                                                              producer=False))),
    )
    return pci0 + ecam


def _memory_window(start: int, end: int, *, producer: bool) -> bytes:
    from . import aml

    if not producer and end <= 1 << 32:
        return aml.memory32_fixed(start, end - start)
    if end <= 1 << 32:
        return aml.dword_memory(start, end - 1, producer=producer)
    return aml.qword_memory(start, end - 1, producer=producer)


def _mmio_aml(devices: Sequence[tuple[int, int, int]]) -> bytes:
    """One \\_SB_.VRxx per virtio-mmio device."""
    from . import aml

    gsi_users: dict[int, int] = {}
    for _, _, gsi in devices:
        gsi_users[gsi] = gsi_users.get(gsi, 0) + 1
    out = b""
    for index, (base, size, gsi) in enumerate(devices):
        out += aml.device(
            f"VR{index:02X}",
            aml.name("_HID", aml.string("LNRO0005")),
            aml.name("_UID", aml.integer(index)),
            aml.name("_CRS", aml.resource_template(
                aml.memory32_fixed(base, size),
                # Exclusive unless another virtio-mmio device shares the line.
                aml.interrupt(gsi, edge=True, active_high=True, shared=gsi_users[gsi] > 1),
            )),
        )
    return out


def _mcfg(pci: PciRoot) -> bytes:
    body = bytes(8)  # reserved
    body += struct.pack("<QHBBI", pci.ecam_base, 0, 0, pci.end_bus, 0)  # segment 0, buses 0..end
    return _sdt(b"MCFG", MCFG_REVISION, body)


def _check_gsi(gsi: int, what: str) -> None:
    if gsi not in DEVICE_GSIS:
        raise ValueError(
            f"{what} uses GSI {gsi}, which is not free for devices: use one of "
            f"{', '.join(map(str, sorted(DEVICE_GSIS)))} (IOAPIC pins 0-{IOAPIC_PINS - 1}; "
            "the others belong to the PIT, keyboard, cascade, serial ports, RTC and SCI)"
        )


def _check_devices(pci: PciRoot | None, mmio_devices: Sequence[tuple[int, int, int]], sci_irq: int) -> None:
    ranges: list[tuple[int, int, str]] = []  # (start, end exclusive, what)
    pci_gsis: set[int] = set()
    if pci is not None:
        if pci.ecam_base % ECAM_BUS_SIZE or pci.ecam_base < 0:
            raise ValueError(f"PCI ECAM base {pci.ecam_base:#x} must be 1 MiB aligned (each bus takes 1 MiB)")
        if pci.ecam_size % ECAM_BUS_SIZE or not ECAM_BUS_SIZE <= pci.ecam_size <= 256 * ECAM_BUS_SIZE:
            raise ValueError(
                f"PCI ECAM size {pci.ecam_size:#x} must be 1-256 MiB in whole MiB (1 MiB per bus, 256 buses at most)"
            )
        if pci.ecam_base + pci.ecam_size > 1 << 64:
            raise ValueError(f"PCI ECAM at {pci.ecam_base:#x} does not fit in 64 bits")
        if not 0 <= pci.mmio_start < pci.mmio_end <= 1 << 64:
            raise ValueError(f"PCI MMIO window {pci.mmio_start:#x}-{pci.mmio_end:#x} is empty or out of range")
        ranges += [(pci.ecam_base, pci.ecam_base + pci.ecam_size, "the PCI ECAM"),
                   (pci.mmio_start, pci.mmio_end, "the PCI MMIO window")]
        for slot, gsi in pci.irqs.items():
            if not 0 <= slot < PCI_SLOTS:
                raise ValueError(f"PCI slot {slot} out of range 0-{PCI_SLOTS - 1}")
            _check_gsi(gsi, f"PCI slot {slot}")
            pci_gsis.add(gsi)
    if len(mmio_devices) > MAX_MMIO_DEVICES:
        raise ValueError(
            f"{len(mmio_devices)} virtio-mmio devices are too many: the DSDT names them VR00-VRFF, "
            f"so at most {MAX_MMIO_DEVICES}"
        )
    for index, (base, size, gsi) in enumerate(mmio_devices):
        what = f"virtio-mmio device {index} at {base:#x}"
        if size <= 0 or base < 0 or base + size > 1 << 32:
            raise ValueError(f"{what}: window of size {size:#x} must be non-empty and below 4 GiB")
        _check_gsi(gsi, what)
        if gsi in pci_gsis or gsi == sci_irq:
            # One IOAPIC pin cannot be both edge (virtio-mmio) and level
            # (PCI INTx, the SCI).
            raise ValueError(f"{what} uses GSI {gsi}, which is level-triggered for "
                             f"{'PCI INTx' if gsi in pci_gsis else 'the SCI'}; give it its own GSI")
        ranges.append((base, base + size, what))
    ranges.sort()
    for (start_a, end_a, what_a), (start_b, _, what_b) in zip(ranges, ranges[1:]):
        if start_b < end_a:
            raise ValueError(f"{what_b} overlaps {what_a} ({start_a:#x}-{end_a - 1:#x})")


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
    pci: PciRoot | None = None,
    mmio_devices: Sequence[tuple[int, int, int]] = (),
) -> int:
    """Write the ACPI tables for `ncpus` vCPUs at `base`; return the RSDP address.

    `pci` adds the PCI host bridge, its MCFG and its interrupt routing;
    `mmio_devices` lists virtio-mmio devices as (base, size, gsi), named
    VR00, VR01, ... in that order. `extra_dsdt_aml` is a TermList (e.g.
    `aml.device(...)` terms) placed inside the \\_SB_ scope after them.
    Without the three the output is the same as it always was. Raises
    ValueError if the arguments are out of range, devices overlap, or the
    tables would not end at or below `limit`.
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

    _check_devices(pci, mmio_devices, sci_irq)
    devices_aml = (_pci_aml(pci) if pci is not None else b"") + (_mmio_aml(mmio_devices) if mmio_devices else b"")

    facs_addr = _align(base + RSDP_LEN, 64)
    dsdt_addr = _align(facs_addr + FACS_LEN, 16)
    dsdt = _dsdt(devices_aml + extra_dsdt_aml)
    fadt_addr = _align(dsdt_addr + len(dsdt), 16)
    fadt = _fadt(facs=facs_addr, dsdt=dsdt_addr, pm_base=pm_base, sci_irq=sci_irq,
                 reset_port=reset_port, reset_value=reset_value)
    madt_addr = _align(fadt_addr + len(fadt), 16)
    level_irqs = sorted(set(pci.irqs.values())) if pci is not None else []
    madt = _madt(ncpus, lapic_addr=lapic_addr, ioapic_addr=ioapic_addr, sci_irq=sci_irq, level_irqs=level_irqs)
    # The FADT comes first: some OSes expect it at entry 0 of the RSDT/XSDT.
    tables = [(fadt_addr, fadt), (madt_addr, madt)]
    next_addr = _align(madt_addr + len(madt), 16)
    if pci is not None:
        tables.append((next_addr, _mcfg(pci)))
        next_addr = _align(next_addr + len(tables[-1][1]), 16)
    xsdt_addr = next_addr
    xsdt = _sdt(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a, _ in tables))
    rsdt_addr = _align(xsdt_addr + len(xsdt), 16)
    rsdt = _sdt(b"RSDT", 1, b"".join(struct.pack("<I", a) for a, _ in tables))
    end = rsdt_addr + len(rsdt)
    if end > 1 << 32:
        raise ValueError("ACPI tables must sit below 4 GiB (the RSDT and FADT hold 32-bit pointers)")
    if end > limit:
        devices = ""
        if pci is not None or mmio_devices:
            slots = len(pci.irqs) if pci is not None else 0
            devices = f", {slots} PCI slots and {len(mmio_devices)} virtio-mmio devices"
        raise ValueError(
            f"ACPI tables for {ncpus} vCPUs{devices} need {end - base} bytes from {base:#x} "
            f"but only {max(limit - base, 0)} fit below {limit:#x}"
        )

    mem.fill(base, end - base)  # alignment gaps are zero, not stale data
    mem.write(base, _rsdp(rsdt_addr, xsdt_addr))
    mem.write(facs_addr, _facs())
    mem.write(dsdt_addr, dsdt)
    for addr, table in tables:
        mem.write(addr, table)
    mem.write(xsdt_addr, xsdt)
    mem.write(rsdt_addr, rsdt)
    return base
