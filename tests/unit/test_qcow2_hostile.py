"""Hostile and damaged qcow2 images: a corpus of hand-corrupted headers and
tables, and a fuzzer flipping bytes of a small valid image. Opening,
reading, writing and checking them may fail only with DiskError (mostly
Qcow2Error, naming the file and the structure), and always terminates."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.disk import DiskError
from pyvirt.disk.qcow2 import Qcow2Error, Qcow2Image, create
from pyvirt.disk.qcow2.header import parse_header

CS = 4096
SIZE = 1 << 20


def build_image(path: Path) -> dict[str, int]:
    """A small image using every structure; returns where they are."""
    create(str(path), SIZE, cluster_size=CS)
    with Qcow2Image(str(path)) as img:
        img.write_from(0, [memoryview(b"\x11" * 20000)])
        img.create_snapshot("snap")
        img.write_from(8192, [memoryview(b"\x22" * 5000)])
        img.write_compressed_cluster(100, b"\x33" * CS)
        img.write_from(SIZE - 4096, [memoryview(b"\x44" * 4096)])
    h = parse_header(path.read_bytes()[:CS], path.stat().st_size)
    data = path.read_bytes()
    l1 = h.l1_table_offset
    l2 = struct.unpack_from(">Q", data, l1)[0] & 0x00FFFFFFFFFFFE00
    rb = struct.unpack_from(">Q", data, h.refcount_table_offset)[0]
    return {"l1": l1, "l2": l2, "rt": h.refcount_table_offset, "rb": rb, "snap": h.snapshots_offset,
            "end": len(data)}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, int]]:
    path = tmp_path_factory.mktemp("hostile") / "good.qcow2"
    where = build_image(path)
    return path.read_bytes(), where


def exercise(path: Path, writable: bool = True) -> None:
    """Everything a user might do; DiskError is the only acceptable failure."""
    try:
        with Qcow2Image(str(path), readonly=True) as img:
            buf = bytearray(img.size if img.size <= 64 << 20 else 1 << 20)
            img.read_into(0, [memoryview(buf)])
            img.allocation(0, img.size)
            img.block_status(0, min(img.size, 64 << 20))
            img.info()
            img.snapshots()
            img.check()
    except DiskError:
        pass
    if not writable:
        return
    try:
        with Qcow2Image(str(path)) as img:
            n = min(img.size, 3 * CS)
            img.write_from(0, [memoryview(b"w" * n)])
            img.write_zeroes(0, n, True)
            img.discard(0, min(img.size, 8 * CS))
            img.write_from(img.size // 2 & ~511, [memoryview(b"m" * min(512, img.size))]) if img.size >= 1024 else None
            img.flush()
            if img.snapshots():
                img.apply_snapshot(img.snapshots()[0].id)
            img.check(repair=True)
    except DiskError:
        pass


def mutate(pristine: tuple[bytes, dict[str, int]], tmp_path: Path,
           fn: Callable[[bytearray, dict[str, int]], bytearray | None]) -> Path:
    data = bytearray(pristine[0])
    out = fn(data, pristine[1])
    path = tmp_path / "bad.qcow2"
    path.write_bytes(bytes(out if out is not None else data))
    return path


def put(fmt: str, off: int, *vals: int) -> Callable[[bytearray, dict[str, int]], None]:
    def f(d: bytearray, w: dict[str, int]) -> None:
        struct.pack_into(fmt, d, off, *vals)
    return f


def at(key: str, fmt: str, delta: int, *vals: int) -> Callable[[bytearray, dict[str, int]], None]:
    def f(d: bytearray, w: dict[str, int]) -> None:
        struct.pack_into(fmt, d, w[key] + delta, *vals)
    return f


# (name, mutation, pattern the open/read error must match, or None when opening may succeed)
CORPUS: list[tuple[str, Callable[[bytearray, dict[str, int]], bytearray | None], str | None]] = [
    ("empty file", lambda d, w: bytearray(), "too short"),
    ("truncated header", lambda d, w: d[:60], "too short"),
    ("truncated before the tables", lambda d, w: d[:CS + 100], "outside the file"),
    ("truncated inside the data", lambda d, w: d[:w["end"] - 3000], None),
    ("bad magic", put(">4s", 0, b"QFI\0"), "magic"),
    ("version 1", put(">I", 4, 1), "version"),
    ("cluster_bits 0", put(">I", 20, 0), "cluster_bits"),
    ("cluster_bits 63", put(">I", 20, 63), "cluster_bits"),
    ("cluster_bits 8", put(">I", 20, 8), "cluster_bits"),
    ("size 2^63", put(">Q", 24, 1 << 63), "too large"),
    ("size beyond the L1 table", put(">Q", 24, 1 << 40), "too small"),
    ("size 2^64-1", put(">Q", 24, (1 << 64) - 1), "too large"),
    ("L1 size absurd", put(">I", 36, 0xFFFFFFFF), "l1_size"),
    ("L1 size past the file", put(">I", 36, 1 << 20), "outside the file"),
    ("L1 offset unaligned", put(">Q", 40, CS * 3 + 8), "aligned"),
    ("L1 offset beyond EOF", put(">Q", 40, 1 << 40), "outside the file"),
    ("L1 table on the header", put(">Q", 40, 0), "outside the file|overlaps"),
    ("L1 table on the refcount table", lambda d, w: struct.pack_into(">Q", d, 40, w["rt"]), "overlaps"),
    ("refcount table unaligned", put(">Q", 48, CS + 512), "refcount_table_offset"),
    ("refcount table beyond EOF", put(">Q", 48, 1 << 40), "outside the file"),
    ("refcount table of 0 clusters", put(">I", 56, 0), "refcount_table_clusters"),
    ("refcount table huge", put(">I", 56, 1 << 30), "refcount_table_clusters"),
    ("snapshot count absurd", put(">I", 60, 0xFFFFFFFF), "nb_snapshots"),
    ("snapshot table beyond EOF", put(">Q", 64, 1 << 40), "snapshots_offset"),
    ("snapshot table unaligned", put(">Q", 64, CS + 8), "snapshots_offset"),
    ("more snapshots than the table holds", put(">I", 60, 5000), "snapshot table"),
    ("snapshot L1 beyond EOF", at("snap", ">Q", 0, 1 << 40), "outside the file"),
    ("snapshot L1 size absurd", at("snap", ">I", 8, 0xFFFFFFFF), "too large"),
    ("snapshot extra data absurd", at("snap", ">I", 36, 0xFFFFFFFF), "extra data"),
    ("snapshot L1 = active L1", lambda d, w: struct.pack_into(">Q", d, w["snap"], w["l1"]), None),
    ("unknown incompatible feature", put(">Q", 72, 1 << 33), "bit 33"),
    ("extended L2", put(">Q", 72, 1 << 4), "extended L2"),
    ("encryption", put(">I", 32, 2), "encrypted"),
    ("refcount order 9", put(">I", 96, 9), "refcount_order"),
    ("header length 96", put(">I", 100, 96), "header_length"),
    ("header length past the cluster", put(">I", 100, CS + 8), "header_length"),
    ("extension overflowing", put(">II", 112, 0x1234, 0xFFFFFF), "overflows"),
    ("backing name past the cluster", put(">QI", 8, CS - 4, 100), "backing"),
    ("backing name too long", put(">QI", 8, 200, 2000), "backing_file_size|overflows"),
    ("backing file missing", put(">QI4s", 8, 0x500, 4, b"nope"), None),
    ("L1 entry beyond EOF", at("l1", ">Q", 0, (1 << 63) | (1 << 40)), None),
    ("L1 entry unaligned", at("l1", ">Q", 0, (1 << 63) | 0x10200), None),
    ("L1 entry on the header", at("l1", ">Q", 8, 1 << 63 | 0), None),
    ("L1 entry on the L1 table", lambda d, w: struct.pack_into(">Q", d, w["l1"], (1 << 63) | w["l1"]), None),
    ("every L1 entry on one table", lambda d, w: [struct.pack_into(">Q", d, w["l1"] + 8 * i, (1 << 63) | w["l2"])
                                                for i in range(1)] and None, None),
    ("L2 entry beyond EOF", at("l2", ">Q", 0, (1 << 63) | (1 << 45)), None),
    ("L2 entry unaligned", at("l2", ">Q", 0, (1 << 63) | 0x5200), None),
    ("L2 entry on the header", at("l2", ">Q", 0, (1 << 63) | 0), None),
    ("L2 entry on the refcount table", lambda d, w: struct.pack_into(">Q", d, w["l2"], (1 << 63) | w["rt"]), None),
    ("compressed entry beyond EOF", at("l2", ">Q", 8, (1 << 62) | (1 << 40)), None),
    ("compressed entry with garbage", lambda d, w: struct.pack_into(">Q", d, w["l2"] + 8, (1 << 62) | w["rt"]),
     None),
    ("refcount block unaligned", at("rt", ">Q", 0, 0x1200), None),
    ("refcount block beyond EOF", at("rt", ">Q", 0, 1 << 40), None),
    ("refcount block missing", at("rt", ">Q", 0, 0), None),
    ("all refcounts zero", lambda d, w: d[:w["rb"]] + bytes(CS) + d[w["rb"] + CS:], None),
    ("all refcounts full", lambda d, w: d[:w["rb"]] + b"\xff" * CS + d[w["rb"] + CS:], None),
    ("dirty bit on garbage refcounts", lambda d, w: (struct.pack_into(">Q", d, 72, 1),
                                                     d.__setitem__(slice(w["rb"], w["rb"] + CS), b"\x07" * CS)) and None,
     None),
]


@pytest.mark.parametrize(("name", "fn", "match"), CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus(pristine: tuple[bytes, dict[str, int]], tmp_path: Path, name: str,
                fn: Callable[[bytearray, dict[str, int]], bytearray | None], match: str | None) -> None:
    path = mutate(pristine, tmp_path, fn)
    if match is not None:
        with pytest.raises(Qcow2Error, match=match) as ei:
            Qcow2Image(str(path), readonly=True)
        assert str(path) in str(ei.value)
    size_before = path.stat().st_size if path.exists() else 0
    exercise(path)
    # never written far outside the file
    assert path.stat().st_size <= max(size_before, pristine[1]["end"]) + 2048 * CS


def test_all_refcounts_full_refuses_to_allocate(pristine: tuple[bytes, dict[str, int]], tmp_path: Path) -> None:
    path = mutate(pristine, tmp_path, lambda d, w: d[:w["rb"]] + b"\xff" * CS + d[w["rb"] + CS:])
    with Qcow2Image(str(path)) as img:
        img.write_from(SIZE - 4096, [memoryview(b"x" * 10)])  # in place, no allocation: fine
        with pytest.raises(Qcow2Error, match="refcount"):
            img.write_from(200 * CS, [memoryview(b"x" * 10)])


def test_data_cluster_on_metadata_is_refused(pristine: tuple[bytes, dict[str, int]], tmp_path: Path) -> None:
    path = mutate(pristine, tmp_path, lambda d, w: struct.pack_into(">Q", d, w["l2"], (1 << 63) | w["rt"]))
    with Qcow2Image(str(path)) as img:
        with pytest.raises(Qcow2Error, match="overlaps the refcount table"):
            img.write_from(0, [memoryview(b"x")])
    with Qcow2Image(str(path), readonly=True) as img:
        res = img.check()
        assert res.corruptions and res.exit_code == 2


def test_self_backing_and_loops(tmp_path: Path) -> None:
    create(str(tmp_path / "self.qcow2"), SIZE, backing_file="self.qcow2", backing_format="qcow2")
    with pytest.raises(Qcow2Error, match="loops"):
        Qcow2Image(str(tmp_path / "self.qcow2"), readonly=True)
    with pytest.raises(Qcow2Error, match="loops"):
        Qcow2Image(str(tmp_path / "self.qcow2"))
    create(str(tmp_path / "a.qcow2"), SIZE, backing_file="b.qcow2")
    create(str(tmp_path / "b.qcow2"), SIZE, backing_file=str(tmp_path / "a.qcow2"))
    with pytest.raises(Qcow2Error, match="loops"):
        Qcow2Image(str(tmp_path / "a.qcow2"), readonly=True)
    os.symlink("a.qcow2", tmp_path / "link.qcow2")
    create(str(tmp_path / "c.qcow2"), SIZE, backing_file="link.qcow2")
    with pytest.raises(Qcow2Error, match="loops"):
        Qcow2Image(str(tmp_path / "c.qcow2"), readonly=True)
    with Qcow2Image(str(tmp_path / "self.qcow2"), backing=False) as img:
        assert img.backing is None


def test_deep_chain_is_refused(tmp_path: Path) -> None:
    create(str(tmp_path / "0.qcow2"), SIZE)
    for i in range(1, 70):
        create(str(tmp_path / f"{i}.qcow2"), SIZE, backing_file=f"{i - 1}.qcow2", backing_format="qcow2")
    with Qcow2Image(str(tmp_path / "60.qcow2"), readonly=True) as img:
        assert img.read_into(0, [memoryview(bytearray(10))]) == 10
    with pytest.raises(Qcow2Error, match="deeper than 64"):
        Qcow2Image(str(tmp_path / "69.qcow2"), readonly=True)


def test_unsupported_backing_format(tmp_path: Path) -> None:
    create(str(tmp_path / "t.qcow2"), SIZE, backing_file="x.vmdk")
    data = bytearray((tmp_path / "t.qcow2").read_bytes())
    i = data.index(b"x.vmdk")
    exts = struct.pack(">II4s4x", 0xE2792ACA, 4, b"vmdk")
    data[112:112 + len(exts)] = exts  # a backing format extension in front of the table
    (tmp_path / "t.qcow2").write_bytes(bytes(data))
    assert i > 0
    try:
        Qcow2Image(str(tmp_path / "t.qcow2"), readonly=True).close()
    except Qcow2Error as e:
        assert "vmdk" in str(e) or "header" in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 12 * CS), st.integers(0, 255)), min_size=1, max_size=8),
       st.booleans())
def test_fuzz_flipped_bytes(pristine: tuple[bytes, dict[str, int]], tmp_path: Path,
                            flips: list[tuple[int, int]], write: bool) -> None:
    data = bytearray(pristine[0])
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    path = tmp_path / "fuzz.qcow2"
    path.write_bytes(bytes(data))
    exercise(path, writable=write)
    assert path.stat().st_size <= len(data) + 2048 * CS
