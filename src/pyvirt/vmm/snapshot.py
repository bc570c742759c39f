"""The snapshot file: what `PUT /save` and `PUT /snapshot` write and `pyvirt restore` reads.

Layout (little-endian; `docs/snapshots.md` has the full description):

    preamble   64 bytes at offset 0: magic "PYVSNAP\\0", format version,
               flags, offset and count of the section table, CRC32 of the
               table, the file's total size, CRC32 of the preamble itself
    sections   one after another: "config" (JSON: the VM's configuration
               and the host it ran on), "vm" (JSON: irqchip, PIT, clock),
               "vcpu" x N (JSON, one per vCPU), "devices" (JSON: every
               device's state record), "memory" (guest pages, starting on
               a page boundary), "memory-map" (binary: the runs of pages
               that are in "memory")
    table      one 48-byte entry per section: name, flags, index, offset,
               length, CRC32 (the memory section has none: each run has its
               own, in the memory map)

Guest memory is sparse: pages that are all zero are not written, and the
map lists runs of pages that are (`gpa, length, file_offset, stored_length,
crc32, codec`). Uncompressed runs sit page-aligned in the file, so restore
maps them straight into the guest (MAP_PRIVATE: pages load on first touch,
a guest write copies); compressed runs (zstd or lz4) must be read.

A file is untrusted input. `Snapshot.open` checks, before anything is used:
the magic, the format version (a newer pyvirt reads older versions; a file
from a newer one is refused, saying so), the file's size against the one
recorded (truncation), that every section lies inside the file without
overlapping another, each section's CRC, and that the memory map's runs are
sorted, inside guest RAM and inside the memory section. JSON sections are
decoded into records by `state_codec`; no pickle anywhere.

Writers write to a temporary file in the same directory and rename it over
the target at the end, so a crash leaves no half-written snapshot at the
target, and a VM restored from the old file (whose pages are mapped from
it) keeps its pages.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

from .._record import FrozenRecord, Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

MAGIC = b"PYVSNAP\0"
FORMAT_VERSION = 1
# Format versions this pyvirt reads. The file layout is versioned here; each
# state record carries its own `version`, checked by the component that
# restores it, and a record may gain fields with defaults (older files lack
# them) without a new format. A new format version is added here, and what
# reads a section converts the older layout where it differs.
READABLE_VERSIONS = (1,)
PAGE = 4096

PREAMBLE = struct.Struct("<8sIIQIIQ")  # magic, version, flags, table offset, count, table crc, file size
PREAMBLE_CRC = struct.Struct("<I")  # at offset PREAMBLE.size, over the bytes before it
PREAMBLE_SIZE = 64
ENTRY = struct.Struct("<16sIIQQI4x")  # name, flags, index, offset, length, crc
RUN = struct.Struct("<QQQQII")  # gpa, length, file offset, stored length, crc32, codec
MAP_HEADER = struct.Struct("<II")  # page size, run count

# section flags
OPTIONAL = 1 << 0  # a reader that does not know the section may skip it
NO_CRC = 1 << 1  # the entry's CRC is not used (the memory section: its runs carry CRCs)
KNOWN_FLAGS = OPTIONAL | NO_CRC

CONFIG, VM, VCPU, DEVICES, MEMORY, MEMORY_MAP = "config", "vm", "vcpu", "devices", "memory", "memory-map"
KNOWN_SECTIONS = (CONFIG, VM, VCPU, DEVICES, MEMORY, MEMORY_MAP)
MAX_SECTIONS = 4096 + 64
MAX_JSON = 64 << 20  # bytes of one JSON section
MAX_RUNS = 1 << 24  # in a map being read (compressed runs are at most 1 MiB)

CODEC_NONE, CODEC_ZSTD, CODEC_LZ4 = 0, 1, 2
CODECS = {"none": CODEC_NONE, "zstd": CODEC_ZSTD, "lz4": CODEC_LZ4}
CODEC_NAMES = {v: k for k, v in CODECS.items()}

# At most this many runs are written: beyond, the smallest zero gaps between
# runs are written too (a restore maps each run, and every mapping costs
# time and two of the kernel's vm.max_map_count VMAs).
MAX_WRITTEN_RUNS = 16384
COMPRESS_RUN = 1 << 20  # compressed runs are cut at this size (bounded buffers both ways)
_SCAN = 2 << 20
_ZERO_PAGE = bytes(PAGE)


class SnapshotError(Exception):
    """A snapshot cannot be written or read; the message names the file and what is wrong."""


# Plain records, not dataclasses: a restore loads this module, and every
# dataclass costs a slow host a few milliseconds to define (pyvirt/_record.py).
class Section(FrozenRecord):
    """One entry of the section table."""

    __slots__ = __match_args__ = ("name", "flags", "index", "offset", "length", "crc")
    name: str
    flags: int
    index: int
    offset: int
    length: int
    crc: int

    def __init__(self, name: str, flags: int, index: int, offset: int, length: int, crc: int) -> None:
        self._init(name, flags, index, offset, length, crc)


class MemoryRun(Record):
    """`length` bytes of guest memory at `gpa`, stored at `offset` in the file
    (`stored` bytes: compressed with `codec`, or a copy when CODEC_NONE).
    Not frozen, to be cheap to make: a map may hold 16384 of them."""

    __slots__ = __match_args__ = ("gpa", "length", "offset", "stored", "crc", "codec")

    def __init__(self, gpa: int, length: int, offset: int, stored: int, crc: int, codec: int = CODEC_NONE) -> None:
        self.gpa = gpa
        self.length = length
        self.offset = offset
        self.stored = stored
        self.crc = crc
        self.codec = codec


def available_codecs() -> list[str]:
    """Compression codecs this installation can write and read."""
    out = ["none"]
    for name, module in (("zstd", "zstandard"), ("lz4", "lz4.frame")):
        try:
            __import__(module)
        except ImportError:
            continue
        out.append(name)
    return out


# --- finding the pages to save --------------------------------------------------

def nonzero_runs(view: memoryview) -> list[tuple[int, int]]:
    """(offset, length) of the runs of pages in `view` that are not all
    zero. `view` is a whole number of pages."""
    runs: list[tuple[int, int]] = []
    start = end = -1
    n = len(view)
    zero = bytes(min(n, _SCAN))  # made here, not at import: a restore need not touch 2 MiB
    for base in range(0, n, _SCAN):
        chunk = bytes(view[base:base + _SCAN])  # one copy, then memcmp-speed compares
        if chunk == (zero if len(chunk) == len(zero) else zero[:len(chunk)]):
            continue
        for off in range(0, len(chunk), PAGE):
            if chunk[off:off + PAGE] == _ZERO_PAGE:
                continue
            page = base + off
            if page == end:
                end += PAGE
            else:
                if start >= 0:
                    runs.append((start, end - start))
                start, end = page, page + PAGE
    if start >= 0:
        runs.append((start, end - start))
    return runs


def limit_runs(runs: Sequence[tuple[int, int, int]], budget: int = MAX_WRITTEN_RUNS) -> list[tuple[int, int, int]]:
    """(region, offset, length) runs, sorted, joined across their smallest
    gaps (which are then written as zeros) until at most `budget` remain:
    each run costs a restore one mapping, each gap byte a byte of file.
    Runs of different regions are never joined."""
    excess = len(runs) - budget
    if excess <= 0:
        return list(runs)
    gaps = [(b[1] - a[1] - a[2], i) for i, (a, b) in enumerate(zip(runs, runs[1:])) if a[0] == b[0]]
    gaps.sort()
    join = {i for _, i in gaps[:excess]}
    out: list[tuple[int, int, int]] = []
    for i, r in enumerate(runs):
        if i - 1 in join:
            region, off, _ = out[-1]
            out[-1] = (region, off, r[1] + r[2] - off)
        else:
            out.append(r)
    return out


# --- writing ----------------------------------------------------------------------

class MemoryStats(FrozenRecord):
    __slots__ = __match_args__ = ("runs", "pages", "stored")
    runs: int
    pages: int  # guest pages written (including joined zero gaps)
    stored: int  # bytes they take in the file

    def __init__(self, runs: int, pages: int, stored: int) -> None:
        self._init(runs, pages, stored)


class SnapshotWriter:
    """Writes one snapshot: sections in order, then `commit()` (or `abort()`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        self.tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SnapshotError(f"cannot create {path}: {e.strerror}") from e
        self.pos = 0
        self.sections: list[Section] = []
        self._write(bytes(PREAMBLE_SIZE))

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view[:1 << 30])
                view = view[n:]
                self.pos += n
        except OSError as e:
            raise SnapshotError(f"writing {self.path}: {e.strerror}") from e

    def add(self, name: str, data: bytes, index: int = 0, flags: int = 0) -> None:
        """One section of raw bytes."""
        if len(name.encode()) > 16:
            raise ValueError(f"section name {name!r} is longer than 16 bytes")
        offset = self.pos
        self._write(data)
        self.sections.append(Section(name, flags, index, offset, len(data), zlib.crc32(data)))

    def add_json(self, name: str, value: object, index: int = 0) -> None:
        self.add(name, json.dumps(value, separators=(",", ":"), allow_nan=False).encode(), index)

    def add_memory(self, regions: Sequence[tuple[int, memoryview]], codec: str = "none") -> MemoryStats:
        """Guest memory: `regions` are (gpa, view) of every RAM region. Writes
        the "memory" section (pages that are not all zero) and its map."""
        if codec not in CODECS:
            raise SnapshotError(f"unknown compression {codec!r} (use {', '.join(CODECS)})")
        compress = _compressor(codec)
        pad = -self.pos % PAGE
        self._write(bytes(pad))
        start = self.pos
        runs: list[MemoryRun] = []
        pages = 0
        found = [(i, off, length) for i, (_, view) in enumerate(regions) for off, length in nonzero_runs(view)]
        for i, off, length in limit_runs(found):
            gpa, view = regions[i]
            pages += length // PAGE
            if compress is None:
                data = view[off:off + length]
                runs.append(MemoryRun(gpa + off, length, self.pos, length, zlib.crc32(data)))
                self._write(data)
                continue
            for piece in range(off, off + length, COMPRESS_RUN):
                size = min(COMPRESS_RUN, off + length - piece)
                packed = compress(bytes(view[piece:piece + size]))
                runs.append(MemoryRun(gpa + piece, size, self.pos, len(packed), zlib.crc32(packed), CODECS[codec]))
                self._write(packed)
        self.sections.append(Section(MEMORY, NO_CRC, 0, start, self.pos - start, 0))
        table = bytearray(MAP_HEADER.pack(PAGE, len(runs)))
        for r in runs:
            table += RUN.pack(r.gpa, r.length, r.offset, r.stored, r.crc, r.codec)
        self.add(MEMORY_MAP, bytes(table))
        return MemoryStats(len(runs), pages, self.pos - start - len(table))

    def commit(self, sync: bool = True) -> int:
        """Write the table and the preamble, make the file durable and move it
        to its path. Returns the file's size."""
        table = b"".join(ENTRY.pack(s.name.encode(), s.flags, s.index, s.offset, s.length, s.crc)
                         for s in self.sections)
        table_offset = self.pos
        self._write(table)
        size = self.pos
        pre = PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, table_offset, len(self.sections), zlib.crc32(table), size)
        pre += PREAMBLE_CRC.pack(zlib.crc32(pre))
        try:
            os.pwrite(self.fd, pre, 0)
            if sync:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise SnapshotError(f"writing {self.path}: {e.strerror}") from e
        if sync:
            try:
                dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError:
                pass  # the file is complete; only the rename's durability is at stake
        return size

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _compressor(codec: str) -> Callable[[bytes], bytes] | None:
    if codec == "none":
        return None
    try:
        if codec == "zstd":
            import zstandard

            return zstandard.ZstdCompressor(level=1).compress
        import lz4.frame

        return lambda data: lz4.frame.compress(data, compression_level=0, store_size=True)
    except ImportError as e:
        raise SnapshotError(f"compression {codec!r} needs the {e.name} package, which is not installed") from e


