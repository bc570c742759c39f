"""The saved state of KVM's side of a VM: one record per vCPU, one for the VM;
and which devices of a machine have state (`legacy_devices`).

The kernel's structs (kvm_regs, kvm_sregs, kvm_xsave, kvm_lapic_state...)
are kept as their raw bytes: their layout is the kernel ABI, which does not
change, and KVM validates what it is given back. What the records add is
the checking that keeps untrusted bytes from reaching an ioctl in the wrong
size (`check()`), and which optional parts a host could not provide (None).

Capture and restore (the ioctls, in the order KVM needs) are in save.py and
restore.py; these are plain data.
"""

from __future__ import annotations

from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..devices.bus import Bus
    from ..devices.protocols import Stateful

# Sizes of the structs as <linux/kvm.h> (x86-64) defines them.
REGS_SIZE, SREGS_SIZE, FPU_SIZE = 144, 312, 416
XSAVE_SIZE, XSAVE_MAX = 4096, 1 << 20
XCRS_SIZE, LAPIC_SIZE, EVENTS_SIZE, DEBUGREGS_SIZE = 392, 1024, 64, 128
IRQCHIP_SIZE, PIT2_SIZE = 512, 112
MAX_MSRS, MAX_CPUID = 4096, 256
U32, U64 = (1 << 32) - 1, (1 << 64) - 1
MP_STATE_MAX = 10  # KVM_MP_STATE_AP_RESET_HOLD, the highest defined
MSR_IA32_TSC = 0x10
MSR_IA32_TSC_DEADLINE = 0x6E0


@dataclass(frozen=True)
class VcpuState:
    """One vCPU. `msrs` are (index, value) in the order they were read;
    `cpuid` rows are (function, index, flags, eax, ebx, ecx, edx) as
    KVM_SET_CPUID2 takes them; `fpu` is kept only where XSAVE is not."""

    index: int
    regs: bytes
    sregs: bytes
    lapic: bytes
    mp_state: int
    msrs: tuple[tuple[int, int], ...]
    cpuid: tuple[tuple[int, int, int, int, int, int, int], ...]
    xsave: bytes | None = None
    fpu: bytes | None = None
    xcrs: bytes | None = None
    vcpu_events: bytes | None = None
    debugregs: bytes | None = None
    tsc_khz: int = 0  # 0: unknown
    version: int = 1

    def check(self, index: int) -> None:
        """ValueError unless this is a version-1 state of vCPU `index` whose
        parts have their structs' sizes."""
        where = f"vCPU {index}"
        if type(self.version) is not int or self.version != 1:
            raise ValueError(f"{where}: state version {self.version!r} is not one this pyvirt reads (1)")
        if self.index != index:
            raise ValueError(f"{where}: the saved state is vCPU {self.index}'s")
        for name, size in (("regs", REGS_SIZE), ("sregs", SREGS_SIZE), ("lapic", LAPIC_SIZE)):
            _check_size(where, name, getattr(self, name), size)
        for name, size in (("fpu", FPU_SIZE), ("xcrs", XCRS_SIZE), ("vcpu_events", EVENTS_SIZE),
                           ("debugregs", DEBUGREGS_SIZE)):
            if getattr(self, name) is not None:
                _check_size(where, name, getattr(self, name), size)
        if self.xsave is not None:
            if not isinstance(self.xsave, bytes) or not XSAVE_SIZE <= len(self.xsave) <= XSAVE_MAX \
                    or len(self.xsave) % 64:
                raise ValueError(f"{where}: xsave area of {_len(self.xsave)} bytes (4096 to 1 MiB, by 64)")
        if self.xsave is None and self.fpu is None:
            raise ValueError(f"{where}: neither an XSAVE area nor FPU state")
        _check_int(where, "mp_state", self.mp_state, MP_STATE_MAX)
        _check_int(where, "tsc_khz", self.tsc_khz, U32)
        if not isinstance(self.msrs, tuple) or len(self.msrs) > MAX_MSRS:
            raise ValueError(f"{where}: at most {MAX_MSRS} MSRs")
        seen = set()
        for pair in self.msrs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(f"{where}: MSR entry {pair!r} is not (index, value)")
            _check_int(where, "MSR index", pair[0], U32)
            _check_int(where, f"MSR {pair[0]:#x}", pair[1], U64)
            if pair[0] in seen:
                raise ValueError(f"{where}: MSR {pair[0]:#x} saved twice")
            seen.add(pair[0])
        if not isinstance(self.cpuid, tuple) or not 0 < len(self.cpuid) <= MAX_CPUID:
            raise ValueError(f"{where}: 1 to {MAX_CPUID} CPUID entries")
        for row in self.cpuid:
            if not isinstance(row, tuple) or len(row) != 7:
                raise ValueError(f"{where}: CPUID entry {row!r} is not 7 values")
            for v in row:
                _check_int(where, "CPUID value", v, U32)


