"""PCI: config space masks, BAR sizing and relocation on the MMIO bus, the
host bridge, mechanism #1 and ECAM agreeing, MSI-X masking and pending bits,
state, and a config-space fuzz."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.arch.x86.layout import PCI_ECAM_SIZE, PCI_MMIO_END, PCI_MMIO_START
from pyvirt.devices.bus import Bus
from pyvirt.devices.pci import Msix, PciBus, PciConfigSpace, PciDevice
from pyvirt.devices.pci import config as C
from pyvirt.devices.pci.config import overlaps
from pyvirt.devices.pci.states import MsixState, PciBusState, PciConfigState
from pyvirt.testing.irq import FakeIrq


def cf8(dev: int, reg: int, fn: int = 0, bus: int = 0) -> int:
    return 1 << 31 | bus << 16 | dev << 11 | fn << 8 | reg


class Window:
    """A BAR handler: plain memory that records accesses."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.data[offset:offset + size] = value.to_bytes(size, "little")


class MsixBar(Window):
    """BAR 2: plain memory with the MSI-X table at 0x2000 and the PBA at 0x3000."""

    def __init__(self, msix: Msix) -> None:
        super().__init__(0x4000)
        self.msix = msix

    def read(self, offset: int, size: int) -> int:
        if 0x2000 <= offset < 0x3000:
            return self.msix.table_read(offset - 0x2000, size)
        if 0x3000 <= offset < 0x3100:
            return self.msix.pba_read(offset - 0x3000, size)
        return super().read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if 0x2000 <= offset < 0x3000:
            self.msix.table_write(offset - 0x2000, size, value)
        elif offset < 0x2000:
            super().write(offset, size, value)


class Fn(PciDevice):
    """A function with a 32-bit BAR 0 (4 KiB), a 64-bit prefetchable BAR 2
    (16 KiB) holding a 4-vector MSI-X table, and INTA#."""

    name = "test-fn"

    def __init__(self) -> None:
        config = PciConfigSpace(vendor_id=0x1234, device_id=0x5678, class_code=0xFF0000, revision=3,
                                subsystem_vendor_id=0x1234, subsystem_id=0x11, interrupt_pin=1)
        self.irq = FakeIrq()
        super().__init__(config, self.irq)
        config.add_memory_bar(0, 0x1000, is64=False)
        config.add_memory_bar(2, 0x4000, is64=True, prefetchable=True)
        self.sent: list[tuple[int, int]] = []
        self.msix = Msix(4, lambda a, d: self.sent.append((a, d)), bar=2, table_offset=0x2000, pba_offset=0x3000)
        self.msix.install(config)
        self.bar0 = Window(0x1000)
        self.bar2 = MsixBar(self.msix)

    def bar_device(self, index: int) -> Window:
        return self.bar0 if index == 0 else self.bar2

    def config_written(self, offset: int, size: int) -> None:
        if overlaps(offset, size, self.msix.control_offset, 2):
            self.msix.control_written(self.config)


class Rig:
    def __init__(self, assign: bool = True) -> None:
        self.mmio = Bus("mmio")
        self.moves: list[tuple[int, int | None, int | None]] = []
        self.pci = PciBus(self.mmio, on_bar_change=lambda d, i, old, new: self.moves.append((i, old, new)))
        self.fn = Fn()
        self.slot = self.pci.add(self.fn, irq=11, assign=assign)
        self.resets = 0
        self.ports = self.pci.config_ports(self._reset)
        self.ecam = self.pci.ecam()

    def _reset(self) -> None:
        self.resets += 1

    def cfg_read(self, dev: int, reg: int, size: int = 4) -> int:
        self.ports.write(0, 4, cf8(dev, reg & 0xFC))
        return self.ports.read(4 + (reg & 3), size)

    def cfg_write(self, dev: int, reg: int, size: int, value: int) -> None:
        self.ports.write(0, 4, cf8(dev, reg & 0xFC))
        self.ports.write(4 + (reg & 3), size, value)


