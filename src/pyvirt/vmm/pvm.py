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

import struct
import sys
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing

from .._log import DEBUG, get_logger
from ..kvm import exits

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..kvm import Vcpu
    from ..memory import GuestMemory
    from .vmstate import PvmState

log = get_logger(__name__)

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
# The TSC read from guest kernel code does not advance under kvm_pvm (a 6.1
# kernel's clock stopped when it switched to it): stay on kvm-clock.
# Timekeeping: with a high-resolution clocksource (tsc, kvm-clock) Linux moves
# its tick to one-shot mode, and here its timer code then stalls for good
# (docs/pvm.md). Keeping jiffies as the clocksource with a periodic tick
# (no high-resolution timers, no tickless idle) boots to user space.
# ACPI: with it Linux finds the local APIC in the MADT, switches to APIC mode and
# its boot stalls for good after its drivers' initcalls (docs/pvm.md); without
# it Linux runs on the PIC and the periodic PIT tick. PCI is still probed
# through the configuration ports.
# MSI needs the local APIC, which a kernel without ACPI does not use here:
# pci=nomsi keeps PCI drivers on INTx instead of warning and falling back.
KERNEL_PARAMS = (f"clearcpuid={CLEAR_CPUID}", "clocksource=jiffies", "highres=off", "nohz=off", "tsc=unstable",
                 "acpi=off", "pci=nomsi")

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
HLT = b"\xf4"
RFLAGS_IF = 1 << 9
HALT_TICKS = 3  # one-second samples on a HLT with IF=0 before the guest counts as halted
# The in-kernel PIT is replaced by a user-space one delivering IRQ 0 at most
# this often: one emulated timer interrupt costs ~10 ms, and at Linux's 250 Hz
# the kernel stalls in its timer code once it switches to one-shot mode.
PIT_MIN_PERIOD = 0.04


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
    """The exit assist the vCPU loop calls for exits it cannot handle itself,
    and its periodic `tick` (which plants the SYSCALL fix-up)."""

    def __init__(self, mem: "GuestMemory", on_halt: "Callable[[], None] | None" = None) -> None:
        self.mem = mem
        self.counts: dict[str, int] = {}
        self.syscall = SyscallFixup(mem)
        self.due = False
        self.on_halt = on_halt
        self._halted_ticks = 0

    def tick(self, vcpu: "Vcpu") -> None:
        """Called on the boot vCPU's thread when a signal interrupted KVM_RUN."""
        if not self.due or vcpu.index != 0:
            return
        self.due = False
        try:
            if log.isEnabledFor(DEBUG):  # a poor man's profile of slow emulated boots
                log.debug("kvm_pvm: boot vCPU at RIP %#x", vcpu.get_regs().rip)
            self.syscall.refresh(vcpu)
            self._check_halted(vcpu)
        except OSError as e:
            log.debug("kvm_pvm: SYSCALL hook refresh failed: %s", e)

    def _check_halted(self, vcpu: "Vcpu") -> None:
        """A guest that halts with interrupts off (Linux's `poweroff -f` without
        ACPI ends so) never runs again; here that HLT does not put the vCPU to
        sleep but spins a host CPU, so pyvirt ends the VM once it has seen the
        vCPU on such a HLT at HALT_TICKS samples in a row."""
        if self.on_halt is None:
            return
        regs = vcpu.get_regs()
        halted = False
        if not regs.rflags & RFLAGS_IF:
            code, rip = _code_at_rip(vcpu, self.mem)
            before = b""
            gpa = vcpu.translate(vcpu.get_sregs().cs.base + rip - 1)
            if gpa is not None and self.mem.contains(gpa, 1):
                before = self.mem.read(gpa, 1)
            halted = code[:1] == HLT or before == HLT
        self._halted_ticks = self._halted_ticks + 1 if halted else 0
        if self._halted_ticks >= HALT_TICKS:
            self.on_halt()

    def __call__(self, vcpu: "Vcpu", e: exits.Exit) -> bool:
        if not isinstance(e, exits.InternalError) or e.suberror != exits.INTERNAL_ERROR_EMULATION:
            return False
        try:
            code, rip = _code_at_rip(vcpu, self.mem)
            if code[:1] == b"\xcc" and self.syscall.handle(vcpu, rip):
                return True
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

    def state(self) -> PvmState:
        """Where the SYSCALL fix-up's int3 is (guest memory, saved with it, holds the byte)."""
        from .vmstate import PvmState

        f = self.syscall
        return PvmState(handler_va=f.handler_va, handler_pa=f.handler_pa, displaced=f.displaced, lstar=f.lstar)

    def restore(self, state: PvmState) -> None:
        """Take over a saved fix-up; ValueError if the state is not one."""
        from .vmstate import PvmState

        if not isinstance(state, PvmState):
            raise ValueError(f"expected a PvmState, got {type(state).__name__}")
        state.check()
        if state.displaced and _decode_displaced(state.displaced) != state.displaced:
            raise ValueError(f"kvm_pvm: {state.displaced.hex()} is not an instruction the fix-up displaces")
        if state.handler_pa and not self.mem.contains(state.handler_pa, 1):
            raise ValueError(f"kvm_pvm: handler address {state.handler_pa:#x} is outside guest memory")
        f = self.syscall
        f.handler_va, f.handler_pa, f.displaced, f.lstar = (state.handler_va, state.handler_pa, state.displaced,
                                                            state.lstar)

    def _count(self, name: str) -> None:
        n = self.counts.get(name, 0) + 1
        self.counts[name] = n
        if n == 1:
            log.info("kvm_pvm: emulating %s for the guest (first time)", name)


