"""Interrupt lines as devices see them."""

from __future__ import annotations

from typing import Callable, Protocol


class IrqLine(Protocol):
    """A level-sensitive line into the interrupt controller."""

    def set_level(self, level: bool) -> None: ...


class CallbackIrq:
    """An IrqLine that calls `fn(gsi, level)` on changes only."""

    def __init__(self, gsi: int, fn: Callable[[int, int], None]) -> None:
        self.gsi = gsi
        self._fn = fn
        self.level = False

    def set_level(self, level: bool) -> None:
        if level != self.level:
            self.level = level
            self._fn(self.gsi, 1 if level else 0)
