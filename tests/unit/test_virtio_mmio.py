"""virtio-mmio transport: a driver's init sequence, interrupts, negotiation
rules, NEEDS_RESET, save/restore, and a hostile-guest register fuzz."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.devices.virtio import mmio as M
from pyvirt.devices.virtio.device import (ACKNOWLEDGE, DRIVER, DRIVER_OK, F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1,
                                          FEATURES_OK, NEEDS_RESET, VirtioDevice)
from pyvirt.devices.virtio.mmio import VirtioMmio
from pyvirt.devices.virtio.queue import Virtqueue, VirtqueueError
from pyvirt.memory.guest import GuestMemory
from pyvirt.testing.irq import FakeIrq
from pyvirt.testing.virtio import FakeDriverQueue

F_DUMMY = 1 << 0


class Dummy(VirtioDevice):
    """Answers every chain with b"ok" and interrupts; records what the transport did."""

    device_type = 0x2A
    num_queues = 2
    queue_max_size = 16
    name = "dummy"

    def __init__(self) -> None:
        super().__init__()
        self.device_features |= F_DUMMY
        self.cfg = bytearray(range(0x10, 0x20))
        self.activations: list[list[int]] = []
        self.notified: list[int] = []
        self.resets = 0
        self.errors = 0

    def config_bytes(self) -> bytes:
        return bytes(self.cfg)

    def config_write(self, offset: int, size: int, value: int) -> None:
        if 0 <= offset and offset + size <= 4:  # the first 4 bytes are writable
            self.cfg[offset:offset + size] = value.to_bytes(size, "little")

    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], interrupt: object) -> None:
        super().activate(mem, queues, interrupt)  # type: ignore[arg-type]
        self.activations.append([q.index for q in queues])

    def reset(self) -> None:
        super().reset()
        self.resets += 1

    def queue_notify(self, index: int) -> None:
        self.notified.append(index)
        with self.lock:
            q = next((q for q in self.queues if q.index == index), None)
            if q is None or self.mem is None or self.interrupt is None:
                return
            try:
                while (chain := q.pop()) is not None:
                    q.push(chain.head, chain.write(self.mem, b"ok"))
            except VirtqueueError:
                self.errors += 1
                return
            if q.should_notify():
                self.interrupt.used(index)


class Rig:
    def __init__(self) -> None:
        self.mem = GuestMemory.from_bytearray(1 << 20)
        self.dev = Dummy()
        self.irq = FakeIrq()
        self.kicks: list[int] = []
        self.t = VirtioMmio(self.dev, self.mem, self.irq, self._kick)

    def _kick(self, index: int) -> None:
        self.kicks.append(index)
        self.dev.queue_notify(index)

    def r(self, off: int) -> int:
        return self.t.read(off, 4)

    def w(self, off: int, value: int) -> None:
        self.t.write(off, 4, value)

    def negotiate(self, features: int = F_VERSION_1 | F_DUMMY) -> int:
        self.w(M.STATUS, 0)
        self.w(M.STATUS, ACKNOWLEDGE)
        self.w(M.STATUS, ACKNOWLEDGE | DRIVER)
        self.w(M.DRIVER_FEATURES_SEL, 0)
        self.w(M.DRIVER_FEATURES, features & 0xFFFFFFFF)
        self.w(M.DRIVER_FEATURES_SEL, 1)
        self.w(M.DRIVER_FEATURES, features >> 32)
        self.w(M.STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK)
        return self.r(M.STATUS)

    def setup_queue(self, index: int, drv: FakeDriverQueue) -> None:
        self.w(M.QUEUE_SEL, index)
        assert self.r(M.QUEUE_NUM_MAX) == 16
        assert self.r(M.QUEUE_READY) == 0
        self.w(M.QUEUE_NUM, drv.size)
        for reg, addr in ((M.QUEUE_DESC_LOW, drv.desc_addr), (M.QUEUE_DRIVER_LOW, drv.avail_addr),
                          (M.QUEUE_DEVICE_LOW, drv.used_addr)):
            self.w(reg, addr & 0xFFFFFFFF)
            self.w(reg + 4, addr >> 32)
        self.w(M.QUEUE_READY, 1)
        assert self.r(M.QUEUE_READY) == 1

    def bring_up(self, features: int = F_VERSION_1 | F_DUMMY) -> list[FakeDriverQueue]:
        assert self.negotiate(features) & FEATURES_OK
        drvs = [FakeDriverQueue(self.mem, 16, desc=0x1000 + 0x1000 * i, buffers=(0x10000 + 0x8000 * i,
                                                                                  0x18000 + 0x8000 * i))
                for i in range(2)]
        for i, drv in enumerate(drvs):
            self.setup_queue(i, drv)
        self.w(M.STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
        return drvs


def test_identification_registers() -> None:
    rig = Rig()
    assert rig.r(M.MAGIC_VALUE) == 0x74726976
    assert rig.r(M.MAGIC_VALUE).to_bytes(4, "little") == b"virt"
    assert rig.r(M.VERSION_REG) == 2
    assert rig.r(M.DEVICE_ID) == 0x2A
    assert rig.r(M.VENDOR_ID_REG).to_bytes(4, "little") == b"PYVT"
    assert rig.r(M.SHM_LEN_LOW) == 0xFFFFFFFF  # no shared memory regions


def test_device_features_windows() -> None:
    rig = Rig()
    rig.w(M.DEVICE_FEATURES_SEL, 0)
    low = rig.r(M.DEVICE_FEATURES)
    rig.w(M.DEVICE_FEATURES_SEL, 1)
    high = rig.r(M.DEVICE_FEATURES)
    rig.w(M.DEVICE_FEATURES_SEL, 2)
    assert rig.r(M.DEVICE_FEATURES) == 0
    assert low | high << 32 == rig.dev.device_features
    assert high & 1  # VERSION_1


def test_full_driver_init_notify_and_interrupt() -> None:
    rig = Rig()
    drvs = rig.bring_up(F_VERSION_1 | F_DUMMY | F_INDIRECT_DESC)
    assert rig.r(M.STATUS) == ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    assert rig.dev.activations == [[0, 1]]
    assert rig.dev.driver_features == F_VERSION_1 | F_DUMMY | F_INDIRECT_DESC
    assert rig.dev.queues[0].indirect and not rig.dev.queues[0].event_idx

    head = drvs[1].add_chain([b"request"], [8])
    assert not rig.irq.level
    rig.w(M.QUEUE_NOTIFY, 1)
    assert rig.kicks == [1] and rig.dev.notified == [1]
    assert drvs[1].used() == [(head, 2)]
    assert drvs[1].read_written(head) == b"ok"
    assert rig.irq.level and rig.r(M.INTERRUPT_STATUS) == 1

    rig.w(M.INTERRUPT_ACK, 2)  # the wrong bit: nothing changes
    assert rig.irq.level and rig.r(M.INTERRUPT_STATUS) == 1
    rig.w(M.INTERRUPT_ACK, 1)
    assert not rig.irq.level and rig.r(M.INTERRUPT_STATUS) == 0
    assert rig.irq.raised == 1

    head = drvs[0].add_chain([b"x"], [4], indirect=True)
    rig.w(M.QUEUE_NOTIFY, 0)
    assert drvs[0].used() == [(head, 2)]
    assert rig.irq.raised == 2


def test_notify_before_driver_ok_or_for_a_bad_queue_is_not_kicked() -> None:
    rig = Rig()
    rig.w(M.QUEUE_NOTIFY, 0)
    rig.bring_up()
    rig.w(M.QUEUE_NOTIFY, 7)
    assert rig.kicks == []


def test_features_ok_needs_version_1_and_a_subset() -> None:
    rig = Rig()
    assert not rig.negotiate(F_DUMMY) & FEATURES_OK  # no VERSION_1: a legacy driver
    assert not rig.negotiate(F_VERSION_1 | 1 << 40) & FEATURES_OK  # a feature the device lacks
    assert rig.negotiate(F_VERSION_1) & FEATURES_OK
    rig.w(M.DRIVER_FEATURES_SEL, 0)
    rig.w(M.DRIVER_FEATURES, 0xFFFFFFFF)  # after FEATURES_OK: ignored
    assert rig.r(M.DRIVER_FEATURES) == 0
    assert rig.dev.driver_features == F_VERSION_1


def test_driver_ok_without_features_ok_does_not_activate() -> None:
    rig = Rig()
    rig.w(M.STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK)
    assert rig.r(M.STATUS) == ACKNOWLEDGE | DRIVER
    assert rig.dev.activations == []


def test_status_bits_only_accumulate_until_reset() -> None:
    rig = Rig()
    rig.bring_up()
    resets = rig.dev.resets
    rig.w(M.STATUS, ACKNOWLEDGE)  # a driver must not clear bits; the device keeps them
    assert rig.r(M.STATUS) & DRIVER_OK
    assert rig.dev.resets == resets
    rig.w(M.STATUS, 0)
    assert rig.r(M.STATUS) == 0
    assert rig.dev.resets == resets + 1 and rig.dev.queues == () and rig.dev.driver_features == 0
    rig.w(M.QUEUE_SEL, 0)
    assert rig.r(M.QUEUE_READY) == 0 and rig.r(M.QUEUE_DESC_LOW) == 0


def test_queue_registers_are_frozen_after_driver_ok() -> None:
    rig = Rig()
    drvs = rig.bring_up()
    rig.w(M.QUEUE_SEL, 0)
    rig.w(M.QUEUE_READY, 0)
    rig.w(M.QUEUE_DESC_LOW, 0x5000)
    rig.w(M.QUEUE_NUM, 4)
    assert rig.r(M.QUEUE_READY) == 1
    assert rig.r(M.QUEUE_DESC_LOW) == drvs[0].desc_addr
    assert rig.r(M.QUEUE_NUM) == 16


def test_only_ready_queues_are_activated() -> None:
    rig = Rig()
    rig.negotiate()
    rig.setup_queue(1, FakeDriverQueue(rig.mem, 8, desc=0x2000))
    rig.w(M.STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
    assert rig.dev.activations == [[1]]


@pytest.mark.parametrize("what", ["outside", "size", "misaligned"])
def test_bad_queue_setup_sets_needs_reset(what: str) -> None:
    rig = Rig()
    rig.negotiate()
    drv = FakeDriverQueue(rig.mem, 8, desc=0x2000)
    rig.setup_queue(0, drv)
    rig.w(M.QUEUE_SEL, 1)
    rig.w(M.QUEUE_NUM, {"outside": 8, "size": 32, "misaligned": 8}[what])
    rig.w(M.QUEUE_DESC_LOW, {"outside": 0xFFFF0000, "size": 0x4000, "misaligned": 0x4004}[what])
    rig.w(M.QUEUE_DRIVER_LOW, 0x5000)
    rig.w(M.QUEUE_DEVICE_LOW, 0x6000)
    rig.w(M.QUEUE_READY, 1)
    gen = rig.r(M.CONFIG_GENERATION)
    rig.w(M.STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
    assert rig.r(M.STATUS) & NEEDS_RESET
    assert rig.dev.activations == []
    assert rig.r(M.INTERRUPT_STATUS) == 2 and rig.irq.level
    assert rig.r(M.CONFIG_GENERATION) == gen + 1
    assert rig.t.errors == 1
    rig.w(M.STATUS, rig.r(M.STATUS))  # NEEDS_RESET survives the driver writing status back
    assert rig.r(M.STATUS) & NEEDS_RESET
    rig.w(M.STATUS, 0)
    assert rig.r(M.STATUS) == 0 and not rig.irq.level


def test_config_space_and_generation() -> None:
    rig = Rig()
    assert rig.t.read(0x100, 1) == 0x10
    assert rig.t.read(0x102, 2) == 0x1312
    assert rig.t.read(0x104, 4) == 0x17161514
    assert rig.t.read(0x108, 8) == 0x1F1E1D1C1B1A1918
    assert rig.t.read(0x10F, 4) == 0  # past the device's config
    rig.t.write(0x100, 2, 0xBEEF)
    assert rig.t.read(0x100, 4) == 0x1312BEEF
    gen = rig.r(M.CONFIG_GENERATION)
    rig.t.config_changed()
    assert rig.r(M.CONFIG_GENERATION) == gen + 1
    assert rig.r(M.INTERRUPT_STATUS) == 2 and rig.irq.level
    rig.w(M.INTERRUPT_ACK, 3)
    assert not rig.irq.level


def test_both_interrupt_causes_need_both_acks() -> None:
    rig = Rig()
    rig.t.used(0)
    rig.t.config_changed()
    assert rig.r(M.INTERRUPT_STATUS) == 3
    rig.w(M.INTERRUPT_ACK, 1)
    assert rig.irq.level
    rig.w(M.INTERRUPT_ACK, 2)
    assert not rig.irq.level
    assert rig.irq.history == [True, False]  # one edge, not one per cause


@pytest.mark.parametrize("offset,size", [(0, 2), (0, 1), (2, 4), (-4, 4), (0x70, 8), (0x200, 4), (0x1FF, 2),
                                         (0x100, 3), (0x100, 0), (0x1000, 4)])
def test_odd_accesses_read_zero_and_write_nothing(offset: int, size: int) -> None:
    rig = Rig()
    before = rig.t.state()
    assert rig.t.read(offset, size) == 0
    rig.t.write(offset, size, 0xFFFFFFFF)
    assert rig.t.state() == before


def test_cmdline_param() -> None:
    assert VirtioMmio.cmdline_param(0xD0000000, 5) == "virtio_mmio.device=4K@0xd0000000:5"
    assert VirtioMmio.cmdline_param(0xD0001000, 10, 0x2000) == "virtio_mmio.device=8K@0xd0001000:10"


def test_save_restore_continues_the_rings() -> None:
    rig = Rig()
    drvs = rig.bring_up(F_VERSION_1 | F_EVENT_IDX)
    drvs[0].add_chain([b"a"], [4])
    rig.w(M.QUEUE_NOTIFY, 0)
    drvs[0].used()
    rig.w(M.QUEUE_SEL, 1)
    saved = rig.t.state()
    assert saved.version == 1 and saved.transport.active
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(saved, "version", 2)

    fresh = Rig()
    fresh.mem = rig.mem  # guest memory travels separately
    fresh.t = VirtioMmio(fresh.dev, rig.mem, fresh.irq, fresh._kick)
    fresh.t.restore(saved)
    assert fresh.t.state() == saved
    assert fresh.dev.activations == [[0, 1]]
    assert fresh.irq.level == rig.irq.level
    assert fresh.r(M.QUEUE_SEL) == 1 and fresh.r(M.STATUS) & DRIVER_OK
    head = drvs[0].add_chain([b"b"], [4])
    fresh.w(M.QUEUE_NOTIFY, 0)
    assert drvs[0].used() == [(head, 2)]


def _bad_states(saved: M.VirtioMmioState) -> list[object]:
    t = saved.transport
    q0 = t.queues[0]
    assert q0.ring is not None
    rep = dataclasses.replace
    return [
        None, t, rep(saved, version=2), rep(saved, interrupt_status=4),
        rep(saved, transport=rep(t, status=0x100)), rep(saved, transport=rep(t, status=t.status | 0x20)),
        rep(saved, transport=rep(t, driver_features=1 << 40 | F_VERSION_1)),
        rep(saved, transport=rep(t, queues=t.queues[:1])),
        rep(saved, transport=rep(t, queues=(rep(q0, ring=None),) + t.queues[1:])),
        rep(saved, transport=rep(t, queues=(rep(q0, desc=0x7000),) + t.queues[1:])),
        rep(saved, transport=rep(t, queues=(rep(q0, ring=rep(q0.ring, next_avail=1 << 16)),) + t.queues[1:])),
        rep(saved, transport=rep(t, queues=(rep(q0, ready="yes"),) + t.queues[1:])),
        rep(saved, transport=rep(t, active=True, status=t.status & ~DRIVER_OK)),
        rep(saved, transport=rep(t, status=t.status | NEEDS_RESET)),
        rep(saved, transport=rep(t, queues=(rep(q0, desc=0xFFFF0000, ring=rep(q0.ring, desc=0xFFFF0000)),)
                                 + t.queues[1:])),
    ]


def test_restore_rejects_bad_state_and_changes_nothing() -> None:
    rig = Rig()
    rig.bring_up()
    saved = rig.t.state()
    target = Rig()
    target.t = VirtioMmio(target.dev, rig.mem, target.irq, target._kick)
    before = target.t.state()
    for bad in _bad_states(saved):
        with pytest.raises(ValueError):
            target.t.restore(bad)  # type: ignore[arg-type]
        assert target.t.state() == before
        assert target.dev.activations == []


SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
REGS = [0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60, 0x64, 0x70,
        0x80, 0x84, 0x90, 0x94, 0xA0, 0xA4, 0xAC, 0xB0, 0xFC, 0x100, 0x104]
values = st.one_of(st.integers(0, 0xFF), st.sampled_from([0, 1, 2, 3, 7, 8, 15, 0x1000, 0x2000, 0x3000]),
                   st.integers(0, 0xFFFFFFFF), st.integers(-(2**70), 2**70))
ops = st.lists(st.one_of(
    st.tuples(st.just("r"), st.integers(-8, 0x210), st.sampled_from([1, 2, 4, 8, -1, 0, 3, 16])),
    st.tuples(st.just("w"), st.integers(-8, 0x210), st.sampled_from([1, 2, 4, 8, -1, 0, 3]), values),
    st.tuples(st.just("w"), st.sampled_from(REGS), st.just(4), values),
    st.tuples(st.just("w"), st.just(0x70), st.just(4), st.sampled_from([0, 1, 3, 11, 15])),
    st.tuples(st.just("irq"), st.integers(0, 3)),
), max_size=120)


@pytest.mark.parametrize("running", [False, True])
@SETTINGS
@given(script=ops)
def test_random_register_accesses_never_escape(running: bool, script: list[tuple]) -> None:
    rig = Rig()
    if running:  # from a live device, so notifies, resets and re-setup get exercised
        rig.bring_up(F_VERSION_1 | F_EVENT_IDX)[0].add_chain([b"q"], [2])
    for op in script:
        if op[0] == "r":
            value = rig.t.read(op[1], op[2])
            assert isinstance(value, int)
            if op[2] in (1, 2, 4, 8):
                assert 0 <= value < 1 << (8 * op[2])
        elif op[0] == "w":
            rig.t.write(op[1], op[2], op[3])
        else:
            rig.t.used(op[1]) if op[1] < 3 else rig.t.config_changed()
    assert rig.irq.level == bool(rig.r(M.INTERRUPT_STATUS))
    saved = rig.t.state()
    fresh = Rig()
    fresh.t = VirtioMmio(fresh.dev, rig.mem, fresh.irq, fresh._kick)
    fresh.t.restore(saved)
    assert fresh.t.state() == saved
