"""The vCPU thread: KVM_RUN, decode the exit, dispatch, repeat.

Kept short on purpose: every port or MMIO access of the guest passes through
`run_vcpu`, so each exit does the minimum (one bus lookup, one device call)
and goes back into the guest.
"""

from __future__ import annotations

from .._log import get_logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing

from ..kvm import exits
from ..kvm.exits import Hlt, InternalError, Interrupted, IoIn, IoOut, MmioRead, MmioWrite, Other, Shutdown, SystemEvent
from . import exit_status

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..devices.bus import Bus
    from ..kvm import Vcpu

log = get_logger(__name__)


class ExitHandler:
    """What a vCPU does with each exit. Tests call `handle` with made-up exits."""

    def __init__(self, pio: "Bus", mmio: "Bus", stop: Callable[[int, str, int | None], None],
                 assist: Callable[["Vcpu", exits.Exit], bool] | None = None) -> None:
        self.pio = pio
        self.mmio = mmio
        self.stop = stop
        self.assist = assist  # a host-compat layer may resolve some exits (returns True if it did)
        self.tick: Callable[["Vcpu"], None] | None = None  # run when a signal interrupted KVM_RUN
        self.dirty_ring_full: Callable[["Vcpu"], None] | None = None  # empties a full dirty ring
        self.device_errors = 0

    def handle(self, vcpu: "Vcpu", e: exits.Exit) -> None:
        t = type(e)
        try:
            if t is IoOut:
                size = e.size  # type: ignore[union-attr]
                data = e.data  # type: ignore[union-attr]
                write = self.pio.write
                port = e.port  # type: ignore[union-attr]
                if len(data) == size:
                    write(port, size, int.from_bytes(data, "little"))
                else:
                    for i in range(0, len(data), size):
                        write(port, size, int.from_bytes(data[i : i + size], "little"))
                return
            if t is IoIn:
                size, port = e.size, e.port  # type: ignore[union-attr]
                read = self.pio.read
                data = b"".join(read(port, size).to_bytes(size, "little") for _ in range(e.count))  # type: ignore[union-attr]
                vcpu.complete_io_in(e, data)  # type: ignore[arg-type]
                return
            if t is MmioRead:
                size = e.size  # type: ignore[union-attr]
                vcpu.complete_mmio_read(self.mmio.read(e.addr, size).to_bytes(size, "little"))  # type: ignore[union-attr]
                return
            if t is MmioWrite:
                self.mmio.write(e.addr, len(e.data), int.from_bytes(e.data, "little"))  # type: ignore[union-attr]
                return
        except Exception:
            # A device model bug must not take the VMM down with it; the guest
            # sees a failed access (all-ones on reads) and the log says why.
            self.device_errors += 1
            log.exception("device error while handling %r on vCPU %d", e, vcpu.index)
            if t is IoIn:
                vcpu.complete_io_in(e, b"\xff" * (e.size * e.count))  # type: ignore[union-attr,arg-type]
            elif t is MmioRead:
                vcpu.complete_mmio_read(b"\xff" * e.size)  # type: ignore[union-attr]
            return
        if t is Interrupted or t is Hlt:
            return
        if t is Other and e.reason == exits.EXIT_DIRTY_RING_FULL and self.dirty_ring_full is not None:  # type: ignore[union-attr]
            self.dirty_ring_full(vcpu)
            return
        if self.assist is not None and self.assist(vcpu, e):
            return
        if t is Shutdown:
            self.stop(exit_status.TRIPLE_FAULT, "the guest triple-faulted (KVM_EXIT_SHUTDOWN)", vcpu.index)
        elif t is SystemEvent:
            kind = e.type  # type: ignore[union-attr]
            if kind == exits.SYSTEM_EVENT_SHUTDOWN:
                self.stop(exit_status.POWEROFF, "the guest powered off", None)
            elif kind == exits.SYSTEM_EVENT_RESET:
                self.stop(exit_status.RESET, "the guest requested a reset", None)
            else:
                self.stop(exit_status.UNHANDLED_EXIT, f"the guest crashed (system event {kind})", vcpu.index)
        elif t is InternalError:
            self.stop(exit_status.UNHANDLED_EXIT, f"KVM internal error: {e.describe()} "  # type: ignore[union-attr]
                      f"(data {', '.join(hex(d) for d in e.data)})", vcpu.index)  # type: ignore[union-attr]
        else:
            self.stop(exit_status.UNHANDLED_EXIT, f"unhandled vCPU exit {e!r}", vcpu.index)


class StopFlag:
    """Shared between the VMM and its vCPU threads; an attribute read is the
    cheapest check the loop can make on every exit."""

    __slots__ = ("stopping",)

    def __init__(self) -> None:
        self.stopping = False


def run_vcpu(vcpu: "Vcpu", handler: ExitHandler, flag: StopFlag) -> None:
    """The body of a vCPU thread.

    Port I/O, by far the most frequent exit of legacy devices, is handled
    inline: no exit object, one cached bus lookup, one device call. Every
    other exit is decoded and passed to `handler`.
    """
    run = vcpu.run_reason
    io_exit = vcpu.io_exit
    page = vcpu.run_page
    find = handler.pio.find
    pio_read = handler.pio.read
    handle = handler.handle
    decode = exits.decode
    EXIT_IO = exits.EXIT_IO
    EXIT_INTR = exits.EXIT_INTR
    while not flag.stopping:
        reason = run()
        if reason != EXIT_IO:
            if reason != EXIT_INTR:
                handle(vcpu, decode(page))
            elif handler.tick is not None:  # a signal: periodic work, then the stop flag
                handler.tick(vcpu)
            continue
        direction, size, port, count, off = io_exit()
        if count != 1:
            handle(vcpu, decode(page))  # string I/O: the general path splits it
            continue
        r = find(port)
        try:
            if direction:  # OUT
                if r is not None:
                    r.device.write(port - r.base, size, int.from_bytes(page[off : off + size], "little"))
                else:
                    handler.pio.write(port, size, int.from_bytes(page[off : off + size], "little"))
            else:
                page[off : off + size] = pio_read(port, size).to_bytes(size, "little")
        except Exception:
            handler.device_errors += 1
            log.exception("device error on port %#x (vCPU %d)", port, vcpu.index)
            if not direction:
                page[off : off + size] = b"\xff" * size
