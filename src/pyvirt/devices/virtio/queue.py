"""The split virtqueue, device side: take descriptor chains the driver made
available, return them through the used ring, decide when to interrupt.

Specification: Virtual I/O Device (VIRTIO) Version 1.2, section 2.7 (split
virtqueues). The three rings, all little-endian:

    descriptor table (align 16)  size * { le64 addr; le32 len; le16 flags; le16 next; }
    available ring   (align 2)   le16 flags; le16 idx; le16 ring[size]; le16 used_event;
    used ring        (align 4)   le16 flags; le16 idx; { le32 id; le32 len; } ring[size]; le16 avail_event;

The guest is hostile. `pop()` walks and validates a whole chain before it
returns it: every index, length, flag combination and buffer address is
checked, and anything malformed raises `VirtqueueError` (never another
exception), after which the device should set NEEDS_RESET. A returned
`Chain` holds plain (gpa, length) pairs that were checked to lie inside one
guest memory region, read once from guest memory, so a guest rewriting its
descriptors afterwards cannot change what the device sees.

Device code goes like this:

    while (chain := queue.pop()) is not None:
        n = serve(chain)              # chain.read / chain.write / *_views
        queue.push(chain.head, n)
    if queue.should_notify():
        interrupt.used(queue.index)

A device that turns guest notifications off while it works must, after
`set_notification(True)`, check `pending()` once more: the driver may have
added a buffer before it saw notifications back on.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...memory.guest import GuestMemory

# descriptor flags (spec 2.7.5)
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
# available ring flags (spec 2.7.6) and used ring flags (spec 2.7.8)
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

MAX_QUEUE_SIZE = 32768
# An indirect table may hold at most this many descriptors (as many as the
# largest queue): a bound on the work one chain can make us do.
MAX_INDIRECT_ENTRIES = 32768
# The used ring reports bytes written in a le32, so no chain may be longer.
MAX_CHAIN_LEN = (1 << 32) - 1

DESC_SIZE = 16

# Native formats on purpose: struct's explicit little-endian codes ("<H")
# load byte by byte, so reading avail.idx while the driver bumps it could see
# a torn index; native codes load with one memcpy (x86-64, the only host
# pyvirt runs on, is little-endian like the rings). Stores go through
# `_store`, never pack_into (see there).
_DESC = struct.Struct("QIHH")
_U16 = struct.Struct("H")
_ELEM = struct.Struct("II")

# Taking and dropping a lock is a locked instruction on x86, a full memory
# barrier. The spec needs one between the device's store of used.idx (or
# avail_event) and its load of used_event/flags (or avail.idx); without it the
# store can still sit in this CPU's store buffer while the guest, on another
# CPU, decides not to notify or not to be interrupted: a lost wakeup.
_FENCE = threading.Lock()


def ring_sizes(size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, available ring and used ring for a queue
    of `size` entries (with the event-index fields, which we always allow for)."""
    return DESC_SIZE * size, 6 + 2 * size, 6 + 8 * size


class VirtqueueError(Exception):
    """A malformed ring or descriptor chain, or an invalid queue setup or state.
    The message says what is wrong and where (queue, descriptor index, address)."""


