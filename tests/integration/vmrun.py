"""Running `pyvirt` in a subprocess for integration tests: the result type and helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUESTS = ROOT / "guests" / "build"
DEFAULT_TIMEOUT = 120


def kvm_usable() -> str | None:
    """None when /dev/kvm can be used, else why not."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this host"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not writable by this user"
    return None


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        return [ln.rstrip("\r") for ln in self.stdout.splitlines()]


def pyvirt_cmd() -> list[str]:
    return [sys.executable, "-m", "pyvirt"]


def run_pyvirt(args: list[str], timeout: float = DEFAULT_TIMEOUT, input: bytes | None = None) -> Run:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run(pyvirt_cmd() + args, input=input if input is not None else b"", capture_output=True,
                       timeout=timeout, env=env, cwd=ROOT)
    # Guests end lines with CRLF, as serial consoles do; tests read plain lines.
    out = p.stdout.decode(errors="replace").replace("\r\n", "\n")
    return Run(p.returncode, out, p.stderr.decode(errors="replace"))




WAIT = 60.0  # seconds for anything a VM should do soon; generous for slow nested hosts


def wait_for(what: str, predicate, timeout: float = WAIT) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def socket_listening(path: str) -> bool:
    """Whether a unix socket server accepts connections at `path` (the file
    appears at bind(), a moment before listen(): connect to be sure)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True
