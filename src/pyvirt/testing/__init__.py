"""Fakes shipped with pyvirt for tests of devices, loaders and handlers.

`GuestMemory.from_bytearray` is the fake guest memory; `FakeIrq` records
interrupt levels.
"""

from .irq import FakeIrq

__all__ = ["FakeIrq"]
