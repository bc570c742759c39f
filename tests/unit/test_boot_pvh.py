"""PVH boot: hvm_start_info, its memory map and module list, entry state."""

from __future__ import annotations

import struct

import pytest
from boot_images import MEM_SIZE, NoteSpec, Seg, build_elf, build_multiboot_elf, build_pvh, new_mem, pvh_note

from pyvirt.arch.x86 import layout
from pyvirt.boot import BootError, load_kernel

START_INFO = struct.Struct("<IIIIQQQQII")


def read_start_info(mem) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    return START_INFO.unpack(mem.read(layout.PVH_INFO, START_INFO.size))


def test_pvh_entry_and_start_info() -> None:
    mem = new_mem()
    spec = load_kernel(mem, build_pvh(0x40), mem_size=MEM_SIZE, cmdline="console=ttyS0 quiet", rsdp_addr=0xE0000)
    assert spec.protocol == "pvh" and spec.mode == "protected32"
    assert spec.entry == 0x100040
    assert spec.regs == {"rbx": layout.PVH_INFO}
    assert (spec.kernel_start, spec.kernel_end) == (0x100000, 0x103000)
    assert spec.initrd is None
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries, reserved = read_start_info(mem)
    assert (magic, version, flags) == (0x336EC578, 1, 0)
    assert (nr_modules, modlist) == (0, 0)
    assert cmdline == layout.CMDLINE
    assert mem.read_cstr(cmdline) == b"console=ttyS0 quiet"
    assert rsdp == 0xE0000
    assert reserved == 0
    e820 = layout.e820_map(MEM_SIZE)
    assert entries == len(e820)
    assert memmap == layout.PVH_INFO + START_INFO.size
    for i, e in enumerate(e820):
        assert struct.unpack("<QQII", mem.read(memmap + 24 * i, 24)) == (e.addr, e.size, e.type, 0)
    # the last RAM entry runs to the end of guest memory
    assert e820[-1].end == MEM_SIZE


def test_pvh_initrd_module() -> None:
    mem = new_mem()
    initrd = b"\x07" * 10000
    spec = load_kernel(mem, build_pvh(), mem_size=MEM_SIZE, initrd=initrd)
    assert spec.initrd is not None
    gpa, size = spec.initrd
    assert size == len(initrd) and gpa % 4096 == 0
    assert gpa + size <= MEM_SIZE and gpa >= spec.kernel_end
    assert MEM_SIZE - (gpa + size) < 4096  # as high as it goes
    assert mem.read(gpa, size) == initrd
    info = read_start_info(mem)
    assert info[3] == 1
    modlist = info[4]
    assert modlist == layout.PVH_INFO + START_INFO.size + 24 * info[8]
    assert struct.unpack("<QQQQ", mem.read(modlist, 32)) == (gpa, size, 0, 0)


def test_pvh_64bit_note_and_section_notes() -> None:
    mem = new_mem()
    spec = load_kernel(mem, build_pvh(0x80, note_size=8, notes_in="section"), mem_size=MEM_SIZE)
    assert spec.protocol == "pvh" and spec.entry == 0x100080


def test_pvh_elf32() -> None:
    mem = new_mem()
    spec = load_kernel(mem, build_pvh(0x10, elf_class=32), mem_size=MEM_SIZE)
    assert spec.protocol == "pvh" and spec.entry == 0x100010


def test_pvh_vmlinux_style_segments() -> None:
    """A Linux vmlinux: virtual link addresses, physical p_paddr, physical note entry."""
    mem = new_mem()
    img = build_elf([Seg(0x1000000, b"\x90" * 0x1000, 0x4000, vaddr=0xFFFFFFFF81000000)],
                    entry=0xFFFFFFFF81000000, notes=[pvh_note(0x1000100)])
    spec = load_kernel(mem, img, mem_size=MEM_SIZE)
    assert spec.protocol == "pvh" and spec.mode == "protected32" and spec.entry == 0x1000100
    assert spec.kernel_end == 0x1004000


def test_pvh_bad_note_size() -> None:
    mem = new_mem()
    img = build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000, notes=[NoteSpec(b"Xen", 18, b"\0\0")])
    with pytest.raises(BootError, match="4 or 8"):
        load_kernel(mem, img, mem_size=MEM_SIZE)


def test_pvh_entry_outside_image() -> None:
    mem = new_mem()
    img = build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000, notes=[pvh_note(0x900000)])
    with pytest.raises(BootError, match="outside every loadable segment"):
        load_kernel(mem, img, mem_size=MEM_SIZE)


def test_pvh_beats_multiboot_unless_preferred() -> None:
    img = build_multiboot_elf(flags=0x3, entry_off=0x20, extra_notes=[pvh_note(0x100100)])
    spec = load_kernel(new_mem(), img, mem_size=MEM_SIZE)
    assert spec.protocol == "pvh" and spec.entry == 0x100100
    spec = load_kernel(new_mem(), img, mem_size=MEM_SIZE, prefer="multiboot")
    assert spec.protocol == "multiboot" and spec.entry == 0x100020


def test_pvh_initrd_too_big() -> None:
    with pytest.raises(BootError, match=r"initrd of 70 MiB does not fit .*give the VM more memory"):
        load_kernel(new_mem(), build_pvh(), mem_size=MEM_SIZE, initrd=bytes(70 << 20))


def test_pvh_empty_initrd() -> None:
    with pytest.raises(BootError, match="initrd is empty"):
        load_kernel(new_mem(), build_pvh(), mem_size=MEM_SIZE, initrd=b"")


def test_pvh_cmdline_limit() -> None:
    with pytest.raises(BootError, match="command line"):
        load_kernel(new_mem(), build_pvh(), mem_size=MEM_SIZE, cmdline="x" * layout.CMDLINE_MAX)
    with pytest.raises(BootError, match="NUL"):
        load_kernel(new_mem(), build_pvh(), mem_size=MEM_SIZE, cmdline="a\0b")
