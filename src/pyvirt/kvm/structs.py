"""ctypes mirrors of the KVM structs in <linux/kvm.h> and <asm/kvm.h> (x86).

Each class's docstring quotes the C definition it mirrors. Sizes are checked
against the kernel headers by tests/unit/test_kvm_structs.py.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64


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


class kvm_msr_list(_S):
    """struct kvm_msr_list { __u32 nmsrs; __u32 indices[0]; };"""

    _fields_ = [("nmsrs", c_uint32)]


class kvm_lapic_state(_S):
    """struct kvm_lapic_state { char regs[KVM_APIC_REG_SIZE]; }; (1024 bytes)"""

    _fields_ = [("regs", c_uint8 * 1024)]


class kvm_irqchip(_S):
    """struct kvm_irqchip { __u32 chip_id; __u32 pad; union { char dummy[512];
    struct kvm_pic_state pic; struct kvm_ioapic_state ioapic; } chip; };"""

    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", c_uint8 * 512)]


KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


class kvm_pit_config(_S):
    """struct kvm_pit_config { __u32 flags; __u32 pad[15]; };"""

    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


class kvm_pit_channel_state(_S):
    """struct kvm_pit_channel_state { __u32 count; __u16 latched_count;
    __u8 count_latched, status_latched, status, read_state, write_state,
    write_latch, rw_mode, mode, bcd, gate; __s64 count_load_time; };"""

    _fields_ = [
        ("count", c_uint32),
        ("latched_count", c_uint16),
        ("count_latched", c_uint8),
        ("status_latched", c_uint8),
        ("status", c_uint8),
        ("read_state", c_uint8),
        ("write_state", c_uint8),
        ("write_latch", c_uint8),
        ("rw_mode", c_uint8),
        ("mode", c_uint8),
        ("bcd", c_uint8),
        ("gate", c_uint8),
        ("count_load_time", c_int64),
    ]


class kvm_pit_state2(_S):
    """struct kvm_pit_state2 { struct kvm_pit_channel_state channels[3];
    __u32 flags; __u32 reserved[9]; };"""

    _fields_ = [
        ("channels", kvm_pit_channel_state * 3),
        ("flags", c_uint32),
        ("reserved", c_uint32 * 9),
    ]


class kvm_reinject_control(_S):
    """struct kvm_reinject_control { __u8 pit_reinject; __u8 reserved[31]; };"""

    _fields_ = [("pit_reinject", c_uint8), ("reserved", c_uint8 * 31)]


class kvm_mp_state(_S):
    """struct kvm_mp_state { __u32 mp_state; };"""

    _fields_ = [("mp_state", c_uint32)]


KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4


class kvm_vcpu_events(_S):
    """struct kvm_vcpu_events (x86): exception, interrupt, nmi, sipi_vector,
    flags, smi, triple_fault, reserved, exception_has_payload, payload; 64 bytes.
    Kept opaque: pyvirt saves and restores it whole."""

    _fields_ = [("raw", c_uint8 * 64)]


class kvm_debugregs(_S):
    """struct kvm_debugregs { __u64 db[4]; __u64 dr6, dr7, flags; __u64 reserved[9]; };"""

    _fields_ = [
        ("db", c_uint64 * 4),
        ("dr6", c_uint64),
        ("dr7", c_uint64),
        ("flags", c_uint64),
        ("reserved", c_uint64 * 9),
    ]


class kvm_xsave(_S):
    """struct kvm_xsave { __u32 region[1024]; __u32 extra[0]; };"""

    _fields_ = [("region", c_uint32 * 1024)]


class kvm_xcr(_S):
    """struct kvm_xcr { __u32 xcr; __u32 reserved; __u64 value; };"""

    _fields_ = [("xcr", c_uint32), ("reserved", c_uint32), ("value", c_uint64)]


class kvm_xcrs(_S):
    """struct kvm_xcrs { __u32 nr_xcrs; __u32 flags; struct kvm_xcr xcrs[16]; __u64 padding[16]; };"""

    _fields_ = [
        ("nr_xcrs", c_uint32),
        ("flags", c_uint32),
        ("xcrs", kvm_xcr * 16),
        ("padding", c_uint64 * 16),
    ]


class kvm_clock_data(_S):
    """struct kvm_clock_data { __u64 clock; __u32 flags; __u32 pad0;
    __u64 realtime; __u64 host_tsc; __u32 pad[4]; };"""

    _fields_ = [
        ("clock", c_uint64),
        ("flags", c_uint32),
        ("pad0", c_uint32),
        ("realtime", c_uint64),
        ("host_tsc", c_uint64),
        ("pad", c_uint32 * 4),
    ]


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


class kvm_irqfd(_S):
    """struct kvm_irqfd { __u32 fd; __u32 gsi; __u32 flags; __u32 resamplefd; __u8 pad[16]; };"""

    _fields_ = [
        ("fd", c_uint32),
        ("gsi", c_uint32),
        ("flags", c_uint32),
        ("resamplefd", c_uint32),
        ("pad", c_uint8 * 16),
    ]


KVM_IRQFD_FLAG_DEASSIGN = 1


class kvm_ioeventfd(_S):
    """struct kvm_ioeventfd { __u64 datamatch; __u64 addr; __u32 len; __s32 fd;
    __u32 flags; __u8 pad[36]; };"""

    _fields_ = [
        ("datamatch", c_uint64),
        ("addr", c_uint64),
        ("len", c_uint32),
        ("fd", c_int32),
        ("flags", c_uint32),
        ("pad", c_uint8 * 36),
    ]


KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2


class kvm_enable_cap(_S):
    """struct kvm_enable_cap { __u32 cap; __u32 flags; __u64 args[4]; __u8 pad[64]; };"""

    _fields_ = [("cap", c_uint32), ("flags", c_uint32), ("args", c_uint64 * 4), ("pad", c_uint8 * 64)]


class kvm_dirty_log(_S):
    """struct kvm_dirty_log { __u32 slot; __u32 padding1; union { void *dirty_bitmap; __u64 padding2; }; };"""

    _fields_ = [("slot", c_uint32), ("padding1", c_uint32), ("dirty_bitmap", c_uint64)]


class kvm_msi(_S):
    """struct kvm_msi { __u32 address_lo; __u32 address_hi; __u32 data; __u32 flags;
    __u32 devid; __u8 pad[12]; };"""

    _fields_ = [
        ("address_lo", c_uint32),
        ("address_hi", c_uint32),
        ("data", c_uint32),
        ("flags", c_uint32),
        ("devid", c_uint32),
        ("pad", c_uint8 * 12),
    ]


class kvm_irq_routing_entry(_S):
    """struct kvm_irq_routing_entry { __u32 gsi; __u32 type; __u32 flags; __u32 pad;
    union { irqchip{__u32 irqchip, pin}; msi{...}; __u32 pad[8]; } u; };"""

    _fields_ = [
        ("gsi", c_uint32),
        ("type", c_uint32),
        ("flags", c_uint32),
        ("pad", c_uint32),
        ("u", c_uint32 * 8),
    ]


class kvm_irq_routing_header(_S):
    """struct kvm_irq_routing { __u32 nr; __u32 flags; struct kvm_irq_routing_entry entries[0]; };"""

    _fields_ = [("nr", c_uint32), ("flags", c_uint32)]


class kvm_translation(_S):
    """struct kvm_translation { __u64 linear_address; __u64 physical_address;
    __u8 valid, writeable, usermode; __u8 pad[5]; };"""

    _fields_ = [
        ("linear_address", c_uint64),
        ("physical_address", c_uint64),
        ("valid", c_uint8),
        ("writeable", c_uint8),
        ("usermode", c_uint8),
        ("pad", c_uint8 * 5),
    ]


class kvm_interrupt(_S):
    """struct kvm_interrupt { __u32 irq; };"""

    _fields_ = [("irq", c_uint32)]
