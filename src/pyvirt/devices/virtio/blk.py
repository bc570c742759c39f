"""virtio-blk: a disk for the guest, over any `BlockBackend`.

Specification: VIRTIO 1.2 section 5.2. One request queue. A request is a
descriptor chain laid out as

    device-readable:  le32 type; le32 reserved; le64 sector;  (the header)
                      data for OUT, 16-byte segments for DISCARD/WRITE_ZEROES
    device-writable:  data for IN and GET_ID; u8 status (the last byte)

and the device must not assume how those bytes are split over descriptors
(spec 2.6.4), so the header and the status byte may sit anywhere in their
part of the chain. Data goes straight between the backend and views of the
guest's buffers (preadv/pwritev): no copy.

A well-formed request always completes with a status: IOERR for sectors
outside the disk, misaligned lengths, writes to a read-only disk and host
I/O errors; UNSUPP for request types and flags we do not implement. A chain
with no room for a status (no writable byte, or a header shorter than 16
bytes) cannot be answered, so it is returned with nothing written, counted
and logged. A malformed ring puts the device in NEEDS_RESET.

Rate limiting: with a `RateLimiter`, a request that finds the buckets empty
is left in the available ring (the queue's position is stepped back) and
`next_deadline()` tells the I/O thread when to call `on_timer()` to go on;
nothing throttled is held inside the device, so a snapshot taken meanwhile
needs no extra state.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass

from ..._log import get_logger
from ...disk.backend import SECTOR_SIZE, SERIAL_LEN
from ...disk.errors import DiskError
from .device import BLOCK, COMMON_FEATURES, VirtioDevice
from .queue import VirtqueueError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ...disk.backend import BlockBackend
    from ...disk.ratelimit import RateLimiter
    from ...memory.guest import GuestMemory
    from ..protocols import VirtioInterrupt
    from concurrent.futures import ThreadPoolExecutor

    from .queue import Chain, Virtqueue

log = get_logger(__name__)

# feature bits (spec 5.2.3)
# Data requests at least this large run on a small thread pool, so several
# are in flight at once (preadv/pwritev release the GIL), as a real disk
# queue would; smaller ones cost less inline than a hand-off.
PARALLEL_MIN = 64 * 1024
WORKERS = 4

F_SIZE_MAX = 1 << 1
F_SEG_MAX = 1 << 2
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
F_DISCARD = 1 << 13
F_WRITE_ZEROES = 1 << 14

# request types and status values (spec 5.2.6)
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
DWZ_F_UNMAP = 1  # struct virtio_blk_discard_write_zeroes flags

HEADER = struct.Struct("<IIQ")  # type, reserved, sector
SEGMENT = struct.Struct("<QII")  # sector, num_sectors, flags
# struct virtio_blk_config up to write_zeroes_may_unmap (spec 5.2.4):
# capacity, size_max, seg_max, geometry (cylinders, heads, sectors), blk_size,
# topology (physical_block_exp, alignment_offset, min_io_size, opt_io_size),
# writeback, unused0, num_queues, max_discard_sectors, max_discard_seg,
# discard_sector_alignment, max_write_zeroes_sectors, max_write_zeroes_seg,
# write_zeroes_may_unmap, unused1[3]
CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")

SIZE_MAX = 1 << 20  # largest data descriptor the driver should send
MAX_DISCARD_SECTORS = 1 << 22  # 2 GiB per segment: a hole punch is cheap
MAX_WRITE_ZEROES_SECTORS = 1 << 18  # 128 MiB: may be written out as zeros, keep one request short
MAX_DWZ_SEG = 32


@dataclass(frozen=True)
class BlkState:
    """virtio-blk's saved state. The queue is saved by the transport; the
    path, mode and capacity are there to refuse restoring onto another disk."""

    device_features: int
    driver_features: int
    config: bytes
    path: str
    readonly: bool
    capacity: int  # in 512-byte sectors
    version: int = 1


@dataclass(frozen=True)
class BlkStatistics:
    reads: int = 0
    writes: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    flushes: int = 0
    discards: int = 0
    write_zeroes: int = 0
    io_errors: int = 0
    unsupported: int = 0
    bad_chains: int = 0  # returned unanswered: no header or no status byte
    throttled: int = 0


def _slice(views: Sequence[memoryview], start: int, length: int) -> list[memoryview]:
    """The views covering bytes [start, start+length) of `views` laid end to end."""
    out: list[memoryview] = []
    for v in views:
        if length <= 0:
            break
        n = len(v)
        if start >= n:
            start -= n
            continue
        take = min(n - start, length)
        out.append(v[start:start + take])
        length -= take
        start = 0
    return out


class VirtioBlk(VirtioDevice):
    """A virtio-blk device serving `backend`.

    `rate_limiter` throttles requests; `clock` (seconds, monotonic: the I/O
    thread compares `next_deadline()` with time.monotonic) must be the one
    the limiter's buckets use.
    """

    device_type = BLOCK
    num_queues = 1
    queue_max_size = 256
    name = "blk"

    def __init__(self, backend: BlockBackend, *, rate_limiter: RateLimiter | None = None,
                 clock: Callable[[], float] = time.monotonic, workers: int = WORKERS) -> None:
        super().__init__()
        self.backend = backend
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._inflight = 0
        self._drained = threading.Condition(self.lock)
        self._stats_lock = threading.Lock()
        self.rate_limiter = rate_limiter
        self._clock = clock
        self.capacity = backend.size // SECTOR_SIZE  # a partial last sector is not addressable
        features = COMMON_FEATURES | F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH
        if backend.readonly:
            features |= F_RO
        else:
            features |= F_DISCARD | F_WRITE_ZEROES
        self.device_features = features
        block = backend.block_size
        self._config = CONFIG.pack(
            self.capacity, SIZE_MAX, self.queue_max_size - 2,  # two descriptors carry header and status
            0, 0, 0, block,
            0, 0, 0, 0,  # topology (feature not offered)
            0, 0, 1,
            MAX_DISCARD_SECTORS, MAX_DWZ_SEG, max(block, 4096) // SECTOR_SIZE,
            MAX_WRITE_ZEROES_SECTORS, MAX_DWZ_SEG, 1 if backend.discard_supported else 0)
        self._deadline: float | None = None
        self._warned: set[str] = set()
        self._stats = dict.fromkeys(BlkStatistics.__dataclass_fields__, 0)

    # --- VirtioDevice hooks ---------------------------------------------------
    def config_bytes(self) -> bytes:
        return self._config

    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], interrupt: VirtioInterrupt) -> None:
        super().activate(mem, queues, interrupt)
        self._deadline = None

    def reset(self) -> None:
        with self.lock:
            self.drain()
            super().reset()
            self._deadline = None

    def drain(self) -> None:
        """Wait until no request is in flight on the worker pool (before a
        reset, a snapshot or closing the disk)."""
        with self.lock:
            while self._inflight:
                self._drained.wait()

    def queue_notify(self, index: int) -> None:
        with self.lock:
            if index == 0 and self._deadline is None:
                self._process()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.backend.close()

    def replace_backend(self, new: BlockBackend) -> BlockBackend:
        """Serve `new` from the next request on (a disk snapshot's overlay)
        and return the old backend still open: the caller closes it once it
        will not switch back (a failed snapshot switches back). `new` must look
        the same to the guest: size in sectors, mode and block size."""
        with self.lock:
            self.drain()  # nothing in flight on the old backend
            old = self.backend
            if (new.size // SECTOR_SIZE, new.readonly, new.block_size) != (self.capacity, old.readonly,
                                                                          old.block_size):
                raise ValueError(f"virtio-blk {old.path}: cannot switch to {new.path}: it has "
                                 f"{new.size // SECTOR_SIZE} sectors of {new.block_size} bytes "
                                 f"({'ro' if new.readonly else 'rw'}), the guest has {self.capacity} of "
                                 f"{old.block_size} ({'ro' if old.readonly else 'rw'})")
            self.backend = new
            return old

    # --- timers (called by the I/O thread) ------------------------------------
    def next_deadline(self) -> float | None:
        """When (on `clock`) `on_timer` should run: the rate limiter will have
        tokens for the request it stopped at. None when not throttled."""
        return self._deadline

    def on_timer(self) -> None:
        with self.lock:
            if self._deadline is None:
                return
            self._deadline = None
            self._process()

    # --- request processing ---------------------------------------------------
    def _process(self) -> None:
        if self.broken or self.mem is None or self.interrupt is None or not self.queues:
            return
        q = self.queues[0]
        try:
            while (chain := q.pop()) is not None:
                if self.rate_limiter is not None and not self._admit(chain):
                    # Leave the chain in the ring: it is walked again when the
                    # timer fires, so nothing throttled lives only in the device.
                    q.undo_pop()
                    break
                if self.workers and max(chain.readable_len, chain.writable_len) >= PARALLEL_MIN:
                    self._submit(q, self.mem, chain)
                    continue
                q.push(chain.head, self._serve(self.mem, chain))
        except VirtqueueError as e:
            self.needs_reset(f"{self.backend.path}: {e}")
        if q.should_notify():
            self.interrupt.used(0)

    def _submit(self, q: Virtqueue, mem: GuestMemory, chain: Chain) -> None:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="virtio-blk")
        self._inflight += 1
        self._pool.submit(self._serve_in_pool, q, mem, chain)

    def _serve_in_pool(self, q: Virtqueue, mem: GuestMemory, chain: Chain) -> None:
        try:
            written = self._serve(mem, chain)  # the I/O itself runs without the device lock
        finally:
            with self.lock:
                self._inflight -= 1
                # A reset waits for in-flight requests first (drain), so the
                # queue is still the one the chain came from.
                if not self.broken and self.interrupt is not None and self.queues and self.queues[0] is q:
                    try:
                        q.push(chain.head, written)
                    except VirtqueueError as e:
                        self.needs_reset(f"{self.backend.path}: {e}")
                    if q.should_notify():
                        self.interrupt.used(0)
                self._drained.notify_all()

    def _admit(self, chain: Chain) -> bool:
        """Pay the rate limiter for `chain`; False (and a deadline) if it can't."""
        assert self.rate_limiter is not None and self.mem is not None
        nbytes = 0
        if chain.readable_len >= HEADER.size:
            rtype = HEADER.unpack(chain.read(self.mem, HEADER.size))[0]
            if rtype == T_IN:
                nbytes = max(chain.writable_len - 1, 0)
            elif rtype == T_OUT:
                nbytes = chain.readable_len - HEADER.size
        ok, wait = self.rate_limiter.consume(nbytes)
        if not ok:
            self._count(throttled=1)
            self._deadline = self._clock() + wait
        return ok

    def _serve(self, mem: GuestMemory, chain: Chain) -> int:
        """Carry out one request; returns the bytes written into its writable part."""
        if chain.readable_len < HEADER.size or chain.writable_len < 1:
            self._count(bad_chains=1)
            self._warn("chain", f"virtio-blk {self.backend.path}: chain {chain.head} has "
                       f"{chain.readable_len} readable and {chain.writable_len} writable bytes, no room for a "
                       "request header and status; returned unanswered")
            return 0
        rtype, _, sector = HEADER.unpack(chain.read(mem, HEADER.size))
        wviews = chain.writable_views(mem)
        dlen = chain.writable_len - 1
        try:
            status, written = self._execute(mem, chain, rtype, sector, wviews, dlen)
        except (DiskError, OSError) as e:
            self._count(io_errors=1)
            self._warn("io", f"virtio-blk: {e}")
            status, written = S_IOERR, 0
        _slice(wviews, dlen, 1)[0][0] = status
        return written + 1

    def _execute(self, mem: GuestMemory, chain: Chain, rtype: int, sector: int,
                 wviews: list[memoryview], dlen: int) -> tuple[int, int]:
        """(status, data bytes written) of one request."""
        if rtype == T_IN:
            if not self._in_range(sector, dlen):
                return S_IOERR, 0
            n = self.backend.read_into(sector * SECTOR_SIZE, _slice(wviews, 0, dlen))
            self._count(reads=1, read_bytes=n)
            return S_OK, n
        if rtype == T_OUT:
            rlen = chain.readable_len - HEADER.size
            if self.backend.readonly or not self._in_range(sector, rlen):
                return S_IOERR, 0
            n = self.backend.write_from(sector * SECTOR_SIZE, _slice(chain.readable_views(mem), HEADER.size, rlen))
            self._count(writes=1, write_bytes=n)
            return S_OK, 0
        if rtype == T_FLUSH:
            self.backend.flush()
            self._count(flushes=1)
            return S_OK, 0
        if rtype == T_GET_ID:
            # Up to 20 bytes, NUL-padded when shorter (spec 5.2.6).
            serial = self.backend.id.encode("ascii", "replace")[:SERIAL_LEN].ljust(SERIAL_LEN, b"\0")
            return S_OK, chain.write(mem, serial[:dlen])
        if rtype in (T_DISCARD, T_WRITE_ZEROES):
            return self._discard_or_zero(mem, chain, rtype), 0
        self._count(unsupported=1)
        return S_UNSUPP, 0

    def _discard_or_zero(self, mem: GuestMemory, chain: Chain, rtype: int) -> int:
        discard = rtype == T_DISCARD
        if not self.negotiated(F_DISCARD if discard else F_WRITE_ZEROES):
            self._count(unsupported=1)
            return S_UNSUPP
        if self.backend.readonly:
            return S_IOERR
        plen = chain.readable_len - HEADER.size
        if plen <= 0 or plen % SEGMENT.size or plen // SEGMENT.size > MAX_DWZ_SEG:
            return S_IOERR
        payload = chain.read(mem, HEADER.size + plen)[HEADER.size:]  # a copy: checked once, used once
        segments = [SEGMENT.unpack_from(payload, i) for i in range(0, plen, SEGMENT.size)]
        limit = MAX_DISCARD_SECTORS if discard else MAX_WRITE_ZEROES_SECTORS
        # Check every segment before touching the disk, so a bad one changes nothing.
        for sector, count, flags in segments:
            if flags & ~DWZ_F_UNMAP or (discard and flags & DWZ_F_UNMAP):
                self._count(unsupported=1)
                return S_UNSUPP  # unknown flags, or unmap on discard (spec 5.2.6.2)
            if count > limit or not self._in_range(sector, count * SECTOR_SIZE):
                return S_IOERR
        for sector, count, flags in segments:
            if discard:
                self.backend.discard(sector * SECTOR_SIZE, count * SECTOR_SIZE)
                self._count(discards=1)
            else:
                self.backend.write_zeroes(sector * SECTOR_SIZE, count * SECTOR_SIZE, bool(flags & DWZ_F_UNMAP))
                self._count(write_zeroes=1)
        return S_OK

    def _count(self, **counts: int) -> None:
        # Pool workers and the I/O thread both count.
        with self._stats_lock:
            for k, n in counts.items():
                self._stats[k] += n

    def _in_range(self, sector: int, nbytes: int) -> bool:
        """Whether a transfer of `nbytes` (whole sectors) from `sector` lies inside the disk."""
        return nbytes % SECTOR_SIZE == 0 and sector + nbytes // SECTOR_SIZE <= self.capacity

    def _warn(self, kind: str, message: str) -> None:
        # The guest controls how often this happens: log the first of each kind,
        # count the rest (statistics()).
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("%s (further ones are counted, not logged)", message)

    # --- statistics and state ---------------------------------------------------
    def statistics(self) -> BlkStatistics:
        with self._stats_lock:
            stats = dict(self._stats)
        if self.rate_limiter is not None:
            stats["throttled"] = self.rate_limiter.throttled
        return BlkStatistics(**stats)

    def state(self) -> BlkState:
        with self.lock:
            self.drain()
            return BlkState(self.device_features, self.driver_features, self._config, self.backend.path,
                            self.backend.readonly, self.capacity)

    def restore(self, state: BlkState) -> None:
        """Take over a saved device. The state is untrusted: it must describe
        this disk (path, mode, size) and features this device offers."""
        from ..legacy._common import check_bool, check_bytes, check_int, check_state_type

        check_state_type(state, BlkState)
        check_int("virtio-blk device_features", state.device_features, 0, (1 << 64) - 1)
        check_int("virtio-blk driver_features", state.driver_features, 0, (1 << 64) - 1)
        check_bytes("virtio-blk config", state.config, CONFIG.size, exact=True)
        check_bool("virtio-blk readonly", state.readonly)
        check_int("virtio-blk capacity", state.capacity, 0, (1 << 64) - 1)
        if not isinstance(state.path, str):
            raise ValueError(f"virtio-blk path must be a str, got {type(state.path).__name__}")
        if state.path != self.backend.path or state.readonly != self.backend.readonly:
            raise ValueError(f"virtio-blk state is for {state.path!r} ({'ro' if state.readonly else 'rw'}), "
                             f"this device serves {self.backend.path!r} ({'ro' if self.backend.readonly else 'rw'})")
        if state.capacity != self.capacity or state.config != self._config:
            raise ValueError(f"virtio-blk {self.backend.path}: the disk changed since the state was saved "
                             f"({state.capacity} sectors then, {self.capacity} now, or other limits)")
        if state.device_features != self.device_features or state.driver_features & ~self.device_features:
            raise ValueError(f"virtio-blk features {state.driver_features:#x} of {state.device_features:#x} "
                             f"saved; this device offers {self.device_features:#x}")
        with self.lock:
            self.driver_features = state.driver_features
