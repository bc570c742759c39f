"""Build a VM's virtio devices from its configuration and wire them to KVM.

For each device: the device model, its transport (virtio-pci on PCI bus 0,
or a virtio-mmio slot), an eventfd per queue that KVM signals directly when
the guest writes the queue's notify address (ioeventfd), and the I/O thread
that runs the device when one fires. Interrupts go through KVM_IRQ_LINE
(INTx, virtio-mmio) or KVM_SIGNAL_MSI (MSI-X).

Linux finds virtio-mmio devices in the ACPI DSDT, or, when booted with
`acpi=off`, on its command line (`virtio_mmio.device=`); `cmdline_params`
holds those parameters.
"""

from __future__ import annotations

import os

from .._log import get_logger
from ..arch.x86 import layout
from ..devices.irq import CallbackIrq
from .config import ConfigError
from .iothread import IoThread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..devices.bus import Bus
    from ..devices.pci.bus import PciBus
    from ..devices.pci.device import PciDevice
    from ..devices.virtio.device import VirtioDevice
    from ..devices.virtio.pci import VirtioPci
    from ..disk.backend import BlockBackend
    from ..kvm.vm import Vm
    from ..memory.guest import GuestMemory
    from .config import VmConfig
    from .device_config import DiskConfig, NetConfig

log = get_logger(__name__)

MMIO_NOTIFY = 0x50  # virtio-mmio QueueNotify register
MMIO_SIZE = 0x200


