"""Assemble a VM from a VmConfig and run it until the guest (or the user) ends it.

One Machine is one VM in this process: guest memory, KVM's in-kernel
irqchip and PIT, the legacy devices on the port bus, the firmware tables,
and one thread per vCPU running `vcpu_loop.run_vcpu`. The main thread
serves the console and signals.
"""

from __future__ import annotations

import os
import selectors
import signal
import struct
import sys
import threading
import time

from .. import kvm
from .._log import DEBUG, get_logger
from ..arch.x86 import boot_cpu, layout
from ..devices.bus import Bus, Window
from ..devices.irq import CallbackIrq
from ..kvm import structs as ks
from ..memory import GuestMemory, Region
from . import exit_status
from .config import ConfigError, VmConfig
from .console import Console
from .report import describe_vcpu
from .vcpu_loop import ExitHandler, StopFlag, run_vcpu

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..boot import BootSpec
    from ..devices.legacy.pit import Pit
    from ..devices.protocols import BusDevice
    from ..devices.pci.bus import PciBus
    from ..disk.backend import BlockBackend
    from ..kvm.dirty_ring import DirtyRing
    from .device_config import DiskConfig
    from .machine_control import VcpuGate
    from .pvm import PvmAssist
    from .virtio_setup import VirtioSetup

log = get_logger(__name__)

DIRTY_RING_ENTRIES = 4096  # per vCPU: 64 KiB; a full ring costs its vCPU one exit

MSR_IA32_MISC_ENABLE = 0x1A0
MISC_ENABLE_FAST_STRING = 1
APIC_LVT0 = 0x350
APIC_LVT1 = 0x360
APIC_MODE_EXTINT = 0x7 << 8
APIC_MODE_NMI = 0x4 << 8
KBD_IRQ = 1
COM1_IRQ = 4
SCI_IRQ = 9
_KICK = signal.SIGUSR1


class VmError(RuntimeError):
    """The VM could not be built; the message says what to change."""


def host_memory_limit() -> int:
    """RAM plus swap of the host: more guest memory than this cannot be backed."""
    total = 0
    try:
        with open("/proc/meminfo") as f:
            lines = f.read().splitlines()
        for line in lines:
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "SwapTotal"):
                total += int(rest.split()[0]) * 1024
    except OSError:
        return 1 << 62
    return total


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e


