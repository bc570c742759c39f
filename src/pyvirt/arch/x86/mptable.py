"""Intel MultiProcessor Specification 1.4 tables: the pre-ACPI way to find CPUs.

Guests booted with ACPI use the MADT instead; the MP table is for those that
are not (old kernels, `acpi=off`, small OSes). `build_mptable` writes, at
`addr` (by default the first KiB of the EBDA, one of the places the spec
says an OS scans, section 4)::

    addr      MP floating pointer structure "_MP_" (16 bytes)
    addr+16   MP configuration table "PCMP": 44-byte header, then entries

Entries, in the order the spec asks for (sorted by type):
one processor per vCPU (APIC id = vCPU index, vCPU 0 is the BSP), one ISA
bus, one I/O APIC, I/O interrupt assignments for ISA IRQs 0-15 (ExtINT on
pin 0, the PIT's IRQ0 on pin 2, every other IRQ on its own pin; IRQ2 is the
8259 cascade and gets no entry, its pin being IRQ0's), and the LAPIC local
interrupts (ExtINT on LINT0, NMI on LINT1), the "virtual wire" wiring that
KVM's in-kernel PIC/IOAPIC/LAPICs implement.

Size: 16 + 44 + 20 per CPU + 8 + 8 + 16*8 + 2*8 bytes = 220 + 20*ncpus, so the
1 KiB from EBDA_START to 0xA0000 holds at most 40 vCPUs. For more, this
module raises ValueError rather than spill into memory the guest may use:
such guests should boot with ACPI (the MADT describes up to 254 vCPUs) and
the VMM can skip the MP table (check with `mptable_size` first).
"""

from __future__ import annotations

import struct

from pyvirt.memory import GuestMemory

from . import layout

SPEC_REV = 4  # MP spec 1.4
OEM_ID = b"PYVIRT".ljust(8)  # MP strings are space-padded, not NUL-padded
PRODUCT_ID = b"PYVIRTVM".ljust(12)

FLOATING_LEN = 16
HEADER_LEN = 44
PROCESSOR_LEN = 20
ENTRY_LEN = 8  # every other base entry type

# Entry types (section 4.3).
PROCESSOR, BUS, IOAPIC, IO_INTERRUPT, LOCAL_INTERRUPT = 0, 1, 2, 3, 4
# Interrupt types (table 4-7).
INT, NMI, SMI, EXTINT = 0, 1, 2, 3
CPU_ENABLED, CPU_BSP = 1 << 0, 1 << 1
IOAPIC_ENABLED = 1 << 0

# Version registers as KVM's in-kernel models report them, so the table and
# the hardware agree: integrated LAPIC version 0x14, 82093AA-style IOAPIC 0x11.
LAPIC_VERSION = 0x14
IOAPIC_VERSION = 0x11

# A plausible processor signature and feature word (CPUID leaf 1 EAX and EDX):
# family 6 model 0 stepping 0, with FPU (bit 0) and an on-chip APIC (bit 9).
# OSes use the MADT/CPUID for real feature detection; this is informational.
DEFAULT_CPU_SIGNATURE = 0x0600
DEFAULT_CPU_FEATURES = (1 << 0) | (1 << 9)

ISA_BUS_ID = 0
ALL_LAPICS = 0xFF
ISA_IRQS = 16


def mptable_size(ncpus: int) -> int:
    """Bytes the floating pointer plus configuration table take for `ncpus`."""
    io_ints = 1 + (ISA_IRQS - 1)  # ExtINT entry + every ISA IRQ but the cascade
    return FLOATING_LEN + HEADER_LEN + PROCESSOR_LEN * ncpus + ENTRY_LEN * (1 + 1 + io_ints + 2)


def _checksum(data: bytes | bytearray) -> int:
    return -sum(data) & 0xFF


