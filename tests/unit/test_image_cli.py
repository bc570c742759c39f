"""`pyvirt image ...` (cli/image.py): options, outputs, exit statuses and
error messages of every verb, on small images in a temporary folder (no
KVM, no qemu-img)."""

from __future__ import annotations

import json
import os
import threading

import pytest

from pyvirt.cli import image as cli
from pyvirt.cli.main import _image_argv, main
from pyvirt.disk import BlockBackend, DiskError
from pyvirt.disk.qcow2 import Qcow2Image, create

MiB = 1 << 20


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        status = main(["image", *argv])
    except SystemExit as e:  # argparse
        status = int(e.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def error_line(err: str) -> str:
    """The one line an error prints (and never a traceback)."""
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("pyvirt: ")
    return lines[0]


def write(path: str, offset: int, data: bytes) -> None:
    with Qcow2Image(path) as img:
        img.write_from(offset, [memoryview(data)])
        img.flush()


def read(path: str, offset: int = 0, length: int | None = None) -> bytes:
    with cli.open_image(path) as disk:
        n = disk.size - offset if length is None else length
        buf = bytearray(n)
        disk.read_into(offset, [memoryview(buf)])
        return bytes(buf)


@pytest.fixture
def qcow(tmp_path) -> str:
    path = str(tmp_path / "disk.qcow2")
    create(path, 4 * MiB)
    return path


@pytest.fixture
def raw(tmp_path) -> str:
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.write(b"\x11" * MiB)
        f.truncate(4 * MiB)  # a hole after the first MiB
    return str(path)


# --------------------------------------------------------------------------- helpers

@pytest.mark.parametrize("text, value", [
    ("512", 512), ("4k", 4096), ("4K", 4096), ("1M", MiB), ("1G", 1 << 30), ("2T", 2 << 40), ("1.5M", 3 * MiB // 2),
    ("0", 0), (".5k", 512), ("100b", 100),
])
def test_parse_size(text, value):
    assert cli.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "k", "1X", "-1", "1.5", "1e3", "1 MB"])
def test_parse_size_rejects(text):
    with pytest.raises(cli.ImageError, match="size"):
        cli.parse_size(text)


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (999, "999 B"), (1000, "0.977 KiB"), (331776, "324 KiB"), (4 * MiB, "4 MiB"), (1 << 30, "1 GiB"),
    (3 << 29, "1.5 GiB"),
])
def test_human_size_as_qemu(n, text):
    assert cli.human_size(n) == text


def test_resize_argv_negative_size():
    assert _image_argv(["image", "resize", "a.qcow2", "-1G"]) == ["image", "resize", "a.qcow2", "--", "-1G"]
    assert _image_argv(["-v", "image", "resize", "--shrink", "a", "-.5G"])[-2:] == ["--", "-.5G"]
    for argv in (["image", "resize", "a", "+1G"], ["image", "resize", "a", "--", "-1G"], ["image", "info", "-1"],
                 ["run", "--kernel", "-1"]):
        assert _image_argv(argv) == argv


def test_options_parsing(capsys):
    assert cli.parse_options(["cluster_size=4k,compat=0.10", "lazy_refcounts=off"], "qcow2") == {
        "cluster_size": "4k", "compat": "0.10", "lazy_refcounts": "off"}
    assert cli.qcow2_create_args({"cluster_size": "4k", "compat": "0.10", "lazy_refcounts": "on"}) == {
        "cluster_size": 4096, "version": 2, "lazy_refcounts": True}
    assert cli.parse_options(["help"], "qcow2") is None
    assert "cluster_size=" in capsys.readouterr().out
    status, out, _ = run(capsys, "create", "-f", "qcow2", "-o", "help")  # no file needed, as qemu-img
    assert status == 0 and out.startswith("Supported qcow2 options:") and "lazy_refcounts=" in out
    status, _, err = run(capsys, "create", "-f", "qcow2")
    assert status == 1 and "give the new image's file name" in error_line(err)
    with pytest.raises(cli.ImageError, match="not an option of raw"):
        cli.parse_options(["cluster_size=4k"], "raw")
    with pytest.raises(cli.ImageError, match="compat"):
        cli.qcow2_create_args({"compat": "2.0"})
    with pytest.raises(cli.ImageError, match="on or off"):
        cli.qcow2_create_args({"lazy_refcounts": "maybe"})