def test_host_bridge_identity() -> None:
    rig = Rig()
    assert rig.cfg_read(0, 0) == 0x0D578086
    assert rig.cfg_read(0, 8) >> 8 == 0x060000
    assert rig.cfg_read(0, 0x0C) >> 16 & 0x7F == 0  # header type 0
    assert rig.slot == 1


def test_empty_slots_and_other_functions_read_all_ones() -> None:
    rig = Rig()
    assert rig.cfg_read(5, 0) == 0xFFFFFFFF
    assert rig.cfg_read(1, 0) != 0xFFFFFFFF
    rig.ports.write(0, 4, cf8(1, 0, fn=1))
    assert rig.ports.read(4, 4) == 0xFFFFFFFF
    rig.ports.write(0, 4, cf8(1, 0, bus=1))
    assert rig.ports.read(4, 4) == 0xFFFFFFFF
    assert rig.ecam.read(1 << 20 | 1 << 15, 4) == 0xFFFFFFFF  # bus 1
    rig.cfg_write(5, 4, 2, 0xFFFF)  # dropped


def test_reset_register_still_works_next_to_config_space() -> None:
    rig = Rig()
    rig.ports.write(1, 1, 0x06)
    assert rig.resets == 1 and rig.ports.read(1, 1) == 0x06
    assert rig.cfg_read(1, 0) == 0x56781234


def test_identity_fields() -> None:
    rig = Rig()
    assert rig.cfg_read(1, 0) == 0x56781234
    assert rig.cfg_read(1, 8) == 0xFF000003
    assert rig.cfg_read(1, 0x2C) == 0x00111234
    assert rig.cfg_read(1, 0x3C, 1) == 11 and rig.cfg_read(1, 0x3D, 1) == 1
    assert rig.cfg_read(1, 6, 2) & C.STATUS_CAP_LIST
    assert rig.fn.config.capabilities() == [(0x11, 0x40)]


def test_mechanism_1_and_ecam_give_the_same_bytes() -> None:
    rig = Rig()
    for dev in (0, 1, 2):
        for reg in range(0, 256, 4):
            via_ports = rig.cfg_read(dev, reg)
            assert rig.ecam.read(dev << 15 | reg, 4) == via_ports
            assert rig.ecam.read(dev << 15 | reg + 2, 2) == via_ports >> 16
            assert rig.ecam.read(dev << 15 | reg + 3, 1) == via_ports >> 24
    # A write through one is seen through the other.
    rig.ecam.write(1 << 15 | 0x3C, 1, 0x42)
    assert rig.cfg_read(1, 0x3C, 1) == 0x42
    rig.cfg_write(1, 0x3C, 1, 0x07)
    assert rig.ecam.read(1 << 15 | 0x3C, 1) == 0x07
    # Extended config space of a conventional function: zeros, "no capabilities".
    assert rig.ecam.read(1 << 15 | 0x100, 4) == 0
    # Misaligned ECAM accesses are not decoded.
    assert rig.ecam.read(1 << 15 | 1, 2) == 0xFFFF
    assert rig.ecam.read(1 << 15 | 2, 4) == 0xFFFFFFFF
    assert rig.pci.ecam().read(PCI_ECAM_SIZE - 4, 4) == 0xFFFFFFFF


def test_read_only_registers_ignore_writes() -> None:
    rig = Rig()
    before = [rig.cfg_read(1, r) for r in range(0, 64, 4)]
    for reg in (0x00, 0x08, 0x0C, 0x2C, 0x30, 0x34):
        rig.cfg_write(1, reg, 4, 0xFFFFFFFF)
    rig.cfg_write(1, 0x06, 2, 0xFFFF)  # status: nothing to clear
    after = [rig.cfg_read(1, r) for r in range(0, 64, 4)]
    assert after[0] == before[0] and after[2] == before[2] and after[11] == before[11]
    assert after[12] == 0 and after[13] == 0x40  # expansion ROM unimplemented, cap pointer fixed
    rig.cfg_write(1, 4, 2, 0xFFFF)
    assert rig.cfg_read(1, 4, 2) == C.CMD_WRITABLE


