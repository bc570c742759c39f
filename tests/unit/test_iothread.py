"""The virtio I/O thread: eventfds, device host descriptors, timers, faults."""

from __future__ import annotations

import os
import socket
import threading
import time

from pyvirt.devices.virtio.device import VirtioDevice
from pyvirt.vmm.iothread import IoThread


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return False


class HostDevice(VirtioDevice):
    name = "test"

    def __init__(self):
        super().__init__()
        self.fds: list[tuple[int, object]] = []
        self.ready: list[object] = []
        self.deadline: float | None = None
        self.timers = 0

    def host_fds(self):
        return list(self.fds)

    def host_ready(self, token):
        self.ready.append(token)
        sock = token
        sock.recv(100)

    def next_deadline(self):
        return self.deadline

    def on_timer(self):
        self.timers += 1
        self.deadline = None


def test_eventfd_runs_its_callback_on_the_io_thread():
    io = IoThread()
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    seen = []
    io.add_eventfd(fd, lambda: seen.append(threading.current_thread().name))
    io.start()
    try:
        os.eventfd_write(fd, 1)
        assert wait_for(lambda: seen == ["virtio-io"])
        os.eventfd_write(fd, 1)
        os.eventfd_write(fd, 1)  # coalesced or not, at least one more call
        assert wait_for(lambda: len(seen) >= 2)
    finally:
        io.close()
        os.close(fd)


def test_host_fd_with_a_new_token_is_watched_again_after_fd_reuse():
    io = IoThread()
    dev = HostDevice()
    a, peer_a = socket.socketpair()
    dev.fds = [(a.fileno(), a)]
    io.add_device(dev)
    io.start()
    try:
        peer_a.send(b"x")
        assert wait_for(lambda: dev.ready == [a])
        num = a.fileno()
        a.close()
        peer_a.close()
        b, peer_b = socket.socketpair()
        if b.fileno() != num:  # make the new socket take the old number, as the kernel would
            os.dup2(b.fileno(), num)
            b.close()
            b = socket.socket(fileno=num)
        dev.fds = [(num, b)]
        io.after_notify(dev)
        peer_b.send(b"y")
        assert wait_for(lambda: dev.ready[-1] is b)
    finally:
        io.close()


def test_device_timer_fires_at_its_deadline():
    io = IoThread()
    dev = HostDevice()
    dev.deadline = time.monotonic() + 0.05
    io.add_device(dev)
    io.start()
    try:
        assert wait_for(lambda: dev.timers == 1)
    finally:
        io.close()


def test_a_device_that_raises_does_not_stop_the_loop():
    io = IoThread()
    fd1, fd2 = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    seen = []

    def bad():
        raise RuntimeError("device bug")

    io.add_eventfd(fd1, bad)
    io.add_eventfd(fd2, lambda: seen.append(1))
    io.start()
    try:
        os.eventfd_write(fd1, 1)
        assert wait_for(lambda: io.errors == 1)
        os.eventfd_write(fd2, 1)
        assert wait_for(lambda: seen == [1])
    finally:
        io.close()
        os.close(fd1)
        os.close(fd2)
