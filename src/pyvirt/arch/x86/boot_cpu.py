"""Boot-time CPU state: the flat GDT, identity page tables and register
values a kernel expects at its entry point.

Two entry modes cover every boot protocol pyvirt speaks:
- protected32 (PVH, multiboot): flat 4 GiB segments, paging off;
- long64 (Linux 64-bit boot protocol, ELF vmlinux): paging on with the first
  4 GiB identity-mapped, CS = __BOOT_CS (0x10), DS/ES/SS = __BOOT_DS (0x18),
  as Documentation/arch/x86/boot.rst asks.
"""

from __future__ import annotations

import struct

from ...memory import GuestMemory

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...kvm.structs import kvm_regs
from . import layout

CODE32_SEL = 0x08
CODE64_SEL = 0x10
DATA_SEL = 0x18
TSS_SEL = 0x20

CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

PTE_P, PTE_RW, PTE_US, PTE_PS = 1, 2, 4, 0x80


def gdt_entry(base: int, limit: int, access: int, flags: int) -> int:
    """One 8-byte segment descriptor; `access` is byte 5, `flags` the high nibble of byte 6."""
    return (
        (limit & 0xFFFF)
        | ((base & 0xFFFFFF) << 16)
        | ((access & 0xFF) << 40)
        | (((limit >> 16) & 0xF) << 48)
        | ((flags & 0xF) << 52)
        | (((base >> 24) & 0xFF) << 56)
    )


# access: P|DPL0|S|type ; flags: G, D/B, L
GDT = [
    0,
    gdt_entry(0, 0xFFFFF, 0x9B, 0xC),  # 0x08 code32: exec/read, accessed; G, D
    gdt_entry(0, 0xFFFFF, 0x9B, 0xA),  # 0x10 code64: G, L
    gdt_entry(0, 0xFFFFF, 0x93, 0xC),  # 0x18 data: read/write, accessed; G, B
    gdt_entry(0, 0x67, 0x8B, 0x0),  # 0x20 TSS (busy): KVM on Intel insists on a usable TR
    0,  # upper half of the 16-byte long-mode TSS descriptor
]


def write_gdt(mem: GuestMemory) -> None:
    mem.write(layout.BOOT_GDT, struct.pack(f"<{len(GDT)}Q", *GDT))
    mem.write(layout.BOOT_IDT, bytes(8))


def write_page_tables(mem: GuestMemory) -> None:
    """Identity-map 0..4 GiB with 2 MiB pages (user-accessible, so a test guest
    entered in long mode can drop to CPL3 without building its own tables)."""
    flags = PTE_P | PTE_RW | PTE_US
    mem.write_u64(layout.PML4, layout.PDPT | flags)
    pdpt = b"".join(struct.pack("<Q", (layout.PD + i * 0x1000) | flags) for i in range(4))
    mem.write(layout.PDPT, pdpt)
    pd = struct.pack("<2048Q", *(((i << 21) | flags | PTE_PS) for i in range(2048)))
    mem.write(layout.PD, pd)


def _segment(seg: object, selector: int, *, code: bool, long: bool = False) -> None:
    entry = GDT[selector >> 3]
    seg.base = 0  # type: ignore[attr-defined]
    seg.limit = 0xFFFFFFFF  # type: ignore[attr-defined]
    seg.selector = selector  # type: ignore[attr-defined]
    seg.type = (entry >> 40) & 0xF  # type: ignore[attr-defined]
    seg.present = 1  # type: ignore[attr-defined]
    seg.dpl = 0  # type: ignore[attr-defined]
    seg.s = 1  # type: ignore[attr-defined]
    seg.g = 1  # type: ignore[attr-defined]
    seg.l = 1 if long else 0  # type: ignore[attr-defined]
    seg.db = 0 if long else 1  # type: ignore[attr-defined]
    seg.avl = 0  # type: ignore[attr-defined]
    seg.unusable = 0  # type: ignore[attr-defined]


def setup_sregs(sregs: object, mode: str) -> None:
    """Fill a kvm_sregs for the entry `mode` ("protected32" or "long64")."""
    s = sregs
    long = mode == "long64"
    _segment(s.cs, CODE64_SEL if long else CODE32_SEL, code=True, long=long)  # type: ignore[attr-defined]
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):  # type: ignore[attr-defined]
        _segment(seg, DATA_SEL, code=False)
    tr = s.tr  # type: ignore[attr-defined]
    tr.base, tr.limit, tr.selector, tr.type = 0, 0x67, TSS_SEL, 0xB
    tr.present, tr.s, tr.dpl, tr.g, tr.l, tr.db, tr.unusable = 1, 0, 0, 0, 0, 0, 0
    s.gdt.base, s.gdt.limit = layout.BOOT_GDT, len(GDT) * 8 - 1  # type: ignore[attr-defined]
    s.idt.base, s.idt.limit = layout.BOOT_IDT, 0  # type: ignore[attr-defined]
    if long:
        s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG  # type: ignore[attr-defined]
        s.cr3 = layout.PML4  # type: ignore[attr-defined]
        s.cr4 = CR4_PAE  # type: ignore[attr-defined]
        s.efer = EFER_LME | EFER_LMA  # type: ignore[attr-defined]
    else:
        s.cr0 = CR0_PE | CR0_ET  # type: ignore[attr-defined]
        s.cr3 = 0  # type: ignore[attr-defined]
        s.cr4 = 0  # type: ignore[attr-defined]
        s.efer = 0  # type: ignore[attr-defined]


def setup_regs(regs: "kvm_regs", entry: int, values: dict[str, int]) -> None:
    """Zero the general registers, then set RIP, RFLAGS and the protocol's values."""
    for name, *_ in regs._fields_:  # type: ignore[attr-defined]
        setattr(regs, name, 0)
    regs.rip = entry  # type: ignore[attr-defined]
    regs.rflags = 0x2  # bit 1 is always one; interrupts stay off until the kernel wants them
    for name, value in values.items():
        setattr(regs, name, value)
