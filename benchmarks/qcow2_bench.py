#!/usr/bin/env python3
"""pyvirt's qcow2 engine against QEMU's, on the same files, in one run.

    .venv/bin/python benchmarks/qcow2_bench.py           # ~1 minute
    .venv/bin/python benchmarks/qcow2_bench.py --quick   # smaller figures, a smoke run

Figures (best of --reps runs; the files live in --dir, default a temporary
folder on the same file system as /tmp):

  4 KiB random write   into a fresh 1 GiB qcow2 (64 KiB clusters): every
                       write lands in a new cluster, so this is the
                       allocation path (L2 update, refcounts, zero fill)
  4 KiB random read    of a fully allocated 256 MiB qcow2
  1 MiB seq write      256 MiB into a fresh qcow2
  1 MiB seq read       the same 256 MiB back
  convert              a 1 GiB qcow2 full of data to raw: `pyvirt image
                       convert` against `qemu-img convert`, both as commands

The pyvirt side drives `Qcow2Image` from Python with memoryviews (no VM).
The QEMU side is qemu-io with `-t writeback` (host page cache, as pyvirt
uses) running synchronous `write`/`read` commands fed on stdin, one
request at a time like the Python loop; its start-up and close (measured
by running it with no commands on an identical image) is subtracted. Both
sides end the write figures with a flush (fdatasync), as qemu-io does on
close; `sync` runs before every timed run. qemu-img convert uses its
default cache mode (unsafe: no flush) and so does `pyvirt image convert`.

Targets: sequential >= 1.0x qemu-io, 4 KiB >= 0.5x qemu-io, convert time
<= 1.5x qemu-img's. Prints a table, writes benchmarks/results/qcow2-latest.json.
Exit status 0 when every figure was measured, 1 otherwise; never on a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SRC = ROOT / "src"
RESULTS = BENCH / "results"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TARGET_SEQ = 1.0  # pyvirt throughput / qemu-io's
TARGET_4K = 0.5
TARGET_CONVERT = 1.5  # pyvirt time / qemu-img's


@dataclass
class Figure:
    name: str
    unit: str  # "MiB/s", "IOPS" or "s"
    target: float
    higher_is_better: bool = True
    pyvirt: list[float] = field(default_factory=list)
    qemu: list[float] = field(default_factory=list)
    error: str = ""

    def best(self, samples: list[float]) -> float | None:
        if not samples:
            return None
        return max(samples) if self.higher_is_better else min(samples)

    @property
    def ratio(self) -> float | None:
        p, q = self.best(self.pyvirt), self.best(self.qemu)
        if not p or not q:
            return None
        return p / q

    @property
    def verdict(self) -> str:
        r = self.ratio
        if r is None:
            return "n/a"
        good = r >= self.target if self.higher_is_better else r <= self.target
        return "PASS" if good else "MISS"


def log(msg: str = "") -> None:
    print(msg, flush=True)


def sync() -> None:
    os.sync()


def timed(fn: Callable[[], object]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- the two sides

def qemu_io_seconds(path: Path, commands: list[str], fresh: Callable[[], None] | None = None) -> float:
    """Wall time of qemu-io running `commands`, less its start-up and close
    on an identical image (`fresh` remakes the image before each run)."""
    def run(lines: list[str]) -> float:
        if fresh:
            fresh()
        script = ("\n".join(lines) + "\n").encode()
        sync()
        t0 = time.perf_counter()
        p = subprocess.run(["qemu-io", "-f", "qcow2", "-t", "writeback", str(path)], input=script,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"qemu-io failed ({p.returncode}): {p.stderr.decode(errors='replace')[-500:]}")
        return t

    return max(run(commands) - run([]), 1e-9)


def pyvirt_seconds(path: Path, work: Callable[[object], None], readonly: bool = False) -> float:
    from pyvirt.disk.qcow2 import Qcow2Image

    img = Qcow2Image(str(path), readonly)
    try:
        return timed(lambda: work(img))
    finally:
        img.close()


def make_qcow2(path: Path, size: int) -> None:
    from pyvirt.disk.qcow2 import create

    path.unlink(missing_ok=True)
    create(str(path), size)


def fill_qcow2(path: Path, size: int) -> None:
    """A qcow2 image whose every cluster holds data (written by qemu-img, from a raw file)."""
    raw = path.with_suffix(".fill.raw")
    write_raw(raw, size)
    path.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()


def write_raw(path: Path, size: int) -> None:
    block = bytearray(os.urandom(MiB))
    with open(path, "wb") as f:
        for i in range(size // MiB):
            block[:8] = i.to_bytes(8, "little")  # no two MiB alike
            f.write(block)


# --------------------------------------------------------------------------- figures

def bench_random_writes(folder: Path, n: int, reps: int) -> Figure:
    fig = Figure("4 KiB random write (alloc)", "IOPS", TARGET_4K)
    size = GiB
    offsets = [o * 4 * KiB for o in random.Random(1).sample(range(size // (4 * KiB)), n)]
    path = folder / "randw.qcow2"
    buf = memoryview(b"\xab" * 4096)

    def work(img: object) -> None:
        for off in offsets:
            img.write_from(off, [buf])  # type: ignore[attr-defined]
        img.flush()  # type: ignore[attr-defined]

    commands = [f"write -P 0xab {off} 4k" for off in offsets] + ["flush"]
    for _ in range(reps):
        make_qcow2(path, size)
        fig.pyvirt.append(n / pyvirt_seconds(path, work))
        fig.qemu.append(n / qemu_io_seconds(path, commands, fresh=lambda: make_qcow2(path, size)))
    path.unlink()
    return fig


def bench_random_reads(folder: Path, image: Path, size: int, n: int, reps: int) -> Figure:
    fig = Figure("4 KiB random read", "IOPS", TARGET_4K)
    rng = random.Random(2)
    offsets = [rng.randrange(size // (4 * KiB)) * 4 * KiB for _ in range(n)]
    buf = memoryview(bytearray(4096))

    def work(img: object) -> None:
        for off in offsets:
            img.read_into(off, [buf])  # type: ignore[attr-defined]

    commands = [f"read {off} 4k" for off in offsets]
    for _ in range(reps):
        fig.pyvirt.append(n / pyvirt_seconds(image, work, readonly=True))
        fig.qemu.append(n / qemu_io_seconds(image, commands))
    return fig


def bench_sequential(folder: Path, size: int, reps: int) -> tuple[Figure, Figure]:
    wfig = Figure("1 MiB sequential write", "MiB/s", TARGET_SEQ)
    rfig = Figure("1 MiB sequential read", "MiB/s", TARGET_SEQ)
    path = folder / "seq.qcow2"
    data = memoryview(os.urandom(MiB))
    rbuf = memoryview(bytearray(MiB))

    def write(img: object) -> None:
        for off in range(0, size, MiB):
            img.write_from(off, [data])  # type: ignore[attr-defined]
        img.flush()  # type: ignore[attr-defined]

    def read(img: object) -> None:
        for off in range(0, size, MiB):
            img.read_into(off, [rbuf])  # type: ignore[attr-defined]

    wcmd = [f"write -P 0xcd {off} 1M" for off in range(0, size, MiB)] + ["flush"]
    rcmd = [f"read {off} 1M" for off in range(0, size, MiB)]
    mib = size / MiB
    for _ in range(reps):
        make_qcow2(path, size)
        wfig.pyvirt.append(mib / pyvirt_seconds(path, write))
        rfig.pyvirt.append(mib / pyvirt_seconds(path, read, readonly=True))
        wfig.qemu.append(mib / qemu_io_seconds(path, wcmd, fresh=lambda: make_qcow2(path, size)))
        rfig.qemu.append(mib / qemu_io_seconds(path, rcmd))
    path.unlink()
    return wfig, rfig


def bench_convert(folder: Path, size: int, reps: int) -> Figure:
    fig = Figure(f"convert {size // MiB} MiB qcow2 -> raw", "s", TARGET_CONVERT, higher_is_better=False)
    src = folder / "convert-src.qcow2"
    fill_qcow2(src, size)
    out = folder / "convert-out.raw"
    pyvirt = [sys.executable, "-m", "pyvirt", "image", "convert", "-q", "-f", "qcow2", "-O", "raw"]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    # As scripts/setup.sh does: without the caches (PYTHONDONTWRITEBYTECODE) every run compiles pyvirt.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(SRC / "pyvirt")], capture_output=True)
    for _ in range(reps):
        for side, cmd in (("qemu", ["qemu-img", "convert", "-f", "qcow2", "-O", "raw"]), ("pyvirt", pyvirt)):
            out.unlink(missing_ok=True)
            sync()
            t0 = time.perf_counter()
            r = subprocess.run([*cmd, str(src), str(out)], capture_output=True, text=True, env=env)
            t = time.perf_counter() - t0
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-500:]}")
            getattr(fig, side).append(t)
    for path in (src, out):
        path.unlink(missing_ok=True)
    return fig


# --------------------------------------------------------------------------- report

def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "IOPS":
        return f"{value / 1000:.1f}k IOPS"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.0f} {unit}"


def table(figures: list[Figure]) -> list[str]:
    lines = [f"{'figure':<32}{'pyvirt':>14}{'qemu':>14}{'ratio':>8}  {'target':<9}", "-" * 82]
    for f in figures:
        r = f.ratio
        target = f">= {f.target:.1f}x" if f.higher_is_better else f"<= {f.target:.1f}x"
        lines.append(f"{f.name:<32}{_fmt(f.best(f.pyvirt), f.unit):>14}{_fmt(f.best(f.qemu), f.unit):>14}"
                     f"{(f'{r:.2f}x' if r else 'n/a'):>8}  {target:<9} {f.verdict}"
                     + (f"  ({f.error})" if f.error else ""))
    return lines


def run(quick: bool = False, reps: int | None = None, folder: Path | None = None) -> list[Figure]:
    """Every figure (the entry point benchmarks/run.py can call)."""
    reps = reps or (1 if quick else 3)
    n4k = 2000 if quick else 8000
    seq = (64 if quick else 256) * MiB
    conv = (128 * MiB) if quick else GiB
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="qcow2-bench-")) if folder is None else folder
    figures: list[Figure] = []

    def attempt(name: str, fn: Callable[[], list[Figure]]) -> None:
        log(f"  {name} ...")
        try:
            figures.extend(fn())
        except Exception as e:  # noqa: BLE001 - report and go on with the other figures
            figures.append(Figure(name, "", 0, error=f"{type(e).__name__}: {e}"))

    try:
        attempt("4 KiB random write", lambda: [bench_random_writes(folder, n4k, reps)])
        image = folder / "full.qcow2"

        def reads() -> list[Figure]:
            fill_qcow2(image, seq)
            try:
                return [bench_random_reads(folder, image, seq, n4k * 2, reps)]
            finally:
                image.unlink(missing_ok=True)

        attempt("4 KiB random read", reads)
        attempt("1 MiB sequential", lambda: list(bench_sequential(folder, seq, reps)))
        attempt("convert", lambda: [bench_convert(folder, conv, reps)])
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="pyvirt qcow2 engine vs qemu-io / qemu-img")
    p.add_argument("--quick", action="store_true", help="smaller figures, one repetition (a smoke run)")
    p.add_argument("--reps", type=int, help="repetitions of each figure (default 3, --quick 1)")
    p.add_argument("--dir", type=Path, help="where the images go (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=RESULTS / "qcow2-latest.json", help="where the results go")
    args = p.parse_args(argv)
    for tool in ("qemu-io", "qemu-img"):
        if not shutil.which(tool):
            log(f"qcow2_bench: {tool} is missing (apt-get install qemu-utils)")
            return 1
    version = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    log(f"qcow2 benchmark: pyvirt (Python {sys.version.split()[0]}) vs {version}")
    log("qemu-io: -t writeback, synchronous write/read commands on stdin, start-up subtracted; "
        "writes end with a flush on both sides")
    t0 = time.monotonic()
    figures = run(args.quick, args.reps, args.dir)
    log()
    for line in table(figures):
        log(line)
    log(f"\n{time.monotonic() - t0:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"qemu": version, "figures": [
        {**asdict(f), "ratio": f.ratio, "verdict": f.verdict} for f in figures]}, indent=2) + "\n")
    return 1 if any(f.error for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
