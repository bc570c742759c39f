"""Conformance: every legacy device saves, restores and rejects bad state alike.

For each device: drive it into a non-default state, save, restore into a
fresh instance, and check that the states match and that both then behave
the same under the same guest accesses. Then feed `restore` states that are
wrong in one field at a time and check it refuses them with ValueError and
leaves the device as it was.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pytest

from pyvirt.testing import LegacyRig, legacy_rigs

RIGS = legacy_rigs()


def _serial(r: LegacyRig) -> None:
    d = r.device
    d.write(3, 1, 0x80)
    d.write(0, 1, 0x01)  # DLL
    d.write(3, 1, 0x03)
    d.write(2, 1, 0x01)  # FIFO on
    d.write(1, 1, 0x0F)
    d.write(4, 1, 0x0B)
    d.write(7, 1, 0x5A)
    d.receive(bytes(range(40)))
    d.read(0, 1)
    d.write(0, 1, ord("x"))


def _i8042(r: LegacyRig) -> None:
    d = r.device
    d.write(4, 1, 0x60)
    d.write(0, 1, 0x47)
    d.write(0, 1, 0xED)  # keyboard waits for the LED byte
    d.write(4, 1, 0xD3)  # controller waits for the AUX byte


def _rtc(r: LegacyRig) -> None:
    d = r.device
    d.set_memory_size(6 << 30)
    d.write(0, 2, 0x0600 | 0x0B)  # binary mode
    d.write(0, 2, 0x0500 | 0x04)  # hour 5
    d.write(0, 2, 0x7700 | 0x50)
    d.write(0, 1, 0x02)
    r.clock.advance(42.25)


def _acpi_pm(r: LegacyRig) -> None:
    d = r.device
    d.write(2, 2, 0x0121)
    d.write(4, 2, 3 << 10)
    d.power_button()
    r.clock.advance(3.0)  # past a bit-23 toggle: TMR_STS


def _pci(r: LegacyRig) -> None:
    r.device.write(0, 4, 0x8000_0810)
    r.device.write(1, 1, 0x02)


def _fw_cfg(r: LegacyRig) -> None:
    r.device.write(0, 2, 0x19)
    for _ in range(5):
        r.device.read(1, 1)


POKES: dict[str, Callable[[LegacyRig], None]] = {
    "serial": _serial, "i8042": _i8042, "rtc": _rtc, "acpi_pm": _acpi_pm, "pci_ports": _pci,
    "fw_cfg": _fw_cfg, "post": lambda r: r.device.write(0, 1, 0x42),
    "debug_exit": lambda r: r.device.write(0, 1, 3),
}


def _probe(rig: LegacyRig) -> list[int]:
    """Guest accesses whose answers should match between saved and restored devices."""
    results = [rig.device.read(off, 1) for off in range(rig.length)]
    results += [rig.device.read(off, 4) for off in range(rig.length)]
    return results


def test_every_rig_has_a_poke() -> None:
    assert set(POKES) == set(RIGS)


@pytest.mark.parametrize("name", sorted(RIGS))
def test_save_restore_round_trip(name: str) -> None:
    rig = RIGS[name]()
    POKES[name](rig)
    saved = rig.device.state()
    assert saved.version == 1
    assert dataclasses.is_dataclass(saved)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(saved, "version", 9)
    if name != "debug_exit":
        assert saved != RIGS[name]().device.state(), "the poke should change the state"

    fresh = RIGS[name]()
    fresh.clock.set(rig.clock.now)
    fresh.device.restore(saved)
    assert fresh.device.state() == saved
    assert fresh.irq.level == rig.irq.level
    fresh.device.restore(fresh.device.state())  # idempotent
    assert fresh.device.state() == saved

    rig.clock.advance(0.5)
    fresh.clock.advance(0.5)
    assert _probe(fresh) == _probe(rig)
    assert fresh.device.state() == rig.device.state()
    assert fresh.irq.level == rig.irq.level


@pytest.mark.parametrize("name", sorted(RIGS))
def test_new_device_state_is_the_state_defaults(name: str) -> None:
    # Devices start from their own power-on values (building one must not load
    # states.py); the XState defaults document the same values.
    state = RIGS[name]().device.state()
    assert state == type(state)()


BAD: list[tuple[str, dict[str, Any]]] = [
    ("serial", {"dll": 256}), ("serial", {"ier": 0x10}), ("serial", {"mcr": 0x20}),
    ("serial", {"fcr": 0x02}), ("serial", {"fcr": 0x03}), ("serial", {"lsr_errors": 0x01}),
    ("serial", {"msr_delta": 0x10}), ("serial", {"rx_fifo": b"ab", "fcr": 0}),
    ("serial", {"rx_fifo": bytes(17)}), ("serial", {"rx_input": bytes(5000)}),
    ("serial", {"thr_pending": True, "ier": 0}), ("serial", {"thr_pending": 1}),
    ("serial", {"dll": True}), ("serial", {"rx_fifo": "text"}), ("serial", {"scr": -1}),
    ("i8042", {"ram": bytes(31)}), ("i8042", {"queue": bytes(17), "queue_aux": bytes(17)}),
    ("i8042", {"queue": b"\x01", "queue_aux": b""}), ("i8042", {"queue": b"\x01", "queue_aux": b"\x02"}),
    ("i8042", {"ctl_pending": 0x20}), ("i8042", {"kbd_pending": 0xFF}), ("i8042", {"scan_set": 4}),
    ("i8042", {"outport": -1}), ("i8042", {"last_data": 0x100}), ("i8042", {"scanning": None}),
    ("rtc", {"index": 0x80}), ("rtc", {"cmos": bytes(127)}), ("rtc", {"offset_ns": 10**30}),
    ("rtc", {"cmos": bytes(10) + b"\xa6" + bytes(117)}), ("rtc", {"offset_ns": 1.5}),
    ("post", {"last": 256}), ("post", {"count": -1}),
    ("acpi_pm", {"status": 0x0002}), ("acpi_pm", {"enable": 0x8000}), ("acpi_pm", {"control": 0x0001}),
    ("acpi_pm", {"control": 1 << 13}), ("acpi_pm", {"timer_ticks": -1}),
    ("pci_ports", {"address": 0x1}), ("pci_ports", {"address": 1 << 32}), ("pci_ports", {"reset_control": 0x01}),
    ("fw_cfg", {"selector": 0x10000}), ("fw_cfg", {"selector": 0, "offset": 5}),
    ("fw_cfg", {"selector": 0x7777, "offset": 1}),
]


@pytest.mark.parametrize("name,changes", BAD, ids=[f"{n}-{'-'.join(c)}" for n, c in BAD])
def test_bad_state_is_rejected_and_changes_nothing(name: str, changes: dict[str, Any]) -> None:
    rig = RIGS[name]()
    POKES[name](rig)
    before = rig.device.state()
    bad = dataclasses.replace(before, **changes)
    with pytest.raises(ValueError):
        rig.device.restore(bad)
    assert rig.device.state() == before


@pytest.mark.parametrize("name", sorted(RIGS))
def test_wrong_type_and_version_are_rejected(name: str) -> None:
    rig = RIGS[name]()
    state = rig.device.state()
    with pytest.raises(ValueError, match="version"):
        rig.device.restore(dataclasses.replace(state, version=2))
    with pytest.raises(ValueError):
        rig.device.restore(object())
    other = RIGS["post" if name != "post" else "serial"]().device.state()
    with pytest.raises(ValueError):
        rig.device.restore(other)
