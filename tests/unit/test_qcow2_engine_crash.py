"""Crash safety: a writer killed with SIGKILL at a random moment leaves an
image qemu-img check finds at most leaky, that pyvirt opens, and that
holds everything written before the last completed flush."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_qcow2_util import needs_qemu, qemu_img, read_all

from pyvirt.disk.qcow2 import Qcow2Image, create

pytestmark = needs_qemu
SRC = str(Path(__file__).resolve().parents[2] / "src")
BLOCK = 12288  # sequential records: 3 clusters of 4 KiB, straddling L2 tables over time

WRITER = r"""
import random, sys
sys.path.insert(0, {src!r})
from pyvirt.disk.qcow2 import Qcow2Image
img = Qcow2Image({path!r})
rnd = random.Random({seed})
size, cs, seq = img.size, img.cluster_size, 0
half = size // 2
while True:
    # the log: record `seq` at seq*BLOCK in the first half, flushed before it is announced
    if seq * {block} + {block} <= half:
        img.write_from(seq * {block}, [memoryview(seq.to_bytes(4, "big") * ({block} // 4))])
    # churn in the second half: allocation, copy on write, freeing
    for _ in range(rnd.randrange(1, 8)):
        off = half + rnd.randrange(half - 3 * cs)
        n = rnd.randrange(1, 3 * cs)
        r = rnd.random()
        if r < 0.5:
            img.write_from(off, [memoryview(bytes([rnd.randrange(256)]) * n)])
        elif r < 0.7:
            img.discard(off, n)
        elif r < 0.85:
            img.write_zeroes(off, n, rnd.random() < 0.5)
        else:
            img.write_compressed_cluster((off // cs), bytes([rnd.randrange(256)]) * cs)
    if rnd.random() < 0.3:
        img.flush()
        print(seq, flush=True)
    seq += 1
"""


@pytest.mark.parametrize("version", [3, 2])
def test_sigkill_leaves_at_most_leaks(tmp_path: Path, version: int) -> None:
    for round_ in range(6):
        path = tmp_path / f"crash{round_}.qcow2"
        create(str(path), 48 << 20, cluster_size=4096, version=version)
        code = WRITER.format(src=SRC, path=str(path), seed=round_, block=BLOCK)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        time.sleep(0.3 + 0.25 * round_)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        flushed = [int(x) for x in out.split()]
        assert flushed, "the writer made no progress"
        r = qemu_img("check", "--output", "json", path, ok=False)
        result = json.loads(r.stdout)
        assert r.returncode in (0, 3) and not result.get("corruptions"), (round_, r.stdout, r.stderr)
        with Qcow2Image(str(path)) as img:
            for seq in range(0, flushed[-1] + 1):
                if seq * BLOCK + BLOCK <= img.size // 2:
                    got = read_all(img, seq * BLOCK, BLOCK)
                    assert got == seq.to_bytes(4, "big") * (BLOCK // 4), (round_, seq)
            res = img.check(repair=True)
            assert res.corruptions == 0 and res.leaks == 0
        r = qemu_img("check", path, ok=False)
        assert r.returncode == 0, r.stdout
        os.unlink(path)
