"""The /dev/kvm handle: API version, capabilities, supported CPUID and MSRs."""

from __future__ import annotations

import ctypes
import errno
import os

from . import ioctls as k
from . import structs as s
from ._ioctl import ioctl
from .errors import KvmError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .vm import Vm

DEFAULT_PATH = "/dev/kvm"


def backend() -> str:
    """Which kernel module implements /dev/kvm: kvm_intel, kvm_amd, kvm_pvm or unknown.

    The PVM backend (a nested, paravirtual backend) needs workarounds that must
    never run on ordinary hosts, so the answer comes from the loaded modules,
    not from a guess about the CPU.
    """
    for name in ("kvm_pvm", "kvm_intel", "kvm_amd"):
        if os.path.exists(f"/sys/module/{name}"):
            return name
    return "unknown"


class Kvm:
    """An open /dev/kvm."""

    def __init__(self, path: str = DEFAULT_PATH) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise KvmError(
                f"open {path}", errno.ENOENT,
                "KVM is not available: load the module (modprobe kvm_intel or kvm_amd) "
                "and check that virtualization is enabled in the firmware",
            ) from e
        except PermissionError as e:
            raise KvmError(
                f"open {path}", errno.EACCES,
                "no permission: run as root or add your user to the 'kvm' group",
            ) from e
        self.path = path
        version = self.api_version()
        if version != k.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmError("KVM_GET_API_VERSION", errno.EINVAL,
                           f"API version {version}, pyvirt needs {k.KVM_API_VERSION}")
        self._mmap_size: int | None = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Kvm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def api_version(self) -> int:
        return ioctl(self.fd, k.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        """The capability's value (0 when absent)."""
        try:
            return ioctl(self.fd, k.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")
        except KvmError:
            return 0

    def vcpu_mmap_size(self) -> int:
        if self._mmap_size is None:
            self._mmap_size = ioctl(self.fd, k.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        return self._mmap_size

    def max_vcpus(self) -> int:
        return self.check_extension(k.KVM_CAP_MAX_VCPUS) or self.check_extension(k.KVM_CAP_NR_VCPUS) or 4

    def supported_cpuid(self) -> list[s.kvm_cpuid_entry2]:
        return self._cpuid(k.KVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID")

    def _cpuid(self, request: int, name: str) -> list[s.kvm_cpuid_entry2]:
        buf = s.kvm_cpuid2_buf()
        buf.nent = s.MAX_CPUID_ENTRIES
        ioctl(self.fd, request, buf, name)
        out = []
        for e in buf.entries[: buf.nent]:
            c = s.kvm_cpuid_entry2()
            ctypes.memmove(ctypes.addressof(c), ctypes.addressof(e), ctypes.sizeof(c))
            out.append(c)
        return out

    def msr_index_list(self) -> list[int]:
        """MSRs KVM can save and restore (KVM_GET_MSR_INDEX_LIST)."""
        n = 1024

        class _List(ctypes.Structure):
            _fields_ = [("nmsrs", ctypes.c_uint32), ("indices", ctypes.c_uint32 * n)]

        lst = _List()
        lst.nmsrs = n
        ioctl(self.fd, k.KVM_GET_MSR_INDEX_LIST, lst, "KVM_GET_MSR_INDEX_LIST")
        return list(lst.indices[: lst.nmsrs])

    def create_vm(self) -> "Vm":
        from .vm import Vm

        fd = ioctl(self.fd, k.KVM_CREATE_VM, 0, "KVM_CREATE_VM",
                   "the host may be out of memory or KVM may be in use by another hypervisor")
        return Vm(self, fd)
