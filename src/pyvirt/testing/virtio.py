"""The driver side of a split virtqueue, for testing devices without a guest.

`FakeDriverQueue` plays the guest's virtio driver over a `GuestMemory`: it
lays out the three rings, allocates buffers, writes descriptor chains, makes
them available, and reads back what the device returned. The device under
test gets the matching device-side `Virtqueue` from `virtqueue()`.

    mem = GuestMemory.from_bytearray(1 << 20)
    drv = FakeDriverQueue(mem, size=16)
    q = drv.virtqueue(event_idx=True)          # what the transport would hand the device
    head = drv.add_chain([b"request header", b"payload"], [512, 1])
    device.activate(mem, [q], interrupt); device.queue_notify(0)
    assert drv.used() == [(head, 513)]         # new (id, len) entries since the last call
    data = drv.read_written(head)              # the 513 bytes the device wrote

Layout: by default the descriptor table (`desc_addr`) sits at the start of
the first memory region, the available ring (`avail_addr`) right after it
and the used ring (`used_addr`) after that; pass `desc`, `avail`, `used` to
place them yourself. Buffers come from `drv.alloc` (a `BufferAllocator`), by
default the rest of the region after the rings (or pass `buffers=(start,
end)`). The allocator wraps around to its start when it runs out, so long
tests keep working as long as they consume chains before the area is reused.

Descriptors come from a free list, as in a real driver: `add_chain` takes
them, `used()` gives them back, so completions in any order work. Pass
`indirect=True` to put the chain in an indirect table (one ring descriptor).

Hostile input, for fuzz and malformed-ring tests: `write_desc()` writes any
descriptor at any index, `write_table()` writes an indirect table into
allocated memory, `add_raw()` does both plus `publish()`, and
`set_avail_idx()`, `set_avail_flags()`, `set_used_event()` and
`write_avail_entry()` poke the available ring directly. These bypass the free
list: don't mix them with `add_chain` on indices that may be in use.
`start_idx` begins both ring indices elsewhere than 0 (e.g. 65530, to test
16-bit wrap-around).

What the device wrote into the rings: `used_idx`, `used_flags` (NO_NOTIFY)
and `avail_event`. Like Linux's driver, `used()` re-arms interrupts by
writing used_event = the used index it has consumed up to, so an event_idx
device interrupts for the next completion; pass `track_used_event=False` to
leave used_event to `set_used_event()`.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Sequence

from ..devices.virtio.queue import (
    DESC_SIZE,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    QueueState,
    Virtqueue,
    ring_sizes,
)
from ..memory.guest import GuestMemory

_DESC = struct.Struct("<QIHH")
_ELEM = struct.Struct("<II")

# (addr, len, flags, next) as in the descriptor table
Desc = tuple[int, int, int, int]


def _align(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


class BufferAllocator:
    """Hands out guest addresses in [start, end): a bump allocator that wraps
    to `start` when the rest of the area is too small."""

    def __init__(self, start: int, end: int) -> None:
        if end <= start:
            raise ValueError(f"empty buffer area {start:#x}..{end:#x}")
        self.start, self.end = start, end
        self.next = start

    def alloc(self, size: int, align: int = 16) -> int:
        if size < 0 or align <= 0 or align & (align - 1):
            raise ValueError(f"bad allocation: {size} bytes aligned to {align}")
        gpa = _align(self.next, align)
        if gpa + size > self.end:
            gpa = _align(self.start, align)
            if gpa + size > self.end:
                raise ValueError(f"{size} bytes do not fit the buffer area {self.start:#x}..{self.end:#x}")
        self.next = gpa + size
        return gpa

    def reset(self) -> None:
        self.next = self.start


class _Sent:
    """What the fake driver remembers of a chain it made available."""

    __slots__ = ("descs", "readable", "writable")

    def __init__(self, descs: list[int], readable: list[tuple[int, int]], writable: list[tuple[int, int]]) -> None:
        self.descs = descs
        self.readable = readable
        self.writable = writable


class FakeDriverQueue:
    """A guest driver's view of one split virtqueue (see the module docstring)."""

    def __init__(self, mem: GuestMemory, size: int = 256, *, desc: int | None = None, avail: int | None = None,
                 used: int | None = None, buffers: tuple[int, int] | None = None, start_idx: int = 0,
                 track_used_event: bool = True) -> None:
        if not 1 <= size <= 32768 or size & (size - 1):
            raise ValueError(f"queue size {size} is not a power of two up to 32768")
        self.mem, self.size = mem, size
        dlen, alen, ulen = ring_sizes(size)
        region = mem.regions[0]
        self.desc_addr = region.gpa if desc is None else desc
        self.avail_addr = self.desc_addr + dlen if avail is None else avail
        self.used_addr = _align(self.avail_addr + alen, 4) if used is None else used
        for gpa, n in ((self.desc_addr, dlen), (self.avail_addr, alen), (self.used_addr, ulen)):
            mem.fill(gpa, n)
        if buffers is None:
            start = _align(max(self.desc_addr + dlen, self.avail_addr + alen, self.used_addr + ulen), 64)
            end = next((r.gpa + r.size for r in mem.regions if r.gpa <= start < r.gpa + r.size), start)
            buffers = (start, end)
        self.alloc = BufferAllocator(*buffers)
        self.start_idx = start_idx & 0xFFFF
        self.avail_idx = self.start_idx  # the driver's shadow of avail.idx
        self.last_used = self.start_idx  # used.idx when used() last looked
        mem.write_u16(self.avail_addr + 2, self.avail_idx)
        mem.write_u16(self.used_addr + 2, self.start_idx)
        self.free: collections.deque[int] = collections.deque(range(size))
        self.sent: dict[int, _Sent] = {}
        self.written: dict[int, int] = {}  # head -> len from its used entry
        self.track_used_event = track_used_event
        self.set_used_event(self.start_idx)

    # --- the device side ------------------------------------------------------
    def virtqueue(self, *, event_idx: bool = False, indirect: bool = False, index: int = 0) -> Virtqueue:
        """The device-side queue over these rings, positioned at `start_idx`."""
        s = self.start_idx
        state = QueueState(self.size, self.desc_addr, self.avail_addr, self.used_addr, s, s, event_idx, indirect, s)
        return Virtqueue.from_state(self.mem, state, index=index)

    # --- well-formed chains ---------------------------------------------------
    def add_chain(self, readable: Sequence[bytes], writable_sizes: Sequence[int] = (), *,
                  indirect: bool = False) -> int:
        """Copy `readable` into fresh buffers, allocate zeroed writable buffers
        of `writable_sizes`, link them into one chain (or one indirect table)
        and make it available. Returns the head descriptor index."""
        bufs: list[tuple[int, int, int]] = []
        rd: list[tuple[int, int]] = []
        wr: list[tuple[int, int]] = []
        for data in readable:
            gpa = self.alloc.alloc(len(data))
            self.mem.write(gpa, data)
            bufs.append((gpa, len(data), 0))
            rd.append((gpa, len(data)))
        for n in writable_sizes:
            gpa = self.alloc.alloc(n)
            self.mem.fill(gpa, n)
            bufs.append((gpa, n, VIRTQ_DESC_F_WRITE))
            wr.append((gpa, n))
        if not bufs:
            raise ValueError("a chain needs at least one buffer (use add_raw for odd chains)")
        if indirect:
            table = [(g, n, f | (VIRTQ_DESC_F_NEXT if k + 1 < len(bufs) else 0), k + 1)
                     for k, (g, n, f) in enumerate(bufs)]
            tgpa, tlen = self.write_table(table)
            bufs = [(tgpa, tlen, VIRTQ_DESC_F_INDIRECT)]
        if len(bufs) > len(self.free):
            raise ValueError(f"queue full: {len(bufs)} descriptors wanted, {len(self.free)} free")
        idx = [self.free.popleft() for _ in bufs]
        for k, (g, n, f) in enumerate(bufs):
            last = k + 1 == len(bufs)
            self.write_desc(idx[k], g, n, f if last else f | VIRTQ_DESC_F_NEXT, 0 if last else idx[k + 1])
        head = idx[0]
        self.sent[head] = _Sent(idx, rd, wr)
        self.written.pop(head, None)
        self.publish(head)
        return head

    def used(self) -> list[tuple[int, int]]:
        """The (id, len) entries the device added to the used ring since the
        last call, in order; their descriptors go back to the free list."""
        mem, out = self.mem, []
        idx = mem.read_u16(self.used_addr + 2)
        while self.last_used != idx:
            slot = self.used_addr + 4 + 8 * (self.last_used % self.size)
            head, n = _ELEM.unpack(mem.read(slot, 8))
            out.append((head, n))
            self.written[head] = n
            sent = self.sent.get(head)
            if sent is not None and sent.descs:
                self.free.extend(sent.descs)
                sent.descs = []  # returned once, even if the device repeats the id
            self.last_used = (self.last_used + 1) & 0xFFFF
        if self.track_used_event:
            self.set_used_event(self.last_used)
        return out

    def read_written(self, head: int) -> bytes:
        """What the device wrote into chain `head`'s writable buffers: as many
        bytes as its used entry reported if `used()` has seen one, else the
        whole writable area."""
        sent = self.sent[head]
        data = b"".join(self.mem.read(g, n) for g, n in sent.writable)
        n = self.written.get(head)
        return data if n is None else data[:n]

    def readable_buffers(self, head: int) -> list[tuple[int, int]]:
        return list(self.sent[head].readable)

    def writable_buffers(self, head: int) -> list[tuple[int, int]]:
        return list(self.sent[head].writable)

    # --- raw access, for malformed and hostile rings -------------------------
    def write_desc(self, index: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        """Write descriptor `index` of the ring's table, any field values."""
        if not 0 <= index < self.size:
            raise ValueError(f"descriptor index {index} outside the table of {self.size}")
        self.mem.write(self.desc_addr + DESC_SIZE * index, _DESC.pack(addr & (2**64 - 1), length & 0xFFFFFFFF,
                                                                 flags & 0xFFFF, nxt & 0xFFFF))

    def write_table(self, descs: Sequence[Desc], gpa: int | None = None) -> tuple[int, int]:
        """Write an indirect table (at `gpa`, or freshly allocated) and return
        (gpa, byte length) for the descriptor that points to it."""
        raw = b"".join(_DESC.pack(a & (2**64 - 1), n & 0xFFFFFFFF, f & 0xFFFF, x & 0xFFFF) for a, n, f, x in descs)
        if gpa is None:
            gpa = self.alloc.alloc(max(len(raw), 1))
        self.mem.write(gpa, raw)
        return gpa, len(raw)

    def add_raw(self, descs: Sequence[Desc], at: int = 0, head: int | None = None, publish: bool = True) -> int:
        """Write `descs` verbatim at table indices at, at+1, ... and (unless
        `publish` is False) make `head` (default `at`) available. Nothing is
        checked: this is for building the chains a hostile guest would."""
        for k, (a, n, f, x) in enumerate(descs):
            self.write_desc(at + k, a, n, f, x)
        head = at if head is None else head
        if publish:
            self.publish(head)
        return head

    def publish(self, head: int) -> None:
        """Put `head` in the next available ring slot, then bump avail.idx."""
        self.write_avail_entry(self.avail_idx, head)
        self.set_avail_idx(self.avail_idx + 1)

    def write_avail_entry(self, slot: int, head: int) -> None:
        """Write avail.ring[slot % size] (any 16-bit value)."""
        self.mem.write_u16(self.avail_addr + 4 + 2 * (slot % self.size), head & 0xFFFF)

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value & 0xFFFF
        self.mem.write_u16(self.avail_addr + 2, self.avail_idx)

    def set_avail_flags(self, flags: int) -> None:
        """E.g. VIRTQ_AVAIL_F_NO_INTERRUPT."""
        self.mem.write_u16(self.avail_addr, flags & 0xFFFF)

    def set_used_event(self, value: int) -> None:
        """With event_idx: interrupt me once used.idx passes `value`."""
        self.mem.write_u16(self.avail_addr + 4 + 2 * self.size, value & 0xFFFF)

    # --- what the device wrote into the rings ---------------------------------
    @property
    def used_idx(self) -> int:
        return self.mem.read_u16(self.used_addr + 2)

    @property
    def used_flags(self) -> int:
        """VIRTQ_USED_F_NO_NOTIFY when the device asks not to be kicked."""
        return self.mem.read_u16(self.used_addr)

    @property
    def avail_event(self) -> int:
        """With event_idx: the device wants a kick once avail.idx passes this."""
        return self.mem.read_u16(self.used_addr + 4 + 8 * self.size)


class FakeInterrupt:
    """A `VirtioInterrupt` that records what a device signalled: the queues
    of `used()` calls in order, and how many config changes."""

    def __init__(self) -> None:
        self.used_calls: list[int] = []
        self.config_calls = 0

    def used(self, queue: int) -> None:
        self.used_calls.append(queue)

    def config_changed(self) -> None:
        self.config_calls += 1

    @property
    def config(self) -> int:  # the name some tests use
        return self.config_calls
