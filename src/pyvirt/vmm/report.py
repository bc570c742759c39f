"""Readable reports of a vCPU that stopped unexpectedly.

When the guest triple-faults or KVM cannot emulate an instruction, the user
needs the registers, where the CPU was, and the bytes it was executing, not
a bare exit code.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from ..kvm import Vcpu
    from ..memory import GuestMemory


def instruction_bytes(vcpu: "Vcpu", mem: "GuestMemory", rip_linear: int, n: int = 16) -> bytes | None:
    """The next n bytes at the linear address, through the guest's page tables."""
    try:
        gpa = vcpu.translate(rip_linear)
    except OSError:
        gpa = rip_linear
    if gpa is None:
        return None
    out = bytearray()
    for i in range(n):
        if not mem.contains(gpa + i):
            break
        out += mem.read(gpa + i, 1)
    return bytes(out)


def describe_vcpu(vcpu: "Vcpu", mem: "GuestMemory") -> str:
    """A multi-line register dump of one vCPU, with the instruction at RIP."""
    try:
        r = vcpu.get_regs()
        s = vcpu.get_sregs()
    except (OSError, ValueError) as e:
        return f"vCPU {vcpu.index}: registers unavailable ({e})"
    lines = [f"vCPU {vcpu.index}:"]
    names = "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15".split()
    for i in range(0, len(names), 4):
        lines.append("  " + "  ".join(f"{n.upper():>3}={getattr(r, n):016x}" for n in names[i : i + 4]))
    lines.append(f"  RIP={r.rip:016x} RFLAGS={r.rflags:08x} CPL={s.cs.dpl if s.cs.present else 0}")
    lines.append(
        f"  CS={s.cs.selector:04x} (base {s.cs.base:#x}, {'64-bit' if s.cs.l else '32-bit' if s.cs.db else '16-bit'})"
        f" SS={s.ss.selector:04x} DS={s.ds.selector:04x}"
    )
    lines.append(f"  CR0={s.cr0:08x} CR2={s.cr2:016x} CR3={s.cr3:016x} CR4={s.cr4:08x} EFER={s.efer:x}")
    lines.append(f"  GDT={s.gdt.base:#x}/{s.gdt.limit:#x} IDT={s.idt.base:#x}/{s.idt.limit:#x}")
    code = instruction_bytes(vcpu, mem, s.cs.base + r.rip)
    lines.append("  code at RIP: " + (code.hex(" ") if code else "(not mapped)"))
    return "\n".join(lines)
