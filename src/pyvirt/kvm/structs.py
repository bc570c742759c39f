"""ctypes mirrors of the KVM structs in <linux/kvm.h> and <asm/kvm.h> (x86).

Each class's docstring quotes the C definition it mirrors. Sizes are checked
against the kernel headers by tests/unit/test_kvm_structs.py.

This module defines the structs a VM needs to start and run (registers,
CPUID, MSRs, LAPIC, memory slots, PIT, IRQ lines). The others (state save
and restore, irqfd/ioeventfd, MSI routing, dirty logging, translation) are
in structs_extra.py, loaded the first time one of them is used, and are
reached from here as well: `structs.kvm_xsave` works.
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64


class _S(ctypes.Structure):
    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n, *_ in self._fields_ if not n.startswith("pad"))
        return f"{type(self).__name__}({fields})"


class kvm_regs(_S):
    """struct kvm_regs { __u64 rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    __u64 r8..r15; __u64 rip, rflags; };"""

    _fields_ = [
        (n, c_uint64)
        for n in (
            "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags".split()
        )
    ]


class kvm_segment(_S):
    """struct kvm_segment { __u64 base; __u32 limit; __u16 selector; __u8 type;
    __u8 present, dpl, db, s, l, g, avl; __u8 unusable; __u8 padding; };"""

    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(_S):
    """struct kvm_dtable { __u64 base; __u16 limit; __u16 padding[3]; };"""

    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


class kvm_sregs(_S):
    """struct kvm_sregs { struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
    struct kvm_dtable gdt, idt; __u64 cr0, cr2, cr3, cr4, cr8, efer, apic_base;
    __u64 interrupt_bitmap[(KVM_NR_INTERRUPTS + 63) / 64]; };"""

    _fields_ = [(n, kvm_segment) for n in "cs ds es fs gs ss tr ldt".split()] + [
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", c_uint64),
        ("cr2", c_uint64),
        ("cr3", c_uint64),
        ("cr4", c_uint64),
        ("cr8", c_uint64),
        ("efer", c_uint64),
        ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * 4),
    ]


class kvm_fpu(_S):
    """struct kvm_fpu { __u8 fpr[8][16]; __u16 fcw, fsw; __u8 ftwx, pad1;
    __u16 last_opcode; __u64 last_ip, last_dp; __u8 xmm[16][16]; __u32 mxcsr, pad2; };"""

    _fields_ = [
        ("fpr", (c_uint8 * 16) * 8),
        ("fcw", c_uint16),
        ("fsw", c_uint16),
        ("ftwx", c_uint8),
        ("pad1", c_uint8),
        ("last_opcode", c_uint16),
        ("last_ip", c_uint64),
        ("last_dp", c_uint64),
        ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32),
        ("pad2", c_uint32),
    ]


class kvm_cpuid_entry2(_S):
    """struct kvm_cpuid_entry2 { __u32 function, index, flags, eax, ebx, ecx, edx;
    __u32 padding[3]; };"""

    _fields_ = [(n, c_uint32) for n in "function index flags eax ebx ecx edx".split()] + [
        ("padding", c_uint32 * 3)
    ]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1
MAX_CPUID_ENTRIES = 256


class kvm_cpuid2(_S):
    """struct kvm_cpuid2 { __u32 nent; __u32 padding; struct kvm_cpuid_entry2 entries[0]; };"""

    _fields_ = [("nent", c_uint32), ("padding", c_uint32)]


class kvm_cpuid2_buf(_S):
    """kvm_cpuid2 with room for MAX_CPUID_ENTRIES entries (the flexible array)."""

    _fields_ = [
        ("nent", c_uint32),
        ("padding", c_uint32),
        ("entries", kvm_cpuid_entry2 * MAX_CPUID_ENTRIES),
    ]


class kvm_msr_entry(_S):
    """struct kvm_msr_entry { __u32 index; __u32 reserved; __u64 data; };"""

    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs_header(_S):
    """struct kvm_msrs { __u32 nmsrs; __u32 pad; struct kvm_msr_entry entries[0]; };"""

    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32)]


def kvm_msrs(n: int) -> ctypes.Structure:
    """A struct kvm_msrs with room for n entries."""

    class _Msrs(_S):
        _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32), ("entries", kvm_msr_entry * n)]

    m = _Msrs()
    m.nmsrs = n
    return m


class kvm_lapic_state(_S):
    """struct kvm_lapic_state { char regs[KVM_APIC_REG_SIZE]; }; (1024 bytes)"""

    _fields_ = [("regs", c_uint8 * 1024)]


class kvm_pit_config(_S):
    """struct kvm_pit_config { __u32 flags; __u32 pad[15]; };"""

    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


class kvm_reinject_control(_S):
    """struct kvm_reinject_control { __u8 pit_reinject; __u8 reserved[31]; };"""

    _fields_ = [("pit_reinject", c_uint8), ("reserved", c_uint8 * 31)]


class kvm_userspace_memory_region(_S):
    """struct kvm_userspace_memory_region { __u32 slot; __u32 flags;
    __u64 guest_phys_addr; __u64 memory_size; __u64 userspace_addr; };"""

    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class kvm_irq_level(_S):
    """struct kvm_irq_level { union { __u32 irq; __s32 status; }; __u32 level; };"""

    _fields_ = [("irq", c_uint32), ("level", c_uint32)]


TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .structs_extra import *  # noqa: F403


def __getattr__(name: str) -> object:
    if not name.startswith("_"):
        from . import structs_extra

        try:
            return getattr(structs_extra, name)
        except AttributeError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
