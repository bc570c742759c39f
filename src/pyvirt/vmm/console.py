"""The serial console's host side: terminal, file, unix socket or nothing.

In a terminal the console is interactive like QEMU's -nographic: raw mode
(restored on exit), host keystrokes go to the guest UART, and Ctrl-A x quits
(Ctrl-A Ctrl-A sends a literal Ctrl-A, Ctrl-A h prints help).
"""

from __future__ import annotations

import os
import sys
import termios
import threading
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

from .config import SerialConfig

CTRL_A = 0x01
HELP = b"\r\nC-a x  quit\r\nC-a h  this help\r\nC-a C-a  send C-a\r\n"


class Console:
    """Owns the host end of COM1. `write` is called from vCPU threads;
    `fileno()`/`on_readable()` are polled by the VMM's main loop."""

    def __init__(self, cfg: SerialConfig, on_quit: Callable[[], None]) -> None:
        self.cfg = cfg
        self.on_quit = on_quit
        self.receive: Callable[[bytes], None] = lambda data: None
        self._out_fd = -1
        self._in_fd = -1
        self._saved_tty: list | None = None
        self._listener: "socket.socket | None" = None
        self._client: "socket.socket | None" = None
        self._escape = False
        # Bumped whenever the client changes: a new client may get the fd
        # number of the one it replaced, and the main loop must register it
        # anew (epoll dropped the old file when it was closed).
        self.generation = 0
        self._lock = threading.Lock()
        self.interactive = False
        if cfg.kind == "stdio":
            self._out_fd = sys.stdout.fileno()
            try:
                self._in_fd = sys.stdin.fileno()
            except (OSError, ValueError):
                self._in_fd = -1
            self.interactive = self._in_fd >= 0 and os.isatty(self._in_fd)
        elif cfg.kind == "file":
            self._out_fd = os.open(cfg.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        elif cfg.kind == "socket":
            import socket
            if os.path.exists(cfg.path):
                os.unlink(cfg.path)
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(cfg.path)
            self._listener.listen(1)
            self._listener.setblocking(False)

    # --- output (vCPU threads) ---------------------------------------------
    def write(self, data: bytes) -> None:
        if self._out_fd >= 0:
            try:
                os.write(self._out_fd, data)
            except OSError:
                self._out_fd = -1  # reader went away; the guest keeps running
        elif (client := self._client) is not None:
            try:
                client.sendall(data)
            except OSError:
                # The client is going away: the main loop sees its EOF and
                # drops it. Closing it here, on a vCPU thread, would race
                # with the main loop polling its fd.
                pass

    # --- input (main thread) -----------------------------------------------
    def start(self) -> None:
        if self.interactive:
            self._saved_tty = termios.tcgetattr(self._in_fd)
            mode = termios.tcgetattr(self._in_fd)
            # raw input, but keep output post-processing so "\n" still returns the carriage
            mode[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
            mode[2] = (mode[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
            mode[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
            mode[6][termios.VMIN] = 1
            mode[6][termios.VTIME] = 0
            termios.tcsetattr(self._in_fd, termios.TCSAFLUSH, mode)

    def close(self) -> None:
        if self._saved_tty is not None:
            termios.tcsetattr(self._in_fd, termios.TCSAFLUSH, self._saved_tty)
            self._saved_tty = None
        if self.cfg.kind == "file" and self._out_fd >= 0:
            os.close(self._out_fd)
            self._out_fd = -1
        self._drop_client()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.cfg.path)
            except OSError:
                pass

    def readable_fds(self) -> list[int]:
        fds = []
        if self._in_fd >= 0:
            fds.append(self._in_fd)
        if self._listener is not None:
            fds.append(self._listener.fileno())
        client = self._client
        if client is not None and client.fileno() >= 0:
            fds.append(client.fileno())
        return fds

    def on_readable(self, fd: int) -> None:
        if self._listener is not None and fd == self._listener.fileno():
            conn, _ = self._listener.accept()
            self._drop_client()
            self._client = conn
            self.generation += 1
            return
        if fd != self._in_fd and (self._client is None or fd != self._client.fileno()):
            return  # a client replaced in this same round of events: its fd is closed
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            if fd == self._in_fd:
                self._in_fd = -1  # EOF on stdin: the guest keeps running
            else:
                self._drop_client()
            return
        if self.interactive and fd == self._in_fd:
            data = self._filter_escapes(data)
        if data:
            self.receive(data)

    def drain(self, fd: int, limit: int = 1 << 20) -> None:
        """Read a non-pollable input (regular file, /dev/null) to its end, up to `limit` bytes."""
        total = 0
        while total < limit:
            before = self._in_fd
            self.on_readable(fd)
            if self._in_fd != before or self._in_fd < 0:
                break
            total += 4096
        if fd == self._in_fd:
            self._in_fd = -1

    def _filter_escapes(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if self._escape:
                self._escape = False
                if b in (ord("x"), ord("X")):
                    self.write(b"\r\npyvirt: terminated by C-a x\r\n")
                    self.on_quit()
                    return bytes(out)
                if b == ord("h"):
                    self.write(HELP)
                elif b == CTRL_A:
                    out.append(CTRL_A)
                continue
            if b == CTRL_A:
                self._escape = True
            else:
                out.append(b)
        return bytes(out)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            self.generation += 1
            client.close()
