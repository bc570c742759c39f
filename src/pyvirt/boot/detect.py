"""Which boot protocols a kernel image supports, read from its headers alone.

`load_kernel` calls `detect` first and then imports only the loader of the
protocol it picks, so this module and what it imports (the ELF parser, the
PVH note lookup, the multiboot header scan) are all that a VM's start loads
besides that one loader. The cheap format checks of the Linux loaders live
here for the same reason and are re-exported by bzimage.py and vmlinux.py.
"""

from __future__ import annotations

from pyvirt._record import FrozenRecord

from .common import BootError
from .elf import ELFCLASS64, EM_X86_64, ElfFile, is_elf, parse_elf
from .multiboot_header import BAD_CHECKSUM, NO_LOAD_ADDRESSES, MultibootHeader, find_header, has_bad_checksum
from .pvh import pvh_entry

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .common import Protocol

BZIMAGE_SIGNATURE_OFFSET = 0x202


def is_bzimage(data: bytes) -> bool:
    return data[BZIMAGE_SIGNATURE_OFFSET : BZIMAGE_SIGNATURE_OFFSET + 4] == b"HdrS"


def is_elf64_kernel(elf: ElfFile) -> bool:
    return elf.elf_class == ELFCLASS64 and elf.machine == EM_X86_64


class Detected(FrozenRecord):
    __slots__ = __match_args__ = ("protocols", "elf", "problem")
    protocols: tuple[Protocol, ...]  # in load_kernel's order of preference
    elf: ElfFile | None
    problem: BootError | None  # why a format the file claims to be could not be parsed

    def __init__(self, protocols: tuple[Protocol, ...], elf: ElfFile | None, problem: BootError | None) -> None:
        self._init(protocols, elf, problem)


def detect(kernel: bytes) -> Detected:
    elf: ElfFile | None = None
    problem: BootError | None = None
    found: list[Protocol] = []
    if is_elf(kernel):
        try:
            elf = parse_elf(kernel)
            if pvh_entry(elf) is not None:
                found.append("pvh")
        except BootError as e:
            elf, problem = None, e
    if is_bzimage(kernel):
        found.append("linux")
    mb: MultibootHeader | None = None
    try:
        mb = find_header(kernel)
    except BootError as e:
        problem = problem or e
    if mb is not None and (mb.aout_kludge or elf is not None):
        found.append("multiboot")
    elif mb is not None and problem is None:
        problem = BootError(NO_LOAD_ADDRESSES)
    elif mb is None and problem is None and has_bad_checksum(kernel) and not found:
        problem = BootError(BAD_CHECKSUM)
    if elf is not None and is_elf64_kernel(elf):
        found.append("elf64")
    return Detected(tuple(found), elf, problem)
