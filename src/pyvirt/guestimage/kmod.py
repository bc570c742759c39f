"""Kernel modules for an initramfs: read .modinfo, order dependencies, write modules.dep.

Debian's linux-image packages ship the .ko files but not modules.dep: the
package's postinst runs depmod. So the dependencies are read here from each
module's `.modinfo` ELF section, a run of NUL-separated "key=value" strings
(include/linux/moduleparam.h):

    name=virtio_blk  depends=virtio,virtio_ring  alias=virtio:d00000002v*
    softdep=pre: crc32c

`ModuleIndex.resolve` turns requested names into a load order (dependencies
first; softdep "pre:" modules are loaded too, as modprobe would), and
`modules_dep` / `modules_alias` write the two files busybox modprobe reads.
In modules.dep each line lists a module's whole dependency closure, the one
to load last first: "kernel/a.ko: kernel/b.ko kernel/c.ko" loads c, b, a.

Modules may be compressed (.ko.xz, .ko.gz, .ko.zst); they are read for
their .modinfo here but copied into the initramfs as they are.
"""

from __future__ import annotations

import difflib
import gzip
import lzma
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .deb import _zstd_decompress
from .errors import DebError, ModuleError

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def module_name(path: str) -> str:
    """The name modprobe uses for a module file: no directory or suffix, '-' as '_'."""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def is_module(path: str) -> bool:
    return path.endswith(MODULE_SUFFIXES)


def decompress_module(data: bytes, what: str) -> bytes:
    """The ELF image of a possibly compressed module (chosen by magic, not name)."""
    try:
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(data)
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise ModuleError(f"{what}: compressed module is corrupt: {e}") from e
    if data[:4] == b"\x28\xb5\x2f\xfd":
        try:
            return _zstd_decompress(data, what)
        except DebError as e:
            raise ModuleError(str(e)) from e
    return data


