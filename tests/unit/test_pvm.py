"""The kvm_pvm compatibility layer, driven with a fake vCPU over fake memory."""

import struct

from pyvirt.kvm import exits
from pyvirt.kvm import structs as s
from pyvirt.memory import GuestMemory
from pyvirt.vmm import pvm


class FakeVcpu:
    """Identity-mapped vCPU: translate(gva) == gva."""

    index = 0

    def __init__(self, mem, rip=0x1000, rsp=0x8000):
        self.mem = mem
        self.regs = s.kvm_regs()
        self.regs.rip, self.regs.rsp = rip, rsp
        self.sregs = s.kvm_sregs()
        self.events = bytes(64)
        self.msrs = {}

    def get_regs(self):
        r = s.kvm_regs()
        struct.pack_into("144s", r, 0, bytes(self.regs))
        return r

    def set_regs(self, r):
        self.regs = r

    def get_sregs(self):
        return self.sregs

    def set_sregs(self, sr):
        self.sregs = sr

    def translate(self, gva):
        return gva

    def get_vcpu_events(self):
        return self.events

    def set_vcpu_events(self, data):
        self.events = data

    def get_msrs(self, idx):
        return {i: self.msrs.get(i, 0) for i in idx}


def emulation_failure():
    return exits.InternalError(exits.INTERNAL_ERROR_EMULATION, ())


def test_wanted_follows_backend_unless_forced():
    assert pvm.wanted("auto", "kvm_pvm") and not pvm.wanted("auto", "kvm_intel")
    assert pvm.wanted("on", "kvm_amd") and not pvm.wanted("off", "kvm_pvm")


def test_kernel_cmdline_appends_once(capsys):
    out = pvm.kernel_cmdline("console=ttyS0")
    assert out.startswith("console=ttyS0 clearcpuid=")
    assert len(out.split("clearcpuid=")[1].split()[0]) <= 127  # the kernel's limit for the value
    assert "kvm_pvm host: adding kernel parameters" in capsys.readouterr().err
    # the user's own setting of a parameter wins; the others are still added
    assert pvm.kernel_cmdline("clearcpuid=1 quiet").split() == ["clearcpuid=1", "quiet", *pvm.KERNEL_PARAMS[1:]]


def test_fence_is_stepped_over():
    mem = GuestMemory.from_bytearray(0x10000)
    mem.write(0x1000, bytes.fromhex("0faee8 90"))
    v = FakeVcpu(mem)
    assert pvm.PvmAssist(mem)(v, emulation_failure())
    assert v.regs.rip == 0x1003


def test_int3_and_ud2_become_guest_exceptions():
    mem = GuestMemory.from_bytearray(0x10000)
    mem.write(0x1000, b"\xcc")
    v = FakeVcpu(mem)
    assert pvm.PvmAssist(mem)(v, emulation_failure())
    assert v.regs.rip == 0x1001 and v.events[:2] == bytes([1, pvm.BP_VECTOR])
    mem.write(0x2000, b"\x0f\x0b")
    v = FakeVcpu(mem, rip=0x2000)
    assert pvm.PvmAssist(mem)(v, emulation_failure())
    assert v.regs.rip == 0x2000 and v.events[:2] == bytes([1, pvm.UD_VECTOR])


def test_unknown_instruction_is_left_to_the_report():
    mem = GuestMemory.from_bytearray(0x10000)
    mem.write(0x1000, bytes.fromhex("0fc7"))
    assert not pvm.PvmAssist(mem)(FakeVcpu(mem), emulation_failure())
    assert not pvm.PvmAssist(mem)(FakeVcpu(mem), exits.Shutdown())


def _with_idt(mem, handler, lstar=0x4000):
    """A vCPU whose IDT gate 14 points at `handler` and whose LSTAR is set."""
    v = FakeVcpu(mem)
    v.sregs.idt.base, v.sregs.idt.limit = 0x3000, 0xFFF
    lo = (handler & 0xFFFF) | (0x10 << 16) | (0x8E << 40) | (((handler >> 16) & 0xFFFF) << 48)
    mem.write(0x3000 + 14 * 16, struct.pack("<QQ", lo, handler >> 32))
    v.msrs = {pvm.MSR_LSTAR: lstar, pvm.MSR_STAR: (0x10 << 32) | (0x1B << 48), pvm.MSR_SYSCALL_MASK: 0x47700}
    return v


