"""Where pyvirt puts things in a guest's physical address space.

Low memory follows the PC conventions guests expect (BIOS data below 0x500,
EBDA and ROM area reserved, kernels at 1 MiB); the window 3 GiB - 4 GiB is
left for MMIO (IOAPIC, LAPIC, PCI), and RAM beyond 3 GiB continues at 4 GiB.
"""

from __future__ import annotations

from ..._record import FrozenRecord

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

BOOT_GDT = 0x500  # boot GDT: null, code32 0x08, code64 0x10, data 0x18, TSS 0x20 (see boot_cpu.py)
BOOT_IDT = 0x530  # empty IDT: a fault before the guest loads its own is a triple fault
SETUP_DATA = 0x5000  # Linux setup_data list (the RNG seed)
PVH_INFO = 0x6000  # hvm_start_info, then its memory map and module list
MULTIBOOT_INFO = 0x6000  # multiboot info block (a kernel uses one protocol at a time)
ZERO_PAGE = 0x7000  # Linux struct boot_params
PML4 = 0x9000  # identity page tables for 64-bit entry:
PDPT = 0xA000  #   PML4 -> PDPT -> 4 page directories of 2 MiB pages = 4 GiB
PD = 0xB000  #   0xB000..0xEFFF
CMDLINE = 0x20000
CMDLINE_MAX = 64 * KiB
MODULES = 0x30000  # strings/lists for multiboot modules (not the module data)
EBDA_START = 0x9FC00  # MP floating pointer + table live here
MPTABLE = EBDA_START
LOW_RAM_END = 0xA0000
BIOS_START = 0xE0000  # ACPI tables (RSDP must be in 0xE0000..0xFFFFF)
ACPI_START = BIOS_START
BIOS_END = 0x100000
HIMEM_START = 0x100000  # kernels are loaded at 1 MiB
MMIO_HOLE_START = 3 * GiB
MMIO_HOLE_END = 4 * GiB
IOAPIC_ADDR = 0xFEC00000
LAPIC_ADDR = 0xFEE00000

# Inside the MMIO hole: PCI BARs, then virtio-mmio slots, then PCI ECAM.
PCI_MMIO_START = 0xC000_0000  # 32-bit BARs are placed from here ...
PCI_MMIO_END = 0xD000_0000  # ... to here
VIRTIO_MMIO_BASE = 0xD000_0000  # slot i is at VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_STRIDE
VIRTIO_MMIO_STRIDE = 0x1000
VIRTIO_MMIO_SLOTS = 32
PCI_ECAM_BASE = 0xE000_0000  # bus 0 only: 32 devices x 8 functions x 4 KiB = 1 MiB
PCI_ECAM_SIZE = 0x10_0000
# Legacy IRQs free for devices (0-4, 8 and 9 are the PIT, keyboard, cascade,
# serial ports, RTC and ACPI SCI); a PIC-only guest can use nothing else.
DEVICE_IRQS = (5, 6, 7, 10, 11, 12, 14, 15)
TSS_ADDR = 0xFFFBD000  # 3 pages KVM needs on Intel (KVM_SET_TSS_ADDR)
IDENTITY_MAP_ADDR = 0xFFFBC000

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4


class E820Entry(FrozenRecord):
    __slots__ = __match_args__ = ("addr", "size", "type")
    addr: int
    size: int
    type: int

    def __init__(self, addr: int, size: int, type: int) -> None:
        self._init(addr, size, type)

    @property
    def end(self) -> int:
        return self.addr + self.size


class RamRange(FrozenRecord):
    """A stretch of guest RAM backed by one memory region."""

    __slots__ = __match_args__ = ("gpa", "size")
    gpa: int
    size: int

    def __init__(self, gpa: int, size: int) -> None:
        self._init(gpa, size)


def ram_ranges(mem_size: int) -> list[RamRange]:
    """Split `mem_size` bytes of RAM around the MMIO hole below 4 GiB."""
    if mem_size <= MMIO_HOLE_START:
        return [RamRange(0, mem_size)]
    return [RamRange(0, MMIO_HOLE_START), RamRange(MMIO_HOLE_END, mem_size - MMIO_HOLE_START)]


def e820_map(mem_size: int) -> list[E820Entry]:
    """The memory map every boot protocol reports (PVH, Linux, multiboot)."""
    entries = [
        E820Entry(0, EBDA_START, E820_RAM),
        E820Entry(EBDA_START, LOW_RAM_END - EBDA_START, E820_RESERVED),
        E820Entry(BIOS_START, BIOS_END - BIOS_START, E820_RESERVED),
    ]
    for r in ram_ranges(mem_size):
        start = max(r.gpa, HIMEM_START)
        end = r.gpa + r.size
        if end > start:
            entries.append(E820Entry(start, end - start, E820_RAM))
    return entries


def low_ram_end(mem_size: int) -> int:
    """End of the RAM below the MMIO hole (where initrds go)."""
    return min(mem_size, MMIO_HOLE_START)
