"""qcow2 interoperability with QEMU: qemu-img accepts what pyvirt writes and
pyvirt reads what qemu-img writes, byte for byte.

  - images pyvirt creates, writes, converts, resizes, snapshots, rebases and
    commits pass `qemu-img check` and `qemu-img compare` equal to the bytes
    they should hold;
  - images qemu-img and qemu-io make (compat 0.10 and 1.1; 4k, 64k and 2M
    clusters; compressed; backing chains with relative names; internal
    snapshots; resized) read in pyvirt as `qemu-img convert -O raw` reads them;
  - `pyvirt image info/map --output json` agree with qemu-img's on the keys
    both have; `pyvirt image check` exits 0, 2 and 3 where qemu-img does;
  - linked clones share a read-only base, an image that is its own backing
    file fails at once, and a second writer is refused with the holder named.

Needs qemu-img and qemu-io (Debian's qemu-utils; scripts/setup.sh installs it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyvirt.cli import image as cli
from pyvirt.cli.main import main
from pyvirt.disk import DiskError
from pyvirt.disk.qcow2 import Qcow2Image, create

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

pytestmark = pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("qemu-io")),
                                reason="qemu-img/qemu-io are missing (apt-get install qemu-utils)")


# --------------------------------------------------------------------------- helpers

def qemu_img(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["qemu-img", *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"qemu-img {' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def qemu_io(path: Path, *commands: str, fmt: str = "qcow2") -> None:
    args = ["qemu-io", "-f", fmt]
    for c in commands:
        args += ["-c", c]
    r = subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "error" not in r.stdout.lower() + r.stderr.lower(), r.stdout + r.stderr


def pyvirt(*args: str) -> tuple[int, str, str]:
    """`pyvirt image ARGS` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(["image", *args])
        except SystemExit as e:
            status = int(e.code or 0)
    return status, out.getvalue(), err.getvalue()


def ok(*args: str) -> str:
    status, out, err = pyvirt(*args)
    assert status == 0, f"pyvirt image {' '.join(args)}: exit {status}\n{out}{err}"
    return out


def qemu_raw(path: Path, *extra: str) -> bytes:
    """The guest-visible bytes of `path`, as qemu-img reads them."""
    out = path.with_name(path.name + ".qemu.raw")
    qemu_img("convert", *extra, "-O", "raw", str(path), str(out))
    try:
        return out.read_bytes()
    finally:
        out.unlink()


def pyvirt_raw(path: Path) -> bytes:
    with cli.open_image(str(path)) as disk:
        buf = bytearray(disk.size)
        disk.read_into(0, [memoryview(buf)])
    return bytes(buf)


