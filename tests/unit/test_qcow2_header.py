"""qcow2 pure parsers: header, extensions, snapshot table, refcount blocks,
table entries. Round trips, the validation errors, and fuzzing."""

from __future__ import annotations

import dataclasses
import struct
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirt.disk.qcow2.compress import compress_cluster, decompress_cluster
from pyvirt.disk.qcow2.errors import Qcow2Error
from pyvirt.disk.qcow2.header import (EXT_BACKING_FORMAT, EXT_FEATURE_TABLE, INCOMPAT_COMPRESSION,
                                      INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, INCOMPAT_EXTL2, HeaderExtension,
                                      Qcow2Header, feature_table_extension, pack_header, parse_header)
from pyvirt.disk.qcow2.refcount import pack_refblock, unpack_refblock
from pyvirt.disk.qcow2.snapshot import (SnapshotInfo, TruncatedTable, pack_snapshot_table,
                                        parse_snapshot_table)
from pyvirt.disk.qcow2.tables import (COMPRESSED, NORMAL, OFLAG_COPIED, UNALLOCATED, ZERO_ALLOC, ZERO_PLAIN,
                                      CompressedLayout, cluster_type, dump_table, iter_entry_runs, load_table)

CS = 65536
FILE = 1 << 30


def header(**kw: object) -> Qcow2Header:
    base = dict(version=3, cluster_bits=16, size=1 << 30, l1_size=2, l1_table_offset=3 * CS,
                refcount_table_offset=CS, refcount_table_clusters=1, header_length=112, additional=bytes(8),
                extensions=(feature_table_extension(),))
    base.update(kw)
    return Qcow2Header(**base)  # type: ignore[arg-type]


def roundtrip(h: Qcow2Header) -> Qcow2Header:
    buf = pack_header(h)
    return parse_header(buf, FILE, "t.qcow2")


def test_v3_roundtrip_with_backing_and_unknown_extension() -> None:
    unknown = HeaderExtension(0x12345678, b"opaque\x00data!")
    h = header(backing_file="../base image.qcow2",
               extensions=(HeaderExtension(EXT_BACKING_FORMAT, b"qcow2"), unknown, feature_table_extension()),
               additional=bytes(8) + b"future!\0", header_length=120)
    out = roundtrip(h)
    assert out.extensions == h.extensions  # unknown ones preserved, in order
    assert out.backing_file == "../base image.qcow2" and out.backing_format == "qcow2"
    assert out.additional == h.additional and out.header_length == 120
    assert dataclasses.replace(out, backing_file_offset=0) == h
    assert out.feature_names()[(0, 0)] == "dirty bit"


def test_v2_roundtrip() -> None:
    h = header(version=2, header_length=72, additional=b"", extensions=(), backing_file="b.raw")
    out = roundtrip(h)
    assert out.version == 2 and out.refcount_order == 4 and out.backing_file == "b.raw"
    assert out.backing_file_offset == 72 + 8


def test_with_extension_replaces_adds_and_removes() -> None:
    h = header()
    h2 = h.with_extension(EXT_BACKING_FORMAT, b"raw")
    assert h2.backing_format == "raw" and h2.extensions[0].type == EXT_BACKING_FORMAT
    assert h2.with_extension(EXT_BACKING_FORMAT, b"qcow2").backing_format == "qcow2"
    assert h2.with_extension(EXT_BACKING_FORMAT, None).extensions == h.extensions


def test_header_must_fit_one_cluster() -> None:
    h = header(cluster_bits=9, extensions=(HeaderExtension(0x99, bytes(600)),))
    with pytest.raises(Qcow2Error, match="do not fit"):
        pack_header(h)


