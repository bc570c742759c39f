"""The control API server: HTTP/1.1 with JSON bodies on a unix socket, one per VM.

`ApiServer(path, control).start()` serves docs/api.yaml on its own daemon
thread: requests become command objects (`commands.py`) that run against a
`VmControl`. Standard library only, and imported only when a VM is started
with `--api-socket`, so a VM without it pays nothing.

Robustness, since any process of the VM's user may connect:
- the socket file is created with mode 0600 (chmod between bind and listen,
  so nobody can connect before) and removed at close if it is still ours;
  a path that is a live socket (another VM) is refused, a stale one removed;
- each client has its own thread (ThreadingMixIn) with a timeout on every
  read, so a slow or stuck client holds up only itself; at most
  `max_clients` at once, the rest get 503;
- bodies are at most 64 KiB with Content-Length; every error is
  `{"error": "..."}` with its status, never a traceback.
"""

from __future__ import annotations

import http.server
import json
import os
import selectors
import socket
import socketserver
import stat
import threading

from .._log import get_logger
from .commands import RequestError, find_command, parse_body
from .control import ControlError, VmControl

log = get_logger(__name__)

MAX_BODY = 64 << 10
HEADER_TIMEOUT = 10.0  # seconds a client may stay silent in the middle of a request
MAX_CLIENTS = 16
CLOSE_GRACE = 2.0  # seconds close() gives requests in flight (a stop's reply) to finish


class ApiError(Exception):
    """The API socket could not be set up; the message says why and what to do."""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _UnixServer
    protocol_version = "HTTP/1.1"  # keep-alive for clients that poll
    default_request_version = "HTTP/1.0"  # an unparsable request still gets a status line (not HTTP/0.9's none)
    server_version = "pyvirt"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # StreamRequestHandler sets the class's `timeout`; each server has its own.
        self.connection.settimeout(self.server.header_timeout)

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._dispatch()

    do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        if self.server.closing:  # a request completed by close()'s shutdown, or too late
            self._reply(503, {"error": "the VM's control API is closing"})
            return
        try:
            cls = find_command(self.command, self.path)
            body = self._read_body()
        except RequestError as e:
            self._reply(e.status, {"error": e.message}, e.allow)
            return
        try:
            result = cls.from_body(parse_body(body)).execute(self.server.control)
            data = _json(result)
        except RequestError as e:
            self._reply(e.status, {"error": e.message})
        except ControlError as e:
            self._reply(e.status, {"error": e.message})
        except Exception as e:  # a bug or a host failure: say what, keep serving
            log.exception("control API: %s %s failed", self.command, self.path)
            self._reply(500, {"error": f"internal error: {type(e).__name__}: {e}"})
        else:
            self._send(200, data)

    def _read_body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:
            raise RequestError("chunked request bodies are not supported: send Content-Length", status=411)
        lengths = set(self.headers.get_all("Content-Length") or ())
        if not lengths:
            return b""
        text = lengths.pop()
        if lengths or not text.strip().isdigit():
            raise RequestError("bad Content-Length header")
        n = int(text)
        if n > self.server.max_body:
            left = n if n <= 4 * self.server.max_body else 0
            # Read a moderate excess first: a client still sending it would
            # otherwise get a broken pipe instead of this reply.
            while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                left -= len(chunk)
            raise RequestError(f"the body is {n} bytes; at most {self.server.max_body} are accepted", status=413)
        data = self.rfile.read(n)  # a timeout here ends the connection (handle_one_request)
        if len(data) != n:
            raise RequestError(f"the body ended after {len(data)} of {n} bytes")
        return data

    def _reply(self, status: int, payload: dict[str, object], allow: tuple[str, ...] = ()) -> None:
        self._send(status, _json(payload), allow)

    def _send(self, status: int, data: bytes, allow: tuple[str, ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if allow:
            self.send_header("Allow", ", ".join(allow))
        if status >= 400:
            # After an error the request's body may be unread: start afresh.
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (bad request line, header too long, unknown
        # method) in the API's format instead of an HTML page.
        try:
            phrase = http.HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.close_connection = True
        self._reply(code, {"error": message or phrase})

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("control API: " + format, *args)


def _json(payload: dict[str, object]) -> bytes:
    return (json.dumps(payload, indent=1) + "\n").encode()


_BUSY = _json({"error": "too many API clients at once; try again"})
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY))


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # a stuck client never keeps the VMM process alive
    request_queue_size = 64  # listen() backlog: a burst of clients waits instead of failing to connect
    block_on_close = False  # ApiServer.close waits, but only for CLOSE_GRACE

    def __init__(self, path: str, control: VmControl, header_timeout: float, max_clients: int,
                 max_body: int) -> None:
        super().__init__(path, _Handler, bind_and_activate=False)
        self.control = control
        self.header_timeout = header_timeout
        self.max_clients = max_clients
        self.max_body = max_body
        self.timeout = 0  # handle_request() only accepts what is already waiting
        self.closing = False
        self.active: set[socket.socket] = set()
        self.idle = threading.Condition()

    def verify_request(self, request: socket.socket | tuple[bytes, socket.socket],  # type: ignore[override]
                       client_address: object) -> bool:
        assert isinstance(request, socket.socket)
        with self.idle:
            if len(self.active) < self.max_clients:
                self.active.add(request)
                return True
        try:
            request.settimeout(0.5)
            request.sendall(_BUSY_RESPONSE)
            # Read what the client sent already: closing on unread data
            # would reset the connection before it reads the 503.
            request.setblocking(False)
            while request.recv(65536):
                pass
        except OSError:
            pass
        return False

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)  # type: ignore[arg-type]
        finally:
            with self.idle:
                self.active.discard(request)
                self.idle.notify_all()

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hung up mid-reply, say: not worth a traceback on the console.
        log.debug("control API: connection failed", exc_info=True)