# --- SYSCALL from user mode ---------------------------------------------------
# Under kvm_pvm a SYSCALL at CPL3 loads RIP from MSR_LSTAR but leaves CS at
# CPL3, so the kernel's entry point faults at once (#PF, user mode, RIP ==
# CR2 == LSTAR). pyvirt finishes the transition: it plants an int3 (which
# the emulator cannot run, so it exits to us) on the first instruction of the
# guest's #PF handler, found through IDTR and gate 14. At that exit, a frame
# showing exactly this fault is turned into the SYSCALL the guest meant (CS and
# SS from MSR_STAR, RFLAGS masked by MSR_SYSCALL_MASK, RIP = LSTAR, the user's
# RSP); any other #PF continues into the handler past the planted byte.

MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_SYSCALL_MASK = 0xC0000084
PF_VECTOR = 14

# Instructions a kernel starts its #PF entry with that pyvirt can step over in
# place of the byte it replaced: NOPs (what ASM_CLAC becomes without SMAP),
# ENDBR64, and CLD (which clears DF).
_DISPLACEABLE = {
    bytes.fromhex("90"): "nop",
    bytes.fromhex("0f1f00"): "nop3",
    bytes.fromhex("0f1f4000"): "nop4",
    bytes.fromhex("0f1f440000"): "nop5",
    bytes.fromhex("660f1f440000"): "nop6",
    bytes.fromhex("f30f1efa"): "endbr64",
    bytes.fromhex("fc"): "cld",
}
RFLAGS_DF = 1 << 10


def _decode_displaced(code: bytes) -> bytes | None:
    for insn in sorted(_DISPLACEABLE, key=len, reverse=True):
        if code.startswith(insn):
            return insn
    return None