# --------------------------------------------------------------------------- create

def test_create_raw_default(capsys, tmp_path):
    path = str(tmp_path / "a.img")
    status, out, err = run(capsys, "create", path, "1M")
    assert (status, err) == (0, "") and out == f"Formatting '{path}', fmt=raw size={MiB}\n"
    assert os.path.getsize(path) == MiB and os.stat(path).st_blocks == 0


def test_create_qcow2_options(capsys, tmp_path):
    path = str(tmp_path / "a.qcow2")
    status, out, _ = run(capsys, "create", "-f", "qcow2", "-o", "cluster_size=4k,compat=0.10", "-q", path, "1000")
    assert status == 0 and out == ""
    with Qcow2Image(path, readonly=True) as img:
        assert (img.size, img.cluster_size, img.version) == (1024, 4096, 2)  # rounded up to a sector, as qemu-img


def test_create_backing_size_and_format(capsys, tmp_path, raw):
    path = str(tmp_path / "over.qcow2")
    status, out, _ = run(capsys, "create", "-f", "qcow2", "-b", "disk.raw", path)
    assert status == 0 and "backing_fmt=raw" in out
    with Qcow2Image(path, readonly=True) as img:
        assert (img.size, img.backing_file, img.backing_format) == (4 * MiB, "disk.raw", "raw")
    assert read(path, 0, 8) == b"\x11" * 8


@pytest.mark.parametrize("argv, message", [
    (["-f", "qcow2", "X"], "give the image's SIZE"),
    (["X", "12Q"], "invalid size '12Q'"),
    (["-F", "raw", "X", "1M"], "-F needs a backing file"),
    (["-b", "disk.raw", "X", "1M"], "raw images have no backing file"),
    (["-f", "qcow2", "-b", "nothere.raw", "X"], "nothere.raw: No such file or directory"),
    (["-f", "qcow2", "-u", "-b", "nothere.raw", "X"], "give the image's SIZE (-u does not open the backing file)"),
    (["-f", "qcow2", "-o", "compat=9", "X", "1M"], "use 0.10 (v2) or 1.1 (v3)"),
    (["-f", "qcow2", "-o", "size", "X"], "expected NAME=VALUE"),
    (["-o", "cluster_size=4k", "X", "1M"], "not an option of raw images"),
    (["-f", "qcow2", "-o", "size=1M", "X", "1M"], "the size is given twice"),
    (["-f", "qcow2", "-b", "disk.raw", "disk.raw"], "cannot be its own backing file"),
])
def test_create_errors(capsys, monkeypatch, tmp_path, raw, argv, message):
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "create", *argv)
    assert status == 1 and out == "" and message in error_line(err)


def test_create_usage_error(capsys):
    status, _, err = run(capsys, "create", "-f", "vmdk", "X", "1M")
    assert status == 2 and "invalid choice" in err


def test_create_refuses_an_image_in_use(capsys, raw):
    with cli.open_image(raw, readonly=False):
        status, _, err = run(capsys, "create", raw, "1M")
    assert status == 1 and f"held by process {os.getpid()}" not in err  # ourselves: not named
    assert "lock" in error_line(err)
    assert os.path.getsize(raw) == 4 * MiB


# --------------------------------------------------------------------------- info

def test_info_human(capsys, qcow):
    status, out, _ = run(capsys, "info", qcow)
    lines = out.splitlines()
    assert status == 0 and lines[:3] == [f"image: {qcow}", "file format: qcow2", "virtual size: 4 MiB (4194304 bytes)"]
    assert "cluster_size: 65536" in lines and "Format specific information:" in lines
    assert any(line.startswith("    compat: ") for line in lines)


def test_info_json_chain(capsys, tmp_path, raw):
    over = str(tmp_path / "over.qcow2")
    create(over, 4 * MiB, backing_file="disk.raw", backing_format="raw")
    status, out, _ = run(capsys, "info", "--output", "json", over)
    info = json.loads(out)
    assert status == 0 and info["virtual-size"] == 4 * MiB and info["format"] == "qcow2"
    assert info["backing-filename"] == "disk.raw" and info["full-backing-filename"] == raw
    status, out, _ = run(capsys, "info", "--output=json", "--backing-chain", over)
    chain = json.loads(out)
    assert [c["format"] for c in chain] == ["qcow2", "raw"] and chain[1]["actual-size"] >= MiB
    status, out, _ = run(capsys, "info", "--backing-chain", over)
    assert out.count("image: ") == 2 and "backing file: disk.raw (actual path: " in out


