"""Multiboot v1: header search and validation, ELF and a.out-kludge loading, info block."""

from __future__ import annotations

import struct

import pytest
from boot_images import (
    MEM_SIZE,
    build_multiboot_aout,
    build_multiboot_elf,
    multiboot_header,
    new_mem,
)

from pyvirt.arch.x86 import layout
from pyvirt.boot import BootError, load_kernel
from pyvirt.boot.multiboot import find_header

MBI = layout.MULTIBOOT_INFO


def info_u32(mem, off: int) -> int:  # type: ignore[no-untyped-def]
    return mem.read_u32(MBI + off)


def test_multiboot_elf_info_block() -> None:
    mem = new_mem()
    spec = load_kernel(mem, build_multiboot_elf(), mem_size=MEM_SIZE, cmdline="debug level=3",
                       initrd=b"module-bytes" * 100, kernel_name="/boot/images/mykernel.elf")
    assert spec.protocol == "multiboot" and spec.mode == "protected32"
    assert spec.entry == 0x100020
    assert spec.regs == {"rax": 0x2BADB002, "rbx": MBI}
    flags = info_u32(mem, 0)
    assert flags & 0x1 and flags & 0x4 and flags & 0x8 and flags & 0x40 and flags & 0x200
    assert not flags & (1 << 11 | 1 << 12)  # no VBE / framebuffer
    assert info_u32(mem, 4) == 639  # mem_lower (KiB below the EBDA)
    assert info_u32(mem, 8) == (MEM_SIZE - layout.HIMEM_START) // 1024  # mem_upper
    assert mem.read_cstr(info_u32(mem, 16)) == b"mykernel.elf debug level=3"
    assert mem.read_cstr(info_u32(mem, 64)) == b"pyvirt"

    e820 = layout.e820_map(MEM_SIZE)
    mmap_len, mmap_addr = info_u32(mem, 44), info_u32(mem, 48)
    assert mmap_len == 24 * len(e820)
    for i, e in enumerate(e820):
        assert struct.unpack("<IQQI", mem.read(mmap_addr + 24 * i, 24)) == (20, e.addr, e.size, e.type)

    assert info_u32(mem, 20) == 1
    mods = info_u32(mem, 24)
    mod_start, mod_end, string, reserved = struct.unpack("<IIII", mem.read(mods, 16))
    assert spec.initrd == (mod_start, mod_end - mod_start)
    assert mod_start % 4096 == 0 and mod_start >= spec.kernel_end
    assert mem.read(mod_start, 12) == b"module-bytes"
    assert mem.read_cstr(string) == b"initrd" and reserved == 0


def test_multiboot_cmdline_is_just_the_name_without_args() -> None:
    mem = new_mem()
    load_kernel(mem, build_multiboot_elf(), mem_size=MEM_SIZE)
    assert mem.read_cstr(info_u32(mem, 16)) == b"kernel"
    assert info_u32(mem, 0) & 0x8 == 0 and info_u32(mem, 20) == 0


def test_multiboot_elf64() -> None:
    spec = load_kernel(new_mem(), build_multiboot_elf(elf_class=64), mem_size=MEM_SIZE)
    assert spec.protocol == "multiboot"  # chosen over elf64: the kernel asked for multiboot


def test_multiboot_aout_kludge() -> None:
    mem = new_mem()
    mem.fill(0x103000, 0x2000, 0xAB)
    img = build_multiboot_aout(load_addr=0x100000, header_offset=0x40, size=0x3000, bss_end=0x105000,
                               entry_off=0x80)
    spec = load_kernel(mem, img, mem_size=MEM_SIZE)
    assert spec.protocol == "multiboot" and spec.entry == 0x100080
    assert (spec.kernel_start, spec.kernel_end) == (0x100000, 0x105000)
    assert mem.read(0x100000, 0x3000) == img
    assert mem.read(0x103000, 0x2000) == bytes(0x2000)