# --- reading ----------------------------------------------------------------------

class Snapshot:
    """An open snapshot file whose structure has been checked (`open`)."""

    def __init__(self, path: str, fd: int, version: int, sections: list[Section]) -> None:
        self.path = path
        self.fd = fd
        self.version = version
        self.sections = sections
        self._json: dict[tuple[str, int], object] = {}
        self._runs: list[MemoryRun] | None = None

    @classmethod
    def open(cls, path: str) -> Snapshot:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SnapshotError(f"cannot open {path}: {e.strerror}") from e
        try:
            version, sections = _read_structure(path, fd)
            snap = cls(path, fd, version, sections)
            for s in sections:  # every CRC before anything is used
                if s.name != MEMORY:
                    snap._read_checked(s)
            return snap
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def error(self, message: str) -> SnapshotError:
        """An error about this file (the message is prefixed with its path)."""
        return SnapshotError(f"{self.path}: {message}")

    def _pread(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as e:
            raise self.error(f"read failed: {e.strerror}") from e
        if len(data) != length:
            raise self.error(f"the file ended at {offset + len(data)}, inside a section: it is truncated")
        return data

    def _read_checked(self, s: Section) -> bytes:
        if s.name in (CONFIG, VM, VCPU, DEVICES) and s.length > MAX_JSON:
            raise self.error(f"section {s.name!r} is {s.length} bytes, more than a snapshot writes")
        data = self._pread(s.offset, s.length)
        if not s.flags & NO_CRC and zlib.crc32(data) != s.crc:
            raise self.error(f"section {s.name!r} (offset {s.offset}) fails its CRC check: the file is corrupt")
        return data

    def find(self, name: str) -> list[Section]:
        return [s for s in self.sections if s.name == name]

    def one(self, name: str) -> Section:
        found = self.find(name)
        if len(found) != 1:
            raise self.error(f"has {len(found)} {name!r} sections, expected one")
        return found[0]

    def json(self, s: Section) -> object:
        key = (s.name, s.offset)
        if key not in self._json:
            data = self._read_checked(s)
            try:
                self._json[key] = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise self.error(f"section {s.name!r} is not valid JSON: {e}") from e
        return self._json[key]

    def header(self) -> dict[str, object]:
        value = self.json(self.one(CONFIG))
        if not isinstance(value, dict):
            raise self.error("the config section is not a JSON object")
        return value

    # --- memory -----------------------------------------------------------------
    def memory_runs(self, regions: Sequence[tuple[int, int]]) -> list[MemoryRun]:
        """The memory map, checked against guest RAM `regions` (gpa, size)
        and the memory section's bounds."""
        if self._runs is None:
            self._runs = _parse_map(self._read_checked(self.one(MEMORY_MAP)), self.one(MEMORY), regions, self.error)
        return self._runs

    def read_run(self, run: MemoryRun, into: memoryview | None = None) -> bytes | None:
        """A run's bytes, CRC-checked and decompressed; with `into` (a view
        of `run.length` bytes) they are read straight into it."""
        if run.codec == CODEC_NONE and into is not None:
            try:
                n = os.preadv(self.fd, [into], run.offset)
            except OSError as e:
                raise self.error(f"read failed: {e.strerror}") from e
            if n != run.length:
                raise self.error(f"the file ended inside guest memory at {run.offset + n}: it is truncated")
            if zlib.crc32(into) != run.crc:
                raise self.error(f"guest memory at {run.gpa:#x} fails its CRC check: the file is corrupt")
            return None
        stored = self._pread(run.offset, run.stored)
        if zlib.crc32(stored) != run.crc:
            raise self.error(f"guest memory at {run.gpa:#x} fails its CRC check: the file is corrupt")
        data = stored if run.codec == CODEC_NONE else _decompress(run, stored, self.error)
        if into is not None:
            into[:] = data
            return None
        return data

    def verify_memory(self, regions: Sequence[tuple[int, int]]) -> None:
        """Check every run's CRC (reads all of the saved memory)."""
        for run in self.memory_runs(regions):
            if run.codec == CODEC_NONE:
                crc = 0
                for piece in range(0, run.stored, 16 << 20):
                    crc = zlib.crc32(self._pread(run.offset + piece, min(16 << 20, run.stored - piece)), crc)
                if crc != run.crc:
                    raise self.error(f"guest memory at {run.gpa:#x} fails its CRC check: the file is corrupt")
            else:
                self.read_run(run)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _read_structure(path: str, fd: int) -> tuple[int, list[Section]]:
    def error(message: str) -> SnapshotError:
        return SnapshotError(f"{path}: {message}")

    try:
        size = os.fstat(fd).st_size
        pre = os.pread(fd, PREAMBLE_SIZE, 0)
    except OSError as e:
        raise error(f"read failed: {e.strerror}") from e
    if len(pre) < len(MAGIC) or pre[:len(MAGIC)] != MAGIC:
        if pre[:4] == b"\x7fELF":
            raise error("this is an ELF kernel, not a pyvirt snapshot (use `pyvirt run --kernel`)")
        raise error("not a pyvirt snapshot (wrong magic)")
    if len(pre) < PREAMBLE_SIZE:
        raise error(f"truncated: {size} bytes, not even the {PREAMBLE_SIZE}-byte preamble")
    magic, version, flags, table_offset, count, table_crc, file_size = PREAMBLE.unpack_from(pre)
    (crc,) = PREAMBLE_CRC.unpack_from(pre, PREAMBLE.size)
    if zlib.crc32(pre[:PREAMBLE.size]) != crc:
        if size == PREAMBLE_SIZE or not any(pre[8:]):
            raise error("incomplete: the writer did not finish it (no preamble)")
        raise error("the preamble fails its CRC check: the file is corrupt")
    if version not in READABLE_VERSIONS:
        if version > FORMAT_VERSION:
            raise error(f"written in snapshot format {version} by a newer pyvirt; this pyvirt reads formats "
                        f"{', '.join(map(str, READABLE_VERSIONS))}: restore it with a newer pyvirt")
        raise error(f"snapshot format {version} is no longer supported (this pyvirt reads "
                    f"{', '.join(map(str, READABLE_VERSIONS))})")
    if flags:
        raise error(f"unknown preamble flags {flags:#x} (written by a newer pyvirt?)")
    if size != file_size:
        if size < file_size:
            raise error(f"truncated: {size} bytes of {file_size}")
        raise error(f"{size - file_size} unexpected bytes after the end ({file_size} bytes)")
    if count > MAX_SECTIONS:
        raise error(f"{count} sections is more than a snapshot has (at most {MAX_SECTIONS})")
    table_len = count * ENTRY.size
    if table_offset < PREAMBLE_SIZE or table_offset + table_len != file_size:
        raise error(f"section table at {table_offset} (+{table_len}) does not end the file ({file_size} bytes)")
    table = os.pread(fd, table_len, table_offset)
    if len(table) != table_len:
        raise error("truncated section table")
    if zlib.crc32(table) != table_crc:
        raise error("the section table fails its CRC check: the file is corrupt")
    sections = []
    for i in range(count):
        raw, sflags, index, offset, length, scrc = ENTRY.unpack_from(table, i * ENTRY.size)
        name_bytes = raw.rstrip(b"\0")
        try:
            name = name_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise error(f"section {i} has a name that is not ASCII") from None
        if not name or b"\0" in name_bytes:
            raise error(f"section {i} has no valid name")
        if sflags & ~KNOWN_FLAGS:
            raise error(f"section {name!r} has unknown flags {sflags:#x} (written by a newer pyvirt?)")
        if offset < PREAMBLE_SIZE or length > table_offset or offset > table_offset - length:
            raise error(f"section {name!r} at {offset} (+{length}) lies outside the file's data area")
        if name not in KNOWN_SECTIONS:
            if sflags & OPTIONAL:
                continue
            raise error(f"section {name!r} is not one this pyvirt knows (written by a newer pyvirt?)")
        sections.append(Section(name, sflags, index, offset, length, scrc))
    ordered = sorted(sections, key=lambda s: s.offset)
    for a, b in zip(ordered, ordered[1:]):
        if a.offset + a.length > b.offset:
            raise error(f"sections {a.name!r} and {b.name!r} overlap")
    return version, sections


def _parse_map(data: bytes, memory: Section, regions: Sequence[tuple[int, int]],
               error: Callable[[str], SnapshotError]) -> list[MemoryRun]:
    if len(data) < MAP_HEADER.size:
        raise error("the memory map is too short")
    page, count = MAP_HEADER.unpack_from(data)
    if page != PAGE:
        raise error(f"memory map for {page}-byte pages; this pyvirt uses {PAGE}")
    if count > MAX_RUNS or len(data) != MAP_HEADER.size + count * RUN.size:
        raise error(f"the memory map's length does not fit its {count} runs")
    runs = []
    end_gpa = 0
    end_file = memory.offset
    limit = memory.offset + memory.length
    bounds = sorted(regions)
    r = 0  # the region the runs have reached (they are sorted)
    for i, (gpa, length, offset, stored, crc, codec) in enumerate(RUN.iter_unpack(data[MAP_HEADER.size:])):
        if (codec not in CODEC_NAMES or length == 0 or (gpa | length) % PAGE or gpa < end_gpa
                or offset < end_file or stored > limit or offset > limit - stored):
            where = f"memory run {i} ({gpa:#x}+{length:#x})"
            if codec not in CODEC_NAMES:
                raise error(f"{where}: unknown compression {codec}")
            if length == 0 or gpa % PAGE or length % PAGE:
                raise error(f"{where}: not whole pages")
            if gpa < end_gpa:
                raise error(f"{where}: runs overlap or are out of order")
            raise error(f"{where}: its data at {offset}+{stored} is outside the memory section or overlaps "
                        "another run")
        while r < len(bounds) and gpa >= bounds[r][0] + bounds[r][1]:
            r += 1
        if r == len(bounds) or gpa < bounds[r][0] or gpa + length > bounds[r][0] + bounds[r][1]:
            raise error(f"memory run {i} ({gpa:#x}+{length:#x}): outside the guest's RAM")
        if codec == CODEC_NONE:
            if stored != length or offset % PAGE:
                raise error(f"memory run {i} ({gpa:#x}+{length:#x}): an uncompressed run must be {length} "
                            "page-aligned bytes")
        elif length > COMPRESS_RUN:
            raise error(f"memory run {i} ({gpa:#x}+{length:#x}): a compressed run longer than a snapshot writes")
        end_gpa, end_file = gpa + length, offset + stored
        runs.append(MemoryRun(gpa, length, offset, stored, crc, codec))
    return runs


def _decompress(run: MemoryRun, stored: bytes, error: Callable[[str], SnapshotError]) -> bytes:
    name = CODEC_NAMES[run.codec]
    # Never more than one byte past what the map says: a hostile run may
    # claim a page and decompress to gigabytes.
    try:
        if run.codec == CODEC_ZSTD:
            import zstandard

            with zstandard.ZstdDecompressor().stream_reader(stored) as reader:
                parts = []
                left = run.length + 1
                while left > 0 and (part := reader.read(left)):
                    parts.append(part)
                    left -= len(part)
                data = b"".join(parts)
        else:
            import lz4.frame

            d = lz4.frame.LZ4FrameDecompressor()
            data = d.decompress(stored, max_length=run.length + 1)
            if len(data) == run.length and not d.eof:
                raise ValueError("the frame does not end where the data does")
    except ImportError as e:
        raise error(f"guest memory is compressed with {name}, which needs the {e.name} package") from e
    except Exception as e:  # each library has its own error types
        raise error(f"guest memory at {run.gpa:#x} does not decompress ({name}): {e}") from e
    if len(data) != run.length:
        raise error(f"guest memory at {run.gpa:#x} decompresses to {len(data)} bytes, not {run.length}")
    return data


