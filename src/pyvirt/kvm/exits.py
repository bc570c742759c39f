"""Typed vCPU exits decoded from the shared `struct kvm_run` page.

The run loop calls `decode(run)` after KVM_RUN returns and dispatches on the
class. Handlers are plain functions over these dataclasses, so tests feed
them made-up exits without /dev/kvm.

Offsets follow `struct kvm_run` in <linux/kvm.h>: exit_reason at 8, the exit
union at 32.
"""

from __future__ import annotations

import struct

EXIT_UNKNOWN = 0
EXIT_EXCEPTION = 1
EXIT_IO = 2
EXIT_HYPERCALL = 3
EXIT_DEBUG = 4
EXIT_HLT = 5
EXIT_MMIO = 6
EXIT_IRQ_WINDOW_OPEN = 7
EXIT_SHUTDOWN = 8
EXIT_FAIL_ENTRY = 9
EXIT_INTR = 10
EXIT_NMI = 16
EXIT_INTERNAL_ERROR = 17
EXIT_SYSTEM_EVENT = 24
EXIT_IOAPIC_EOI = 26
EXIT_DIRTY_RING_FULL = 31

EXIT_NAMES = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT",
    6: "MMIO", 7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR",
    16: "NMI", 17: "INTERNAL_ERROR", 24: "SYSTEM_EVENT", 26: "IOAPIC_EOI",
    29: "X86_RDMSR", 30: "X86_WRMSR", 33: "X86_BUS_LOCK", 37: "NOTIFY",
}

# struct kvm_run field offsets.
RUN_EXIT_REASON = 8
RUN_UNION = 32

IO_IN, IO_OUT = 0, 1

INTERNAL_ERROR_EMULATION = 1
INTERNAL_ERROR_SIMUL_EX = 2
INTERNAL_ERROR_DELIVERY_EV = 3
INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4

SYSTEM_EVENT_SHUTDOWN = 1
SYSTEM_EVENT_RESET = 2
SYSTEM_EVENT_CRASH = 3


class _Exit:
    """Base of the exit records: immutable, compared and printed by field.

    Plain slotted classes rather than dataclasses: one is created on every
    exit, and defining a dozen frozen dataclasses costs VMM start-up time.
    """

    __slots__: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"


_set = object.__setattr__


class IoIn(_Exit):
    """The guest executed IN (count > 1 for REP INS); data goes at data_offset."""

    __slots__ = ("port", "size", "count", "data_offset")
    port: int
    size: int
    count: int
    data_offset: int

    def __init__(self, port: int, size: int, count: int, data_offset: int) -> None:
        _set(self, "port", port)
        _set(self, "size", size)
        _set(self, "count", count)
        _set(self, "data_offset", data_offset)


class IoOut(_Exit):
    """The guest executed OUT; `data` holds count * size bytes."""

    __slots__ = ("port", "size", "data")
    port: int
    size: int
    data: bytes

    def __init__(self, port: int, size: int, data: bytes) -> None:
        _set(self, "port", port)
        _set(self, "size", size)
        _set(self, "data", data)


class MmioRead(_Exit):
    __slots__ = ("addr", "size")
    addr: int
    size: int

    def __init__(self, addr: int, size: int) -> None:
        _set(self, "addr", addr)
        _set(self, "size", size)


class MmioWrite(_Exit):
    __slots__ = ("addr", "data")
    addr: int
    data: bytes

    def __init__(self, addr: int, data: bytes) -> None:
        _set(self, "addr", addr)
        _set(self, "data", data)


class Hlt(_Exit):
    __slots__ = ()


class Shutdown(_Exit):
    """Triple fault (or another shutdown condition) in the guest."""

    __slots__ = ()


class FailEntry(_Exit):
    __slots__ = ("reason", "cpu")
    reason: int
    cpu: int

    def __init__(self, reason: int, cpu: int) -> None:
        _set(self, "reason", reason)
        _set(self, "cpu", cpu)


class InternalError(_Exit):
    __slots__ = ("suberror", "data")
    suberror: int
    data: tuple[int, ...]

    def __init__(self, suberror: int, data: tuple[int, ...]) -> None:
        _set(self, "suberror", suberror)
        _set(self, "data", tuple(data))

    def describe(self) -> str:
        kinds = {
            INTERNAL_ERROR_EMULATION: "instruction emulation failed",
            INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
            INTERNAL_ERROR_DELIVERY_EV: "exit while delivering an event",
            INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected exit reason",
        }
        return kinds.get(self.suberror, f"suberror {self.suberror}")


class SystemEvent(_Exit):
    __slots__ = ("type", "data")
    type: int
    data: tuple[int, ...]

    def __init__(self, type: int, data: tuple[int, ...]) -> None:
        _set(self, "type", type)
        _set(self, "data", tuple(data))


class Interrupted(_Exit):
    """KVM_RUN returned EINTR or KVM_EXIT_INTR: a signal asked us to look up."""

    __slots__ = ()


class Other(_Exit):
    __slots__ = ("reason",)
    reason: int

    def __init__(self, reason: int) -> None:
        _set(self, "reason", reason)

    @property
    def name(self) -> str:
        return EXIT_NAMES.get(self.reason, str(self.reason))


Exit = (
    IoIn | IoOut | MmioRead | MmioWrite | Hlt | Shutdown | FailEntry | InternalError
    | SystemEvent | Interrupted | Other
)

_IO = struct.Struct("<BBHIQ")
_MMIO = struct.Struct("<Q8sIB")
_U32 = struct.Struct("<I")
_U32x2 = struct.Struct("<II")
_HLT = Hlt()
_SHUTDOWN = Shutdown()
_INTR = Interrupted()


def decode(run: "bytes | bytearray | memoryview | object") -> Exit:
    """Turn the kvm_run page (any buffer) into one typed exit."""
    reason = _U32.unpack_from(run, RUN_EXIT_REASON)[0]  # type: ignore[arg-type]
    if reason == EXIT_IO:
        direction, size, port, count, off = _IO.unpack_from(run, RUN_UNION)  # type: ignore[arg-type]
        if direction == IO_OUT:
            return IoOut(port, size, bytes(run[off : off + size * count]))  # type: ignore[index]
        return IoIn(port, size, count, off)
    if reason == EXIT_MMIO:
        addr, data, length, is_write = _MMIO.unpack_from(run, RUN_UNION)  # type: ignore[arg-type]
        if is_write:
            return MmioWrite(addr, data[:length])
        return MmioRead(addr, length)
    if reason == EXIT_HLT:
        return _HLT
    if reason == EXIT_SHUTDOWN:
        return _SHUTDOWN
    if reason == EXIT_INTR:
        return _INTR
    if reason == EXIT_FAIL_ENTRY:
        hw, cpu = struct.unpack_from("<QI", run, RUN_UNION)  # type: ignore[arg-type]
        return FailEntry(hw, cpu)
    if reason == EXIT_INTERNAL_ERROR:
        sub, ndata = _U32x2.unpack_from(run, RUN_UNION)  # type: ignore[arg-type]
        ndata = min(ndata, 16)
        data = struct.unpack_from(f"<{ndata}Q", run, RUN_UNION + 8)  # type: ignore[arg-type]
        return InternalError(sub, data)
    if reason == EXIT_SYSTEM_EVENT:
        typ, ndata = _U32x2.unpack_from(run, RUN_UNION)  # type: ignore[arg-type]
        ndata = min(ndata, 16)
        data = struct.unpack_from(f"<{ndata}Q", run, RUN_UNION + 8)  # type: ignore[arg-type]
        return SystemEvent(typ, data)
    return Other(reason)
