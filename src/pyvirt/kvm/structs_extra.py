"""ctypes mirrors of the KVM structs a VM's start does not use (x86).

State save and restore (irqchip, PIT, MP state, vCPU events, debug
registers, XSAVE, XCRs, clock), irqfd/ioeventfd, MSI and its routing, dirty
logging, address translation, interrupt injection and the MSR index list.
Split from structs.py so that `pyvirt run` does not define them at every
start; `structs` re-exports every name here on first use. Each class's
docstring quotes the C definition it mirrors.
"""

from __future__ import annotations

from ctypes import c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64

from .structs import _S


class kvm_msr_list(_S):
    """struct kvm_msr_list { __u32 nmsrs; __u32 indices[0]; };"""

    _fields_ = [("nmsrs", c_uint32)]


class kvm_irqchip(_S):
    """struct kvm_irqchip { __u32 chip_id; __u32 pad; union { char dummy[512];
    struct kvm_pic_state pic; struct kvm_ioapic_state ioapic; } chip; };"""

    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", c_uint8 * 512)]


KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


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
