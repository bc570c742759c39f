"""Internal snapshots made by pyvirt: create, apply, delete, copy on write of
shared clusters, exact COPIED flags (qemu-img check verifies them), and
what qemu-img snapshot/info say about them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_qcow2_util import (MiB, assert_clean, assert_same_as_raw, needs_qemu, pattern, qemu_img, qemu_raw,
                             read_all, write)

from pyvirt.disk.qcow2 import Qcow2Error, Qcow2Image, create

pytestmark = needs_qemu


@pytest.mark.parametrize(("version", "cluster"), [(3, 65536), (2, 65536), (3, 4096)])
def test_create_apply_delete_against_models(tmp_path: Path, version: int, cluster: int) -> None:
    path = tmp_path / "s.qcow2"
    size = 6 * MiB
    create(str(path), size, version=version, cluster_size=cluster)
    states: dict[str, bytes] = {}
    model = bytearray(size)

    def w(img: Qcow2Image, off: int, data: bytes) -> None:
        write(img, off, data)
        model[off:off + len(data)] = data

    with Qcow2Image(str(path)) as img:
        w(img, 0, pattern(2 * MiB, 1))
        img.create_snapshot("a")
        states["a"] = bytes(model)
        w(img, 1000, b"after a" * 1000)  # copy on write of shared clusters
        img.write_zeroes(MiB, MiB, True)
        model[MiB:2 * MiB] = bytes(MiB)
        img.discard(3 * MiB, MiB)
        img.create_snapshot("b")
        states["b"] = bytes(model)
        w(img, 5 * MiB, pattern(MiB, 2))
        assert read_all(img) == model
    assert_clean(path)
    assert_same_as_raw(path, model, tmp_path)
    listing = qemu_img("snapshot", "-l", path).stdout
    assert " a " in listing and " b " in listing

    with Qcow2Image(str(path)) as img:
        img.apply_snapshot("a")
        assert read_all(img) == states["a"]
        w2 = b"on top of a"
        write(img, 0, w2)
    assert_clean(path)
    assert qemu_raw(path, tmp_path) == w2 + states["a"][len(w2):]

    with Qcow2Image(str(path)) as img:
        img.delete_snapshot("1")  # by id
        assert [s.name for s in img.snapshots()] == ["b"]
        img.apply_snapshot("b")
        assert read_all(img) == states["b"]
    assert_clean(path)
    qemu_img("snapshot", "-a", "b", path)  # qemu agrees on what "b" holds
    assert qemu_raw(path, tmp_path) == states["b"]
    with Qcow2Image(str(path)) as img:
        img.delete_snapshot("b")
        assert img.snapshots() == []
        assert img.header.nb_snapshots == 0 and img.header.snapshots_offset == 0
        write(img, 0, b"no snapshots left")
    out = assert_clean(path)
    assert out["check-errors"] == 0


def test_copied_flags_exact(tmp_path: Path) -> None:
    """Every step leaves COPIED exactly where the refcount is 1 (our check
    and qemu's both verify it)."""
    path = tmp_path / "c.qcow2"
    create(str(path), 2 * MiB, cluster_size=4096)
    with Qcow2Image(str(path)) as img:
        write(img, 0, pattern(MiB))
        for step in range(4):
            img.create_snapshot(f"s{step}")
            assert img.check().exit_code == 0
            write(img, step * 8192, b"x" * 5000)
            assert img.check().exit_code == 0
        img.delete_snapshot("s1")
        assert img.check().exit_code == 0
        img.apply_snapshot("s2")
        assert img.check().exit_code == 0
        img.delete_snapshot("s0")
        img.delete_snapshot("s3")
        img.delete_snapshot("s2")
        res = img.check()
        assert res.exit_code == 0 and res.allocated_clusters == 256
    assert_clean(path)


def test_snapshot_info_matches_qemu(tmp_path: Path) -> None:
    path = tmp_path / "i.qcow2"
    create(str(path), MiB)
    with Qcow2Image(str(path)) as img:
        img.create_snapshot("mine")
    qemu_img("snapshot", "-c", "theirs", path)
    q = json.loads(qemu_img("info", "--output", "json", path).stdout)
    with Qcow2Image(str(path), readonly=True) as img:
        ours = img.info()
        assert ours["snapshots"] == q["snapshots"]
        snaps = img.snapshots()
        assert [(s.id, s.name, s.disk_size) for s in snaps] == [("1", "mine", MiB), ("2", "theirs", MiB)]


def test_apply_restores_the_snapshot_size(tmp_path: Path) -> None:
    path = tmp_path / "z.qcow2"
    create(str(path), MiB)
    with Qcow2Image(str(path)) as img:
        write(img, 0, b"small")
        img.create_snapshot("small")
        img.resize(64 * MiB)
        write(img, 60 * MiB, b"big")
        img.apply_snapshot("small")
        assert img.size == MiB and read_all(img, 0, 5) == b"small"
        img.resize(2 * MiB)  # grow again: nothing of the big state comes back
    assert_clean(path)
    with Qcow2Image(str(path)) as img:
        assert img.size == 2 * MiB and read_all(img, MiB, MiB) == bytes(MiB)
        img.delete_snapshot("small")
    assert_clean(path)


def test_snapshot_errors(tmp_path: Path) -> None:
    path = tmp_path / "e.qcow2"
    create(str(path), MiB)
    with Qcow2Image(str(path)) as img:
        img.create_snapshot("x")
        with pytest.raises(Qcow2Error, match="already exists"):
            img.create_snapshot("x")
        with pytest.raises(Qcow2Error, match="no snapshot"):
            img.apply_snapshot("nope")
        with pytest.raises(Qcow2Error, match="no snapshot"):
            img.delete_snapshot("7")
        with pytest.raises(Qcow2Error, match="snapshots"):
            img.resize(512)
    with Qcow2Image(str(path), readonly=True) as img:
        with pytest.raises(Qcow2Error, match="read-only"):
            img.create_snapshot("y")


def test_many_snapshots_move_the_table(tmp_path: Path) -> None:
    path = tmp_path / "m.qcow2"
    create(str(path), MiB, cluster_size=4096)
    with Qcow2Image(str(path)) as img:
        for i in range(120):  # the table outgrows one 4 KiB cluster
            write(img, (i % 16) * 4096, bytes([i]) * 10)
            img.create_snapshot(f"snapshot number {i:03d} " + "x" * 20)
        assert len(img.snapshots()) == 120
        img.apply_snapshot("snapshot number 007 " + "x" * 20)
        assert read_all(img, 7 * 4096, 1) == b"\7"
        for i in range(0, 120, 2):
            img.delete_snapshot(str(i + 1))
    assert_clean(path)
    listing = qemu_img("snapshot", "-l", path).stdout
    assert listing.count("snapshot number") == 60
