"""virtio-vsock (spec 5.10) with a hybrid unix-socket backend, as Firecracker does.

Queues: 0 rx (host -> guest packets), 1 tx (guest -> host), 2 event. The
config space is the guest's CID (le64). Every packet starts with the
44-byte little-endian header

    le64 src_cid; le64 dst_cid; le32 src_port; le32 dst_port; le32 len;
    le16 type; le16 op; le32 flags; le32 buf_alloc; le32 fwd_cnt;

and the device is the host end (CID 2) of every stream connection.

The host side is plain unix stream sockets, so host programs need no
AF_VSOCK support:

- guest connects to (CID 2, port P): pyvirt connects to the unix socket
  `{uds_path}_{P}`; refused or absent, the guest gets a RST;
- a host program connects to `uds_path` and writes `CONNECT P\\n`: pyvirt
  asks the guest for a connection to its port P from a fresh host port H
  and, once the guest accepts, answers `OK H\\n`; after that the socket
  carries the stream.

Flow control is the spec's credit scheme (5.10.6.3): each side announces
its receive buffer (buf_alloc) and how much of what it received it has
passed on (fwd_cnt); a sender keeps in flight at most buf_alloc minus what
the peer has not yet forwarded. The device forwards guest data straight
from the guest's buffers to the unix socket; what the socket does not take
at once waits in a per-connection buffer that the credit bounds to
`buf_alloc` bytes (a guest exceeding its credit is reset). Host data goes
straight from the socket into the guest's receive buffers, only while the
guest gave credit and buffers: otherwise the socket is left unwatched
(`host_fds`) and the data waits in the kernel. Nothing here blocks the I/O
thread; a connection's unix socket that cannot take data is retried from a
short timer.

Snapshots (`VsockState`): open connections are not saved. On restore every
unix socket is closed (host programs see EOF) and the guest gets a
TRANSPORT_RESET event (spec 5.10.6.6), after which its driver drops its
connections and re-reads the CID, as with Firecracker.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import struct
import time
from dataclasses import dataclass

from ..._log import get_logger
from .device import VSOCK, VirtioDevice
from .queue import VirtqueueError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ...memory.guest import GuestMemory
    from ..protocols import VirtioInterrupt
    from .queue import Chain, Virtqueue

log = get_logger(__name__)

HOST_CID = 2
HDR = struct.Struct("<QQIIIHHIII")
HDR_SIZE = HDR.size  # 44
TYPE_STREAM = 1
OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = 1, 2, 3, 4, 5, 6, 7
SHUT_RCV, SHUT_SEND = 1, 2
EVENT_TRANSPORT_RESET = 0
F_STREAM = 1 << 0

RX, TX, EVT = 0, 1, 2
BUF_ALLOC = 256 << 10  # our receive buffer per connection, as Linux's default
MAX_PAYLOAD = 64 << 10  # largest RW packet we send (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE)
MAX_CONNS = 256  # connections, both directions; beyond, REQUESTs are reset
MAX_PENDING_ACCEPTS = 64  # host sockets still owing their CONNECT line
MAX_RSTS = 512  # queued RSTs for unknown connections; beyond, the oldest are dropped
LINE_MAX = 32  # "CONNECT 4294967295\n" is 19 bytes
LINE_TIMEOUT = 5.0  # seconds for a host program to send its CONNECT line
REQUEST_TIMEOUT = 5.0  # seconds for the guest to answer a host-initiated REQUEST
FLUSH_RETRY = 0.002  # seconds between retries of a unix socket that was full
BUDGET = 256  # packets per call before yielding the I/O thread
FIRST_HOST_PORT = 1 << 30
IOV_MAX = 1024  # buffers per readv/writev; the rest of a longer chain waits for the next call

# connection states
REQUESTED, ESTABLISHED = 1, 2


class VsockError(Exception):
    """The vsock backend could not be set up (the unix socket path)."""


class _Conn:
    """One stream connection: `lport` is the host's port, `pport` the guest's."""

    __slots__ = ("sock", "lport", "pport", "state", "peer_buf_alloc", "peer_fwd_cnt", "tx_cnt", "rx_cnt",
                 "fwd_cnt", "fwd_told", "pending", "ops", "guest_shut", "eof", "deadline")

    def __init__(self, sock: socket.socket, lport: int, pport: int, state: int) -> None:
        self.sock, self.lport, self.pport, self.state = sock, lport, pport, state
        self.peer_buf_alloc = self.peer_fwd_cnt = 0
        self.tx_cnt = 0  # payload bytes sent to the guest
        self.rx_cnt = 0  # payload bytes received from the guest
        self.fwd_cnt = 0  # of those, bytes handed to the unix socket
        self.fwd_told = 0  # fwd_cnt as last told to the guest
        self.pending = bytearray()  # guest data the unix socket has not taken yet
        self.ops: list[tuple[int, int]] = []  # control packets (op, flags) to send
        self.guest_shut = 0  # SHUT_* flags the guest sent
        self.eof = False  # the unix socket reached EOF: we sent SHUTDOWN(SEND)
        self.deadline: float | None = None  # REQUESTED: when to give up on the guest

    def credit(self) -> int:
        """Payload bytes the guest can take now."""
        return self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & 0xFFFFFFFF)


class _Accepting:
    """A host program's connection that has not yet sent its CONNECT line."""

    __slots__ = ("sock", "line", "deadline")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.line, self.deadline = sock, bytearray(), deadline