def test_multiboot_aout_with_header_offset_into_file() -> None:
    """header_addr - load_addr smaller than the header's file offset: load from the middle of the file."""
    img = bytearray(0x2000)
    img[0x1000:0x1004] = b"HEAD"
    h = multiboot_header(0x10000, (0x200010, 0x200000, 0x200800, 0, 0x200000))
    img[0x1010 : 0x1010 + len(h)] = h
    mem = new_mem()
    spec = load_kernel(mem, bytes(img), mem_size=MEM_SIZE)
    assert (spec.kernel_start, spec.kernel_end) == (0x200000, 0x200800)
    assert mem.read(0x200000, 4) == b"HEAD"


def test_multiboot_aout_load_end_zero_loads_to_end_of_file() -> None:
    img = build_multiboot_aout(size=0x2400, load_end=0, bss_end=0)
    spec = load_kernel(new_mem(), img, mem_size=MEM_SIZE)
    assert spec.kernel_end == 0x100000 + 0x2400


def test_header_search_alignment_and_limit() -> None:
    h = multiboot_header(0)
    assert find_header(bytes(0x1000) + h) is not None
    assert find_header(bytes(0x1002) + h) is None  # not 4-byte aligned
    assert find_header(bytes(8192) + h) is None  # beyond the first 8 KiB


def test_bad_checksum() -> None:
    h = bytearray(multiboot_header(0x3))
    h[8] ^= 1
    with pytest.raises(BootError, match="checksum"):
        load_kernel(new_mem(), bytes(64) + bytes(h) + bytes(64), mem_size=MEM_SIZE)


def test_unknown_required_flag() -> None:
    with pytest.raises(BootError, match=r"flag bits 3"):
        load_kernel(new_mem(), build_multiboot_elf(flags=0x8 | 0x3), mem_size=MEM_SIZE)


def test_video_mode_flag_and_optional_bits_are_ignored() -> None:
    spec = load_kernel(new_mem(), build_multiboot_elf(flags=0x7 | 0x20000), mem_size=MEM_SIZE)
    assert spec.protocol == "multiboot"


def test_flat_binary_without_aout_fields() -> None:
    img = bytes(32) + multiboot_header(0x3) + bytes(1000)
    with pytest.raises(BootError, match="not ELF"):
        load_kernel(new_mem(), img, mem_size=MEM_SIZE)


@pytest.mark.parametrize(
    "aout, message",
    [
        ((0x100000, 0x100040, 0x103000, 0, 0x100040), "load_addr"),  # load_addr > header_addr
        ((0x100040, 0x100000, 0x200000, 0, 0x100000), "truncated multiboot image"),
        ((0x100040, 0x100000, 0x101000, 0x100800, 0x100000), "bss_end_addr"),
        ((0x100040, 0x100000, 0x101000, 0, 0x300000), "entry_addr"),
        ((0x100040, 0x100000, 0x0FF000, 0, 0x100000), "load_end_addr"),
        ((0x5000040, 0x5000000, 0, 0, 0x5000000), "does not fit in guest RAM"),
        ((0x800040, 0x7000, 0, 0, 0x7000), "load_addr"),
    ],
)
def test_bad_aout_fields(aout: tuple[int, int, int, int, int], message: str) -> None:
    img = bytes(0x40) + multiboot_header(0x10000, aout) + bytes(0x1000)
    with pytest.raises(BootError, match=message):
        load_kernel(new_mem(), img, mem_size=MEM_SIZE)


def test_aout_over_boot_area() -> None:
    img = bytes(0x40) + multiboot_header(0x10000, (0x7040, 0x7000, 0, 0, 0x7000)) + bytes(0x100)
    with pytest.raises(BootError, match="zero page"):
        load_kernel(new_mem(), img, mem_size=MEM_SIZE)


def test_truncated_aout_header() -> None:
    img = bytes(0x40) + multiboot_header(0x10000)  # bit 16 set but no address fields
    with pytest.raises(BootError, match="truncated multiboot header"):
        load_kernel(new_mem(), img, mem_size=MEM_SIZE)
