"""Interrupt lines as devices see them."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from .protocols import IrqLine


def __getattr__(name: str) -> object:
    if name == "IrqLine":  # the Protocol lives where the VMM's start path does not load it
        from .protocols import IrqLine

        return IrqLine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
