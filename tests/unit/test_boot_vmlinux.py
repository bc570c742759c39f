"""x86-64 ELF vmlinux: physical placement, virtual entry translation, zero page."""

from __future__ import annotations

import struct

import pytest
from boot_images import KERNEL_VBASE, MEM_SIZE, Seg, build_elf, build_vmlinux, new_mem

from pyvirt.arch.x86 import layout
from pyvirt.boot import BootError, load_kernel

ZP = layout.ZERO_PAGE


def test_vmlinux_virtual_entry_maps_to_physical() -> None:
    mem = new_mem()
    img = build_vmlinux(phys=0x1000000, entry_off=0x30)
    spec = load_kernel(mem, img, mem_size=MEM_SIZE, cmdline="root=/dev/vda")
    assert spec.protocol == "elf64" and spec.mode == "long64"
    assert spec.entry == 0x1000030
    assert spec.regs == {"rsi": ZP}
    assert spec.kernel_start == 0x1000000
    assert spec.kernel_end == 0x1010000 + 0x800 + 0x3000
    assert mem.read(0x1000000, 4) == b"\xf4" * 4
    assert mem.read(0x1010000, 4) == b"DDDD"
    assert mem.read(0x1010800, 0x3000) == bytes(0x3000)


def test_vmlinux_entry_in_second_segment() -> None:
    mem = new_mem()
    img = build_elf([Seg(0x1000000, b"a" * 0x100, vaddr=KERNEL_VBASE + 0x1000000),
                     Seg(0x1200000, b"b" * 0x100, vaddr=0xFFFFFFFF82000000)], entry=0xFFFFFFFF82000010)
    assert load_kernel(mem, img, mem_size=MEM_SIZE).entry == 0x1200010


def test_vmlinux_zero_page() -> None:
    mem = new_mem()
    spec = load_kernel(mem, build_vmlinux(), mem_size=MEM_SIZE, cmdline="console=ttyS0", initrd=b"i" * 3000,
                       rsdp_addr=0xE0000)
    assert mem.read(ZP + 0x202, 4) == b"HdrS"
    assert mem.read_u16(ZP + 0x1FE) == 0xAA55
    assert mem.read(ZP + 0x210, 1) == b"\xff"
    assert mem.read_u16(ZP + 0x206) >= 0x0206
    assert mem.read_u32(ZP + 0x228) == layout.CMDLINE
    assert mem.read_cstr(layout.CMDLINE) == b"console=ttyS0"
    assert spec.initrd is not None
    assert (mem.read_u32(ZP + 0x218), mem.read_u32(ZP + 0x21C)) == spec.initrd
    assert mem.read(spec.initrd[0], 3000) == b"i" * 3000
    assert mem.read_u64(ZP + 0x70) == 0xE0000
    e820 = layout.e820_map(MEM_SIZE)
    assert mem.read(ZP + 0x1E8, 1)[0] == len(e820)
    assert struct.unpack("<QQI", mem.read(ZP + 0x2D0, 20)) == (0, layout.EBDA_START, layout.E820_RAM)


def test_elf32_without_notes_is_not_bootable() -> None:
    img = build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000, elf_class=32)
    with pytest.raises(BootError, match="not a kernel pyvirt can boot.*32-bit ELF"):
        load_kernel(new_mem(), img, mem_size=MEM_SIZE)


def test_prefer_elf64_on_elf32() -> None:
    img = build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000, elf_class=32)
    with pytest.raises(BootError, match="elf64 protocol: it is not an x86-64 ELF"):
        load_kernel(new_mem(), img, mem_size=MEM_SIZE, prefer="elf64")