def test_bar_sizing_32_and_64_bit() -> None:
    rig = Rig(assign=False)
    rig.cfg_write(1, 0x10, 4, 0xFFFFFFFF)
    assert rig.cfg_read(1, 0x10) == 0xFFFFF000  # 4 KiB, 32-bit, non-prefetchable
    rig.cfg_write(1, 0x18, 4, 0xFFFFFFFF)
    rig.cfg_write(1, 0x1C, 4, 0xFFFFFFFF)
    assert rig.cfg_read(1, 0x18) == 0xFFFFC000 | 0b1100  # 16 KiB, 64-bit, prefetchable
    assert rig.cfg_read(1, 0x1C) == 0xFFFFFFFF
    for reg in (0x14, 0x20, 0x24):  # BAR 1 unimplemented; 3 is BAR 2's upper half
        rig.cfg_write(1, reg, 4, 0xFFFFFFFF)
        if reg != 0x1C:
            assert rig.cfg_read(1, reg) == 0
    # Sizing does not map anything while decoding is off.
    assert rig.mmio.ranges() == [] and rig.moves == []


def test_firmware_assignment_places_and_enables() -> None:
    rig = Rig()
    bars = rig.fn.mapped_bars()
    assert set(bars) == {0, 2}
    for index, addr in bars.items():
        size = rig.fn.config.bars[index].size  # type: ignore[union-attr]
        assert PCI_MMIO_START <= addr and addr + size <= PCI_MMIO_END and addr % size == 0
    assert rig.cfg_read(1, 4, 2) & C.CMD_MEMORY
    assert sorted((r.base, r.length) for r in rig.mmio.ranges()) == sorted(
        (a, rig.fn.config.bars[i].size) for i, a in bars.items())  # type: ignore[union-attr]
    # A second device goes after the first.
    other = Fn()
    rig.pci.add(other)
    end = max(a + rig.fn.config.bars[i].size for i, a in bars.items())  # type: ignore[union-attr]
    assert min(other.mapped_bars().values()) >= end


def test_bar_relocation_moves_the_range_on_the_mmio_bus() -> None:
    rig = Rig()
    old = rig.fn.mapped_bars()[2]
    rig.mmio.write(old + 8, 4, 0xCAFE)
    rig.moves.clear()
    new = 0x1_2345_0000 & ~0x3FFF  # above 4 GiB: a 64-bit BAR may go there
    rig.cfg_write(1, 0x18, 4, new & 0xFFFFFFFF)
    rig.cfg_write(1, 0x1C, 4, new >> 32)
    assert rig.fn.mapped_bars()[2] == new
    assert rig.moves[0] == (2, old, (old & ~0xFFFFFFFF) | (new & 0xFFFFFFFF))  # after the low dword
    assert rig.moves[-1][2] == new
    assert rig.mmio.read(new + 8, 4) == 0xCAFE
    assert rig.mmio.find(old) is None


def test_bar_change_callback_sees_the_new_mapping() -> None:
    rig = Rig()
    seen: list[bool] = []
    rig.pci.on_bar_change = lambda d, i, old, new: seen.append(d.mapped_bars().get(i) == new)
    rig.cfg_write(1, 0x10, 4, 0xC800_0000)
    rig.cfg_write(1, 4, 2, 0)
    rig.cfg_write(1, 4, 2, C.CMD_MEMORY)
    assert seen == [True] * 5  # BAR 0 moved; both BARs off; both on again


def test_memory_space_enable_gates_the_bars() -> None:
    rig = Rig()
    bars = rig.fn.mapped_bars()
    rig.cfg_write(1, 4, 2, 0)
    assert rig.fn.mapped_bars() == {} and rig.mmio.ranges() == []
    assert rig.mmio.read(bars[0], 4) == 0xFFFFFFFF
    rig.cfg_write(1, 4, 2, C.CMD_MEMORY)
    assert rig.fn.mapped_bars() == bars
    # Sizing with decoding on: the all-ones pattern is not a placement, and
    # the real address comes back when software restores it.
    rig.cfg_write(1, 0x10, 4, 0xFFFFFFFF)
    assert 0 not in rig.fn.mapped_bars() or rig.fn.mapped_bars()[0] == 0xFFFFF000
    rig.cfg_write(1, 0x10, 4, bars[0])
    assert rig.fn.mapped_bars()[0] == bars[0]


