"""The guest kit's `dirty` guest in rate mode, the dirtying workload of
live-migration tests and benchmarks.

With `rate=<MiB/s>` the guest rewrites pages of its area at that rate, paced
by its TSC (calibrated against the PIT), prints `dirty: second S written N
sum X` once a second, and answers one-letter commands on COM1: `v` checks
every word of the area (`dirty: VERIFY OK`), `q` ends the run (`dirty:
PASS`, exit 0, which pyvirt reports as status 1 like QEMU's isa-debug-exit).
Rates are checked loosely: hosts are shared and nested, so a second of guest
time may hold less work than it should, and nothing is asserted on wall time.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from vmrun import GUESTS, ROOT, WAIT, kvm_usable, pyvirt_cmd, run_pyvirt, wait_for

pytestmark = pytest.mark.skipif(kvm_usable() is not None, reason=str(kvm_usable()))

DIRTY = GUESTS / "dirty.elf"
needs_dirty = pytest.mark.skipif(not DIRTY.exists(), reason="guest kit's dirty.elf not built (make -C guests)")

SECOND = re.compile(r"dirty: second (\d+) written (\d+) sum 0x([0-9a-f]+)\r?\n")
PAGES_PER_MIB = 256
GUEST_EXIT_0 = 1  # the guest's exit(0) through the debug-exit port: (0 << 1) | 1


@needs_dirty
@pytest.mark.parametrize("rate, seconds", [(50, 3), (0, 2)])
def test_rate_mode_writes_at_its_rate(rate: int, seconds: int) -> None:
    r = run_pyvirt(["run", "--kernel", str(DIRTY), "-m", "256M", "--serial", "stdio",
                    "--cmdline", f"rate={rate} pages=4096 seconds={seconds}"], timeout=WAIT * 2)
    assert r.status == GUEST_EXIT_0, (r.stdout, r.stderr)
    assert f"dirty: rate {rate} MiB/s {rate * PAGES_PER_MIB} pages/s tsc " in r.stdout
    lines = [(int(s), int(n), int(x, 16)) for s, n, x in SECOND.findall(r.stdout)]
    assert [s for s, _, _ in lines] == list(range(1, seconds + 1)), r.stdout
    assert f"dirty: PASS {lines[-1][1]}\n" in r.stdout and "FAIL" not in r.stdout
    counts = [0] + [n for _, n, _ in lines]
    per_second = [b - a for a, b in zip(counts, counts[1:])]
    nominal = rate * PAGES_PER_MIB
    assert all(0.3 * nominal <= n <= 2 * nominal for n in per_second), (per_second, nominal)
    if rate == 0:  # nothing written: the area, and so its sum, stays as filled
        assert len({x for _, _, x in lines}) == 1


class SerialSocket:
    """The client end of `--serial socket:PATH`: what the guest printed since
    the connection, and bytes for its UART."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(0.1)
        self.path = path
        self.received = b""
        wait_for("the serial socket", self._connect)

    def _connect(self) -> bool:
        try:
            self.sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        return True

    def _receive(self) -> None:
        try:
            self.received += self.sock.recv(65536)
        except socket.timeout:
            pass

    def wait_for_line(self, pattern: str) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            self._receive()
            found[:] = list(re.finditer(pattern, self.received.decode(errors="replace")))
            return bool(found)

        wait_for(repr(pattern), seen)
        return found[-1]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


@needs_dirty
def test_verify_and_quit_over_the_serial_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "serial.sock")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([*pyvirt_cmd(), "run", "--kernel", str(DIRTY), "-m", "256M", "--serial", f"socket:{path}",
                             "--cmdline", "rate=50 pages=8192 spread"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            cwd=ROOT)
    serial = None
    try:
        serial = SerialSocket(path)
        serial.wait_for_line(r"dirty: second \d+ written [1-9]\d* sum")
        serial.send(b"v")
        ok = serial.wait_for_line(r"dirty: VERIFY OK (\d+) written (\d+)\r?\n")
        assert ok.group(1) == "8192" and int(ok.group(2)) > 0
        serial.send(b"\nq")  # anything but a command is ignored
        done = serial.wait_for_line(r"dirty: PASS (\d+)\r?\n")
        assert int(done.group(1)) >= int(ok.group(2))
        assert proc.wait(timeout=WAIT) == GUEST_EXIT_0, proc.stderr.read().decode()  # type: ignore[union-attr]
        assert b"FAIL" not in serial.received
    finally:
        if serial is not None:
            serial.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
