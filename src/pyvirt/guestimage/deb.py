"""Reading Debian binary packages (.deb) without dpkg.

A .deb is an `ar` archive (deb(5)) holding, in this order:

    debian-binary     "2.0\\n"
    control.tar[.xz|.gz|.zst]   the control file and maintainer scripts
    data.tar[.xz|.gz|.bz2|.zst] the files, with paths like "./boot/vmlinuz-6.1.0-1-amd64"

The ar format (ar(5)) is the magic "!<arch>\\n", then per member a 60-byte
ASCII header -- name[16] mtime[12] uid[6] gid[6] mode[8, octal] size[10,
decimal] and the two bytes "`\\n" -- followed by the data, padded with "\\n"
to an even offset.

Debian 12 compresses both tarballs with xz, which the stdlib reads; zstd
(used by Ubuntu) needs the `zstandard` module or the `zstd` command, tried in
that order. `DebPackage.extract` never writes outside its target directory:
absolute member names, '..' parts and links pointing outside are refused
with UnsafePathError before anything is written for that member.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import DebError, UnsafePathError

AR_MAGIC = b"!<arch>\n"
AR_HEADER_SIZE = 60
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class ArMember:
    """One member of an ar archive."""

    name: str
    data: bytes
    mode: int
    mtime: int
    offset: int  # of the member's header in the archive


def parse_ar(data: bytes, source: str = "archive") -> list[ArMember]:
    """Split an ar archive into its members, checking every length.

    Only the plain ("common") format that dpkg writes is read; GNU long-name
    tables and BSD "#1/N" names never occur in a .deb and are refused.
    """
    if not data.startswith(AR_MAGIC):
        raise DebError(f"{source}: not an ar archive (starts with {bytes(data[:8])!r}, expected {AR_MAGIC!r}); "
                       "is it really a .deb?")
    members: list[ArMember] = []
    pos = len(AR_MAGIC)
    while pos < len(data):
        if data[pos:] == b"\n":  # some writers pad the archive itself
            break
        if pos + AR_HEADER_SIZE > len(data):
            raise DebError(f"{source}: ar header at offset {pos} is truncated ({len(data) - pos} of "
                           f"{AR_HEADER_SIZE} bytes); the file was cut short, download it again")
        hdr = data[pos:pos + AR_HEADER_SIZE]
        if hdr[58:60] != b"`\n":
            raise DebError(f"{source}: ar header at offset {pos} lacks its end marker; the archive is corrupt")
        try:
            name = hdr[0:16].decode("ascii").rstrip(" ")
            mtime = int(hdr[16:28].strip() or b"0")
            mode = int(hdr[40:48].strip() or b"0", 8)
            size = int(hdr[48:58].strip())
        except (UnicodeDecodeError, ValueError):
            raise DebError(f"{source}: ar header at offset {pos} has non-numeric fields: {hdr!r}") from None
        if name.startswith("#1/") or name in ("/", "//"):
            raise DebError(f"{source}: ar member {name!r} uses an extended-name table, which .deb files never do")
        name = name.removesuffix("/")  # GNU ar terminates names with '/'
        start = pos + AR_HEADER_SIZE
        if size < 0 or start + size > len(data):
            raise DebError(f"{source}: ar member {name!r} claims {size} bytes but only {len(data) - start} "
                           "remain; the file was cut short, download it again")
        members.append(ArMember(name, bytes(data[start:start + size]), mode, mtime, pos))
        pos = start + size + (size & 1)
    return members


def parse_control(text: str) -> dict[str, str]:
    """The fields of a control file (deb-control(5)), first paragraph only.

    Continuation lines (starting with a space or tab) are joined to their
    field with newlines; field names keep their spelling but lookups in the
    returned dict should use the canonical case ("Depends").
    """
    fields: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t":
            if current is None:
                raise DebError(f"control file: continuation line {line!r} before any field")
            fields[current] += "\n" + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise DebError(f"control file: line {line!r} is not 'Field: value'")
        current = key.strip()
        fields[current] = value.strip()
    return fields


def parse_depends(value: str) -> list[list[str]]:
    """A Depends-style field as a list of alternatives, package names only.

    "a (>= 1), b:any | c [amd64]" -> [["a"], ["b", "c"]]; version constraints,
    architecture qualifiers and restrictions are dropped.
    """
    result = []
    for group in value.split(","):
        names = []
        for alt in group.split("|"):
            name = alt.strip().split(" ")[0].split("(")[0].split("[")[0].split(":")[0]
            if name:
                names.append(name)
        if names:
            result.append(names)
    return result


def _zstd_decompress(data: bytes, what: str) -> bytes:
    try:
        import zstandard  # optional; not a pyvirt dependency
    except ImportError:
        pass
    else:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            return reader.read()
    zstd = shutil.which("zstd")
    if zstd:
        proc = subprocess.run([zstd, "-dc"], input=data, capture_output=True, check=False)
        if proc.returncode != 0:
            raise DebError(f"{what}: zstd -dc failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    raise DebError(f"{what} is zstd-compressed and neither the Python module 'zstandard' nor the 'zstd' "
                   "command is available: pip install zstandard, or apt-get install zstd")


def _open_tar(member: ArMember, what: str) -> tarfile.TarFile:
    """A stream-mode TarFile over a control.tar.* or data.tar.* member."""
    suffix = member.name.rpartition(".tar")[2]
    data = member.data
    if suffix == ".zst" or (suffix == "" and data.startswith(ZSTD_MAGIC)):
        data, suffix = _zstd_decompress(data, what), ""
    modes: dict[str, Literal["r|", "r|xz", "r|gz", "r|bz2"]] = {"": "r|", ".xz": "r|xz", ".gz": "r|gz",
                                                                  ".bz2": "r|bz2"}
    if suffix not in modes:
        raise DebError(f"{what}: compression {suffix!r} of {member.name} is not supported "
                       "(xz, gz, bz2, zst and none are)")
    try:
        return tarfile.open(fileobj=io.BytesIO(data), mode=modes[suffix])
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DebError(f"{what}: {member.name} is not a readable tar archive: {e}") from e


def member_path(name: str) -> str:
    """A tar member name as a relative path ("./boot/x" -> "boot/x", "./" -> "").

    Raises UnsafePathError for absolute names and names with '..' parts: dpkg
    never builds those, so one means a hostile or broken package.
    """
    if name.startswith("/"):
        raise UnsafePathError(f"archive member {name!r} has an absolute path; refusing to extract it")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"archive member {name!r} contains '..'; refusing to extract it")
    return "/".join(parts)


def _check_link(rel: str, info: tarfile.TarInfo) -> str:
    """The in-tree path a link member points to, or UnsafePathError."""
    target = info.linkname
    if info.issym():
        if target.startswith("/"):
            raise UnsafePathError(f"symlink {rel!r} -> {target!r} is absolute and would point outside the "
                                  "extraction directory")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    else:  # hard link: linkname is another member's archive path
        resolved = posixpath.normpath(member_path(target) or ".")
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise UnsafePathError(f"link {rel!r} -> {target!r} points outside the extraction directory")
    return resolved


class DebPackage:
    """A .deb read into memory: its control fields and its data tarball.

        pkg = DebPackage.from_file("busybox-static_1.35.0_amd64.deb")
        pkg.control["Version"], pkg.depends
        files = pkg.read_data(lambda p: p == "bin/busybox")
    """

    def __init__(self, data: bytes, source: str = "package") -> None:
        self.source = source
        members = parse_ar(data, source)
        self.members = {m.name: m for m in members}
        first = members[0].name if members else None
        if first != "debian-binary":
            raise DebError(f"{source}: first ar member is {first!r}, not 'debian-binary'; not a .deb")
        version = members[0].data.decode("ascii", "replace").strip()
        if not version.startswith("2."):
            raise DebError(f"{source}: package format {version!r} is not supported (only 2.x)")
        self.format_version = version
        self._control_member = self._find("control.tar")
        self._data_member = self._find("data.tar")
        self._control: dict[str, str] | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> DebPackage:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DebError(f"cannot read {path}: {e.strerror}") from e
        return cls(data, source=str(path))

    def _find(self, prefix: str) -> ArMember:
        for name, m in self.members.items():
            if name == prefix or name.startswith(prefix + "."):
                return m
        raise DebError(f"{self.source}: no {prefix}.* member (members: {', '.join(self.members)})")

    @property
    def control(self) -> dict[str, str]:
        """Fields of the package's control file."""
        if self._control is None:
            with _open_tar(self._control_member, f"{self.source} control") as tar:
                for info in tar:
                    if info.isfile() and member_path(info.name) == "control":
                        f = tar.extractfile(info)
                        assert f is not None
                        self._control = parse_control(f.read().decode("utf-8", "replace"))
                        break
                else:
                    raise DebError(f"{self.source}: {self._control_member.name} has no 'control' file")
        return self._control

    @property
    def name(self) -> str:
        return self.control.get("Package", "")

    @property
    def version(self) -> str:
        return self.control.get("Version", "")

    @property
    def depends(self) -> list[list[str]]:
        """Pre-Depends and Depends, as alternatives of package names."""
        value = ", ".join(v for k in ("Pre-Depends", "Depends") if (v := self.control.get(k)))
        return parse_depends(value)

    @contextmanager
    def data_tar(self) -> Iterator[tarfile.TarFile]:
        """The data tarball, opened for one sequential pass."""
        tar = _open_tar(self._data_member, f"{self.source} data")
        try:
            yield tar
        finally:
            tar.close()

    def data_members(self) -> list[tuple[str, tarfile.TarInfo]]:
        """(relative path, TarInfo) of every data member, in archive order."""
        try:
            with self.data_tar() as tar:
                return [(member_path(info.name), info) for info in tar]
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DebError(f"{self.source}: data tarball is corrupt: {e}") from e

    def read_data(self, select: Callable[[str], bool]) -> dict[str, bytes]:
        """Contents of the regular files whose relative path `select` accepts."""
        out: dict[str, bytes] = {}
        try:
            with self.data_tar() as tar:
                for info in tar:
                    rel = member_path(info.name)
                    if info.isfile() and select(rel):
                        f = tar.extractfile(info)
                        assert f is not None
                        out[rel] = f.read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DebError(f"{self.source}: data tarball is corrupt: {e}") from e
        return out

    def extract(self, target: str | os.PathLike[str], select: Callable[[str], bool] | None = None) -> list[Path]:
        """Unpack data members (those `select` accepts, default all) under `target`.

        Regular files, directories and links are created; device nodes and
        FIFOs are skipped (an unprivileged unpack could not make them, and a
        guest image builds its own). Permission bits are kept without
        setuid/setgid; ownership is not. Returns the paths written.
        """
        root = Path(target)
        root.mkdir(parents=True, exist_ok=True)
        real_root = os.path.realpath(root)
        written: list[Path] = []
        try:
            with self.data_tar() as tar:
                for info in tar:
                    rel = member_path(info.name)
                    if not rel or (select is not None and not select(rel)):
                        continue
                    if info.issym() or info.islnk():
                        link_rel = _check_link(rel, info)
                    dest = root / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    # A symlink planted by an earlier member must not carry
                    # this one outside: check where the parent really is.
                    real_parent = os.path.realpath(dest.parent)
                    if real_parent != real_root and not real_parent.startswith(real_root + os.sep):
                        raise UnsafePathError(f"archive member {info.name!r} would be written through a link "
                                              f"to {real_parent}, outside {real_root}")
                    if info.isdir():
                        if dest.is_symlink():
                            dest.unlink()
                        dest.mkdir(exist_ok=True)
                        os.chmod(dest, info.mode & 0o777)
                    elif info.isfile():
                        if dest.is_symlink() or dest.exists():
                            dest.unlink()  # never write through an existing link
                        f = tar.extractfile(info)
                        assert f is not None
                        with open(dest, "wb") as out:
                            shutil.copyfileobj(f, out)
                        os.chmod(dest, info.mode & 0o777)
                    elif info.issym():
                        if dest.is_symlink() or dest.exists():
                            dest.unlink()
                        os.symlink(info.linkname, dest)
                    elif info.islnk():
                        source = root / link_rel
                        if not source.is_file() or source.is_symlink():
                            raise DebError(f"{self.source}: hard link {rel!r} -> {info.linkname!r}: the target "
                                           "was not extracted (include it in the selection)")
                        if dest.exists():
                            dest.unlink()
                        os.link(source, dest)
                    else:
                        continue
                    written.append(dest)
        except (tarfile.TarError, EOFError) as e:
            raise DebError(f"{self.source}: data tarball is corrupt: {e}") from e
        return written


