"""ELF parser and segment loader: well-formed files, and every way a file can be broken."""

from __future__ import annotations

import struct

import pytest
from boot_images import MEM_SIZE, NoteSpec, Seg, build_elf, build_pvh, new_mem

from pyvirt.boot import BootError
from pyvirt.boot.elf import (
    ELFCLASS32,
    ELFCLASS64,
    EM_386,
    EM_X86_64,
    PT_LOAD,
    entry_physical,
    load_segments,
    parse_elf,
)


def test_parse_elf64_header_and_segments() -> None:
    img = build_elf([Seg(0x200000, b"abc", 0x1000), Seg(0x300000, b"xyz")], entry=0x200010)
    elf = parse_elf(img)
    assert elf.elf_class == ELFCLASS64 and elf.machine == EM_X86_64
    assert elf.entry == 0x200010
    assert [(p.type, p.paddr, p.filesz, p.memsz) for p in elf.phdrs] == [
        (PT_LOAD, 0x200000, 3, 0x1000),
        (PT_LOAD, 0x300000, 3, 3),
    ]
    assert elf.span() == (0x200000, 0x300003)


def test_parse_elf32() -> None:
    img = build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000, elf_class=32)
    elf = parse_elf(img)
    assert elf.elf_class == ELFCLASS32 and elf.machine == EM_386
    assert elf.loads[0].paddr == 0x100000 and elf.loads[0].filesz == 16


@pytest.mark.parametrize("notes_in", ["segment", "section"])
@pytest.mark.parametrize("elf_class", [32, 64])
def test_notes_from_segments_and_sections(notes_in: str, elf_class: int) -> None:
    notes = [NoteSpec(b"GNU", 3, b"\xaa" * 20), NoteSpec(b"Xen", 18, b"\x40\x00\x10\x00")]
    img = build_elf([Seg(0x100000, b"\x90" * 64)], entry=0x100000, notes=notes, notes_in=notes_in,
                    elf_class=elf_class)
    elf = parse_elf(img)
    xen = elf.find_note(b"Xen", 18)
    assert xen is not None and xen.desc == b"\x40\x00\x10\x00"
    gnu = elf.find_note(b"GNU", 3)
    assert gnu is not None and gnu.desc == b"\xaa" * 20
    assert elf.find_note(b"Xen", 17) is None


def test_load_copies_segments_and_zeroes_bss() -> None:
    mem = new_mem()
    mem.fill(0x200000, 0x3000, 0xEE)  # stale bytes the BSS must clear
    img = build_elf([Seg(0x200000, b"code", 0x3000)], entry=0x200000)
    start, end = load_segments(mem, img, parse_elf(img), MEM_SIZE)
    assert (start, end) == (0x200000, 0x203000)
    assert mem.read(0x200000, 4) == b"code"
    assert mem.read(0x200004, 0x3000 - 4) == bytes(0x3000 - 4)


def test_entry_virtual_to_physical() -> None:
    img = build_elf([Seg(0x1000000, b"\x90" * 0x100, vaddr=0xFFFFFFFF81000000)], entry=0xFFFFFFFF81000040)
    assert entry_physical(parse_elf(img)) == 0x1000040


def test_entry_outside_segments() -> None:
    img = build_elf([Seg(0x1000000, b"\x90" * 0x100)], entry=0x5000000)
    with pytest.raises(BootError, match="outside every loadable segment"):
        entry_physical(parse_elf(img))


def test_truncated_header() -> None:
    img = build_pvh()
    with pytest.raises(BootError, match="shorter than its ELF header"):
        parse_elf(img[:40])


def test_truncated_segment_data() -> None:
    img = build_elf([Seg(0x100000, b"\x90" * 0x1000)], entry=0x100000)
    with pytest.raises(BootError, match="truncated ELF: segment 0"):
        parse_elf(img[:-16])


def test_program_header_table_past_eof() -> None:
    img = bytearray(build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000))
    struct.pack_into("<Q", img, 32, len(img) - 8)  # e_phoff
    with pytest.raises(BootError, match="program header table"):
        parse_elf(bytes(img))


def test_huge_phnum_is_bounded() -> None:
    img = bytearray(build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000))
    struct.pack_into("<H", img, 56, 0xFFFE)  # e_phnum
    with pytest.raises(BootError, match="program header table"):
        parse_elf(bytes(img))


def test_section_table_past_eof() -> None:
    img = bytearray(build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000, notes=[NoteSpec(b"A", 1, b"")],
                              notes_in="section"))
    struct.pack_into("<H", img, 60, 5000)  # e_shnum
    with pytest.raises(BootError, match="section header table"):
        parse_elf(bytes(img))


