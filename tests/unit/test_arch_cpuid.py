"""Per-vCPU CPUID tables from synthetic KVM_GET_SUPPORTED_CPUID lists (no /dev/kvm)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from pyvirt.arch.x86 import cpuid as c
from pyvirt.arch.x86.cpuid import CpuidEntry as E

SIG = c.FLAG_SIGNIFICANT_INDEX


def _vendor_regs(vendor: str) -> dict[str, int]:
    raw = vendor.encode()
    ebx, edx, ecx = (int.from_bytes(raw[i : i + 4], "little") for i in (0, 4, 8))
    return {"ebx": ebx, "ecx": ecx, "edx": edx}


def intel_host() -> list[E]:
    """Modelled on an 8-core/16-thread Intel desktop as KVM reports it."""
    return [
        E(0, eax=0x1F, **_vendor_regs("GenuineIntel")),
        # Host leaf 1: APIC id 0, 16 logical processors, no x2APIC/TSC-deadline
        # bits set here so the tests can toggle them.
        E(1, eax=0x906EA, ebx=0x00100800, ecx=0x77FAFBFF & ~(1 << 21 | 1 << 24 | 1 << 31), edx=0xBFEBFBFF),
        E(2, eax=0x00FEFF01),
        E(4, 0, SIG, eax=0x1C004121, ebx=0x01C0003F, ecx=0x3F),  # L1d: 8 cores, 2 threads share
        E(4, 1, SIG, eax=0x1C004122, ebx=0x01C0003F, ecx=0x3F),  # L1i
        E(4, 2, SIG, eax=0x1C004143, ebx=0x00C0003F, ecx=0x3FF),  # L2
        E(4, 3, SIG, eax=0x1C03C163, ebx=0x03C0003F, ecx=0x3FFF, edx=0x6),  # L3: 16 share
        E(4, 4, SIG),  # no more caches
        E(6, eax=0x4, ebx=0x2, ecx=0x9),
        E(7, 0, SIG, ebx=0x029C6FBF, ecx=0x40000000, edx=0xBC000400),
        E(0xA, eax=0x07300404, edx=0x603),
        E(0xB, 0, SIG, eax=1, ebx=2, ecx=0x100, edx=7),
        E(0xD, 0, SIG, eax=0x1F, ebx=0x440, ecx=0x440),
        E(0x1F, 0, SIG, eax=1, ebx=2, ecx=0x100, edx=7),
        E(0x40000000, eax=0x40000001, **_vendor_regs("KVMKVMKVM\0\0\0")),
        E(0x40000001, eax=0x01007EFB),
        E(0x80000000, eax=0x80000008, **_vendor_regs("GenuineIntel")),
        E(0x80000001, ecx=0x121, edx=0x2C100800),
        E(0x80000008, eax=0x3027),
    ]


def amd_host() -> list[E]:
    """KVM_GET_SUPPORTED_CPUID from an AMD Zen 3 host (trimmed)."""
    return [
        E(0, eax=0x10, ebx=0x68747541, ecx=0x444D4163, edx=0x69746E65),
        E(1, eax=0xA00F11, ebx=0x01020800, ecx=0x81202000, edx=0x078BFBFF),
        E(4, 0, SIG),
        E(6, eax=0x4),
        E(7, 0, SIG, ebx=0x01800002, ecx=0x4, edx=0xA8000000),
        E(0xA),
        E(0xB, 0, SIG, edx=1),
        E(0xD, 0, SIG, eax=0x207, ebx=0x988, ecx=0x988),
        E(0x80000000, eax=0x80000022, ebx=0x68747541, ecx=0x444D4163, edx=0x69746E65),
        E(0x80000001, eax=0xA00F11, ebx=0x40000000, ecx=0x400393 | 1 << 23, edx=0x23D3FBFF),
        E(0x80000008, eax=0x3030, ebx=0x110AD205, ecx=0x7001),
        E(0x8000001D, 0, SIG, eax=0x121, ebx=0x01C0003F, ecx=0x3F),
        E(0x8000001D, 1, SIG, eax=0x122, ebx=0x01C0003F, ecx=0x3F),
        E(0x8000001D, 2, SIG, eax=0x143, ebx=0x01C0003F, ecx=0x3FF, edx=2),
        E(0x8000001D, 3, SIG, eax=0x4163, ebx=0x03C0003F, ecx=0x7FFF, edx=1),
        E(0x8000001D, 4, SIG),
        E(0x8000001E, eax=7, ebx=0x103, ecx=0x101),
        E(0x80000022, eax=0x7, ebx=0x1F6),
        E(0x40000000, eax=0x40000001, ebx=0x4B4D564B, ecx=0x564B4D56, edx=0x4D),
        E(0x40000001, eax=0x01007EFB),
    ]


def get(entries: list[E], fn: int, index: int = 0) -> E:
    e = c.lookup(entries, fn, index)
    assert e is not None, f"no leaf {fn:#x}.{index}"
    return e


def test_vendor_of() -> None:
    assert c.vendor_of(intel_host()) == "GenuineIntel"
    assert c.vendor_of(amd_host()) == "AuthenticAMD"
    with pytest.raises(ValueError):
        c.vendor_of([E(1)])


@pytest.mark.parametrize("host", [intel_host, amd_host])
@pytest.mark.parametrize("ncpus", [1, 2, 3, 8, 64])
def test_leaf1(host: Callable[[], list[E]], ncpus: int) -> None:
    for i in {0, ncpus - 1, ncpus // 2}:
        leaf1 = get(c.build_cpuid(host(), vcpu_index=i, ncpus=ncpus), 1)
        assert leaf1.ebx >> 24 == i
        assert (leaf1.ebx >> 16) & 0xFF == ncpus
        assert leaf1.ebx & 0xFFFF == get(host(), 1).ebx & 0xFFFF  # CLFLUSH size, brand index
        assert bool(leaf1.edx & c.LEAF1_EDX_HTT) == (ncpus > 1)
        assert leaf1.ecx & c.LEAF1_ECX_HYPERVISOR
        assert leaf1.eax == get(host(), 1).eax


def test_leaf1_passes_x2apic_and_tsc_deadline_through() -> None:
    host = intel_host()
    leaf1 = get(c.build_cpuid(host, vcpu_index=0, ncpus=2), 1)
    assert not leaf1.ecx & (c.LEAF1_ECX_X2APIC | c.LEAF1_ECX_TSC_DEADLINE)  # never added
    get(host, 1).ecx |= c.LEAF1_ECX_X2APIC | c.LEAF1_ECX_TSC_DEADLINE
    leaf1 = get(c.build_cpuid(host, vcpu_index=0, ncpus=2), 1)
    assert leaf1.ecx & c.LEAF1_ECX_X2APIC and leaf1.ecx & c.LEAF1_ECX_TSC_DEADLINE


@pytest.mark.parametrize("host", [intel_host, amd_host])
@pytest.mark.parametrize(("ncpus", "shift"), [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4), (64, 6)])
def test_extended_topology(host: Callable[[], list[E]], ncpus: int, shift: int) -> None:
    vcpu = ncpus - 1
    out = c.build_cpuid(host(), vcpu_index=vcpu, ncpus=ncpus)
    leaves = [0xB, 0x1F] if host is intel_host else [0xB]
    assert not any(e.function == 0x1F for e in out) or host is intel_host  # never added
    for fn in leaves:
        subs = [e for e in out if e.function == fn]
        assert [e.index for e in subs] == [0, 1, 2]
        assert all(e.flags & SIG for e in subs)
        assert all(e.edx == vcpu for e in subs)  # x2APIC id
        smt, core, end = subs
        assert (smt.eax & 0x1F, smt.ebx & 0xFFFF, (smt.ecx >> 8) & 0xFF, smt.ecx & 0xFF) == (0, 1, 1, 0)
        assert (core.eax & 0x1F, core.ebx & 0xFFFF, (core.ecx >> 8) & 0xFF, core.ecx & 0xFF) == (shift, ncpus, 2, 1)
        assert (end.eax, end.ebx, (end.ecx >> 8) & 0xFF, end.ecx & 0xFF) == (0, 0, 0, 2)
        # Every APIC id fits in the core field the shift describes.
        assert vcpu >> core.eax == 0


@pytest.mark.parametrize(("ncpus", "addressable"), [(1, 1), (2, 2), (6, 8), (16, 16)])
def test_intel_leaf4(ncpus: int, addressable: int) -> None:
    host = intel_host()
    out = c.build_cpuid(host, vcpu_index=0, ncpus=ncpus)
    caches = [e for e in out if e.function == 4]
    assert len(caches) == 5
    for before, after in zip([e for e in host if e.function == 4], caches):
        if before.eax & 0x1F == 0:
            assert after == before
            continue
        level = (after.eax >> 5) & 7
        assert after.eax >> 26 == addressable - 1  # cores per package - 1
        sharing = ((after.eax >> 14) & 0xFFF) + 1
        assert sharing == (addressable if level == 3 else 1)
        assert after.eax & 0x3FFF == before.eax & 0x3FFF  # type, level, flags untouched
        assert (after.ebx, after.ecx, after.edx) == (before.ebx, before.ecx, before.edx)


def test_amd_topology() -> None:
    out = c.build_cpuid(amd_host(), vcpu_index=5, ncpus=6)
    ecx = get(out, 0x80000008).ecx
    assert ecx & 0xFF == 5  # NC = cores - 1
    assert (ecx >> 12) & 0xF == 3  # ApicIdSize: 6 cores need 3 bits
    assert get(out, 0x80000001).ecx & c.EXT1_ECX_CMP_LEGACY
    e1e = get(out, 0x8000001E)
    assert e1e.eax == 5 and e1e.ebx & 0xFF == 5 and (e1e.ebx >> 8) & 0xFF == 0 and e1e.ecx == 0
    l3 = get(out, 0x8000001D, 3)
    assert ((l3.eax >> 14) & 0xFFF) + 1 == 8
    assert ((get(out, 0x8000001D, 0).eax >> 14) & 0xFFF) == 0
    assert get(out, 0x8000001D, 4).eax == 0

    single = c.build_cpuid(amd_host(), vcpu_index=0, ncpus=1)
    assert not get(single, 0x80000001).ecx & c.EXT1_ECX_CMP_LEGACY
    assert get(single, 0x80000008).ecx & 0xF0FF == 0


def test_amd_leaves_untouched_on_intel() -> None:
    host = intel_host()
    out = c.build_cpuid(host, vcpu_index=1, ncpus=4)
    assert get(out, 0x80000008) == get(host, 0x80000008)
    assert get(out, 0x80000001) == get(host, 0x80000001)


def test_vendor_override_selects_conventions() -> None:
    out = c.build_cpuid(amd_host(), vcpu_index=1, ncpus=4, vendor="GenuineIntel")
    assert get(out, 0x80000008).ecx == 0x7001  # AMD leaves left alone
    assert c.vendor_of(out) == "AuthenticAMD"  # the vendor string itself never changes


@pytest.mark.parametrize("host", [intel_host, amd_host])
def test_hypervisor_leaves(host: Callable[[], list[E]]) -> None:
    out = c.build_cpuid(host(), vcpu_index=0, ncpus=2)
    base = get(out, 0x40000000)
    sig = b"".join(r.to_bytes(4, "little") for r in (base.ebx, base.ecx, base.edx))
    assert sig == b"KVMKVMKVM\0\0\0"
    assert base.eax == 0x40000001
    assert get(out, 0x40000001) == get(host(), 0x40000001)


def test_hypervisor_max_leaf_follows_supported() -> None:
    host = [e for e in intel_host() if e.function != 0x40000001]
    host[0:0] = [E(0x40000001, eax=1), E(0x40000010, eax=123)]
    assert get(c.build_cpuid(host, vcpu_index=0, ncpus=1), 0x40000000).eax == 0x40000010


@pytest.mark.parametrize("host", [intel_host, amd_host])
def test_pmu_and_power_management_hidden(host: Callable[[], list[E]]) -> None:
    out = c.build_cpuid(host(), vcpu_index=0, ncpus=2)
    leaf6 = get(out, 6)
    assert (leaf6.eax, leaf6.ebx, leaf6.ecx, leaf6.edx) == (c.LEAF6_EAX_ARAT, 0, 0, 0)
    pmu = get(out, 0xA)
    assert (pmu.eax, pmu.ebx, pmu.ecx, pmu.edx) == (0, 0, 0, 0)
    assert not get(out, 0x80000001).ecx & c.EXT1_ECX_PMU_BITS
    assert get(out, 7) == get(host(), 7)
    assert get(out, 0xD) == get(host(), 0xD)
    if host is amd_host:
        e22 = get(out, 0x80000022)
        assert (e22.eax, e22.ebx) == (0, 0)


def test_input_not_modified() -> None:
    host = amd_host()
    snapshot = copy.deepcopy(host)
    out = c.build_cpuid(host, vcpu_index=1, ncpus=2)
    c.mask_features(out, {(1, 0, "ecx"): 0xFFFFFFFF})
    assert host == snapshot


def test_bad_index() -> None:
    with pytest.raises(ValueError):
        c.build_cpuid(intel_host(), vcpu_index=2, ncpus=2)
    with pytest.raises(ValueError):
        c.build_cpuid(intel_host(), vcpu_index=0, ncpus=0)


def test_mask_features() -> None:
    entries = c.build_cpuid(intel_host(), vcpu_index=1, ncpus=2)
    before = copy.deepcopy(entries)
    avx512f, rtm = 1 << 16, 1 << 11
    masked = c.mask_features(
        entries,
        {
            (7, 0, "ebx"): avx512f | rtm,
            (1, 3, "ecx"): c.LEAF1_ECX_HYPERVISOR,  # leaf 1 has no subleaves: index ignored
            (0xB, 1, "edx"): 0xFF,  # subleaf-specific: only subleaf 1 changes
            (0x1234, 0, "eax"): 1,  # absent leaf: ignored
        },
    )
    assert entries == before
    assert get(masked, 7).ebx == get(before, 7).ebx & ~(avx512f | rtm)
    assert get(masked, 7).ecx == get(before, 7).ecx
    assert not get(masked, 1).ecx & c.LEAF1_ECX_HYPERVISOR
    assert get(masked, 0xB, 1).edx == 0 and get(masked, 0xB, 0).edx == 1
    assert len(masked) == len(entries)


def test_mask_features_rejects_bad_keys() -> None:
    with pytest.raises(ValueError, match="register"):
        c.mask_features(intel_host(), {(1, 0, "esi"): 1})
    with pytest.raises(ValueError, match="32-bit"):
        c.mask_features(intel_host(), {(1, 0, "ecx"): 1 << 32})


def test_from_struct_and_lookup() -> None:
    raw = SimpleNamespace(function=0xD, index=1, flags=SIG, eax=1, ebx=2, ecx=3, edx=4, padding=(0, 0, 0))
    e = E.from_struct(raw)
    assert e == E(0xD, 1, SIG, 1, 2, 3, 4)
    assert c.lookup([e], 0xD, 1) is e and c.lookup([e], 0xD, 0) is None
    plain = E(1, 0, 0, 5)
    assert c.lookup([plain], 1, 7) is plain  # without SIGNIFICANT_INDEX the subleaf is ignored
