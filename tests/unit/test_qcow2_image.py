"""Qcow2Image as a block backend: I/O against a bytearray model, zero and
discard semantics, backing files, compressed clusters, resize, locking,
header features; every image written is cross-checked with qemu-img."""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import pytest
from test_qcow2_util import (KiB, MiB, assert_clean, assert_same_as_raw, needs_qemu, pattern, qemu_check,
                             qemu_img, qemu_io, qemu_raw, read_all, write)

from pyvirt.disk import DiskError, open_disk
from pyvirt.disk.qcow2 import Qcow2Error, Qcow2Image, create, open_image
from pyvirt.disk.raw import RawBackend

pytestmark = needs_qemu


def random_ops(img: Qcow2Image, model: bytearray, rnd: random.Random, count: int, backing: bytes | None = None) -> None:
    """Writes, zero-writes and discards on `img` and on the model alike."""
    size, cs = img.size, img.cluster_size
    for _ in range(count):
        off = rnd.randrange(size)
        n = rnd.randrange(1, min(size - off, 3 * cs) + 1)
        op = rnd.random()
        if op < 0.6:
            data = rnd.randbytes(n) if rnd.random() < 0.3 else bytes([rnd.randrange(1, 256)]) * n
            write(img, off, data)
            model[off:off + n] = data
        elif op < 0.8:
            img.write_zeroes(off, n, rnd.random() < 0.5)
            model[off:off + n] = bytes(n)
        else:
            img.discard(off, n)
            a, b = -(-off // cs) * cs, (off + n) // cs * cs
            if off + n == size:
                b = size
            if a < b:
                if backing is not None and img.version == 2:
                    model[a:b] = backing[a:b].ljust(b - a, b"\0")
                else:
                    model[a:b] = bytes(b - a)
        if rnd.random() < 0.1:
            img.flush()


@pytest.mark.parametrize(("version", "cluster_size"), [(2, 4 * KiB), (3, 4 * KiB), (2, 64 * KiB), (3, 64 * KiB),
                                                        (3, 2 * MiB), (3, 512)])
def test_random_io_matches_model_and_qemu(tmp_path: Path, version: int, cluster_size: int) -> None:
    path = tmp_path / "t.qcow2"
    size = 24 * MiB + 3 * 512  # not a multiple of the cluster size
    create(str(path), size, cluster_size=cluster_size, version=version)
    model = bytearray(size)
    with Qcow2Image(str(path)) as img:
        random_ops(img, model, random.Random(cluster_size + version), 150)
        assert read_all(img) == model
    with Qcow2Image(str(path), readonly=True) as img:
        assert read_all(img) == model
        ours = img.check().qemu_json(str(path))
    assert assert_clean(path) == ours
    assert_same_as_raw(path, model, tmp_path)


@pytest.mark.parametrize("refcount_bits", [1, 2, 4, 8, 32, 64])
def test_other_refcount_widths(tmp_path: Path, refcount_bits: int) -> None:
    path = tmp_path / "r.qcow2"
    create(str(path), 8 * MiB, cluster_size=4096, refcount_bits=refcount_bits)
    model = bytearray(8 * MiB)
    with Qcow2Image(str(path)) as img:
        random_ops(img, model, random.Random(refcount_bits), 60)
    assert_clean(path)
    assert_same_as_raw(path, model, tmp_path)
    assert json.loads(qemu_img("info", "--output", "json", path).stdout)["format-specific"]["data"][
        "refcount-bits"] == refcount_bits


def test_refcount_table_grows_and_moves(tmp_path: Path) -> None:
    path = tmp_path / "g.qcow2"
    create(str(path), 40 * MiB, cluster_size=512)  # one table cluster covers 8 MiB of 512-byte clusters
    data = pattern(20 * MiB)
    with Qcow2Image(str(path)) as img:
        rt_before = img.header.refcount_table_offset
        for off in range(0, len(data), 1 * MiB):
            write(img, off, data[off:off + MiB])
        assert img.header.refcount_table_offset != rt_before
        assert img.header.refcount_table_clusters > 1
        assert read_all(img, 0, len(data)) == data
    assert_clean(path)
    assert_same_as_raw(path, data + bytes(20 * MiB), tmp_path)


def test_contiguous_clusters_move_in_one_syscall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.qcow2"
    create(str(path), 4 * MiB)
    with Qcow2Image(str(path)) as img:
        write(img, 0, pattern(1 * MiB))  # 16 fresh clusters: allocated together
        calls: list[str] = []
        real_preadv, real_pwritev = os.preadv, os.pwritev
        monkeypatch.setattr(os, "preadv", lambda *a: calls.append("preadv") or real_preadv(*a))
        monkeypatch.setattr(os, "pwritev", lambda *a: calls.append("pwritev") or real_pwritev(*a))
        bufs = [bytearray(4096) for _ in range(200)]
        img.read_into(4096, [memoryview(b) for b in bufs])
        assert calls == ["preadv"]
        calls.clear()
        img.write_from(8192, [memoryview(b) for b in bufs])  # in place: COPIED clusters
        assert calls == ["pwritev"]
        calls.clear()
        write(img, 2 * MiB + 100, b"x" * (3 * 65536))  # 4 new clusters with COW head and tail
        assert calls == ["pwritev"]
        monkeypatch.undo()
    assert_clean(path)


def test_multiple_views_and_bounds(tmp_path: Path) -> None:
    path = tmp_path / "v.qcow2"
    create(str(path), 1 * MiB, cluster_size=4096)
    with Qcow2Image(str(path)) as img:
        assert img.size == MiB and img.cluster_size == 4096 and img.version == 3 and not img.readonly
        parts = [b"a" * 100, b"", b"b" * 5000, b"c" * 3]
        assert img.write_from(4000, [memoryview(p) for p in parts]) == 5103
        out = [bytearray(1), bytearray(5102)]
        img.read_into(4000, [memoryview(b) for b in out])
        assert b"".join(out) == b"".join(parts)
        with pytest.raises(DiskError, match="outside the disk"):
            img.read_into(MiB - 10, [memoryview(bytearray(11))])
        with pytest.raises(DiskError, match="outside the disk"):
            img.write_from(-1, [memoryview(b"x")])
    with Qcow2Image(str(path), readonly=True) as img:
        with pytest.raises(DiskError, match="read-only"):
            write(img, 0, b"x")
        with pytest.raises(DiskError, match="read-only"):
            img.discard(0, 4096)


def test_zero_clusters_v3_and_v2(tmp_path: Path) -> None:
    for version in (2, 3):
        path = tmp_path / f"z{version}.qcow2"
        create(str(path), 1 * MiB, version=version)
        with Qcow2Image(str(path)) as img:
            write(img, 0, b"\xff" * MiB)
            img.write_zeroes(0, 65536, may_unmap=False)
            img.write_zeroes(65536, 65536, may_unmap=True)
            img.write_zeroes(3 * 65536 + 5, 10, may_unmap=True)
            kinds = [(e.start, e.kind) for e in img.allocation(0, 4 * 65536)]
            if version == 3:
                assert kinds == [(0, "zero"), (2 * 65536, "data")]
                assert img.block_status(0, 65536) == [(0, 65536, 0, False, True, None)]
            else:
                assert kinds == [(0, "data"), (65536, "unallocated"), (2 * 65536, "data")]
            expect = bytearray(b"\xff" * MiB)
            expect[0:131072] = bytes(131072)
            expect[3 * 65536 + 5:3 * 65536 + 15] = bytes(10)
            assert read_all(img) == expect
        assert_clean(path)
        assert_same_as_raw(path, expect, tmp_path)


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("backing_fmt", ["qcow2", "raw", None])
def test_backing_chain_cow_and_model(tmp_path: Path, version: int, backing_fmt: str | None) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    base_data = pattern(3 * MiB + 4096, seed=7)
    if backing_fmt == "raw":
        (sub / "base.img").write_bytes(base_data)
    else:
        create(str(sub / "base.img"), len(base_data), version=version)
        with Qcow2Image(str(sub / "base.img")) as b:
            write(b, 0, base_data)
    top = sub / "top.qcow2"
    create(str(top), 5 * MiB, version=version, backing_file="base.img", backing_format=backing_fmt)
    model = bytearray(base_data + bytes(5 * MiB - len(base_data)))
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the relative backing name is relative to the image, not to the cwd
    try:
        with Qcow2Image("sub/top.qcow2") as img:
            assert img.backing is not None and img.backing.readonly
            assert img.backing_file == "base.img" and img.backing_format == backing_fmt
            write(img, 100, b"top!")  # partial cluster: the rest comes from the backing file
            model[100:104] = b"top!"
            assert read_all(img) == model
            random_ops(img, model, random.Random(version), 80, backing=base_data)
            assert read_all(img) == model
            info = img.info()
            assert info["backing-filename"] == "base.img"
            assert info["full-backing-filename"] == "sub/base.img"
    finally:
        os.chdir(cwd)
    assert_clean(top)
    assert_same_as_raw(top, model, tmp_path)
    qinfo = json.loads(qemu_img("info", "--output", "json", top).stdout)
    with Qcow2Image(str(top), readonly=True) as img:
        ours = img.info()
    for key in ("virtual-size", "cluster-size", "format", "backing-filename", "full-backing-filename",
                "dirty-flag", "format-specific"):
        assert ours[key] == qinfo[key], key
    assert ours.get("backing-filename-format") == qinfo.get("backing-filename-format")


def test_backing_opens_read_only_with_shared_lock(tmp_path: Path) -> None:
    create(str(tmp_path / "b.qcow2"), MiB)
    create(str(tmp_path / "t.qcow2"), MiB, backing_file="b.qcow2")
    with Qcow2Image(str(tmp_path / "t.qcow2")):
        with Qcow2Image(str(tmp_path / "b.qcow2"), readonly=True):
            pass  # another reader is fine
        with pytest.raises(DiskError, match="b.qcow2"):
            Qcow2Image(str(tmp_path / "b.qcow2"))
    with Qcow2Image(str(tmp_path / "t.qcow2"), backing=False) as img:
        assert img.backing is None


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.qcow2"
    create(str(path), MiB)
    with Qcow2Image(str(path)):
        with pytest.raises(DiskError, match="l.qcow2.*lock"):
            Qcow2Image(str(path))
        with pytest.raises(DiskError, match="l.qcow2"):
            Qcow2Image(str(path), readonly=True)
        Qcow2Image(str(path), readonly=True, lock=False).close()
    with Qcow2Image(str(path), readonly=True), Qcow2Image(str(path), readonly=True):
        pass


def test_block_status_and_map_match_qemu(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "4M")
    qemu_io(base, "write -P 0xab 0 64k", "write -z 1M 64k", "write -P 1 2M 128k")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "6M")
    qemu_io(top, "write -P 0xcd 64k 64k", "write -z 2M 64k", "discard 3M 64k")
    expected = json.loads(qemu_img("map", "--output", "json", top).stdout)
    with Qcow2Image(str(top), readonly=True) as img:
        assert img.map_entries() == expected
        assert img.block_status(0, img.size) == [
            (e["start"], e["length"], e["depth"], e["data"], e["zero"], e.get("offset")) for e in expected]
        assert [(e.kind, e.start) for e in img.allocation(0, 6 * MiB)][:3] == [
            ("unallocated", 0), ("data", 64 * KiB), ("unallocated", 128 * KiB)]


