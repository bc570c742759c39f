"""Fixtures that boot guest-kit guests under `pyvirt run` in a subprocess.

Like Firecracker's `microvm` fixture: a test names a guest and options, gets
back the exit status and the serial output. Tests here need /dev/kvm and are
skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from vmrun import DEFAULT_TIMEOUT, GUESTS, ROOT, Run, kvm_usable, run_pyvirt

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