def test_info_errors(capsys, tmp_path):
    status, _, err = run(capsys, "info", str(tmp_path / "none.qcow2"))
    assert status == 1 and "none.qcow2: No such file or directory" in error_line(err)
    status, _, err = run(capsys, "info", "--output", "xml", "x")
    assert status == 2


def test_info_backing_loop(capsys, tmp_path):
    loop = str(tmp_path / "loop.qcow2")
    create(loop, MiB, backing_file="loop.qcow2", backing_format="qcow2")
    status, _, err = run(capsys, "info", loop)
    assert status == 1 and "backing chain loops" in error_line(err)
    a, b = str(tmp_path / "a.qcow2"), str(tmp_path / "b.qcow2")
    create(a, MiB, backing_file="b.qcow2", backing_format="qcow2")
    create(b, MiB, backing_file="a.qcow2", backing_format="qcow2")
    status, _, err = run(capsys, "map", a)
    assert status == 1 and f"({a} -> {b} -> {a})" in error_line(err)


def test_info_missing_backing(capsys, tmp_path):
    over = str(tmp_path / "over.qcow2")
    create(over, MiB, backing_file="gone.raw", backing_format="raw")
    status, _, err = run(capsys, "info", over)
    assert status == 1 and f"(the backing file of {over})" in error_line(err)


# --------------------------------------------------------------------------- check

def test_check_clean(capsys, qcow):
    write(qcow, 0, b"x" * 65536)
    status, out, err = run(capsys, "check", qcow)
    assert status == 0 and out.splitlines()[0] == "No errors were found on the image."
    assert "Image end offset: " in out
    status, out, _ = run(capsys, "check", "--output", "json", qcow)
    d = json.loads(out)
    assert status == 0 and d["check-errors"] == 0 and d["format"] == "qcow2" and d["allocated-clusters"] >= 1
    assert "leaks" not in d and "corruptions" not in d


def test_check_raw_has_no_checks(capsys, raw):
    status, out, err = run(capsys, "check", raw)
    assert status == 63 and out == "" and "does not support checks" in error_line(err)


def test_check_errors(capsys, qcow, tmp_path):
    status, _, err = run(capsys, "check", "-r", "leaks", "-U", qcow)
    assert status == 1 and "cannot be used with -U" in error_line(err)
    status, _, err = run(capsys, "check", "-r", "some", qcow)
    assert status == 2 and "invalid choice" in err
    status, _, err = run(capsys, "check", str(tmp_path / "none"))
    assert status == 1 and "No such file" in error_line(err)


# --------------------------------------------------------------------------- convert

def test_convert_roundtrip(capsys, tmp_path, raw):
    q, back = str(tmp_path / "c.qcow2"), str(tmp_path / "back.raw")
    assert run(capsys, "convert", "-O", "qcow2", "-o", "cluster_size=4k", raw, q)[0] == 0
    with Qcow2Image(q, readonly=True) as img:
        kinds = {e.kind for e in img.allocation(MiB, 3 * MiB)}
        assert kinds <= {"unallocated", "zero"} and img.cluster_size == 4096  # zeros are left out
    assert run(capsys, "convert", "-f", "qcow2", q, back)[0] == 0  # -O raw is the default
    assert open(back, "rb").read() == open(raw, "rb").read()
    assert os.stat(back).st_blocks * 512 <= 2 * MiB  # sparse


def test_convert_compressed(capsys, tmp_path, raw):
    q = str(tmp_path / "c.qcow2")
    assert run(capsys, "convert", "-c", "-O", "qcow2", raw, q)[0] == 0
    with Qcow2Image(q, readonly=True) as img:
        assert {e.kind for e in img.allocation(0, MiB)} == {"compressed"}
    assert read(q) == open(raw, "rb").read()


def test_convert_into_existing(capsys, tmp_path, raw):
    dst = tmp_path / "dst.raw"
    dst.write_bytes(b"\xff" * 4 * MiB)
    assert run(capsys, "convert", "-n", raw, str(dst))[0] == 0
    assert dst.read_bytes() == open(raw, "rb").read()


