"""Boot every guest of the guest kit; each proves one VMM feature from inside."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

import pytest

from pyvirt.arch.x86 import layout


def ok(run) -> None:
    """Guest-kit convention: exit(0) through debug-exit, i.e. status 1."""
    assert run.status == 1, f"status {run.status}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"


def test_hello_pvh(boot):
    r = boot("hello", "--cmdline", "one two  three")
    ok(r)
    assert "hello from pyvirt guest" in r.lines()
    assert "cmdline: one two  three" in r.lines()


def test_hello_bzimage_64bit_entry(boot, guest_kit):
    r = boot(str(guest_kit / "hello-bzimage.bin"), "--cmdline", "console=ttyS0 quiet")
    ok(r)
    assert "hello from bzImage" in r.lines()
    assert "cmdline: console=ttyS0 quiet" in r.lines()


def test_hello_vmlinux_elf(boot, guest_kit):
    r = boot(str(guest_kit / "hello-bzimage.elf"), "--cmdline", "elf")
    ok(r)
    assert "cmdline: elf" in r.lines()


def test_hello_multiboot(boot, guest_kit):
    r = boot(str(guest_kit / "hello-multiboot.elf"), "--cmdline", "a=1", "--memory", "64M")
    ok(r)
    assert "hello from multiboot" in r.lines()
    # mem_upper: KiB of RAM above 1 MiB
    assert f"mem_upper: {(64 << 10) - 1024}" in r.lines()
    # the first word is the kernel's name, as QEMU passes it
    assert re.search(r"^cmdline: \S*hello-multiboot\.elf a=1$", r.stdout, re.M)


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_smp_every_vcpu_comes_up(boot, cpus):
    r = boot("smp", "--cpus", str(cpus))
    ok(r)
    assert f"smp: {cpus} cpus online" in r.lines()
    apic_ids = [int(m) for m in re.findall(r"^cpu \d+ apic (\d+)$", r.stdout, re.M)]
    assert sorted(apic_ids) == list(range(cpus)), r.stdout  # every vCPU, each with its own APIC id


@pytest.mark.parametrize("memory", ["64M", "1G", "3200M"])
def test_memory_map_and_every_page(boot, memory):
    from pyvirt.vmm.config import parse_size

    size = parse_size(memory)
    r = boot("memory", "--memory", memory, timeout=300)
    ok(r)
    expected = sum(e.size for e in layout.e820_map(size) if e.type == layout.E820_RAM)
    assert f"memory: total {expected} bytes" in r.lines(), r.stdout
    m = re.search(r"^memory: verified (\d+) pages$", r.stdout, re.M)
    assert m, r.stdout
    # all RAM above 1 MiB except the guest's own image, stack and tables gets verified
    high = sum(e.size for e in layout.e820_map(size) if e.type == layout.E820_RAM and e.addr >= layout.HIMEM_START)
    assert high - (8 << 20) <= int(m.group(1)) * 4096 <= high


def test_timer_interrupts_and_rtc(boot):
    started = time.time()
    r = boot("timer")
    ended = time.time()
    ok(r)
    pit = int(re.search(r"^timer: pit (\d+) ticks$", r.stdout, re.M).group(1))
    lapic = int(re.search(r"^timer: lapic (\d+) ticks$", r.stdout, re.M).group(1))
    assert pit > 0 and lapic > 0
    stamp = re.search(r"^rtc: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)$", r.stdout, re.M).group(1)
    guest = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    # the guest read its RTC while it ran: it must agree with the host's clock within 2 s
    assert started - 2 <= guest.timestamp() <= ended + 2, (stamp, started, ended)


def test_badio_survives_unclaimed_ports_and_mmio(boot):
    r = boot("badio", "-v")
    ok(r)
    assert re.search(r"^badio: \d+ port reads ok, \d+ mmio reads ok$", r.stdout, re.M)
    assert "unclaimed" in r.stderr  # logged (once per address), never fatal


def test_cpl3_loop_runs(boot):
    r = boot("cpl3")
    ok(r)
    rate = int(re.search(r"^cpl3: (\d+) iterations/s$", r.stdout, re.M).group(1))
    assert rate > 0
