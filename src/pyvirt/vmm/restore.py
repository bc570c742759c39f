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

import dataclasses
import time

from .._log import get_logger
from ..arch.x86 import layout
from ..kvm import KvmError
from ..kvm import structs as ks
from .disk_restore import restored_disk_paths
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
    from .lazy_restore import LazyMemory
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

class SavedState:
    """A machine's saved state, decoded and checked: the VM's ("vm"), each
    vCPU's, and the device records ("devices"), from a snapshot file or a
    migration stream. `error` makes the exception for anything that does
    not fit (SnapshotError or MigrationError, naming the source)."""

    def __init__(self, vm: object, vcpus: Sequence[tuple[int, object]], devices: object, cpus: int,
                 error: Callable[[str], Exception]) -> None:
        self.error = error
        self.vm = _decode(error, VmState, vm, "vm")
        try:
            self.vm.check()
        except ValueError as e:
            raise error(str(e)) from e
        indexes = sorted(i for i, _ in vcpus)
        if indexes != list(range(cpus)):
            raise error(f"has vCPU sections {indexes}, expected 0..{cpus - 1}")
        self.vcpus: list[VcpuState] = []
        for i, data in sorted(vcpus, key=lambda v: v[0]):
            st = _decode(error, VcpuState, data, f"vcpu{i}")
            try:
                st.check(i)
            except ValueError as e:
                raise error(str(e)) from e
            self.vcpus.append(st)
        if not isinstance(devices, dict):
            raise error("the devices section is not a JSON object")
        self.devices: dict[str, object] = devices

    @classmethod
    def from_snapshot(cls, snap: Snapshot, cpus: int) -> SavedState:
        return cls(snap.json(snap.one(VM)), [(s.index, snap.json(s)) for s in snap.find(VCPU)],
                   snap.json(snap.one(DEVICES)), cpus, snap.error)


class DeviceLoader:
    """Loads the device records of a SavedState into a built Machine.
    `disk_paths` maps a saved disk path to the one this machine serves it
    from (a migration destination may have the disk elsewhere)."""

    def __init__(self, m: Machine, saved: SavedState, disk_paths: dict[str, str] | None = None) -> None:
        self.m = m
        self.error = saved.error
        self.devices = saved.devices
        self.disk_paths = disk_paths or {}
        self.pvm_state: PvmState | None = None

    def _record(self, component: Stateful, rec: object, where: str) -> object:
        """The saved record `rec` decoded as the state type `component` saves."""
        expected = type(component.state())
        if not isinstance(rec, dict) or set(rec) != {"type", "state"}:
            raise self.error(f"{where}: the saved record is not {{type, state}}")
        if rec["type"] != expected.__name__:
            raise self.error(f"{where}: saved a {rec['type']!r}, this device restores a {expected.__name__}")
        state = _decode(self.error, expected, rec["state"], where)
        path = getattr(state, "path", None)
        if isinstance(path, str) and path in self.disk_paths:
            state = dataclasses.replace(state, path=self.disk_paths[path])  # type: ignore[type-var]
        return state

    def _load(self, component: Stateful, rec: object, where: str) -> None:
        state = self._record(component, rec, where)
        try:
            component.restore(state)
        except ValueError as e:
            raise self.error(f"{where}: {e}") from e

    def load(self, pvm_probe: Callable[[], PvmAssist]) -> None:
        """Every device's record; the kvm_pvm layer's is checked on a probe
        (run() makes the real one) and kept in `pvm_state`."""
        m, d = self.m, self.devices
        legacy = d.get("legacy")
        if not isinstance(legacy, dict):
            raise self.error("devices.legacy is missing")
        here = legacy_devices(m.pio)
        missing = sorted({name for name, _ in here} ^ set(legacy))
        if missing:
            raise self.error(f"the saved legacy devices differ from this machine's: {', '.join(missing)}")
        for name, component in here:
            self._load(component, legacy[name], f"device {name!r}")
        if d.get("pvm") is not None:
            if not m.pvm:
                raise self.error("saved with the kvm_pvm layer on; this machine has it off")
            probe = pvm_probe()
            self._load(probe, d["pvm"], "kvm_pvm layer")
            self.pvm_state = probe.state()
        if m.pci is not None:
            self._load(m.pci, d.get("pci"), "PCI host bridge")
        saved = d.get("virtio")
        virtio = m.virtio
        devices = virtio.devices if virtio is not None else []
        if not isinstance(saved, list) or len(saved) != len(devices):
            raise self.error("the saved virtio devices differ from this machine's")
        for i, (dev, rec) in enumerate(zip(devices, saved)):
            assert virtio is not None
            if not isinstance(rec, dict) or rec.get("name") != dev.name:
                saved_name = rec.get("name") if isinstance(rec, dict) else rec
                raise self.error(f"virtio device {i}: saved a {saved_name!r}, this machine has virtio-{dev.name}")
            # Every virtio device and transport has state() and restore().
            self._load(dev, rec.get("device"), f"virtio-{dev.name} {i}")  # type: ignore[arg-type]
            self._load(virtio.transports[i], rec.get("transport"),  # type: ignore[arg-type]
                       f"virtio-{dev.name} {i} transport")