class Chain:
    """One available descriptor chain, walked and validated by `Virtqueue.pop`.

    `readable` and `writable` are the device-readable and device-writable
    buffers as (guest address, length) pairs in chain order, zero-length
    descriptors left out. Each pair lies inside a single guest memory region,
    so `mem.view(gpa, length)` on it cannot fail. Return the chain with
    `queue.push(chain.head, bytes_written)`.
    """

    __slots__ = ("head", "readable", "writable", "_rlen", "_wlen")
    head: int
    readable: list[tuple[int, int]]
    writable: list[tuple[int, int]]

    def __init__(self, head: int, readable: list[tuple[int, int]], writable: list[tuple[int, int]]) -> None:
        self.head = head
        self.readable = readable
        self.writable = writable
        self._rlen = sum(n for _, n in readable)
        self._wlen = sum(n for _, n in writable)

    @property
    def readable_len(self) -> int:
        return self._rlen

    @property
    def writable_len(self) -> int:
        return self._wlen

    def read(self, mem: GuestMemory, limit: int | None = None) -> bytes:
        """The readable buffers gathered into one bytes object, at most `limit`
        bytes. A copy: parse guest headers from this, not from views, so the
        guest cannot change them between a check and a use."""
        if limit is None or limit >= self._rlen:
            if len(self.readable) == 1:
                gpa, n = self.readable[0]
                return bytes(mem.view(gpa, n))
            return b"".join([mem.view(gpa, n) for gpa, n in self.readable])
        parts = []
        left = max(limit, 0)
        for gpa, n in self.readable:
            if left <= 0:
                break
            take = n if n < left else left
            parts.append(mem.view(gpa, take))
            left -= take
        return b"".join(parts)

    def readable_views(self, mem: GuestMemory) -> list[memoryview]:
        """Zero-copy views of the readable buffers (e.g. for os.pwritev)."""
        return [mem.view(gpa, n) for gpa, n in self.readable]

    def writable_views(self, mem: GuestMemory) -> list[memoryview]:
        """Zero-copy views of the writable buffers (e.g. for os.preadv)."""
        return [mem.view(gpa, n) for gpa, n in self.writable]

    def write(self, mem: GuestMemory, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Scatter `data` into the writable buffers, starting `offset` bytes
        into the writable part. Returns how many bytes were written: fewer
        than len(data) when the buffers end first."""
        if offset < 0:
            raise ValueError(f"negative offset {offset} into a descriptor chain")
        src = memoryview(data)
        if src.ndim != 1 or src.itemsize != 1:
            src = src.cast("B")
        total = len(src)
        done = 0
        for gpa, n in self.writable:
            if done >= total:
                break
            if offset >= n:
                offset -= n
                continue
            take = min(n - offset, total - done)
            mem.view(gpa + offset, take)[:] = src[done:done + take]
            done += take
            offset = 0
        return done

    def __repr__(self) -> str:
        return f"Chain(head={self.head}, readable={self.readable!r}, writable={self.writable!r})"


def _new_chain(head: int, readable: list[tuple[int, int]], writable: list[tuple[int, int]],
               rlen: int, wlen: int) -> Chain:
    # pop() already summed the lengths while it walked; skip __init__'s sums.
    c = Chain.__new__(Chain)
    c.head, c.readable, c.writable, c._rlen, c._wlen = head, readable, writable, rlen, wlen
    return c


@dataclass(frozen=True)
class QueueState:
    """A virtqueue's saved state: where the rings are and how far the device
    got. Loaded state is untrusted; `Virtqueue.from_state` validates it.
    The rings' contents live in guest memory and are saved with it."""

    size: int
    desc: int
    avail: int
    used: int
    next_avail: int = 0  # free-running 16-bit index of the next chain to pop
    next_used: int = 0  # free-running 16-bit index of the next used entry (= used.idx)
    event_idx: bool = False
    indirect: bool = False
    signalled_used: int = 0  # next_used when should_notify() last decided
    version: int = 1


def _store(view: memoryview, offset: int, data: bytes) -> None:
    """Write a ring field the driver may be polling, in one store.

    Not struct.pack_into: it zero-fills the target before storing the value,
    so a driver polling used.idx could read 0 in between (seen: a guest took
    idx 0 for thousands of new entries). A slice assignment is one memcpy of
    the final bytes."""
    view[offset:offset + len(data)] = data


def _ring_view(mem: GuestMemory, gpa: int, length: int, what: str, index: int) -> tuple[memoryview, int]:
    """The region view holding a whole ring, and the ring's offset in it.

    Holding the region's own view adds no buffer export, so the region can
    still be unmapped at VM teardown, and each ring access is one struct call
    with no address lookup."""
    for r in mem.regions:
        if r.gpa <= gpa and gpa + length <= r.gpa + r.size:
            return r.view, gpa - r.gpa
    raise VirtqueueError(f"virtqueue {index}: {what} at {gpa:#x}+{length:#x} is not inside guest memory")


def _in_table(table: int) -> str:
    return f" in the indirect table at {table:#x}" if table else ""


class Virtqueue:
    """The device side of one split virtqueue over guest memory.

    `size`, `desc`, `avail`, `used`, `index`, `event_idx` and `indirect` are
    read-only after construction; `next_avail` and `next_used` are the
    free-running 16-bit indices the device is at.
    """

    __slots__ = ("mem", "size", "desc", "avail", "used", "index", "event_idx", "indirect",
                 "next_avail", "next_used", "signalled_used", "_mask",
                 "_dv", "_do", "_av", "_ao", "_uv", "_uo")

    def __init__(self, mem: GuestMemory, size: int, desc: int, avail: int, used: int, *,
                 event_idx: bool = False, indirect: bool = False, index: int = 0) -> None:
        for name, v in (("size", size), ("desc", desc), ("avail", avail), ("used", used), ("index", index)):
            if type(v) is not int:
                raise VirtqueueError(f"virtqueue {index!r}: {name} must be an int, not {type(v).__name__}")
        if type(event_idx) is not bool or type(indirect) is not bool:
            raise VirtqueueError(f"virtqueue {index}: event_idx and indirect must be bools")
        if not 1 <= size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise VirtqueueError(f"virtqueue {index}: size {size} is not a power of two in 1..{MAX_QUEUE_SIZE}")
        for what, gpa, align in (("descriptor table", desc, 16), ("available ring", avail, 2),
                                 ("used ring", used, 4)):
            if gpa % align:
                raise VirtqueueError(f"virtqueue {index}: {what} at {gpa:#x} is not {align}-byte aligned")
        dlen, alen, ulen = ring_sizes(size)
        self._dv, self._do = _ring_view(mem, desc, dlen, "descriptor table", index)
        self._av, self._ao = _ring_view(mem, avail, alen, "available ring", index)
        self._uv, self._uo = _ring_view(mem, used, ulen, "used ring", index)
        self.mem = mem
        self.size, self.desc, self.avail, self.used = size, desc, avail, used
        self.index, self.event_idx, self.indirect = index, event_idx, indirect
        self._mask = size - 1
        self.next_avail = 0
        self.next_used = 0
        self.signalled_used = 0

    # --- the hot path -----------------------------------------------------------
    def pop(self) -> Chain | None:
        """The next available chain, or None if the driver offered none.

        Raises VirtqueueError if the available ring or the chain is malformed;
        the chain is then not consumed, so the queue stays broken (every later
        pop raises again) until the driver resets the device."""
        av, ao = self._av, self._ao
        nxt = self.next_avail
        # Read avail.idx once, then the ring entry: the driver writes the entry
        # before it bumps idx, so every entry below idx is complete.
        idx = _U16.unpack_from(av, ao + 2)[0]
        if idx == nxt:
            if not self.event_idx:
                return None
            # Going idle: ask for a kick on the very next buffer (avail_event =
            # the index we wait for), then look once more, since the driver may
            # have added one before it could see that request.
            _store(self._uv, self._uo + 4 + 8 * self.size, _U16.pack(nxt))
            with _FENCE:
                pass
            idx = _U16.unpack_from(av, ao + 2)[0]
            if idx == nxt:
                return None
        if (idx - nxt) & 0xFFFF > self.size:
            raise VirtqueueError(f"virtqueue {self.index}: available index {idx} is more than the queue size "
                                 f"{self.size} ahead of the device's {nxt}")
        head = _U16.unpack_from(av, ao + 4 + 2 * (nxt & self._mask))[0]
        chain = self._walk(head, nxt)
        self.next_avail = (nxt + 1) & 0xFFFF
        return chain

    def _walk(self, head: int, slot: int) -> Chain:
        size = self.size
        if head >= size:
            raise VirtqueueError(f"virtqueue {self.index}: available ring entry {slot} names descriptor {head}, "
                                 f"beyond the queue size {size}")
        contains = self.mem.contains
        unpack = _DESC.unpack_from
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        rlen = wlen = 0
        view, base = self._dv, self._do
        table = 0  # guest address of the indirect table being walked, 0 in the ring's table
        limit = size  # descriptors in the table being walked: also the longest loop-free chain
        count = 0
        i = head
        try:
            while True:
                count += 1
                if count > limit:
                    raise self._error(head, f"more than {limit} descriptors, the chain loops{_in_table(table)}")
                addr, length, flags, nxt = unpack(view, base + DESC_SIZE * i)
                if flags & VIRTQ_DESC_F_INDIRECT:
                    if table:
                        raise self._error(head, f"descriptor {i} of the indirect table at {table:#x} is itself "
                                                f"indirect (nested tables are forbidden)")
                    if not self.indirect:
                        raise self._error(head, f"descriptor {i} is indirect but VIRTIO_F_INDIRECT_DESC "
                                                f"was not negotiated")
                    if flags & VIRTQ_DESC_F_NEXT:
                        raise self._error(head, f"descriptor {i} has both INDIRECT and NEXT set")
                    if length == 0 or length % DESC_SIZE or length > DESC_SIZE * MAX_INDIRECT_ENTRIES:
                        raise self._error(head, f"descriptor {i} points to an indirect table of {length:#x} bytes, "
                                                f"not a positive multiple of {DESC_SIZE} up to "
                                                f"{MAX_INDIRECT_ENTRIES} entries")
                    if not contains(addr, length):
                        raise self._error(head, f"indirect table at {addr:#x}+{length:#x} (descriptor {i}) "
                                                f"is not inside guest memory")
                    # The table is read in place, once per descriptor, like the ring's own table.
                    view, base, table = self.mem.view(addr, length), 0, addr
                    limit, count, i = length // DESC_SIZE, 0, 0
                    continue
                if length:
                    if not contains(addr, length):
                        raise self._error(head, f"buffer {addr:#x}+{length:#x} of descriptor {i}{_in_table(table)} "
                                                f"is not inside guest memory")
                    if flags & VIRTQ_DESC_F_WRITE:
                        writable.append((addr, length))
                        wlen += length
                    else:
                        if writable:
                            raise self._error(head, f"device-readable descriptor {i}{_in_table(table)} follows "
                                                    f"a device-writable one")
                        readable.append((addr, length))
                        rlen += length
                    if rlen + wlen > MAX_CHAIN_LEN:
                        raise self._error(head, f"buffers add up to more than {MAX_CHAIN_LEN:#x} bytes")
                if not flags & VIRTQ_DESC_F_NEXT:
                    return _new_chain(head, readable, writable, rlen, wlen)
                if nxt >= limit:
                    raise self._error(head, f"descriptor {i}{_in_table(table)} links to descriptor {nxt}, "
                                            f"beyond the table's {limit} entries")
                i = nxt
        except (ValueError, struct.error) as e:  # GuestMemoryError is a ValueError
            raise self._error(head, str(e)) from e

    def _error(self, head: int, text: str) -> VirtqueueError:
        # Messages are built only on the error path: pop() allocates nothing
        # but the chain it returns.
        return VirtqueueError(f"virtqueue {self.index} chain {head}: {text}")

    def undo_pop(self, n: int = 1) -> None:
        """Give back the last `n` chains popped and not pushed: the next pop()
        walks them again (they are still in the available ring). For a device
        that took a chain it cannot use yet (no rx room, throttled)."""
        self.next_avail = (self.next_avail - n) & 0xFFFF

    def push(self, head: int, written: int) -> None:
        """Return chain `head` to the driver, reporting `written` bytes written
        into its writable buffers."""
        if not 0 <= head < self.size:
            raise VirtqueueError(f"virtqueue {self.index}: push of descriptor {head}, "
                                 f"beyond the queue size {self.size}")
        if not 0 <= written <= MAX_CHAIN_LEN:
            raise VirtqueueError(f"virtqueue {self.index}: push of chain {head} with {written} bytes written")
        n = self.next_used
        # The entry first, then idx: the driver trusts every entry below idx.
        _store(self._uv, self._uo + 4 + 8 * (n & self._mask), _ELEM.pack(head, written))
        n = (n + 1) & 0xFFFF
        self.next_used = n
        _store(self._uv, self._uo + 2, _U16.pack(n))

    def should_notify(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the
        last call: never for nothing; else, with event_idx, when used.idx moved
        past used_event since the last decision (spec 2.7.10), without it
        unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT."""
        new = self.next_used
        old = self.signalled_used
        self.signalled_used = new
        if new == old:
            return False
        with _FENCE:
            pass
        if self.event_idx:
            used_event = _U16.unpack_from(self._av, self._ao + 4 + 2 * self.size)[0]
            # vring_need_event: did [old, new) cross used_event, modulo 2^16?
            return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF
        return not _U16.unpack_from(self._av, self._ao)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT

    def pending(self) -> bool:
        """Whether the driver made chains available that pop() has not taken."""
        return _U16.unpack_from(self._av, self._ao + 2)[0] != self.next_avail

    def set_notification(self, enabled: bool) -> None:
        """Ask the driver to notify (kick) on new buffers, or not to.

        Without event_idx this sets or clears VIRTQ_USED_F_NO_NOTIFY. With it,
        enabling writes avail_event = next_avail (notify on the next buffer);
        disabling leaves avail_event stale, so the driver kicks at most once
        more. Either way it is a hint: check pending() after enabling."""
        if self.event_idx:
            if enabled:
                _store(self._uv, self._uo + 4 + 8 * self.size, _U16.pack(self.next_avail))
        else:
            _store(self._uv, self._uo, _U16.pack(0 if enabled else VIRTQ_USED_F_NO_NOTIFY))
        if enabled:
            # So the caller's pending() check cannot be ordered before this store.
            with _FENCE:
                pass

    # --- state ----------------------------------------------------------------
    def state(self) -> QueueState:
        return QueueState(self.size, self.desc, self.avail, self.used, self.next_avail, self.next_used,
                          self.event_idx, self.indirect, self.signalled_used)

    @classmethod
    def from_state(cls, mem: GuestMemory, state: QueueState, *, index: int = 0) -> "Virtqueue":
        """A queue continuing from saved state. The state is untrusted: wrong
        types, versions, ring placement or indices raise VirtqueueError."""
        if not isinstance(state, QueueState):
            raise VirtqueueError(f"virtqueue {index}: state is a {type(state).__name__}, not a QueueState")
        if type(state.version) is not int or state.version != 1:
            raise VirtqueueError(f"virtqueue {index}: unknown queue state version {state.version!r}")
        for name in ("next_avail", "next_used", "signalled_used"):
            v = getattr(state, name)
            if type(v) is not int or not 0 <= v <= 0xFFFF:
                raise VirtqueueError(f"virtqueue {index}: saved {name} {v!r} is not a 16-bit index")
        # Any 16-bit indices are safe, so none are refused: pop() checks
        # avail.idx against next_avail, and a guest can drive next_avail more
        # than `size` past next_used (by making one head available twice).
        q = cls(mem, state.size, state.desc, state.avail, state.used,
                event_idx=state.event_idx, indirect=state.indirect, index=index)
        q.next_avail, q.next_used, q.signalled_used = state.next_avail, state.next_used, state.signalled_used
        return q

    def __repr__(self) -> str:
        return (f"Virtqueue(index={self.index}, size={self.size}, desc={self.desc:#x}, avail={self.avail:#x}, "
                f"used={self.used:#x}, next_avail={self.next_avail}, next_used={self.next_used})")