def elf_section(image: bytes, wanted: str, what: str = "ELF file") -> bytes | None:
    """The contents of the section named `wanted`, or None if there is none.

    Reads the ELF header (32- or 64-bit, either byte order), the section
    header table and the section-name string table, checking each offset
    against the file size.
    """
    if image[:4] != b"\x7fELF" or len(image) < 52:
        raise ModuleError(f"{what} is not an ELF file (is it a kernel module?)")
    cls, data_enc = image[4], image[5]
    if cls not in (1, 2) or data_enc not in (1, 2):
        raise ModuleError(f"{what}: unknown ELF class {cls} / data encoding {data_enc}")
    end = "<" if data_enc == 1 else ">"
    if cls == 2:
        if len(image) < 64:
            raise ModuleError(f"{what}: ELF header truncated")
        shoff, = struct.unpack_from(end + "Q", image, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", image, 0x3A)
        sh_fmt, sh_min = end + "IIQQQQ", 0x28  # name, type, flags, addr, offset, size
    else:
        shoff, = struct.unpack_from(end + "I", image, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", image, 0x2E)
        sh_fmt, sh_min = end + "IIIIII", 0x18

    def section(i: int) -> tuple[int, int, int]:
        off = shoff + i * shentsize
        if shentsize < sh_min or off + sh_min > len(image):
            raise ModuleError(f"{what}: section header {i} lies outside the file; the module is corrupt")
        name, _type, _flags, _addr, offset, size = struct.unpack_from(sh_fmt, image, off)
        if _type != 8 and offset + size > len(image):  # SHT_NOBITS has no file data
            raise ModuleError(f"{what}: section {i} data lies outside the file; the module is corrupt")
        return name, offset, size

    if shnum == 0 or shstrndx >= shnum:
        raise ModuleError(f"{what}: no section headers (is it a kernel module?)")
    _, str_off, str_size = section(shstrndx)
    names = image[str_off:str_off + str_size]
    for i in range(shnum):
        name_off, offset, size = section(i)
        end_name = names.find(b"\0", name_off)
        if end_name < 0:
            end_name = len(names)
        if name_off < len(names) and names[name_off:end_name].decode(errors="replace") == wanted:
            return image[offset:offset + size]
    return None


def parse_modinfo(raw: bytes) -> dict[str, list[str]]:
    """key -> values of a .modinfo section (keys like alias repeat)."""
    info: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


@dataclass(frozen=True)
class ModuleInfo:
    """What the initramfs needs to know about one module."""

    name: str
    path: str  # relative to lib/modules/<release>/, e.g. "kernel/drivers/block/virtio_blk.ko"
    depends: tuple[str, ...]
    softdep_pre: tuple[str, ...]
    aliases: tuple[str, ...]


def module_info(path: str, data: bytes) -> ModuleInfo:
    """Parse a module file (compressed or not) into a ModuleInfo."""
    raw = elf_section(decompress_module(data, path), ".modinfo", path)
    if raw is None:
        raise ModuleError(f"{path}: no .modinfo section; not a kernel module")
    info = parse_modinfo(raw)
    depends = tuple(d for v in info.get("depends", []) for d in v.split(",") if d)
    pre: list[str] = []
    for soft in info.get("softdep", []):
        # "pre: a b post: c" -- only pre: modules must be there before this one.
        section = None
        for word in soft.split():
            if word.endswith(":"):
                section = word[:-1]
            elif section == "pre":
                pre.append(word)
    name = (info.get("name") or [module_name(path)])[0]
    return ModuleInfo(name=name.replace("-", "_"), path=path,
                      depends=tuple(d.replace("-", "_") for d in depends),
                      softdep_pre=tuple(p.replace("-", "_") for p in pre),
                      aliases=tuple(info.get("alias", [])))


class ModuleIndex:
    """The modules of one kernel release, read lazily.

    `paths` are module files relative to lib/modules/<release>/; `read` gives
    a file's bytes; `builtin` names modules compiled into the kernel (from
    modules.builtin), which need no loading.
    """

    def __init__(self, paths: Iterable[str], read: Callable[[str], bytes], builtin: Iterable[str] = ()) -> None:
        self._paths: dict[str, str] = {}
        for p in sorted(paths):
            if is_module(p):
                self._paths.setdefault(module_name(p), p)
        self._read = read
        self.builtin = {module_name(b) for b in builtin}
        self._info: dict[str, ModuleInfo] = {}

    @classmethod
    def from_dir(cls, root: str | os.PathLike[str]) -> ModuleIndex:
        """The modules under an unpacked lib/modules/<release>/ directory."""
        base = Path(root)
        paths = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file() and is_module(p.name)]
        builtin_file = base / "modules.builtin"
        builtin = builtin_file.read_text().split() if builtin_file.exists() else []
        return cls(paths, lambda rel: (base / rel).read_bytes(), builtin)

    def __contains__(self, name: str) -> bool:
        return name.replace("-", "_") in self._paths

    @property
    def names(self) -> list[str]:
        return sorted(self._paths)

    def info(self, name: str) -> ModuleInfo:
        key = name.replace("-", "_")
        if key not in self._info:
            if key not in self._paths:
                hint = difflib.get_close_matches(key, self._paths, n=3)
                more = f"; did you mean {', '.join(hint)}?" if hint else ""
                raise ModuleError(f"kernel module {name!r} is not in this kernel's package{more}")
            path = self._paths[key]
            self._info[key] = module_info(path, self._read(path))
        return self._info[key]

    def resolve(self, names: Iterable[str]) -> tuple[list[ModuleInfo], list[str]]:
        """(modules to load, dependencies first; requested names built into the kernel)."""
        order: list[ModuleInfo] = []
        done: set[str] = set()
        builtin_hits: list[str] = []

        def visit(name: str, chain: tuple[str, ...], optional: bool) -> None:
            key = name.replace("-", "_")
            if key in done:
                return
            if key in chain:
                raise ModuleError(f"kernel modules depend on each other in a cycle: {' -> '.join(chain + (key,))}")
            if key not in self._paths:
                if key in self.builtin:
                    if not chain:
                        builtin_hits.append(key)
                    done.add(key)
                    return
                if optional:  # a softdep the package lacks is not an error for modprobe either
                    done.add(key)
                    return
            mod = self.info(key)
            for dep in mod.softdep_pre:
                visit(dep, chain + (key,), optional=True)
            for dep in mod.depends:
                visit(dep, chain + (key,), optional=False)
            done.add(key)
            order.append(mod)

        for n in names:
            visit(n, (), optional=False)
        return order, builtin_hits

    def closure(self, mod: ModuleInfo) -> list[ModuleInfo]:
        """Hard dependencies of `mod` (not itself), dependencies first."""
        order, _ = self.resolve(mod.depends)
        return order


def modules_dep(index: ModuleIndex, mods: Iterable[ModuleInfo]) -> str:
    """modules.dep text for `mods`: each with its whole closure, last-loaded first."""
    lines = []
    for mod in mods:
        deps = [d.path for d in reversed(index.closure(mod))]
        lines.append(f"{mod.path}:{''.join(' ' + d for d in deps)}\n")
    return "".join(lines)


def modules_alias(mods: Iterable[ModuleInfo]) -> str:
    """modules.alias text: "alias PATTERN NAME" for every alias of `mods`."""
    return "".join(f"alias {a} {m.name}\n" for m in mods for a in m.aliases)
