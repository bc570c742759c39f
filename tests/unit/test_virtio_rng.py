"""virtio-rng: buffers filled with entropy, capped per request, state checks."""

from __future__ import annotations

import dataclasses

import pytest

from pyvirt.devices.virtio.device import RNG
from pyvirt.devices.virtio.queue import VIRTQ_DESC_F_WRITE
from pyvirt.devices.virtio.rng import MAX_REQUEST, RngState, VirtioRng
from pyvirt.memory.guest import GuestMemory
from pyvirt.testing.virtio import FakeDriverQueue, FakeInterrupt




def make(source: object = None) -> tuple[VirtioRng, FakeDriverQueue, FakeInterrupt, list[str]]:
    dev = VirtioRng() if source is None else VirtioRng(source)  # type: ignore[arg-type]
    mem = GuestMemory.from_bytearray(1 << 20)
    drv = FakeDriverQueue(mem, size=16)
    irq = FakeInterrupt()
    resets: list[str] = []
    real = dev.needs_reset  # record the reasons, keep the base class's behaviour
    dev.needs_reset = lambda reason: (resets.append(reason), real(reason))[1]  # type: ignore[method-assign]
    dev.driver_features = dev.device_features
    dev.activate(mem, [drv.virtqueue(indirect=True)], irq)
    return dev, drv, irq, resets


def test_identity() -> None:
    dev = VirtioRng()
    assert dev.device_type == RNG == 4 and dev.num_queues == 1 and dev.config_bytes() == b""


def test_fills_buffers() -> None:
    dev, drv, irq, _ = make()
    a = drv.add_chain([], [64])
    b = drv.add_chain([], [16, 16], indirect=True)
    dev.queue_notify(0)
    assert drv.used() == [(a, 64), (b, 32)]
    assert irq.used_calls == [0]
    assert len(drv.read_written(a)) == 64
    assert drv.read_written(a) != bytes(64)  # 2**-512 odds of a false failure
    assert dev.bytes_served == 96


def test_caps_large_requests() -> None:
    calls: list[int] = []

    def source(n: int) -> bytes:
        calls.append(n)
        return b"\x5a" * n

    dev, drv, _, _ = make(source)
    head = drv.add_chain([], [MAX_REQUEST, 4096])
    dev.queue_notify(0)
    assert drv.used() == [(head, MAX_REQUEST)]
    assert calls == [MAX_REQUEST]
    assert drv.read_written(head) == b"\x5a" * MAX_REQUEST


def test_readable_only_chain_and_other_queue() -> None:
    dev, drv, _, resets = make()
    head = drv.add_chain([b"junk"], [])
    dev.queue_notify(1)  # no such queue: ignored
    assert drv.used() == []
    dev.queue_notify(0)
    assert drv.used() == [(head, 0)] and resets == []


def test_broken_ring_needs_reset() -> None:
    dev, drv, _, resets = make()
    drv.add_raw([(2 << 20, 16, VIRTQ_DESC_F_WRITE, 0)])
    dev.queue_notify(0)
    dev.queue_notify(0)
    assert len(resets) == 1 and "not inside guest memory" in resets[0] and dev.broken
    dev.reset()
    assert not dev.broken
    dev.queue_notify(0)  # not active: nothing happens


def test_not_active() -> None:
    VirtioRng().queue_notify(0)


def test_state() -> None:
    dev, _, _, _ = make()
    s = dev.state()
    other = VirtioRng()
    other.restore(s)
    assert other.state() == s == RngState(dev.device_features, dev.device_features)
    for bad in (dataclasses.replace(s, version=9), dataclasses.replace(s, driver_features=1 << 60),
                dataclasses.replace(s, device_features=0), dataclasses.replace(s, driver_features=-1)):
        with pytest.raises(ValueError):
            VirtioRng().restore(bad)
