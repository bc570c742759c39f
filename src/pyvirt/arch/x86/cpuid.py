"""The CPUID table each vCPU sees, derived from what KVM supports.

KVM_GET_SUPPORTED_CPUID describes the host's features that KVM can offer,
but its topology fields describe the host (or nothing). `build_cpuid` turns
that list into one vCPU's table: a single package of `ncpus` cores with one
thread each, APIC id = x2APIC id = vCPU index, the hypervisor bit and KVM's
signature, and no PMU or power-management features the VMM does not model.

Everything here is plain data (`CpuidEntry`, a record rather than a
dataclass since the VMM builds tables at every start) so it is testable
without /dev/kvm; the VMM converts to and from `kvm_cpuid_entry2` at the edge
(see `CpuidEntry.from_struct`). Functions never modify their input entries.

References: Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 appendix E; the Linux
kernel's Documentation/virt/kvm/x86/cpuid.rst for the 0x40000000 leaves.
"""

from __future__ import annotations

from ..._record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

# kvm_cpuid_entry2.flags: the leaf's output depends on ECX (the subleaf).
FLAG_SIGNIFICANT_INDEX = 1

REGISTERS = ("eax", "ebx", "ecx", "edx")

# Hygon follows AMD's topology leaves; every other vendor (Intel, Zhaoxin,
# Centaur) follows Intel's.
AMD_VENDORS = {"AuthenticAMD", "HygonGenuine"}

# Leaf 1.
LEAF1_ECX_X2APIC = 1 << 21
LEAF1_ECX_TSC_DEADLINE = 1 << 24
LEAF1_ECX_HYPERVISOR = 1 << 31
LEAF1_EDX_HTT = 1 << 28

# Leaf 6 EAX bit 2, ARAT: the APIC timer keeps running in deep C-states. True
# of KVM's LAPIC timer (an hrtimer), and without it Linux routes timer
# interrupts through a broadcast device when idle. KVM offers only this bit.
LEAF6_EAX_ARAT = 1 << 2

# 0x80000001 ECX.
EXT1_ECX_CMP_LEGACY = 1 << 1  # AMD: HTT means "multi-core", not hyper-threading
# AMD's core/northbridge/LLC performance counter extensions: part of the PMU.
EXT1_ECX_PMU_BITS = (1 << 23) | (1 << 24) | (1 << 28)

# Extended topology level types (leaf 0xB/0x1F ECX[15:8]).
LEVEL_INVALID, LEVEL_SMT, LEVEL_CORE = 0, 1, 2

KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
HYPERVISOR_BASE = 0x40000000

# Leaves answered with zeros, with the reason:
ZEROED_LEAVES = {
    0x0A: "architectural PMU: no PMU is virtualised",
    0x80000022: "AMD PerfMonV2: no PMU is virtualised",
    0x80000026: "AMD extended topology: host values; the guest reads leaf 0xB instead",
}

# Bits cleared in leaves that are otherwise passed through, (function, register) -> mask.
CLEARED_BITS = {
    (0x06, "eax"): ~LEAF6_EAX_ARAT & 0xFFFFFFFF,  # no thermal/power management, see above
    (0x06, "ebx"): 0xFFFFFFFF,
    (0x06, "ecx"): 0xFFFFFFFF,
    (0x06, "edx"): 0xFFFFFFFF,
    (0x80000001, "ecx"): EXT1_ECX_PMU_BITS,
}


class CpuidEntry(Record):
    """One CPUID leaf/subleaf, as in struct kvm_cpuid_entry2 (minus padding)."""

    __slots__ = __match_args__ = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")

    def __init__(self, function: int, index: int = 0, flags: int = 0,
                 eax: int = 0, ebx: int = 0, ecx: int = 0, edx: int = 0) -> None:
        self.function = function
        self.index = index
        self.flags = flags
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx

    @classmethod
    def from_struct(cls, s: Any) -> "CpuidEntry":
        """Copy any object with the kvm_cpuid_entry2 field names (e.g. the ctypes struct)."""
        return cls(s.function, s.index, s.flags, s.eax, s.ebx, s.ecx, s.edx)

    def copy(self, **changes: int) -> "CpuidEntry":
        """A new entry with the same fields but `changes` (as dataclasses.replace)."""
        e = CpuidEntry(self.function, self.index, self.flags, self.eax, self.ebx, self.ecx, self.edx)
        for name, value in changes.items():
            if name not in self.__match_args__:
                raise TypeError(f"CpuidEntry has no field {name!r}")
            setattr(e, name, value)
        return e

    def matches(self, function: int, index: int) -> bool:
        """Whether CPUID(function, index) returns this entry."""
        return self.function == function and (self.index == index or not self.flags & FLAG_SIGNIFICANT_INDEX)