@pytest.mark.parametrize(("change", "match"), [
    (dict(version=4), "unsupported version 4"),
    (dict(cluster_bits=8), "cluster_bits 8"),
    (dict(cluster_bits=22), "cluster_bits 22"),
    (dict(size=1 << 63), "too large"),
    (dict(l1_size=1), "too small for the virtual size"),
    (dict(l1_size=5 << 20), "too large"),
    (dict(l1_table_offset=3 * CS + 8), "not aligned"),
    (dict(l1_table_offset=FILE), "outside the file"),
    (dict(refcount_table_offset=CS + 512), "refcount_table_offset"),
    (dict(refcount_table_offset=0), "refcount_table_offset"),
    (dict(refcount_table_clusters=0), "refcount_table_clusters"),
    (dict(refcount_table_clusters=1000), "refcount_table_clusters"),
    (dict(refcount_table_offset=3 * CS), "overlaps"),
    (dict(l1_table_offset=0), "outside the file"),
    (dict(nb_snapshots=1, snapshots_offset=CS + 1), "snapshots_offset"),
    (dict(nb_snapshots=70000, snapshots_offset=5 * CS), "nb_snapshots"),
    (dict(crypt_method=1), "encrypted"),
    (dict(refcount_order=7), "refcount_order"),
    (dict(incompatible_features=1 << 9), "bit 9"),
    (dict(incompatible_features=INCOMPAT_EXTL2), "extended L2"),
    (dict(incompatible_features=INCOMPAT_DATA_FILE), "external data file"),
    (dict(incompatible_features=INCOMPAT_COMPRESSION, additional=b"\x01" + bytes(7)), "zstd"),
    (dict(additional=b"\x01" + bytes(7)), "without the compression type"),
])
def test_bad_headers_are_refused(change: dict[str, object], match: str) -> None:
    h = header(**change)
    try:
        buf = pack_header(h)
    except Qcow2Error as e:
        assert match in str(e) or "fit" in str(e)
        return
    with pytest.raises(Qcow2Error, match=match) as ei:
        parse_header(buf, FILE, "t.qcow2")
    assert "t.qcow2" in str(ei.value)


def test_unknown_incompatible_bit_is_named_from_the_feature_table() -> None:
    table = HeaderExtension(EXT_FEATURE_TABLE, struct.pack(">BB46s", 0, 20, b"time travel"))
    buf = pack_header(header(incompatible_features=1 << 20, extensions=(table,)))
    with pytest.raises(Qcow2Error, match="time travel"):
        parse_header(buf, FILE)


def test_dirty_and_corrupt_bits_parse() -> None:
    h = roundtrip(header(incompatible_features=INCOMPAT_DIRTY | 2))
    assert h.dirty and h.corrupt


def test_header_field_errors_at_the_byte_level() -> None:
    good = pack_header(header())
    with pytest.raises(Qcow2Error, match="too short"):
        parse_header(good[:50], FILE)
    with pytest.raises(Qcow2Error, match="magic"):
        parse_header(b"QFI\xfa" + good[4:], FILE)
    bad = bytearray(good)
    struct.pack_into(">I", bad, 100, 100)  # header_length not a multiple of 8
    with pytest.raises(Qcow2Error, match="header_length"):
        parse_header(bytes(bad), FILE)
    bad = bytearray(good)
    struct.pack_into(">II", bad, 112, 0x77, 1 << 20)  # an extension longer than the cluster
    with pytest.raises(Qcow2Error, match="overflows"):
        parse_header(bytes(bad), FILE)
    bad = bytearray(good)
    struct.pack_into(">QI", bad, 8, 4000, 2000)  # backing name too long
    with pytest.raises(Qcow2Error, match="backing_file_size"):
        parse_header(bytes(bad), FILE)


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=600), st.integers(0, 1 << 40))
def test_fuzz_parse_header_random_bytes(buf: bytes, file_size: int) -> None:
    try:
        parse_header(b"QFI\xfb" + buf, file_size)
    except Qcow2Error:
        pass


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), max_size=12))
def test_fuzz_parse_header_mutations(flips: list[tuple[int, int]]) -> None:
    buf = bytearray(pack_header(header(backing_file="base.qcow2",
                                       extensions=(HeaderExtension(EXT_BACKING_FORMAT, b"qcow2"),
                                                   feature_table_extension()))))
    for pos, val in flips:
        if pos < len(buf):
            buf[pos] = val
    try:
        h = parse_header(bytes(buf), FILE)
    except Qcow2Error:
        return
    parse_header(pack_header(h), FILE)  # whatever parses, packs and parses again


# --- snapshot table -------------------------------------------------------------------
def snaps() -> list[SnapshotInfo]:
    return [SnapshotInfo("1", "first", 5 * CS, 2, 1700000000, 123000, 5_000_000_123, 0, 1 << 30, None,
                         bytes(24)),
            SnapshotInfo("2", "zwei ü", 6 * CS, 2, 1700000001, 0, 0, 77, 1 << 30, 5, bytes(16) + bytes(8) + b"xx")]


def test_snapshot_table_roundtrip() -> None:
    data = pack_snapshot_table(snaps())
    assert len(data) % 8 == 0
    out, n = parse_snapshot_table(data, 2, CS, FILE)
    assert n == len(data)
    assert [(s.id, s.name, s.l1_table_offset, s.vm_state_size, s.disk_size, s.icount) for s in out] == [
        ("1", "first", 5 * CS, 0, 1 << 30, None), ("2", "zwei ü", 6 * CS, 77, 1 << 30, 5)]
    assert out[1].extra[24:] == b"xx"  # unknown extra data survives
    assert out[0].info()["vm-clock-sec"] == 5 and out[0].info()["vm-clock-nsec"] == 123
    assert "icount" not in out[0].info()
    with pytest.raises(TruncatedTable):
        parse_snapshot_table(data[:-8], 2, CS, FILE)


