"""Dispatch of port I/O and MMIO accesses to devices by address range.

One `Bus` instance serves port I/O, another MMIO. Ranges are sorted and never
overlap; a device sees the offset from its range's base, never the absolute
address. Accesses nobody claims read as all-ones and are logged once per
address, like an empty ISA or PCI bus: a guest probing for hardware must
never stop the VM.
"""

from __future__ import annotations

import bisect

from .._log import get_logger
from .._record import FrozenRecord

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .protocols import BusDevice

log = get_logger(__name__)


def __getattr__(name: str) -> object:
    if name == "BusDevice":  # the Protocol lives where the VMM's start path does not load it
        from .protocols import BusDevice

        return BusDevice
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BusError(ValueError):
    """A range could not be registered (overlap or empty)."""


class BusRange(FrozenRecord):
    __slots__ = __match_args__ = ("base", "length", "device", "name")
    base: int
    length: int
    device: BusDevice
    name: str

    def __init__(self, base: int, length: int, device: BusDevice, name: str) -> None:
        self._init(base, length, device, name)

    @property
    def end(self) -> int:
        return self.base + self.length


class Bus:
    def __init__(self, name: str) -> None:
        self.name = name
        self._ranges: list[BusRange] = []
        self._bases: list[int] = []
        self._warned: set[int] = set()
        # address -> range (or None): the vCPU loop's lookups skip the bisect.
        # Bounded, since MMIO addresses are many.
        self._cache: dict[int, BusRange | None] = {}
        self.unclaimed_reads = 0
        self.unclaimed_writes = 0

    def register(self, base: int, length: int, device: BusDevice, name: str = "") -> None:
        if length <= 0:
            raise BusError(f"{self.name}: empty range for {name or device!r}")
        new = BusRange(base, length, device, name or type(device).__name__)
        i = bisect.bisect_left(self._bases, base)
        for other in self._ranges[max(0, i - 1) : i + 1]:
            if base < other.end and other.base < new.end:
                raise BusError(
                    f"{self.name}: {new.name} at {base:#x}+{length:#x} overlaps {other.name} "
                    f"at {other.base:#x}+{other.length:#x}"
                )
        self._ranges.insert(i, new)
        self._bases.insert(i, base)
        self._cache.clear()

    def unregister(self, base: int) -> None:
        i = bisect.bisect_left(self._bases, base)
        if i < len(self._bases) and self._bases[i] == base:
            del self._ranges[i], self._bases[i]
            self._cache.clear()

    def find(self, addr: int) -> BusRange | None:
        try:
            return self._cache[addr]
        except KeyError:
            pass
        r = self._search(addr)
        if len(self._cache) < 65536:
            self._cache[addr] = r
        return r

    def _search(self, addr: int) -> BusRange | None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            r = self._ranges[i]
            if addr < r.end:
                return r
        return None

    def ranges(self) -> list[BusRange]:
        return list(self._ranges)

    def read(self, addr: int, size: int) -> int:
        r = self.find(addr)
        if r is None:
            self.unclaimed_reads += 1
            self._warn(addr, size, "read")
            return (1 << (8 * size)) - 1
        return r.device.read(addr - r.base, size) & ((1 << (8 * size)) - 1)

    def write(self, addr: int, size: int, value: int) -> None:
        r = self.find(addr)
        if r is None:
            self.unclaimed_writes += 1
            self._warn(addr, size, f"write of {value:#x}")
            return
        r.device.write(addr - r.base, size, value)

    def _warn(self, addr: int, size: int, what: str) -> None:
        if addr not in self._warned and len(self._warned) < 4096:
            self._warned.add(addr)
            log.info("%s: unclaimed %d-byte %s at %#x (reads as all-ones)", self.name, size, what, addr)


class Window:
    """A device seen at a shifted offset, for devices whose ports are not
    contiguous (the i8042 at 0x60 and 0x64, with the PIT's 0x61 between)."""

    def __init__(self, device: "BusDevice", shift: int) -> None:
        self.device = device
        self.shift = shift

    def read(self, offset: int, size: int) -> int:
        return self.device.read(offset + self.shift, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.device.write(offset + self.shift, size, value)