def test_small_phentsize() -> None:
    img = bytearray(build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000))
    struct.pack_into("<H", img, 54, 8)  # e_phentsize
    with pytest.raises(BootError, match="entry size"):
        parse_elf(bytes(img))


def test_note_running_past_its_segment() -> None:
    img = bytearray(build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000,
                              notes=[NoteSpec(b"Xen", 18, b"\0" * 4)]))
    note_off = 64 + 2 * 56
    struct.pack_into("<I", img, note_off + 4, 0x10000)  # descsz
    with pytest.raises(BootError, match="note"):
        parse_elf(bytes(img))


def test_filesz_larger_than_memsz() -> None:
    img = bytearray(build_elf([Seg(0x100000, b"\x90" * 64)], entry=0x100000))
    struct.pack_into("<Q", img, 64 + 40, 16)  # p_memsz < p_filesz
    with pytest.raises(BootError, match="more file bytes"):
        parse_elf(bytes(img))


@pytest.mark.parametrize(
    "patch, message",
    [
        ((4, b"\x03"), "ELF class"),
        ((5, b"\x02"), "big-endian"),
        ((6, b"\x00"), "ELF version"),
        ((16, b"\x01\x00"), "not an executable"),
        ((18, b"\x28\x00"), "not x86"),
    ],
)
def test_bad_identification(patch: tuple[int, bytes], message: str) -> None:
    img = bytearray(build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000))
    off, val = patch
    img[off : off + len(val)] = val
    with pytest.raises(BootError, match=message):
        parse_elf(bytes(img))


def test_segment_past_guest_ram() -> None:
    mem = new_mem()
    img = build_elf([Seg(MEM_SIZE - 0x800, b"\x90" * 0x1000)], entry=MEM_SIZE - 0x800)
    with pytest.raises(BootError, match="does not fit in guest RAM"):
        load_segments(mem, img, parse_elf(img), MEM_SIZE)


def test_bss_past_guest_ram() -> None:
    mem = new_mem()
    img = build_elf([Seg(0x100000, b"\x90" * 0x10, 1 << 40)], entry=0x100000)
    with pytest.raises(BootError, match="does not fit in guest RAM"):
        load_segments(mem, img, parse_elf(img), MEM_SIZE)


def test_segment_in_mmio_hole_is_refused_even_if_memory_exists() -> None:
    mem = new_mem()
    img = build_elf([Seg(0x2000000, b"\x90" * 0x10)], entry=0x2000000)
    # mem_size says 16 MiB of RAM: 32 MiB is not RAM for this VM
    with pytest.raises(BootError, match="does not fit in guest RAM"):
        load_segments(mem, img, parse_elf(img), 16 << 20)


@pytest.mark.parametrize("paddr, area", [(0x7000, "zero page"), (0x6100, "start info"), (0x9800, "page tables"),
                                         (0x20000, "command line"), (0xE0000, "BIOS"), (0x400, "BIOS data")])
def test_segment_over_boot_areas(paddr: int, area: str) -> None:
    mem = new_mem()
    img = build_elf([Seg(paddr, b"\x90" * 0x100)], entry=paddr)
    with pytest.raises(BootError, match=area):
        load_segments(mem, img, parse_elf(img), MEM_SIZE)


def test_low_segment_outside_boot_areas_is_allowed() -> None:
    mem = new_mem()
    img = build_elf([Seg(0x8000, b"tramp"), Seg(0x100000, b"kern")], entry=0x100000)
    assert load_segments(mem, img, parse_elf(img), MEM_SIZE) == (0x8000, 0x100004)
    assert mem.read(0x8000, 5) == b"tramp"


def test_overlapping_segments() -> None:
    mem = new_mem()
    img = build_elf([Seg(0x100000, b"a" * 0x100, 0x2000), Seg(0x101000, b"b" * 0x10)], entry=0x100000)
    with pytest.raises(BootError, match="overlap"):
        load_segments(mem, img, parse_elf(img), MEM_SIZE)


def test_no_loadable_segments() -> None:
    mem = new_mem()
    img = build_elf([], entry=0x100000)
    with pytest.raises(BootError, match="no loadable segments"):
        load_segments(mem, img, parse_elf(img), MEM_SIZE)


def test_extended_program_header_count() -> None:
    """e_phnum = PN_XNUM: the real count is section 0's sh_info."""
    img = bytearray(build_elf([Seg(0x100000, b"\x90" * 16)], entry=0x100000,
                              notes=[NoteSpec(b"A", 1, b"")], notes_in="section"))
    shoff = struct.unpack_from("<Q", img, 40)[0]
    struct.pack_into("<H", img, 56, 0xFFFF)
    struct.pack_into("<I", img, shoff + 44, 1)  # section 0 sh_info
    elf = parse_elf(bytes(img))
    assert len(elf.phdrs) == 1 and elf.loads[0].paddr == 0x100000