@dataclass(frozen=True)
class VmState:
    """The in-kernel irqchip (struct kvm_pic_state x2, kvm_ioapic_state, as
    KVM_GET_IRQCHIP's 512-byte union), the in-kernel PIT (None where the VM
    has none, as on kvm_pvm) and kvmclock in nanoseconds."""

    pic_master: bytes
    pic_slave: bytes
    ioapic: bytes
    clock: int
    pit2: bytes | None = None
    clock_flags: int = 0
    version: int = 1

    def check(self) -> None:
        if type(self.version) is not int or self.version != 1:
            raise ValueError(f"VM state version {self.version!r} is not one this pyvirt reads (1)")
        for name in ("pic_master", "pic_slave", "ioapic"):
            _check_size("VM", name, getattr(self, name), IRQCHIP_SIZE)
        if self.pit2 is not None:
            _check_size("VM", "pit2", self.pit2, PIT2_SIZE)
        _check_int("VM", "clock", self.clock, U64)
        _check_int("VM", "clock_flags", self.clock_flags, U32)


@dataclass(frozen=True)
class PvmState:
    """The kvm_pvm layer's SYSCALL fix-up (vmm/pvm.py): where it planted its
    int3 in guest memory and which instruction that byte displaced. Guest
    memory carries the int3, so a restored VM must know it too."""

    handler_va: int = 0
    handler_pa: int = 0
    displaced: bytes = b""
    lstar: int = 0
    version: int = 1

    def check(self) -> None:
        if type(self.version) is not int or self.version != 1:
            raise ValueError(f"kvm_pvm state version {self.version!r} is not one this pyvirt reads (1)")
        for name in ("handler_va", "handler_pa", "lstar"):
            _check_int("kvm_pvm", name, getattr(self, name), U64)
        if not isinstance(self.displaced, bytes) or len(self.displaced) > 15:
            raise ValueError("kvm_pvm: displaced instruction longer than 15 bytes")


def legacy_devices(bus: Bus) -> list[tuple[str, Stateful]]:
    """(name, device) of every device on the port bus that has state, each
    once (named by its first range: the i8042 answers at two)."""
    from ..devices.bus import Window

    seen: set[int] = set()
    out: list[tuple[str, Stateful]] = []
    for r in bus.ranges():
        dev = r.device.device if isinstance(r.device, Window) else r.device
        if id(dev) in seen or not (callable(getattr(dev, "state", None)) and callable(getattr(dev, "restore", None))):
            continue
        seen.add(id(dev))
        out.append((r.name, dev))  # type: ignore[arg-type]  # it has state() and restore()
    return out


def _len(v: object) -> str:
    return str(len(v)) if isinstance(v, bytes) else type(v).__name__


def _check_size(where: str, name: str, value: object, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{where}: {name} is {_len(value)} bytes, struct is {size}")


def _check_int(where: str, name: str, value: object, high: int) -> None:
    if type(value) is not int or not 0 <= value <= high:
        raise ValueError(f"{where}: {name} {value!r} is not in 0..{high:#x}")