def test_colliding_bar_is_refused_without_raising() -> None:
    rig = Rig()
    bars = rig.fn.mapped_bars()
    rig.cfg_write(1, 0x10, 4, bars[2])  # BAR 0 onto BAR 2
    assert 0 not in rig.fn.mapped_bars()
    assert rig.moves[-1] == (0, bars[0], None)
    rig.cfg_write(1, 0x10, 4, bars[0])  # moved away again: decodes
    assert rig.fn.mapped_bars()[0] == bars[0]


def test_set_bar_address_checks() -> None:
    fn = Fn()
    with pytest.raises(ValueError):
        fn.config.set_bar_address(0, 0x1234)  # not aligned
    with pytest.raises(ValueError):
        fn.config.set_bar_address(1, 0x1000)  # no BAR 1
    with pytest.raises(ValueError):
        fn.config.set_bar_address(0, 1 << 32)  # past a 32-bit BAR
    with pytest.raises(ValueError):
        fn.config.add_memory_bar(3, 0x1000)  # BAR 2's upper half
    with pytest.raises(ValueError):
        fn.config.add_memory_bar(4, 0x1001)


def test_intx_follows_interrupt_disable() -> None:
    rig = Rig()
    rig.fn.set_intx(True)
    assert rig.fn.irq.level and rig.cfg_read(1, 6, 2) & C.STATUS_INTERRUPT
    rig.cfg_write(1, 4, 2, C.CMD_MEMORY | C.CMD_INTX_DISABLE)
    assert not rig.fn.irq.level and rig.cfg_read(1, 6, 2) & C.STATUS_INTERRUPT
    rig.cfg_write(1, 4, 2, C.CMD_MEMORY)
    assert rig.fn.irq.level
    rig.fn.set_intx(False)
    assert not rig.fn.irq.level and not rig.cfg_read(1, 6, 2) & C.STATUS_INTERRUPT


# --- MSI-X -------------------------------------------------------------------------------
def msix_rig() -> tuple[Rig, int]:
    rig = Rig()
    table = rig.fn.mapped_bars()[2] + 0x2000
    for v in range(4):
        rig.mmio.write(table + 16 * v, 4, 0xFEE00000 | v << 12)
        rig.mmio.write(table + 16 * v + 4, 4, 0)
        rig.mmio.write(table + 16 * v + 8, 4, 0x40 + v)
    return rig, table


def enable_msix(rig: Rig, enable: bool = True, function_mask: bool = False) -> None:
    rig.cfg_write(1, rig.fn.msix.control_offset, 2, enable << 15 | function_mask << 14)


def test_msix_capability_layout() -> None:
    rig = Rig()
    cap = rig.fn.msix.cap_offset
    assert rig.cfg_read(1, cap) & 0xFF == 0x11
    assert rig.cfg_read(1, cap + 2, 2) == 3  # table size - 1, disabled
    assert rig.cfg_read(1, cap + 4) == 0x2000 | 2
    assert rig.cfg_read(1, cap + 8) == 0x3000 | 2
    rig.cfg_write(1, cap + 2, 2, 0xFFFF)
    assert rig.cfg_read(1, cap + 2, 2) == 0xC003  # only enable and function mask are writable


def test_msix_disabled_does_not_signal() -> None:
    rig, _ = msix_rig()
    assert rig.fn.msix.signal(0) is False
    assert rig.fn.sent == []


def test_msix_vectors_start_masked_and_pend() -> None:
    rig, table = msix_rig()
    enable_msix(rig)
    assert rig.mmio.read(table + 12, 4) == 1
    assert rig.fn.msix.signal(1) is True
    assert rig.fn.sent == [] and rig.fn.msix.is_pending(1)
    pba = rig.fn.mapped_bars()[2] + 0x3000
    assert rig.mmio.read(pba, 4) == 0b10
    assert rig.mmio.read(pba, 8) == 0b10
    rig.mmio.write(table + 16 + 12, 4, 0)  # unmask vector 1: the pending message goes out
    assert rig.fn.sent == [(0xFEE01000, 0x41)]
    assert rig.mmio.read(pba, 4) == 0
    rig.fn.msix.signal(1)
    assert rig.fn.sent[-1] == (0xFEE01000, 0x41) and len(rig.fn.sent) == 2
    assert rig.fn.msix.signal(9) is False  # no such vector


