"""Capturing and restoring KVM state (vmm/save.py, vmm/restore.py, vmm/vmstate.py)
against fake vCPU and VM handles: what is read, what a host may not give,
the order things are written back, and records that must be refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pyvirt.kvm import KvmError
from pyvirt.kvm import structs as ks
from pyvirt.memory import GuestMemory
from pyvirt.vmm.pvm import PvmAssist
from pyvirt.vmm.restore import restore_vcpu, restore_vm, write_msrs
from pyvirt.vmm.save import capture_vcpu, capture_vm, read_msrs, saveable_msrs
from pyvirt.vmm.state_codec import decode, encode
from pyvirt.vmm.vmstate import MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE, PvmState, VcpuState, VmState

EINVAL = 22
MSRS = {MSR_IA32_TSC: 123456789, 0x174: 8, MSR_IA32_TSC_DEADLINE: 123999999, 0x4B564D01: 0x5001,
        0xC0000080: 0x500}


class FakeVcpu:
    """A vCPU handle that keeps its state in plain attributes and logs every set."""

    def __init__(self, index: int = 0, *, unreadable: tuple[int, ...] = (), refused: tuple[int, ...] = (),
                 broken: tuple[str, ...] = (), tsc_khz: int = 2_000_000, settable_tsc: bool = False) -> None:
        self.index = index
        self.regs = ks.kvm_regs(rip=0x1000 + index, rsp=0x8000)
        self.sregs = ks.kvm_sregs()
        self.sregs.cr0, self.sregs.efer = 0x80050033, 0x500
        self.fpu = ks.kvm_fpu(fcw=0x37F)
        self.xsave = bytes(range(256)) * 16
        self.xcrs = bytes([1]) + bytes(391)
        self.lapic = bytes([index]) * 1024
        self.mp_state = 3
        self.events = bytes(range(64))
        self.debugregs = bytes(128)
        self.cpuid = [ks.kvm_cpuid_entry2(0, 0, 0, 0xD, 1, 2, 3), ks.kvm_cpuid_entry2(1, 0, 0, 4, 5, 6, 7)]
        self.msrs = dict(MSRS)
        self.tsc_khz = tsc_khz
        self.settable_tsc = settable_tsc
        self.unreadable, self.refused, self.broken = set(unreadable), set(refused), set(broken)
        self.log: list[str] = []

    def _maybe_fail(self, name: str) -> None:
        if name in self.broken:
            raise KvmError(name, EINVAL)

    def get_regs(self):
        return ks.kvm_regs.from_buffer_copy(bytes(self.regs))

    def set_regs(self, r):
        self.log.append("regs")
        self.regs = r

    def get_sregs(self):
        return ks.kvm_sregs.from_buffer_copy(bytes(self.sregs))

    def set_sregs(self, r):
        self.log.append("sregs")
        self.sregs = r

    def get_fpu(self):
        return self.fpu

    def set_fpu(self, f):
        self.log.append("fpu")
        self.fpu = f

    def get_xsave(self, size=0):
        self._maybe_fail("KVM_GET_XSAVE")
        return self.xsave

    def set_xsave(self, data):
        self.log.append("xsave")
        self.xsave = data

    def get_xcrs(self):
        self._maybe_fail("KVM_GET_XCRS")
        return self.xcrs

    def set_xcrs(self, data):
        self._maybe_fail("KVM_SET_XCRS")
        self.log.append("xcrs")
        self.xcrs = data

    def get_lapic(self):
        return self.lapic

    def set_lapic(self, data):
        self.log.append("lapic")
        self.lapic = data

    def get_mp_state(self):
        self._maybe_fail("KVM_GET_MP_STATE")
        return self.mp_state

    def set_mp_state(self, v):
        self.log.append("mp_state")
        self.mp_state = v

    def get_vcpu_events(self):
        self._maybe_fail("KVM_GET_VCPU_EVENTS")
        return self.events

    def set_vcpu_events(self, data):
        self.log.append("events")
        self.events = data

    def get_debugregs(self):
        self._maybe_fail("KVM_GET_DEBUGREGS")
        return self.debugregs

    def set_debugregs(self, data):
        self.log.append("debugregs")
        self.debugregs = data

    def get_cpuid2(self):
        return self.cpuid

    def set_cpuid2(self, entries):
        self.log.append("cpuid")
        self.cpuid = list(entries)

    def get_tsc_khz(self):
        return self.tsc_khz

    def set_tsc_khz(self, khz):
        if not self.settable_tsc:
            raise KvmError("KVM_SET_TSC_KHZ", EINVAL)
        self.log.append("tsc_khz")
        self.tsc_khz = khz

    def kvmclock_ctrl(self):
        raise KvmError("KVM_KVMCLOCK_CTRL", EINVAL)

    def get_msrs(self, indices):
        out = {}
        for i in indices:  # KVM_GET_MSRS stops at the first it cannot read
            if i in self.unreadable or i not in self.msrs:
                break
            out[i] = self.msrs[i]
        return out

    def set_msrs(self, values):
        for n, (i, v) in enumerate(values.items()):
            if i in self.refused:
                return n
            self.log.append(f"msr {i:#x}")
            self.msrs[i] = v
        return len(values)


def _capture(vcpu: FakeVcpu, msrs=tuple(MSRS)) -> tuple[VcpuState, list[str]]:
    notes: list[str] = []
    return capture_vcpu(vcpu, list(msrs), 4096, notes), notes  # type: ignore[arg-type]


# --- capture ------------------------------------------------------------------------

def test_capture_reads_everything_and_round_trips_through_json() -> None:
    st, notes = _capture(FakeVcpu(1))
    assert notes == []
    st.check(1)
    assert st.index == 1 and ks.kvm_regs.from_buffer_copy(st.regs).rip == 0x1001
    assert st.xsave is not None and st.fpu is None and st.mp_state == 3 and st.tsc_khz == 2_000_000
    assert dict(st.msrs) == MSRS and st.cpuid == ((0, 0, 0, 0xD, 1, 2, 3), (1, 0, 0, 4, 5, 6, 7))
    assert decode(VcpuState, json.loads(json.dumps(encode(st)))) == st


def test_msrs_that_do_not_read_are_skipped_not_fatal() -> None:
    vcpu = FakeVcpu(unreadable=(0x174,))
    values, failed = read_msrs(vcpu, [*MSRS, 0xDEAD])  # type: ignore[arg-type]
    assert failed == [0x174, 0xDEAD] and [i for i, _ in values] == [i for i in MSRS if i != 0x174]
    st, notes = _capture(vcpu, [*MSRS, 0xDEAD])
    assert 0x174 not in dict(st.msrs) and any("0x174, 0xdead" in n for n in notes)


def test_missing_parts_are_left_out_with_a_note() -> None:
    st, notes = _capture(FakeVcpu(broken=("KVM_GET_XSAVE", "KVM_GET_XCRS", "KVM_GET_VCPU_EVENTS",
                                         "KVM_GET_DEBUGREGS", "KVM_GET_MP_STATE")))
    st.check(0)
    assert st.xsave is None and st.fpu is not None  # the legacy FPU state instead
    assert st.xcrs is st.vcpu_events is st.debugregs is None and st.mp_state == 0
    assert len(notes) == 5 and all(n.startswith("vCPU 0: ") for n in notes)


def test_saveable_msrs_adds_the_tsc_and_paravirtual_ones() -> None:
    class FakeKvm:
        def msr_index_list(self):
            return [0x174, 0x10, 0x4B564D01]

    class BrokenKvm:
        def msr_index_list(self):
            raise KvmError("KVM_GET_MSR_INDEX_LIST", EINVAL)

    msrs = saveable_msrs(FakeKvm())  # type: ignore[arg-type]
    assert msrs[:3] == [0x10, 0x174, 0x4B564D01] and len(msrs) == len(set(msrs))
    assert {0x11, 0x12, 0x4B564D00, 0x4B564D02, 0x4B564D03, 0x4B564D04} <= set(msrs)
    assert saveable_msrs(BrokenKvm())[0] == 0x10  # type: ignore[arg-type]


# --- restore ------------------------------------------------------------------------

def test_restore_writes_everything_in_kvm_order() -> None:
    src = FakeVcpu(0)
    st, _ = _capture(src)
    dst = FakeVcpu(0)
    dst.regs, dst.lapic, dst.msrs, dst.cpuid = ks.kvm_regs(), bytes(1024), {}, []
    notes: list[str] = []
    restore_vcpu(dst, st, notes)  # type: ignore[arg-type]
    assert notes == []
    steps = [s for s in dst.log if not s.startswith("msr ")]
    assert steps == ["cpuid", "regs", "xsave", "xcrs", "sregs", "lapic", "mp_state", "events", "debugregs"]
    msrs = [s for s in dst.log if s.startswith("msr ")]
    assert msrs[0] == "msr 0x10" and msrs[-1] == "msr 0x6e0"  # the TSC first, its deadline last
    assert dst.log.index("lapic") < dst.log.index("msr 0x10")
    assert _capture(dst)[0] == st


def test_restore_without_xsave_uses_the_fpu_state() -> None:
    st, _ = _capture(FakeVcpu(broken=("KVM_GET_XSAVE",)))
    dst = FakeVcpu()
    restore_vcpu(dst, st, [])  # type: ignore[arg-type]
    assert "fpu" in dst.log and "xsave" not in dst.log


def test_refused_msrs_and_parts_are_noted() -> None:
    st, _ = _capture(FakeVcpu())
    dst = FakeVcpu(refused=(0x174,), broken=("KVM_SET_XCRS",))
    notes: list[str] = []
    restore_vcpu(dst, st, notes)  # type: ignore[arg-type]
    assert dst.msrs[0xC0000080] == 0x500  # the MSRs after the refused one are written too
    assert any("refused MSRs 0x174" in n for n in notes) and any("XCRs not restored" in n for n in notes)
    assert write_msrs(FakeVcpu(refused=(0x10, 0x6E0)), list(MSRS.items())) == [0x10, 0x6E0]  # type: ignore[arg-type]


def test_tsc_frequency_is_set_or_the_difference_noted() -> None:
    st, _ = _capture(FakeVcpu(tsc_khz=2_000_000))
    same = FakeVcpu(tsc_khz=2_000_050)  # within 100 ppm: left alone
    restore_vcpu(same, st, notes := [])  # type: ignore[arg-type]
    assert "tsc_khz" not in same.log and notes == []
    scalable = FakeVcpu(tsc_khz=3_000_000, settable_tsc=True)
    restore_vcpu(scalable, st, notes)  # type: ignore[arg-type]
    assert scalable.tsc_khz == 2_000_000 and notes == []
    fixed = FakeVcpu(tsc_khz=3_000_000)
    restore_vcpu(fixed, st, notes)  # type: ignore[arg-type]
    assert len(notes) == 1 and "3000000 kHz here, 2000000 kHz when saved" in notes[0]


# --- checking untrusted records -------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"version": 2}, "state version 2"),
    ({"index": 3}, "vCPU 3's"),
    ({"regs": bytes(10)}, "regs is 10 bytes, struct is 144"),
    ({"sregs": "x"}, "sregs is str bytes"),
    ({"lapic": bytes(1025)}, "lapic is 1025 bytes"),
    ({"fpu": bytes(3)}, "fpu is 3 bytes"),
    ({"xsave": bytes(100)}, "xsave area of 100 bytes"),
    ({"xsave": bytes(4096 + 3)}, "xsave area"),
    ({"xsave": bytes(2 << 20)}, "xsave area"),
    ({"xsave": None, "fpu": None}, "neither an XSAVE area nor FPU state"),
    ({"xcrs": bytes(1)}, "xcrs is 1 bytes"),
    ({"vcpu_events": bytes(65)}, "vcpu_events is 65 bytes"),
    ({"debugregs": bytes(1)}, "debugregs"),
    ({"mp_state": 99}, "mp_state 99"),
    ({"mp_state": -1}, "mp_state -1"),
    ({"tsc_khz": 1 << 40}, "tsc_khz"),
    ({"msrs": ((1, 2), (1, 3))}, "saved twice"),
    ({"msrs": ((1 << 33, 2),)}, "MSR index"),
    ({"msrs": ((1, -2),)}, "MSR 0x1"),
    ({"msrs": ((1,),)}, "is not (index, value)"),
    ({"msrs": ((0, 0),) * 5000}, "at most 4096 MSRs"),
    ({"cpuid": ()}, "1 to 256 CPUID entries"),
    ({"cpuid": ((0,) * 6,)}, "is not 7 values"),
    ({"cpuid": ((0, 0, 0, 0, 0, 0, 1 << 32),)}, "CPUID value"),
])
def test_bad_vcpu_states_are_refused(change: dict, message: str) -> None:
    st = dataclasses.replace(_capture(FakeVcpu())[0], **change)
    with pytest.raises(ValueError) as e:
        st.check(0)
    assert message in str(e.value)


class FakeVm:
    def __init__(self, pit: bool = True) -> None:
        self.chips = {0: b"\1" * 512, 1: b"\2" * 512, 2: b"\3" * 512}
        self.pit = b"\4" * 112 if pit else None
        self.clock = 5_000_000_000
        self.log: list[str] = []

    def get_irqchip(self, chip: int) -> bytes:
        return self.chips[chip]

    def set_irqchip(self, chip: int, data: bytes) -> None:
        self.log.append(f"irqchip {chip}")
        self.chips[chip] = data

    def get_pit2(self) -> bytes:
        if self.pit is None:
            raise KvmError("KVM_GET_PIT2", 6)
        return self.pit

    def set_pit2(self, data: bytes) -> None:
        self.log.append("pit2")
        self.pit = data

    def get_clock(self):
        return ks.kvm_clock_data(clock=self.clock, flags=2)

    def set_clock(self, clock: int) -> None:
        self.log.append("clock")
        self.clock = clock


def test_vm_state_round_trip() -> None:
    st = capture_vm(FakeVm(), has_pit2=True)  # type: ignore[arg-type]
    st.check()
    assert st.clock == 5_000_000_000 and st.clock_flags == 2 and st.pit2 == b"\4" * 112
    assert decode(VmState, json.loads(json.dumps(encode(st)))) == st
    dst = FakeVm()
    dst.chips, dst.clock = {}, 0
    restore_vm(dst, st, has_pit2=True, notes=[])  # type: ignore[arg-type]
    assert dst.log == ["irqchip 0", "irqchip 1", "irqchip 2", "pit2", "clock"]
    assert capture_vm(dst, has_pit2=True) == st  # type: ignore[arg-type]


def test_vm_without_an_in_kernel_pit() -> None:
    st = capture_vm(FakeVm(pit=False), has_pit2=False)  # type: ignore[arg-type]
    assert st.pit2 is None
    notes: list[str] = []
    restore_vm(FakeVm(), st, has_pit2=True, notes=notes)  # type: ignore[arg-type]
    assert "starts from reset" in notes[0]
    for change in ({"ioapic": bytes(5)}, {"pit2": bytes(5)}, {"clock": -1}, {"version": 0}):
        with pytest.raises(ValueError):
            dataclasses.replace(st, **change).check()


def test_pvm_assist_state_round_trip() -> None:
    mem = GuestMemory.from_bytearray(1 << 20)
    a = PvmAssist(mem)
    a.syscall.handler_va, a.syscall.handler_pa, a.syscall.displaced, a.syscall.lstar = 0xFFFF8000, 0x5000, b"\x90", 7
    b = PvmAssist(mem)
    b.restore(decode(PvmState, json.loads(json.dumps(encode(a.state())))))
    assert b.state() == a.state() and b.syscall.displaced == b"\x90"
    for bad in (PvmState(displaced=b"\x0f\x0b"), PvmState(handler_pa=1 << 30), PvmState(version=2),
                PvmState(displaced=bytes(16))):
        with pytest.raises(ValueError):
            b.restore(bad)
    with pytest.raises(ValueError):
        b.restore(object())  # type: ignore[arg-type]