def version_key(version: str) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """A sort key ordering Debian versions as dpkg does (deb-version(7)).

    [epoch:]upstream[-revision]; within upstream and revision, non-digit runs
    compare with '~' before everything (even the end), then letters, then
    other characters; digit runs compare numerically.
    """
    epoch_text, sep, rest = version.partition(":")
    if not sep:
        epoch_text, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, "0"
    try:
        epoch = int(epoch_text)
    except ValueError:
        raise DebError(f"version {version!r}: epoch {epoch_text!r} is not a number") from None
    return epoch, _version_parts(upstream), _version_parts(revision)


def _order(c: str) -> int:
    if c == "~":
        return -1  # becomes weight 1, below the end of a run (2)
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _version_parts(text: str) -> list[tuple[str, int]]:
    # Each non-digit run becomes a string of sort weights ('~' 1, end of run
    # 2, letters, then other characters) paired with the number after it.
    # The final ("end", 0) part stands for the end of the string, which dpkg
    # compares as an empty run and the number 0: so "1.0~rc1" < "1.0" < "1.0.1".
    parts = []
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and not text[j].isdigit():
            j += 1
        k = j
        while k < len(text) and text[k].isdigit():
            k += 1
        weights = "".join(chr(_order(c) + 2) for c in text[i:j]) + chr(2)
        parts.append((weights, int(text[j:k] or 0)))
        i = k
    parts.append((chr(2), 0))
    return parts