def test_syscall_hook_planted_and_genuine_faults_continue():
    mem = GuestMemory.from_bytearray(0x10000)
    mem.write(0x5000, bytes.fromhex("0f1f00 fc"))  # ASM_CLAC as a NOP, then cld
    v = _with_idt(mem, 0x5000)
    fix = pvm.SyscallFixup(mem)
    fix.refresh(v)
    assert mem.read(0x5000, 1) == b"\xcc" and fix.displaced == bytes.fromhex("0f1f00")
    fix.refresh(v)  # idempotent
    # a kernel-mode page fault: frame CS is ring 0
    v.regs.rip, v.regs.rsp = 0x5000, 0x8000
    mem.write(0x8000, struct.pack("<6Q", 0, 0x7777, 0x10, 0x2, 0x9000, 0x18))
    assert fix.handle(v, 0x5000)
    assert v.regs.rip == 0x5003 and fix.faults == 1


def test_broken_syscall_is_completed():
    mem = GuestMemory.from_bytearray(0x10000)
    mem.write(0x5000, bytes.fromhex("0f1f00"))
    v = _with_idt(mem, 0x5000, lstar=0x4000)
    fix = pvm.SyscallFixup(mem)
    fix.refresh(v)
    # #PF from user mode at RIP == CR2 == LSTAR
    v.sregs.cr2 = 0x4000
    v.regs.rip, v.regs.rsp, v.regs.rcx, v.regs.r11 = 0x5000, 0x8000, 0x401234, 0x246
    mem.write(0x8000, struct.pack("<6Q", 0x15, 0x4000, 0x33, 0x246, 0x7FF000, 0x2B))
    assert fix.handle(v, 0x5000)
    assert (v.regs.rip, v.regs.rsp, v.regs.rcx) == (0x4000, 0x7FF000, 0x401234)
    assert v.sregs.cs.selector == 0x10 and v.sregs.cs.dpl == 0 and v.sregs.cs.l == 1
    assert v.sregs.ss.selector == 0x18
    assert v.regs.rflags & 0x200 == 0  # IF masked by MSR_SYSCALL_MASK
    assert fix.fixed == 1


def test_unknown_handler_prologue_is_not_hooked():
    mem = GuestMemory.from_bytearray(0x10000)
    mem.write(0x5000, bytes.fromhex("4889e5"))  # mov rbp, rsp: can't be stepped over
    v = _with_idt(mem, 0x5000)
    fix = pvm.SyscallFixup(mem)
    fix.refresh(v)
    assert mem.read(0x5000, 1) == b"\x48" and not fix.handle(v, 0x1234)


def _tick(assist, v):
    assist.due = True
    assist.tick(v)


def test_halt_with_interrupts_off_ends_the_vm_after_a_few_samples():
    mem = GuestMemory.from_bytearray(0x10000)
    mem.write(0x1000, bytes.fromhex("f4 eb fd"))  # hlt; jmp back: Linux's halt loop
    halts = []
    assist = pvm.PvmAssist(mem, on_halt=lambda: halts.append(1))
    v = FakeVcpu(mem, rip=0x1001)  # just after the HLT, as a vCPU that left it
    v.regs.rflags = 0x2  # IF=0
    for _ in range(pvm.HALT_TICKS - 1):
        _tick(assist, v)
    assert not halts
    _tick(assist, v)
    assert halts == [1]


def test_idle_halt_with_interrupts_on_is_not_a_halted_guest():
    mem = GuestMemory.from_bytearray(0x10000)
    mem.write(0x1000, bytes.fromhex("f4 eb fd"))
    halts = []
    assist = pvm.PvmAssist(mem, on_halt=lambda: halts.append(1))
    v = FakeVcpu(mem, rip=0x1001)
    v.regs.rflags = 0x202  # IF=1: an idle loop the next interrupt ends
    for _ in range(pvm.HALT_TICKS * 2):
        _tick(assist, v)
    # and a busy vCPU with IF=0 resets the count
    v.regs.rflags, v.regs.rip = 0x2, 0x1001
    for _ in range(pvm.HALT_TICKS - 1):
        _tick(assist, v)
    v.regs.rip = 0x2000
    _tick(assist, v)
    v.regs.rip = 0x1001
    _tick(assist, v)
    assert not halts
