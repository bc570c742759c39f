"""Raw disk backend: I/O through views, bounds, locking, discard and zeroing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyvirt.disk import DiskError, detect_format, open_disk
from pyvirt.disk import raw as rawmod
from pyvirt.disk.backend import advance as _advance
from pyvirt.disk.raw import RawBackend

MiB = 1 << 20
SRC = str(Path(__file__).resolve().parents[2] / "src")


def make_image(path: Path, size: int, fill: bytes | None = None) -> Path:
    with open(path, "wb") as f:
        if fill is None:
            f.truncate(size)
        else:
            f.write((fill * (size // len(fill) + 1))[:size])
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "disk.raw", 4 * MiB, bytes(range(256)))


def test_read_into_views(image: Path) -> None:
    data = image.read_bytes()
    with RawBackend(str(image)) as d:
        assert d.size == 4 * MiB and not d.readonly and d.block_size == 512
        a, b = bytearray(100), bytearray(4000)
        assert d.read_into(1000, [memoryview(a), memoryview(b)]) == 4100
        assert bytes(a + b) == data[1000:5100]


def test_write_from_views_reaches_the_file(image: Path) -> None:
    with RawBackend(str(image)) as d:
        assert d.write_from(512, [memoryview(b"x" * 10), memoryview(b""), memoryview(b"y" * 502)]) == 512
        d.flush()
    out = image.read_bytes()
    assert out[512:1024] == b"x" * 10 + b"y" * 502
    assert out[:512] == bytes(range(256)) * 2


def test_more_views_than_iov_max(image: Path) -> None:
    bufs = [bytearray(8) for _ in range(rawmod.IOV_MAX + 300)]
    with RawBackend(str(image)) as d:
        n = d.read_into(0, [memoryview(b) for b in bufs])
        assert n == 8 * len(bufs)
        assert b"".join(bufs) == image.read_bytes()[:n]
        assert d.write_from(0, [memoryview(bytes([i % 251]) * 8) for i in range(len(bufs))]) == n
    assert image.read_bytes()[:16] == b"\0" * 8 + b"\1" * 8


def test_advance_splits_partial_view() -> None:
    views = [memoryview(b"abc"), memoryview(b"defg"), memoryview(b"h")]
    assert [bytes(v) for v in _advance(views, 0)] == [b"abc", b"defg", b"h"]
    assert [bytes(v) for v in _advance(views, 3)] == [b"defg", b"h"]
    assert [bytes(v) for v in _advance(views, 5)] == [b"fg", b"h"]
    assert _advance(views, 8) == []


@pytest.mark.parametrize("offset,length", [(-1, 1), (4 * MiB, 1), (4 * MiB - 1, 2), (0, 4 * MiB + 1)])
def test_out_of_range_is_refused(image: Path, offset: int, length: int) -> None:
    before = image.read_bytes()
    with RawBackend(str(image)) as d:
        with pytest.raises(DiskError, match="outside the disk"):
            d.read_into(offset, [memoryview(bytearray(length))])
        with pytest.raises(DiskError, match="outside the disk"):
            d.write_from(offset, [memoryview(bytes(length))])
        with pytest.raises(DiskError):
            d.discard(offset, length)
        with pytest.raises(DiskError):
            d.write_zeroes(offset, length, True)
    assert image.read_bytes() == before


def test_readonly_refuses_writes(image: Path) -> None:
    before = image.read_bytes()
    with RawBackend(str(image), readonly=True) as d:
        assert d.readonly and not d.discard_supported
        d.read_into(0, [memoryview(bytearray(512))])
        for op in (lambda: d.write_from(0, [memoryview(bytes(512))]), lambda: d.discard(0, 512),
                   lambda: d.write_zeroes(0, 512, False)):
            with pytest.raises(DiskError, match="read-only"):
                op()
        d.flush()  # harmless
    assert image.read_bytes() == before


def test_unwritable_file_suggests_readonly(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_write(path: str, flags: int, *args: int) -> int:
        if flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied")  # what a 0444 file gives a non-root user
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_write)
    with pytest.raises(DiskError, match="Permission denied.*read-only"):
        RawBackend(str(image))
    RawBackend(str(image), readonly=True).close()


def test_size_not_a_sector_multiple(tmp_path: Path) -> None:
    with RawBackend(str(make_image(tmp_path / "odd", 1000))) as d:
        assert d.size == 1000


def test_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="not a regular file or block device"):
        RawBackend(str(tmp_path))
    with pytest.raises(DiskError, match="not a regular file or block device"):
        RawBackend("/dev/null")
    with pytest.raises(DiskError, match="No such file"):
        RawBackend(str(tmp_path / "missing"))


# --- locking -------------------------------------------------------------------
def test_second_writer_is_refused(image: Path) -> None:
    with RawBackend(str(image)):
        with pytest.raises(DiskError) as e:
            RawBackend(str(image))
        assert str(image) in str(e.value) and "another process holds a lock" in str(e.value)
        with pytest.raises(DiskError, match="lock"):
            RawBackend(str(image), readonly=True)  # no reading a disk someone writes
    RawBackend(str(image)).close()  # closing released the lock


def test_readers_share(image: Path) -> None:
    with RawBackend(str(image), readonly=True), RawBackend(str(image), readonly=True):
        with pytest.raises(DiskError, match="lock"):
            RawBackend(str(image))


def test_lock_can_be_skipped(image: Path) -> None:
    with RawBackend(str(image)), RawBackend(str(image), lock=False):
        pass


def _child(path: Path, readonly: bool) -> subprocess.CompletedProcess[str]:
    code = ("import sys\nfrom pyvirt.disk import open_disk, DiskError\n"
            "try:\n    open_disk(sys.argv[1], readonly=sys.argv[2] == '1', format='raw')\n"
            "except DiskError as e:\n    print(e); sys.exit(3)\n")
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-c", code, str(path), "1" if readonly else "0"],
                          capture_output=True, text=True, env=env, timeout=60)


def test_lock_seen_by_another_process(image: Path) -> None:
    with RawBackend(str(image)):
        r = _child(image, readonly=False)
        assert r.returncode == 3, r.stderr
        assert str(image) in r.stdout and "another process holds a lock" in r.stdout
    with RawBackend(str(image), readonly=True):
        assert _child(image, readonly=True).returncode == 0
        assert _child(image, readonly=False).returncode == 3


# --- discard and write-zeroes ----------------------------------------------------
def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_discard_punches_holes(tmp_path: Path, where: str) -> None:
    base = tmp_path if where == "tmp" else Path("/dev/shm")
    if where == "shm" and not (base.is_dir() and os.access(base, os.W_OK)):
        pytest.skip("no writable /dev/shm")
    path = make_image(base / f"pyvirt-discard-{os.getpid()}-{tmp_path.name}", 4 * MiB, b"\xaa")
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)  # allocate delayed blocks, so the count below is real
        os.close(fd)
        before = _allocated(path)
        with RawBackend(str(path)) as d:
            d.discard(MiB, 2 * MiB)
            if not d.discard_supported:
                pytest.skip(f"{where}: file system cannot punch holes")
        data = path.read_bytes()
        assert len(data) == 4 * MiB  # KEEP_SIZE
        assert data[:MiB] == b"\xaa" * MiB and data[3 * MiB:] == b"\xaa" * MiB
        assert data[MiB:3 * MiB] == bytes(2 * MiB)
        assert _allocated(path) <= before - 2 * MiB + 64 * 1024
    finally:
        path.unlink()


@pytest.mark.parametrize("may_unmap", [False, True])
def test_write_zeroes(image: Path, may_unmap: bool) -> None:
    before = image.read_bytes()
    with RawBackend(str(image)) as d:
        d.write_zeroes(1000, 70000, may_unmap)
    after = image.read_bytes()
    assert after[1000:71000] == bytes(70000)
    assert after[:1000] == before[:1000] and after[71000:] == before[71000:]


def test_write_zeroes_falls_back_to_writing(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rawmod, "IOV_MAX", 4)  # several pwritev calls of shared zero chunks
    before = image.read_bytes()
    with RawBackend(str(image)) as d:
        d._can_punch = d._can_zero_range = False
        d.write_zeroes(100, 3 * MiB, True)
    after = image.read_bytes()
    assert after[100:100 + 3 * MiB] == bytes(3 * MiB)
    assert after[:100] == before[:100] and after[100 + 3 * MiB:] == before[100 + 3 * MiB:]


def test_unsupported_fallocate_degrades(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def nope(fd: int, mode: int, offset: int, length: int) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(rawmod, "fallocate", nope)
    before = image.read_bytes()
    with RawBackend(str(image)) as d:
        d.discard(0, 4096)  # a hint: silently nothing
        assert not d.discard_supported
        d.write_zeroes(0, 4096, True)
    after = image.read_bytes()
    assert after[:4096] == bytes(4096) and after[4096:] == before[4096:]


# --- open_disk -------------------------------------------------------------------
def test_open_disk_detects(tmp_path: Path, image: Path) -> None:
    assert detect_format(str(image)) == "raw"
    with open_disk(str(image), readonly=True) as d:
        assert isinstance(d, RawBackend) and d.readonly
    q = tmp_path / "q.qcow2"
    q.write_bytes(b"QFI\xfb" + bytes(508))
    assert detect_format(str(q)) == "qcow2"
    with pytest.raises(DiskError, match="qcow2 header"):  # detected as qcow2, and not a valid one
        open_disk(str(q))
    with open_disk(str(q), format="raw") as d:  # the user says what it is
        assert d.size == 512
    with pytest.raises(DiskError, match="unknown disk format"):
        open_disk(str(image), format="vmdk")
    with pytest.raises(DiskError, match="No such file"):
        open_disk(str(tmp_path / "missing"))


def test_serial(image: Path) -> None:
    with open_disk(str(image), serial="disk-0") as d:
        assert d.id == "disk-0"
    with RawBackend(str(image)) as d:
        assert 0 < len(d.id) <= 20 and d.id.isascii()
        default = d.id
    with RawBackend(str(image)) as d:
        assert d.id == default  # stable across opens
    for bad in ("x" * 21, "caf\u00e9", "a\nb"):
        with pytest.raises(DiskError, match="serial"):
            RawBackend(str(image), serial=bad)
    RawBackend(str(image)).close()  # the refused opens released their locks
