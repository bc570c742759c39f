"""virtio-net (spec 5.1): an Ethernet card whose wire is a host backend.

Queues: 0 receiveq (host -> guest), 1 transmitq (guest -> host); no control
queue and one queue pair. Every frame on either queue starts with the
12-byte `struct virtio_net_hdr_v1` (flags, gso_type, hdr_len, gso_size,
csum_start, csum_offset, num_buffers). The backend speaks the same header
(a TAP opened with IFF_VNET_HDR and TUNSETVNETHDRSZ 12), so the device
passes it through untouched both ways and checksum/segmentation offloads
cost nothing here. Only num_buffers is ours to write on receive.

Guest memory is touched once: transmit is one `writev` of the chain's
buffers, receive one `readv` straight into the guest's buffers.

Receive without buffers. When the guest has not posted enough receive
buffers for the largest frame it may get, the device stops watching the
backend (`host_fds()` leaves it out) instead of reading and dropping: frames
wait in the kernel (a TAP queues up to txqueuelen frames, then the kernel
drops and counts them), nothing blocks the I/O thread, and the guest's next
receive-queue notification resumes reading. Chains taken from the ring
while looking for space and not used are put back (`Virtqueue.undo_pop`), so the
device never holds guest buffers between calls and has none to save.

Transmit never waits either: a frame the backend refuses (EAGAIN on a full
socket) is dropped and counted, as a real NIC drops on a full wire queue.

Rate limiting (optional, one limiter per direction, anything with
`consume(nbytes) -> (ok, wait)`, e.g. `pyvirt.disk.ratelimit.RateLimiter`):
transmit asks before sending and, refused, puts the chain back and retries
from the I/O thread's timer (`next_deadline`/`on_timer`); receive cannot
know a frame's size before reading it, so it delivers the frame and then
stops reading until the limiter accepts that frame's bytes.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass

from ..._log import get_logger
from .device import NET, VirtioDevice
from .queue import VirtqueueError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Protocol

    from ...memory.guest import GuestMemory
    from ..protocols import VirtioInterrupt
    from .queue import Chain, Virtqueue

    class NetBackend(Protocol):
        """Where frames go: a TAP (`pyvirt.net.tap.Tap`) or a datagram socket.
        Each call moves one frame including its 12-byte virtio_net_hdr_v1."""

        def fileno(self) -> int: ...

        def send(self, bufs: Sequence[memoryview]) -> int: ...

        def recv_into(self, bufs: Sequence[memoryview]) -> int: ...

        def set_offload(self, *, csum: bool, tso4: bool, tso6: bool, ecn: bool = False) -> None: ...

        def close(self) -> None: ...

    class RateLimit(Protocol):
        def consume(self, nbytes: int) -> tuple[bool, float]: ...

log = get_logger(__name__)

# feature bits (spec 5.1.3)
F_CSUM, F_GUEST_CSUM, F_MTU, F_MAC = 1 << 0, 1 << 1, 1 << 3, 1 << 5
F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_ECN, F_GUEST_UFO = 1 << 7, 1 << 8, 1 << 9, 1 << 10
F_HOST_TSO4, F_HOST_TSO6, F_HOST_ECN = 1 << 11, 1 << 12, 1 << 13
F_MRG_RXBUF, F_STATUS = 1 << 15, 1 << 16

S_LINK_UP = 1  # config status (spec 5.1.4)

RX, TX = 0, 1
HDR_SIZE = 12  # struct virtio_net_hdr_v1
_NUM_BUFFERS = 10  # its last field, le16
ETH_OVERHEAD = 14 + 4  # Ethernet header and one VLAN tag
MAX_GSO_FRAME = 65535 + ETH_OVERHEAD  # the most a TAP hands over with TSO/GRO
MAX_TX = HDR_SIZE + MAX_GSO_FRAME

# readv/writev take at most this many buffers (IOV_MAX): a receive chain with
# more gets its first IOV_MAX filled, a transmit chain with more is dropped.
IOV_MAX = 1024
# After an unexpected receive error, wait this long before reading again, so
# a persistent one (a TAP detached underneath us) cannot spin the I/O thread.
RX_ERROR_BACKOFF = 1.0

# Frames per call before yielding the I/O thread to other devices; the rest
# is picked up at once through a zero-delay timer (tx) or epoll (rx).
BUDGET = 64


def random_mac() -> bytes:
    """A locally administered unicast address (bit 1 of byte 0 set, bit 0 clear)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return bytes(b)


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    try:
        raw = bytes(int(p, 16) for p in parts)
    except ValueError:
        raw = b""
    if len(parts) != 6 or len(raw) != 6 or any(len(p) not in (1, 2) for p in parts):
        raise ValueError(f"{text!r} is not a MAC address like 52:54:00:12:34:56")
    if raw[0] & 1:
        raise ValueError(f"{text} is a multicast address; a NIC needs a unicast one")
    return raw