def _entries(
    ncpus: int, *, ioapic_id: int, ioapic_addr: int, cpu_signature: int, cpu_features: int
) -> list[bytes]:
    out = []
    for cpu in range(ncpus):
        flags = CPU_ENABLED | (CPU_BSP if cpu == 0 else 0)
        out.append(struct.pack("<BBBBII8x", PROCESSOR, cpu, LAPIC_VERSION, flags, cpu_signature, cpu_features))
    out.append(struct.pack("<BB6s", BUS, ISA_BUS_ID, b"ISA   "))
    out.append(struct.pack("<BBBBI", IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED, ioapic_addr))

    def io_int(kind: int, irq: int, pin: int) -> bytes:
        # flags 0 = "conforms to bus": edge-triggered, active-high for ISA.
        return struct.pack("<BBHBBBB", IO_INTERRUPT, kind, 0, ISA_BUS_ID, irq, ioapic_id, pin)

    out.append(io_int(EXTINT, 0, 0))  # the 8259 master's output, for virtual-wire mode
    out.append(io_int(INT, 0, 2))  # the PIT: IRQ0 on pin 2, as on every PC chipset
    out.extend(io_int(INT, irq, irq) for irq in range(1, ISA_IRQS) if irq != 2)

    def local_int(kind: int, lint: int) -> bytes:
        return struct.pack("<BBHBBBB", LOCAL_INTERRUPT, kind, 0, ISA_BUS_ID, 0, ALL_LAPICS, lint)

    out.append(local_int(EXTINT, 0))
    out.append(local_int(NMI, 1))
    return out


def build_mptable(
    mem: GuestMemory,
    ncpus: int,
    *,
    addr: int = layout.MPTABLE,
    ioapic_id: int | None = None,
    ioapic_addr: int = layout.IOAPIC_ADDR,
    lapic_addr: int = layout.LAPIC_ADDR,
    limit: int = layout.LOW_RAM_END,
    cpu_signature: int = DEFAULT_CPU_SIGNATURE,
    cpu_features: int = DEFAULT_CPU_FEATURES,
) -> int:
    """Write the MP floating pointer and configuration table; return the pointer's address.

    `ioapic_id` defaults to `ncpus`, the first id the CPUs do not use (the
    same choice as the ACPI MADT). The tables must end at or below `limit`;
    ValueError says so when they do not.
    """
    if ncpus < 1:
        raise ValueError(f"need at least one vCPU, got {ncpus}")
    if ioapic_id is None:
        ioapic_id = ncpus
    if not ncpus <= ioapic_id <= 0xFE:
        raise ValueError(f"IOAPIC id {ioapic_id} must be 8-bit, not 0xFF, and not a CPU's APIC id (0-{ncpus - 1})")
    if addr % 16:
        raise ValueError(f"MP floating pointer address {addr:#x} must be 16-byte aligned")
    size = mptable_size(ncpus)
    if addr + size > limit:
        raise ValueError(
            f"MP table for {ncpus} vCPUs needs {size} bytes but only {max(limit - addr, 0)} fit "
            f"between {addr:#x} and {limit:#x} (the EBDA KiB holds at most "
            f"{(layout.LOW_RAM_END - layout.EBDA_START - mptable_size(0)) // PROCESSOR_LEN} vCPUs); "
            "boot such guests with ACPI and skip the MP table"
        )

    entries = _entries(ncpus, ioapic_id=ioapic_id, ioapic_addr=ioapic_addr,
                       cpu_signature=cpu_signature, cpu_features=cpu_features)
    body = b"".join(entries)
    table_addr = addr + FLOATING_LEN
    header = struct.pack(
        "<4sHBB8s12sIHHIHBx",
        b"PCMP", HEADER_LEN + len(body), SPEC_REV, 0, OEM_ID, PRODUCT_ID,
        0, 0,  # no OEM table
        len(entries), lapic_addr,
        0, 0,  # no extended entries: length and checksum
    )
    table = bytearray(header + body)
    table[7] = _checksum(table)

    # Feature byte 1 = 0: a configuration table is present (no default config);
    # byte 2 bit 7 (IMCR present) = 0: the platform uses virtual-wire mode.
    floating = bytearray(struct.pack("<4sIBBB5x", b"_MP_", table_addr, FLOATING_LEN // 16, SPEC_REV, 0))
    floating[10] = _checksum(floating)

    mem.write(addr, bytes(floating))
    mem.write(table_addr, bytes(table))
    return addr
