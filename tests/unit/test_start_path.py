"""`pyvirt run` starts fast: its modules must not pull in heavy standard modules.

On a slow host each of these costs milliseconds at every VM start:
dataclasses (with inspect, ast, tokenize), typing, logging, argparse (with
re, gettext, shutil), pathlib. The modules below build and boot a VM while
loading none of them (records are `pyvirt._record` classes, saved state
loads with `state()`, Protocols live in devices/protocols.py, logging goes
through `pyvirt._log`), nor the parts of pyvirt a plain start does without.

Not listed yet: vmm.machine, vmm.vcpu_loop, vmm.console and vmm.pvm, which
still import logging or typing themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pyvirt.testing.images import OUT_DEBUG_EXIT, pvh_elf

HEAVY = ("dataclasses", "typing", "logging", "argparse", "re", "enum", "pathlib", "inspect", "calendar", "shutil")
# pyvirt's own modules that a PVH kernel's start does without.
COLD = ("pyvirt.cli.parser", "pyvirt.kvm.structs_extra", "pyvirt.devices.protocols", "pyvirt.devices.legacy.states",
        "pyvirt.arch.x86.aml", "pyvirt.arch.x86.acpi_parse", "pyvirt.boot.bzimage", "pyvirt.boot.bootparams",
        "pyvirt.boot.multiboot", "pyvirt.boot.vmlinux")

SCRIPT = """
import sys
from pyvirt.cli.main import parse_run
assert parse_run(["run", "--kernel", "k.elf", "--memory", "128M", "--serial", "null"]) is not None
from pyvirt import kvm
from pyvirt.arch.x86 import acpi, boot_cpu, cpuid, layout, mptable
from pyvirt.boot import load_kernel
from pyvirt.devices.bus import Bus
from pyvirt.devices.irq import CallbackIrq
from pyvirt.devices.legacy import AcpiPm, DebugExit, FwCfg, I8042, PciConfigPorts, PostCode, Rtc, Serial
from pyvirt.memory import GuestMemory
from pyvirt.vmm import exit_status, report
from pyvirt.vmm.config import SerialConfig, VmConfig, parse_size

cfg = VmConfig(kernel="k.elf", memory=parse_size("64M"), serial=SerialConfig.parse("null"))
mem = GuestMemory.from_bytearray(cfg.memory)
bus = Bus("port I/O")
irq = CallbackIrq(4, lambda gsi, level: None)
for base, dev in ((0x3F8, Serial(irq, lambda b: None)), (0x60, I8042(lambda: None, irq)), (0x70, Rtc()),
                  (0x80, PostCode()), (0xF4, DebugExit(lambda v: None)), (0x510, FwCfg.for_vm(1, cfg.memory)),
                  (0x600, AcpiPm(lambda: None, sci=irq)), (0xCF8, PciConfigPorts(lambda: None))):
    bus.register(base, dev.LENGTH, dev)
    dev.read(0, 1)
boot_cpu.write_gdt(mem)
boot_cpu.write_page_tables(mem)
mptable.build_mptable(mem, 1)
rsdp = acpi.build_acpi(mem, 1)
with open(sys.argv[1], "rb") as f:
    spec = load_kernel(mem, f.read(), mem_size=cfg.memory, rsdp_addr=rsdp)
table = cpuid.build_cpuid([cpuid.CpuidEntry(0, ebx=0x756E6547, edx=0x49656E69, ecx=0x6C65746E)], vcpu_index=0, ncpus=1)
print(" ".join(m for m in %r if m in sys.modules))
""" % (HEAVY + COLD,)


def test_start_path_loads_no_heavy_modules(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel.elf"
    kernel.write_bytes(pvh_elf(OUT_DEBUG_EXIT))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(kernel)], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == []
