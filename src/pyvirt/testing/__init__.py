"""Fakes shipped with pyvirt for tests of devices, loaders and handlers.

`GuestMemory.from_bytearray` is the fake guest memory; `FakeIrq` records
interrupt levels; `FakeClock` is a hand-moved clock; `legacy_rigs()` builds
every legacy device wired to fakes, for conformance and fuzz tests.
"""

from .clock import FakeClock
from .irq import FakeIrq
from .legacy import LegacyRig, legacy_rigs

__all__ = ["FakeClock", "FakeIrq", "LegacyRig", "legacy_rigs"]
