"""Start a VM from a snapshot file: `pyvirt restore FILE`.

`RestoredMachine` is a `Machine` built from the file's configuration that
loads no kernel and sets up no registers: its memory and state come from
the file. Guest memory is the fast part: each saved run of pages is mapped
from the file with MAP_PRIVATE over anonymous memory, so nothing is read
until the guest touches it, a guest write copies the page (the file is
never written), and pages that were zero stay anonymous. A compressed
snapshot must be read and decompressed instead.

The rest is loaded in the order KVM needs (see `restore_vcpu`): the
irqchip, PIT and kvmclock before the vCPUs; per vCPU the CPUID table first
(MSR writes are checked against it), the LAPIC before the MSRs (the TSC
deadline needs it), the TSC before everything that counts in it; then the
devices, each virtio device before its transport (which re-activates it
with its saved rings). Every record is decoded and checked before it
reaches an ioctl or a device; a record that does not fit ends the restore
with a message naming it. Host differences that cannot be fixed (a TSC
frequency that cannot be set, an MSR the host refuses) are logged.
"""

from __future__ import annotations

import os
import time

from .._log import get_logger
from ..arch.x86 import layout
from ..kvm import KvmError
from ..kvm import structs as ks
from .machine import Machine, VmError
from .snapshot import CODEC_NONE, DEVICES, VCPU, VM, Snapshot, SnapshotError
from .state_codec import StateDecodeError, decode
from .vmstate import MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE, PvmState, VcpuState, VmState, legacy_devices

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TypeVar

    from ..devices.protocols import Stateful
    from ..kvm import Vcpu, Vm
    from ..memory import Region
    from .config import SerialConfig, VmConfig
    from .pvm import PvmAssist

    T = TypeVar("T")

log = get_logger(__name__)

# More mappings than this and the restore copies the runs instead: every
# run is two VMAs, and the kernel's limit (vm.max_map_count) is 65530.
# pyvirt writes at most snapshot.MAX_WRITTEN_RUNS (16384).
MAX_MAPPED_RUNS = 20000


# --- KVM state ----------------------------------------------------------------------

def write_msrs(vcpu: Vcpu, msrs: Sequence[tuple[int, int]]) -> list[int]:
    """Set the MSRs, the TSC first and the TSC deadline last; returns those
    the host refused (KVM_SET_MSRS stops at the first, so the rest are
    written again past it)."""
    first = [m for m in msrs if m[0] == MSR_IA32_TSC]
    last = [m for m in msrs if m[0] == MSR_IA32_TSC_DEADLINE]
    rest = first + [m for m in msrs if m[0] not in (MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE)] + last
    failed = []
    while rest:
        n = vcpu.set_msrs(dict(rest))
        if n >= len(rest):
            break
        failed.append(rest[n][0])
        rest = rest[n + 1:]
    return failed


def restore_vcpu(vcpu: Vcpu, st: VcpuState, notes: list[str]) -> None:
    """Load a checked VcpuState into a new vCPU."""
    i = vcpu.index
    vcpu.set_cpuid2(ks.kvm_cpuid_entry2(*row) for row in st.cpuid)
    if st.tsc_khz:
        try:
            here = vcpu.get_tsc_khz()
        except KvmError:
            here = 0
        if here and abs(here - st.tsc_khz) > st.tsc_khz // 10000:  # more than 100 ppm
            try:
                vcpu.set_tsc_khz(st.tsc_khz)
            except KvmError as e:
                notes.append(f"vCPU {i}: the TSC runs at {here} kHz here, {st.tsc_khz} kHz when saved, and "
                             f"cannot be scaled ({e}): guest time read from the TSC runs at another rate")
    vcpu.set_regs(ks.kvm_regs.from_buffer_copy(st.regs))
    if st.xsave is not None:
        vcpu.set_xsave(st.xsave)
    else:
        assert st.fpu is not None  # VcpuState.check
        vcpu.set_fpu(ks.kvm_fpu.from_buffer_copy(st.fpu))
    if st.xcrs is not None:
        xcrs = st.xcrs
        _optional(notes, i, "XCRs", lambda: vcpu.set_xcrs(xcrs))
    vcpu.set_sregs(ks.kvm_sregs.from_buffer_copy(st.sregs))
    vcpu.set_lapic(st.lapic)
    failed = write_msrs(vcpu, st.msrs)
    if failed:
        notes.append(f"vCPU {i}: this host refused MSRs {', '.join(hex(m) for m in failed)}")
    _optional(notes, i, "MP state", lambda: vcpu.set_mp_state(st.mp_state))
    if (events := st.vcpu_events) is not None:
        _optional(notes, i, "pending events", lambda: vcpu.set_vcpu_events(events))
    if (debugregs := st.debugregs) is not None:
        _optional(notes, i, "debug registers", lambda: vcpu.set_debugregs(debugregs))
    try:
        vcpu.kvmclock_ctrl()  # the guest's watchdogs: it was stopped, not stuck
    except KvmError:
        pass  # EINVAL: the guest does not use kvmclock