class ApiServer:
    """The control API of one VM on the unix socket `path`."""

    def __init__(self, path: str, control: VmControl, *, header_timeout: float = HEADER_TIMEOUT,
                 max_clients: int = MAX_CLIENTS, max_body: int = MAX_BODY) -> None:
        self.path = path
        _claim(path)
        self._server = _UnixServer(path, control, header_timeout, max_clients, max_body)
        try:
            self._server.server_bind()
            st = os.stat(path)
            os.chmod(path, 0o600)
            self._server.server_activate()  # listen(): connections are possible from here on
        except OSError as e:
            self._server.server_close()
            raise ApiError(f"cannot create the API socket {path}: {e.strerror or e}") from e
        self._server.socket.setblocking(False)  # accept() never waits for a client that gave up
        self._inode = (st.st_dev, st.st_ino)
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread = threading.Thread(target=self._loop, name="api", daemon=True)
        self._closed = False

    def start(self) -> ApiServer:
        self._thread.start()
        return self

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._server.socket, selectors.EVENT_READ)
            sel.register(self._wake, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fd == self._wake:
                        return
                    self._server.handle_request()

    def close(self, grace: float = CLOSE_GRACE) -> None:
        """Stop accepting, remove the socket file, let requests in flight
        finish for up to `grace` seconds, then cut the rest off."""
        if self._closed:
            return
        self._closed = True
        os.eventfd_write(self._wake, 1)
        if self._thread.is_alive():
            self._thread.join()
        self._server.server_close()
        self._unlink()
        server = self._server
        with server.idle:
            server.closing = True
            # No more requests: idle keep-alive connections read EOF and end
            # now, while a command in flight (a stop) still writes its reply.
            self._shutdown_clients(socket.SHUT_RD)
            server.idle.wait_for(lambda: not server.active, timeout=grace)
            self._shutdown_clients(socket.SHUT_RDWR)  # the rest: their next write fails, they end
        os.close(self._wake)

    def _shutdown_clients(self, how: int) -> None:
        for sock in self._server.active:
            try:
                sock.shutdown(how)
            except OSError:
                pass

    def _unlink(self) -> None:
        # Only our own socket: another VM may have taken the path since.
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass


def _claim(path: str) -> None:
    """Make `path` free for a new socket: nothing there, or a stale socket
    (removed); anything else is an ApiError."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ApiError(f"cannot use {path} for the API socket: {e.strerror}") from e
    if not stat.S_ISSOCK(st.st_mode):
        raise ApiError(f"{path} exists and is not a socket: remove it or choose another --api-socket path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:  # nobody listens: left behind by a VM that died
        log.info("removing stale API socket %s", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except FileNotFoundError:
        return
    except OSError as e:  # a timeout (its backlog is full) means someone is there too
        raise ApiError(f"{path} is in use ({e.strerror or e}): choose another --api-socket path") from e
    finally:
        probe.close()
    raise ApiError(f"{path} is the API socket of a running VM: stop that VM or choose another --api-socket path")
