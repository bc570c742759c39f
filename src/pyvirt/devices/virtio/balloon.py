"""virtio-balloon (spec 5.5): the host asks the guest to give memory back.

The host sets a target (`set_target(pages)`, config `num_pages`); the
guest's driver allocates that many pages inside the guest and lists their
4 KiB page frame numbers (le32 PFNs) on the inflate queue; the device then
drops the host memory behind them (`discard(gpa, length)`, madvise
MADV_DONTNEED on the mapping: the pages read back as zeros and cost the host
nothing until touched). When the target falls the guest lists pages on the
deflate queue and simply uses them again; nothing is needed on our side.
The driver reports how many pages it holds in config `actual`.

Queues, in the order the driver numbers them: 0 inflateq, 1 deflateq, then
statsq if VIRTIO_BALLOON_F_STATS_VQ and the free page reporting queue if
VIRTIO_BALLOON_F_REPORTING was negotiated (spec 5.5.2; an absent queue takes
no index, so reporting is queue 3 with stats and 2 without).

Statistics (5.5.6.3): the driver keeps one buffer of (le16 tag, le64 value)
pairs on the statsq. The device holds it, and returning it (used ring) is
the request for fresh numbers, which come back in the next buffer. So
`request_statistics()` pushes the held buffer; `stats_interval` does that
periodically from the I/O thread's timer.

Free page reporting (5.5.6.5): the driver hands over buffers that *are*
free guest memory, each descriptor one free block; the device discards them
and returns the buffers, after which the guest may use the pages again.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from ..._log import get_logger
from .device import BALLOON, VirtioDevice
from .queue import VirtqueueError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ...memory.guest import GuestMemory
    from ..protocols import VirtioInterrupt
    from .queue import Chain, Virtqueue

log = get_logger(__name__)

# feature bits (spec 5.5.3)
F_MUST_TELL_HOST, F_STATS_VQ, F_DEFLATE_ON_OOM, F_FREE_PAGE_HINT, F_PAGE_POISON, F_REPORTING = (
    1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5)

INFLATE, DEFLATE = 0, 1
PAGE = 4096  # the balloon's page, whatever the guest's (VIRTIO_BALLOON_PFN_SHIFT 12)
MAX_PFN_BYTES = 1 << 20  # PFNs read from one chain (Linux sends at most 256)
MAX_STATS_BYTES = 4096  # 409 tags, far more than the 16 Linux knows
_STAT = struct.Struct("<HQ")  # struct virtio_balloon_stat, packed: 10 bytes

# Tags 0-9 are the spec's; 10-15 are Linux's extensions (linux/virtio_balloon.h).
STAT_NAMES = ("swap_in", "swap_out", "major_faults", "minor_faults", "free_memory", "total_memory",
              "available_memory", "disk_caches", "hugetlb_allocations", "hugetlb_failures",
              "oom_kills", "alloc_stalls", "async_scans", "direct_scans", "async_reclaims", "direct_reclaims")


@dataclass(frozen=True)
class BalloonState:
    """The balloon across snapshot/restore. `stats_head` is the statsq buffer
    the device holds (-1: none): it was taken from the ring, so only the
    device remembers to return it."""

    num_pages: int = 0
    actual: int = 0
    stats: tuple[tuple[int, int], ...] = ()  # the latest (tag, value) pairs
    stats_head: int = -1
    version: int = 1


class VirtioBalloon(VirtioDevice):
    device_type = BALLOON
    queue_max_size = 256
    name = "balloon"

    def __init__(self, discard: Callable[[int, int], None], *, stats: bool = True, deflate_on_oom: bool = True,
                 free_page_reporting: bool = True, stats_interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if stats_interval is not None and not stats_interval > 0:
            raise ValueError(f"balloon statistics interval must be positive, got {stats_interval!r}")
        self._discard = discard
        self.device_features |= ((F_STATS_VQ if stats else 0) | (F_DEFLATE_ON_OOM if deflate_on_oom else 0)
                                 | (F_REPORTING if free_page_reporting else 0))
        self.num_queues = 2 + stats + free_page_reporting
        self.num_pages = 0  # the host's target
        self.actual = 0  # what the guest says it holds
        self._stats: dict[int, int] = {}
        self._stats_head = -1
        self._stats_interval = stats_interval
        self._clock = clock
        self._next_request: float | None = None
        self._q: dict[int, Virtqueue] = {}
        self.inflated = self.deflated = self.reported = self.ignored = 0  # pages, for statistics
        self._discard_failed = False

    # --- config space ---------------------------------------------------------
    def config_bytes(self) -> bytes:
        return struct.pack("<II", self.num_pages, self.actual)

    def config_write(self, offset: int, size: int, value: int) -> None:
        # Only `actual` (bytes 4..7) is the driver's to write; any width that lands in it.
        if size <= 0 or offset < 4 or offset + size > 8:
            return
        raw = bytearray(struct.pack("<I", self.actual))
        raw[offset - 4:offset - 4 + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self.actual = struct.unpack("<I", raw)[0]

    def set_target(self, pages: int) -> None:
        """Ask the guest to hold `pages` 4 KiB pages in the balloon."""
        if not isinstance(pages, int) or not 0 <= pages <= 0xFFFFFFFF:
            raise ValueError(f"balloon target {pages!r} must be 0..{0xFFFFFFFF} pages")
        with self.lock:
            self.num_pages = pages
            if self.interrupt is not None:
                self.interrupt.config_changed()

    # --- queue numbering --------------------------------------------------------
    def _stats_index(self) -> int | None:
        return 2 if self.negotiated(F_STATS_VQ) else None

    def _reporting_index(self) -> int | None:
        if not self.negotiated(F_REPORTING):
            return None
        return 2 + self.negotiated(F_STATS_VQ) + self.negotiated(F_FREE_PAGE_HINT)

    # --- life cycle -----------------------------------------------------------
    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], interrupt: VirtioInterrupt) -> None:
        with self.lock:
            super().activate(mem, queues, interrupt)
            self._q = {q.index: q for q in queues}  # only the queues the driver enabled
            if self._stats_interval is not None and self._stats_index() is not None:
                self._next_request = self._clock() + self._stats_interval

    def reset(self) -> None:
        with self.lock:
            super().reset()
            self._q = {}
            self.actual = 0
            self._stats_head = -1
            self._next_request = None

    def queue_notify(self, index: int) -> None:
        with self.lock:
            q, mem = self._q.get(index), self.mem
            if q is None or mem is None or self.broken:
                return
            try:
                if index in (INFLATE, DEFLATE):
                    self._pfn_queue(q, mem, index == INFLATE)
                elif index == self._stats_index():
                    self._stats_queue(q, mem)
                elif index == self._reporting_index():
                    self._reporting_queue(q, mem)
            except VirtqueueError as e:
                self.needs_reset(str(e))
            self._notify(q)

    def _notify(self, q: Virtqueue) -> None:
        if q.should_notify() and self.interrupt is not None:
            self.interrupt.used(q.index)

    # --- inflate and deflate ------------------------------------------------------
    def _pfn_queue(self, q: Virtqueue, mem: GuestMemory, inflate: bool) -> None:
        while (chain := q.pop()) is not None:
            raw = chain.read(mem, MAX_PFN_BYTES)
            pfns = struct.unpack_from(f"<{len(raw) // 4}I", raw)
            if inflate:
                self._inflate(mem, pfns)
            else:
                self.deflated += len(pfns)  # the guest reuses them; the host faults them back in
            q.push(chain.head, 0)

    def _inflate(self, mem: GuestMemory, pfns: Sequence[int]) -> None:
        """Discard the pages, merging runs of consecutive PFNs in one region
        into one call; PFNs outside guest memory are ignored."""
        start = end = -1
        for pfn in pfns:
            gpa = pfn * PAGE
            if gpa == end and mem.contains(start, end + PAGE - start):
                end += PAGE
                continue
            if start >= 0:
                self._drop(start, end - start)
                start = -1
            if mem.contains(gpa, PAGE):
                start, end = gpa, gpa + PAGE
            else:
                self.ignored += 1
        if start >= 0:
            self._drop(start, end - start)
        self.inflated += len(pfns)

    def _drop(self, gpa: int, length: int) -> None:
        try:
            self._discard(gpa, length)
        except (OSError, ValueError) as e:
            # The memory stays allocated, which is safe; say so once.
            if not self._discard_failed:
                self._discard_failed = True
                log.warning("virtio-balloon: cannot discard %#x+%#x: %s", gpa, length, e)

    # --- free page reporting ------------------------------------------------------
    def _reporting_queue(self, q: Virtqueue, mem: GuestMemory) -> None:
        while (chain := q.pop()) is not None:
            # Each device-writable buffer is a free block (spec 5.5.6.5.1).
            for gpa, n in chain.writable:
                lo = -(-gpa // PAGE) * PAGE  # whole pages only: never a neighbour's data
                hi = (gpa + n) // PAGE * PAGE
                if hi > lo:
                    self._drop(lo, hi - lo)
                    self.reported += (hi - lo) // PAGE
            q.push(chain.head, 0)

    # --- statistics -------------------------------------------------------------
    def _stats_queue(self, q: Virtqueue, mem: GuestMemory) -> None:
        while (chain := q.pop()) is not None:
            self._parse_stats(chain, mem)
            if self._stats_head >= 0:
                q.push(self._stats_head, 0)  # a second buffer: give the older one back
            self._stats_head = chain.head

    def _parse_stats(self, chain: Chain, mem: GuestMemory) -> None:
        raw = chain.read(mem, MAX_STATS_BYTES)
        for tag, value in _STAT.iter_unpack(raw[:len(raw) // _STAT.size * _STAT.size]):
            self._stats[tag] = value

    def request_statistics(self) -> bool:
        """Ask the guest for fresh numbers (returns the buffer it left us).
        False if there is no buffer to return yet."""
        with self.lock:
            index = self._stats_index()
            q = self._q.get(index) if index is not None else None
            if q is None or self._stats_head < 0 or self.broken:
                return False
            try:
                q.push(self._stats_head, 0)
            except VirtqueueError as e:  # a head from restored state that does not fit this queue
                self.needs_reset(str(e))
                return False
            self._stats_head = -1
            self._notify(q)
            return True

    def next_deadline(self) -> float | None:
        return self._next_request

    def on_timer(self) -> None:
        with self.lock:
            if self._next_request is None or self._stats_interval is None:
                return
            if self._clock() >= self._next_request:
                self._next_request = self._clock() + self._stats_interval
                self.request_statistics()

    def statistics(self) -> dict[str, int]:
        """The guest's latest memory statistics by name (only those it
        reported; sizes in bytes), plus the balloon's target and actual size."""
        with self.lock:
            out = {STAT_NAMES[t] if t < len(STAT_NAMES) else f"tag_{t}": v for t, v in sorted(self._stats.items())}
            out.update(target_pages=self.num_pages, actual_pages=self.actual, inflated_pages=self.inflated,
                       deflated_pages=self.deflated, reported_pages=self.reported, ignored_pfns=self.ignored)
            return out

    # --- state ----------------------------------------------------------------
    def state(self) -> BalloonState:
        with self.lock:
            return BalloonState(num_pages=self.num_pages, actual=self.actual,
                                stats=tuple(sorted(self._stats.items())), stats_head=self._stats_head)

    def restore(self, state: BalloonState) -> None:
        from ..legacy._common import check_int, check_state_type

        check_state_type(state, BalloonState)
        check_int("balloon num_pages", state.num_pages, 0, 0xFFFFFFFF)
        check_int("balloon actual", state.actual, 0, 0xFFFFFFFF)
        check_int("balloon stats_head", state.stats_head, -1, 32767)
        if not isinstance(state.stats, tuple) or len(state.stats) > MAX_STATS_BYTES // _STAT.size:
            raise ValueError("balloon stats must be a tuple of at most 409 (tag, value) pairs")
        for pair in state.stats:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(f"balloon stats entry {pair!r} is not a (tag, value) pair")
            check_int("balloon stats tag", pair[0], 0, 0xFFFF)
            check_int("balloon stats value", pair[1], 0, (1 << 64) - 1)
        with self.lock:
            self.num_pages, self.actual = state.num_pages, state.actual
            self._stats = dict(state.stats)
            self._stats_head = state.stats_head