def test_msix_function_mask() -> None:
    rig, table = msix_rig()
    for v in range(4):
        rig.mmio.write(table + 16 * v + 12, 4, 0)
    enable_msix(rig, function_mask=True)
    rig.fn.msix.signal(0)
    rig.fn.msix.signal(3)
    assert rig.fn.sent == []
    rig.mmio.write(table + 16 * 3 + 12, 4, 1)  # vector 3 masked on its own too
    enable_msix(rig)
    assert rig.fn.sent == [(0xFEE00000, 0x40)]
    assert rig.fn.msix.is_pending(3) and not rig.fn.msix.is_pending(0)


def test_msix_table_accesses() -> None:
    rig, table = msix_rig()
    rig.mmio.write(table + 16, 8, 0x1_FEE0_2003)  # QWORD write of the address, bits 1:0 stay zero
    assert rig.mmio.read(table + 16, 8) == 0x1_FEE0_2000
    rig.mmio.write(table + 28, 4, 0xFFFFFFFF)  # vector control: only the mask bit
    assert rig.mmio.read(table + 28, 4) == 1
    assert rig.fn.msix.table_read(2, 4) == 0  # misaligned
    assert rig.fn.msix.table_read(0, 2) == 0  # too narrow
    rig.fn.msix.table_write(4 * 16, 4, 1)  # past the table
    assert rig.fn.msix.message(1) == (0x1_FEE0_2000, 0x41)


def test_msix_reset() -> None:
    rig, table = msix_rig()
    enable_msix(rig)
    rig.fn.msix.signal(0)
    rig.fn.msix.reset()
    assert not rig.fn.msix.enabled and not rig.fn.msix.is_pending(0) and rig.fn.msix.is_masked(0)
    assert rig.fn.msix.message(0) == (0, 0)


# --- state -----------------------------------------------------------------------------
def test_config_and_msix_state_round_trip() -> None:
    rig, table = msix_rig()
    enable_msix(rig)
    rig.fn.msix.signal(2)
    rig.cfg_write(1, 0x3C, 1, 5)
    rig.cfg_write(0, 4, 2, C.CMD_BUS_MASTER)
    cfg, msix, bus = rig.fn.config.state(), rig.fn.msix.state(), rig.pci.state()
    assert cfg.version == msix.version == bus.version == 1
    fresh = Rig(assign=False)
    assert fresh.fn.mapped_bars() == {}
    fresh.fn.load_config(fresh.fn.config.check_state(cfg))
    fresh.fn.msix.restore(msix, fresh.fn.config)
    fresh.pci.restore(bus)
    assert fresh.fn.config.state() == cfg and fresh.fn.msix.state() == msix and fresh.pci.state() == bus
    assert fresh.fn.mapped_bars() == rig.fn.mapped_bars()
    assert fresh.fn.msix.enabled and fresh.fn.msix.is_pending(2)
    assert [fresh.cfg_read(d, r) for d in (0, 1) for r in range(0, 256, 4)] == \
           [rig.cfg_read(d, r) for d in (0, 1) for r in range(0, 256, 4)]


def test_bad_config_state_is_rejected() -> None:
    fn = Fn()
    good = bytearray(fn.config.state().data)
    bad_vendor = bytearray(good)
    bad_vendor[0] ^= 1
    bad_bar_flags = bytearray(good)
    bad_bar_flags[0x10] |= 1  # an I/O BAR now
    for bad in (None, PciConfigState(data=bytes(bad_vendor)), PciConfigState(data=bytes(bad_bar_flags)),
                PciConfigState(data=bytes(good[:255])), PciConfigState(data=bytes(good), version=2),
                PciConfigState(data="x" * 256)):  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            fn.config.check_state(bad)  # type: ignore[arg-type]
    fn.config.check_state(PciConfigState(data=bytes(good)))


