"""The "newc" cpio format: the container of a Linux initramfs.

The kernel unpacks the initrd it is given as one or more newc archives
(Documentation/driver-api/early-userspace/buffer-format.rst), each possibly
compressed. An entry is a 110-byte ASCII header, the path, then the data:

    c_magic     6 bytes   "070701" ("070702": same, with a data checksum)
    c_ino       8 hex     c_mode      8 hex     c_uid       8 hex
    c_gid       8 hex     c_nlink     8 hex     c_mtime     8 hex
    c_filesize  8 hex     c_devmajor  8 hex     c_devminor  8 hex
    c_rdevmajor 8 hex     c_rdevminor 8 hex     c_namesize  8 hex (with the NUL)
    c_check     8 hex     (0 for 070701; sum of the data bytes for 070702)
    name        c_namesize bytes, NUL-terminated, then zeros up to a multiple of 4
    data        c_filesize bytes, then zeros up to a multiple of 4

A symlink's data is its target (no NUL); a device node carries its number in
c_rdevmajor/c_rdevminor. The archive ends with an entry named "TRAILER!!!".

`CpioWriter` writes such archives reproducibly (mtime 0, inode numbers
counted from 1 in the order of the calls, owner root), so the same inputs
give the same bytes. `read_cpio` parses one back into `CpioEntry` records and
checks every length against the buffer, so a truncated or corrupt archive is
reported with the offset where it goes wrong instead of an IndexError.
"""

from __future__ import annotations

import gzip
import lzma
import stat
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

from .errors import CpioError

MAGIC = b"070701"
MAGIC_CRC = b"070702"
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
          "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")

Kind = Literal["file", "dir", "symlink", "chr", "blk", "fifo", "socket"]
_KINDS: dict[int, Kind] = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
}


class Writable(Protocol):
    """Where archives go: a binary file, a GzipFile, a BytesIO."""

    def write(self, data: bytes, /) -> object: ...


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def normalize_path(path: str) -> str:
    """Archive path for `path`: no leading '/' or './', no '..', no empty parts.

    The kernel creates entries relative to the initramfs root whatever the
    prefix, but tools like `cpio -t` show the names as stored, so one
    spelling keeps listings and duplicate checks honest.
    """
    if "\0" in path:
        raise CpioError(f"cpio path {path!r} contains a NUL byte")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        raise CpioError(f"cpio path {path!r} names the root; give a path below it")
    if ".." in parts:
        raise CpioError(f"cpio path {path!r} contains '..'; give a path inside the archive")
    return "/".join(parts)


@dataclass(frozen=True)
class CpioEntry:
    """One entry of a newc archive, as read back (the trailer is not returned)."""

    name: str
    mode: int  # file type and permission bits, as in st_mode
    data: bytes  # file contents, or a symlink's target
    ino: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    mtime: int = 0
    devmajor: int = 0
    devminor: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0
    offset: int = 0  # where the header starts in the (decompressed) archive

    @property
    def kind(self) -> Kind:
        try:
            return _KINDS[stat.S_IFMT(self.mode)]
        except KeyError:
            raise CpioError(f"cpio entry {self.name!r} has an unknown file type in mode {self.mode:#o}") from None

    @property
    def perm(self) -> int:
        """Permission bits (with setuid/setgid/sticky)."""
        return stat.S_IMODE(self.mode)

    @property
    def target(self) -> str:
        """A symlink's target."""
        if self.kind != "symlink":
            raise CpioError(f"cpio entry {self.name!r} is a {self.kind}, not a symlink")
        return self.data.decode()


