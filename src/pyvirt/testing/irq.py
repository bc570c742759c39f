"""A recording interrupt line."""

from __future__ import annotations


class FakeIrq:
    def __init__(self) -> None:
        self.level = False
        self.history: list[bool] = []

    def set_level(self, level: bool) -> None:
        self.level = bool(level)
        self.history.append(self.level)

    @property
    def raised(self) -> int:
        """How many rising edges were seen."""
        prev, n = False, 0
        for lv in self.history:
            n += lv and not prev
            prev = lv
        return n
