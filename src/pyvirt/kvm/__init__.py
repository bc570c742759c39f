"""pyvirt.kvm: the only code that talks to /dev/kvm.

Three layers, as in rust-vmm's kvm-ioctls: ctypes structs (`structs`), ioctl
numbers (`ioctls`), and handles `Kvm`, `Vm`, `Vcpu` whose methods raise
`KvmError`. Exits come back as typed dataclasses (`exits`).
"""

from .errors import KvmError
from .system import Kvm, backend
from .vcpu import Vcpu
from .vm import Vm

__all__ = ["Kvm", "Vm", "Vcpu", "KvmError", "backend"]
