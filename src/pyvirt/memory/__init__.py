"""Guest memory: regions of host memory mapped at guest-physical addresses.

`GuestMemory` is the interface loaders, device models and virtqueues use.
It bounds-checks every access; nothing outside the guest's regions is ever
read or written. Regions are backed by anonymous mmap (the VMM) or by a
bytearray (tests, via `GuestMemory.from_bytearray`).
"""

from .errors import GuestMemoryError
from .guest import GuestMemory, Region

__all__ = ["GuestMemory", "Region", "GuestMemoryError"]
