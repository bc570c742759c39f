"""State records to JSON and back (vmm/state_codec.py): every state class of
every component round-trips, and malformed records are refused naming the
field."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirt.devices.legacy import states as legacy_states
from pyvirt.devices.pci import states as pci_states
from pyvirt.devices.virtio import transport_states
from pyvirt.devices.virtio.balloon import BalloonState
from pyvirt.devices.virtio.blk import BlkState
from pyvirt.devices.virtio.console import ConsoleState
from pyvirt.devices.virtio.net import NetState
from pyvirt.devices.virtio.queue import QueueState
from pyvirt.devices.virtio.rng import RngState
from pyvirt.devices.virtio.vsock import VsockState
from pyvirt.vmm.state_codec import StateDecodeError, decode, encode
from pyvirt.vmm.vmstate import PvmState, VcpuState, VmState


def _classes(module: object) -> list[type]:
    return [v for v in vars(module).values()
            if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == module.__name__]  # type: ignore[attr-defined]


STATE_CLASSES = sorted({*_classes(legacy_states), *_classes(pci_states), *_classes(transport_states), QueueState,
                        BlkState, NetState, VsockState, BalloonState, ConsoleState, RngState, VcpuState, VmState,
                        PvmState}, key=lambda c: c.__name__)


def strategy(tp: Any) -> st.SearchStrategy:
    """Values of any type a state record's field may have."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, __import__("types").UnionType):
        return st.one_of(*(st.none() if a is type(None) else strategy(a) for a in args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy(args[0]), max_size=3).map(tuple)
        return st.tuples(*(strategy(a) for a in args))
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-(1 << 70), 1 << 70)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text(max_size=20)
    if tp is bytes:
        return st.binary(max_size=40)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.builds(tp, **{f.name: strategy(hints[f.name]) for f in dataclasses.fields(tp)})
    raise TypeError(tp)


def _through_json(value: object) -> object:
    return json.loads(json.dumps(encode(value)))


def test_the_list_of_state_classes_is_complete() -> None:
    names = {c.__name__ for c in STATE_CLASSES}
    assert {"SerialState", "RtcState", "PitState", "VirtioPciState", "VirtqueueConfigState", "PciBusState",
            "QueueState", "BlkState", "VcpuState"} <= names
    assert "SerialStatistics" in names  # a dataclass too: harmless


@pytest.mark.parametrize("cls", STATE_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_every_state_class_round_trips(cls: type, data: st.DataObject) -> None:
    value = data.draw(strategy(cls))
    assert decode(cls, _through_json(value)) == value


def test_defaults_fill_fields_an_older_writer_did_not_have() -> None:
    assert decode(legacy_states.SerialState, {"scr": 7}) == legacy_states.SerialState(scr=7)
    assert decode(legacy_states.DebugExitState, {}) == legacy_states.DebugExitState()


@pytest.mark.parametrize("cls, data, message", [
    (legacy_states.SerialState, {"scr": "7"}, "SerialState.scr: expected an integer"),
    (legacy_states.SerialState, {"scr": True}, "expected an integer"),
    (legacy_states.SerialState, {"thr_pending": 1}, "expected true or false"),
    (legacy_states.SerialState, {"rx_fifo": "!!"}, "not valid base64"),
    (legacy_states.SerialState, {"rx_fifo": 5}, "expected base64 text"),
    (legacy_states.SerialState, {"shiny": 1}, "unknown field 'shiny'"),
    (legacy_states.SerialState, [], "expected a SerialState object"),
    (RngState, {"device_features": 1}, "has no 'driver_features'"),
    (legacy_states.PitState, {"channels": [[1, 2]], "speaker": 0}, "channels[0]: expected 8 items"),
    (legacy_states.PitState, {"channels": {}, "speaker": 0}, "expected an array"),
    (transport_states.VirtqueueConfigState, {"ring": {"size": 1}}, "QueueState has no 'desc'"),
    (transport_states.VirtqueueConfigState, {"ring": 3}, "ring: expected a QueueState object"),
    (transport_states.VirtioPciState, {"config": {"data": None}}, "config.data: expected base64 text"),
    (VmState, {"pic_master": "", "pic_slave": "", "ioapic": "", "clock": 1.5}, "clock: expected an integer"),
])
def test_malformed_records_are_refused(cls: type, data: object, message: str) -> None:
    with pytest.raises(StateDecodeError) as e:
        decode(cls, data)
    assert message in str(e.value)


def test_encode_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError):
        encode({1, 2})
    with pytest.raises(TypeError):
        decode(dict, {})  # type: ignore[type-var]
