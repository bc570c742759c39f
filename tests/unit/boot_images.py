"""Builders of small synthetic kernel images for the boot loader tests.

Each builder writes the structures of the relevant spec with `struct`, so tests
can make a PVH ELF, a vmlinux-like ELF64, a bzImage or a multiboot image of a
few KiB and check what the loaders put into guest memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PT_LOAD = 1
PT_NOTE = 4
SHT_NOTE = 7


@dataclass
class Seg:
    paddr: int
    data: bytes
    memsz: int | None = None  # default len(data)
    vaddr: int | None = None  # default paddr


@dataclass
class NoteSpec:
    name: bytes
    type: int
    desc: bytes


def _note_bytes(notes: list[NoteSpec]) -> bytes:
    out = b""
    for n in notes:
        name = n.name + b"\0"
        out += struct.pack("<III", len(name), len(n.desc), n.type)
        out += name.ljust((len(name) + 3) // 4 * 4, b"\0")
        out += n.desc.ljust((len(n.desc) + 3) // 4 * 4, b"\0")
    return out


def build_elf(
    segments: list[Seg],
    *,
    entry: int,
    elf_class: int = 64,
    machine: int | None = None,
    notes: list[NoteSpec] | None = None,
    notes_in: str = "segment",  # "segment" (PT_NOTE) or "section" (SHT_NOTE)
    e_type: int = 2,
) -> bytes:
    """An ELF executable with one PT_LOAD per segment and optional notes."""
    notes = notes or []
    is64 = elf_class == 64
    if machine is None:
        machine = 62 if is64 else 3
    ehsize = 64 if is64 else 52
    phentsize = 56 if is64 else 32
    shentsize = 64 if is64 else 40
    note_blob = _note_bytes(notes)
    nph = len(segments) + (1 if notes and notes_in == "segment" else 0)
    phoff = ehsize
    pos = phoff + nph * phentsize
    # File layout: headers, note blob, segment data (each 16-aligned), section headers.
    note_off = pos
    pos += len(note_blob)
    seg_offs = []
    for s in segments:
        pos = (pos + 15) // 16 * 16
        seg_offs.append(pos)
        pos += len(s.data)
    shoff = 0
    shnum = 0
    if notes and notes_in == "section":
        pos = (pos + 7) // 8 * 8
        shoff = pos
        shnum = 2  # null section + the note section

    body = bytearray(pos + shnum * shentsize)
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + bytes(9)
    if is64:
        hdr = struct.pack("<HHIQQQIHHHHHH", e_type, machine, 1, entry, phoff, shoff, 0, ehsize,
                          phentsize, nph, shentsize, shnum, 0)
    else:
        hdr = struct.pack("<HHIIIIIHHHHHH", e_type, machine, 1, entry, phoff, shoff, 0, ehsize,
                          phentsize, nph, shentsize, shnum, 0)
    body[0:ehsize] = ident + hdr
    phdrs = []
    for s, off in zip(segments, seg_offs):
        memsz = len(s.data) if s.memsz is None else s.memsz
        vaddr = s.paddr if s.vaddr is None else s.vaddr
        phdrs.append((PT_LOAD, off, vaddr, s.paddr, len(s.data), memsz, 7, 0x1000))
    if notes and notes_in == "segment":
        phdrs.append((PT_NOTE, note_off, 0, 0, len(note_blob), len(note_blob), 4, 4))
    for i, (t, off, va, pa, fsz, msz, fl, al) in enumerate(phdrs):
        at = phoff + i * phentsize
        if is64:
            struct.pack_into("<IIQQQQQQ", body, at, t, fl, off, va, pa, fsz, msz, al)
        else:
            struct.pack_into("<IIIIIIII", body, at, t, off, va, pa, fsz, msz, fl, al)
    body[note_off : note_off + len(note_blob)] = note_blob
    for s, off in zip(segments, seg_offs):
        body[off : off + len(s.data)] = s.data
    if shnum:
        at = shoff + shentsize  # section 1
        if is64:
            struct.pack_into("<IIQQQQIIQQ", body, at, 0, SHT_NOTE, 0, 0, note_off, len(note_blob), 0, 0, 4, 0)
        else:
            struct.pack_into("<IIIIIIIIII", body, at, 0, SHT_NOTE, 0, 0, note_off, len(note_blob), 0, 0, 4, 0)
    return bytes(body)


def pvh_note(entry: int, size: int = 4) -> NoteSpec:
    return NoteSpec(b"Xen", 18, struct.pack("<I" if size == 4 else "<Q", entry))


def build_pvh(entry_off: int = 0x40, *, paddr: int = 0x100000, text: bytes = b"\x90" * 0x1000,
              bss: int = 0x2000, elf_class: int = 64, notes_in: str = "segment", note_size: int = 4) -> bytes:
    """A PVH kernel: one segment at `paddr` with `bss` bytes of BSS, entry paddr+entry_off."""
    return build_elf(
        [Seg(paddr, text, len(text) + bss)],
        entry=paddr + entry_off,
        elf_class=elf_class,
        notes=[NoteSpec(b"GNU", 3, b"\x01" * 20), pvh_note(paddr + entry_off, note_size)],
        notes_in=notes_in,
    )


KERNEL_VBASE = 0xFFFFFFFF80000000


def build_vmlinux(*, phys: int = 0x1000000, text: bytes = b"\xf4" * 0x2000, data: bytes = b"D" * 0x800,
                  bss: int = 0x3000, entry_off: int = 0) -> bytes:
    """An x86-64 vmlinux look-alike: text and data+bss segments linked at
    0xffffffff81000000 (virtual) and loaded at `phys`."""
    v = KERNEL_VBASE + phys
    data_phys = phys + 0x10000
    return build_elf(
        [Seg(phys, text, vaddr=v), Seg(data_phys, data, len(data) + bss, vaddr=KERNEL_VBASE + data_phys)],
        entry=v + entry_off,
    )


def build_bzimage(
    *,
    version: int = 0x020F,
    setup_sects: int = 4,
    loadflags: int = 0x01,
    xloadflags: int = 0x01,
    relocatable: int = 1,
    kernel_alignment: int = 0x200000,
    pref_address: int = 0x1000000,
    init_size: int = 0x800000,
    initrd_addr_max: int = 0x7FFFFFFF,
    cmdline_size: int = 2047,
    payload: bytes | None = None,
    header_len: int = 0x6A,  # byte at 0x201: header ends at 0x202 + this
) -> bytes:
    """A bzImage: boot sector + setup sectors with a setup header, then a payload."""
    sects = setup_sects or 4
    setup = bytearray((sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<I", setup, 0x1F4, 0x1234)  # syssize
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200] = 0xEB
    setup[0x201] = header_len
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)  # code32_start
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, kernel_alignment)
    setup[0x234] = relocatable
    setup[0x235] = 21
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    # setup code right after the header: must not be mistaken for header fields
    end = 0x202 + header_len
    setup[end : end + 16] = b"\xcc" * 16
    if payload is None:
        payload = bytes(range(256)) * 64  # 16 KiB of recognisable bytes
    return bytes(setup) + payload


MB_MAGIC = 0x1BADB002


def multiboot_header(flags: int, aout: tuple[int, int, int, int, int] | None = None) -> bytes:
    checksum = (-(MB_MAGIC + flags)) & 0xFFFFFFFF
    h = struct.pack("<III", MB_MAGIC, flags, checksum)
    if aout is not None:
        h += struct.pack("<IIIII", *aout)
    return h


def build_multiboot_elf(*, flags: int = 0x3, paddr: int = 0x100000, bss: int = 0x1000,
                        entry_off: int = 0x20, elf_class: int = 32, extra_notes: list[NoteSpec] | None = None) -> bytes:
    """An ELF multiboot kernel: the header at the start of its only segment."""
    text = multiboot_header(flags).ljust(0x1000, b"\x90")
    return build_elf([Seg(paddr, text, len(text) + bss)], entry=paddr + entry_off, elf_class=elf_class,
                     notes=extra_notes)


def build_multiboot_aout(*, load_addr: int = 0x100000, header_offset: int = 0x40, size: int = 0x3000,
                         bss_end: int | None = 0x105000, entry_off: int = 0x80, flags: int = 0x10003,
                         load_end: int | None = None) -> bytes:
    """A flat binary with the a.out kludge: the file, from offset 0, loads at load_addr."""
    header_addr = load_addr + header_offset
    le = load_addr + size if load_end is None else load_end
    h = multiboot_header(flags, (header_addr, load_addr, le, bss_end or 0, load_addr + entry_off))
    img = bytearray(bytes((i * 7) & 0xFF for i in range(size)))
    img[header_offset : header_offset + len(h)] = h
    return bytes(img)


MEM_SIZE = 64 * 1024 * 1024


def new_mem(size: int = MEM_SIZE):  # type: ignore[no-untyped-def]
    """A fresh bytearray-backed guest memory."""
    from pyvirt.memory import GuestMemory

    return GuestMemory.from_bytearray(size)