def assert_qemu_accepts(path: Path, expected: bytes) -> None:
    """qemu-img check finds nothing and the image holds `expected`."""
    r = qemu_img("check", "--output", "json", str(path), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    ref = path.with_name(path.name + ".expected.raw")
    ref.write_bytes(expected)
    try:
        r = qemu_img("compare", "-f", "qcow2", "-F", "raw", str(path), str(ref), check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        ref.unlink()


def random_writes(img: Qcow2Image, model: bytearray, rng: random.Random, count: int = 40) -> None:
    """Writes, write-zeroes and discards in `img`, mirrored in `model`
    (discarded ranges are then zeroed, so they read as zeros either way)."""
    for _ in range(count):
        length = rng.choice((512, 4096, 65536, 70000 // 512 * 512, 3 * MiB // 2))
        length = min(length, len(model))
        offset = rng.randrange(0, (len(model) - length) // 512 + 1) * 512
        kind = rng.random()
        if kind < 0.75:
            data = rng.randbytes(length)
            img.write_from(offset, [memoryview(data)])
            model[offset:offset + length] = data
        elif kind < 0.9:
            img.write_zeroes(offset, length, rng.random() < 0.5)
            model[offset:offset + length] = bytes(length)
        else:
            img.discard(offset, length)
            img.write_zeroes(offset, length, True)
            model[offset:offset + length] = bytes(length)


def pattern_raw(path: Path, size: int, seed: int = 0) -> bytes:
    """A raw image of `size` bytes: compressible text-like data, random data and holes."""
    rng = random.Random(seed)
    data = bytearray(size)
    for start in range(0, size, MiB):
        kind = (start // MiB) % 3
        if kind == 0:
            data[start:start + MiB] = (b"pyvirt %d " % start * (MiB // 8))[:MiB]
        elif kind == 1:
            data[start:start + MiB // 2] = rng.randbytes(MiB // 2)
    path.write_bytes(bytes(data))
    return bytes(data)


# --------------------------------------------------------------------------- images pyvirt writes

@pytest.mark.parametrize("compat, cluster, lazy", [
    ("1.1", "64k", "off"), ("0.10", "64k", "off"), ("1.1", "4k", "off"), ("1.1", "2M", "off"), ("1.1", "64k", "on"),
    ("0.10", "4k", "off"),
])
def test_pyvirt_writes_pass_qemu_check(tmp_path, compat, cluster, lazy):
    path = tmp_path / "w.qcow2"
    ok("create", "-q", "-f", "qcow2", "-o", f"compat={compat},cluster_size={cluster},lazy_refcounts={lazy}",
       str(path), "24M")
    model = bytearray(24 * MiB)
    rng = random.Random(f"{compat}{cluster}{lazy}")
    with Qcow2Image(str(path)) as img:
        random_writes(img, model, rng)
        img.flush()
    info = json.loads(qemu_img("info", "--output", "json", str(path)).stdout)
    assert info["cluster-size"] == cli.parse_size(cluster)
    assert info["format-specific"]["data"]["compat"] == compat
    assert_qemu_accepts(path, bytes(model))


@pytest.mark.parametrize("extra", [[], ["-c"], ["-o", "cluster_size=4k,compat=0.10"]])
def test_pyvirt_convert_to_qcow2(tmp_path, extra):
    src = tmp_path / "src.raw"
    data = pattern_raw(src, 7 * MiB + 4096)
    dst = tmp_path / "dst.qcow2"
    ok("convert", "-O", "qcow2", *extra, str(src), str(dst))
    assert_qemu_accepts(dst, data)
    if "-c" in extra:
        check = json.loads(qemu_img("check", "--output", "json", str(dst)).stdout)
        assert check.get("compressed-clusters", 0) > 0
    # and back: pyvirt's raw equals qemu-img's, and is sparse
    back = tmp_path / "back.raw"
    ok("convert", "-f", "qcow2", "-O", "raw", str(dst), str(back))
    assert back.read_bytes() == data == qemu_raw(dst)
    assert os.stat(back).st_blocks * 512 < len(data)


def test_pyvirt_resize(tmp_path):
    path = tmp_path / "r.qcow2"
    ok("create", "-q", "-f", "qcow2", str(path), "8M")
    model = bytearray(8 * MiB)
    with Qcow2Image(str(path)) as img:
        random_writes(img, model, random.Random(3), 20)
    ok("resize", "-q", str(path), "+3M")
    assert_qemu_accepts(path, bytes(model) + bytes(3 * MiB))
    ok("resize", "-q", "--shrink", str(path), "-5M")
    assert_qemu_accepts(path, bytes(model[:6 * MiB]))
    assert pyvirt_raw(path) == bytes(model[:6 * MiB])


def test_pyvirt_snapshots(tmp_path):
    path = tmp_path / "s.qcow2"
    ok("create", "-q", "-f", "qcow2", str(path), "8M")
    model = bytearray(8 * MiB)
    rng = random.Random(4)
    with Qcow2Image(str(path)) as img:
        random_writes(img, model, rng, 15)
    at_snapshot = bytes(model)
    ok("snapshot", "-c", "before", str(path))
    with Qcow2Image(str(path)) as img:
        random_writes(img, model, rng, 15)
    assert_qemu_accepts(path, bytes(model))
    assert "before" in qemu_img("snapshot", "-l", str(path)).stdout
    assert qemu_raw(path, "-l", "snapshot.name=before") == at_snapshot  # qemu reads our snapshot
    ok("snapshot", "-a", "before", str(path))
    assert_qemu_accepts(path, at_snapshot)
    qemu_img("snapshot", "-c", "qemu-made", str(path))
    ok("snapshot", "-d", "before", str(path))
    assert_qemu_accepts(path, at_snapshot)
    assert [s["name"] for s in json.loads(ok("snapshot", "-l", "--output", "json", str(path)))] == ["qemu-made"]


def test_pyvirt_rebase_and_commit(tmp_path):
    base, mid, top = tmp_path / "base.qcow2", tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    base_data = pattern_raw(tmp_path / "b.raw", 8 * MiB)
    qemu_img("convert", "-O", "qcow2", str(tmp_path / "b.raw"), str(base))
    ok("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(mid))
    ok("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", str(top))
    qemu_io(mid, "write -P 0xaa 1M 128k", "write -z 3M 64k")
    qemu_io(top, "write -P 0xbb 1088k 4k", "write -P 0xcc 6M 64k")
    expected = qemu_raw(top)
    # safe rebase onto base: what mid held moves into top
    ok("rebase", "-b", "base.qcow2", "-F", "qcow2", str(top))
    info = json.loads(qemu_img("info", "--output", "json", str(top)).stdout)
    assert info["backing-filename"] == "base.qcow2" and info["backing-filename-format"] == "qcow2"
    assert qemu_img("check", str(top), check=False).returncode == 0
    assert qemu_raw(top) == expected == pyvirt_raw(top)
    assert qemu_img("compare", str(top), str(mid), check=False).returncode == 1  # mid is no longer needed
    # commit top into base, which top then shows through again
    ok("commit", "-q", str(top))
    assert qemu_raw(base) == expected
    assert qemu_img("check", str(base), check=False).returncode == 0
    assert qemu_img("check", str(top), check=False).returncode == 0
    assert qemu_raw(top) == expected
    entries = json.loads(qemu_img("map", "--output", "json", str(top)).stdout)
    assert {e["depth"] for e in entries} == {1}  # top is empty
    assert base_data != expected


# --------------------------------------------------------------------------- images qemu writes

@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("cluster", ["4k", "64k", "2M"])
def test_reads_qemu_images(tmp_path, compat, cluster):
    path = tmp_path / "q.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"compat={compat},cluster_size={cluster}", str(path), "12M")
    qemu_io(path, "write -P 0x11 0 5k", "write -P 0x22 65000 70000", "write -P 0x33 3M 2M", "write -z 4M 64k",
            "discard 4608k 512k", "write -P 0x44 12276k 12k", "write -P 0x55 7M 1")
    assert pyvirt_raw(path) == qemu_raw(path)


def test_reads_qemu_compressed(tmp_path):
    src = tmp_path / "src.raw"
    data = pattern_raw(src, 9 * MiB + 512)
    path = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", str(src), str(path))
    assert pyvirt_raw(path) == data
    qemu_io(path, "write -P 0x66 4100k 8k")  # a write into a compressed cluster
    assert pyvirt_raw(path) == qemu_raw(path)


def test_reads_relative_backing_chain(tmp_path, monkeypatch):
    (tmp_path / "images" / "sub").mkdir(parents=True)
    base = tmp_path / "images" / "base.qcow2"
    mid = tmp_path / "images" / "sub" / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "6M")
    qemu_io(base, "write -P 1 0 2M", "write -P 2 5M 1M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "../base.qcow2", "-F", "qcow2", str(mid))
    qemu_io(mid, "write -P 3 1M 64k", "write -z 5M 64k")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "images/sub/mid.qcow2", "-F", "qcow2", str(top), "8M")
    qemu_io(top, "write -P 4 1040k 4k", "write -P 5 7M 4k")
    monkeypatch.chdir("/")  # names are relative to each image's folder, not to the working directory
    assert pyvirt_raw(top) == qemu_raw(top)
    chain = json.loads(ok("info", "--backing-chain", "--output", "json", str(top)))
    assert [c["filename"] for c in chain] == [str(top), str(tmp_path / "images/sub/mid.qcow2"),
                                               str(tmp_path / "images/sub/../base.qcow2")]


def test_reads_qemu_snapshots(tmp_path):
    path = tmp_path / "s.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "4M")
    qemu_io(path, "write -P 1 0 1M")
    qemu_img("snapshot", "-c", "one", str(path))
    qemu_io(path, "write -P 2 512k 1M", "write -z 0 64k")
    qemu_img("snapshot", "-c", "two", str(path))
    qemu_io(path, "write -P 3 3M 4k")
    one = qemu_raw(path, "-l", "snapshot.name=one")
    assert pyvirt_raw(path) == qemu_raw(path)
    names = [s["name"] for s in json.loads(ok("snapshot", "-l", "--output", "json", str(path)))]
    assert names == ["one", "two"]
    ok("snapshot", "-a", "one", str(path))
    assert pyvirt_raw(path) == one == qemu_raw(path)
    assert qemu_img("check", str(path), check=False).returncode == 0


def test_reads_snapshot_table_at_end_of_file(tmp_path):
    """qemu-img writes the snapshot table last and does not pad its last
    entry to 8 bytes in the file."""
    path = tmp_path / "s.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "4M")
    qemu_io(path, "write -P 1 0 64k")
    qemu_img("snapshot", "-c", "snap", str(path))
    assert os.path.getsize(path) % 8  # the case at hand
    assert [s["name"] for s in json.loads(ok("info", "--output", "json", str(path)))["snapshots"]] == ["snap"]
    assert pyvirt_raw(path) == qemu_raw(path)


def test_reads_after_qemu_resize(tmp_path):
    path = tmp_path / "r.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(path), "3M")
    qemu_io(path, "write -P 7 0 3M")
    qemu_img("resize", "-q", str(path), "+61M")  # grows the L1 table
    qemu_io(path, "write -P 8 40M 1M")
    assert pyvirt_raw(path) == qemu_raw(path)
    qemu_img("resize", "-q", "--shrink", str(path), "2M")
    assert pyvirt_raw(path) == qemu_raw(path)


# --------------------------------------------------------------------------- info, map, check against qemu-img

SHARED_INFO = ("virtual-size", "filename", "format", "cluster-size", "actual-size", "dirty-flag", "backing-filename",
               "backing-filename-format", "full-backing-filename")


def _chain_for_json(tmp_path: Path) -> Path:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(base), "6M")
    qemu_io(base, "write -P 1 0 1M", "write -z 2M 64k", "write -P 2 5M 64k")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top), "8M")
    qemu_io(top, "write -P 3 512k 64k", "write -z 5M 64k", "write -P 4 7M 128k")
    qemu_img("snapshot", "-c", "snap", str(top))
    qemu_io(top, "write -P 5 6M 4k")  # the snapshot table is then not the file's last bytes
    return top


def test_info_json_agrees(tmp_path):
    top = _chain_for_json(tmp_path)
    theirs = json.loads(qemu_img("info", "--output", "json", "--backing-chain", str(top)).stdout)
    ours = json.loads(ok("info", "--output", "json", "--backing-chain", str(top)))
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        shared = [k for k in SHARED_INFO if k in b]
        assert {k: a.get(k) for k in shared} == {k: b[k] for k in shared}
        for key in ("compat", "lazy-refcounts", "refcount-bits", "corrupt"):
            assert a["format-specific"]["data"][key] == b["format-specific"]["data"][key]
        assert [s["name"] for s in a.get("snapshots", [])] == [s["name"] for s in b.get("snapshots", [])]
    human = ok("info", str(top))
    assert "backing file: base.qcow2 (actual path: " in human and "Snapshot list:" in human


def test_map_json_agrees(tmp_path):
    top = _chain_for_json(tmp_path)
    for path in (top, tmp_path / "base.qcow2"):
        theirs = json.loads(qemu_img("map", "--output", "json", str(path)).stdout)
        ours = json.loads(ok("map", "--output", "json", str(path)))
        assert ours == theirs, path


def test_map_raw_agrees(tmp_path):
    path = tmp_path / "r.raw"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(MiB)
        f.write(b"x" * MiB)
    theirs = json.loads(qemu_img("map", "--output", "json", "-f", "raw", str(path)).stdout)
    ours = json.loads(ok("map", "--output", "json", str(path)))
    assert ours == theirs


def _header(path: Path) -> dict[str, int]:
    with open(path, "rb") as f:
        h = f.read(104)
    version, = struct.unpack_from(">I", h, 4)
    return {"cluster_bits": struct.unpack_from(">I", h, 20)[0],
            "l1_table_offset": struct.unpack_from(">Q", h, 40)[0],
            "refcount_table_offset": struct.unpack_from(">Q", h, 48)[0],
            "refcount_order": struct.unpack_from(">I", h, 96)[0] if version >= 3 else 4}


def make_leak(path: Path) -> None:
    """Append a cluster nothing references, with refcount 1."""
    h = _header(path)
    cluster = 1 << h["cluster_bits"]
    assert h["refcount_order"] == 4
    size = os.path.getsize(path)
    index = -(-size // cluster)
    with open(path, "r+b") as f:
        f.seek(h["refcount_table_offset"])
        block, = struct.unpack(">Q", f.read(8))
        assert index < cluster // 2
        f.seek(block + 2 * index)
        f.write(struct.pack(">H", 1))
        f.truncate((index + 1) * cluster)


def make_corruption(path: Path) -> None:
    """Point guest cluster 1's L2 entry at guest cluster 0's data: a cluster
    referenced twice with refcount 1 (and one leaked)."""
    h = _header(path)
    with open(path, "r+b") as f:
        f.seek(h["l1_table_offset"])
        l2, = struct.unpack(">Q", f.read(8))
        l2 &= 0x00FFFFFFFFFFFE00
        f.seek(l2)
        first, second = struct.unpack(">QQ", f.read(16))
        assert first and second
        f.seek(l2 + 8)
        f.write(struct.pack(">Q", first))


@pytest.mark.parametrize("damage, status", [(None, 0), (make_leak, 3), (make_corruption, 2)])
def test_check_exit_codes(tmp_path, damage, status):
    path = tmp_path / "c.qcow2"
    ok("create", "-q", "-f", "qcow2", str(path), "4M")
    with Qcow2Image(str(path)) as img:
        img.write_from(0, [memoryview(b"a" * 131072)])
    if damage:
        damage(path)
    assert qemu_img("check", str(path), check=False).returncode == status
    got, out, err = pyvirt("check", str(path))
    assert got == status, out + err
    got, out, _ = pyvirt("check", "--output", "json", str(path))
    ours = json.loads(out)
    theirs = json.loads(qemu_img("check", "--output", "json", str(path), check=False).stdout)
    for key in ("leaks", "corruptions", "check-errors"):
        assert ours.get(key, 0) == theirs.get(key, 0), key
    if damage is make_leak:
        got, out, err = pyvirt("check", "-r", "leaks", str(path))
        assert got == 0 and "1 leaked clusters" in out, out + err
        assert qemu_img("check", str(path), check=False).returncode == 0


# --------------------------------------------------------------------------- clones, loops and locks

def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_linked_clones_share_a_read_only_base(tmp_path):
    base = tmp_path / "base.qcow2"
    base_data = pattern_raw(tmp_path / "b.raw", 16 * MiB, seed=9)
    ok("convert", "-q", "-O", "qcow2", str(tmp_path / "b.raw"), str(base))
    before = base.read_bytes()
    clones = [tmp_path / f"clone{i}.qcow2" for i in range(3)]
    for c in clones:
        ok("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(c))
    empty = [_allocated(c) for c in clones]
    images = [Qcow2Image(str(c)) for c in clones]  # all open at once: the base is shared, read-only
    try:
        with pytest.raises(DiskError):
            Qcow2Image(str(base))  # nobody may write it meanwhile
        for i, img in enumerate(images):
            img.write_from(i * MiB, [memoryview(bytes([0x80 + i]) * ((i + 1) * 65536))])
            img.flush()
    finally:
        for img in images:
            img.close()
    assert base.read_bytes() == before
    for i, c in enumerate(clones):
        expected = bytearray(base_data)
        expected[i * MiB:i * MiB + (i + 1) * 65536] = bytes([0x80 + i]) * ((i + 1) * 65536)
        assert_qemu_accepts(c, bytes(expected))
        grown = _allocated(c) - empty[i]
        assert (i + 1) * 65536 <= grown <= (i + 1) * 65536 + 2 * 65536, (i, grown)  # data + one L2 table (+ slack)


def test_image_that_is_its_own_backing_file(tmp_path):
    path = tmp_path / "self.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "self.qcow2", "-F", "qcow2", str(path), "1M")
    for verb in (["info"], ["map"], ["convert", "-O", "raw"], ["commit"], ["info", "--backing-chain"]):
        args = [*verb, str(path)] + ([str(tmp_path / "out.raw")] if verb[0] == "convert" else [])
        start = time.monotonic()
        status, out, err = pyvirt(*args)
        assert status == 1 and time.monotonic() - start < 5
        assert "backing chain loops" in err and len(err.splitlines()) == 1, err
    start = time.monotonic()
    with pytest.raises(DiskError, match="self.qcow2"):
        Qcow2Image(str(path)).close()  # the engine too, for `pyvirt run --disk`
    assert time.monotonic() - start < 5


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "busy.qcow2"
    ok("create", "-q", "-f", "qcow2", str(path), "4M")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pyvirt.disk.qcow2 import Qcow2Image; "
         f"img = Qcow2Image({str(path)!r}); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "ready"
        status, _, err = pyvirt("resize", str(path), "+1M")
        assert status == 1 and f"process {holder.pid}" in err and len(err.splitlines()) == 1, err
        r = qemu_img("resize", str(path), "+1M", check=False)
        assert r.returncode != 0 and "lock" in r.stderr
        assert pyvirt("info", "-U", str(path))[0] == 0  # -U reads without a lock
    finally:
        holder.communicate("", timeout=10)
    qemu = subprocess.Popen(["qemu-io", "-f", "qcow2", str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while not cli.lock_holders(str(path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        status, _, err = pyvirt("snapshot", "-c", "x", str(path))
        assert status == 1 and f"process {qemu.pid} (qemu-io)" in err, err
    finally:
        qemu.communicate("quit\n", timeout=10)
    assert pyvirt("snapshot", "-c", "x", str(path))[0] == 0
