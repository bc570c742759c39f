"""Shared helpers of the qcow2 tests (no tests here): qemu-img/qemu-io
wrappers, reading a whole image, and the checks every test repeats."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pyvirt.disk.backend import BlockBackend

HAVE_QEMU = bool(shutil.which("qemu-img") and shutil.which("qemu-io"))
needs_qemu = pytest.mark.skipif(not HAVE_QEMU, reason="qemu-img/qemu-io (qemu-utils) are not installed")
KiB, MiB = 1 << 10, 1 << 20


def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)
    if ok and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def qemu_img(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run("qemu-img", *args, ok=ok)


def qemu_io(path: Path, *commands: str, fmt: str = "qcow2") -> None:
    args: list[str | Path] = ["qemu-io", "-f", fmt]
    for c in commands:
        args += ["-c", c]
    r = run(*args, path)
    assert "error" not in r.stdout.lower() and "failed" not in r.stdout.lower(), r.stdout


def assert_clean(path: Path) -> dict[str, object]:
    """qemu-img check finds nothing: no corruptions, no leaks."""
    r = qemu_img("check", "--output", "json", path, ok=False)
    assert r.returncode == 0, f"qemu-img check {path}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    out: dict[str, object] = json.loads(r.stdout)
    assert not out.get("leaks") and not out.get("corruptions"), out
    return out


def qemu_check(path: Path) -> dict[str, object]:
    """qemu-img check's JSON and exit code ("exit"); works while pyvirt holds the image open."""
    r = qemu_img("check", "-U", "--output", "json", path, ok=False)
    out: dict[str, object] = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    out["exit"] = r.returncode
    return out


def assert_same_as_raw(path: Path, data: bytes | bytearray, tmp: Path) -> None:
    """qemu-img compare: the image reads exactly like `data`."""
    raw = tmp / (path.name + ".model.raw")
    raw.write_bytes(bytes(data))
    r = qemu_img("compare", "-F", "raw", path, raw, ok=False)
    assert r.returncode == 0, r.stdout + r.stderr


def qemu_raw(path: Path, tmp: Path) -> bytes:
    """What qemu reads: the image converted to raw."""
    out = tmp / (path.name + ".qemu.raw")
    qemu_img("convert", "-O", "raw", path, out)
    return out.read_bytes()


def read_all(img: BlockBackend, offset: int = 0, length: int | None = None) -> bytes:
    n = img.size - offset if length is None else length
    buf = bytearray(n)
    assert img.read_into(offset, [memoryview(buf)]) == n
    return bytes(buf)


def write(img: BlockBackend, offset: int, data: bytes) -> None:
    assert img.write_from(offset, [memoryview(data)]) == len(data)


def pattern(n: int, seed: int = 1) -> bytes:
    """Recognisable, incompressible-enough bytes."""
    import random

    return random.Random(seed).randbytes(n)