_LISTENER = "listener"


@dataclass(frozen=True)
class VsockState:
    """A vsock device across snapshot/restore: only the CID (connections are
    reset on restore, see the module docstring)."""

    guest_cid: int = 3
    version: int = 1


def _check_cid(cid: object) -> int:
    # 0, 1 and 2 are the hypervisor, local and host; 0xFFFFFFFF is VMADDR_CID_ANY.
    if not isinstance(cid, int) or isinstance(cid, bool) or not 3 <= cid < 0xFFFFFFFF:
        raise ValueError(f"guest CID {cid!r} must be an int in 3..0xfffffffe")
    return cid


class VirtioVsock(VirtioDevice):
    device_type = VSOCK
    num_queues = 3
    queue_max_size = 256
    name = "vsock"

    def __init__(self, guest_cid: int, uds_path: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.guest_cid = _check_cid(guest_cid)
        self.device_features |= F_STREAM
        self.uds_path = uds_path
        self._clock = clock
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            self._listener.bind(uds_path)
            self._listener.listen(64)
        except OSError as e:
            self._listener.close()
            hint = " (remove it if no VM uses it)" if e.errno == errno.EADDRINUSE else ""
            raise VsockError(f"cannot listen on the vsock socket {uds_path}: {e.strerror}{hint}") from e
        self._conns: dict[tuple[int, int], _Conn] = {}
        self._accepting: dict[int, _Accepting] = {}
        self._ctrl: dict[_Conn, None] = {}  # connections with control packets to send, in order
        self._data: dict[_Conn, None] = {}  # connections whose socket was readable
        self._rsts: collections.deque[tuple[int, int]] = collections.deque(maxlen=MAX_RSTS)
        self._next_port = FIRST_HOST_PORT
        self._rx_starved = False
        self._event_pending = False
        self._flush_at: float | None = None
        self._again_at: float | None = None  # budget used up: go on from the timer
        self._closed = False
        self._q: dict[int, Virtqueue] = {}
        # Sockets shut down but not yet closed: see _bury.
        self._graveyard: list[socket.socket] = []
        self.stats = dict.fromkeys(("connects_from_guest", "connects_from_host", "refused", "resets",
                                    "rx_bytes", "tx_bytes"), 0)

    # --- config and life cycle -----------------------------------------------
    def config_bytes(self) -> bytes:
        return struct.pack("<Q", self.guest_cid)

    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], interrupt: VirtioInterrupt) -> None:
        with self.lock:
            super().activate(mem, queues, interrupt)
            # The transport hands over only the queues the driver enabled, each knowing its index.
            self._q = {q.index: q for q in queues}
            self._rx_starved = False
            if self._event_pending and self._ready() and EVT in self._q:
                self._send_event()

    def reset(self) -> None:
        with self.lock:
            super().reset()
            self._q = {}
            self._drop_all()
            self._event_pending = False

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            self._drop_all()
            for s in self._graveyard:
                s.close()
            self._graveyard.clear()
            self._listener.close()
            try:
                os.unlink(self.uds_path)
            except OSError:
                pass

    def _bury(self, sock: socket.socket) -> None:
        """End a connection now (the host program reads EOF) but keep its fd
        until the next `host_fds()`: the I/O thread must unregister the old fd
        before a new socket can reuse its number, or epoll, which forgets
        closed fds, would never report the new socket."""
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._graveyard.append(sock)

    def _drop_all(self) -> None:
        for c in self._conns.values():
            self._bury(c.sock)
        for a in self._accepting.values():
            self._bury(a.sock)
        self._conns.clear()
        self._accepting.clear()
        self._ctrl.clear()
        self._data.clear()
        self._rsts.clear()
        self._flush_at = self._again_at = None

    def _ready(self) -> bool:
        return self.mem is not None and RX in self._q and TX in self._q and not self.broken and not self._closed

    # --- guest notifications --------------------------------------------------
    def queue_notify(self, index: int) -> None:
        with self.lock:
            if not self._ready():
                return
            if index == TX:
                self._tx()
                self._rx()  # replies (RESPONSE, RST, credit) go out at once
            elif index == RX:
                self._rx_starved = False
                self._rx()
            elif index == EVT and self._event_pending and EVT in self._q:
                self._send_event()

    def _notify(self, q: Virtqueue) -> None:
        if q.should_notify() and self.interrupt is not None:
            self.interrupt.used(q.index)

    # --- guest -> host ----------------------------------------------------------
    def _tx(self) -> None:
        q, mem = self._q[TX], self.mem
        assert mem is not None
        try:
            while (chain := q.pop()) is not None:
                raw = chain.read(mem, HDR_SIZE)
                if len(raw) == HDR_SIZE:
                    self._packet(HDR.unpack(raw), chain, mem)
                q.push(chain.head, 0)
        except VirtqueueError as e:
            self.needs_reset(str(e))
        self._notify(q)

    def _packet(self, h: tuple[int, ...], chain: Chain, mem: GuestMemory) -> None:
        src_cid, dst_cid, src_port, dst_port, length, typ, op, flags, buf_alloc, fwd_cnt = h
        if src_cid != self.guest_cid or dst_cid != HOST_CID:
            return  # not for us; the spec says drop
        key = (dst_port, src_port)
        conn = self._conns.get(key)
        if typ != TYPE_STREAM:
            if op != OP_RST:
                self._reset(key, conn)
            return
        if conn is None:
            if op == OP_REQUEST:
                self._connect_from_guest(dst_port, src_port, buf_alloc, fwd_cnt)
            elif op != OP_RST:
                self._reset(key, None)
            return
        conn.peer_buf_alloc, conn.peer_fwd_cnt = buf_alloc, fwd_cnt
        if op == OP_RST:
            self._forget(conn)
        elif op == OP_RESPONSE and conn.state == REQUESTED:
            conn.state, conn.deadline = ESTABLISHED, None
            try:
                sent = conn.sock.send(f"OK {conn.lport}\n".encode())
            except OSError:
                sent = 0
            if sent == 0:  # an empty new socket takes 20 bytes, unless its peer is gone
                self._reset(key, conn)
        elif op == OP_RW and conn.state == ESTABLISHED and not conn.guest_shut & SHUT_SEND:
            self._from_guest(conn, chain, mem, min(length, chain.readable_len - HDR_SIZE))
        elif op == OP_CREDIT_REQUEST:
            self._queue_op(conn, OP_CREDIT_UPDATE)
        elif op == OP_SHUTDOWN:
            conn.guest_shut |= flags & (SHUT_RCV | SHUT_SEND)
            self._after_shutdown(conn)
        elif op != OP_CREDIT_UPDATE:
            # A REQUEST on an open connection, RW before RESPONSE or after
            # SHUTDOWN, a stray RESPONSE, an unknown op: the spec's answer is RST.
            self._reset(key, conn)

    def _connect_from_guest(self, lport: int, pport: int, buf_alloc: int, fwd_cnt: int) -> None:
        key = (lport, pport)
        if len(self._conns) >= MAX_CONNS:
            self._reset(key, None)
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            # A unix stream connect completes at once or fails (EAGAIN when the
            # listener's backlog is full): it never leaves us waiting.
            sock.connect(f"{self.uds_path}_{lport}")
        except OSError:
            sock.close()
            self.stats["refused"] += 1
            self._reset(key, None)
            return
        conn = _Conn(sock, lport, pport, ESTABLISHED)
        conn.peer_buf_alloc, conn.peer_fwd_cnt = buf_alloc, fwd_cnt
        self._conns[key] = conn
        self.stats["connects_from_guest"] += 1
        self._queue_op(conn, OP_RESPONSE)

    def _from_guest(self, conn: _Conn, chain: Chain, mem: GuestMemory, n: int) -> None:
        if n <= 0:
            return
        if len(conn.pending) + n > BUF_ALLOC:
            self._reset((conn.lport, conn.pport), conn)  # the guest ignored our credit
            return
        conn.rx_cnt += n
        self.stats["tx_bytes"] += n
        views = _window(chain.readable_views(mem), HDR_SIZE, n)
        written = 0
        if not conn.pending:
            try:
                written = os.writev(conn.sock.fileno(), views[:IOV_MAX])
            except BlockingIOError:
                pass
            except OSError:
                self._reset((conn.lport, conn.pport), conn)  # EPIPE: the host program is gone
                return
        if written < n:
            conn.pending += b"".join(views)[written:]
            if self._flush_at is None:
                self._flush_at = self._clock() + FLUSH_RETRY
        self._forwarded(conn, written)

    def _forwarded(self, conn: _Conn, n: int) -> None:
        """`n` more guest bytes reached the unix socket: tell the guest once a
        quarter of its window frees up (every packet we send tells it too)."""
        conn.fwd_cnt = (conn.fwd_cnt + n) & 0xFFFFFFFF
        if ((conn.fwd_cnt - conn.fwd_told) & 0xFFFFFFFF) >= BUF_ALLOC // 4:
            self._queue_op(conn, OP_CREDIT_UPDATE)
        self._after_shutdown(conn)

    def _flush(self, conn: _Conn) -> bool:
        """Push pending guest data into the unix socket; True if all went."""
        try:
            k = conn.sock.send(conn.pending)
        except BlockingIOError:
            return False
        except OSError:
            self._reset((conn.lport, conn.pport), conn)
            return True
        del conn.pending[:k]
        self._forwarded(conn, k)
        return not conn.pending

    def _after_shutdown(self, conn: _Conn) -> None:
        if conn.pending or (conn.lport, conn.pport) not in self._conns:
            return
        if conn.guest_shut == SHUT_RCV | SHUT_SEND or (conn.guest_shut & SHUT_SEND and conn.eof):
            # Both directions are done: the guest's close waits for our RST.
            self._reset((conn.lport, conn.pport), conn)
        elif conn.guest_shut & SHUT_SEND:
            try:
                conn.sock.shutdown(socket.SHUT_WR)  # the host program reads EOF
            except OSError:
                pass

    # --- host -> guest --------------------------------------------------------
    def _queue_op(self, conn: _Conn, op: int, flags: int = 0) -> None:
        if (op, flags) not in conn.ops:
            conn.ops.append((op, flags))
        self._ctrl[conn] = None

    def _reset(self, key: tuple[int, int], conn: _Conn | None) -> None:
        if conn is not None:
            self._forget(conn)
        self.stats["resets"] += 1
        self._rsts.append(key)

    def _forget(self, conn: _Conn) -> None:
        self._bury(conn.sock)
        self._conns.pop((conn.lport, conn.pport), None)
        self._ctrl.pop(conn, None)
        self._data.pop(conn, None)

    def _header(self, conn: _Conn | None, lport: int, pport: int, op: int, length: int = 0, flags: int = 0) -> bytes:
        fwd = 0
        if conn is not None:
            fwd = conn.fwd_told = conn.fwd_cnt
        return HDR.pack(HOST_CID, self.guest_cid, lport, pport, length, TYPE_STREAM, op, flags, BUF_ALLOC, fwd)

    def _rx(self) -> None:
        q, mem = self._q[RX], self.mem
        assert mem is not None
        sent = 0
        try:
            while self._rsts or self._ctrl or self._data:
                if sent >= BUDGET:
                    self._again_at = self._clock()
                    break
                chain = q.pop()
                if chain is None:
                    q.set_notification(True)  # then look once more: a buffer may have raced the request
                    chain = q.pop()
                    if chain is None:
                        self._rx_starved = True
                        break
                if chain.readable or chain.writable_len < HDR_SIZE:
                    q.push(chain.head, 0)  # unusable; the driver drops a zero-length packet
                    continue
                n = self._fill(chain, mem)
                if n:
                    q.push(chain.head, n)
                    sent += 1
                else:
                    q.undo_pop()  # unused: give it back
        except VirtqueueError as e:
            self.needs_reset(str(e))
        self._notify(q)

    def _fill(self, chain: Chain, mem: GuestMemory) -> int:
        """Write the next packet into `chain`; its length, or 0 if there was none."""
        if self._rsts:
            lport, pport = self._rsts.popleft()
            return chain.write(mem, self._header(None, lport, pport, OP_RST))
        if self._ctrl:
            conn = next(iter(self._ctrl))
            op, flags = conn.ops.pop(0)
            if not conn.ops:
                del self._ctrl[conn]
            return chain.write(mem, self._header(conn, conn.lport, conn.pport, op, flags=flags))
        conn = next(iter(self._data))
        del self._data[conn]
        room = min(chain.writable_len - HDR_SIZE, MAX_PAYLOAD, conn.credit())
        if conn.state != ESTABLISHED or conn.eof or conn.guest_shut & SHUT_RCV:
            return 0
        if room <= 0:
            if conn.credit() <= 0:
                self._queue_op(conn, OP_CREDIT_REQUEST)  # the guest may not know we are waiting
            return 0
        try:
            n = os.readv(conn.sock.fileno(), _window(chain.writable_views(mem), HDR_SIZE, room)[:IOV_MAX])
        except BlockingIOError:
            return 0
        except OSError:
            self._reset((conn.lport, conn.pport), conn)  # ECONNRESET
            return 0
        if n == 0:  # EOF: the host program will send no more
            conn.eof = True
            self._queue_op(conn, OP_SHUTDOWN, SHUT_SEND)
            self._after_shutdown(conn)
            return 0
        conn.tx_cnt = (conn.tx_cnt + n) & 0xFFFFFFFF
        self.stats["rx_bytes"] += n
        self._data[conn] = None  # round robin: back of the line, still readable
        chain.write(mem, self._header(conn, conn.lport, conn.pport, OP_RW, n))
        return HDR_SIZE + n

    def _send_event(self) -> None:
        q, mem = self._q[EVT], self.mem
        assert mem is not None
        try:
            chain = q.pop()
            if chain is None:
                return  # sent when the driver adds an event buffer
            q.push(chain.head, chain.write(mem, struct.pack("<I", EVENT_TRANSPORT_RESET)))
            self._event_pending = False
        except VirtqueueError as e:
            self.needs_reset(str(e))
        self._notify(q)

    # --- host side ------------------------------------------------------------
    def host_fds(self) -> list[tuple[int, object]]:
        with self.lock:
            for s in self._graveyard:
                s.close()
            self._graveyard.clear()
            if not self._ready():
                return []
            fds: list[tuple[int, object]] = [(self._listener.fileno(), _LISTENER)]
            fds += [(fd, a) for fd, a in self._accepting.items()]
            if not self._rx_starved:
                fds += [(c.sock.fileno(), c) for c in self._conns.values()
                        if c.state == ESTABLISHED and not c.eof and c.credit() > 0
                        and not c.guest_shut & SHUT_RCV and c not in self._data]
            return fds

    def host_ready(self, token: object) -> None:
        with self.lock:
            if not self._ready():
                return
            if token is _LISTENER:
                self._accept()
            elif isinstance(token, _Accepting):
                self._read_line(token)
            elif isinstance(token, _Conn) and (token.lport, token.pport) in self._conns:
                self._data[token] = None
            self._rx()

    def _accept(self) -> None:
        for _ in range(16):
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            if len(self._accepting) >= MAX_PENDING_ACCEPTS or len(self._conns) >= MAX_CONNS:
                sock.close()  # never watched: its fd number is free to reuse
                continue
            sock.setblocking(False)
            self._accepting[sock.fileno()] = _Accepting(sock, self._clock() + LINE_TIMEOUT)

    def _read_line(self, a: _Accepting) -> None:
        # One byte at a time: whatever follows the line is stream data for the
        # guest and must stay in the socket. At most LINE_MAX calls per socket.
        while True:
            try:
                b = a.sock.recv(1)
            except BlockingIOError:
                return
            except OSError:
                b = b""
            if not b or (b != b"\n" and len(a.line) >= LINE_MAX):
                self._drop_accepting(a)
                return
            if b == b"\n":
                break
            a.line += b
        del self._accepting[a.sock.fileno()]
        words = bytes(a.line).split()
        port = int(words[1]) if len(words) == 2 and words[0] == b"CONNECT" and words[1].isdigit() else -1
        if not 0 <= port <= 0xFFFFFFFF:
            self._bury(a.sock)
            return
        lport = self._alloc_port(port)
        conn = _Conn(a.sock, lport, port, REQUESTED)
        conn.deadline = self._clock() + REQUEST_TIMEOUT
        self._conns[(lport, port)] = conn
        self.stats["connects_from_host"] += 1
        self._queue_op(conn, OP_REQUEST)

    def _drop_accepting(self, a: _Accepting) -> None:
        self._accepting.pop(a.sock.fileno(), None)
        self._bury(a.sock)

    def _alloc_port(self, pport: int) -> int:
        while True:
            p = self._next_port
            self._next_port = p + 1 if p < 0xFFFFFFFF else FIRST_HOST_PORT
            if (p, pport) not in self._conns:
                return p

    # --- timers ---------------------------------------------------------------
    def next_deadline(self) -> float | None:
        with self.lock:
            ds = [d for d in (self._flush_at, self._again_at) if d is not None]
            ds += [a.deadline for a in self._accepting.values()]
            ds += [c.deadline for c in self._conns.values() if c.deadline is not None]
            return min(ds) if ds else None

    def on_timer(self) -> None:
        with self.lock:
            now = self._clock()
            for a in [a for a in self._accepting.values() if a.deadline <= now]:
                self._drop_accepting(a)
            for c in [c for c in self._conns.values() if c.deadline is not None and c.deadline <= now]:
                self._reset((c.lport, c.pport), c)  # the guest never answered our REQUEST
            if self._flush_at is not None and self._flush_at <= now:
                self._flush_at = None
                if not all([self._flush(c) for c in list(self._conns.values()) if c.pending]):
                    self._flush_at = now + FLUSH_RETRY
            if self._again_at is not None and self._again_at <= now:
                self._again_at = None
            if self._ready():
                self._rx()

    # --- state ----------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        with self.lock:
            return dict(self.stats, connections=len(self._conns))

    def state(self) -> VsockState:
        return VsockState(guest_cid=self.guest_cid)

    def restore(self, state: VsockState) -> None:
        if not isinstance(state, VsockState):
            raise ValueError(f"expected a VsockState, got {type(state).__name__}")
        if state.version != 1:
            raise ValueError(f"VsockState: unsupported version {state.version!r} (this build reads version 1)")
        cid = _check_cid(state.guest_cid)
        with self.lock:
            self._drop_all()
            self.guest_cid = cid
            self._event_pending = True
            if self._ready() and EVT in self._q:
                self._send_event()


def _window(views: list[memoryview], offset: int, limit: int) -> list[memoryview]:
    """The part of the buffers `views` from byte `offset`, at most `limit` bytes."""
    out = []
    for v in views:
        if limit <= 0:
            break
        if offset >= len(v):
            offset -= len(v)
            continue
        part = v[offset:offset + limit]
        out.append(part)
        limit -= len(part)
        offset = 0
    return out