def _optional(notes: list[str], index: int, what: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except KvmError as e:
        notes.append(f"vCPU {index}: {what} not restored ({e})")


def restore_vm(vm: Vm, st: VmState, has_pit2: bool, notes: list[str]) -> None:
    """The irqchip, PIT and kvmclock of a checked VmState (before the vCPUs)."""
    for chip, data in enumerate((st.pic_master, st.pic_slave, st.ioapic)):
        vm.set_irqchip(chip, data)
    if st.pit2 is not None and has_pit2:
        vm.set_pit2(st.pit2)
    elif has_pit2:
        notes.append("the snapshot has no in-kernel PIT state: the PIT starts from reset")
    vm.set_clock(st.clock)


# --- the machine ----------------------------------------------------------------------

class RestoredMachine(Machine):
    """A Machine whose memory and state come from a snapshot."""

    boots_kernel = False

    def __init__(self, snap: Snapshot, cfg: VmConfig, regions: Sequence[tuple[int, int]], *,
                 verify_memory: bool = False) -> None:
        self.snap = snap
        self.notes: list[str] = []
        self.mapped_runs = self.read_runs = 0
        self._saved_regions = list(regions)
        self._verify = verify_memory
        self._vm_state = _decode(snap, VmState, snap.json(snap.one(VM)), "vm")
        self._vm_state.check()
        vcpu_sections = sorted(snap.find(VCPU), key=lambda s: s.index)
        if [s.index for s in vcpu_sections] != list(range(cfg.cpus)):
            raise snap.error(f"has vCPU sections {[s.index for s in vcpu_sections]}, expected 0..{cfg.cpus - 1}")
        self._vcpu_states = []
        for s in vcpu_sections:
            st = _decode(snap, VcpuState, snap.json(s), f"vcpu{s.index}")
            try:
                st.check(s.index)
            except ValueError as e:
                raise snap.error(str(e)) from e
            self._vcpu_states.append(st)
        devices = snap.json(snap.one(DEVICES))
        if not isinstance(devices, dict):
            raise snap.error("the devices section is not a JSON object")
        self._devices: dict[str, object] = devices
        self._pvm_state: PvmState | None = None
        super().__init__(cfg)
        try:
            self._restore_devices()
        except BaseException:
            self.close()
            raise
        if self.virtio is not None:
            self.virtio.kick_all()

    # --- building (the Machine's steps, from the file) ------------------------
    def _read_images(self) -> tuple[bytes, bytes | None]:
        return b"", None

    def _ram_regions(self, size: int) -> list[Region]:
        expected = [(r.gpa, r.size) for r in layout.ram_ranges(size)]
        if self._saved_regions != expected:
            raise self.snap.error(f"memory regions {self._saved_regions} are not this pyvirt's layout for "
                                   f"{size >> 20} MiB ({expected})")
        regions = super()._ram_regions(size)
        snap = self.snap
        runs = snap.memory_runs(expected)
        if self._verify:
            snap.verify_memory(expected)
        copy = len(runs) > MAX_MAPPED_RUNS or any(r.codec != CODEC_NONE for r in runs)
        for region in regions:
            mine = [r for r in runs if region.gpa <= r.gpa < region.end]  # _parse_map: inside one region
            if copy:
                for run in mine:
                    off = run.gpa - region.gpa
                    snap.read_run(run, into=region.view[off:off + run.length])
                self.read_runs += len(mine)
            else:
                self.mapped_runs += region.map_file(snap.fd, [(r.gpa - region.gpa, r.length, r.offset) for r in mine])
        return regions

    def _setup_firmware_and_kernel(self, kernel: bytes, initrd: bytes | None) -> None:
        pass  # the firmware tables and the kernel are in the saved memory

    def _create_vcpus(self) -> None:
        restore_vm(self.vm, self._vm_state, has_pit2=not self.pvm, notes=self.notes)
        for st in self._vcpu_states:
            vcpu = self.vm.create_vcpu(st.index)
            self.vcpus.append(vcpu)
            restore_vcpu(vcpu, st, self.notes)

    def _pvm_assist(self) -> PvmAssist:
        assist = super()._pvm_assist()
        if self._pvm_state is not None:
            assist.restore(self._pvm_state)  # checked by _restore_devices
        return assist

    # --- devices ------------------------------------------------------------------
    def _record(self, component: Stateful, rec: object, where: str) -> object:
        """The saved record `rec` decoded as the state type `component` saves."""
        expected = type(component.state())
        if not isinstance(rec, dict) or set(rec) != {"type", "state"}:
            raise self.snap.error(f"{where}: the saved record is not {{type, state}}")
        if rec["type"] != expected.__name__:
            raise self.snap.error(f"{where}: saved a {rec['type']!r}, this device restores a {expected.__name__}")
        return _decode(self.snap, expected, rec["state"], where)

    def _load(self, component: Stateful, rec: object, where: str) -> None:
        state = self._record(component, rec, where)
        try:
            component.restore(state)
        except ValueError as e:
            raise self.snap.error(f"{where}: {e}") from e

    def _restore_devices(self) -> None:
        d = self._devices
        legacy = d.get("legacy")
        if not isinstance(legacy, dict):
            raise self.snap.error("devices.legacy is missing")
        here = legacy_devices(self.pio)
        missing = sorted({name for name, _ in here} ^ set(legacy))
        if missing:
            raise self.snap.error(f"the saved legacy devices differ from this machine's: {', '.join(missing)}")
        for name, component in here:
            self._load(component, legacy[name], f"device {name!r}")
        if d.get("pvm") is not None:
            if not self.pvm:
                raise self.snap.error("saved with the kvm_pvm layer on; this machine has it off")
            probe = super()._pvm_assist()  # run() makes the real one; this checks the record now
            self._load(probe, d["pvm"], "kvm_pvm layer")
            self._pvm_state = probe.state()
        if self.pci is not None:
            self._load(self.pci, d.get("pci"), "PCI host bridge")
        saved = d.get("virtio")
        virtio = self.virtio
        devices = virtio.devices if virtio is not None else []
        if not isinstance(saved, list) or len(saved) != len(devices):
            raise self.snap.error("the saved virtio devices differ from this machine's")
        for i, (dev, rec) in enumerate(zip(devices, saved)):
            assert virtio is not None
            if not isinstance(rec, dict) or rec.get("name") != dev.name:
                saved_name = rec.get("name") if isinstance(rec, dict) else rec
                raise self.snap.error(f"virtio device {i}: saved a {saved_name!r}, this machine has virtio-{dev.name}")
            # Every virtio device and transport has state() and restore().
            self._load(dev, rec.get("device"), f"virtio-{dev.name} {i}")  # type: ignore[arg-type]
            self._load(virtio.transports[i], rec.get("transport"),  # type: ignore[arg-type]
                       f"virtio-{dev.name} {i} transport")

    def close(self) -> None:
        super().close()
        self.snap.close()


def _decode(snap: Snapshot, cls: type[T], data: object, where: str) -> T:
    try:
        return decode(cls, data, where)
    except StateDecodeError as e:
        raise snap.error(str(e)) from e


def _check_disks(info: dict[str, object]) -> None:
    for path, size, mtime in info.get("disks", ()):  # type: ignore[attr-defined]
        try:
            st = os.stat(path)
        except OSError:
            continue  # opening it reports that
        if st.st_mtime_ns != mtime or st.st_size != size:
            log.warning("disk %s changed after the snapshot was taken: the guest may find its data "
                        "inconsistent with what it had cached", path)


def restore_machine(path: str, serial: SerialConfig | None = None, api_socket: str | None = None, *,
                    verify_memory: bool = False) -> RestoredMachine:
    """Open, check and load the snapshot at `path`; the machine is ready to `run()`.
    SnapshotError for a file that cannot be used, VmError for a VM that cannot be built."""
    from .config import ConfigError
    from .snapshot_header import config_from_header

    start = time.monotonic()
    snap = Snapshot.open(path)
    try:
        cfg, regions, info = config_from_header(snap)
        if serial is not None:
            cfg.serial = serial
        cfg.api_socket = api_socket
        _check_disks(info)
        try:
            m = RestoredMachine(snap, cfg, regions, verify_memory=verify_memory)
        except (ConfigError, KvmError) as e:
            raise VmError(f"{path}: {e}") from e
    except BaseException:
        snap.close()
        raise
    snap.close()  # the mappings keep the file
    for note in m.notes:
        log.warning("%s", note)
    log.info("restored %s in %.1f ms (%d runs of memory mapped, %d read)", path,
             (time.monotonic() - start) * 1000, m.mapped_runs, m.read_runs)
    return m


__all__ = ["RestoredMachine", "restore_machine", "SnapshotError"]
