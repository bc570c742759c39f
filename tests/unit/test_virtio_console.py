"""virtio-console: guest output to the host, buffered host input, config, state."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from pyvirt.devices.virtio import console as conmod
from pyvirt.devices.virtio.console import (
    F_EMERG_WRITE, F_MULTIPORT, F_SIZE, INPUT_LIMIT, ConsoleState, VirtioConsole)
from pyvirt.devices.virtio.device import CONSOLE
from pyvirt.devices.virtio.queue import VIRTQ_DESC_F_WRITE
from pyvirt.memory.guest import GuestMemory
from pyvirt.testing.virtio import FakeDriverQueue, FakeInterrupt




class Rig:
    def __init__(self, *, cols: int = 0, rows: int = 0, activate: bool = True) -> None:
        self.out: list[bytes] = []
        self.dev = VirtioConsole(self.out.append, cols=cols, rows=rows)
        self.mem = GuestMemory.from_bytearray(4 << 20)
        # Two queues in one memory: rings at the start and in the middle.
        self.rx = FakeDriverQueue(self.mem, size=16, buffers=(0x10000, 0x200000))
        self.tx = FakeDriverQueue(self.mem, size=16, desc=0x200000, buffers=(0x210000, 0x400000))
        self.irq = FakeInterrupt()
        self.resets: list[str] = []
        real = self.dev.needs_reset  # record the reasons, keep the base class's behaviour
        self.dev.needs_reset = lambda reason: (self.resets.append(reason), real(reason))[1]  # type: ignore[method-assign]
        if activate:
            self.activate()

    def activate(self) -> None:
        self.dev.driver_features = self.dev.device_features
        self.dev.activate(self.mem, [self.rx.virtqueue(index=0), self.tx.virtqueue(index=1)], self.irq)

    def send(self, *chunks: bytes) -> int:
        head = self.tx.add_chain(list(chunks), [])
        self.dev.queue_notify(1)
        return head


def test_identity_and_config() -> None:
    r = Rig(cols=80, rows=25)
    assert r.dev.device_type == CONSOLE == 3 and r.dev.num_queues == 2
    f = r.dev.device_features
    assert f & F_SIZE and f & F_EMERG_WRITE and not f & F_MULTIPORT
    assert r.dev.config_read(0, 2) == 80 and r.dev.config_read(2, 2) == 25 and r.dev.config_read(4, 4) == 1
    assert not Rig().dev.device_features & F_SIZE
    with pytest.raises(ValueError):
        VirtioConsole(print, cols=70000)


def test_guest_output() -> None:
    r = Rig()
    a = r.send(b"hello, ", b"world")
    b = r.send(b"\n")
    assert b"".join(r.out) == b"hello, world\n"
    assert r.tx.used() == [(a, 0), (b, 0)]
    assert r.irq.used_calls == [1, 1]
    assert r.dev.statistics().tx_bytes == 13


def test_output_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conmod, "TX_BATCH", 10)
    r = Rig()
    for i in range(5):
        r.tx.add_chain([bytes([65 + i]) * 6], [])
    r.dev.queue_notify(1)
    assert r.out == [b"A" * 6 + b"B" * 6, b"C" * 6 + b"D" * 6, b"E" * 6]
    assert len(r.tx.used()) == 5


def test_huge_chain_truncated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conmod, "TX_CHAIN_MAX", 100)
    r = Rig()
    r.send(b"x" * 150)
    assert r.out == [b"x" * 100] and r.dev.statistics().tx_truncated == 50


def test_output_called_without_the_lock() -> None:
    r = Rig()
    seen: list[bool] = []

    def out(data: bytes) -> None:
        # Another thread can feed input while output blocks.
        def other() -> None:
            got = r.dev.lock.acquire(timeout=5)
            seen.append(got)
            if got:
                r.dev.lock.release()

        t = threading.Thread(target=other)
        t.start()
        t.join()

    r.dev.output = out
    r.send(b"x")
    assert seen == [True]


def test_input_waits_for_buffers() -> None:
    r = Rig()
    r.dev.input(b"abc")
    r.dev.input(b"def")
    assert r.dev.pending_input() == 6 and r.rx.used() == []
    h1 = r.rx.add_chain([], [4])
    h2 = r.rx.add_chain([], [64])
    r.dev.queue_notify(0)
    assert r.rx.used() == [(h1, 4), (h2, 2)]
    assert r.rx.read_written(h1) + r.rx.read_written(h2) == b"abcdef"
    assert r.irq.used_calls == [0]
    h3 = r.rx.add_chain([], [64])
    r.dev.queue_notify(0)
    assert r.rx.used() == []  # posted, waiting for input
    r.dev.input(b"xyz")
    assert r.rx.used() == [(h3, 3)] and r.rx.read_written(h3) == b"xyz"
    assert r.dev.statistics().rx_bytes == 9


def test_input_before_activation() -> None:
    r = Rig(activate=False)
    r.dev.input(b"early")
    head = r.rx.add_chain([], [16])  # posted before DRIVER_OK: its kick was not delivered
    r.activate()
    assert r.rx.used() == [(head, 5)] and r.rx.read_written(head) == b"early"


def test_input_bounded_drops_oldest() -> None:
    r = Rig()
    r.dev.input(b"a" * INPUT_LIMIT)
    r.dev.input(b"0123456789")
    assert r.dev.pending_input() == INPUT_LIMIT
    assert r.dev.statistics().rx_dropped == 10
    head = r.rx.add_chain([], [INPUT_LIMIT])
    r.dev.queue_notify(0)
    assert r.rx.read_written(head)[-12:] == b"aa0123456789"


def test_emergency_write() -> None:
    r = Rig()
    r.dev.config_write(8, 4, 0x1234_0041)
    r.dev.config_write(0, 2, 0x42)  # cols are read-only
    assert r.out == [b"A"]


def test_resize() -> None:
    r = Rig(cols=80, rows=24)
    r.dev.resize(132, 43)
    assert r.dev.config_read(0, 2) == 132 and r.irq.config_calls == 1
    r.dev.resize(132, 43)
    assert r.irq.config_calls == 1  # no change, no interrupt
    plain = Rig()
    plain.dev.resize(100, 30)  # F_SIZE not offered: config changes silently
    assert plain.irq.config_calls == 0


def test_broken_rings_need_reset() -> None:
    r = Rig()
    r.tx.add_raw([(8 << 20, 16, 0, 0)])
    r.dev.queue_notify(1)
    assert len(r.resets) == 1 and "not inside guest memory" in r.resets[0]
    assert r.dev.broken and r.irq.config_calls == 1
    r.dev.input(b"x")  # quiet until reset
    r.dev.queue_notify(1)
    assert len(r.resets) == 1 and r.out == []
    r.dev.reset()
    assert not r.dev.broken and r.dev.pending_input() == 1


def test_receive_ring_broken() -> None:
    r = Rig()
    r.rx.add_raw([(0x1000, 16, VIRTQ_DESC_F_WRITE, 0), (0, 0, 0, 0)], at=3, head=20 % 16)
    r.rx.set_avail_idx(r.rx.avail_idx + 20)  # avail.idx far ahead of the device
    r.dev.input(b"x")
    assert len(r.resets) == 1


def test_state() -> None:
    r = Rig(cols=80, rows=24)
    r.dev.input(b"pending")
    s = r.dev.state()
    assert s.rx_pending == b"pending" and (s.cols, s.rows) == (80, 24)
    other = VirtioConsole(print, cols=1, rows=1)
    other.restore(s)
    assert other.state() == s
    for bad in (dataclasses.replace(s, version=2), dataclasses.replace(s, cols=1 << 16),
                dataclasses.replace(s, rx_pending=b"x" * (INPUT_LIMIT + 1)),
                dataclasses.replace(s, rx_pending="str"), dataclasses.replace(s, driver_features=1 << 40)):
        with pytest.raises(ValueError):
            VirtioConsole(print, cols=1, rows=1).restore(bad)  # type: ignore[arg-type]
    assert isinstance(s, ConsoleState)