@pytest.mark.parametrize("argv, message", [
    (["-c", "SRC", "DST"], "-c (compression) needs -O qcow2"),
    (["SRC", "SRC"], "the source and the target are the same file"),
    (["nothere", "DST"], "nothere: No such file or directory"),
    (["-O", "qcow2", "-o", "backing_file=x", "SRC", "DST"], "-o backing_file is not supported"),
    (["-S", "lots", "SRC", "DST"], "invalid -S size"),
    (["-n", "SRC", "SMALL"], "smaller (1024 bytes) than"),
])
def test_convert_errors(capsys, monkeypatch, tmp_path, raw, argv, message):
    (tmp_path / "SMALL").write_bytes(bytes(1024))
    monkeypatch.chdir(tmp_path)
    argv = [raw if a == "SRC" else a for a in argv]
    status, _, err = run(capsys, "convert", *argv)
    assert status == 1 and message in error_line(err)


def test_zero_runs():
    buf = bytearray(16 * 4096)
    buf[4096:8192] = b"x" * 4096
    buf[5 * 4096] = 1
    buf[-1] = 1
    assert list(cli._nonzero_runs(buf, len(buf), 4096)) == [(4096, 8192), (5 * 4096, 6 * 4096), (15 * 4096, 16 * 4096)]
    assert list(cli._zero_runs(buf, len(buf), 4096)) == [(0, 4096), (8192, 5 * 4096), (6 * 4096, 15 * 4096)]
    assert cli._first_zero_block(bytearray(b"\1" * 8192), 8192, 4096) == -1
    tail = bytearray(b"\1" * 4096 + bytes(100))
    assert cli._first_zero_block(tail, len(tail), 4096) == 4096  # a short last block counts
    assert list(cli._nonzero_runs(bytearray(8192), 8192, 4096)) == []


def test_convert_leaves_out_zero_blocks_inside_data(capsys, tmp_path):
    src = tmp_path / "dense.raw"
    data = bytearray(2 * MiB)
    data[0:100] = b"a" * 100
    data[MiB + 70000:MiB + 70010] = b"b" * 10
    src.write_bytes(data)  # every byte allocated
    assert os.stat(src).st_blocks * 512 >= 2 * MiB
    assert run(capsys, "convert", str(src), str(tmp_path / "o.raw"))[0] == 0
    assert os.stat(tmp_path / "o.raw").st_blocks * 512 <= 3 * 4096
    assert (tmp_path / "o.raw").read_bytes() == bytes(data)
    assert run(capsys, "convert", "-O", "qcow2", str(src), str(tmp_path / "o.qcow2"))[0] == 0
    with Qcow2Image(str(tmp_path / "o.qcow2"), readonly=True) as img:
        data_at = [(e.start, e.length) for e in img.allocation(0, img.size) if e.kind == "data"]
    assert data_at == [(0, 65536), (MiB + 65536, 65536)]  # whole clusters, the zero ones left out
    assert read(str(tmp_path / "o.qcow2")) == bytes(data)


class FailingDisk(BlockBackend):
    """Reads fail after `good` calls: how a convert of a damaged source ends."""

    def __init__(self, size: int, good: int) -> None:
        self.path, self.size, self.readonly, self.id, self.good = "failing", size, True, "x", good

    def read_into(self, offset, views):
        if self.good <= 0:
            raise DiskError(f"failing: read at {offset:#x} failed: Input/output error")
        self.good -= 1
        for v in views:
            v[:] = b"\1" * len(v)
        return sum(len(v) for v in views)

    write_from = flush = discard = write_zeroes = close = lambda self, *a: None  # type: ignore[assignment]


def test_convert_read_error_ends_the_copy(tmp_path):
    dst_path = str(tmp_path / "dst.raw")
    cli.create_raw(dst_path, 64 * MiB)
    threads = threading.active_count()
    with cli.open_image(dst_path, readonly=False) as dst, pytest.raises(DiskError, match="Input/output error"):
        cli.copy_image(FailingDisk(64 * MiB, 3), dst)
    assert threading.active_count() == threads  # the read-ahead thread is gone


def test_convert_progress_plain(capsys, tmp_path, raw):
    status, _, err = run(capsys, "convert", "-p", raw, str(tmp_path / "o.raw"))
    assert status == 0 and "(0.00/100%)" in err and err.rstrip().endswith("(100.00/100%)")


