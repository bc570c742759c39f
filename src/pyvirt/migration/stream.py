"""The live-migration wire protocol: framed messages over one TCP connection.

Every message is a 16-byte frame header, then its payload:

    u8 type, u8 flags, u16 reserved (0), u32 CRC32 of the payload, u64 length

Control messages (everything but PAGES and DISK) carry JSON and are
CRC-checked. Bulk messages start with binary addresses and carry raw bytes
that the receiver reads straight into guest memory or writes to the disk:
PAGES has a u32 count of runs, that many (u64 gpa, u32 pages, u32 0)
entries, then the runs' bytes one after another (a round's dirty pages are
often scattered one by one, so one message and one sendmsg carry many);
DISK has the disk index and byte offset, then the bytes. Their
CRC field is 0, as TCP's own checksum and the framing (a cut stream ends
inside a frame, which is reported) are what guards them, as in QEMU's
stream. Both sides check every length and address before using it: a
hostile or broken peer gets a `MigrationError` naming what was wrong, never
a write outside guest memory.

The conversation (source -> destination unless marked <-):

    HELLO {protocol, config, ...}       the machine to build
    <- WELCOME {}  or  <- ERROR {message}
    PAGES ... / DISK ... / ROUND {...}   pre-copy rounds, any number
    STATE {vm, vcpus, devices}          with the VM paused at the source
    COMPLETE {}                         (POSTCOPY {pending} instead for post-copy)
    <- READY {}                          the destination loaded it all
    GO {}                               the source has stopped for good
    <- STARTED {}                        the destination runs the VM
A post-copy destination then sends <- REQUEST {pages} for the pages its
guest faults on, the source answers with PAGES (and pushes the rest), and
ends with DONE {}. Either side may send ERROR and close.
"""

from __future__ import annotations

import bisect
import itertools
import json
import socket
import struct
import zlib

PROTOCOL = 1
MAGIC = "pyvirt-migration"
FRAME = struct.Struct("<BBHIQ")  # type, flags, reserved, crc32, length
PAGES_COUNT = struct.Struct("<I")  # runs in a PAGES message
PAGES_RUN = struct.Struct("<QII")  # gpa, pages, reserved
MAX_RUNS = 1024  # runs in one PAGES message (the kernel's IOV_MAX bounds one sendmsg)
RECV_BATCH = 1 << 20  # bytes of runs handed to one recvmsg_into
DISK_HEADER = struct.Struct("<IQ")  # disk index, byte offset
PAGE = 4096

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

(HELLO, WELCOME, PAGES, DISK, ROUND, STATE, COMPLETE, READY, GO, STARTED, POSTCOPY, REQUEST, DONE,
 ERROR) = range(1, 15)
NAMES = {v: k for k, v in dict(
    HELLO=HELLO, WELCOME=WELCOME, PAGES=PAGES, DISK=DISK, ROUND=ROUND, STATE=STATE, COMPLETE=COMPLETE,
    READY=READY, GO=GO, STARTED=STARTED, POSTCOPY=POSTCOPY, REQUEST=REQUEST, DONE=DONE, ERROR=ERROR).items()}
BULK = (PAGES, DISK)
MAX_JSON = 256 << 20  # a STATE message of a big VM is a few MiB
MAX_BULK = 64 << 20  # bytes of data in one PAGES or DISK message


class MigrationError(Exception):
    """Migration failed; the message says where and why."""


class PeerError(MigrationError):
    """The other side reported an error (its message is ours)."""


def _recv_exact(sock: socket.socket, view: memoryview, what: str) -> None:
    _recv_views(sock, [view], what)


def _recv_views(sock: socket.socket, views: list[memoryview], what: str) -> None:
    """Fill `views` in order from the socket, with as few recvmsg calls as it
    allows; a timeout, an error or the end of the stream is a MigrationError.
    (Up to a thousand single pages at a time: per view, only C-level work.)"""
    views = [v for v in views if len(v)]
    ends = list(itertools.accumulate(len(v) for v in views))  # where each view ends in the stream
    total = ends[-1] if ends else 0
    got = i = 0
    while got < total:
        # Hand the kernel only what one call can fill (the socket buffer's
        # worth): a 1024-entry iovec for every call costs more than the copy.
        j = min(max(bisect.bisect_left(ends, got + RECV_BATCH, i), i + 1), i + MAX_RUNS, len(views))
        first = views[i][len(views[i]) - (ends[i] - got):]  # the part of view i still to fill
        try:
            n = sock.recv_into(first) if j == i + 1 else sock.recvmsg_into([first, *views[i + 1:j]])[0]
        except socket.timeout:
            raise MigrationError(f"the peer sent nothing for too long while {what}") from None
        except OSError as e:
            raise MigrationError(f"the connection failed while {what}: {e.strerror or e}") from e
        if n == 0:
            raise MigrationError(f"the connection was closed while {what} (after {got} of {total} bytes)")
        got += n
        i = bisect.bisect_right(ends, got, i)  # the first view not yet full


