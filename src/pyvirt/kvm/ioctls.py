"""ioctl request numbers for /dev/kvm, VM and vCPU file descriptors.

Every number is computed from the _IOC encoding in <asm-generic/ioctl.h>
with the size of the ctypes struct it carries, so a struct that drifts from
the kernel's layout changes the number and the kernel refuses it (ENOTTY)
instead of reading garbage.

Requests whose struct lives in structs_extra.py (see structs.py) are in
`_EXTRA`: their numbers are computed the same way, from the struct's size,
the first time one is looked up (`ioctls.KVM_GET_XSAVE` works as before),
so that importing this module does not load those structs.
"""

from __future__ import annotations

import ctypes

from . import structs as s

KVMIO = 0xAE
_NONE, _WRITE, _READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_NONE, nr, 0)


def _iow(nr: int, t: type) -> int:
    return _ioc(_WRITE, nr, ctypes.sizeof(t))


def _ior(nr: int, t: type) -> int:
    return _ioc(_READ, nr, ctypes.sizeof(t))


def _iowr(nr: int, t: type) -> int:
    return _ioc(_READ | _WRITE, nr, ctypes.sizeof(t))


# System ioctls (on the /dev/kvm fd).
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, s.kvm_cpuid2)
KVM_GET_EMULATED_CPUID = _iowr(0x09, s.kvm_cpuid2)

# VM ioctls.
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, s.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, s.kvm_irq_level)
KVM_IRQ_LINE_STATUS = _iowr(0x67, s.kvm_irq_level)
KVM_REINJECT_CONTROL = _io(0x71)
KVM_CREATE_PIT2 = _iow(0x77, s.kvm_pit_config)
KVM_SET_BOOT_CPU_ID = _io(0x78)

# vCPU ioctls.
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, s.kvm_regs)
KVM_SET_REGS = _iow(0x82, s.kvm_regs)
KVM_GET_SREGS = _ior(0x83, s.kvm_sregs)
KVM_SET_SREGS = _iow(0x84, s.kvm_sregs)
KVM_GET_MSRS = _iowr(0x88, s.kvm_msrs_header)
KVM_SET_MSRS = _iow(0x89, s.kvm_msrs_header)
KVM_GET_FPU = _ior(0x8C, s.kvm_fpu)
KVM_SET_FPU = _iow(0x8D, s.kvm_fpu)
KVM_GET_LAPIC = _ior(0x8E, s.kvm_lapic_state)
KVM_SET_LAPIC = _iow(0x8F, s.kvm_lapic_state)
KVM_SET_CPUID2 = _iow(0x90, s.kvm_cpuid2)
KVM_GET_CPUID2 = _iowr(0x91, s.kvm_cpuid2)
KVM_NMI = _io(0x9A)
KVM_SET_TSC_KHZ = _io(0xA2)
KVM_GET_TSC_KHZ = _io(0xA3)
KVM_KVMCLOCK_CTRL = _io(0xAD)
KVM_RESET_DIRTY_RINGS = _io(0xC7)

# Capabilities (KVM_CHECK_EXTENSION arguments) that pyvirt asks about.
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MP_STATE = 14
KVM_CAP_REINJECT_CONTROL = 24
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_IOEVENTFD = 36
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_KVMCLOCK_CTRL = 76
KVM_CAP_XSAVE2 = 208
KVM_CAP_DIRTY_LOG_RING = 192

# Where a vCPU's dirty ring is mapped in its fd (KVM_DIRTY_LOG_PAGE_OFFSET pages)
KVM_DIRTY_LOG_PAGE_OFFSET = 64

KVM_API_VERSION = 12
KVM_PIT_SPEAKER_DUMMY = 1
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# Requests on structs from structs_extra.py: name -> (encoder, nr, struct name), resolved by __getattr__.
_EXTRA = {
    # System ioctls.
    "KVM_GET_MSR_INDEX_LIST": (_iowr, 0x02, "kvm_msr_list"),
    "KVM_GET_MSR_FEATURE_INDEX_LIST": (_iowr, 0x0A, "kvm_msr_list"),
    # VM ioctls.
    "KVM_GET_DIRTY_LOG": (_iow, 0x42, "kvm_dirty_log"),
    "KVM_GET_IRQCHIP": (_iowr, 0x62, "kvm_irqchip"),
    "KVM_SET_IRQCHIP": (_ior, 0x63, "kvm_irqchip"),
    "KVM_SET_GSI_ROUTING": (_iow, 0x6A, "kvm_irq_routing_header"),
    "KVM_IRQFD": (_iow, 0x76, "kvm_irqfd"),
    "KVM_IOEVENTFD": (_iow, 0x79, "kvm_ioeventfd"),
    "KVM_SET_CLOCK": (_iow, 0x7B, "kvm_clock_data"),
    "KVM_GET_CLOCK": (_ior, 0x7C, "kvm_clock_data"),
    "KVM_GET_PIT2": (_ior, 0x9F, "kvm_pit_state2"),
    "KVM_SET_PIT2": (_iow, 0xA0, "kvm_pit_state2"),
    "KVM_ENABLE_CAP": (_iow, 0xA3, "kvm_enable_cap"),
    "KVM_SIGNAL_MSI": (_iow, 0xA5, "kvm_msi"),
    # vCPU ioctls.
    "KVM_TRANSLATE": (_iowr, 0x85, "kvm_translation"),
    "KVM_INTERRUPT": (_iow, 0x86, "kvm_interrupt"),
    "KVM_GET_MP_STATE": (_ior, 0x98, "kvm_mp_state"),
    "KVM_SET_MP_STATE": (_iow, 0x99, "kvm_mp_state"),
    "KVM_GET_VCPU_EVENTS": (_ior, 0x9F, "kvm_vcpu_events"),
    "KVM_SET_VCPU_EVENTS": (_iow, 0xA0, "kvm_vcpu_events"),
    "KVM_GET_DEBUGREGS": (_ior, 0xA1, "kvm_debugregs"),
    "KVM_SET_DEBUGREGS": (_iow, 0xA2, "kvm_debugregs"),
    "KVM_GET_XSAVE": (_ior, 0xA4, "kvm_xsave"),
    "KVM_SET_XSAVE": (_iow, 0xA5, "kvm_xsave"),
    "KVM_GET_XCRS": (_ior, 0xA6, "kvm_xcrs"),
    "KVM_SET_XCRS": (_iow, 0xA7, "kvm_xcrs"),
    "KVM_GET_XSAVE2": (_ior, 0xCF, "kvm_xsave"),
}


def __getattr__(name: str) -> int:
    try:
        encode, nr, struct = _EXTRA[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    number = encode(nr, getattr(s, struct))
    globals()[name] = number
    return number
