"""The qcow2 header: the first cluster's bytes as a frozen dataclass, and back.

Pure code, no I/O: `parse_header(buf, file_size, path)` validates everything
a header alone can tell (field ranges, alignment, tables inside the file,
overlapping fixed metadata, feature bits) and raises Qcow2Error naming the
field and offset; `pack_header(h)` lays a header out again: the fixed
fields, the additional fields it was read with (preserved, as the spec asks
of unknown ones), the header extensions in their original order (unknown
ones preserved) and the backing file name after them, all in cluster 0.

Layout (docs/interop/qcow2.txt, all big endian):
    0 magic "QFI\\xfb"        4 version (2, 3)      8 backing_file_offset
   16 backing_file_size       20 cluster_bits       24 size
   32 crypt_method            36 l1_size            40 l1_table_offset
   48 refcount_table_offset   56 refcount_table_clusters
   60 nb_snapshots            64 snapshots_offset   (v2 ends at 72)
   72 incompatible_features   80 compatible_features
   88 autoclear_features      96 refcount_order     100 header_length
  104 compression_type (optional, with zero padding to header_length)
Extensions: u32 type, u32 length, data padded to 8 bytes; type 0 ends them.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from dataclasses import dataclass

from .errors import Qcow2Error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MAGIC = b"QFI\xfb"
V2_HEADER_LENGTH = 72
V3_MIN_HEADER_LENGTH = 104
V3_HEADER_LENGTH = 112  # with compression_type and its padding, as qemu writes it

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21  # 2 MiB: qemu's limit too
MAX_L1_BYTES = 32 << 20  # qemu's limits, which also cap our memory use
MAX_REFTABLE_BYTES = 8 << 20
MAX_BACKING_NAME = 1023
MAX_SNAPSHOTS = 65536
MAX_VIRTUAL_SIZE = (1 << 63) - 1

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

FEATURE_INCOMPAT, FEATURE_COMPAT, FEATURE_AUTOCLEAR = 0, 1, 2
# The feature name table pyvirt writes into new images (type, bit, name).
FEATURE_NAMES: tuple[tuple[int, int, str], ...] = (
    (FEATURE_INCOMPAT, 0, "dirty bit"),
    (FEATURE_INCOMPAT, 1, "corrupt bit"),
    (FEATURE_INCOMPAT, 2, "external data file"),
    (FEATURE_INCOMPAT, 3, "compression type"),
    (FEATURE_INCOMPAT, 4, "extended L2 entries"),
    (FEATURE_COMPAT, 0, "lazy refcounts"),
    (FEATURE_AUTOCLEAR, 0, "bitmaps"),
    (FEATURE_AUTOCLEAR, 1, "raw external data"),
)

_FIXED = struct.Struct(">4sIQIIQIIQQIIQ")  # bytes 0..71
_V3 = struct.Struct(">QQQII")  # bytes 72..103
_EXT = struct.Struct(">II")


@dataclass(frozen=True)
class HeaderExtension:
    """One header extension, kept as raw bytes so unknown ones round-trip."""

    type: int
    data: bytes


@dataclass(frozen=True)
class Qcow2Header:
    """A parsed qcow2 header (the fields of the spec, plus what follows them
    in cluster 0: extensions and the backing file name)."""

    version: int
    cluster_bits: int
    size: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    crypt_method: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V2_HEADER_LENGTH
    additional: bytes = b""  # bytes 104..header_length (compression_type, padding, unknown fields)
    extensions: tuple[HeaderExtension, ...] = ()
    backing_file: str | None = None
    backing_file_offset: int = 0  # where the name was read from (pack_header recomputes it)

    # --- derived values ---------------------------------------------------------
    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_bits(self) -> int:
        return self.cluster_bits - 3

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def compression_type(self) -> int:
        return self.additional[0] if self.additional else 0

    @property
    def dirty(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_DIRTY)

    @property
    def corrupt(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_CORRUPT)

    @property
    def lazy_refcounts(self) -> bool:
        return bool(self.compatible_features & COMPAT_LAZY_REFCOUNTS)

    def extension(self, ext_type: int) -> bytes | None:
        for ext in self.extensions:
            if ext.type == ext_type:
                return ext.data
        return None

    @property
    def backing_format(self) -> str | None:
        data = self.extension(EXT_BACKING_FORMAT)
        return None if data is None else data.decode("ascii", "replace")

    def feature_names(self) -> dict[tuple[int, int], str]:
        """{(feature type, bit): name} from the feature name table, if any."""
        data = self.extension(EXT_FEATURE_TABLE) or b""
        names = {}
        for i in range(0, len(data) - 47, 48):
            names[(data[i], data[i + 1])] = data[i + 2:i + 48].split(b"\0", 1)[0].decode("ascii", "replace")
        return names

    def with_extension(self, ext_type: int, data: bytes | None) -> Qcow2Header:
        """A copy with extension `ext_type` replaced (in place), added (first) or removed (None)."""
        exts = list(self.extensions)
        idx = next((i for i, e in enumerate(exts) if e.type == ext_type), None)
        if data is None:
            if idx is not None:
                del exts[idx]
        elif idx is None:
            exts.insert(0, HeaderExtension(ext_type, data))
        else:
            exts[idx] = HeaderExtension(ext_type, data)
        return dataclasses.replace(self, extensions=tuple(exts))


def feature_table_extension() -> HeaderExtension:
    data = b"".join(struct.pack(">BB46s", kind, bit, name.encode()) for kind, bit, name in FEATURE_NAMES)
    return HeaderExtension(EXT_FEATURE_TABLE, data)


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[1] > 0 and b[1] > 0 and a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def l1_entries_needed(size: int, cluster_bits: int) -> int:
    """L1 entries that map a disk of `size` bytes."""
    span = 1 << (2 * cluster_bits - 3)  # bytes one L2 table maps
    return -(-size // span)


def parse_header(buf: bytes, file_size: int, path: str = "qcow2 image") -> Qcow2Header:
    """Parse and validate the header in `buf` (the file's first cluster, or
    as much of it as the file has). Raises Qcow2Error."""

    def bad(what: str) -> Qcow2Error:
        return Qcow2Error(f"{path}: qcow2 header: {what}")

    if len(buf) < V2_HEADER_LENGTH:
        raise bad(f"the file is too short for a qcow2 header ({len(buf)} bytes)")
    (magic, version, backing_off, backing_len, cluster_bits, size, crypt, l1_size, l1_off,
     rt_off, rt_clusters, nb_snap, snap_off) = _FIXED.unpack_from(buf)
    if magic != MAGIC:
        raise bad("bad magic (not a qcow2 image)")
    if version not in (2, 3):
        raise bad(f"unsupported version {version} (pyvirt reads versions 2 and 3)")
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise bad(f"cluster_bits {cluster_bits} at offset 0x14 is out of range "
                  f"({MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}: 512 bytes to 2 MiB clusters)")
    cs = 1 << cluster_bits
    incompat = compat = autoclear = 0
    refcount_order, header_length, additional = 4, V2_HEADER_LENGTH, b""
    if version == 3:
        if len(buf) < V3_MIN_HEADER_LENGTH:
            raise bad("the file is too short for a version 3 header")
        incompat, compat, autoclear, refcount_order, header_length = _V3.unpack_from(buf, 72)
        if header_length < V3_MIN_HEADER_LENGTH or header_length % 8:
            raise bad(f"header_length {header_length} at offset 0x64 must be a multiple of 8, at least 104")
        if header_length > min(cs, len(buf)):
            raise bad(f"header_length {header_length} exceeds the first cluster or the file")
        if refcount_order > 6:
            raise bad(f"refcount_order {refcount_order} at offset 0x60 is out of range (0..6)")
        additional = bytes(buf[V3_MIN_HEADER_LENGTH:header_length])

    names: dict[tuple[int, int], str] = {}
    exts = _parse_extensions(buf, version, header_length, backing_off, cs, bad)
    for ext in exts:
        if ext.type == EXT_FEATURE_TABLE:
            names = Qcow2Header(2, 9, 0, 0, 0, 0, 0, extensions=(ext,)).feature_names()

    # Incompatible features: refuse what we cannot honour, naming the feature.
    unknown = incompat & ~INCOMPAT_KNOWN
    if unknown:
        bits = [b for b in range(64) if unknown >> b & 1]
        labels = ", ".join(f"bit {b} ({names[(0, b)]})" if (0, b) in names else f"bit {b}" for b in bits)
        raise bad(f"unsupported incompatible features: {labels}")
    if incompat & INCOMPAT_DATA_FILE:
        raise bad("the image uses an external data file, which pyvirt does not support")
    if incompat & INCOMPAT_EXTL2:
        raise bad("the image uses extended L2 entries (subclusters), which pyvirt does not support; "
                  "convert it with 'qemu-img convert -O qcow2'")
    comp_type = additional[0] if additional else 0
    if incompat & INCOMPAT_COMPRESSION:
        if comp_type == 0:
            raise bad("the compression type bit is set but compression_type is zlib (0)")
        kind = {1: "zstd"}.get(comp_type, f"type {comp_type}")
        raise bad(f"the image uses {kind} compression; pyvirt supports only zlib")
    if comp_type != 0:
        raise bad(f"compression_type {comp_type} is set without the compression type feature bit")
    if crypt != 0:
        raise bad(f"the image is encrypted (crypt_method {crypt}), which pyvirt does not support")
    if any(e.type in (EXT_CRYPTO, EXT_DATA_FILE) for e in exts):
        raise bad("an encryption or data-file header extension is present without its feature")

    if size > MAX_VIRTUAL_SIZE:
        raise bad(f"virtual size {size:#x} at offset 0x18 is too large")
    if l1_size * 8 > MAX_L1_BYTES:
        raise bad(f"l1_size {l1_size} at offset 0x24 is too large (limit {MAX_L1_BYTES // 8} entries)")
    if l1_size < l1_entries_needed(size, cluster_bits):
        raise bad(f"the L1 table ({l1_size} entries) is too small for the virtual size {size:#x}")
    if l1_off % cs:
        raise bad(f"l1_table_offset {l1_off:#x} is not aligned to the cluster size")
    if l1_size and (l1_off == 0 or l1_off + l1_size * 8 > file_size):
        raise bad(f"the L1 table at {l1_off:#x} ({l1_size} entries) is outside the file ({file_size:#x} bytes)")
    if rt_off == 0 or rt_off % cs:
        raise bad(f"refcount_table_offset {rt_off:#x} is not a non-zero multiple of the cluster size")
    if rt_clusters == 0 or rt_clusters * cs > MAX_REFTABLE_BYTES:
        raise bad(f"refcount_table_clusters {rt_clusters} is out of range")
    if rt_off + rt_clusters * cs > file_size:
        raise bad(f"the refcount table at {rt_off:#x} ({rt_clusters} clusters) is outside the file "
                  f"({file_size:#x} bytes)")
    if nb_snap > MAX_SNAPSHOTS:
        raise bad(f"nb_snapshots {nb_snap} is too large")
    if nb_snap and (snap_off == 0 or snap_off % cs or snap_off >= file_size):
        raise bad(f"snapshots_offset {snap_off:#x} is not a cluster inside the file")
    regions = {"the header": (0, cs), "the L1 table": (l1_off, l1_size * 8),
               "the refcount table": (rt_off, rt_clusters * cs)}
    if nb_snap:
        regions["the snapshot table"] = (snap_off, 1)
    items = list(regions.items())
    for i, (name_a, a) in enumerate(items):
        for name_b, b in items[i + 1:]:
            if _overlaps(a, b):
                raise bad(f"{name_a} ({a[0]:#x}) overlaps {name_b} ({b[0]:#x})")

    backing = None
    if backing_off:
        if backing_len == 0 or backing_len > MAX_BACKING_NAME:
            raise bad(f"backing_file_size {backing_len} is out of range (1..{MAX_BACKING_NAME})")
        if backing_off + backing_len > min(cs, len(buf)):
            raise bad(f"the backing file name at {backing_off:#x} lies outside the first cluster")
        raw_name = bytes(buf[backing_off:backing_off + backing_len])
        if b"\0" in raw_name:
            raise bad("the backing file name contains a NUL byte")
        backing = os.fsdecode(raw_name)
    fmt = next((e.data for e in exts if e.type == EXT_BACKING_FORMAT), None)
    if fmt is not None and (len(fmt) > MAX_BACKING_NAME or b"\0" in fmt):
        raise bad("the backing format extension is malformed")
    return Qcow2Header(version=version, cluster_bits=cluster_bits, size=size, l1_size=l1_size,
                       l1_table_offset=l1_off, refcount_table_offset=rt_off,
                       refcount_table_clusters=rt_clusters, nb_snapshots=nb_snap, snapshots_offset=snap_off,
                       crypt_method=crypt, incompatible_features=incompat, compatible_features=compat,
                       autoclear_features=autoclear, refcount_order=refcount_order,
                       header_length=header_length, additional=additional, extensions=tuple(exts),
                       backing_file=backing, backing_file_offset=backing_off if backing is not None else 0)


def _parse_extensions(buf: bytes, version: int, header_length: int, backing_off: int, cs: int,
                      bad: Callable[[str], Qcow2Error]) -> list[HeaderExtension]:
    start = V2_HEADER_LENGTH if version == 2 else header_length
    end = min(len(buf), cs)
    if backing_off and start < backing_off < end:
        end = backing_off
    exts: list[HeaderExtension] = []
    seen: set[int] = set()
    off = start
    while off + 8 <= end:
        ext_type, length = _EXT.unpack_from(buf, off)
        if ext_type == EXT_END:
            break
        if off + 8 + length > end:
            raise bad(f"header extension {ext_type:#x} at {off:#x} ({length} bytes) overflows the header area")
        if ext_type in (EXT_BACKING_FORMAT, EXT_FEATURE_TABLE, EXT_BITMAPS) and ext_type in seen:
            raise bad(f"header extension {ext_type:#x} appears twice")
        seen.add(ext_type)
        exts.append(HeaderExtension(ext_type, bytes(buf[off + 8:off + 8 + length])))
        off += 8 + ((length + 7) & ~7)
    return exts


def pack_header(h: Qcow2Header) -> bytes:
    """The bytes of cluster 0's used part: fixed fields, additional fields,
    extensions, end marker, backing file name. Raises Qcow2Error if they do
    not fit in one cluster."""
    cs = h.cluster_size
    if h.version == 2:
        header_length, tail = V2_HEADER_LENGTH, b""
    else:
        header_length = max(V3_MIN_HEADER_LENGTH, h.header_length)
        tail = h.additional.ljust(header_length - V3_MIN_HEADER_LENGTH, b"\0")[:header_length - V3_MIN_HEADER_LENGTH]
    parts = []
    for ext in h.extensions:
        pad = -len(ext.data) % 8
        parts.append(_EXT.pack(ext.type, len(ext.data)) + ext.data + bytes(pad))
    ext_bytes = b"".join(parts) + _EXT.pack(EXT_END, 0)
    name = os.fsencode(h.backing_file) if h.backing_file is not None else b""
    if len(name) > MAX_BACKING_NAME:
        raise Qcow2Error(f"backing file name {h.backing_file!r} is longer than {MAX_BACKING_NAME} bytes")
    backing_off = header_length + len(ext_bytes) if name else 0
    total = header_length + len(ext_bytes) + len(name)
    if total > cs:
        raise Qcow2Error(f"the qcow2 header, its extensions and the backing file name ({total} bytes) "
                         f"do not fit in one cluster ({cs} bytes)")
    fixed = _FIXED.pack(MAGIC, h.version, backing_off, len(name), h.cluster_bits, h.size, h.crypt_method,
                        h.l1_size, h.l1_table_offset, h.refcount_table_offset, h.refcount_table_clusters,
                        h.nb_snapshots, h.snapshots_offset)
    if h.version == 3:
        fixed += _V3.pack(h.incompatible_features, h.compatible_features, h.autoclear_features,
                          h.refcount_order, header_length) + tail
    return fixed + ext_bytes + name
