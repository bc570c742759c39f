#!/usr/bin/env python3
"""Crash consistency of pyvirt's qcow2 engine: kill -9 a writer at random
points, then check the image.

    .venv/bin/python scripts/qcow2_crash_soak.py              # 100 rounds
    .venv/bin/python scripts/qcow2_crash_soak.py -n 10 --seed 7 --keep /tmp/crashes

Each round creates a fresh qcow2 image (cluster size and version drawn at
random) and starts a worker, this script with --worker, that runs a seeded
random workload through `Qcow2Image`: writes and write-zeroes of 1 to 160
sectors anywhere in the disk, and a flush every 1 to 16 of them. After each
flush the worker appends the number of requests that flush covered to a side
file. After a random delay the worker gets SIGKILL. Then:

  1. `qemu-img check` finds at most leaked clusters (exit status 0 or 3);
  2. the image opens with pyvirt, and `pyvirt image check` agrees;
  3. every sector holds what the last acknowledged request wrote there, or
     what one of the requests of the unfinished batch wrote (they may or may
     not have reached the image), and nothing else.

Every sector a request writes names the request and the sector, so data at
the wrong place or from a lost write is caught, not only corrupt metadata.
Exit status 0 when every round passed; failed rounds keep their image and
log under --keep (default: a temporary folder that is printed).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
SECTOR = 512
DISK_SIZE = 32 << 20
SECTORS = DISK_SIZE // SECTOR
MAX_SECTORS = 160  # 80 KiB: crosses 64 KiB clusters, spans many 4 KiB ones
MAX_BATCH = 16
MAX_DELAY = 1.2  # seconds of workload before the kill

if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


@dataclass(frozen=True)
class Op:
    """One request of the workload: seq counts requests from 1; `zero` is write-zeroes."""

    seq: int
    sector: int
    count: int
    zero: bool
    unmap: bool


def workload(seed: int) -> Iterator[list[Op]]:
    """Batches of requests, each batch followed by a flush: the same for the worker and the checker."""
    rng = random.Random(seed)
    seq = 0
    while True:
        batch = []
        for _ in range(rng.randint(1, MAX_BATCH)):
            seq += 1
            count = rng.randint(1, MAX_SECTORS)
            sector = rng.randrange(0, SECTORS - count + 1)
            if rng.random() < 0.3:  # cluster-aligned: the whole-cluster allocation path
                sector -= sector % 128
            zero = rng.random() < 0.15
            batch.append(Op(seq, sector, count, zero, rng.random() < 0.5))
        yield batch


def sector_data(seq: int, sector: int) -> bytes:
    return struct.pack("<QQ", seq, sector) * (SECTOR // 16)


def op_data(op: Op) -> bytes:
    return b"".join(sector_data(op.seq, op.sector + i) for i in range(op.count))


# --------------------------------------------------------------------------- worker

def worker(image: str, log: str, seed: int) -> int:
    from pyvirt.disk.qcow2 import Qcow2Image

    img = Qcow2Image(image)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print("ready", flush=True)
    done = 0
    for batch in workload(seed):
        for op in batch:
            if op.zero:
                img.write_zeroes(op.sector * SECTOR, op.count * SECTOR, op.unmap)
            else:
                img.write_from(op.sector * SECTOR, [memoryview(op_data(op))])
            done = op.seq
        img.flush()
        os.write(fd, f"{done}\n".encode())  # survives SIGKILL: it is in the page cache
    return 0  # the workload never ends: the checker kills it


# --------------------------------------------------------------------------- checker

@dataclass
class Round:
    seed: int
    cluster_size: int
    version: int
    delay: float
    acked: int = 0
    ok: bool = False
    problem: str = ""


def expected_sectors(seed: int, acked: int) -> tuple[dict[int, int], dict[int, set[int]]]:
    """sector -> seq of the last acknowledged request there (0: zeros), and
    sector -> seqs the unfinished batch may have left there."""
    last: dict[int, int] = {}
    maybe: dict[int, set[int]] = {}
    for batch in workload(seed):
        if batch[0].seq > acked:
            for op in batch:
                for s in range(op.sector, op.sector + op.count):
                    maybe.setdefault(s, set()).add(0 if op.zero else op.seq)
            return last, maybe
        for op in batch:
            for s in range(op.sector, op.sector + op.count):
                last[s] = 0 if op.zero else op.seq
    raise AssertionError("unreachable")


def verify(image: str, seed: int, acked: int) -> str:
    """'' when every sector is one the workload allows, else the first problem."""
    from pyvirt.disk.qcow2 import Qcow2Image

    last, maybe = expected_sectors(seed, acked)
    buf = bytearray(DISK_SIZE)
    with Qcow2Image(image, readonly=True) as img:
        img.read_into(0, [memoryview(buf)])
    zero = bytes(SECTOR)
    bad = []
    for s in range(SECTORS):
        got = bytes(buf[s * SECTOR:(s + 1) * SECTOR])
        allowed = {last.get(s, 0)} | maybe.get(s, set())
        if any(got == (zero if seq == 0 else sector_data(seq, s)) for seq in allowed):
            continue
        seq, where = struct.unpack_from("<QQ", got)
        what = "zeros" if got == zero else f"request {seq}'s sector {where}" if got[:16] * 32 == got else "garbage"
        bad.append(f"sector {s} holds {what}, expected request(s) {sorted(allowed)}")
    if bad:
        return f"{len(bad)} bad sectors (acked {acked}): " + "; ".join(bad[:3])
    return ""


def run_round(folder: Path, seed: int, max_delay: float = MAX_DELAY) -> Round:
    from pyvirt.disk.qcow2 import create

    rng = random.Random(seed ^ 0x5EED)
    r = Round(seed, rng.choice((4096, 65536, 65536, 2 << 20)), rng.choice((2, 3, 3)),
              rng.uniform(0.05, max_delay))
    image, log = folder / f"crash-{seed}.qcow2", folder / f"crash-{seed}.log"
    for p in (image, log):
        p.unlink(missing_ok=True)
    create(str(image), DISK_SIZE, cluster_size=r.cluster_size, version=r.version)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(image), str(log), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            proc.wait(10)
            r.problem = "the worker did not start: " + proc.stderr.read().decode(errors="replace")[-2000:]  # type: ignore[union-attr]
            return r
        time.sleep(r.delay)
        if proc.poll() is not None:
            r.problem = "the worker died on its own: " + proc.stderr.read().decode(errors="replace")[-2000:]  # type: ignore[union-attr]
            return r
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    lines = log.read_text().split() if log.exists() else []
    r.acked = int(lines[-1]) if lines else 0
    check = subprocess.run(["qemu-img", "check", "-f", "qcow2", str(image)], capture_output=True, text=True)
    if check.returncode not in (0, 3):
        r.problem = f"qemu-img check exit {check.returncode}: {(check.stdout + check.stderr).strip()[-1500:]}"
        return r
    ours = subprocess.run([sys.executable, "-m", "pyvirt", "image", "check", str(image)], capture_output=True,
                          text=True, env=env)
    if ours.returncode not in (0, 3):
        r.problem = f"pyvirt image check exit {ours.returncode}: {(ours.stdout + ours.stderr).strip()[-1500:]}"
        return r
    try:
        r.problem = verify(str(image), seed, r.acked)
    except Exception as e:  # noqa: BLE001 - a failure to open or read is this round's finding
        r.problem = f"reading the image failed: {type(e).__name__}: {e}"
    r.ok = not r.problem
    if r.ok:
        image.unlink()
        log.unlink(missing_ok=True)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("-n", "--rounds", type=int, default=100)
    p.add_argument("--seed", type=int, default=None, help="first round's seed (default: random); rounds use seed+i")
    p.add_argument("--max-delay", type=float, default=MAX_DELAY, help="longest workload before the kill (s)")
    p.add_argument("--keep", metavar="DIR", help="where images of failed rounds stay (default: a temporary folder)")
    p.add_argument("--worker", nargs=3, metavar=("IMAGE", "LOG", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], args.worker[1], int(args.worker[2]))
    if not shutil.which("qemu-img"):
        print("qcow2_crash_soak: qemu-img is missing (apt-get install qemu-utils)", file=sys.stderr)
        return 1
    folder = Path(args.keep or tempfile.mkdtemp(prefix="qcow2-crash-"))
    folder.mkdir(parents=True, exist_ok=True)
    first = args.seed if args.seed is not None else random.randrange(1 << 30)
    failed = 0
    start = time.monotonic()
    for i in range(args.rounds):
        r = run_round(folder, first + i, args.max_delay)
        status = "ok" if r.ok else "FAIL"
        print(f"round {i + 1:3}/{args.rounds} seed {r.seed} cluster {r.cluster_size:>7} v{r.version} "
              f"kill after {r.delay:.2f}s, {r.acked:5} requests acknowledged: {status} {r.problem}", flush=True)
        failed += not r.ok
    print(f"{args.rounds - failed}/{args.rounds} rounds passed in {time.monotonic() - start:.0f} s"
          + (f"; failed images are in {folder}" if failed else ""))
    if not failed and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
