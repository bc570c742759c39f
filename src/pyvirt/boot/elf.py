"""ELF images: a pure parser for little-endian ELF32/ELF64 and a segment loader.

`parse_elf(data)` turns the bytes of an ELF file into an `ElfFile` (header,
program headers, section headers, notes). Every offset, size and count is
checked against the file before it is used, so a truncated or hostile file
raises `BootError`, never IndexError, struct.error or a huge allocation.

`load_segments` copies the PT_LOAD segments to their physical addresses
(p_paddr) and zeroes each p_memsz - p_filesz tail. Segments must lie in guest
RAM below the MMIO hole, must not overlap each other and must stay clear of the
low-memory areas pyvirt fills in itself (common.BOOT_AREAS); other ranges below
1 MiB are allowed.

Reference: System V ABI (gABI) "Object Files", ELF-64 Object File Format.
"""

from __future__ import annotations

import struct

from pyvirt._record import FrozenRecord
from pyvirt.memory import GuestMemory

from .common import BootError, check_range, zero

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_EXEC = 2
ET_DYN = 3
EM_386 = 3
EM_X86_64 = 62

PT_LOAD = 1
PT_NOTE = 4
SHT_NOTE = 7
PN_XNUM = 0xFFFF

# Elf32_Ehdr / Elf64_Ehdr after e_ident[16]:
#   e_type u16, e_machine u16, e_version u32, e_entry, e_phoff, e_shoff (addr/off size),
#   e_flags u32, e_ehsize u16, e_phentsize u16, e_phnum u16, e_shentsize u16,
#   e_shnum u16, e_shstrndx u16
_EHDR = {ELFCLASS32: struct.Struct("<HHIIIIIHHHHHH"), ELFCLASS64: struct.Struct("<HHIQQQIHHHHHH")}
# Elf32_Phdr: p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align (u32 each)
# Elf64_Phdr: p_type u32, p_flags u32, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align (u64)
_PHDR = {ELFCLASS32: struct.Struct("<IIIIIIII"), ELFCLASS64: struct.Struct("<IIQQQQQQ")}
# Elf32_Shdr: sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info,
#             sh_addralign, sh_entsize (u32 each)
# Elf64_Shdr: sh_name u32, sh_type u32, sh_flags, sh_addr, sh_offset, sh_size (u64),
#             sh_link u32, sh_info u32, sh_addralign, sh_entsize (u64)
_SHDR = {ELFCLASS32: struct.Struct("<IIIIIIIIII"), ELFCLASS64: struct.Struct("<IIQQQQIIQQ")}
# Elf_Nhdr: n_namesz u32, n_descsz u32, n_type u32
_NHDR = struct.Struct("<III")


# The parsed headers are plain records (pyvirt._record), not dataclasses: every
# VM start parses its kernel, and defining dataclasses costs start-up time.


class ProgramHeader(FrozenRecord):
    __slots__ = __match_args__ = ("type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz", "align")
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int

    def __init__(self, type: int, flags: int, offset: int, vaddr: int, paddr: int, filesz: int, memsz: int,
                 align: int) -> None:
        self._init(type, flags, offset, vaddr, paddr, filesz, memsz, align)


class SectionHeader(FrozenRecord):
    __slots__ = __match_args__ = ("name", "type", "flags", "addr", "offset", "size", "link", "info", "addralign",
                                  "entsize")
    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    def __init__(self, name: int, type: int, flags: int, addr: int, offset: int, size: int, link: int, info: int,
                 addralign: int, entsize: int) -> None:
        self._init(name, type, flags, addr, offset, size, link, info, addralign, entsize)


class Note(FrozenRecord):
    __slots__ = __match_args__ = ("name", "type", "desc")
    name: bytes  # without the terminating NUL
    type: int
    desc: bytes

    def __init__(self, name: bytes, type: int, desc: bytes) -> None:
        self._init(name, type, desc)


