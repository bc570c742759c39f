"""The guest kit under QEMU/KVM: a reference VMM for the guests themselves.

When a guest-kit test fails under pyvirt, these tell whether the guest or the
VMM is at fault. Skipped where qemu-system-x86_64 or /dev/kvm is missing.

QEMU's `microvm` machine is used throughout: no firmware to run (fast, even
where guest CPL0 code is emulated), fw_cfg and the legacy devices at the
usual ports; its CMOS RTC must be asked for (rtc=on). `-cpu host` drops
arch-capabilities because some nested KVM backends (kvm_pvm) refuse that MSR.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

QEMU = shutil.which("qemu-system-x86_64")
KVM_OK = os.access("/dev/kvm", os.R_OK | os.W_OK)

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed"),
    pytest.mark.skipif(not KVM_OK, reason="/dev/kvm is missing or not writable"),
]


def qemu(image: Path, *, machine: str = "microvm", cpus: int = 1, memory: str = "128M",
         append: str | None = None, timeout: float = 60) -> tuple[int, list[str]]:
    """Boot image; return QEMU's exit status and the serial output lines."""
    cmd = [QEMU, "-M", f"{machine},accel=kvm", "-cpu", "host,-arch-capabilities",
           "-m", memory, "-smp", str(cpus), "-display", "none", "-serial", "stdio",
           "-monitor", "none", "-no-reboot", "-kernel", str(image),
           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    if append is not None:
        cmd += ["-append", append]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    out = p.stdout.decode(errors="replace")
    return p.returncode, [ln.rstrip("\r") for ln in out.splitlines()]


def exited(status: int, lines: list[str], code: int = 0) -> None:
    """The guest wrote `code` to the debug-exit port: QEMU exits (code << 1) | 1."""
    assert status == (code << 1) | 1, f"status {status}, output:\n" + "\n".join(lines)


def test_hello_pvh(guest_kit):
    status, lines = qemu(guest_kit / "hello.elf", append="a b  c")
    exited(status, lines)
    assert "hello from pyvirt guest" in lines
    assert "cmdline: a b  c" in lines


def test_hello_bzimage_through_setup_and_32bit_entry(guest_kit):
    # QEMU runs the real-mode setup, which enters the payload's 32-bit entry
    status, lines = qemu(guest_kit / "hello-bzimage.bin", append="console=ttyS0 x=1")
    exited(status, lines)
    assert "hello from bzImage" in lines
    assert "cmdline: console=ttyS0 x=1" in lines


def test_hello_multiboot(guest_kit):
    status, lines = qemu(guest_kit / "hello-multiboot.elf", append="a=1")
    exited(status, lines)
    assert "hello from multiboot" in lines
    mem_upper = next(int(ln.split()[1]) for ln in lines if ln.startswith("mem_upper: "))
    assert 100 * 1024 < mem_upper <= 127 * 1024
    assert any(re.fullmatch(r"cmdline: \S*hello-multiboot\.elf a=1", ln) for ln in lines), lines


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_smp(guest_kit, cpus):
    status, lines = qemu(guest_kit / "smp.elf", cpus=cpus)
    exited(status, lines)
    assert f"smp: {cpus} cpus online" in lines
    ids = sorted(int(m.group(1)) for ln in lines if (m := re.fullmatch(r"cpu \d+ apic (\d+)", ln)))
    assert ids == list(range(cpus)), lines


def test_smp_counts_cpus_in_madt(guest_kit):
    status, lines = qemu(guest_kit / "smp.elf", cpus=2, append="madt")
    exited(status, lines)
    assert "smp: 2 cpus expected (madt)" in lines
    assert "smp: 2 cpus online" in lines


def test_smp_times_out_when_a_cpu_is_missing(guest_kit):
    status, lines = qemu(guest_kit / "smp.elf", machine="microvm,rtc=on", cpus=2, append="cpus=3")
    exited(status, lines, 3)
    assert "smp: timeout, 2 of 3 cpus online" in lines


def test_memory(guest_kit):
    status, lines = qemu(guest_kit / "memory.elf", memory="256M")
    exited(status, lines)
    entries = [(int(a, 16), int(s, 16), int(t)) for a, s, t in
               (ln.split()[1:] for ln in lines if ln.startswith("e820 "))]
    total = sum(s for _, s, t in entries if t == 1)
    assert total > 250 << 20
    assert f"memory: total {total} bytes" in lines
    pages = next(int(ln.split()[2]) for ln in lines if ln.startswith("memory: verified "))
    assert pages * 4096 > (256 - 4) << 20


def test_timer(guest_kit):
    status, lines = qemu(guest_kit / "timer.elf", machine="microvm,rtc=on")
    exited(status, lines)
    text = "\n".join(lines)
    assert int(re.search(r"^timer: pit (\d+) ticks$", text, re.M).group(1)) > 0
    assert int(re.search(r"^timer: lapic (\d+) ticks$", text, re.M).group(1)) > 0
    assert re.search(r"^rtc: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", text, re.M)


def test_badio(guest_kit):
    # QEMU reads unassigned MMIO as 0 (a PC, and pyvirt, as all-ones)
    status, lines = qemu(guest_kit / "badio.elf", append="mmio-any")
    exited(status, lines)
    assert "badio: 117 port reads ok, 20 mmio reads ok" in lines


def test_cpl3_runs_natively(guest_kit):
    status, lines = qemu(guest_kit / "cpl3.elf", machine="microvm,rtc=on")
    exited(status, lines)
    rate = next(int(ln.split()[1]) for ln in lines if ln.startswith("cpl3: "))
    assert rate > 10_000_000  # emulated CPL3 would manage a few million at most
