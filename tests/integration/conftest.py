"""Fixtures that boot guest-kit guests under `pyvirt run` in a subprocess.

Like Firecracker's `microvm` fixture: a test names a guest and options, gets
back the exit status and the serial output. Tests here need /dev/kvm and are
skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


@pytest.fixture(scope="session")
def guest_kit() -> Path:
    """The built guest kit (built here if the test command did not)."""
    if not (GUESTS / "hello.elf").exists():
        subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    return GUESTS


@pytest.fixture
def boot(guest_kit: Path):
    """boot("hello", "--cpus", "2") → Run."""
    why = kvm_usable()
    if why:
        pytest.skip(why)

    def _boot(guest: str, *args: str, timeout: float = DEFAULT_TIMEOUT, input: bytes | None = None) -> Run:
        path = guest if "/" in guest else str(guest_kit / (guest if "." in guest else guest + ".elf"))
        return run_pyvirt(["run", "--kernel", path, *args], timeout=timeout, input=input)

    return _boot
