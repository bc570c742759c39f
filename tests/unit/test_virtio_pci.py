"""virtio-pci transport: IDs and capabilities as a driver finds them, the init
sequence through the common configuration, MSI-X and INTx/ISR interrupts,
notify addresses, the PCI_CFG window, save/restore, and a register fuzz."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.devices.bus import Bus
from pyvirt.devices.pci import PciBus
from pyvirt.devices.pci import config as C
from pyvirt.devices.virtio import pci as P
from pyvirt.devices.virtio.device import (ACKNOWLEDGE, DRIVER, DRIVER_OK, F_EVENT_IDX, F_VERSION_1, FEATURES_OK,
                                          NEEDS_RESET, VirtioDevice)
from pyvirt.devices.virtio.pci import VirtioPci
from pyvirt.devices.virtio.queue import Virtqueue, VirtqueueError
from pyvirt.memory.guest import GuestMemory
from pyvirt.testing.irq import FakeIrq
from pyvirt.testing.virtio import FakeDriverQueue

NO_VECTOR = 0xFFFF


class Dummy(VirtioDevice):
    """Answers every chain with b"ok" and interrupts; records what the transport did."""

    device_type = 4  # entropy: class 0xff0000, device id 0x1044
    num_queues = 2
    queue_max_size = 16
    name = "dummy"

    def __init__(self) -> None:
        super().__init__()
        self.cfg = bytearray(range(0x20, 0x28))
        self.activations: list[list[int]] = []

    def config_bytes(self) -> bytes:
        return bytes(self.cfg)

    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], interrupt: object) -> None:
        super().activate(mem, queues, interrupt)  # type: ignore[arg-type]
        self.activations.append([q.index for q in queues])

    def queue_notify(self, index: int) -> None:
        with self.lock:
            q = next((q for q in self.queues if q.index == index), None)
            if q is None or self.mem is None or self.interrupt is None:
                return
            try:
                while (chain := q.pop()) is not None:
                    q.push(chain.head, chain.write(self.mem, b"ok"))
            except VirtqueueError:
                return
            if q.should_notify():
                self.interrupt.used(index)


class Rig:
    def __init__(self, mem: GuestMemory | None = None, assign: bool = True) -> None:
        self.mem = mem or GuestMemory.from_bytearray(1 << 20)
        self.dev = Dummy()
        self.intx = FakeIrq()
        self.kicks: list[int] = []
        self.msis: list[tuple[int, int]] = []
        self.t = VirtioPci(self.dev, self.mem, self._kick, lambda a, d: self.msis.append((a, d)), self.intx)
        self.mmio = Bus("mmio")
        self.moves: list[tuple[int, int | None, int | None]] = []
        self.pci = PciBus(self.mmio, on_bar_change=lambda d, i, old, new: self.moves.append((i, old, new)))
        self.slot = self.pci.add(self.t, irq=10, assign=assign)
        self.ecam = self.pci.ecam()

    def _kick(self, index: int) -> None:
        self.kicks.append(index)
        self.dev.queue_notify(index)

    # config space, as a driver reads it
    def cfg(self, reg: int, size: int = 4) -> int:
        return self.ecam.read(self.slot << 15 | reg, size)

    def cfg_w(self, reg: int, size: int, value: int) -> None:
        self.ecam.write(self.slot << 15 | reg, size, value)

    def vendor_caps(self) -> dict[int, tuple[int, int, int, int]]:
        """cfg_type -> (cap offset, bar, offset, length), first of each type, walking the list."""
        found: dict[int, tuple[int, int, int, int]] = {}
        ptr = self.cfg(0x34, 1)
        while ptr:
            if self.cfg(ptr, 1) == 0x09:
                kind = self.cfg(ptr + 3, 1)
                found.setdefault(kind, (ptr, self.cfg(ptr + 4, 1), self.cfg(ptr + 8), self.cfg(ptr + 12)))
            ptr = self.cfg(ptr + 1, 1)
        return found

    @property
    def bar(self) -> int:
        return self.t.mapped_bars()[0]

    def r(self, off: int, size: int) -> int:
        return self.mmio.read(self.bar + off, size)

    def w(self, off: int, size: int, value: int) -> None:
        self.mmio.write(self.bar + off, size, value)

    def status(self) -> int:
        return self.r(P.DEVICE_STATUS, 1)

    def set_status(self, value: int) -> None:
        self.w(P.DEVICE_STATUS, 1, value)

    def negotiate(self, features: int = F_VERSION_1) -> int:
        self.set_status(0)
        self.set_status(ACKNOWLEDGE)
        self.set_status(ACKNOWLEDGE | DRIVER)
        for sel in (0, 1):
            self.w(P.DRIVER_FEATURE_SELECT, 4, sel)
            self.w(P.DRIVER_FEATURE, 4, features >> (32 * sel) & 0xFFFFFFFF)
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK)
        return self.status()

    def setup_queue(self, index: int, drv: FakeDriverQueue, vector: int = NO_VECTOR) -> None:
        self.w(P.QUEUE_SELECT, 2, index)
        assert self.r(P.QUEUE_SIZE, 2) == 16
        self.w(P.QUEUE_SIZE, 2, drv.size)
        self.w(P.QUEUE_MSIX_VECTOR, 2, vector)
        for field, addr in ((P.QUEUE_DESC, drv.desc_addr), (P.QUEUE_DRIVER, drv.avail_addr),
                            (P.QUEUE_DEVICE, drv.used_addr)):
            self.w(field, 4, addr & 0xFFFFFFFF)  # Linux's two-part 64-bit write
            self.w(field + 4, 4, addr >> 32)
        self.w(P.QUEUE_ENABLE, 2, 1)

    def bring_up(self, features: int = F_VERSION_1, vectors: Sequence[int] = (NO_VECTOR, NO_VECTOR),
                 config_vector: int = NO_VECTOR) -> list[FakeDriverQueue]:
        assert self.negotiate(features) & FEATURES_OK
        self.w(P.CONFIG_MSIX_VECTOR, 2, config_vector)
        drvs = [FakeDriverQueue(self.mem, 16, desc=0x1000 + 0x1000 * i,
                                buffers=(0x10000 + 0x8000 * i, 0x18000 + 0x8000 * i)) for i in range(2)]
        for i, drv in enumerate(drvs):
            self.setup_queue(i, drv, vectors[i])
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
        return drvs

    def enable_msix(self, function_mask: bool = False) -> None:
        cap = self.t.msix.cap_offset
        self.cfg_w(cap + 2, 2, 0x8000 | function_mask << 14)
        for v in range(self.t.msix.vectors):
            self.w(P.MSIX_TABLE_OFFSET + 16 * v, 4, 0xFEE00000)
            self.w(P.MSIX_TABLE_OFFSET + 16 * v + 8, 4, 0x30 + v)
            self.w(P.MSIX_TABLE_OFFSET + 16 * v + 12, 4, 0)


def test_pci_identity() -> None:
    rig = Rig()
    assert rig.cfg(0) == 0x1044 << 16 | 0x1AF4
    assert rig.cfg(8) == 0xFF000000 | 1  # class, revision 1
    assert rig.cfg(0x2C) == 0x0040 << 16 | 0x1AF4
    assert rig.cfg(0x3C, 1) == 10 and rig.cfg(0x3D, 1) == 1
    assert rig.cfg(0x10) & 0xF == C.BAR_MEM_64


def test_bar0_is_16k_64_bit() -> None:
    rig = Rig(assign=False)
    rig.cfg_w(0x10, 4, 0xFFFFFFFF)
    rig.cfg_w(0x14, 4, 0xFFFFFFFF)
    assert rig.cfg(0x10) == 0xFFFFC000 | C.BAR_MEM_64
    assert rig.cfg(0x14) == 0xFFFFFFFF


def test_capabilities_describe_the_bar_layout() -> None:
    rig = Rig()
    caps = rig.vendor_caps()
    assert set(caps) == {P.COMMON_CFG, P.NOTIFY_CFG, P.ISR_CFG, P.DEVICE_CFG, P.PCI_CFG}
    assert caps[P.COMMON_CFG][1:] == (0, 0x0000, 0x38)
    assert caps[P.ISR_CFG][1:] == (0, 0x0800, 4)
    assert caps[P.DEVICE_CFG][1:] == (0, 0x1000, 8)
    assert caps[P.NOTIFY_CFG][1:] == (0, 0x2000, 8)
    notify_cap = caps[P.NOTIFY_CFG][0]
    assert rig.cfg(notify_cap + 2, 1) == 20 and rig.cfg(notify_cap + 16) == 4  # notify_off_multiplier
    assert rig.cfg(caps[P.PCI_CFG][0] + 2, 1) == 20
    ids = [cid for cid, _ in rig.t.config.capabilities()]
    assert ids.count(0x11) == 1  # MSI-X
    assert rig.cfg(rig.t.msix.cap_offset + 2, 2) == 2  # 3 vectors: one per queue and config


def test_full_init_with_msix() -> None:
    rig = Rig()
    rig.enable_msix()
    assert rig.r(P.NUM_QUEUES, 2) == 2
    rig.w(P.DEVICE_FEATURE_SELECT, 4, 1)
    assert rig.r(P.DEVICE_FEATURE, 4) & 1  # VERSION_1
    drvs = rig.bring_up(F_VERSION_1 | F_EVENT_IDX, vectors=(1, 2), config_vector=0)
    assert rig.r(P.CONFIG_MSIX_VECTOR, 2) == 0
    assert rig.status() == ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    assert rig.dev.activations == [[0, 1]] and rig.dev.queues[0].event_idx
    for q in (0, 1):
        rig.w(P.QUEUE_SELECT, 2, q)
        assert rig.r(P.QUEUE_NOTIFY_OFF, 2) == q
        assert rig.r(P.QUEUE_MSIX_VECTOR, 2) == q + 1
        assert rig.r(P.QUEUE_ENABLE, 2) == 1
        assert rig.r(P.QUEUE_DESC, 8) == drvs[q].desc_addr
        assert rig.r(P.QUEUE_DRIVER + 4, 4) == 0

    head = drvs[1].add_chain([b"req"], [4])
    rig.w(rig.t.notify_address(1), 2, 1)
    assert rig.kicks == [1]
    assert drvs[1].used() == [(head, 2)] and drvs[1].read_written(head) == b"ok"
    assert rig.msis == [(0xFEE00000, 0x32)]
    assert not rig.intx.level and rig.r(P.ISR_OFFSET, 1) == 0  # MSI-X: no ISR, no INTx

    gen = rig.r(P.CONFIG_GENERATION, 1)
    rig.t.config_changed()
    assert rig.msis[-1] == (0xFEE00000, 0x30)
    assert rig.r(P.CONFIG_GENERATION, 1) == gen + 1


def test_masked_vector_pends_and_unmask_delivers() -> None:
    rig = Rig()
    rig.enable_msix()
    drvs = rig.bring_up(vectors=(1, NO_VECTOR))
    rig.w(P.MSIX_TABLE_OFFSET + 16 + 12, 4, 1)  # mask vector 1
    drvs[0].add_chain([b"x"], [2])
    rig.w(rig.t.notify_address(0), 2, 0)
    assert rig.msis == [] and rig.r(P.MSIX_PBA_OFFSET, 8) == 0b10
    rig.w(P.MSIX_TABLE_OFFSET + 16 + 12, 4, 0)
    assert rig.msis == [(0xFEE00000, 0x31)] and rig.r(P.MSIX_PBA_OFFSET, 8) == 0
    drvs[1].add_chain([b"y"], [2])
    rig.w(rig.t.notify_address(1), 2, 1)  # NO_VECTOR: used, but no interrupt
    assert len(rig.msis) == 1 and drvs[1].used_idx == 1


def test_vector_beyond_the_table_reads_no_vector() -> None:
    rig = Rig()
    rig.w(P.CONFIG_MSIX_VECTOR, 2, 3)
    assert rig.r(P.CONFIG_MSIX_VECTOR, 2) == NO_VECTOR
    rig.w(P.QUEUE_SELECT, 2, 0)
    rig.w(P.QUEUE_MSIX_VECTOR, 2, 77)
    assert rig.r(P.QUEUE_MSIX_VECTOR, 2) == NO_VECTOR
    rig.w(P.QUEUE_MSIX_VECTOR, 2, 2)
    assert rig.r(P.QUEUE_MSIX_VECTOR, 2) == 2


def test_intx_and_isr_without_msix() -> None:
    rig = Rig()
    drvs = rig.bring_up()
    drvs[0].add_chain([b"x"], [2])
    rig.w(rig.t.notify_address(0), 2, 0)
    assert rig.intx.level and rig.cfg(6, 2) & C.STATUS_INTERRUPT
    assert rig.r(P.ISR_OFFSET, 1) == 1  # reading clears it and lowers the line
    assert not rig.intx.level and rig.r(P.ISR_OFFSET, 1) == 0
    rig.t.config_changed()
    rig.t.used(1)
    assert rig.intx.level and rig.r(P.ISR_OFFSET, 1) == 3
    assert rig.intx.history == [True, False, True, False]
    # INTx Disable in Command keeps the line low, the ISR still says why.
    rig.cfg_w(4, 2, C.CMD_MEMORY | C.CMD_INTX_DISABLE)
    rig.t.used(0)
    assert not rig.intx.level and rig.cfg(6, 2) & C.STATUS_INTERRUPT
    assert rig.r(P.ISR_OFFSET, 1) == 1


def test_enabling_msix_drops_a_pending_intx() -> None:
    rig = Rig()
    rig.t.used(0)
    assert rig.intx.level
    rig.enable_msix()
    assert not rig.intx.level
    rig.cfg_w(rig.t.msix.cap_offset + 2, 2, 0)  # MSI-X off again: the unread ISR raises INTx
    assert rig.intx.level


def test_odd_common_config_accesses_are_ignored() -> None:
    rig = Rig()
    assert rig.r(P.DEVICE_FEATURE, 2) == 0  # a 32-bit field read with 16 bits
    assert rig.r(P.DEVICE_STATUS, 2) == 0
    assert rig.r(P.QUEUE_DESC + 2, 4) == 0
    rig.w(P.QUEUE_SELECT, 4, 0)  # wrong width: ignored
    rig.w(P.QUEUE_SELECT, 2, 9)
    assert rig.r(P.QUEUE_SIZE, 2) == 0 and rig.r(P.QUEUE_NOTIFY_OFF, 2) == 0  # no queue 9
    rig.w(P.QUEUE_SIZE, 2, 4)
    assert rig.r(P.NUM_QUEUES, 2) == 2
    rig.w(P.NUM_QUEUES, 2, 7)  # read-only
    assert rig.r(P.NUM_QUEUES, 2) == 2
    assert rig.r(0x3000 - 4, 4) == 0 and rig.r(0x3F00, 4) == 0


def test_device_config_region() -> None:
    rig = Rig()
    assert rig.r(P.DEVICE_OFFSET, 4) == 0x23222120
    assert rig.r(P.DEVICE_OFFSET + 4, 4) == 0x27262524
    assert rig.r(P.DEVICE_OFFSET + 8, 4) == 0


def test_bad_ring_sets_needs_reset_and_signals_config_vector() -> None:
    rig = Rig()
    rig.enable_msix()
    assert rig.negotiate() & FEATURES_OK
    rig.w(P.CONFIG_MSIX_VECTOR, 2, 0)
    rig.w(P.QUEUE_SELECT, 2, 0)
    rig.w(P.QUEUE_DESC, 8, 0xFFFF0000)
    rig.w(P.QUEUE_ENABLE, 2, 1)
    rig.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
    assert rig.status() & NEEDS_RESET and rig.dev.activations == []
    assert rig.msis == [(0xFEE00000, 0x30)]
    rig.set_status(0)
    assert rig.status() == 0 and rig.r(P.CONFIG_MSIX_VECTOR, 2) == NO_VECTOR


def test_reset_clears_the_virtio_registers_but_not_the_pci_function() -> None:
    rig = Rig()
    rig.enable_msix()
    rig.bring_up(vectors=(1, 2))
    rig.set_status(0)
    assert rig.status() == 0 and rig.dev.queues == ()
    rig.w(P.QUEUE_SELECT, 2, 1)
    assert rig.r(P.QUEUE_ENABLE, 2) == 0 and rig.r(P.QUEUE_MSIX_VECTOR, 2) == NO_VECTOR
    assert rig.r(P.QUEUE_SIZE, 2) == 16
    assert rig.t.msix.enabled and rig.t.mapped_bars()


def test_pci_cfg_window_reaches_the_bar() -> None:
    rig = Rig()
    cap = rig.vendor_caps()[P.PCI_CFG][0]
    rig.cfg_w(cap + 4, 1, 0)  # bar
    rig.cfg_w(cap + 8, 4, P.NUM_QUEUES)  # offset
    rig.cfg_w(cap + 12, 4, 2)  # length
    assert rig.cfg(cap + 16, 2) == 2
    rig.cfg_w(cap + 8, 4, P.DEVICE_STATUS)
    rig.cfg_w(cap + 12, 4, 1)
    rig.cfg_w(cap + 16, 1, ACKNOWLEDGE)
    assert rig.status() == ACKNOWLEDGE
    rig.cfg_w(cap + 8, 4, P.DEVICE_STATUS + 1)
    rig.cfg_w(cap + 12, 4, 2)  # misaligned: nothing happens
    rig.cfg_w(cap + 16, 2, 0)
    assert rig.status() == ACKNOWLEDGE


def test_bar_move_and_notify_addresses() -> None:
    rig = Rig()
    old = rig.bar
    rig.cfg_w(0x10, 4, 0xC100_0000 | C.BAR_MEM_64)
    assert rig.bar == 0xC100_0000 and rig.moves[-1] == (0, old, 0xC100_0000)
    assert rig.t.notify_address(0) == 0x2000 and rig.t.notify_address(1) == 0x2004
    rig.bring_up()
    rig.mmio.write(0xC100_0000 + rig.t.notify_address(1), 2, 1)
    assert rig.kicks == [1]


def test_save_restore() -> None:
    rig = Rig()
    rig.enable_msix()
    drvs = rig.bring_up(F_VERSION_1 | F_EVENT_IDX, vectors=(1, 2))
    drvs[0].add_chain([b"a"], [4])
    rig.w(rig.t.notify_address(0), 2, 0)
    rig.w(P.MSIX_TABLE_OFFSET + 16 * 2 + 12, 4, 1)
    rig.t.used(1)  # pends
    saved = rig.t.state()
    assert saved.version == 1 and saved.transport.active
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(saved, "isr", 1)

    fresh = Rig(mem=rig.mem, assign=False)
    assert fresh.t.mapped_bars() == {}
    fresh.t.restore(saved)
    assert fresh.t.state() == saved
    assert fresh.t.mapped_bars() == rig.t.mapped_bars() and fresh.moves[-1] == (0, None, rig.bar)
    assert fresh.dev.activations == [[0, 1]]
    fresh.w(P.MSIX_TABLE_OFFSET + 16 * 2 + 12, 4, 0)
    assert fresh.msis == [(0xFEE00000, 0x32)]
    head = drvs[0].add_chain([b"b"], [4])
    drvs[0].set_used_event(1)  # EVENT_IDX: interrupt me when used.idx passes 1
    fresh.w(fresh.t.notify_address(0), 2, 0)
    assert drvs[0].used()[-1] == (head, 2)
    assert fresh.msis[-1] == (0xFEE00000, 0x31)


def test_save_restore_intx() -> None:
    rig = Rig()
    rig.t.used(0)
    fresh = Rig(mem=rig.mem)
    fresh.t.restore(rig.t.state())
    assert fresh.intx.level and fresh.r(P.ISR_OFFSET, 1) == 1 and not fresh.intx.level


def test_restore_rejects_bad_state_and_changes_nothing() -> None:
    rig = Rig()
    rig.enable_msix()
    rig.bring_up(vectors=(1, 2))
    saved = rig.t.state()
    rep = dataclasses.replace
    t = saved.transport
    bad_cfg = bytearray(saved.config.data)
    bad_cfg[2] ^= 1  # device id
    bads = [None, t, rep(saved, version=3), rep(saved, isr=4), rep(saved, config_vector=3),
            rep(saved, config_vector="0"), rep(saved, config=rep(saved.config, data=bytes(bad_cfg))),
            rep(saved, msix=rep(saved.msix, pending=1 << 3)),
            rep(saved, transport=rep(t, queues=(rep(t.queues[0], msix_vector=3),) + t.queues[1:])),
            rep(saved, transport=rep(t, queues=(rep(t.queues[0], size=0x10000),) + t.queues[1:])),
            rep(saved, transport=rep(t, driver_features=0))]
    target = Rig(mem=rig.mem, assign=False)
    before = target.t.state()
    for bad in bads:
        with pytest.raises(ValueError):
            target.t.restore(bad)  # type: ignore[arg-type]
        assert target.t.state() == before and target.t.mapped_bars() == {}
        assert target.dev.activations == []


SETTINGS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = [0x00, 0x04, 0x08, 0x0C, 0x10, 0x12, 0x14, 0x15, 0x16, 0x18, 0x1A, 0x1C, 0x1E, 0x20, 0x24, 0x28, 0x2C,
          0x30, 0x34, 0x800, 0x1000, 0x2000, 0x2004, 0x3000, 0x300C, 0x3010, 0x301C, 0x3800]
values = st.one_of(st.integers(0, 0xFF), st.sampled_from([0, 1, 2, 0xFFFF, 0x1000, 0x8000, 0xC000]),
                   st.integers(0, 0xFFFFFFFF), st.integers(-(2**70), 2**70))
sizes = st.sampled_from([1, 2, 4, 8, 0, 3, -1, 16])
ops = st.lists(st.one_of(
    st.tuples(st.just("r"), st.integers(-8, 0x4010), sizes),
    st.tuples(st.just("w"), st.integers(-8, 0x4010), sizes, values),
    st.tuples(st.just("w"), st.sampled_from(FIELDS), st.sampled_from([1, 2, 4, 8]), values),
    st.tuples(st.just("w"), st.just(P.DEVICE_STATUS), st.just(1), st.sampled_from([0, 1, 3, 11, 15])),
    st.tuples(st.just("cr"), st.integers(-4, 0x104), sizes),
    st.tuples(st.just("cw"), st.integers(-4, 0x104), sizes, values),
    st.tuples(st.just("irq"), st.integers(0, 3)),
), max_size=120)


@pytest.mark.parametrize("running", [False, True])
@SETTINGS
@given(script=ops)
def test_random_accesses_never_escape(running: bool, script: list[tuple]) -> None:
    rig = Rig()
    if running:
        rig.enable_msix()
        rig.bring_up(vectors=(1, 2))[0].add_chain([b"q"], [2])
    for op in script:
        kind = op[0]
        if kind == "r":
            v = rig.t.read(op[1], op[2])
            if op[2] in (1, 2, 4, 8):
                assert 0 <= v < 1 << (8 * op[2])
        elif kind == "w":
            rig.t.write(op[1], op[2], op[3])
        elif kind == "cr":
            v = rig.t.config_read(op[1], op[2])
            assert isinstance(v, int)
        elif kind == "cw":
            rig.t.config_write(op[1], op[2], op[3])
        else:
            rig.t.used(op[1]) if op[1] < 3 else rig.t.config_changed()
    saved = rig.t.state()
    fresh = Rig(mem=rig.mem, assign=False)
    fresh.t.restore(saved)
    assert fresh.t.state() == saved
    assert fresh.intx.level == rig.intx.level


field_values = st.one_of(st.integers(-1, 0x10001), st.integers(-(2**70), 2**70), st.booleans(), st.none(),
                         st.text(max_size=2), st.binary(max_size=8), st.binary(min_size=256, max_size=256))


@SETTINGS
@given(data=st.data())
def test_random_state_is_accepted_or_rejected_cleanly(data: st.DataObject) -> None:
    rig = Rig()
    rig.enable_msix()
    rig.bring_up(vectors=(1, 2))
    saved = rig.t.state()
    t = saved.transport
    where = data.draw(st.sampled_from(["top", "transport", "queue", "ring", "config", "msix"]))
    if where == "top":
        name = data.draw(st.sampled_from(["isr", "config_vector", "version", "transport", "config", "msix"]))
        bad = dataclasses.replace(saved, **{name: data.draw(field_values)})
    elif where == "transport":
        name = data.draw(st.sampled_from([f.name for f in dataclasses.fields(t)]))
        bad = dataclasses.replace(saved, transport=dataclasses.replace(t, **{name: data.draw(field_values)}))
    elif where in ("queue", "ring"):
        i = data.draw(st.integers(0, 1))
        q = t.queues[i]
        target = q if where == "queue" else q.ring
        name = data.draw(st.sampled_from([f.name for f in dataclasses.fields(target)]))  # type: ignore[arg-type]
        new = dataclasses.replace(target, **{name: data.draw(field_values)})  # type: ignore[type-var]
        q = new if where == "queue" else dataclasses.replace(q, ring=new)  # type: ignore[assignment]
        queues = tuple(q if k == i else t.queues[k] for k in range(2))
        bad = dataclasses.replace(saved, transport=dataclasses.replace(t, queues=queues))
    else:
        sub = saved.config if where == "config" else saved.msix
        name = data.draw(st.sampled_from([f.name for f in dataclasses.fields(sub)]))
        bad = dataclasses.replace(saved, **{where: dataclasses.replace(sub, **{name: data.draw(field_values)})})
    fresh = Rig(mem=rig.mem, assign=False)
    before = fresh.t.state()
    try:
        fresh.t.restore(bad)
    except ValueError:
        assert fresh.t.state() == before
    else:
        assert fresh.t.state() == bad


def test_threads_do_not_deadlock() -> None:
    """An I/O thread completing requests while vCPU threads reset, re-init,
    move MSI-X bits and poke the PCI_CFG window (every lock, every order)."""
    import threading
    import time

    rig = Rig()
    rig.enable_msix()
    drvs = rig.bring_up(vectors=(1, 2))
    stop = time.monotonic() + 0.5
    errors: list[BaseException] = []

    def io_thread() -> None:
        while time.monotonic() < stop:
            with rig.dev.lock:
                rig.t.used(0)
                rig.t.config_changed()

    def vcpu_a() -> None:
        while time.monotonic() < stop:
            rig.set_status(0)
            rig.bring_up(vectors=(1, 2))
            rig.w(rig.t.notify_address(0), 2, 0)

    def vcpu_b() -> None:
        cap = rig.t.pci_cfg_cap
        while time.monotonic() < stop:
            rig.cfg_w(rig.t.msix.cap_offset + 2, 2, 0xC000)
            rig.cfg_w(rig.t.msix.cap_offset + 2, 2, 0x8000)
            rig.cfg_w(cap + 8, 4, P.DEVICE_STATUS)
            rig.cfg_w(cap + 12, 4, 1)
            rig.cfg(cap + 16, 1)
            rig.t.state()

    def run(fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(f,), daemon=True) for f in (io_thread, vcpu_a, vcpu_b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=20)
        assert not th.is_alive(), "deadlock"
    assert errors == []
    assert drvs
