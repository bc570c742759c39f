"""A clock a test moves by hand, for devices that take a `clock` callable."""

from __future__ import annotations


class FakeClock:
    """Call it for the time; `advance` and `set` move it (even backwards)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, now: float) -> None:
        self.now = float(now)
