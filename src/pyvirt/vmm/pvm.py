"""Compatibility with the kvm_pvm backend (nested, paravirtual KVM).

Everything pyvirt does differently on kvm_pvm is here, and nothing here runs
on other hosts unless asked for (`--pvm on`). The facts behind each
workaround are in docs/pvm.md. In short, under kvm_pvm:

- guest kernel-mode (CPL0) code is emulated instruction by instruction, and
  the emulator cannot run some instructions (XSAVE family, AVX, SSSE3/SSE4,
  POPCNT, FSGSBASE, SMAP's stac/clac, RDRAND, ...). CPUID hides only some of
  these from the guest kernel, so they are turned off on the kernel command
  line instead;
- a few instructions fail outright with KVM_EXIT_INTERNAL_ERROR (int3, ud2,
  fences, fwait, fnclex, emms): `assist` delivers #BP/#UD through the guest's
  IDT and steps over the ones that are no-ops for a single vCPU;
- the kernel's own bzImage decompressor, emulated, takes minutes, so bzImages
  are decompressed on the host and their vmlinux started directly.
"""

from __future__ import annotations

import logging
import struct
import sys
from typing import TYPE_CHECKING

from ..kvm import exits

if TYPE_CHECKING:
    from ..kvm import Vcpu
    from ..memory import GuestMemory

log = logging.getLogger(__name__)

# CPU features the CPL0 emulator cannot execute, so the guest kernel must not
# use them: X86_FEATURE_* numbers (32 * word + bit), which every kernel since
# 5.11 takes, where names need a newer one. The kernel caps the value at 127
# characters.
CLEAR_FEATURES = {
    "pclmulqdq": 4 * 32 + 1, "ssse3": 4 * 32 + 9, "fma": 4 * 32 + 12, "cx16": 4 * 32 + 13, "sse4_1": 4 * 32 + 19,
    "sse4_2": 4 * 32 + 20, "movbe": 4 * 32 + 22, "popcnt": 4 * 32 + 23, "aes": 4 * 32 + 25,
    "xsave": 4 * 32 + 26, "avx": 4 * 32 + 28, "f16c": 4 * 32 + 29, "rdrand": 4 * 32 + 30,
    "fsgsbase": 9 * 32 + 0, "avx2": 9 * 32 + 5, "erms": 9 * 32 + 9, "rdseed": 9 * 32 + 18,
    "smap": 9 * 32 + 20, "sha_ni": 9 * 32 + 29, "pku": 16 * 32 + 3, "fsrm": 18 * 32 + 4,
}
CLEAR_CPUID = ",".join(str(n) for n in CLEAR_FEATURES.values())
# (`noxsave` is gone from newer kernels; clearing the xsave bit does the same.)
KERNEL_PARAMS = (f"clearcpuid={CLEAR_CPUID}",)

# Instructions that end in KVM_EXIT_INTERNAL_ERROR (emulation failure) here.
# Fences and x87 housekeeping are no-ops for a VM whose vCPUs don't share
# pending stores with a device, so they are stepped over.
SKIP = {
    bytes.fromhex("0faee8"): "lfence",
    bytes.fromhex("0faef0"): "mfence",
    bytes.fromhex("0faef8"): "sfence",
    bytes.fromhex("9b"): "fwait",
    bytes.fromhex("dbe2"): "fnclex",
    bytes.fromhex("9bdbe2"): "fclex",
    bytes.fromhex("0f77"): "emms",
}
BP_VECTOR, UD_VECTOR = 3, 6


def wanted(setting: str, backend: str) -> bool:
    """Whether the PVM layer is on: `--pvm on|off`, or auto = the backend is kvm_pvm."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    return backend == "kvm_pvm"


def kernel_cmdline(cmdline: str) -> str:
    """The command line with the parameters kvm_pvm guests need appended
    (said on stderr, since the user didn't ask for them)."""
    words = cmdline.split()
    added = [p for p in KERNEL_PARAMS if p.split("=")[0] not in {w.split("=")[0] for w in words}]
    if added:
        sys.stderr.write(f"pyvirt: kvm_pvm host: adding kernel parameters: {' '.join(added)}\n")
    return " ".join(words + added)


def _inject_exception(vcpu: "Vcpu", vector: int) -> None:
    events = bytearray(vcpu.get_vcpu_events())
    # struct kvm_vcpu_events: exception {u8 injected, nr, has_error_code, pending; u32 error_code}
    struct.pack_into("<BBBBI", events, 0, 1, vector, 0, 0, 0)
    vcpu.set_vcpu_events(bytes(events))


def _code_at_rip(vcpu: "Vcpu", mem: "GuestMemory") -> tuple[bytes, int]:
    regs = vcpu.get_regs()
    sregs = vcpu.get_sregs()
    linear = sregs.cs.base + regs.rip
    gpa = vcpu.translate(linear)
    if gpa is None or not mem.contains(gpa, 1):
        return b"", regs.rip
    n = min(15, 4096 - (gpa & 0xFFF))  # stay within the page the translation covers
    return mem.read(gpa, n), regs.rip


class PvmAssist:
    """The exit assist the vCPU loop calls for exits it cannot handle itself."""

    def __init__(self, mem: "GuestMemory") -> None:
        self.mem = mem
        self.counts: dict[str, int] = {}

    def __call__(self, vcpu: "Vcpu", e: exits.Exit) -> bool:
        if not isinstance(e, exits.InternalError) or e.suberror != exits.INTERNAL_ERROR_EMULATION:
            return False
        try:
            code, rip = _code_at_rip(vcpu, self.mem)
        except OSError:
            return False
        for prefix, name in SKIP.items():
            if code.startswith(prefix):
                regs = vcpu.get_regs()
                regs.rip = rip + len(prefix)
                vcpu.set_regs(regs)
                self._count(name)
                return True
        if code[:1] == b"\xcc":  # int3: a trap, reported after the instruction
            regs = vcpu.get_regs()
            regs.rip = rip + 1
            vcpu.set_regs(regs)
            _inject_exception(vcpu, BP_VECTOR)
            self._count("int3")
            return True
        if code[:2] == b"\x0f\x0b":  # ud2: a fault, reported at the instruction
            _inject_exception(vcpu, UD_VECTOR)
            self._count("ud2")
            return True
        return False

    def _count(self, name: str) -> None:
        n = self.counts.get(name, 0) + 1
        self.counts[name] = n
        if n == 1:
            log.info("kvm_pvm: emulating %s for the guest (first time)", name)