# --------------------------------------------------------------------------- resize

def test_resize(capsys, qcow, raw):
    assert run(capsys, "resize", qcow, "+1M") == (0, "Image resized.\n", "")
    assert run(capsys, "resize", "-q", raw, "8M")[:2] == (0, "")
    assert os.path.getsize(raw) == 8 * MiB
    status, _, err = run(capsys, "resize", qcow, "-1M")
    assert status == 1 and "--shrink" in error_line(err)
    assert run(capsys, "resize", "--shrink", qcow, "-1M")[0] == 0
    with Qcow2Image(qcow, readonly=True) as img:
        assert img.size == 4 * MiB
    status, _, err = run(capsys, "resize", "--shrink", qcow, "-1G")
    assert status == 1 and "more than the image's size" in error_line(err)
    status, _, err = run(capsys, "resize", qcow, "big")
    assert status == 1 and "invalid size 'big'" in error_line(err)
    status, _, err = run(capsys, "resize", qcow)
    assert status == 2 and "required" in err


# --------------------------------------------------------------------------- rebase and commit

def test_rebase_safe_keeps_content(capsys, tmp_path, raw):
    over = str(tmp_path / "over.qcow2")
    create(over, 4 * MiB, backing_file="disk.raw", backing_format="raw")
    write(over, 2 * MiB, b"\x22" * 4096)
    before = read(over)
    empty = str(tmp_path / "empty.raw")
    cli.create_raw(empty, 2 * MiB)
    assert run(capsys, "rebase", "-b", "empty.raw", "-F", "raw", over)[0] == 0
    with Qcow2Image(over, readonly=True) as img:
        assert (img.backing_file, img.backing_format) == ("empty.raw", "raw")
    assert read(over) == before
    assert run(capsys, "rebase", "-b", "", over)[0] == 0  # flatten
    with Qcow2Image(over, readonly=True) as img:
        assert img.backing_file is None or img.backing_file == ""
    assert read(over) == before


def test_rebase_unsafe_only_header(capsys, tmp_path, raw):
    over = str(tmp_path / "over.qcow2")
    create(over, 4 * MiB, backing_file="disk.raw", backing_format="raw")
    assert run(capsys, "rebase", "-u", "-b", "elsewhere.raw", "-F", "raw", over)[0] == 0
    with Qcow2Image(over, readonly=True, backing=False) as img:
        assert img.backing_file == "elsewhere.raw"
        assert {e.kind for e in img.allocation(0, img.size)} == {"unallocated"}


@pytest.mark.parametrize("argv, message", [
    (["-b", "none.raw", "OVER"], "none.raw (the backing file of"),
    (["-b", "over.qcow2", "OVER"], "would make the backing chain loop"),
    (["-b", "disk.raw", "RAW"], "raw images have no backing file"),
    (["-b", "", "-F", "raw", "OVER"], "-F needs a backing file"),
])
def test_rebase_errors(capsys, tmp_path, raw, argv, message):
    over = str(tmp_path / "over.qcow2")
    create(over, 4 * MiB, backing_file="disk.raw", backing_format="raw")
    argv = [over if a == "OVER" else raw if a == "RAW" else a for a in argv]
    status, _, err = run(capsys, "rebase", *argv)
    assert status == 1 and message in error_line(err)
    status, _, err = run(capsys, "rebase", over)
    assert status == 2 and "-b" in err


def test_commit(capsys, tmp_path, raw):
    over = str(tmp_path / "over.qcow2")
    create(over, 4 * MiB, backing_file="disk.raw", backing_format="raw")
    write(over, MiB + 512, b"\x33" * 5000)
    expected = read(over)
    assert run(capsys, "commit", over) == (0, "Image committed.\n", "")
    assert open(raw, "rb").read() == expected and read(over) == expected
    with Qcow2Image(over, readonly=True, backing=False) as img:
        assert {e.kind for e in img.allocation(0, img.size)} == {"unallocated"}  # emptied


def test_commit_keep_and_grow(capsys, tmp_path, raw):
    over = str(tmp_path / "over.qcow2")
    create(over, 6 * MiB, backing_file="disk.raw", backing_format="raw")
    write(over, 5 * MiB, b"\x44" * 4096)
    expected = read(over)
    assert run(capsys, "commit", "-d", "-q", over)[:2] == (0, "")
    assert open(raw, "rb").read() == expected
    with Qcow2Image(over, readonly=True, backing=False) as img:
        assert "data" in {e.kind for e in img.allocation(0, img.size)}  # kept


def test_commit_errors(capsys, qcow, raw):
    status, _, err = run(capsys, "commit", qcow)
    assert status == 1 and "no backing file to commit into" in error_line(err)
    status, _, err = run(capsys, "commit", raw)
    assert status == 1 and "no backing file" in error_line(err)


# --------------------------------------------------------------------------- map

def test_map_raw(capsys, raw):
    status, out, _ = run(capsys, "map", "--output", "json", raw)
    assert status == 0 and out.startswith('[{ "start": 0, "length": 1048576, "depth": 0, "present": true')
    assert json.loads(out) == [
        {"start": 0, "length": MiB, "depth": 0, "present": True, "zero": False, "data": True, "offset": 0},
        {"start": MiB, "length": 3 * MiB, "depth": 0, "present": True, "zero": True, "data": False, "offset": MiB}]
    status, out, _ = run(capsys, "map", raw)
    assert out.splitlines() == ["Offset          Length          Mapped to       File",
                                f"0               0x100000        0               {raw}"]


def test_map_chain(capsys, tmp_path, raw):
    over = str(tmp_path / "over.qcow2")
    create(over, 8 * MiB, backing_file="disk.raw", backing_format="raw")
    write(over, 2 * MiB, b"\x55" * 65536)
    status, out, _ = run(capsys, "map", "--output=json", over)
    entries = json.loads(out)
    assert status == 0 and sum(e["length"] for e in entries) == 8 * MiB
    at = {e["start"]: e for e in entries}
    assert at[0]["depth"] == 1 and at[0]["data"] and at[0]["present"]
    assert at[2 * MiB]["depth"] == 0 and at[2 * MiB]["data"] and "offset" in at[2 * MiB]
    tail = entries[-1]  # past the backing file's end: nothing anywhere
    assert tail["start"] + tail["length"] == 8 * MiB and not tail["present"] and tail["zero"]
    status, out, _ = run(capsys, "map", over)
    assert [line.split()[-1] for line in out.splitlines()[1:]] == [raw, over]


# --------------------------------------------------------------------------- snapshot

def test_snapshots(capsys, qcow):
    write(qcow, 0, b"A" * 4096)
    assert run(capsys, "snapshot", "-c", "one", qcow) == (0, "", "")
    write(qcow, 0, b"B" * 4096)
    status, out, _ = run(capsys, "snapshot", "-l", qcow)
    lines = out.splitlines()
    assert lines[0] == "Snapshot list:" and lines[1].split() == ["ID", "TAG", "VM", "SIZE", "DATE", "VM", "CLOCK", "ICOUNT"]
    assert lines[2].split()[:2] == ["1", "one"] and len(lines[2]) == len(lines[1])
    status, out, _ = run(capsys, "snapshot", "-l", "--output", "json", qcow)
    assert [s["name"] for s in json.loads(out)] == ["one"]
    assert run(capsys, "snapshot", "-a", "one", qcow)[0] == 0
    assert read(qcow, 0, 4096) == b"A" * 4096
    assert run(capsys, "snapshot", "-d", "1", qcow)[0] == 0
    assert run(capsys, "snapshot", "-l", qcow)[1] == ""


@pytest.mark.parametrize("argv, status, message", [
    (["QCOW"], 2, "one of the arguments -c -l -a -d is required"),
    (["-c", "a", "-l", "QCOW"], 2, "not allowed with"),
    (["-a", "nope", "QCOW"], 1, "nope"),
    (["-d", "nope", "QCOW"], 1, "nope"),
    (["-c", "x", "-U", "QCOW"], 1, "-U is only for -l"),
    (["-l", "RAW"], 1, "raw images have no snapshots"),
])
def test_snapshot_errors(capsys, qcow, raw, argv, status, message):
    argv = [qcow if a == "QCOW" else raw if a == "RAW" else a for a in argv]
    got, _, err = run(capsys, "snapshot", *argv)
    assert got == status and message in (error_line(err) if status == 1 else err)


def test_image_without_verb_prints_help(capsys):
    status, out, _ = run(capsys)
    assert status == 2 and "image" in out
