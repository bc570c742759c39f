"""The I/O thread: one epoll loop that runs every virtio device's work.

vCPU threads only trap the guest's accesses; the queue processing they
trigger happens here, so a slow disk never stalls a vCPU and devices never
run concurrently with themselves. Three kinds of events wake the loop:

- a queue notification: an eventfd per queue that KVM signals directly
  (ioeventfd on the notify register) or the transport signals when the
  access exited to user space;
- a host file descriptor a device watches (a TAP, a vsock unix socket);
- a device timer (a rate limiter waiting for tokens).

Devices publish their host descriptors through `host_fds()`; the loop
re-reads that list after each callback of the device, since connections
come and go (vsock).
"""

from __future__ import annotations

import os
import selectors
import threading
import time

from .._log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..devices.virtio.device import VirtioDevice

log = get_logger(__name__)
_GONE = object()


class IoThread:
    """An epoll loop on a thread of its own; `add_*` may be called from any thread."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel.register(self._wake, selectors.EVENT_READ, None)
        self._devices: list[VirtioDevice] = []
        self._watched: dict[int, dict[int, object]] = {}  # id(device) -> its registered host fds and tokens
        self._stop = False
        # Held by the loop while it runs device work, and by hold() to keep it
        # from running any (a state save wants the devices still).
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None
        self.errors = 0

    # --- registration -------------------------------------------------------
    def add_eventfd(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback` whenever the eventfd `fd` is signalled (its counter is reset first)."""

        def ready() -> None:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                return  # another wake-up already consumed it
            callback()

        with self._lock:
            self._sel.register(fd, selectors.EVENT_READ, ready)
        self.wake()

    def add_device(self, device: VirtioDevice) -> None:
        """Watch the device's host descriptors and timers."""
        with self._lock:
            self._devices.append(device)
            self._watched[id(device)] = {}
        self._sync_host_fds(device)
        self.wake()

    def _sync_host_fds(self, device: VirtioDevice) -> None:
        wanted = dict(device.host_fds())
        with self._lock:
            have = self._watched.get(id(device))
            if have is None:
                return
            # A device may close a socket and open another that gets the same
            # number (with a new token): epoll dropped the old one when it was
            # closed, so a changed token means registering afresh.
            stale = {fd for fd, token in have.items() if wanted.get(fd, _GONE) is not token}
            for fd in stale:
                try:
                    self._sel.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass
            for fd in wanted.keys() - (have.keys() - stale):
                token = wanted[fd]
                try:
                    self._sel.register(fd, selectors.EVENT_READ,
                                       lambda d=device, t=token: self._host_ready(d, t))
                except (KeyError, ValueError, OSError) as e:
                    log.warning("virtio-%s: cannot watch fd %d: %s", device.name, fd, e)
                    wanted.pop(fd)
            self._watched[id(device)] = wanted

    def _host_ready(self, device: VirtioDevice, token: object) -> None:
        device.host_ready(token)
        self._sync_host_fds(device)

    def after_notify(self, device: VirtioDevice) -> None:
        """Re-read a device's host descriptors (call after a queue notification)."""
        self._sync_host_fds(device)

    def wake(self) -> None:
        os.eventfd_write(self._wake, 1)

    # --- the loop -----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="virtio-io", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _timeout(self) -> float | None:
        """Seconds until the earliest device timer, or None to wait for events only."""
        now = time.monotonic()
        best: float | None = None
        for d in self._devices:
            deadline_fn = getattr(d, "next_deadline", None)
            deadline = deadline_fn() if deadline_fn is not None else None
            if deadline is not None:
                wait = max(0.0, deadline - now)
                best = wait if best is None else min(best, wait)
        return best

    def _run_timers(self) -> None:
        now = time.monotonic()
        for d in self._devices:
            deadline_fn = getattr(d, "next_deadline", None)
            deadline = deadline_fn() if deadline_fn is not None else None
            if deadline is not None and deadline <= now:
                d.on_timer()  # type: ignore[attr-defined]
                self._sync_host_fds(d)

    def run(self) -> None:
        while not self._stop:
            events = self._sel.select(self._timeout())
            with self._busy:
                for key, _ in events:
                    if key.data is None:
                        try:
                            os.eventfd_read(self._wake)
                        except BlockingIOError:
                            pass
                        continue
                    self._call(key.data)
                self._call(self._run_timers)

    def hold(self) -> None:
        """Keep the loop from running device work until `release()`: returns
        once a callback in progress has finished. Notifications meanwhile
        stay pending in their eventfds. Not from the I/O thread itself."""
        self._busy.acquire()

    def release(self) -> None:
        self._busy.release()

    def _call(self, fn: Callable[[], None]) -> None:
        # A device bug must not end the I/O of every other device: log it and
        # go on (the guest sees that device stop answering).
        try:
            fn()
        except Exception:  # noqa: BLE001 - the loop must survive any device
            self.errors += 1
            if self.errors <= 10:
                log.exception("virtio I/O thread: a device raised")

    def close(self) -> None:
        self.stop()
        for fd in list(self._sel.get_map() or ()):
            try:
                self._sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        self._sel.close()
        os.close(self._wake)