class CpioWriter:
    """Writes a newc archive entry by entry to a binary file object.

    Missing parent directories are added (mode 0755) before an entry, because
    the kernel's unpacker does not create them: a file whose directory comes
    later in the archive is silently dropped. Adding the same path twice is an
    error, except `add_dir` of a directory that exists with the same mode.

        with open("initrd.cpio", "wb") as f, CpioWriter(f) as w:
            w.add_file("init", script, mode=0o755)
    """

    def __init__(self, fileobj: Writable) -> None:
        self._f = fileobj
        self._next_ino = 1
        self._entries: dict[str, int] = {}  # path -> mode, for duplicate and parent checks
        self._closed = False
        self.bytes_written = 0

    def __enter__(self) -> CpioWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # On an exception the archive stays without a trailer, so a reader
        # reports it as truncated instead of accepting half an initramfs.
        if exc_type is None:
            self.close()

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        name = normalize_path(path)
        full = stat.S_IFDIR | (mode & 0o7777)
        if self._entries.get(name) == full:
            return
        self._add(name, full, b"", nlink=2)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(normalize_path(path), stat.S_IFREG | (mode & 0o7777), bytes(data))

    def add_symlink(self, path: str, target: str) -> None:
        if not target or "\0" in target:
            raise CpioError(f"symlink {path!r}: target {target!r} must be non-empty and without NUL")
        self._add(normalize_path(path), stat.S_IFLNK | 0o777, target.encode())

    def add_device(self, path: str, kind: Literal["c", "b"], major: int, minor: int, mode: int = 0o600) -> None:
        if kind not in ("c", "b"):
            raise CpioError(f"device {path!r}: kind must be 'c' (character) or 'b' (block), not {kind!r}")
        if not (0 <= major <= 0xFFFFFFFF and 0 <= minor <= 0xFFFFFFFF):
            raise CpioError(f"device {path!r}: major {major} / minor {minor} out of range")
        ftype = stat.S_IFCHR if kind == "c" else stat.S_IFBLK
        self._add(normalize_path(path), ftype | (mode & 0o7777), b"", rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer. The file object stays open (the caller owns it)."""
        if self._closed:
            return
        # GNU cpio writes the trailer with nlink 1 and every other field 0.
        self._write_entry(TRAILER, 0, b"", ino=0, nlink=1)
        self._closed = True

    @property
    def paths(self) -> list[str]:
        """The paths added so far, in archive order."""
        return list(self._entries)

    def _add(self, name: str, mode: int, data: bytes, nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        if self._closed:
            raise CpioError(f"cannot add {name!r}: the archive is closed (trailer written)")
        if name == TRAILER:
            raise CpioError(f"{TRAILER!r} is reserved for the end-of-archive marker")
        if name in self._entries:
            raise CpioError(f"{name!r} is already in the archive; each path may be added once")
        self._add_parents(name)
        self._entries[name] = mode
        self._write_entry(name, mode, data, ino=self._next_ino, nlink=nlink, rdev=rdev)
        self._next_ino += 1

    def _add_parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            mode = self._entries.get(parent)
            if mode is None:
                self._entries[parent] = stat.S_IFDIR | 0o755
                self._write_entry(parent, stat.S_IFDIR | 0o755, b"", ino=self._next_ino, nlink=2)
                self._next_ino += 1
            elif not stat.S_ISDIR(mode):
                raise CpioError(f"cannot add {name!r}: {parent!r} is in the archive but is not a directory")

    def _write_entry(self, name: str, mode: int, data: bytes, *, ino: int, nlink: int,
                     rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        values = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = MAGIC + b"".join(b"%08X" % v for v in values)
        chunk = b"".join((header, encoded, b"\0" * _pad4(HEADER_SIZE + len(encoded)),
                          data, b"\0" * _pad4(len(data))))
        self._f.write(chunk)
        self.bytes_written += len(chunk)


def gzip_writer(fileobj: BinaryIO, level: int = 9) -> gzip.GzipFile:
    """A gzip stream over `fileobj` with a fixed header (no name, mtime 0).

    Linux unpacks a gzip-compressed initramfs itself (CONFIG_RD_GZIP, on in
    Debian's kernels); the fixed header keeps the output reproducible.
    Close it before closing `fileobj`.
    """
    return gzip.GzipFile(filename="", mode="wb", fileobj=fileobj, compresslevel=level, mtime=0)


def decompress(data: bytes) -> bytes:
    """`data` unchanged if it is a plain archive, else gunzipped or un-xz'd.

    Only what the stdlib can undo is handled; other compressed initrds raise
    a CpioError naming the format.
    """
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise CpioError(f"gzip-compressed initramfs is corrupt or truncated: {e}") from e
    if data[:6] == b"\xfd7zXZ\x00":
        try:
            return lzma.decompress(data)
        except lzma.LZMAError as e:
            raise CpioError(f"xz-compressed initramfs is corrupt or truncated: {e}") from e
    if data[:4] == b"\x28\xb5\x2f\xfd":
        raise CpioError("zstd-compressed initramfs: decompress it first (zstd -d) and read the result")
    return data


def read_cpio(data: bytes) -> list[CpioEntry]:
    """Parse one newc archive (plain, gzip or xz) up to its trailer.

    Raises CpioError with the offset of the first problem: a bad magic, a
    non-hex field, a name or data running past the end, a bad 070702
    checksum, or no trailer at all (the archive was cut short).
    """
    buf = decompress(bytes(data))
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        if pos + HEADER_SIZE > len(buf):
            raise CpioError(f"cpio archive truncated at offset {pos:#x}: {len(buf) - pos} bytes left where a "
                            f"{HEADER_SIZE}-byte header (or the {TRAILER} entry) was expected")
        magic = buf[pos:pos + 6]
        if magic not in (MAGIC, MAGIC_CRC):
            raise CpioError(f"bad cpio magic {magic!r} at offset {pos:#x}: expected b'070701' (newc); "
                            "old binary or odc archives are not supported")
        fields: dict[str, int] = {}
        for i, fname in enumerate(FIELDS):
            raw = buf[pos + 6 + 8 * i:pos + 14 + 8 * i]
            try:
                if not all(c in b"0123456789abcdefABCDEF" for c in raw):
                    raise ValueError
                fields[fname] = int(raw, 16)
            except ValueError:
                raise CpioError(f"cpio header at offset {pos:#x}: field c_{fname} is {raw!r}, "
                                "not 8 hex digits") from None
        namesize, filesize = fields["namesize"], fields["filesize"]
        name_start = pos + HEADER_SIZE
        if namesize < 1 or name_start + namesize > len(buf):
            raise CpioError(f"cpio entry at offset {pos:#x}: name of {namesize} bytes runs past the end "
                            f"of the archive ({len(buf)} bytes)")
        raw_name = buf[name_start:name_start + namesize]
        if raw_name[-1] != 0 or 0 in raw_name[:-1]:
            raise CpioError(f"cpio entry at offset {pos:#x}: name {raw_name!r} is not one NUL-terminated string")
        try:
            name = raw_name[:-1].decode()
        except UnicodeDecodeError:
            raise CpioError(f"cpio entry at offset {pos:#x}: name {raw_name!r} is not UTF-8") from None
        data_start = name_start + namesize + _pad4(HEADER_SIZE + namesize)
        data_end = data_start + filesize
        if data_end > len(buf):
            raise CpioError(f"cpio entry {name!r} at offset {pos:#x}: {filesize} bytes of data run past the "
                            f"end of the archive ({len(buf)} bytes); it was truncated")
        body = buf[data_start:data_end]
        if magic == MAGIC_CRC and sum(body) & 0xFFFFFFFF != fields["check"]:
            raise CpioError(f"cpio entry {name!r} at offset {pos:#x}: checksum {fields['check']:#x} does not "
                            f"match the data ({sum(body) & 0xFFFFFFFF:#x})")
        if name == TRAILER:
            return entries
        entries.append(CpioEntry(
            name=name, mode=fields["mode"], data=body, ino=fields["ino"], uid=fields["uid"],
            gid=fields["gid"], nlink=fields["nlink"], mtime=fields["mtime"],
            devmajor=fields["devmajor"], devminor=fields["devminor"],
            rdevmajor=fields["rdevmajor"], rdevminor=fields["rdevminor"], offset=pos))
        pos = data_end + _pad4(filesize)


def format_listing(entries: list[CpioEntry]) -> str:
    """`ls -l`-like lines for an archive's entries (for `guestimage ls`)."""
    lines = []
    for e in entries:
        mode = stat.filemode(e.mode)
        if e.kind in ("chr", "blk"):
            size = f"{e.rdevmajor:>4},{e.rdevminor:>4}"
        else:
            size = f"{len(e.data):>9}"
        suffix = f" -> {e.target}" if e.kind == "symlink" else ""
        lines.append(f"{mode} {e.uid:>4} {e.gid:>4} {size} {e.name}{suffix}")
    return "\n".join(lines)