class Machine:
    _gate: VcpuGate | None = None  # made by the first pause() (machine_control.py)
    _gate_lock = threading.Lock()
    assist: PvmAssist | None = None  # the kvm_pvm layer, while run() runs
    boots_kernel = True  # False for a machine restored from a snapshot (restore.py)
    # How virtio-blk opens a disk when not with open_disk (migration/destination.py)
    _open_disk: Callable[[DiskConfig], BlockBackend] | None = None
    # KVM's dirty rings, one per vCPU, where the host has them (else the bitmap)
    dirty_rings: list[DirtyRing] = []
    # Set once the vCPU threads run (restore_request.py reports the time)
    started: threading.Event | None = None
    started_at: float | None = None

    def __init__(self, cfg: VmConfig, console: Console | None = None) -> None:
        cfg.validate(require_kernel=self.boots_kernel)
        self.cfg = cfg
        self.console = console or Console(cfg.serial, on_quit=lambda: self.stop(exit_status.POWEROFF, "quit from the console"))
        self.status: int | None = None
        self.reason = ""
        self._stop_lock = threading.Lock()
        self._flag = StopFlag()  # read by every vCPU loop iteration
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._ring_spill: list[tuple[int, int]] = []  # entries harvested by vCPUs whose dirty ring filled
        self._ring_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.vcpus: list[kvm.Vcpu] = []
        self.pio = Bus("port I/O")
        self.mmio = Bus("MMIO")
        self.backend = kvm.backend()
        from . import pvm

        self.pvm = pvm.wanted(cfg.pvm, self.backend)
        self._build()

    # --- building -----------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        # PYVIRT_KVM_DEVICE points at another KVM device node (tests use a missing one).
        self.kvm = kvm.Kvm(os.environ.get("PYVIRT_KVM_DEVICE", kvm.system.DEFAULT_PATH))
        max_vcpus = self.kvm.max_vcpus()
        if cfg.cpus > max_vcpus:
            raise ConfigError(f"{cfg.cpus} vCPUs requested but this host's KVM allows at most {max_vcpus}")
        limit = host_memory_limit()
        if cfg.memory > limit:
            raise ConfigError(
                f"{cfg.memory >> 20} MiB of guest memory requested but the host has only "
                f"{limit >> 20} MiB of RAM and swap; lower --memory"
            )
        kernel, initrd = self._read_images()

        self.vm = self.kvm.create_vm()
        ring_entries = self._enable_dirty_ring()  # before any vCPU exists
        try:
            self.vm.set_tss_addr(layout.TSS_ADDR)  # needed by Intel VMX without unrestricted guest
        except kvm.KvmError as e:
            log.debug("KVM_SET_TSS_ADDR: %s", e)
        self.vm.create_irqchip()
        self.pit: Pit | None = None
        if not self.pvm:
            self.vm.create_pit2()
            # Re-injecting missed PIT ticks makes a slow guest spend all its time in the
            # tick handler; drop them instead (QEMU's lost_tick_policy=discard).
            self.vm.set_pit_reinject(False)

        self.mem = self._map_memory(cfg.memory)
        self._add_devices()
        self.virtio: VirtioSetup | None = None
        if cfg.has_virtio:
            self._add_virtio()
        self._setup_firmware_and_kernel(kernel, initrd)
        self._create_vcpus()
        if ring_entries:
            from ..kvm.dirty_ring import DirtyRing

            self.dirty_rings = [DirtyRing.map(v, ring_entries) for v in self.vcpus]

    # --- dirty-page logging (live migration) ----------------------------------
    def _enable_dirty_ring(self) -> int:
        """Entries per vCPU ring if KVM logs dirty pages into rings here (0:
        the dirty bitmap is used). PYVIRT_DIRTY_RING=0 turns the rings off."""
        if os.environ.get("PYVIRT_DIRTY_RING", "1") == "0":
            return 0
        max_bytes = self.kvm.check_extension(kvm.ioctls.KVM_CAP_DIRTY_LOG_RING)
        if max_bytes < 16 * 64:  # none, or too small to be worth it
            return 0
        entries = min(DIRTY_RING_ENTRIES, max_bytes // 16)
        try:
            self.vm.enable_dirty_ring(entries)
        except kvm.KvmError as e:
            log.debug("dirty ring not used: %s", e)
            return 0
        return entries

    def _ring_full(self, vcpu: kvm.Vcpu) -> None:
        """KVM_EXIT_DIRTY_RING_FULL: keep what the full ring holds for the
        migration's next fetch, and free it so the vCPU can go on."""
        ring = self.dirty_rings[vcpu.index]
        taken = ring.harvest()
        with self._ring_lock:
            self._ring_spill += taken
        self.vm.reset_dirty_rings()

    def harvest_dirty_rings(self) -> list[int]:
        """Page numbers (gpa >> 12) the vCPUs dirtied since the last harvest."""
        entries: list[tuple[int, int]] = []
        for ring in self.dirty_rings:
            entries += ring.harvest()
        with self._ring_lock:
            entries += self._ring_spill
            self._ring_spill = []
        self.vm.reset_dirty_rings()
        bases = [r.gpa >> 12 for r in self.mem.regions]
        return [bases[slot] + offset for slot, offset in entries if slot < len(bases)]

    def _read_images(self) -> tuple[bytes, bytes | None]:
        cfg = self.cfg
        return _read_file(cfg.kernel, "kernel"), _read_file(cfg.initrd, "initrd") if cfg.initrd else None

    def _ram_regions(self, size: int) -> list[Region]:
        return [Region.anonymous(r.gpa, r.size) for r in layout.ram_ranges(size)]

    def _map_memory(self, size: int) -> GuestMemory:
        regions = self._ram_regions(size)
        for slot, r in enumerate(regions):
            self.vm.set_user_memory_region(slot, r.gpa, r.size, r.host_address())
        return GuestMemory(regions)

    def _add_devices(self) -> None:
        from ..devices.legacy import AcpiPm, DebugExit, FwCfg, I8042, PciConfigPorts, PostCode, Rtc, Serial

        irq_line = self.vm.irq_line
        reset = lambda: self.stop(exit_status.RESET, "the guest requested a reset")  # noqa: E731
        self.serial = Serial(CallbackIrq(COM1_IRQ, irq_line), self.console.write)
        self.console.receive = self.serial.receive
        e820 = b"".join(struct.pack("<QQI", e.addr, e.size, e.type) for e in layout.e820_map(self.cfg.memory))
        self.fw_cfg = FwCfg.for_vm(ncpus=self.cfg.cpus, ram_size=self.cfg.memory,
                                   cmdline=self.cfg.cmdline.encode(), e820=e820)
        self.rtc = Rtc()
        kbd = I8042(on_reset=reset, irq=CallbackIrq(KBD_IRQ, irq_line))
        devices: list[tuple[int, int, BusDevice, str]] = [
            (0x3F8, 8, self.serial, "COM1"),
            (0x60, 1, kbd, "i8042 data"),
            (0x64, 1, Window(kbd, 4), "i8042 command/status"),
            (0x70, 2, self.rtc, "CMOS RTC"),
            (0x80, 1, PostCode(), "POST"),
            (self.cfg.debug_exit_port, 1, DebugExit(on_exit=self._debug_exit), "debug-exit"),
            (0x510, 2, self.fw_cfg, "fw_cfg"),
            (0x600, 12, AcpiPm(on_poweroff=lambda: self.stop(exit_status.POWEROFF, "the guest powered off (ACPI S5)"),
                               on_reset=reset, sci=CallbackIrq(SCI_IRQ, irq_line)), "ACPI PM"),
        ]
        self.pci: PciBus | None = None
        if self.cfg.has_virtio and self.cfg.transport == "pci":
            from ..devices.pci.bus import PciBus

            # The VMM plays firmware: BARs are assigned before the guest starts.
            self.pci = PciBus(self.mmio, on_bar_change=self._bar_changed)
            devices.append((0xCF8, 8, self.pci.config_ports(on_reset=reset), "PCI config"))
            self.mmio.register(layout.PCI_ECAM_BASE, layout.PCI_ECAM_SIZE, self.pci.ecam(), "PCI ECAM")
        else:
            devices.append((0xCF8, 8, PciConfigPorts(on_reset=reset), "PCI config"))
        if self.pvm:
            # Each emulated timer interrupt costs the guest ~10 ms here: a user-space
            # PIT delivers IRQ 0 at a capped rate (docs/pvm.md).
            from ..devices.legacy.pit import Pit
            from .pvm import PIT_MIN_PERIOD

            vm = self.vm

            def irq0_edge() -> None:
                vm.irq_line(0, 1)
                vm.irq_line(0, 0)

            pit = self.pit = Pit(irq0_edge, min_period=PIT_MIN_PERIOD)
            devices += [(0x40, 4, pit, "PIT"), (0x61, 1, pit.speaker, "PIT speaker gate")]
        for base, length, dev, name in devices:
            self.pio.register(base, length, dev, name)
        self.rtc.set_memory_size(self.cfg.memory)  # CMOS memory-size bytes, as firmware reports them

    def _add_virtio(self) -> None:
        from ..devices.pci.bus import PciBus
        from .virtio_setup import VirtioSetup

        pci = self.pci if self.pci is not None else PciBus()  # a bus nobody reaches, for mmio-only VMs
        self.virtio = VirtioSetup(self.cfg, self.vm, self.mem, self.mmio, pci, self.console.write)
        self.virtio.open_disk = self._open_disk
        self.virtio.build()
        con = self.virtio.console_device
        if con is not None:
            self.console.receive = con.input  # type: ignore[attr-defined]

    def _bar_changed(self, device: object, bar: int, old: int | None, new: int | None) -> None:
        if self.virtio is not None:
            self.virtio.on_bar_change(device, bar, old, new)  # type: ignore[arg-type]

    def _debug_exit(self, value: int) -> None:
        self.stop(exit_status.debug_exit(value), f"the guest wrote {value:#x} to the debug-exit port")

    def _setup_firmware_and_kernel(self, kernel: bytes, initrd: bytes | None) -> None:
        from ..arch.x86.acpi import build_acpi
        from ..arch.x86.mptable import build_mptable, mptable_size
        from ..boot import BootError, load_kernel

        boot_cpu.write_gdt(self.mem)
        boot_cpu.write_page_tables(self.mem)
        if layout.MPTABLE + mptable_size(self.cfg.cpus) <= layout.LOW_RAM_END:
            build_mptable(self.mem, self.cfg.cpus)
        else:  # the EBDA has room for about 40 vCPUs; bigger guests find them in ACPI
            log.info("%d vCPUs do not fit in an MP table; announcing them through ACPI only", self.cfg.cpus)
        if self.virtio is None:
            self.rsdp = build_acpi(self.mem, self.cfg.cpus)
        else:
            from ..arch.x86.acpi import PciRoot

            self.rsdp = build_acpi(self.mem, self.cfg.cpus,
                                   pci=PciRoot(irqs=self.virtio.pci_irqs) if self.pci is not None else None,
                                   mmio_devices=self.virtio.mmio_slots)
        is_linux = kernel[0x202:0x206] == b"HdrS"
        cmdline = self.cfg.cmdline
        if is_linux and self.virtio is not None and self.virtio.mmio_slots and "acpi=off" in cmdline.split():
            # Without ACPI, Linux (built with VIRTIO_MMIO_CMDLINE_DEVICES) finds
            # virtio-mmio devices on its command line instead of in the DSDT.
            cmdline = " ".join([cmdline, *self.virtio.cmdline_params()]).strip()
        try:
            boot: BootSpec | None = None
            if self.pvm and is_linux:
                from ..boot.direct import load_bzimage_direct
                from ..boot.payload import vmlinux_of

                # Emulated, the kernel's own decompressor takes minutes: decompress here,
                # when the bzImage has a payload that is a kernel (test images may not).
                try:
                    vmlinux = vmlinux_of(kernel)
                except BootError as e:
                    log.info("not booting %s directly (%s); using its own entry", self.cfg.kernel, e)
                else:
                    from .pvm import kernel_cmdline

                    boot = load_bzimage_direct(self.mem, kernel, mem_size=self.cfg.memory,
                                                    cmdline=kernel_cmdline(cmdline), initrd=initrd,
                                                    rsdp_addr=self.rsdp, vmlinux=vmlinux)
            if boot is None:
                boot = load_kernel(self.mem, kernel, mem_size=self.cfg.memory, cmdline=cmdline,
                                        initrd=initrd, rsdp_addr=self.rsdp,
                                        kernel_name=self.cfg.kernel, initrd_name=self.cfg.initrd or "initrd")
        except BootError as e:
            raise VmError(f"{self.cfg.kernel}: {e}") from e
        self.boot: BootSpec = boot
        log.info("loaded %s kernel, entry %#x (%s)", self.boot.protocol, self.boot.entry, self.boot.mode)

    def _create_vcpus(self) -> None:
        from ..arch.x86.cpuid import CpuidEntry, build_cpuid

        supported = [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                     for e in self.kvm.supported_cpuid()]
        for i in range(self.cfg.cpus):
            vcpu = self.vm.create_vcpu(i)
            table = build_cpuid(supported, vcpu_index=i, ncpus=self.cfg.cpus)
            vcpu.set_cpuid2(ks.kvm_cpuid_entry2(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                            for e in table)
            try:
                vcpu.set_msrs({MSR_IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING})
            except kvm.KvmError:
                pass
            fpu = ks.kvm_fpu()
            fpu.fcw = 0x37F
            fpu.mxcsr = 0x1F80
            vcpu.set_fpu(fpu)
            self._setup_lapic(vcpu)
            self.vcpus.append(vcpu)
        bsp = self.vcpus[0]
        sregs = bsp.get_sregs()
        boot_cpu.setup_sregs(sregs, self.boot.mode)
        bsp.set_sregs(sregs)
        regs = ks.kvm_regs()
        boot_cpu.setup_regs(regs, self.boot.entry, self.boot.regs)
        bsp.set_regs(regs)

    @staticmethod
    def _setup_lapic(vcpu: kvm.Vcpu) -> None:
        """Virtual-wire mode, as firmware leaves it: LINT0 takes the PIC's ExtINT,
        LINT1 takes NMI. Guests that use the PIC directly need this."""
        regs = bytearray(vcpu.get_lapic())

        def setreg(off: int, mode: int) -> None:
            v = struct.unpack_from("<I", regs, off)[0]
            v = (v & ~0x10700 & 0xFFFFFFFF) | mode  # unmask, set delivery mode
            struct.pack_into("<I", regs, off, v)

        setreg(APIC_LVT0, APIC_MODE_EXTINT)
        setreg(APIC_LVT1, APIC_MODE_NMI)
        vcpu.set_lapic(bytes(regs))

    # --- running ------------------------------------------------------------
    def stop(self, status: int, reason: str, vcpu_index: int | None = None) -> None:
        """End the VM (first caller wins); safe from any thread or signal handler."""
        with self._stop_lock:
            if self._flag.stopping:
                return
            self._flag.stopping = True
            self.status = status
            self.reason = reason
        if vcpu_index is not None and 0 <= vcpu_index < len(self.vcpus):
            sys.stderr.write(f"pyvirt: {reason}\n{describe_vcpu(self.vcpus[vcpu_index], self.mem)}\n")
        me = threading.get_ident()
        for vcpu, t in zip(self.vcpus, self.threads):
            vcpu.set_immediate_exit(True)
            if t.ident is not None and t.ident != me and t.is_alive():
                try:
                    signal.pthread_kill(t.ident, _KICK)
                except (ProcessLookupError, OSError):
                    pass
        os.eventfd_write(self._wake, 1)

    def run(self) -> int:
        """Run until the VM ends; returns the exit status."""
        assist = self.assist = self._pvm_assist() if self.pvm else None
        handler = ExitHandler(self.pio, self.mmio, self.stop, assist=assist)
        if assist is not None:
            handler.tick = assist.tick
        handler.tick = self._interrupt_hook(handler.tick)
        if self.dirty_rings:
            handler.dirty_ring_full = self._ring_full
        api = None
        if self.cfg.api_socket:
            from .machine_control import start_api

            api = start_api(self)  # before the guest runs: a taken socket path fails the start
        old_handlers = {}
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(_KICK, lambda *_: None)  # only needs to interrupt KVM_RUN
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(
                    sig, lambda s, _f: self.stop(exit_status.POWEROFF, f"stopped by {signal.Signals(s).name}"))
        self.console.start()
        try:
            for vcpu in self.vcpus:
                t = threading.Thread(target=self._vcpu_main, args=(vcpu, handler), name=f"vcpu{vcpu.index}", daemon=True)
                self.threads.append(t)
            for t in self.threads:
                t.start()
            self.started_at = time.monotonic()
            if self.started is not None:
                self.started.set()
            if assist is not None:
                threading.Thread(target=self._pvm_watch, args=(assist,), name="pvm-watch", daemon=True).start()
            if self.virtio is not None:
                self.virtio.start()
            if self.pit is not None:
                threading.Thread(target=self.pit.run, args=(lambda: self._flag.stopping,), name="pit",
                                 daemon=True).start()
            self._serve()
        finally:
            # Whatever ended the main loop, no vCPU may outlive run(): close()
            # releases the fds and memory they use.
            self.stop(exit_status.ERROR, "the VMM's main loop ended unexpectedly")
            if api is not None:
                api.close()
            if self._gate is not None:
                self._gate.wake()  # parked vCPUs see the stop and end
            for t in self.threads:
                t.join(timeout=10)
            self.console.close()
            if in_main:
                for sig, h in old_handlers.items():
                    signal.signal(sig, h)
        if self.reason and not self.reason.startswith("the guest wrote"):
            log.info("%s", self.reason)
        return self.status if self.status is not None else exit_status.ERROR

    def _pvm_assist(self) -> PvmAssist:
        from .pvm import PvmAssist

        return PvmAssist(self.mem, on_halt=lambda: self.stop(
            exit_status.POWEROFF, "the guest halted with interrupts off (e.g. poweroff without ACPI)"))

    # --- pause, resume, control API (the logic is in machine_control.py) ----------
    def pause(self, timeout: float = 5.0) -> None:
        """Stop running guest code: every vCPU thread leaves KVM_RUN and waits.
        Returns once all have; TimeoutError (and the VM runs on) if one has
        not after `timeout` seconds, ControlError if the VM stops meanwhile."""
        with self._gate_lock:
            gate = self._gate
            if gate is None:
                from .machine_control import VcpuGate

                gate = self._gate = VcpuGate(self)
        gate.pause(timeout)

    def resume(self) -> None:
        """Run guest code again after pause()."""
        if self._gate is not None:
            self._gate.resume()

    @property
    def paused(self) -> bool:
        return self._gate is not None and self._gate.paused

    def _interrupt_hook(self, tick: Callable[[kvm.Vcpu], None] | None) -> Callable[[kvm.Vcpu], None]:
        """The vCPU loop's hook for a KVM_RUN that a signal interrupted: `tick`
        (the PVM layer's), then park the vCPU if the VM is paused. Kicks are
        rare, so this costs the run loop nothing."""

        def interrupted(vcpu: kvm.Vcpu) -> None:
            if tick is not None:
                tick(vcpu)
            gate = self._gate
            if gate is not None:
                gate.park(vcpu)

        return interrupted

    def _pvm_watch(self, assist: PvmAssist, period: float = 1.0) -> None:
        """Once a second, interrupt the boot vCPU so the PVM layer can look at
        guest state (its SYSCALL fix-up waits for the kernel's IDT and LSTAR)."""
        t = self.threads[0]
        while not self._flag.stopping:
            time.sleep(period)
            assist.due = True
            if self.pit is not None and log.isEnabledFor(DEBUG):
                ch = self.pit.channels[0]
                log.debug("PIT: %d interrupts; channel 0 mode %d count %d armed %s",
                          self.pit.interrupts, ch.mode, ch.reload, ch.armed)
            if t.ident is not None and t.is_alive() and not self._flag.stopping:
                try:
                    signal.pthread_kill(t.ident, _KICK)
                except (ProcessLookupError, OSError):
                    return

    def _vcpu_main(self, vcpu: kvm.Vcpu, handler: ExitHandler) -> None:
        try:
            run_vcpu(vcpu, handler, self._flag)
        except Exception as e:  # a KVM_RUN failure: report, end the VM
            log.debug("vCPU %d failed", vcpu.index, exc_info=True)
            self.stop(exit_status.UNHANDLED_EXIT, f"vCPU {vcpu.index}: {e}", vcpu.index)

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake, selectors.EVENT_READ)
        registered: set[int] = set()
        generation = self.console.generation
        while not self._flag.stopping:
            want = set(self.console.readable_fds())
            if self.console.generation != generation:
                # The client changed: its fd number may be the old one's.
                generation = self.console.generation
                for fd in registered:
                    sel.unregister(fd)
                registered = set()
            for fd in registered - want:
                sel.unregister(fd)
            for fd in want - registered:
                try:
                    sel.register(fd, selectors.EVENT_READ)
                except PermissionError:
                    # A regular file or /dev/null can't be polled: it is always
                    # readable, so hand over what it holds now.
                    self.console.drain(fd)
                    want.discard(fd)
            registered = want
            for key, _ in sel.select():
                if key.fd == self._wake:
                    continue
                self.console.on_readable(key.fd)
                if self.console.generation != generation:
                    break  # the rest of these events may be for the replaced client's fd number
        sel.close()

    def close(self) -> None:
        if self.virtio is not None:
            self.virtio.close()
        for ring in self.dirty_rings:
            ring.close()
        for vcpu in self.vcpus:
            vcpu.close()
        self.vm.close()
        self.kvm.close()
        for r in self.mem.regions:
            r.view.release()
            if hasattr(r.buf, "close"):
                r.buf.close()
        os.close(self._wake)