class ElfFile(FrozenRecord):
    __slots__ = __match_args__ = ("elf_class", "type", "machine", "entry", "phdrs", "shdrs", "notes")
    elf_class: int  # ELFCLASS32 or ELFCLASS64
    type: int
    machine: int
    entry: int
    phdrs: tuple[ProgramHeader, ...]
    shdrs: tuple[SectionHeader, ...]
    notes: tuple[Note, ...]  # from PT_NOTE segments, then SHT_NOTE sections

    def __init__(self, elf_class: int, type: int, machine: int, entry: int, phdrs: tuple[ProgramHeader, ...],
                 shdrs: tuple[SectionHeader, ...], notes: tuple[Note, ...]) -> None:
        self._init(elf_class, type, machine, entry, phdrs, shdrs, notes)

    @property
    def loads(self) -> tuple[ProgramHeader, ...]:
        """The PT_LOAD segments that occupy memory."""
        return tuple(p for p in self.phdrs if p.type == PT_LOAD and p.memsz > 0)

    def span(self) -> tuple[int, int]:
        """The physical [start, end) the loadable segments cover ((0, 0) if none)."""
        loads = self.loads
        if not loads:
            return 0, 0
        return min(p.paddr for p in loads), max(p.paddr + p.memsz for p in loads)

    def find_note(self, name: bytes, type: int) -> Note | None:
        for note in self.notes:
            if note.name == name and note.type == type:
                return note
        return None


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def _table(data: bytes, what: str, offset: int, count: int, entsize: int, minsize: int) -> None:
    """Check that a table of `count` entries of `entsize` bytes lies in the file."""
    if count == 0:
        return
    if entsize < minsize:
        raise BootError(f"corrupt ELF: {what} entry size {entsize} is smaller than {minsize}; the file is damaged")
    if offset + count * entsize > len(data):
        raise BootError(
            f"truncated ELF: the {what} table ({count} entries at {offset:#x}) runs past the end of "
            f"the {len(data)}-byte file; the file is damaged or incompletely copied"
        )


def _parse_notes(data: bytes, offset: int, size: int, align: int, where: str) -> list[Note]:
    """Parse the notes in data[offset:offset+size] (already bounds-checked)."""
    align = 8 if align == 8 else 4  # ELF64 notes use 4 unless the container says 8
    notes: list[Note] = []
    pos, end = offset, offset + size
    while end - pos >= _NHDR.size:
        namesz, descsz, ntype = _NHDR.unpack_from(data, pos)
        name_at = pos + _NHDR.size
        desc_at = name_at + (namesz + align - 1) // align * align
        next_at = desc_at + (descsz + align - 1) // align * align
        if name_at + namesz > end or desc_at + descsz > end:
            raise BootError(f"corrupt ELF: a note in {where} runs past its end; the file is damaged")
        name = data[name_at : name_at + namesz].rstrip(b"\0")
        notes.append(Note(name, ntype, data[desc_at : desc_at + descsz]))
        pos = next_at
    return notes


