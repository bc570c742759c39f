"""A vCPU's dirty ring (KVM_CAP_DIRTY_LOG_RING): the pages it wrote, one entry each.

With the ring on, KVM does not keep a dirty bitmap: each vCPU pushes a
`struct kvm_dirty_gfn {u32 flags; u32 slot; u64 offset}` for every page it
dirties in a slot that logs. Userspace harvests entries in order from its
own index, marks each one RESET, and KVM_RESET_DIRTY_RINGS (on the VM)
re-protects those pages and frees the entries. A ring that fills makes
its vCPU exit with KVM_EXIT_DIRTY_RING_FULL until it is harvested.
"""

from __future__ import annotations

import mmap
import struct
import threading

from . import ioctls as k

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .vcpu import Vcpu

GFN = struct.Struct("<IIQ")  # flags, slot, offset (in pages)
F_DIRTY = 1 << 0  # the kernel pushed this entry
F_RESET = 1 << 1  # userspace harvested it


class DirtyRing:
    """One vCPU's ring over `ring` (its mapping; a bytearray in tests)."""

    def __init__(self, ring: mmap.mmap | bytearray, entries: int) -> None:
        if entries <= 0 or entries & (entries - 1) or len(ring) < entries * GFN.size:
            raise ValueError(f"a dirty ring of {entries} entries needs a power of two and {entries * GFN.size} bytes")
        self.entries = entries
        self.ring = ring
        self.index = 0  # the next entry to harvest (free-running)
        self.lock = threading.Lock()  # the migration thread and a full vCPU may both harvest

    def harvest(self) -> list[tuple[int, int]]:
        """(slot, page offset) of every entry pushed since the last harvest;
        the caller then resets the VM's rings."""
        out = []
        ring, size, unpack = self.ring, self.entries, GFN.unpack_from
        reset = struct.Struct("<I").pack_into
        with self.lock:
            i = self.index
            while True:
                off = (i % size) * GFN.size
                flags, slot, offset = unpack(ring, off)
                if not flags & F_DIRTY:
                    break
                out.append((slot, offset))
                reset(ring, off, F_RESET)
                i += 1
            self.index = i
        return out

    @classmethod
    def map(cls, vcpu: Vcpu, entries: int) -> DirtyRing:
        """The ring of `vcpu`, mapped from its fd (the VM enabled rings of `entries`)."""
        ring = mmap.mmap(vcpu.fd, entries * GFN.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                         offset=k.KVM_DIRTY_LOG_PAGE_OFFSET * mmap.PAGESIZE)
        return cls(ring, entries)

    def close(self) -> None:
        if isinstance(self.ring, mmap.mmap):
            self.ring.close()
