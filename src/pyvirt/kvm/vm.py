"""A KVM virtual machine handle: memory slots, irqchip, PIT, irqfd, ioeventfd, clock."""

from __future__ import annotations

import ctypes
import os

from . import ioctls as k
from . import structs as s
from ._ioctl import ioctl

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .system import Kvm
    from .vcpu import Vcpu


class Vm:
    def __init__(self, kvm: "Kvm", fd: int) -> None:
        self.kvm = kvm
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def check_extension(self, cap: int) -> int:
        try:
            return ioctl(self.fd, k.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")
        except Exception:
            return self.kvm.check_extension(cap)

    def set_user_memory_region(self, slot: int, gpa: int, size: int, host_addr: int, flags: int = 0) -> None:
        r = s.kvm_userspace_memory_region(slot, flags, gpa, size, host_addr)
        ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, r, "KVM_SET_USER_MEMORY_REGION",
              f"slot {slot} at {gpa:#x}+{size:#x}")

    def set_tss_addr(self, addr: int) -> None:
        ioctl(self.fd, k.KVM_SET_TSS_ADDR, addr, "KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, addr: int) -> None:
        ioctl(self.fd, k.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr), "KVM_SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self) -> None:
        ioctl(self.fd, k.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def create_pit2(self, speaker_dummy: bool = True) -> None:
        cfg = s.kvm_pit_config(flags=k.KVM_PIT_SPEAKER_DUMMY if speaker_dummy else 0)
        ioctl(self.fd, k.KVM_CREATE_PIT2, cfg, "KVM_CREATE_PIT2")

    def enable_dirty_ring(self, entries: int) -> None:
        """Log dirty pages into a ring of `entries` per vCPU (a power of two)
        instead of a bitmap; before any vCPU is created (KVM_CAP_DIRTY_LOG_RING)."""
        from .structs_extra import kvm_enable_cap

        cap = kvm_enable_cap(cap=k.KVM_CAP_DIRTY_LOG_RING)
        cap.args[0] = entries * 16  # bytes: struct kvm_dirty_gfn is 16
        ioctl(self.fd, k.KVM_ENABLE_CAP, cap, "KVM_ENABLE_CAP(DIRTY_LOG_RING)")

    def reset_dirty_rings(self) -> int:
        """Re-protect the pages harvested from the rings and free their entries."""
        return ioctl(self.fd, k.KVM_RESET_DIRTY_RINGS, 0, "KVM_RESET_DIRTY_RINGS")

    def set_pit_reinject(self, on: bool) -> None:
        ctl = s.kvm_reinject_control(pit_reinject=1 if on else 0)
        ioctl(self.fd, k.KVM_REINJECT_CONTROL, ctypes.addressof(ctl), "KVM_REINJECT_CONTROL")

    def irq_line(self, irq: int, level: int) -> None:
        ioctl(self.fd, k.KVM_IRQ_LINE, s.kvm_irq_level(irq, level), "KVM_IRQ_LINE")

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        req = s.kvm_irqfd(fd=fd, gsi=gsi, flags=s.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0)
        ioctl(self.fd, k.KVM_IRQFD, req, "KVM_IRQFD")

    def ioeventfd(self, fd: int, addr: int, length: int, pio: bool,
                  datamatch: int | None = None, deassign: bool = False) -> None:
        flags = (s.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (s.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        if datamatch is not None:
            flags |= s.KVM_IOEVENTFD_FLAG_DATAMATCH
        req = s.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=flags)
        ioctl(self.fd, k.KVM_IOEVENTFD, req, "KVM_IOEVENTFD")

    def signal_msi(self, address: int, data: int) -> int:
        msi = s.kvm_msi(address_lo=address & 0xFFFFFFFF, address_hi=address >> 32, data=data)
        return ioctl(self.fd, k.KVM_SIGNAL_MSI, msi, "KVM_SIGNAL_MSI")

    def get_irqchip(self, chip_id: int) -> bytes:
        chip = s.kvm_irqchip(chip_id=chip_id)
        ioctl(self.fd, k.KVM_GET_IRQCHIP, chip, "KVM_GET_IRQCHIP")
        return bytes(chip.chip)

    def set_irqchip(self, chip_id: int, data: bytes) -> None:
        chip = s.kvm_irqchip(chip_id=chip_id)
        ctypes.memmove(chip.chip, data, min(len(data), 512))
        ioctl(self.fd, k.KVM_SET_IRQCHIP, chip, "KVM_SET_IRQCHIP")

    def get_pit2(self) -> bytes:
        st = s.kvm_pit_state2()
        ioctl(self.fd, k.KVM_GET_PIT2, st, "KVM_GET_PIT2")
        return bytes(st)

    def set_pit2(self, data: bytes) -> None:
        st = s.kvm_pit_state2.from_buffer_copy(data)
        ioctl(self.fd, k.KVM_SET_PIT2, st, "KVM_SET_PIT2")

    def get_clock(self) -> s.kvm_clock_data:
        c = s.kvm_clock_data()
        ioctl(self.fd, k.KVM_GET_CLOCK, c, "KVM_GET_CLOCK")
        return c

    def set_clock(self, clock: int) -> None:
        """Set the VM's kvmclock to `clock` nanoseconds (KVM_SET_CLOCK)."""
        ioctl(self.fd, k.KVM_SET_CLOCK, s.kvm_clock_data(clock=clock), "KVM_SET_CLOCK")

    def get_dirty_log(self, slot: int, npages: int) -> bytearray:
        """Dirty-page bitmap of a slot (one bit per 4 KiB page), cleared by the read."""
        nbytes = ((npages + 63) // 64) * 8
        buf = (ctypes.c_uint8 * nbytes)()
        req = s.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(buf))
        ioctl(self.fd, k.KVM_GET_DIRTY_LOG, req, "KVM_GET_DIRTY_LOG")
        return bytearray(buf)

    def create_vcpu(self, index: int) -> "Vcpu":
        from .vcpu import Vcpu

        fd = ioctl(self.fd, k.KVM_CREATE_VCPU, index, "KVM_CREATE_VCPU")
        return Vcpu(self, fd, index)