class Channel:
    """One end of a migration connection."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.sent = 0  # bytes, frames included
        self.received = 0
        self._frame = bytearray(FRAME.size)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # --- sending ----------------------------------------------------------------
    def _send(self, parts: list[bytes | memoryview]) -> None:
        try:
            for p in parts:
                self.sock.sendall(p)
        except OSError as e:
            raise MigrationError(f"sending to {self.peer} failed: {e.strerror or e}") from e
        self.sent += sum(len(p) for p in parts)

    def send_json(self, kind: int, value: object) -> None:
        data = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        self._send([FRAME.pack(kind, 0, 0, zlib.crc32(data), len(data)) + data])  # one segment

    def send_pages(self, runs: list[tuple[int, memoryview]]) -> None:
        """Guest memory runs (gpa, whole pages): at most MAX_RUNS runs of
        MAX_BULK bytes in all, sent with one sendmsg where the socket takes it."""
        head = bytearray(PAGES_COUNT.pack(len(runs)))
        size = 0
        if not 0 < len(runs) <= MAX_RUNS:
            raise ValueError(f"a PAGES message carries 1 to {MAX_RUNS} runs, not {len(runs)}")
        for gpa, data in runs:
            if not data or len(data) % PAGE:
                raise ValueError(f"guest memory run at {gpa:#x} of {len(data)} bytes is not whole pages")
            head += PAGES_RUN.pack(gpa, len(data) // PAGE, 0)
            size += len(data)
        parts: list[bytes | bytearray | memoryview] = [FRAME.pack(PAGES, 0, 0, 0, len(head) + size), head]
        parts += [data for _, data in runs]
        total = FRAME.size + len(head) + size
        try:
            views = [memoryview(p) for p in parts]
            i = 0
            while i < len(views):
                n = self.sock.sendmsg(views[i:i + MAX_RUNS])
                while n:
                    if n >= len(views[i]):
                        n -= len(views[i])
                        i += 1
                    else:
                        views[i] = views[i][n:]
                        n = 0
        except OSError as e:
            raise MigrationError(f"sending to {self.peer} failed: {e.strerror or e}") from e
        self.sent += total

    def recv_pages(self, length: int, target: Callable[[int, int], memoryview], what: str) -> int:
        """The payload of a PAGES message of `length` bytes, each run read
        into `target(gpa, bytes)` (which checks it); returns the pages."""
        count_buf = bytearray(PAGES_COUNT.size)
        if length < len(count_buf):
            raise MigrationError(f"{self.peer} sent a PAGES message of {length} bytes")
        _recv_exact(self.sock, memoryview(count_buf), what)
        (count,) = PAGES_COUNT.unpack(count_buf)
        head_len = count * PAGES_RUN.size
        if count == 0 or count > MAX_RUNS or len(count_buf) + head_len > length:
            raise MigrationError(f"{self.peer} sent a PAGES message with {count} runs in {length} bytes")
        head = bytearray(head_len)
        _recv_exact(self.sock, memoryview(head), what)
        views: list[memoryview] = []
        size = 0
        append = views.append
        for gpa, pages, reserved in PAGES_RUN.iter_unpack(head):
            if reserved or pages == 0:
                raise MigrationError(f"{self.peer} sent a malformed PAGES run ({gpa:#x}, {pages} pages)")
            append(target(gpa, pages * PAGE))
            size += pages * PAGE
        if len(count_buf) + head_len + size != length:
            raise MigrationError(f"{self.peer} sent a PAGES message whose runs do not add up to its length")
        _recv_views(self.sock, views, what)
        return size // PAGE

    def send_disk(self, index: int, offset: int, data: bytes | memoryview) -> None:
        head = DISK_HEADER.pack(index, offset)
        self._send([FRAME.pack(DISK, 0, 0, 0, len(head) + len(data)), head, data])

    def send_error(self, message: str) -> None:
        """Tell the peer why we stop; a connection that is already gone is ignored."""
        try:
            self.send_json(ERROR, {"message": message})
        except MigrationError:
            pass

    # --- receiving --------------------------------------------------------------
    def recv_frame(self, what: str) -> tuple[int, int, int]:
        """(type, crc, payload length) of the next message."""
        _recv_exact(self.sock, memoryview(self._frame), what)
        kind, flags, reserved, crc, length = FRAME.unpack(self._frame)
        self.received += FRAME.size + length
        if kind not in NAMES or flags or reserved:
            raise MigrationError(f"{self.peer} sent an invalid frame (type {kind}, flags {flags}) while {what}: "
                                 "not a pyvirt migration stream, or a corrupt one")
        limit = MAX_BULK + PAGES_COUNT.size + MAX_RUNS * PAGES_RUN.size if kind in BULK else MAX_JSON
        if length > limit:
            raise MigrationError(f"{self.peer} sent a {NAMES[kind]} message of {length} bytes (at most {limit})")
        return kind, crc, length

    def recv_json(self, kind: int, crc: int, length: int, what: str) -> dict[str, object]:
        """The payload of a control message whose frame was just read."""
        data = bytearray(length)
        _recv_exact(self.sock, memoryview(data), what)
        if zlib.crc32(data) != crc:
            raise MigrationError(f"a {NAMES[kind]} message from {self.peer} fails its CRC check")
        try:
            value = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise MigrationError(f"a {NAMES[kind]} message from {self.peer} is not valid JSON: {e}") from e
        if not isinstance(value, dict):
            raise MigrationError(f"a {NAMES[kind]} message from {self.peer} is not a JSON object")
        if kind == ERROR:
            raise PeerError(f"{self.peer}: {value.get('message', 'unknown error')}")
        return value

    def recv_into(self, view: memoryview, what: str) -> None:
        _recv_exact(self.sock, view, what)

    def expect(self, kind: int, what: str) -> dict[str, object]:
        """The next message, which must be a `kind` control message."""
        got, crc, length = self.recv_frame(what)
        if got != kind and got != ERROR:
            raise MigrationError(f"{self.peer} sent {NAMES[got]} while {what} (expected {NAMES[kind]})")
        return self.recv_json(got, crc, length, what)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def parse_uri(uri: str) -> tuple[str, int]:
    """(host, port) of "tcp:HOST:PORT" (HOST may be [IPv6]); ValueError says what is wrong."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme != "tcp":
        raise ValueError(f"migration address {uri!r}: use tcp:HOST:PORT")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"migration address {uri!r}: the port must be a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"migration address {uri!r}: no host")
    return host, int(port)