def lookup(entries: Iterable[CpuidEntry], function: int, index: int = 0) -> CpuidEntry | None:
    """The entry CPUID(function, index) would return, or None."""
    for e in entries:
        if e.matches(function, index):
            return e
    return None


def _regs_to_bytes(*regs: int) -> bytes:
    return b"".join(r.to_bytes(4, "little") for r in regs)


def vendor_of(entries: Iterable[CpuidEntry]) -> str:
    """The vendor string of leaf 0 ("GenuineIntel", "AuthenticAMD", ...)."""
    leaf0 = lookup(entries, 0)
    if leaf0 is None:
        raise ValueError("CPUID list has no leaf 0, so no vendor")
    # The 12 characters are spread over EBX, EDX, ECX, in that order.
    return _regs_to_bytes(leaf0.ebx, leaf0.edx, leaf0.ecx).decode("ascii", "replace")


def _set_bits(value: int, lo: int, width: int, field: int) -> int:
    """Replace bits lo..lo+width-1 of `value` with `field` (clamped to fit)."""
    mask = (1 << width) - 1
    return (value & ~(mask << lo)) | (min(field, mask) << lo)


def _core_shift(ncpus: int) -> int:
    """Bits of the APIC id that number the cores: ceil(log2(ncpus))."""
    return (ncpus - 1).bit_length()


def _topology_leaf(e: CpuidEntry, vcpu_index: int, ncpus: int) -> list[CpuidEntry]:
    """Leaf 0xB / 0x1F: SMT level (1 thread), core level (ncpus), terminator."""
    shift = _core_shift(ncpus)
    levels = [(0, 1, LEVEL_SMT), (shift, ncpus, LEVEL_CORE), (0, 0, LEVEL_INVALID)]
    return [
        CpuidEntry(e.function, sub, FLAG_SIGNIFICANT_INDEX,
                   eax=sh, ebx=count, ecx=(level << 8) | sub, edx=vcpu_index)
        for sub, (sh, count, level) in enumerate(levels)
    ]


def _cache_leaf(e: CpuidEntry, ncpus: int, *, intel: bool) -> CpuidEntry:
    """Leaf 4 (Intel) / 0x8000001D (AMD): who shares each cache.

    L1 and L2 are private to a core (one thread shares them); L3 and beyond
    are shared by the package. Counts are "addressable ids", the power of two
    that matches the APIC id layout of leaf 0xB.
    """
    if e.eax & 0x1F == 0:  # cache type 0: the "no more caches" subleaf
        return e.copy()
    addressable = 1 << _core_shift(ncpus)
    level = (e.eax >> 5) & 0x7
    eax = _set_bits(e.eax, 14, 12, (addressable if level >= 3 else 1) - 1)
    if intel:
        eax = _set_bits(eax, 26, 6, addressable - 1)  # cores per package - 1
    return e.copy(eax=eax)