def test_compressed_clusters(tmp_path: Path) -> None:
    path = tmp_path / "c.qcow2"
    create(str(path), 2 * MiB + 512)
    model = bytearray(2 * MiB + 512)
    rnd = random.Random(3)
    with Qcow2Image(str(path)) as img:
        for i in range(33):
            n = min(65536, img.size - i * 65536)
            data = rnd.randbytes(n) if i % 5 == 0 else bytes([i]) * (n // 2) + rnd.randbytes(8) + bytes(n - n // 2 - 8)
            img.write_compressed_cluster(i, data)
            model[i * 65536:i * 65536 + n] = data
        kinds = {e.kind for e in img.allocation(0, img.size)}
        assert kinds == {"compressed", "data"}
        assert read_all(img) == model
        write(img, 65536 + 1000, b"over")  # copy on write out of a compressed cluster
        model[65536 + 1000:65536 + 1004] = b"over"
        img.discard(2 * 65536, 65536)
        model[2 * 65536:3 * 65536] = bytes(65536)
        assert read_all(img) == model
        result = img.check()
    out = assert_clean(path)
    assert out == result.qemu_json(str(path))
    assert qemu_raw(path, tmp_path) == model
    with pytest.raises(DiskError, match="does not fit"):
        with Qcow2Image(str(path)) as img:
            img.write_compressed_cluster(40, b"x")


@pytest.mark.parametrize("mode", ["metadata", "falloc", "full"])
def test_preallocation(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "p.qcow2"
    create(str(path), 3 * MiB, cluster_size=4096, preallocation=mode)
    assert_clean(path)
    with Qcow2Image(str(path)) as img:
        before = img.allocation(0, img.size)
        assert {e.kind for e in before} == {"data"}
        assert read_all(img) == bytes(3 * MiB)
        write(img, 5000, b"p")
        assert img.allocation(0, img.size) == before  # written in place
    assert_clean(path)


def test_resize_grow_and_shrink(tmp_path: Path) -> None:
    path = tmp_path / "r.qcow2"
    create(str(path), MiB + 512, cluster_size=4096)
    with Qcow2Image(str(path)) as img:
        write(img, MiB - 4, b"\xee" * 516)
        img.resize(8 * MiB)  # the old last cluster's tail must read as zeros now
        assert read_all(img, MiB - 4, 8192) == b"\xee" * 516 + bytes(8192 - 516)
        img.resize(3 << 30)  # the L1 table moves
        write(img, (3 << 30) - 3, b"end")
        with pytest.raises(Qcow2Error, match="allocated"):
            img.resize(MiB)
        img.discard(MiB, (3 << 30) - MiB)
        img.resize(MiB)
        assert img.size == MiB
        with pytest.raises(Qcow2Error, match="multiple of 512"):
            img.resize(MiB + 1)
    assert_clean(path)
    assert json.loads(qemu_img("info", "--output", "json", path).stdout)["virtual-size"] == MiB
    qemu_img("resize", path, "5M")
    with Qcow2Image(str(path)) as img:
        assert img.size == 5 * MiB and read_all(img, MiB - 4, 4) == b"\xee" * 4


def test_resize_hides_a_longer_backing_file(tmp_path: Path) -> None:
    (tmp_path / "b.raw").write_bytes(b"\x55" * 2 * MiB)
    create(str(tmp_path / "t.qcow2"), MiB, backing_file="b.raw", backing_format="raw")
    with Qcow2Image(str(tmp_path / "t.qcow2")) as img:
        img.resize(3 * MiB)
        assert read_all(img) == b"\x55" * MiB + bytes(2 * MiB)
    assert_clean(tmp_path / "t.qcow2")


def test_set_backing_is_header_only(tmp_path: Path) -> None:
    (tmp_path / "a.raw").write_bytes(b"A" * MiB)
    (tmp_path / "b.raw").write_bytes(b"B" * MiB)
    create(str(tmp_path / "t.qcow2"), MiB, backing_file="a.raw", backing_format="raw")
    with Qcow2Image(str(tmp_path / "t.qcow2")) as img:
        write(img, 0, b"t")
        img.set_backing("b.raw", "raw")
        assert read_all(img, 0, 2) == b"tA" and read_all(img, 65536, 2) == b"BB"
        with pytest.raises(Qcow2Error, match="loops"):
            img.set_backing("t.qcow2", "qcow2")
        assert img.backing_file == "b.raw"
        img.set_backing(None, None)
        assert img.backing is None and read_all(img, 65535, 2) == b"A\0"
        img.set_backing("later.qcow2", "qcow2")  # need not exist yet
    out = json.loads(qemu_img("info", "-U", "--output", "json", tmp_path / "t.qcow2", ok=False).stdout or "{}")
    assert out.get("backing-filename") in (None, "later.qcow2")
    with Qcow2Image(str(tmp_path / "t.qcow2"), backing=False) as img:
        img.set_backing("a.raw", None)
    assert_clean(tmp_path / "t.qcow2")
    with Qcow2Image(str(tmp_path / "t.qcow2"), readonly=True) as img:
        assert img.backing_format is None and read_all(img, 65536, 2) == b"AA"


def test_corrupt_bit_refuses_writable_open(tmp_path: Path) -> None:
    path = tmp_path / "c.qcow2"
    create(str(path), MiB)
    with open(path, "r+b") as f:
        f.seek(72)
        f.write(struct.pack(">Q", 2))
    with pytest.raises(Qcow2Error, match="marked corrupt"):
        Qcow2Image(str(path))
    with Qcow2Image(str(path), readonly=True) as img:
        assert img.info()["format-specific"]["data"]["corrupt"] is True  # type: ignore[index]


def test_autoclear_bits_cleared_on_writable_open_only(tmp_path: Path) -> None:
    path = tmp_path / "a.qcow2"
    create(str(path), MiB)
    with open(path, "r+b") as f:
        f.seek(88)
        f.write(struct.pack(">Q", 1 << 40))
    with Qcow2Image(str(path), readonly=True) as img:
        assert img.header.autoclear_features == 1 << 40
    with Qcow2Image(str(path)) as img:
        assert img.header.autoclear_features == 0
    assert_clean(path)


def test_unknown_extension_survives_writes(tmp_path: Path) -> None:
    path = tmp_path / "e.qcow2"
    create(str(path), MiB)
    head = bytearray(path.read_bytes()[:65536])
    end = 112
    while struct.unpack(">I", head[end:end + 4])[0]:
        end += 8 + ((struct.unpack(">I", head[end + 4:end + 8])[0] + 7) & ~7)
    head[end:end + 32] = struct.pack(">II", 0xABCDEF01, 13) + b"keep me as is" + bytes(3) + bytes(8)
    with open(path, "r+b") as f:
        f.write(head)
    with Qcow2Image(str(path)) as img:
        img.create_snapshot("s")
        img.set_backing(None, None)
        img.resize(2 * MiB)
    with Qcow2Image(str(path), readonly=True) as img:
        assert img.header.extension(0xABCDEF01) == b"keep me as is"
    assert_clean(path)


CRASH_SCRIPT = """
import os, sys
sys.path.insert(0, {src!r})
from pyvirt.disk.qcow2 import Qcow2Image
img = Qcow2Image({path!r})
img.write_from(0, [memoryview(b"d" * 200000)])
img.flush()
img.write_from(300000, [memoryview(b"e" * 70000)])
img.discard(0, 65536)
img._c.flush(sync=False)  # metadata written, dirty bit still set
img.write_from(2000000, [memoryview(b"f" * 70000)])
os._exit(0)  # a crash: no close, nothing else written back
"""


def test_lazy_refcounts_dirty_bit_and_rebuild(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "lazy.qcow2"
    create(str(path), 4 * MiB, lazy_refcounts=True)
    src = str(Path(__file__).resolve().parents[2] / "src")
    subprocess.run([sys.executable, "-c", CRASH_SCRIPT.format(src=src, path=str(path))], check=True, timeout=60)
    info = json.loads(qemu_img("info", "--output", "json", path).stdout)
    assert info["dirty-flag"] is True
    with Qcow2Image(str(path), readonly=True) as ro:
        assert ro.header.dirty and read_all(ro, 65536, 4) == b"dddd"
    with Qcow2Image(str(path)) as img:  # writable open: refcounts rebuilt, dirty bit cleared
        assert not img.header.dirty
        assert read_all(img, 65536, 200000 - 65536) == b"d" * (200000 - 65536)
        assert read_all(img, 300000, 70000) == b"e" * 70000
        write(img, 3 * MiB, b"after")
    assert_clean(path)
    with Qcow2Image(str(path)) as img:
        assert not img.header.dirty and read_all(img, 3 * MiB, 5) == b"after"


def test_check_matches_qemu_on_leaks_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "k.qcow2"
    create(str(path), 4 * MiB)
    with Qcow2Image(str(path)) as img:
        write(img, 0, pattern(300000))
        leaked = img._c.alloc(3)  # allocated and written, never referenced: leaks
        img._f.write(leaked, bytes(3 * 65536))
        res = img.check()
        assert (res.leaks, res.corruptions, res.exit_code) == (3, 0, 3)
    q = qemu_check(path)  # (our write lock covers the whole file: qemu-img cannot even peek while open)
    assert q["exit"] == 3 and q["leaks"] == 3
    for key in ("image-end-offset", "total-clusters", "allocated-clusters", "check-errors"):
        assert res.qemu_json(str(path))[key] == q[key], key
    with Qcow2Image(str(path)) as img:
        # a refcount that says free while a table uses it: corruption
        host = img.allocation(0, 1)[0].host_offset
        assert host is not None
        img._c.rc.incref(host >> 16, 1, -1)
        img._c.rc.write_back()
        res = img.check()
        assert res.corruptions >= 1 and res.exit_code == 2
    assert qemu_check(path)["exit"] == 2
    with Qcow2Image(str(path)) as img:
        fixed = img.check(repair=True)
        assert (fixed.corruptions, fixed.leaks) == (0, 0)
        assert fixed.leaks_fixed == 3 and fixed.corruptions_fixed >= 1
        assert img.check().exit_code == 0
        write(img, 1 * MiB, b"still writable")
    assert_clean(path)


def test_open_image_and_open_disk(tmp_path: Path) -> None:
    create(str(tmp_path / "q.qcow2"), MiB)
    (tmp_path / "r.raw").write_bytes(bytes(MiB))
    with open_image(str(tmp_path / "q.qcow2"), serial="disk-1") as d:
        assert isinstance(d, Qcow2Image) and d.id == "disk-1"
    with open_image(str(tmp_path / "r.raw"), readonly=True) as d:
        assert isinstance(d, RawBackend)
    with open_disk(str(tmp_path / "q.qcow2"), readonly=True) as d:
        assert isinstance(d, Qcow2Image) and d.readonly
    with open_image(str(tmp_path / "q.qcow2"), format="raw", readonly=True) as d:
        assert isinstance(d, RawBackend)
    with pytest.raises(DiskError, match="unknown disk format"):
        open_image(str(tmp_path / "q.qcow2"), format="vmdk")


def test_create_validates_and_truncates(tmp_path: Path) -> None:
    path = tmp_path / "n.qcow2"
    path.write_bytes(b"x" * 5 * MiB)
    create(str(path), 1000)  # rounded up to a sector, like qemu-img
    with Qcow2Image(str(path)) as img:
        assert img.size == 1024 and read_all(img) == bytes(1024)
    assert path.stat().st_size < MiB
    for kw, match in ((dict(cluster_size=3000), "power of two"), (dict(cluster_size=4 << 20), "power of two"),
                      (dict(version=4), "version"), (dict(version=2, lazy_refcounts=True), "lazy"),
                      (dict(refcount_bits=3), "refcount_bits"), (dict(preallocation="lots"), "preallocation"),
                      (dict(backing_format="vmdk", backing_file="x"), "backing format")):
        with pytest.raises(Qcow2Error, match=match):
            create(str(path), MiB, **kw)  # type: ignore[arg-type]
    with pytest.raises(Qcow2Error, match="L1 table"):
        create(str(path), 1 << 60, cluster_size=4096)
    with Qcow2Image(str(path)):
        with pytest.raises(DiskError, match="lock"):
            create(str(path), MiB)  # an image in use is not clobbered
    create(str(tmp_path / "b.qcow2"), 3 * MiB)
    create(str(tmp_path / "t.qcow2"), None, backing_file="b.qcow2")
    with Qcow2Image(str(tmp_path / "t.qcow2")) as img:
        assert img.size == 3 * MiB


def test_info_matches_qemu(tmp_path: Path) -> None:
    for version in (2, 3):
        path = tmp_path / f"i{version}.qcow2"
        create(str(path), 3 * MiB, version=version, cluster_size=16384)
        with Qcow2Image(str(path)) as img:
            write(img, 0, b"x")
            img.create_snapshot("snap")
        q = json.loads(qemu_img("info", "--output", "json", path).stdout)
        with Qcow2Image(str(path), readonly=True) as img:
            assert img.info() == q


def test_concurrent_requests_from_threads(tmp_path: Path) -> None:
    """virtio-blk serves large requests from a worker pool: the image must
    take concurrent calls (each thread owns a region; allocation, copy on
    write, discards and flushes interleave)."""
    import threading

    path = tmp_path / "t.qcow2"
    create(str(path), 8 * MiB, cluster_size=4096)
    model = bytearray(8 * MiB)
    errors: list[BaseException] = []
    with Qcow2Image(str(path)) as img:
        write(img, 0, pattern(8 * MiB, 4))
        model[:] = read_all(img)
        img.create_snapshot("shared")  # every later write copies on write

        def worker(n: int) -> None:
            rnd = random.Random(n)
            base = n * 2 * MiB
            try:
                for _ in range(150):
                    off = base + rnd.randrange(2 * MiB - 20000)
                    size = rnd.randrange(1, 20000)
                    r = rnd.random()
                    if r < 0.6:
                        data = rnd.randbytes(size)
                        parts = [memoryview(data[:size // 3]), memoryview(data[size // 3:])]
                        img.write_from(off, parts)
                        model[off:off + size] = data
                    elif r < 0.8:
                        assert read_all(img, off, size) == model[off:off + size]
                    elif r < 0.9:
                        img.write_zeroes(off, size, True)
                        model[off:off + size] = bytes(size)
                    else:
                        img.flush()
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert read_all(img) == model
    assert_clean(path)
    assert_same_as_raw(path, model, tmp_path)
