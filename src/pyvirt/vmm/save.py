"""Capture a paused VM's complete state and write it as a snapshot file.

What is saved, in the file's order (format: snapshot.py):
- the configuration that shapes the machine (snapshot_header.py);
- the VM: the in-kernel PIC pair and IOAPIC (KVM_GET_IRQCHIP), the
  in-kernel PIT (KVM_GET_PIT2, where the VM has one), kvmclock
  (KVM_GET_CLOCK);
- each vCPU: general and segment registers, the XSAVE area (the legacy FPU
  state where XSAVE is missing), XCRs, every MSR of KVM_GET_MSR_INDEX_LIST
  that reads back plus KVM's paravirtual ones (kvmclock, async PF, steal
  time, PV EOI, poll control) and the TSC, the LAPIC, pending events, MP
  state, debug registers, the CPUID table and the TSC frequency;
- every device's versioned state record: the legacy devices on the port
  bus, the PCI host bridge, each virtio device and its transport, the
  kvm_pvm layer's SYSCALL fix-up;
- guest memory, all-zero pages left out.

The caller pauses the vCPUs first (`Machine.pause`). `save_machine` then
quiesces the devices: it holds the virtio I/O thread between callbacks (so
no queue is processed and no host input lands in guest memory), waits for
virtio-blk's worker pool to finish what is in flight (`drain`), captures
everything and writes the file, and lets the I/O thread go on. Nothing the
host cannot give is fatal: a missing part is left out (the record says
None) and listed in the result's `notes`.
"""

from __future__ import annotations

import dataclasses
import os
import time

from .._log import get_logger
from ..kvm import KvmError
from . import snapshot
from .state_codec import encode
from .vmstate import MSR_IA32_TSC, VcpuState, VmState, legacy_devices

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..kvm import Kvm, Vcpu, Vm
    from .machine import Machine

log = get_logger(__name__)

# KVM's paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst), saved even if
# the index list leaves one out: wall clock and system time (old and new
# numbers), async page faults, steal time, PV EOI, poll control.
PARAVIRT_MSRS = (0x11, 0x12, 0x4B564D00, 0x4B564D01, 0x4B564D02, 0x4B564D03, 0x4B564D04, 0x4B564D05,
                 0x4B564D06, 0x4B564D07)
KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class SaveResult:
    path: str
    size: int  # bytes of the file
    seconds: float
    memory_pages: int  # guest pages written (the rest were zero)
    memory_runs: int
    notes: tuple[str, ...] = ()  # what this host could not provide

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self) | {"notes": list(self.notes)}


# --- vCPUs and the VM -------------------------------------------------------------

def saveable_msrs(kvm: Kvm) -> list[int]:
    """The MSRs to save: KVM_GET_MSR_INDEX_LIST, the TSC and the paravirtual ones."""
    try:
        listed = kvm.msr_index_list()
    except KvmError as e:
        log.warning("KVM_GET_MSR_INDEX_LIST failed (%s): saving only the TSC and paravirtual MSRs", e)
        listed = []
    return list(dict.fromkeys([MSR_IA32_TSC, *listed, *PARAVIRT_MSRS]))