class SyscallFixup:
    """Finds the guest's #PF handler, plants the int3 and undoes the broken SYSCALL."""

    def __init__(self, mem: "GuestMemory") -> None:
        self.mem = mem
        self.handler_va = 0
        self.handler_pa = 0
        self.displaced = b""
        self.lstar = 0
        self.fixed = 0
        self.faults = 0

    def refresh(self, vcpu: "Vcpu") -> None:
        """(Re)plant the hook once the kernel has its syscall entry and IDT."""
        lstar = vcpu.get_msrs([MSR_LSTAR]).get(MSR_LSTAR, 0)
        if not lstar:
            return
        sregs = vcpu.get_sregs()
        if sregs.idt.limit < PF_VECTOR * 16 + 15:
            return
        gate_pa = vcpu.translate(sregs.idt.base + PF_VECTOR * 16)
        if gate_pa is None or not self.mem.contains(gate_pa, 16):
            return
        lo, hi = struct.unpack("<QQ", self.mem.read(gate_pa, 16))
        va = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFFFFFF) << 32)
        pa = vcpu.translate(va)
        if pa is None or not self.mem.contains(pa, 16):
            return
        current = self.mem.read(pa, 16)
        if va == self.handler_va and current[0] == 0xCC:
            return  # still in place
        insn = _decode_displaced(current)
        if insn is None:
            if va != self.handler_va:
                log.warning("kvm_pvm: cannot hook the guest's #PF handler (starts with %s); "
                            "system calls from user space will fail", current[:6].hex(" "))
                self.handler_va = va
            return
        self.lstar, self.handler_va, self.handler_pa, self.displaced = lstar, va, pa, insn
        self.mem.write(pa, b"\xcc")
        log.info("kvm_pvm: SYSCALL fix-up hooked at #PF handler %#x (LSTAR %#x)", va, lstar)

    def handle(self, vcpu: "Vcpu", rip: int) -> bool:
        """Called at an emulation failure; True if it was our int3."""
        if not self.handler_va or rip != self.handler_va:
            return False
        regs = vcpu.get_regs()
        sregs = vcpu.get_sregs()
        frame = None
        frame_pa = vcpu.translate(regs.rsp)
        if frame_pa is not None and self.mem.contains(frame_pa, 48) and (frame_pa & 0xFFF) <= 4096 - 48:
            frame = struct.unpack("<6Q", self.mem.read(frame_pa, 48))
        if frame is not None:
            _err, f_rip, f_cs, f_rflags, f_rsp, _f_ss = frame
            if f_cs & 3 == 3 and f_rip == self.lstar and sregs.cr2 == self.lstar:
                self._complete_syscall(vcpu, regs, sregs, f_rflags, f_rsp)
                return True
        # A genuine page fault: carry on past the instruction we displaced.
        self.faults += 1
        regs.rip = rip + len(self.displaced)
        if self.displaced == b"\xfc":
            regs.rflags &= ~RFLAGS_DF
        vcpu.set_regs(regs)
        return True

    def _complete_syscall(self, vcpu: "Vcpu", regs: object, sregs: object, user_rflags: int, user_rsp: int) -> None:
        msrs = vcpu.get_msrs([MSR_STAR, MSR_SYSCALL_MASK])
        kernel_cs = (msrs.get(MSR_STAR, 0) >> 32) & 0xFFFC
        mask = msrs.get(MSR_SYSCALL_MASK, 0)
        cs, ss = sregs.cs, sregs.ss  # type: ignore[attr-defined]
        cs.selector, cs.dpl, cs.l, cs.db, cs.type, cs.s, cs.present = kernel_cs, 0, 1, 0, 0xB, 1, 1
        cs.base, cs.limit, cs.g = 0, 0xFFFFFFFF, 1
        ss.selector, ss.dpl, ss.db, ss.type, ss.s, ss.present = kernel_cs + 8, 0, 1, 0x3, 1, 1
        ss.base, ss.limit, ss.g, ss.unusable = 0, 0xFFFFFFFF, 1, 0
        vcpu.set_sregs(sregs)  # type: ignore[arg-type]
        regs.rip = self.lstar  # type: ignore[attr-defined]
        regs.rsp = user_rsp  # type: ignore[attr-defined]
        if not regs.r11 & 2:  # type: ignore[attr-defined]  # SYSCALL saves RFLAGS in R11; bit 1 is always set there
            regs.r11 = user_rflags | 2  # type: ignore[attr-defined]
        regs.rflags = (user_rflags & ~mask) | 2  # type: ignore[attr-defined]
        vcpu.set_regs(regs)  # type: ignore[arg-type]
        self.fixed += 1
        if self.fixed == 1:
            log.info("kvm_pvm: completed the first user-mode SYSCALL (rcx=%#x)", regs.rcx)  # type: ignore[attr-defined]