def build_cpuid(
    supported: list[CpuidEntry], *, vcpu_index: int, ncpus: int, vendor: str | None = None
) -> list[CpuidEntry]:
    """The CPUID table for vCPU `vcpu_index` of `ncpus`, from KVM's supported list.

    `vendor` picks whose topology conventions apply (Intel's leaf 4 or AMD's
    0x80000008/0x8000001E); it defaults to the host's, from leaf 0. Leaf 0's
    vendor string itself is never changed: the guest must see the real CPU.
    Leaves are rewritten only where `supported` lists them; none are added.
    """
    if ncpus < 1 or not 0 <= vcpu_index < ncpus:
        raise ValueError(f"vCPU index {vcpu_index} is not within 0-{ncpus - 1}")
    vendor = vendor if vendor is not None else vendor_of(supported)
    amd = vendor in AMD_VENDORS
    intel = not amd
    multi = ncpus > 1
    shift = _core_shift(ncpus)
    kvm_max = max((e.function for e in supported if HYPERVISOR_BASE < e.function <= HYPERVISOR_BASE + 0xFF),
                  default=HYPERVISOR_BASE)

    out: list[CpuidEntry] = []
    for src in supported:
        e = src.copy()
        fn = e.function
        if fn in ZEROED_LEAVES:
            e.eax = e.ebx = e.ecx = e.edx = 0
        for reg in REGISTERS:
            setattr(e, reg, getattr(e, reg) & ~CLEARED_BITS.get((fn, reg), 0))

        if fn == 1:
            # EBX: [31:24] initial APIC id (8 bits; x2APIC ids live in leaf 0xB),
            # [23:16] addressable logical processors in the package.
            e.ebx = _set_bits(e.ebx, 24, 8, vcpu_index & 0xFF)
            e.ebx = _set_bits(e.ebx, 16, 8, ncpus)
            # HTT tells the OS to look at the count above (it does not mean SMT).
            e.edx = e.edx | LEAF1_EDX_HTT if multi else e.edx & ~LEAF1_EDX_HTT
            # x2APIC and TSC-deadline pass through as KVM reports them: both are
            # emulated by KVM's in-kernel LAPIC. Kernels that predate reporting
            # TSC-deadline here leave it clear; a caller that has checked
            # KVM_CAP_TSC_DEADLINE_TIMER may set it afterwards.
            e.ecx |= LEAF1_ECX_HYPERVISOR
        elif fn == 4 and intel:
            e = _cache_leaf(e, ncpus, intel=True)
        elif fn in (0x0B, 0x1F):
            # KVM lists subleaf 0 only; we emit every level, so skip duplicates.
            if e.index == 0:
                out.extend(_topology_leaf(e, vcpu_index, ncpus))
            continue
        elif fn == HYPERVISOR_BASE:
            sig = KVM_SIGNATURE
            e.eax = kvm_max
            e.ebx, e.ecx, e.edx = (int.from_bytes(sig[i : i + 4], "little") for i in (0, 4, 8))
        elif amd and fn == 0x80000001:
            e.ecx = e.ecx | EXT1_ECX_CMP_LEGACY if multi else e.ecx & ~EXT1_ECX_CMP_LEGACY
        elif amd and fn == 0x80000008:
            # ECX [7:0] NC = cores - 1, [15:12] ApicIdSize = APIC id bits for the core.
            e.ecx = _set_bits(e.ecx, 0, 8, ncpus - 1)
            e.ecx = _set_bits(e.ecx, 12, 4, shift)
        elif amd and fn == 0x8000001D:
            e = _cache_leaf(e, ncpus, intel=False)
        elif amd and fn == 0x8000001E:
            # EAX extended APIC id; EBX [7:0] core id, [15:8] threads per core - 1;
            # ECX node id 0 of 1 node per package.
            e.eax = vcpu_index
            e.ebx = _set_bits(e.ebx & ~0xFFFF, 0, 8, vcpu_index & 0xFF)
            e.ecx = 0
        out.append(e)
    return out


def mask_features(entries: Iterable[CpuidEntry], masks: dict[tuple[int, int, str], int]) -> list[CpuidEntry]:
    """Clear bits: masks maps (function, index, register) to the bits to clear.

    A key matches an entry the way CPUID(function, index) would, so for a leaf
    without subleaves any index matches. Keys for leaves absent from `entries`
    are ignored: a feature the table does not list is already off.
    """
    for (fn, index, reg), mask in masks.items():
        if reg not in REGISTERS:
            raise ValueError(f"CPUID mask for leaf {fn:#x}.{index}: unknown register {reg!r}")
        if not 0 <= mask <= 0xFFFFFFFF:
            raise ValueError(f"CPUID mask for leaf {fn:#x}.{index} {reg}: {mask:#x} is not a 32-bit value")
    out = []
    for src in entries:
        e = src.copy()
        for (fn, index, reg), mask in masks.items():
            if e.matches(fn, index):
                setattr(e, reg, getattr(e, reg) & ~mask)
        out.append(e)
    return out