def test_bad_msix_and_bus_state_is_rejected() -> None:
    fn = Fn()
    good = fn.msix.state()
    for bad in (MsixState(table=good.table[:-1]), MsixState(table=good.table, pending=1 << 4),
                MsixState(table=good.table, pending=-1), MsixState(table=b"\x01" + good.table[1:]),
                MsixState(table=good.table[:12] + b"\x03\0\0\0" + good.table[16:]), dataclasses.replace(good, version=0)):
        with pytest.raises(ValueError):
            fn.msix.check_state(bad)
    pci = PciBus()
    with pytest.raises(ValueError):
        pci.restore(PciBusState(host_bridge=PciConfigState(data=bytes(256))))


# --- fuzz --------------------------------------------------------------------------------
SETTINGS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
values = st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 0xFFFFFFFF, 0xC000, 0x8000, 2, 6, 0x400]),
                   st.integers(-(2**70), 2**70))
ops = st.lists(st.one_of(
    st.tuples(st.just("port_r"), st.integers(0, 7), st.integers(-1, 9), st.integers(0, 0x80FFFFFF)),
    st.tuples(st.just("port_w"), st.integers(0, 7), st.integers(-1, 9), st.integers(0, 0x80FFFFFF), values),
    st.tuples(st.just("ecam_r"), st.integers(-4, PCI_ECAM_SIZE + 4), st.sampled_from([1, 2, 4, 8, 3, 0, -1])),
    st.tuples(st.just("ecam_w"), st.integers(-4, PCI_ECAM_SIZE + 4), st.sampled_from([1, 2, 4, 8, 3, 0]), values),
    st.tuples(st.just("cfg_w"), st.integers(0, 2), st.integers(0, 0x100), st.sampled_from([1, 2, 4]), values),
    st.tuples(st.just("mmio"), st.integers(PCI_MMIO_START, PCI_MMIO_START + 0x10000), st.sampled_from([1, 4, 8]),
              values),
    st.tuples(st.just("signal"), st.integers(-1, 5)),
), max_size=100)


@SETTINGS
@given(script=ops)
def test_random_config_accesses_never_escape(script: list[tuple]) -> None:
    rig = Rig()
    rig.pci.add(Fn())
    for op in script:
        kind = op[0]
        if kind == "port_r":
            rig.ports.write(0, 4, op[3] | 1 << 31)
            v = rig.ports.read(op[1], op[2])
            assert isinstance(v, int)
        elif kind == "port_w":
            rig.ports.write(0, 4, op[3] | 1 << 31)
            if op[1] != 1:  # 0xcf9 would reset the machine: covered elsewhere
                rig.ports.write(op[1], op[2], op[4])
        elif kind == "ecam_r":
            v = rig.ecam.read(op[1], op[2])
            if op[2] in (1, 2, 4):
                assert 0 <= v < 1 << (8 * op[2])
        elif kind == "ecam_w":
            rig.ecam.write(op[1], op[2], op[3])
        elif kind == "cfg_w":
            rig.ecam.write(op[1] << 15 | (op[2] & ~(op[3] - 1)), op[3], op[4] & ((1 << 8 * op[3]) - 1))
        elif kind == "mmio":
            rig.mmio.write(op[1], op[2], op[3] & ((1 << 8 * op[2]) - 1))
        else:
            rig.fn.msix.signal(op[1])
    # Whatever happened, the bus holds exactly the BARs the functions say decode.
    expected = sorted((addr, dev.config.bars[i].size) for _, dev in rig.pci.devices()  # type: ignore[union-attr]
                      for i, addr in dev.mapped_bars().items())
    assert sorted((r.base, r.length) for r in rig.mmio.ranges()) == expected
    for dev in (rig.fn, rig.pci.host_bridge):
        dev.config.check_state(dev.config.state())
    rig.fn.msix.check_state(rig.fn.msix.state())
