"""The base of every PCI function: a config space whose BARs the bus maps.

A `PciDevice` owns a `PciConfigSpace` and answers config reads and writes
(from `PciBus`). When a write changes the Command register or a BAR, it
works out where each memory BAR should now decode (nowhere while Memory
Space Enable is clear or the BAR holds 0) and tells the bus through the
mapper `PciBus.add` installed, so the BAR's `BusDevice` moves on the MMIO
bus; then, with `mapped_bars()` already showing the move, it calls the
bus's change callback. INTx goes through `set_intx`, which honours the Command register's
Interrupt Disable bit and mirrors the level in the Status register's
Interrupt Status bit, as PCI 3.0 6.2.2/6.2.3 ask.
"""

from __future__ import annotations

from .config import (BAR0, COMMAND, CMD_INTX_DISABLE, CMD_MEMORY, NUM_BARS, PciConfigSpace,
                     overlaps)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..protocols import BusDevice, IrqLine
    from .states import PciConfigState

    # (device, BAR index, old address or None, new address or None) -> whether
    # the BAR now decodes at the new address.
    BarMapper = Callable[["PciDevice", int, "int | None", "int | None"], bool]
    # (device, BAR index, old address or None, new address or None), after the move
    BarChange = Callable[["PciDevice", int, "int | None", "int | None"], None]


class PciDevice:
    name = "pci"

    def __init__(self, config: PciConfigSpace, intx: IrqLine | None = None) -> None:
        self.config = config
        self._mapper: BarMapper | None = None
        self._on_change: BarChange | None = None
        self._mapped: dict[int, int] = {}
        self._intx = intx
        self._intx_level = False  # what the function asks for
        self._intx_out = False  # what the line carries

    # --- hooks for subclasses ------------------------------------------------
    def bar_device(self, index: int) -> BusDevice:
        """The handler for accesses to memory BAR `index` (offsets into the BAR)."""
        raise NotImplementedError(f"{self.name}: no handler for BAR {index}")

    def config_written(self, offset: int, size: int) -> None:
        """The guest wrote config bytes [offset, offset+size) (after the masks)."""

    def config_reading(self, offset: int, size: int) -> None:
        """The guest is about to read config bytes [offset, offset+size)."""

    def intx_allowed(self) -> bool:
        """False while the function signals by message (MSI-X enabled)."""
        return True

    # --- config access (from the bus) -----------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        self.config_reading(offset, size)
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        if not self.config.write(offset, size, value):
            return
        if overlaps(offset, size, COMMAND, 2) or overlaps(offset, size, BAR0, 4 * NUM_BARS):
            self.update_bars()
        if overlaps(offset, size, COMMAND, 2):
            self.update_intx()
        self.config_written(offset, size)

    # --- BAR mapping ---------------------------------------------------------
    def attach(self, mapper: BarMapper, on_change: BarChange | None = None) -> None:
        """Called by the bus: from now on BAR moves go through `mapper`, and
        `on_change` hears of each one after `mapped_bars()` shows it."""
        self._mapper = mapper
        self._on_change = on_change
        self.update_bars()

    def detach(self) -> None:
        """Unmap every BAR (hot-unplug, or the VM going away)."""
        for index, addr in sorted(self._mapped.items()):
            if self._mapper is not None:
                self._mapper(self, index, addr, None)
            del self._mapped[index]
            if self._on_change is not None:
                self._on_change(self, index, addr, None)
        self._mapper = self._on_change = None

    def mapped_bars(self) -> dict[int, int]:
        """BAR index -> address where it decodes now."""
        return dict(self._mapped)

    def update_bars(self) -> None:
        memory_on = bool(self.config.command & CMD_MEMORY)
        for bar in self.config.bars:
            if bar is None:
                continue
            want: int | None = self.config.bar_address(bar.index) if memory_on else None
            # An address of 0 is "unassigned"; one whose range passes the top
            # of what the BAR can decode is a sizing pattern, not a placement.
            if want is not None and (want == 0 or want + bar.size > bar.limit):
                want = None
            have = self._mapped.get(bar.index)
            if want == have:
                continue
            placed = want is not None
            if self._mapper is not None:
                placed = self._mapper(self, bar.index, have, want) and want is not None
            now = want if placed else None
            if now is not None:
                self._mapped[bar.index] = now
            else:
                self._mapped.pop(bar.index, None)
            if self._on_change is not None and now != have:
                self._on_change(self, bar.index, have, now)

    # --- INTx -------------------------------------------------------------------
    def set_intx(self, level: bool) -> None:
        self._intx_level = level
        self.update_intx()

    def update_intx(self) -> None:
        self.config.set_interrupt_status(self._intx_level)
        out = self._intx_level and self.intx_allowed() and not self.config.command & CMD_INTX_DISABLE
        if out != self._intx_out:
            self._intx_out = out
            if self._intx is not None:
                self._intx.set_level(out)

    @property
    def intx_level(self) -> bool:
        """The level on the INTx line now."""
        return self._intx_out

    # --- state ----------------------------------------------------------------
    def config_state(self) -> PciConfigState:
        return self.config.state()

    def load_config(self, data: bytes) -> None:
        """Install config bytes `config.check_state` accepted and remap the BARs."""
        self.config.load(data)
        self.update_bars()
