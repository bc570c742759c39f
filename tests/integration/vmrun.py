"""Running `pyvirt` in a subprocess for integration tests: the result type and helpers."""

from __future__ import annotations

import os
import subprocess
import sys
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


