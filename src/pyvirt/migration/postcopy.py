"""Post-copy on the destination: the VM runs before all of its memory is here.

At POSTCOPY the source lists the pages it still has newer copies of. The
destination drops its stale copies of them (MADV_DONTNEED: the pages are
missing again) and registers all guest RAM with userfaultfd (missing
mode), so any touch of a missing page, by a vCPU in KVM or by a device
model in this process, waits until the page is supplied.

The pages are supplied by a separate process, the fault server (`serve`,
run as `python -m pyvirt.migration.postcopy`): a thread of this process
cannot do it, because a device model that touches a missing page blocks in
the page fault while holding the GIL, and a Python fault handler in the
same process would then never run (memory/userfault.py). The server gets
the userfaultfd and the migration socket. For every fault it asks the
source for the page (REQUEST) or, for a page the source never sent (it was
zero), installs a zero page; every page that arrives (requested or pushed
by the source in the background) is installed with UFFDIO_COPY, which also
wakes whoever waits for it. When the source has sent every page (DONE) the
server answers DONE and exits 0; the VM process then closes its
userfaultfd and memory is ordinary again.

If the server fails (the connection is cut), the VM cannot go on: part of
its memory is only at the source, whose paused copy is complete. The VM
process stops the VM with an error saying so.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import threading

from .._log import get_logger
from . import stream
from .dirty import PAGE
from .stream import Channel, MigrationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..memory import Region
    from ..memory.userfault import UserFault
    from ..vmm.machine import Machine

log = get_logger(__name__)

MADV_DONTNEED = 4
PREFETCH = 16  # pages asked for around a faulting one: guests touch memory in runs


class PostcopyDestination:
    """The VM process's side. Made when the source allows post-copy: it
    starts the fault server at once (a Python process takes tens of
    milliseconds to start, which must not add to the switchover), and
    `start` gives it the pages to fetch when post-copy begins."""

    def __init__(self, m: Machine, ch: Channel) -> None:
        from ..memory.userfault import UserFault, available

        why = available()
        if why is not None:
            raise MigrationError(f"post-copy needs userfaultfd: {why}")
        self.m = m
        self.ch = ch
        self.pending: list[tuple[int, int]] = []
        self.uffd: UserFault | None = UserFault()
        go_r, self._go_w = os.pipe()
        fds = (self.uffd.fileno(), ch.sock.fileno(), go_r)
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "pyvirt.migration.postcopy"], stdin=subprocess.PIPE, pass_fds=fds,
            close_fds=True)
        os.close(go_r)
        self._spec = {"uffd": self.uffd.fileno(), "sock": ch.sock.fileno(), "go": go_r, "peer": ch.peer}

    def start(self, pending: Sequence[tuple[int, int]]) -> None:
        """Post-copy begins: drop the stale copies of `pending`, register
        guest RAM, and tell the server what to fetch. It serves faults at
        once and reads the socket only after `go` (this process still
        talks on it until then)."""
        assert self.uffd is not None and self.proc is not None and self.proc.stdin is not None
        m = self.m
        self.pending = list(pending)
        for gpa, length in self.pending:
            region = _region(m, gpa, length)
            region.buf.madvise(MADV_DONTNEED, gpa - region.gpa, length)  # type: ignore[union-attr, call-arg]
        for r in m.mem.regions:
            self.uffd.register(r.host_address(), r.size)
        from .dirty import encode_pages

        spec = dict(self._spec, regions=[[r.gpa, r.host_address(), r.size] for r in m.mem.regions],
                    pages=encode_pages(p for gpa, n in self.pending for p in range(gpa // PAGE, (gpa + n) // PAGE)))
        try:
            self.proc.stdin.write(json.dumps(spec).encode())
            self.proc.stdin.close()
        except OSError as e:
            raise MigrationError(f"the post-copy fault server is gone: {e}") from e

    def not_needed(self) -> None:
        """Pre-copy converged: end the idle server."""
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()  # it reads an empty spec and exits
            self.proc.wait()
            self.proc = None
        os.close(self._go_w)
        self._close_uffd()

    def go(self) -> None:
        """Let the server take the socket, and watch it until it ends."""
        os.write(self._go_w, b"g")
        os.close(self._go_w)
        threading.Thread(target=self._watch, name="postcopy-watch", daemon=True).start()

    def _watch(self) -> None:
        from ..vmm import exit_status

        assert self.proc is not None
        status = self.proc.wait()
        if status == 0:
            log.info("post-copy complete: every page is here")
            self._close_uffd()
            return
        self.m.stop(exit_status.ERROR, "post-copy failed: part of the VM's memory is only at the source; its "
                                       "paused copy is complete, resume it there")
        self._close_uffd()

    def _close_uffd(self) -> None:
        if self.uffd is not None:
            self.uffd.close()
            self.uffd = None

    def abort(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_uffd()
        try:
            os.close(self._go_w)
        except OSError:
            pass  # go() closed it


def _region(m: Machine, gpa: int, length: int) -> Region:
    for r in m.mem.regions:
        if r.gpa <= gpa and gpa + length <= r.end:
            return r
    raise MigrationError(f"post-copy page run {gpa:#x}+{length:#x} is outside guest RAM")


# --- the fault server (its own process) --------------------------------------------

class FaultServer:
    def __init__(self, uffd: UserFault, ch: Channel, regions: Sequence[tuple[int, int, int]],
                 pending: Sequence[int]) -> None:
        from ..memory.userfault import AddressMap

        self.uffd = uffd
        self.ch = ch
        self.map = AddressMap(list(regions))
        self.missing = set(pending)
        self.requested: set[int] = set()
        self.faults = self.zero = 0

    def hva(self, gpa: int, length: int) -> int:
        try:
            return self.map.hva(gpa, length)
        except ValueError as e:
            raise MigrationError(f"the source sent {e}") from e

    def on_faults(self, go: bool) -> list[int]:
        """Handle queued fault events; returns the pages to ask the source for."""
        from ..memory.userfault import PageFault

        ask: list[int] = []
        for ev in self.uffd.read_events():
            if not isinstance(ev, PageFault):
                continue
            self.faults += 1
            gpa = self.map.gpa(ev.page)
            if gpa is None:
                continue
            page = gpa // PAGE
            if page not in self.missing:
                # Never sent by the source (it was zero there), or just installed.
                if self.uffd.zeropage(ev.page, PAGE):
                    self.zero += 1
                else:  # installed meanwhile: make sure the faulting thread goes on
                    self.uffd.wake(ev.page, PAGE)
                continue
            for p in range(page, page + PREFETCH):
                if p in self.missing and p not in self.requested:
                    ask.append(p)
                    self.requested.add(p)
        return ask

    def on_pages(self, length: int) -> None:
        """Read one PAGES message and install its pages."""
        buffers: list[tuple[int, bytearray]] = []

        def target(gpa: int, n: int) -> memoryview:
            self.hva(gpa, n)  # checks the range
            buf = bytearray(n)
            buffers.append((gpa, buf))
            return memoryview(buf)

        self.ch.recv_pages(length, target, "receiving post-copy pages")
        for gpa, buf in buffers:
            self.uffd.copy(self.hva(gpa, len(buf)), buf)
            for p in range(gpa // PAGE, (gpa + len(buf)) // PAGE):
                self.missing.discard(p)
                self.requested.discard(p)

    def run(self, go_fd: int) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.uffd.fileno(), selectors.EVENT_READ, "fault")
        sel.register(go_fd, selectors.EVENT_READ, "go")
        go = False
        waiting: list[int] = []
        source_done = False
        while True:
            for key, _ in sel.select():
                if key.data == "fault":
                    waiting += self.on_faults(go)
                elif key.data == "go":
                    os.read(go_fd, 1)
                    sel.unregister(go_fd)
                    sel.register(self.ch.sock.fileno(), selectors.EVENT_READ, "sock")
                    go = True
                elif key.data == "sock":
                    kind, crc, length = self.ch.recv_frame("receiving post-copy pages")
                    if kind == stream.PAGES:
                        self.on_pages(length)
                    elif kind == stream.DONE:
                        self.ch.recv_json(kind, crc, length, "finishing post-copy")
                        source_done = True
                    else:
                        if kind == stream.ERROR:
                            self.ch.recv_json(kind, crc, length, "post-copy")
                        raise MigrationError(f"the source sent {stream.NAMES[kind]} during post-copy")
            if go and waiting:
                self.ch.send_json(stream.REQUEST, {"pages": waiting})
                waiting = []
            if source_done:
                if self.missing:
                    raise MigrationError(f"the source finished post-copy with {len(self.missing)} pages unsent")
                self.ch.send_json(stream.DONE, {})
                return


def serve() -> int:
    """The fault server's main: the spec (JSON) on stdin, the fds inherited."""
    from ..memory.userfault import UserFault

    raw = sys.stdin.buffer.read()
    if not raw:
        return 0  # the migration converged without post-copy
    spec = json.loads(raw)
    import socket

    sock = socket.socket(fileno=spec["sock"])
    sock.setblocking(True)
    sock.settimeout(None)
    ch = Channel(sock, spec["peer"])
    uffd = UserFault.from_fd(spec["uffd"])
    from .dirty import decode_pages

    regions = [tuple(r) for r in spec["regions"]]
    server = FaultServer(uffd, ch, regions,  # type: ignore[arg-type]
                         decode_pages(spec["pages"], max(g + size for g, _, size in regions) // PAGE))  # type: ignore[misc]
    try:
        server.run(spec["go"])
    except MigrationError as e:
        ch.send_error(str(e))
        print(f"pyvirt: post-copy failed: {e}", file=sys.stderr)
        return 1
    print(f"pyvirt: post-copy done: {server.faults} faults, {server.zero} zero pages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(serve())
