"""Images qemu-img and qemu-io make: pyvirt reads what qemu reads, writes
into them so that qemu-img check stays clean, and refuses the features it
does not implement with a clear error."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from test_qcow2_util import (KiB, MiB, assert_clean, assert_same_as_raw, needs_qemu, qemu_img, qemu_io, qemu_raw,
                             read_all, write)

from pyvirt.disk.qcow2 import Qcow2Error, Qcow2Image

pytestmark = needs_qemu


def qemu_scribble(path: Path, size: int, cluster: int, seed: int) -> None:
    rnd = random.Random(seed)
    cmds = []
    for _ in range(25):
        off = rnd.randrange(0, size // 512) * 512
        n = min(size - off, rnd.randrange(1, 3 * cluster // 512 + 1) * 512)
        kind = rnd.random()
        if kind < 0.6:
            cmds.append(f"write -P {rnd.randrange(1, 256)} {off} {n}")
        elif kind < 0.8:
            cmds.append(f"write -z {off} {n}")
        else:
            cmds.append(f"discard {off} {n}")
    qemu_io(path, *cmds)


@pytest.mark.parametrize(("compat", "cluster"), [("0.10", 64 * KiB), ("1.1", 64 * KiB), ("1.1", 4 * KiB),
                                                 ("1.1", 512), ("1.1", 2 * MiB), ("0.10", 16 * KiB)])
def test_reads_what_qemu_writes(tmp_path: Path, compat: str, cluster: int) -> None:
    path = tmp_path / "q.qcow2"
    size = 12 * MiB
    qemu_img("create", "-f", "qcow2", "-o", f"compat={compat},cluster_size={cluster}", path, str(size))
    qemu_scribble(path, size, cluster, cluster)
    expect = qemu_raw(path, tmp_path)
    with Qcow2Image(str(path), readonly=True) as img:
        assert read_all(img) == expect
    # and pyvirt's writes on top keep it consistent for qemu
    model = bytearray(expect)
    with Qcow2Image(str(path)) as img:
        rnd = random.Random(5)
        for _ in range(30):
            off = rnd.randrange(size - 1)
            n = rnd.randrange(1, min(size - off, 2 * cluster) + 1)
            data = bytes([rnd.randrange(256)]) * n
            write(img, off, data)
            model[off:off + n] = data
    assert_clean(path)
    assert_same_as_raw(path, model, tmp_path)


@pytest.mark.parametrize("opts", ["refcount_bits=1", "refcount_bits=64", "lazy_refcounts=on",
                                  "preallocation=metadata", "preallocation=full,cluster_size=4096"])
def test_qemu_create_options(tmp_path: Path, opts: str) -> None:
    path = tmp_path / "o.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", opts, path, "3M")
    qemu_io(path, "write -P 7 100k 200k")
    expect = qemu_raw(path, tmp_path)
    with Qcow2Image(str(path)) as img:
        assert read_all(img) == expect
        write(img, 1 * MiB, b"pyvirt" * 1000)
        expect = expect[:MiB] + b"pyvirt" * 1000 + expect[MiB + 6000:]
    assert_clean(path)
    assert qemu_raw(path, tmp_path) == expect


def test_compressed_image_from_qemu_convert(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    rnd = random.Random(9)
    data = b"".join(bytes([i]) * 30000 + rnd.randbytes(3000) + bytes(32536) for i in range(40))
    data += rnd.randbytes(391 * 512)  # a partial last cluster (qemu-img sizes are whole sectors)
    src.write_bytes(data)
    comp = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", src, comp)
    with Qcow2Image(str(comp)) as img:
        assert read_all(img) == data
        assert "compressed" in {e.kind for e in img.allocation(0, img.size)}
        write(img, 70000, b"mixed")  # copy on write out of a compressed cluster
    model = bytearray(data)
    model[70000:70005] = b"mixed"
    assert_clean(comp)
    assert_same_as_raw(comp, model, tmp_path)


def test_resized_by_qemu(tmp_path: Path) -> None:
    path = tmp_path / "r.qcow2"
    qemu_img("create", "-f", "qcow2", path, "1M")
    qemu_io(path, "write -P 3 0 1M")
    qemu_img("resize", path, "3G")
    qemu_io(path, "write -P 4 2G 64k")
    with Qcow2Image(str(path)) as img:
        assert img.size == 3 << 30
        assert read_all(img, 0, 4) == b"\3" * 4 and read_all(img, 2 << 30, 4) == b"\4" * 4
        assert read_all(img, MiB, 4) == bytes(4)
        write(img, (3 << 30) - 8, b"the end!")
    assert_clean(path)


def test_qemu_backing_chain(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(random.Random(1).randbytes(2 * MiB))
    mid = tmp_path / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid, "3M")
    qemu_io(mid, "write -P 1 64k 64k", "write -z 1M 4k")
    qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", "-b", str(mid), "-F", "qcow2", top)
    qemu_io(top, "write -P 2 100k 5k")
    expect = qemu_raw(top, tmp_path)
    with Qcow2Image(str(top), readonly=True) as img:
        assert read_all(img) == expect
        assert img.backing is not None and isinstance(img.backing, Qcow2Image)
        assert img.backing.backing is not None


def test_qemu_snapshots_readable_and_applicable(tmp_path: Path) -> None:
    path = tmp_path / "s.qcow2"
    qemu_img("create", "-f", "qcow2", path, "4M")
    qemu_io(path, "write -P 1 0 1M")
    qemu_img("snapshot", "-c", "first", path)
    first = qemu_raw(path, tmp_path)
    qemu_io(path, "write -P 2 512k 1M", "discard 0 64k")
    qemu_img("snapshot", "-c", "second", path)
    qemu_io(path, "write -P 3 3M 4k")
    with Qcow2Image(str(path)) as img:
        names = [(s.id, s.name) for s in img.snapshots()]
        assert names == [("1", "first"), ("2", "second")]
        img.apply_snapshot("first")
        assert read_all(img) == first
        write(img, 0, b"after apply")
    assert_clean(path)
    qemu_img("snapshot", "-d", "second", path)
    with Qcow2Image(str(path)) as img:
        img.delete_snapshot("1")
        assert img.snapshots() == []
    assert_clean(path)
    assert qemu_raw(path, tmp_path)[:11] == b"after apply"


def test_unsupported_features_are_refused_cleanly(tmp_path: Path) -> None:
    ext = tmp_path / "ext.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on", ext, "1M")
    with pytest.raises(Qcow2Error, match="extended L2"):
        Qcow2Image(str(ext), readonly=True)
    data = tmp_path / "data.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", data, "1M")
    with pytest.raises(Qcow2Error, match="external data file"):
        Qcow2Image(str(data), readonly=True)
    zstd = tmp_path / "zstd.qcow2"
    r = qemu_img("create", "-f", "qcow2", "-o", "compression_type=zstd", zstd, "1M", ok=False)
    if r.returncode == 0:
        with pytest.raises(Qcow2Error, match="zstd"):
            Qcow2Image(str(zstd), readonly=True)
    enc = tmp_path / "enc.qcow2"
    r = qemu_img("create", "-f", "qcow2", "--object", "secret,id=s0,data=x", "-o",
                 "encrypt.format=luks,encrypt.key-secret=s0", enc, "1M", ok=False)
    if r.returncode == 0:
        with pytest.raises(Qcow2Error, match="encrypt"):
            Qcow2Image(str(enc), readonly=True)


def test_persistent_bitmaps_autoclear(tmp_path: Path) -> None:
    path = tmp_path / "b.qcow2"
    qemu_img("create", "-f", "qcow2", path, "4M")
    r = qemu_img("bitmap", "--add", path, "bm0", ok=False)
    if r.returncode != 0:
        pytest.skip("qemu-img bitmap is not available")
    qemu_io(path, "write -P 5 0 64k")
    with Qcow2Image(str(path), readonly=True) as img:
        assert img.header.autoclear_features & 1
        assert img.check().exit_code == 0  # the bitmap's clusters are accounted for
    with Qcow2Image(str(path)) as img:  # writable: the spec says clear what we do not maintain
        assert img.header.autoclear_features == 0
        assert read_all(img, 0, 4) == b"\5" * 4
    info = json.loads(qemu_img("info", "--output", "json", path).stdout)
    assert info["format"] == "qcow2"