class VirtioSetup:
    def __init__(self, cfg: VmConfig, vm: Vm, mem: GuestMemory, mmio_bus: Bus, pci: PciBus,
                 console_write: Callable[[bytes], None]) -> None:
        self.cfg = cfg
        self.vm = vm
        self.mem = mem
        self.mmio_bus = mmio_bus
        self.pci = pci
        self.console_write = console_write
        self.iothread = IoThread()
        # How a disk is opened, when not with open_disk (a migration
        # destination opens its disks only at switchover).
        self.open_disk: Callable[[DiskConfig], BlockBackend] | None = None
        self.devices: list[VirtioDevice] = []
        self.transports: list[object] = []
        self.mmio_slots: list[tuple[int, int, int]] = []  # (base, size, gsi), for ACPI and the command line
        self.pci_irqs: dict[int, int] = {}  # PCI slot -> GSI of INTA, for ACPI
        self.console_device: object | None = None
        self.balloon: object | None = None
        self._irqs = list(layout.DEVICE_IRQS)
        self._eventfds: list[int] = []
        # ioeventfds bound per PCI transport: (transport id) -> [(fd, address)]
        self._pci_notify: dict[int, list[tuple[int, int]]] = {}

    # --- building -------------------------------------------------------------
    def build(self) -> None:
        for dev in self._make_devices():
            self.add(dev)

    def _make_devices(self) -> list[VirtioDevice]:
        cfg = self.cfg
        devices: list[VirtioDevice] = []
        if cfg.console == "virtio":
            from ..devices.virtio.console import VirtioConsole

            self.console_device = con = VirtioConsole(self.console_write)
            devices.append(con)
        for i, d in enumerate(cfg.disks):
            devices.append(self._make_disk(d, i))
        for i, n in enumerate(cfg.nets):
            devices.append(self._make_net(n, i))
        if cfg.vsock is not None:
            from ..devices.virtio.vsock import VirtioVsock

            devices.append(VirtioVsock(cfg.vsock.cid, cfg.vsock.socket))
        if cfg.rng:
            from ..devices.virtio.rng import VirtioRng

            devices.append(VirtioRng())
        if cfg.balloon:
            from ..devices.virtio.balloon import VirtioBalloon

            self.balloon = bal = VirtioBalloon(self.mem.discard)
            devices.append(bal)
        return devices

    def _make_disk(self, d: DiskConfig, index: int) -> VirtioDevice:
        from ..devices.virtio.blk import VirtioBlk
        from ..disk import DiskError, open_disk

        try:
            if self.open_disk is not None:
                backend = self.open_disk(d)
            else:
                backend = open_disk(d.path, readonly=d.readonly, serial=d.serial or None,
                                    format=d.format or None)
        except DiskError as e:
            raise ConfigError(f"--disk: {e}") from e
        limiter = None
        if d.iops or d.bps:
            from ..disk.ratelimit import RateLimiter, TokenBucket

            limiter = RateLimiter(bandwidth=TokenBucket(d.bps) if d.bps else None,
                                  ops=TokenBucket(d.iops) if d.iops else None)
        return VirtioBlk(backend, rate_limiter=limiter)

    def _make_net(self, n: NetConfig, index: int) -> VirtioDevice:
        from ..devices.virtio.net import TapBackend, VirtioNet
        from ..net.tap import TapError, open_tap
        from .device_config import default_mac, parse_mac

        try:
            tap = open_tap(n.tap)
        except TapError as e:
            raise ConfigError(f"--net tap={n.tap}: {e}") from e
        mac = parse_mac(n.mac or default_mac(index))
        return VirtioNet(TapBackend(tap), mac=mac)

    def add(self, dev: VirtioDevice) -> None:
        efds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(dev.num_queues)]
        self._eventfds += efds

        def kick(index: int) -> None:
            if 0 <= index < len(efds):
                os.eventfd_write(efds[index], 1)

        if not self._irqs:
            raise ConfigError(f"too many virtio devices: no free IRQ left for virtio-{dev.name} "
                              f"(at most {len(layout.DEVICE_IRQS)})")
        gsi = self._irqs.pop(0)
        irq = CallbackIrq(gsi, self.vm.irq_line)
        if self.cfg.transport == "mmio":
            self._add_mmio(dev, irq, kick, efds)
        else:
            self._add_pci(dev, irq, kick, efds)
        for i, fd in enumerate(efds):
            self.iothread.add_eventfd(fd, self._notifier(dev, i))
        self.iothread.add_device(dev)
        self.devices.append(dev)

    def _notifier(self, dev: VirtioDevice, queue: int) -> Callable[[], None]:
        def notify() -> None:
            dev.queue_notify(queue)
            self.iothread.after_notify(dev)

        return notify

    def _add_mmio(self, dev: VirtioDevice, irq: CallbackIrq, kick: Callable[[int], None], efds: list[int]) -> None:
        from ..devices.virtio.mmio import VirtioMmio

        slot = len(self.mmio_slots)
        if slot >= layout.VIRTIO_MMIO_SLOTS:
            raise ConfigError(f"too many virtio-mmio devices (at most {layout.VIRTIO_MMIO_SLOTS})")
        base = layout.VIRTIO_MMIO_BASE + slot * layout.VIRTIO_MMIO_STRIDE
        t = VirtioMmio(dev, self.mem, irq, kick)
        self.mmio_bus.register(base, MMIO_SIZE, t, f"virtio-mmio {dev.name}")
        for i, fd in enumerate(efds):
            self._ioeventfd(fd, base + MMIO_NOTIFY, datamatch=i)
        self.mmio_slots.append((base, layout.VIRTIO_MMIO_STRIDE, irq.gsi))
        self.transports.append(t)

    def _add_pci(self, dev: VirtioDevice, irq: CallbackIrq, kick: Callable[[int], None], efds: list[int]) -> None:
        from ..devices.virtio.pci import VirtioPci

        vm = self.vm

        def send_msi(address: int, data: int) -> None:
            vm.signal_msi(address, data)

        t = VirtioPci(dev, self.mem, kick, send_msi, irq)
        slot = self.pci.add(t, irq=irq.gsi)
        self.pci_irqs[slot] = irq.gsi
        self._pci_notify[id(t)] = []
        self._bind_pci_notify(t, efds)
        self.transports.append(t)

    def _bind_pci_notify(self, t: VirtioPci, efds: list[int] | None = None) -> None:
        """(Re)bind the queue notify addresses of a virtio-pci device to its
        eventfds, at wherever BAR 0 is now (the guest may move it)."""
        from ..devices.virtio.pci import BAR

        bound = self._pci_notify.get(id(t))
        if bound is None:
            return
        fds = efds if efds is not None else [fd for fd, _ in bound]
        for fd, addr in bound:
            self._ioeventfd(fd, addr, deassign=True)
        bound.clear()
        base = t.mapped_bars().get(BAR)
        for i, fd in enumerate(fds):
            if base is not None:
                addr = base + t.notify_address(i)
                if self._ioeventfd(fd, addr):
                    bound.append((fd, addr))
                    continue
            bound.append((fd, -1))

    def on_bar_change(self, device: PciDevice, bar: int, old: int | None, new: int | None) -> None:
        """PciBus callback: a BAR moved; move the ioeventfds hanging off it."""
        from ..devices.virtio.pci import VirtioPci

        if isinstance(device, VirtioPci) and id(device) in self._pci_notify:
            self._bind_pci_notify(device)

    def _ioeventfd(self, fd: int, addr: int, datamatch: int | None = None, deassign: bool = False) -> bool:
        if addr < 0:
            return False
        from ..kvm import KvmError

        try:
            self.vm.ioeventfd(fd, addr, 4 if datamatch is not None else 0, pio=False,
                              datamatch=datamatch, deassign=deassign)
            return True
        except KvmError as e:
            # Without it every notification exits to the vCPU loop, which
            # signals the same eventfd: slower, not wrong.
            log.debug("KVM_IOEVENTFD at %#x: %s", addr, e)
            return False

    # --- what the firmware and the kernel are told ---------------------------
    def cmdline_params(self) -> list[str]:
        from ..devices.virtio.mmio import VirtioMmio

        return [VirtioMmio.cmdline_param(base, gsi, size) for base, size, gsi in self.mmio_slots]

    # --- running ----------------------------------------------------------------
    def start(self) -> None:
        if self.devices:
            self.iothread.start()

    def kick_all(self) -> None:
        """Signal every queue's eventfd, as if the driver had notified each
        (a device with nothing new available does nothing). A restored VM
        does this once: notifications pending when it was saved were lost
        with the old process's eventfds."""
        for fd in self._eventfds:
            os.eventfd_write(fd, 1)

    def close(self) -> None:
        self.iothread.close()
        for dev in self.devices:
            try:
                dev.close()
            except OSError as e:
                log.warning("closing virtio-%s: %s", dev.name, e)
        for fd in self._eventfds:
            os.close(fd)
        self._eventfds.clear()