def check_layout(saved: Sequence[tuple[int, int]], size: int, error: Callable[[str], Exception]) -> list[tuple[int, int]]:
    """The RAM regions (gpa, size) of `size` bytes of guest memory, which
    must be the saved ones: guest memory is restored region by region."""
    expected = [(r.gpa, r.size) for r in layout.ram_ranges(size)]
    if list(saved) != expected:
        raise error(f"memory regions {list(saved)} are not this pyvirt's layout for {size >> 20} MiB ({expected})")
    return expected


class RestoredMachine(Machine):
    """A Machine whose memory and state come from a snapshot."""

    boots_kernel = False

    def __init__(self, snap: Snapshot, cfg: VmConfig, regions: Sequence[tuple[int, int]], *,
                 verify_memory: bool = False, lazy: bool = False) -> None:
        self.snap = snap
        self._lazy = lazy
        self.lazy: LazyMemory | None = None  # compressed memory served on demand (lazy_restore.py)
        self.notes: list[str] = []
        self.mapped_runs = self.read_runs = 0
        self._saved_regions = list(regions)
        self._verify = verify_memory
        self._saved = SavedState.from_snapshot(snap, cfg.cpus)
        self._pvm_state: PvmState | None = None
        super().__init__(cfg)
        try:
            loader = DeviceLoader(self, self._saved, restored_disk_paths(snap, cfg))  # disk_restore.py
            loader.load(super()._pvm_assist)
            self._pvm_state = loader.pvm_state
        except BaseException:
            self.close()
            raise
        if self.virtio is not None:
            self.virtio.kick_all()

    # --- building (the Machine's steps, from the file) ------------------------
    def _read_images(self) -> tuple[bytes, bytes | None]:
        return b"", None

    def _ram_regions(self, size: int) -> list[Region]:
        expected = check_layout(self._saved_regions, size, self.snap.error)
        regions = super()._ram_regions(size)
        snap = self.snap
        runs = snap.memory_runs(expected)
        if self._verify:
            snap.verify_memory(expected)
        copy = len(runs) > MAX_MAPPED_RUNS or any(r.codec != CODEC_NONE for r in runs)
        if copy and self._lazy:
            from .lazy_restore import LazyMemory

            self.lazy = LazyMemory(snap.path, regions)
            return regions
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
        restore_vm(self.vm, self._saved.vm, has_pit2=not self.pvm, notes=self.notes)
        for st in self._saved.vcpus:
            vcpu = self.vm.create_vcpu(st.index)
            self.vcpus.append(vcpu)
            restore_vcpu(vcpu, st, self.notes)

    def _pvm_assist(self) -> PvmAssist:
        assist = super()._pvm_assist()
        if self._pvm_state is not None:
            assist.restore(self._pvm_state)  # checked by DeviceLoader.load
        return assist

    def close(self) -> None:
        super().close()
        if self.lazy is not None:
            self.lazy.close()
        self.snap.close()


def _decode(error: Callable[[str], Exception], cls: type[T], data: object, where: str) -> T:
    try:
        return decode(cls, data, where)
    except StateDecodeError as e:
        raise error(str(e)) from e


def restore_machine(path: str, serial: SerialConfig | None = None, api_socket: str | None = None, *,
                    verify_memory: bool = False, disk_mode: str = "overlay", lazy: bool = False) -> RestoredMachine:
    """Open, check and load the snapshot at `path`; the machine is ready to `run()`.
    `disk_mode` says what to do with disks the snapshot froze (disk_restore.py).
    SnapshotError for a file that cannot be used, VmError for a VM that cannot be built."""
    from .config import ConfigError
    from .disk_restore import restore_disks
    from .snapshot_header import config_from_header

    start = time.monotonic()
    snap = Snapshot.open(path)
    disks = None
    try:
        cfg, regions, _ = config_from_header(snap)
        if serial is not None:
            cfg.serial = serial
        cfg.api_socket = api_socket
        disks = restore_disks(path, snap, cfg, disk_mode)  # may put the disks on new overlays
        try:
            m = RestoredMachine(snap, cfg, regions, verify_memory=verify_memory, lazy=lazy)
        except (ConfigError, KvmError) as e:
            raise VmError(f"{path}: {e}") from e
    except BaseException:
        snap.close()
        if disks is not None:
            disks.discard()
        raise
    snap.close()  # the mappings keep the file
    if m.lazy is not None:
        m.lazy.watch(m)
        log.info("compressed memory comes in on demand (--lazy)")
    for note in m.notes:
        log.warning("%s", note)
    log.info("restored %s in %.1f ms (%d runs of memory mapped, %d read)", path,
             (time.monotonic() - start) * 1000, m.mapped_runs, m.read_runs)
    return m


__all__ = ["DeviceLoader", "RestoredMachine", "SavedState", "restore_machine", "SnapshotError"]
