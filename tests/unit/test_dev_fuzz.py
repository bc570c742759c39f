"""Hostile-guest fuzzing: random accesses and random state must never escape.

Every legacy device gets random sequences of reads and writes with random
offsets (in and around its range), sizes (valid and not) and values (any
int), mixed with host-side events (serial input, the clock moving, the
power button). Nothing may raise, reads must fit their size, and the state
after the storm must still round-trip. A second test feeds `restore` random
field values: it may accept them or raise ValueError, nothing else.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.testing import LegacyRig, legacy_rigs

RIGS = legacy_rigs()
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])

sizes = st.one_of(st.sampled_from([1, 2, 4]), st.integers(-2, 9))
values = st.one_of(st.integers(0, 0xFF), st.integers(0, 0xFFFF_FFFF), st.integers(-(2**70), 2**70))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("r"), st.integers(-3, 16), sizes),
        st.tuples(st.just("w"), st.integers(-3, 16), sizes, values),
        # Writes biased to the low offsets where most registers live.
        st.tuples(st.just("w"), st.integers(0, 7), st.just(1), st.integers(0, 0xFF)),
        st.tuples(st.just("host"), st.binary(max_size=64), st.floats(-10, 10, allow_nan=False)),
    ),
    max_size=200,
)


def _host_event(rig: LegacyRig, data: bytes, dt: float) -> None:
    rig.clock.advance(dt)
    if rig.name == "serial":
        rig.device.receive(data)
    elif rig.name == "acpi_pm" and data[:1] == b"\x01":
        rig.device.power_button()


@pytest.mark.parametrize("name", sorted(RIGS))
@SETTINGS
@given(script=ops)
def test_random_accesses_never_escape(name: str, script: list[tuple]) -> None:
    rig = RIGS[name]()
    for op in script:
        if op[0] == "r":
            _, offset, size = op
            value = rig.device.read(offset, size)
            assert isinstance(value, int)
            if size in (1, 2, 4):
                assert 0 <= value < 1 << (8 * size)
        elif op[0] == "w":
            rig.device.write(*op[1:])
        else:
            _host_event(rig, op[1], op[2])
    saved = rig.device.state()
    fresh = RIGS[name]()
    fresh.clock.set(rig.clock.now)
    fresh.device.restore(saved)
    assert fresh.device.state() == saved
    assert fresh.irq.level == rig.irq.level


field_values = st.one_of(
    st.integers(-1, 0x110), st.integers(-(2**80), 2**80), st.booleans(), st.none(), st.text(max_size=3),
    st.binary(max_size=40), st.binary(min_size=127, max_size=129), st.binary(min_size=4090, max_size=4100),
)


@pytest.mark.parametrize("name", sorted(RIGS))
@SETTINGS
@given(data=st.data())
def test_random_state_is_accepted_or_rejected_cleanly(name: str, data: st.DataObject) -> None:
    rig = RIGS[name]()
    state = rig.device.state()
    fields = [f.name for f in dataclasses.fields(state)]
    changes = data.draw(st.dictionaries(st.sampled_from(fields), field_values, max_size=3))
    try:
        rig.device.restore(dataclasses.replace(state, **changes))
    except ValueError:
        assert rig.device.state() == state
        return
    # Accepted: the device must keep working and its state must round-trip.
    for off in range(rig.length):
        rig.device.read(off, 1)
        rig.device.write(off, 1, 0)
    again = rig.device.state()
    RIGS[name]().device.restore(again)
