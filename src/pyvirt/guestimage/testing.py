"""Fakes for testing guest-image code without apt or real packages.

`make_deb` builds a .deb in memory (ar + control.tar + data.tar, any
compression the stdlib writes), with hostile members too, so the reader's
safety checks can be exercised; `make_module` builds the smallest ELF file
that carries a `.modinfo` section, which is all kmod.py reads.
"""

from __future__ import annotations

import io
import struct
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Compression = Literal["xz", "gz", "bz2", ""]


@dataclass(frozen=True)
class TarMember:
    """One data.tar member: kind "file", "dir", "symlink" or "hardlink"."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    link: str = ""  # symlink target, or hard link's member name


def ar_archive(members: Sequence[tuple[str, bytes]]) -> bytes:
    """An ar archive of (name, data) as dpkg writes it (names end with '/')."""
    out = [b"!<arch>\n"]
    for name, data in members:
        if len(name) > 15:
            raise ValueError(f"ar member name {name!r} is longer than 15 characters")
        header = b"%-16s%-12d%-6d%-6d%-8s%-10d`\n" % ((name + "/").encode(), 0, 0, 0, b"100644", len(data))
        assert len(header) == 60
        out.append(header + data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def tar_bytes(members: Sequence[TarMember], compression: Compression = "xz") -> bytes:
    buf = io.BytesIO()
    mode: Literal["w:xz", "w:gz", "w:bz2", "w"] = f"w:{compression}" if compression else "w"  # type: ignore[assignment]
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mode = m.mode
            if m.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif m.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, m.link
                tar.addfile(info)
            elif m.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, m.link
                tar.addfile(info)
            else:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
    return buf.getvalue()


def make_deb(package: str = "pkg", version: str = "1.0", files: Mapping[str, bytes] | None = None,
             members: Sequence[TarMember] = (), depends: str = "", compression: Compression = "xz") -> bytes:
    """A .deb whose data.tar holds `files` ("./path" names, as dpkg-deb makes) and `members`."""
    control = f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
    if depends:
        control += f"Depends: {depends}\n"
    control += "Description: test package\n a second line\n"
    data_members = [TarMember("./", "dir", mode=0o755)]
    for path, data in (files or {}).items():
        data_members.append(TarMember("./" + path, "file", data, 0o755 if path.startswith("bin/") else 0o644))
    data_members.extend(members)
    suffix = f".{compression}" if compression else ""
    return ar_archive([
        ("debian-binary", b"2.0\n"),
        (f"control.tar{suffix}", tar_bytes([TarMember("./control", data=control.encode())], compression)),
        (f"data.tar{suffix}", tar_bytes(data_members, compression)),
    ])


def make_module(name: str, depends: Sequence[str] = (), aliases: Sequence[str] = (), softdep: str = "") -> bytes:
    """A minimal little-endian ELF64 relocatable file with a .modinfo section."""
    fields = [f"alias={a}" for a in aliases]
    if softdep:
        fields.append(f"softdep={softdep}")
    fields += [f"depends={','.join(depends)}", "license=GPL", f"name={name}", "vermagic=6.1.0 SMP mod_unload"]
    modinfo = b"".join(f.encode() + b"\0" for f in fields)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    modinfo_off = 64
    shstr_off = modinfo_off + len(modinfo)
    shoff = (shstr_off + len(shstrtab) + 7) & ~7
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    body = header + modinfo + shstrtab
    body += bytes(shoff - len(body))

    def sh(name_off: int, sh_type: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name_off, sh_type, 0, 0, offset, size, 0, 0, 1, 0)

    return body + sh(0, 0, 0, 0) + sh(1, 1, modinfo_off, len(modinfo)) + sh(10, 3, shstr_off, len(shstrtab))
