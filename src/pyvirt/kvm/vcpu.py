"""A KVM vCPU handle: KVM_RUN, the shared run page, and register state."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

from . import exits
from . import ioctls as k
from . import structs as s
from ._ioctl import ioctl
from .errors import KvmError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .vm import Vm

import fcntl

_KVM_RUN = k.KVM_RUN
_INTR = exits.Interrupted()
_ioctl_fast = fcntl.ioctl
_REASON = struct.Struct("<I").unpack_from
_IO = struct.Struct("<BBHIQ").unpack_from


class Vcpu:
    def __init__(self, vm: "Vm", fd: int, index: int) -> None:
        self.vm = vm
        self.fd = fd
        self.index = index
        size = vm.kvm.vcpu_mmap_size()
        self.run_page = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def close(self) -> None:
        self.run_page.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --- running -----------------------------------------------------------
    def run(self) -> exits.Exit:
        """Enter the guest until the next exit, decoded; the GIL is released meanwhile."""
        if self.run_reason() == exits.EXIT_INTR:
            return _INTR  # after EINTR the page still holds the previous exit
        return exits.decode(self.run_page)

    def run_reason(self) -> int:
        """KVM_RUN returning just the exit reason: the vCPU loop's fast path.

        EINTR/EAGAIN come back as EXIT_INTR. Use `io_exit()` or
        `exits.decode(self.run_page)` to read the details.
        """
        try:
            _ioctl_fast(self.fd, _KVM_RUN, 0)
        except OSError as e:
            if e.errno in (errno.EINTR, errno.EAGAIN):
                return exits.EXIT_INTR
            raise KvmError("KVM_RUN", e.errno or errno.EIO) from e
        return _REASON(self.run_page, exits.RUN_EXIT_REASON)[0]

    def io_exit(self) -> tuple[int, int, int, int, int]:
        """(direction, size, port, count, data_offset) of the current KVM_EXIT_IO."""
        return _IO(self.run_page, exits.RUN_UNION)

    def set_immediate_exit(self, on: bool) -> None:
        """kvm_run.immediate_exit: make the next KVM_RUN return EINTR at once."""
        self.run_page[1] = 1 if on else 0

    def complete_io_in(self, exit: exits.IoIn, data: bytes) -> None:
        off = exit.data_offset
        self.run_page[off : off + len(data)] = data

    def complete_mmio_read(self, data: bytes) -> None:
        off = exits.RUN_UNION + 8
        self.run_page[off : off + len(data)] = data

    # --- registers ---------------------------------------------------------
    def get_regs(self) -> s.kvm_regs:
        r = s.kvm_regs()
        ioctl(self.fd, k.KVM_GET_REGS, r, "KVM_GET_REGS")
        return r

    def set_regs(self, r: s.kvm_regs) -> None:
        ioctl(self.fd, k.KVM_SET_REGS, r, "KVM_SET_REGS")

    def get_sregs(self) -> s.kvm_sregs:
        r = s.kvm_sregs()
        ioctl(self.fd, k.KVM_GET_SREGS, r, "KVM_GET_SREGS")
        return r

    def set_sregs(self, r: s.kvm_sregs) -> None:
        ioctl(self.fd, k.KVM_SET_SREGS, r, "KVM_SET_SREGS")

    def get_fpu(self) -> s.kvm_fpu:
        r = s.kvm_fpu()
        ioctl(self.fd, k.KVM_GET_FPU, r, "KVM_GET_FPU")
        return r

    def set_fpu(self, r: s.kvm_fpu) -> None:
        ioctl(self.fd, k.KVM_SET_FPU, r, "KVM_SET_FPU")

    def set_cpuid2(self, entries: Iterable[s.kvm_cpuid_entry2]) -> None:
        entries = list(entries)
        buf = s.kvm_cpuid2_buf()
        buf.nent = len(entries)
        for i, e in enumerate(entries):
            buf.entries[i] = e
        ioctl(self.fd, k.KVM_SET_CPUID2, buf, "KVM_SET_CPUID2")

    def get_cpuid2(self) -> list[s.kvm_cpuid_entry2]:
        """The CPUID table KVM_SET_CPUID2 gave this vCPU."""
        buf = s.kvm_cpuid2_buf()
        buf.nent = s.MAX_CPUID_ENTRIES
        ioctl(self.fd, k.KVM_GET_CPUID2, buf, "KVM_GET_CPUID2")
        out = []
        for e in buf.entries[: buf.nent]:
            c = s.kvm_cpuid_entry2()
            ctypes.memmove(ctypes.addressof(c), ctypes.addressof(e), ctypes.sizeof(c))
            out.append(c)
        return out

    def get_tsc_khz(self) -> int:
        """The guest's TSC frequency in kHz (KVM_GET_TSC_KHZ)."""
        return ioctl(self.fd, k.KVM_GET_TSC_KHZ, 0, "KVM_GET_TSC_KHZ")

    def set_tsc_khz(self, khz: int) -> None:
        """Scale the guest's TSC to `khz` (needs KVM_CAP_TSC_CONTROL)."""
        ioctl(self.fd, k.KVM_SET_TSC_KHZ, khz, "KVM_SET_TSC_KHZ")

    def kvmclock_ctrl(self) -> None:
        """Tell a kvmclock guest it was stopped (KVM_KVMCLOCK_CTRL): its soft
        lockup watchdog then does not fire for the time it was stopped."""
        ioctl(self.fd, k.KVM_KVMCLOCK_CTRL, 0, "KVM_KVMCLOCK_CTRL")

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        m = s.kvm_msrs(len(indices))
        for i, idx in enumerate(indices):
            m.entries[i].index = idx
        n = ioctl(self.fd, k.KVM_GET_MSRS, m, "KVM_GET_MSRS")
        return {m.entries[i].index: m.entries[i].data for i in range(n)}

    def set_msrs(self, values: dict[int, int]) -> int:
        m = s.kvm_msrs(len(values))
        for i, (idx, val) in enumerate(values.items()):
            m.entries[i].index = idx
            m.entries[i].data = val
        return ioctl(self.fd, k.KVM_SET_MSRS, m, "KVM_SET_MSRS")

    def get_lapic(self) -> bytes:
        st = s.kvm_lapic_state()
        ioctl(self.fd, k.KVM_GET_LAPIC, st, "KVM_GET_LAPIC")
        return bytes(st.regs)

    def set_lapic(self, regs: bytes) -> None:
        st = s.kvm_lapic_state()
        ctypes.memmove(st.regs, regs, min(len(regs), 1024))
        ioctl(self.fd, k.KVM_SET_LAPIC, st, "KVM_SET_LAPIC")

    def get_mp_state(self) -> int:
        st = s.kvm_mp_state()
        ioctl(self.fd, k.KVM_GET_MP_STATE, st, "KVM_GET_MP_STATE")
        return st.mp_state

    def set_mp_state(self, state: int) -> None:
        ioctl(self.fd, k.KVM_SET_MP_STATE, s.kvm_mp_state(state), "KVM_SET_MP_STATE")

    def get_vcpu_events(self) -> bytes:
        st = s.kvm_vcpu_events()
        ioctl(self.fd, k.KVM_GET_VCPU_EVENTS, st, "KVM_GET_VCPU_EVENTS")
        return bytes(st)

    def set_vcpu_events(self, data: bytes) -> None:
        ioctl(self.fd, k.KVM_SET_VCPU_EVENTS, s.kvm_vcpu_events.from_buffer_copy(data), "KVM_SET_VCPU_EVENTS")

    def get_debugregs(self) -> bytes:
        st = s.kvm_debugregs()
        ioctl(self.fd, k.KVM_GET_DEBUGREGS, st, "KVM_GET_DEBUGREGS")
        return bytes(st)

    def set_debugregs(self, data: bytes) -> None:
        ioctl(self.fd, k.KVM_SET_DEBUGREGS, s.kvm_debugregs.from_buffer_copy(data), "KVM_SET_DEBUGREGS")

    def get_xsave(self, size: int = 0) -> bytes:
        """The XSAVE area: struct kvm_xsave (4096 bytes), or with `size` >
        4096 (KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2), for AMX state) that many
        bytes through KVM_GET_XSAVE2."""
        if size <= ctypes.sizeof(s.kvm_xsave):
            st = s.kvm_xsave()
            ioctl(self.fd, k.KVM_GET_XSAVE, st, "KVM_GET_XSAVE")
            return bytes(st)
        buf = ctypes.create_string_buffer(size)
        ioctl(self.fd, k.KVM_GET_XSAVE2, buf, "KVM_GET_XSAVE2")
        return buf.raw

    def set_xsave(self, data: bytes) -> None:
        """Load an XSAVE area of 4096 bytes or, where KVM_CAP_XSAVE2 asks for
        more, of that size (the kernel reads its own size from the pointer)."""
        if len(data) <= ctypes.sizeof(s.kvm_xsave):
            ioctl(self.fd, k.KVM_SET_XSAVE, s.kvm_xsave.from_buffer_copy(data.ljust(4096, b"\0")), "KVM_SET_XSAVE")
        else:
            ioctl(self.fd, k.KVM_SET_XSAVE, ctypes.create_string_buffer(bytes(data), len(data)), "KVM_SET_XSAVE")

    def get_xcrs(self) -> bytes:
        st = s.kvm_xcrs()
        ioctl(self.fd, k.KVM_GET_XCRS, st, "KVM_GET_XCRS")
        return bytes(st)

    def set_xcrs(self, data: bytes) -> None:
        ioctl(self.fd, k.KVM_SET_XCRS, s.kvm_xcrs.from_buffer_copy(data), "KVM_SET_XCRS")

    def translate(self, gva: int) -> int | None:
        """Guest-virtual to guest-physical through the vCPU's current page tables."""
        t = s.kvm_translation(linear_address=gva)
        ioctl(self.fd, k.KVM_TRANSLATE, t, "KVM_TRANSLATE")
        return t.physical_address if t.valid else None

    def nmi(self) -> None:
        ioctl(self.fd, k.KVM_NMI, 0, "KVM_NMI")