@pytest.mark.parametrize(("field_off", "value", "match"), [
    (0, struct.pack(">Q", 5 * CS + 1), "not cluster aligned"),
    (8, struct.pack(">I", 10 << 20), "too large"),
    (36, struct.pack(">I", 5000), "extra data size"),
    (0, struct.pack(">Q", FILE), "outside the file"),
])
def test_snapshot_table_errors(field_off: int, value: bytes, match: str) -> None:
    data = bytearray(pack_snapshot_table(snaps()[:1]))
    data[field_off:field_off + len(value)] = value
    with pytest.raises(Qcow2Error, match=match):
        parse_snapshot_table(bytes(data) + bytes(10000), 1, CS, FILE)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 5))
def test_fuzz_snapshot_table(buf: bytes, nb: int) -> None:
    try:
        parse_snapshot_table(buf, nb, CS, FILE)
    except (Qcow2Error, TruncatedTable):
        pass


# --- refcount blocks and tables --------------------------------------------------------------
@pytest.mark.parametrize("order", range(7))
def test_refblock_roundtrip_all_widths(order: int) -> None:
    bits = 1 << order
    n = 512 * 8 // bits
    vals = array(unpack_refblock(bytes(512), order).typecode, [(i * 7919) % (1 << bits) for i in range(n)])
    packed = pack_refblock(vals, order)
    assert len(packed) == 512
    assert unpack_refblock(packed, order) == vals


def test_refblock_sub_byte_bit_order() -> None:
    # refcount_bits 4: the least significant nibble is the first cluster
    assert list(unpack_refblock(b"\x21", 2)) == [1, 2]
    assert list(unpack_refblock(b"\x81", 0)) == [1, 0, 0, 0, 0, 0, 0, 1]
    assert list(unpack_refblock(b"\x00\x05", 4)) == [5]


def test_table_entries() -> None:
    arr = load_table(struct.pack(">4Q", 0, 1, (1 << 63) | 0x50000, 0x40000))
    assert list(arr) == [0, 1, (1 << 63) | 0x50000, 0x40000]
    assert dump_table(arr, 1, 3) == struct.pack(">2Q", 1, (1 << 63) | 0x50000)
    assert [cluster_type(x) for x in (0, 1, 0x50001, OFLAG_COPIED | 0x50000, 1 << 62)] == [
        UNALLOCATED, ZERO_PLAIN, ZERO_ALLOC, NORMAL, COMPRESSED]
    entries = array("Q", [0, 0, 0x10000 | OFLAG_COPIED, 0x20000, 0x40000, 1, 1, 0])
    assert list(iter_entry_runs(entries, 0, 8, 16)) == [(0, 2, UNALLOCATED, 0), (2, 2, NORMAL, 0x10000),
                                                        (4, 1, NORMAL, 0x40000), (5, 2, ZERO_PLAIN, 0),
                                                        (7, 1, UNALLOCATED, 0)]


@pytest.mark.parametrize("cluster_bits", [9, 12, 16, 21])
def test_compressed_descriptor(cluster_bits: int) -> None:
    lay = CompressedLayout(cluster_bits)
    for off, length in ((0x12345, 100), (1 << 40 | 0x1ff, (1 << cluster_bits) - 1), (512, 1)):
        e = lay.encode(off, length)
        got_off, span = lay.decode(e)
        assert got_off == off and span >= length and span - length < 512
        assert cluster_type(e) == COMPRESSED
        first = (off & ~511) >> cluster_bits
        assert lay.host_clusters(e)[0] == first


def test_compress_roundtrip_and_incompressible() -> None:
    data = b"abc" * 20000 + bytes(65536 - 60000)
    packed = compress_cluster(data, 65536)
    assert packed is not None and len(packed) < 65536
    assert decompress_cluster(packed, 65536, "x") == data
    import random

    assert compress_cluster(random.Random(0).randbytes(65536), 65536) is None
    with pytest.raises(Qcow2Error, match="corrupt|yields"):
        decompress_cluster(packed[: len(packed) // 2], 65536, "x")
    with pytest.raises(Qcow2Error):
        decompress_cluster(b"\xff" * 100, 65536, "x")