class DatagramBackend:
    """A SOCK_DGRAM or SOCK_SEQPACKET socket standing in for a TAP: each
    datagram is one virtio_net_hdr_v1 + Ethernet frame. Used by tests, and
    to wire two VMs' NICs together through a socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, bufs: Sequence[memoryview]) -> int:
        return os.writev(self.sock.fileno(), bufs)

    def recv_into(self, bufs: Sequence[memoryview]) -> int:
        return os.readv(self.sock.fileno(), bufs)

    def set_offload(self, *, csum: bool, tso4: bool, tso6: bool, ecn: bool = False) -> None:
        """The peer sees the header as it was written; nothing to configure."""

    def close(self) -> None:
        self.sock.close()


class TapBackend:
    """A TAP as the device's backend. `pyvirt.net.tap.Tap` already has the
    methods; this wrapper lets the builder hand it over without the device
    layer importing the host networking layer."""

    def __init__(self, tap: NetBackend) -> None:
        self.tap = tap

    def fileno(self) -> int:
        return self.tap.fileno()

    def send(self, bufs: Sequence[memoryview]) -> int:
        return self.tap.send(bufs)

    def recv_into(self, bufs: Sequence[memoryview]) -> int:
        return self.tap.recv_into(bufs)

    def set_offload(self, *, csum: bool, tso4: bool, tso6: bool, ecn: bool = False) -> None:
        self.tap.set_offload(csum=csum, tso4=tso4, tso6=tso6, ecn=ecn)

    def close(self) -> None:
        self.tap.close()


@dataclass(frozen=True)
class NetState:
    """What a virtio-net device keeps across snapshot/restore. The queues are
    saved by the transport; the device holds no guest buffers between calls."""

    mac: bytes = b"\x02\x00\x00\x00\x00\x01"
    link_up: bool = True
    version: int = 1


class VirtioNet(VirtioDevice):
    device_type = NET
    num_queues = 2
    queue_max_size = 256
    name = "net"

    def __init__(self, backend: NetBackend, *, mac: bytes | None = None, mtu: int | None = None,
                 rx_limiter: RateLimit | None = None, tx_limiter: RateLimit | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if mac is not None and (len(mac) != 6 or mac[0] & 1):
            raise ValueError(f"MAC {mac.hex(':')} must be 6 bytes and unicast")
        if mtu is not None and not 68 <= mtu <= 65535:
            raise ValueError(f"MTU {mtu} outside 68..65535")
        self.backend = backend
        self.mac = mac if mac is not None else random_mac()
        self.mtu = mtu if mtu is not None else 1500
        self.link_up = True
        self.device_features |= (F_CSUM | F_GUEST_CSUM | F_MAC | F_STATUS | F_MRG_RXBUF
                                 | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN
                                 | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN | (F_MTU if mtu is not None else 0))
        self.rx_limiter, self.tx_limiter = rx_limiter, tx_limiter
        self._clock = clock
        self._closed = False
        self._q: dict[int, Virtqueue] = {}
        self._rx_eof = False  # the backend hung up (sockets only)
        self._rx_starved = False  # not enough receive buffers: backend unwatched until the guest adds some
        self._rx_debt = 0  # bytes delivered that the rx limiter has not yet accepted
        self._rx_backoff = False  # a receive error: backend unwatched until _rx_deadline
        self._rx_deadline: float | None = None
        self._tx_deadline: float | None = None
        self.stats = dict.fromkeys(("tx_frames", "tx_bytes", "tx_dropped", "tx_errors", "tx_throttled",
                                    "rx_frames", "rx_bytes", "rx_errors", "rx_starved", "rx_throttled"), 0)

    # --- config space ---------------------------------------------------------
    def config_bytes(self) -> bytes:
        # mac, status, max_virtqueue_pairs, mtu (spec 5.1.4)
        return self.mac + struct.pack("<HHH", S_LINK_UP if self.link_up else 0, 1, self.mtu)

    def set_link(self, up: bool) -> None:
        """Plug or unplug the virtual cable; the guest hears of it if it negotiated STATUS."""
        with self.lock:
            if up == self.link_up:
                return
            self.link_up = up
            if self.interrupt is not None and self.negotiated(F_STATUS):
                self.interrupt.config_changed()

    # --- life cycle -----------------------------------------------------------
    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], interrupt: VirtioInterrupt) -> None:
        with self.lock:
            super().activate(mem, queues, interrupt)
            # The transport hands over only the queues the driver enabled, each knowing its index.
            self._q = {q.index: q for q in queues}
            self._rx_starved, self._rx_debt, self._rx_backoff = False, 0, False
            self._rx_deadline = self._tx_deadline = None
            self._set_offload(csum=self.negotiated(F_GUEST_CSUM), tso4=self.negotiated(F_GUEST_TSO4),
                              tso6=self.negotiated(F_GUEST_TSO6), ecn=self.negotiated(F_GUEST_ECN))

    def reset(self) -> None:
        with self.lock:
            super().reset()
            self._q = {}
            self._rx_starved, self._rx_debt, self._rx_backoff = False, 0, False
            self._rx_deadline = self._tx_deadline = None
            self._set_offload(csum=False, tso4=False, tso6=False, ecn=False)

    def _set_offload(self, *, csum: bool, tso4: bool, tso6: bool, ecn: bool) -> None:
        try:
            self.backend.set_offload(csum=csum, tso4=tso4, tso6=tso6, ecn=ecn)
        except Exception as e:  # noqa: BLE001 - a TapError or OSError; the guest then just sees no offloads
            log.warning("virtio-net: cannot set backend offloads: %s", e)

    def close(self) -> None:
        with self.lock:
            if not self._closed:
                self._closed = True
                self.backend.close()

    def _ready(self) -> bool:
        return (self.mem is not None and RX in self._q and TX in self._q
                and not self.broken and not self._closed)

    # --- guest notifications --------------------------------------------------
    def queue_notify(self, index: int) -> None:
        with self.lock:
            if not self._ready():
                return
            if index == TX:
                self._tx()
            elif index == RX:
                # New receive buffers: frames that waited in the backend can come in.
                self._rx_starved = False
                self._rx()

    # --- transmit -------------------------------------------------------------
    def _tx(self) -> None:
        q, mem = self._q[TX], self.mem
        assert mem is not None
        done = 0
        try:
            while True:
                if done >= BUDGET:
                    self._tx_deadline = self._clock()  # the rest right after other devices' events
                    break
                chain = q.pop()
                if chain is None:
                    break
                n = chain.readable_len
                if self.tx_limiter is not None and n <= MAX_TX:
                    ok, wait = self.tx_limiter.consume(n)
                    if not ok:
                        q.undo_pop()
                        self.stats["tx_throttled"] += 1
                        self._tx_deadline = self._clock() + wait
                        break
                self._send(chain, mem)
                q.push(chain.head, 0)
                done += 1
        except VirtqueueError as e:
            self.needs_reset(str(e))
        self._notify(q, TX)

    def _send(self, chain: Chain, mem: GuestMemory) -> None:
        n = chain.readable_len
        if n < HDR_SIZE or n > MAX_TX or len(chain.readable) > IOV_MAX:
            # Not a frame we can send whole: a driver bug, but a harmless one to drop.
            self.stats["tx_errors"] += 1
            return
        try:
            self.backend.send(chain.readable_views(mem))
        except BlockingIOError:
            self.stats["tx_dropped"] += 1
            return
        except OSError as e:
            # EINVAL: the kernel rejected the header (bad gso fields); EIO: TAP down.
            self.stats["tx_errors"] += 1
            if self.stats["tx_errors"] <= 3:
                log.warning("virtio-net: backend refused a %d-byte frame: %s", n, e.strerror)
            return
        self.stats["tx_frames"] += 1
        self.stats["tx_bytes"] += n - HDR_SIZE

    # --- receive --------------------------------------------------------------
    def _rx_need(self) -> tuple[int, int]:
        """Bytes of buffer (header included) the next frame may need: at most,
        and for a frame no larger than the MTU."""
        small = HDR_SIZE + ETH_OVERHEAD + self.mtu
        if self.driver_features & (F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_UFO):
            return max(small, HDR_SIZE + MAX_GSO_FRAME), small
        return small, small

    def _rx(self) -> None:
        q, mem = self._q[RX], self.mem
        assert mem is not None
        mrg = self.negotiated(F_MRG_RXBUF)
        need, enough = self._rx_need() if mrg else (1, 1)
        # Chains taken from the ring and not yet filled, oldest first, with
        # their buffers: they serve the next frames of this batch, and what is
        # left goes back to the ring at its end. With mergeable buffers and
        # GSO one frame may need ~40 of them, so they are not walked per frame.
        spare: list[tuple[Chain, list[memoryview]]] = []
        try:
            for _ in range(BUDGET):
                if self._rx_debt and not self._pay_rx_debt():
                    break
                if not self._take_rx_buffers(q, mem, spare, need, enough):
                    break
                if not self._receive_one(q, mem, spare, mrg):
                    break
        except VirtqueueError as e:
            self.needs_reset(str(e))
        q.undo_pop(len(spare))
        self._notify(q, RX)

    def _take_rx_buffers(self, q: Virtqueue, mem: GuestMemory, spare: list[tuple[Chain, list[memoryview]]],
                         need: int, enough: int) -> bool:
        """Top `spare` up to `need` bytes of buffer, or at least `enough` when
        the ring has no more; False (the device is starved) when not even that."""
        total = sum(c.writable_len for c, _ in spare)
        while total < need:
            chain = q.pop()
            if chain is None:
                # Empty: ask for a kick on the next buffer, then look once
                # more in case it came before the request was visible.
                q.set_notification(True)
                chain = q.pop()
                if chain is None:
                    break
            if chain.readable or chain.writable_len < HDR_SIZE:
                q.undo_pop()
                raise VirtqueueError(f"virtqueue {RX}: receive buffer {chain.head} is not a device-writable "
                                     f"buffer of at least {HDR_SIZE} bytes")
            spare.append((chain, chain.writable_views(mem)))
            total += chain.writable_len
        if total < enough:
            if not self._rx_starved:
                self.stats["rx_starved"] += 1
            self._rx_starved = True
            return False
        return True

    def _receive_one(self, q: Virtqueue, mem: GuestMemory, spare: list[tuple[Chain, list[memoryview]]],
                     mrg: bool) -> bool:
        """Read one frame into the chains of `spare` (only the first without
        MRG_RXBUF) and take the ones it filled off the list; False when the
        backend had nothing (or failed) and reading should stop."""
        chains = spare if mrg else spare[:1]
        views = [v for _, vs in chains for v in vs][:IOV_MAX]
        try:
            n = self.backend.recv_into(views)
        except BlockingIOError:
            return False
        except OSError as e:
            self.stats["rx_errors"] += 1
            if self.stats["rx_errors"] <= 3:
                log.warning("virtio-net: reading the backend failed: %s", e.strerror)
            self._rx_backoff = True
            self._rx_deadline = self._clock() + RX_ERROR_BACKOFF
            return False
        if n < HDR_SIZE:
            if n == 0:
                # A TAP never reads 0 bytes; a socket does when its peer hung
                # up, and would stay readable forever: stop watching it.
                log.warning("virtio-net: the backend was closed by its peer; receive stops")
                self._rx_eof = True
                return False
            self.stats["rx_errors"] += 1  # a runt: nothing for the guest, the buffers stay free
            return True
        used: list[tuple[int, int]] = []
        left = n
        for c, _ in chains:
            if left <= 0:
                break
            k = min(c.writable_len, left)
            used.append((c.head, k))
            left -= k
        # The backend skipped num_buffers (a TAP writes only the first 10
        # bytes of a 12-byte header): it is the device's to fill, and must be
        # 1 without MRG_RXBUF (spec 5.1.6.4).
        chains[0][0].write(mem, struct.pack("<H", len(used)), _NUM_BUFFERS)
        for head, k in used:
            q.push(head, k)
        del spare[:len(used)]
        self.stats["rx_frames"] += 1
        self.stats["rx_bytes"] += n - HDR_SIZE
        if self.rx_limiter is not None:
            self._rx_debt = n
            return self._pay_rx_debt()
        return True

    def _pay_rx_debt(self) -> bool:
        assert self.rx_limiter is not None
        ok, wait = self.rx_limiter.consume(self._rx_debt)
        if ok:
            self._rx_debt = 0
            return True
        self.stats["rx_throttled"] += 1
        self._rx_deadline = self._clock() + wait
        return False

    def _notify(self, q: Virtqueue, index: int) -> None:
        if q.should_notify() and self.interrupt is not None:
            self.interrupt.used(index)

    # --- host side ------------------------------------------------------------
    def host_fds(self) -> list[tuple[int, object]]:
        with self.lock:
            if not self._ready() or self._rx_paused():
                return []
            return [(self.backend.fileno(), RX)]

    def host_ready(self, token: object) -> None:
        with self.lock:
            if self._ready() and not self._rx_paused():
                self._rx()

    def _rx_paused(self) -> bool:
        return self._rx_starved or bool(self._rx_debt) or self._rx_eof or self._rx_backoff

    def next_deadline(self) -> float | None:
        """When `on_timer` wants to run (the I/O thread's timer hook)."""
        ds = [d for d in (self._rx_deadline, self._tx_deadline) if d is not None]
        return min(ds) if ds else None

    def on_timer(self) -> None:
        with self.lock:
            now = self._clock()
            if self._tx_deadline is not None and self._tx_deadline <= now:
                self._tx_deadline = None
                if self._ready():
                    self._tx()
            if self._rx_deadline is not None and self._rx_deadline <= now:
                self._rx_deadline, self._rx_backoff = None, False
                if self._ready() and (not self._rx_debt or self._pay_rx_debt()) and not self._rx_starved:
                    self._rx()

    # --- state ----------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        with self.lock:
            return dict(self.stats)

    def state(self) -> NetState:
        with self.lock:
            return NetState(mac=self.mac, link_up=self.link_up)

    def restore(self, state: NetState) -> None:
        if not isinstance(state, NetState):
            raise ValueError(f"expected a NetState, got {type(state).__name__}")
        if state.version != 1:
            raise ValueError(f"NetState: unsupported version {state.version!r} (this build reads version 1)")
        if not isinstance(state.mac, bytes) or len(state.mac) != 6 or state.mac[0] & 1:
            raise ValueError(f"NetState: mac {state.mac!r} is not a 6-byte unicast address")
        if not isinstance(state.link_up, bool):
            raise ValueError(f"NetState: link_up must be a bool, got {type(state.link_up).__name__}")
        with self.lock:
            self.mac, self.link_up = state.mac, state.link_up