def parse_elf(data: bytes) -> ElfFile:
    """Parse a little-endian x86 ELF file; raise BootError on anything malformed."""
    if len(data) < 16 or not is_elf(data):
        raise BootError("not an ELF file")
    elf_class, encoding, version = data[4], data[5], data[6]
    if elf_class not in _EHDR:
        raise BootError(f"unsupported ELF class {elf_class}; pyvirt loads 32- and 64-bit ELF kernels")
    if encoding != ELFDATA2LSB:
        raise BootError("big-endian ELF; pyvirt boots little-endian x86 kernels only")
    if version != EV_CURRENT:
        raise BootError(f"unsupported ELF version {version}; the file is damaged")
    ehdr = _EHDR[elf_class]
    if len(data) < 16 + ehdr.size:
        raise BootError(f"truncated ELF: the {len(data)}-byte file is shorter than its ELF header")
    (e_type, machine, _e_version, entry, phoff, shoff, _flags, _ehsize,
     phentsize, phnum, shentsize, shnum, _shstrndx) = ehdr.unpack_from(data, 16)
    if e_type not in (ET_EXEC, ET_DYN):
        raise BootError(f"ELF type {e_type} is not an executable; pass a linked kernel image")
    if machine not in (EM_386, EM_X86_64):
        raise BootError(f"ELF machine {machine} is not x86; pyvirt boots i386/x86-64 kernels")

    # Section headers (also where extended phnum/shnum live).
    sh = _SHDR[elf_class]
    shdrs: list[SectionHeader] = []
    if shoff:
        if shnum == 0 or phnum == PN_XNUM:
            _table(data, "section header", shoff, 1, shentsize, sh.size)
            first = SectionHeader(*sh.unpack_from(data, shoff))
            if shnum == 0:
                shnum = first.size
            if phnum == PN_XNUM:
                phnum = first.info
        _table(data, "section header", shoff, shnum, shentsize, sh.size)
        shdrs = [SectionHeader(*sh.unpack_from(data, shoff + i * shentsize)) for i in range(shnum)]
    elif phnum == PN_XNUM:
        raise BootError("corrupt ELF: extended program header count without section headers")

    ph = _PHDR[elf_class]
    _table(data, "program header", phoff, phnum, phentsize, ph.size)
    phdrs: list[ProgramHeader] = []
    for i in range(phnum):
        f = ph.unpack_from(data, phoff + i * phentsize)
        if elf_class == ELFCLASS32:
            p_type, offset, vaddr, paddr, filesz, memsz, p_flags, align = f
        else:
            p_type, p_flags, offset, vaddr, paddr, filesz, memsz, align = f
        phdrs.append(ProgramHeader(p_type, p_flags, offset, vaddr, paddr, filesz, memsz, align))

    for i, p in enumerate(phdrs):
        if p.type not in (PT_LOAD, PT_NOTE):
            continue
        if p.offset + p.filesz > len(data):
            raise BootError(
                f"truncated ELF: segment {i} (file bytes {p.offset:#x}..{p.offset + p.filesz:#x}) runs "
                f"past the end of the {len(data)}-byte file; the file is damaged or incompletely copied"
            )
        if p.type == PT_LOAD and p.filesz > p.memsz:
            raise BootError(f"corrupt ELF: segment {i} has more file bytes ({p.filesz:#x}) than memory ({p.memsz:#x})")

    notes: list[Note] = []
    for i, p in enumerate(phdrs):
        if p.type == PT_NOTE:
            notes += _parse_notes(data, p.offset, p.filesz, p.align, f"segment {i}")
    for i, s in enumerate(shdrs):
        if s.type == SHT_NOTE:
            if s.offset + s.size > len(data):
                raise BootError(f"truncated ELF: note section {i} runs past the end of the file; the file is damaged")
            notes += _parse_notes(data, s.offset, s.size, s.addralign, f"section {i}")

    return ElfFile(elf_class, e_type, machine, entry, tuple(phdrs), tuple(shdrs), tuple(notes))


def entry_physical(elf: ElfFile, entry: int | None = None) -> int:
    """The physical address of `entry` (default e_entry).

    Kernels such as vmlinux link at virtual addresses (0xffffffff81000000) and
    load at physical ones; the segment whose [p_vaddr, p_vaddr + p_memsz) holds
    the entry maps it: phys = entry - p_vaddr + p_paddr.
    """
    if entry is None:
        entry = elf.entry
    for p in elf.loads:
        if p.vaddr <= entry < p.vaddr + p.memsz:
            return entry - p.vaddr + p.paddr
    for p in elf.loads:
        if p.paddr <= entry < p.paddr + p.memsz:
            return entry
    raise BootError(f"the ELF entry point {entry:#x} is outside every loadable segment; the kernel is damaged")


def load_segments(mem: GuestMemory, data: bytes, elf: ElfFile, mem_size: int) -> tuple[int, int]:
    """Copy the PT_LOAD segments to guest memory at p_paddr; return the [start, end)
    they span. Everything is validated before the first byte is written.
    """
    loads = sorted(elf.loads, key=lambda p: p.paddr)
    if not loads:
        raise BootError("the ELF kernel has no loadable segments; pass a linked kernel image")
    for p in loads:
        check_range(mem, mem_size, p.paddr, p.memsz, f"ELF segment (file offset {p.offset:#x})")
    for a, b in zip(loads, loads[1:]):
        if a.paddr + a.memsz > b.paddr:
            raise BootError(
                f"corrupt ELF: segments at {a.paddr:#x}+{a.memsz:#x} and {b.paddr:#x} overlap in physical memory"
            )
    for p in loads:
        mem.write(p.paddr, memoryview(data)[p.offset : p.offset + p.filesz])
        if p.memsz > p.filesz:
            zero(mem, p.paddr + p.filesz, p.memsz - p.filesz)
    return elf.span()