def read_msrs(vcpu: Vcpu, indices: Sequence[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """(index, value) of every MSR in `indices` that reads, and those that do
    not. KVM_GET_MSRS stops at the first MSR it cannot read, so the rest is
    asked for again past it."""
    values: list[tuple[int, int]] = []
    failed: list[int] = []
    rest = list(indices)
    while rest:
        got = vcpu.get_msrs(rest)
        n = len(got)
        values += [(i, got[i]) for i in rest[:n]]
        if n >= len(rest):
            break
        failed.append(rest[n])
        rest = rest[n + 1:]
    return values, failed


def capture_vcpu(vcpu: Vcpu, msrs: Sequence[int], xsave_size: int, notes: list[str]) -> VcpuState:
    """One parked vCPU's state. Parts the host cannot give are None, with a note."""
    i = vcpu.index

    def optional(name: str, get: Callable[[], bytes]) -> bytes | None:
        try:
            return get()
        except KvmError as e:
            notes.append(f"vCPU {i}: {name} not saved ({e})")
            return None

    xsave = optional("XSAVE area", lambda: vcpu.get_xsave(xsave_size))
    fpu = bytes(vcpu.get_fpu()) if xsave is None else None
    try:
        mp_state = vcpu.get_mp_state()
    except KvmError as e:
        notes.append(f"vCPU {i}: MP state not saved ({e}); restored as runnable")
        mp_state = 0
    values, failed = read_msrs(vcpu, msrs)
    if failed:
        notes.append(f"vCPU {i}: MSRs that do not read back, not saved: {', '.join(hex(m) for m in failed)}")
    try:
        tsc_khz = vcpu.get_tsc_khz()
    except KvmError:
        tsc_khz = 0
    cpuid = tuple((e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in vcpu.get_cpuid2())
    return VcpuState(
        index=i, regs=bytes(vcpu.get_regs()), sregs=bytes(vcpu.get_sregs()), lapic=vcpu.get_lapic(),
        mp_state=mp_state, msrs=tuple(values), cpuid=cpuid, xsave=xsave, fpu=fpu,
        xcrs=optional("XCRs", vcpu.get_xcrs), vcpu_events=optional("pending events", vcpu.get_vcpu_events),
        debugregs=optional("debug registers", vcpu.get_debugregs), tsc_khz=tsc_khz)


def xsave_size(vm: Vm) -> int:
    """Bytes of the XSAVE area: KVM_CAP_XSAVE2's answer where it is larger than 4096."""
    from ..kvm import ioctls

    return max(4096, vm.check_extension(ioctls.KVM_CAP_XSAVE2))


def capture_vm(vm: Vm, has_pit2: bool) -> VmState:
    clock = vm.get_clock()
    return VmState(pic_master=vm.get_irqchip(KVM_IRQCHIP_PIC_MASTER), pic_slave=vm.get_irqchip(KVM_IRQCHIP_PIC_SLAVE),
                   ioapic=vm.get_irqchip(KVM_IRQCHIP_IOAPIC), clock=clock.clock,
                   pit2=vm.get_pit2() if has_pit2 else None, clock_flags=clock.flags)


# --- devices ----------------------------------------------------------------------

def _record(state: object) -> dict[str, object]:
    path = getattr(state, "path", None)
    if isinstance(path, str) and path and not os.path.isabs(path):
        # virtio-blk's disk, as the restore (which may run elsewhere) opens it
        state = dataclasses.replace(state, path=os.path.abspath(path))  # type: ignore[type-var]
    return {"type": type(state).__name__, "state": encode(state)}


def capture_devices(m: Machine) -> dict[str, object]:
    """Every device's state record, by where it sits in the machine."""
    out: dict[str, object] = {
        "legacy": {name: _record(dev.state()) for name, dev in legacy_devices(m.pio)},
        "pci": _record(m.pci.state()) if m.pci is not None else None,
        "virtio": [{"name": dev.name, "device": _record(dev.state()), "transport": _record(t.state())}  # type: ignore[attr-defined]
                   for dev, t in zip(m.virtio.devices, m.virtio.transports)] if m.virtio is not None else [],
        "pvm": _record(m.assist.state()) if m.assist is not None else None,
    }
    return out


# --- the whole machine ------------------------------------------------------------

def quiesce(m: Machine) -> None:
    """Hold the I/O thread between callbacks and wait for virtio-blk's worker
    pools (the vCPUs are parked already); `unquiesce` lets it go on."""
    io = m.virtio.iothread if m.virtio is not None else None
    if io is not None:
        io.hold()
    for dev in m.virtio.devices if m.virtio is not None else ():
        drain = getattr(dev, "drain", None)
        if callable(drain):
            drain()


def unquiesce(m: Machine) -> None:
    if m.virtio is not None:
        m.virtio.iothread.release()


def capture_machine(m: Machine, notes: list[str]) -> tuple[VmState, list[VcpuState], dict[str, object]]:
    """The VM's, every vCPU's and every device's state, of a quiesced machine."""
    devices = capture_devices(m)
    vm_state = capture_vm(m.vm, has_pit2=not m.pvm)
    msrs = saveable_msrs(m.kvm)
    size = xsave_size(m.vm)
    return vm_state, [capture_vcpu(v, msrs, size, notes) for v in m.vcpus], devices


def save_machine(m: Machine, path: str, *, kind: str = "save", compression: str = "none",
                 sync: bool = True, freeze: Callable[[dict[str, object]], Callable[[], None]] | None = None
                 ) -> SaveResult:
    """Write the state of `m`, whose vCPUs are parked, to `path`. `freeze`
    snapshots the disks while the devices are quiet and completes the config
    section's disk entries; what it returns undoes that if the file cannot
    be written (vmm/disk_snapshot.py)."""
    start = time.monotonic()
    quiesce(m)
    try:
        notes: list[str] = []
        vm_state, vcpus, devices = capture_machine(m, notes)
        from .snapshot_header import machine_header

        macs = [":".join(f"{b:02x}" for b in dev.mac) for dev in (m.virtio.devices if m.virtio else ())  # type: ignore[attr-defined]
                if dev.name == "net"]
        header = machine_header(m.cfg, kind=kind, pvm=m.pvm, backend=m.backend, tsc_khz=vcpus[0].tsc_khz,
                                regions=[(r.gpa, r.size) for r in m.mem.regions], macs=macs,
                                compression=compression, created=time.time())
        header["notes"] = notes
        writer = snapshot.SnapshotWriter(path)
        undo = None
        try:
            if freeze is not None:
                undo = freeze(header)  # nothing runs: the disks are taken at the same instant as the rest
            writer.add_json(snapshot.CONFIG, header)
            writer.add_json(snapshot.VM, encode(vm_state))
            for v in vcpus:
                writer.add_json(snapshot.VCPU, encode(v), index=v.index)
            writer.add_json(snapshot.DEVICES, devices)
            stats = writer.add_memory([(r.gpa, r.view) for r in m.mem.regions], compression)
            file_size = writer.commit(sync=sync)
        except BaseException:
            writer.abort()
            if undo is not None:
                undo()
            raise
    finally:
        unquiesce(m)
    for note in notes:
        log.info("%s", note)
    return SaveResult(path=os.path.abspath(path), size=file_size, seconds=round(time.monotonic() - start, 3),
                      memory_pages=stats.pages, memory_runs=stats.runs, notes=tuple(notes))
