"""Boot GDT, identity page tables and entry register state."""

import struct

from pyvirt.arch.x86 import boot_cpu, layout
from pyvirt.kvm import structs as s
from pyvirt.memory import GuestMemory


def test_gdt_descriptors():
    # 64-bit code: present, DPL0, code exec/read, L=1, D=0, G=1
    code64 = boot_cpu.GDT[boot_cpu.CODE64_SEL >> 3]
    assert (code64 >> 40) & 0xFF == 0x9B
    assert (code64 >> 53) & 1 == 1 and (code64 >> 54) & 1 == 0 and (code64 >> 55) & 1 == 1
    code32 = boot_cpu.GDT[boot_cpu.CODE32_SEL >> 3]
    assert (code32 >> 54) & 1 == 1 and (code32 >> 53) & 1 == 0
    assert boot_cpu.gdt_entry(0x12345678, 0xABCDE, 0x93, 0xC) == (
        0xBCDE | (0x345678 << 16) | (0x93 << 40) | (0xA << 48) | (0xC << 52) | (0x12 << 56))


def test_page_tables_identity_map_4g():
    mem = GuestMemory.from_bytearray(1 << 20)
    boot_cpu.write_page_tables(mem)
    pml4 = mem.read_u64(layout.PML4)
    assert pml4 & ~0xFFF == layout.PDPT and pml4 & 7 == 7
    for i in range(4):
        assert mem.read_u64(layout.PDPT + 8 * i) & ~0xFFF == layout.PD + 0x1000 * i
    # 2 MiB page n maps physical n * 2 MiB
    for n in (0, 1, 511, 512, 2047):
        pde = mem.read_u64(layout.PD + 8 * n)
        assert pde & ~0xFFF == n << 21 and pde & boot_cpu.PTE_PS


def test_gdt_written_at_layout_address():
    mem = GuestMemory.from_bytearray(1 << 20)
    boot_cpu.write_gdt(mem)
    got = struct.unpack_from(f"<{len(boot_cpu.GDT)}Q", mem.read(layout.BOOT_GDT, 8 * len(boot_cpu.GDT)))
    assert list(got) == boot_cpu.GDT
    assert layout.BOOT_GDT + 8 * len(boot_cpu.GDT) <= layout.BOOT_IDT


def test_long_mode_sregs():
    sr = s.kvm_sregs()
    boot_cpu.setup_sregs(sr, "long64")
    assert sr.cs.selector == 0x10 and sr.cs.l == 1 and sr.cs.db == 0
    assert sr.ds.selector == sr.ss.selector == 0x18
    assert sr.cr0 & boot_cpu.CR0_PG and sr.cr4 & boot_cpu.CR4_PAE and sr.cr3 == layout.PML4
    assert sr.efer & boot_cpu.EFER_LMA


def test_protected_mode_sregs():
    sr = s.kvm_sregs()
    boot_cpu.setup_sregs(sr, "protected32")
    assert sr.cs.selector == 0x08 and sr.cs.db == 1 and sr.cs.l == 0
    assert sr.cr0 == boot_cpu.CR0_PE | boot_cpu.CR0_ET and sr.efer == 0


def test_regs():
    r = s.kvm_regs()
    r.rcx = 5
    boot_cpu.setup_regs(r, 0x100000, {"rbx": 0x6000})
    assert (r.rip, r.rbx, r.rflags, r.rcx) == (0x100000, 0x6000, 2, 0)
