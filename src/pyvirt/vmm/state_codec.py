"""Saved state records to and from JSON, driven by their type annotations.

Every component's `XState` is a frozen dataclass of plain data (ints,
bools, strs, bytes, tuples, nested states, `X | None`). A snapshot stores
them as JSON, never pickle: a snapshot file is untrusted input, and
decoding here only ever builds the dataclass the caller names, field by
field, after checking each value's JSON type against the field's
annotation. Bytes travel as base64 strings, tuples as arrays.

`decode` accepts a record that lacks fields with defaults (written by an
older pyvirt, before the field existed) and refuses fields it does not know
(written by a newer one), naming the field. It checks shapes, not meaning:
the component's `restore()` validates values, as it does for any state.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import sys
import types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

MAX_DEPTH = 32  # nesting of records and tuples; real states use 4


class StateDecodeError(ValueError):
    """A saved record does not fit its class; the message names the field."""


def encode(value: object) -> Any:
    """A record (or any field value) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} in a state record")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The fields' types. State modules use `from __future__ import
    annotations`, so these are strings, evaluated here in the class's module
    (what typing.get_type_hints does; `typing` itself costs a restore ~15 ms
    to import)."""
    hints = _HINTS.get(cls)
    if hints is None:
        namespace = vars(sys.modules[cls.__module__])
        hints = {f.name: eval(f.type, namespace) if isinstance(f.type, str) else f.type  # noqa: S307 (our source)
                 for f in dataclasses.fields(cls)}
        _HINTS[cls] = hints
    return hints


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    """The members of `X | Y` (or typing.Optional[X]), None for anything else."""
    if isinstance(tp, types.UnionType):
        return tp.__args__
    typing = sys.modules.get("typing")
    if typing is not None and getattr(tp, "__origin__", None) is typing.Union:
        return tp.__args__  # type: ignore[no-any-return]
    return None


def decode(cls: type[T], data: object, where: str = "") -> T:
    """Build a `cls` record from what `encode` made; StateDecodeError if
    `data` does not have its shape."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"{cls!r} is not a dataclass")
    return _decode(cls, data, where or cls.__name__, 0)  # type: ignore[return-value]


def _fail(where: str, want: str, data: object) -> StateDecodeError:
    shown = repr(data)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return StateDecodeError(f"{where}: expected {want}, got {shown}")


def _decode(tp: Any, data: object, where: str, depth: int) -> object:
    if depth > MAX_DEPTH:
        raise StateDecodeError(f"{where}: nested too deeply")
    args = _union_args(tp)
    if args is not None:
        if data is None:
            if type(None) in args:
                return None
            raise _fail(where, "a value", data)
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{where}: ambiguous union {tp!r}")
        return _decode(rest[0], data, where, depth)
    if getattr(tp, "__origin__", None) is tuple:
        args = tp.__args__
        if not isinstance(data, list):
            raise _fail(where, "an array", data)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]", depth + 1) for i, v in enumerate(data))
        if len(data) != len(args):
            raise StateDecodeError(f"{where}: expected {len(args)} items, got {len(data)}")
        return tuple(_decode(a, v, f"{where}[{i}]", depth + 1) for i, (a, v) in enumerate(zip(args, data)))
    if tp is bool:
        if type(data) is not bool:
            raise _fail(where, "true or false", data)
        return data
    if tp is int:
        if type(data) is not int:
            raise _fail(where, "an integer", data)
        return data
    if tp is float:
        if type(data) not in (int, float):
            raise _fail(where, "a number", data)
        return float(data)  # type: ignore[arg-type]
    if tp is str:
        if type(data) is not str:
            raise _fail(where, "a string", data)
        return data
    if tp is bytes:
        if type(data) is not str:
            raise _fail(where, "base64 text", data)
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise StateDecodeError(f"{where}: not valid base64 ({e})") from e
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise _fail(where, f"a {tp.__name__} object", data)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise StateDecodeError(f"{where}: unknown field {unknown[0]!r} in a {tp.__name__} "
                                   "(written by a newer pyvirt?)")
        hints = _hints(tp)
        kwargs = {}
        for name, f in fields.items():
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise StateDecodeError(f"{where}: {tp.__name__} has no {name!r}")
                continue
            kwargs[name] = _decode(hints[name], data[name], f"{where}.{name}", depth + 1)
        return tp(**kwargs)
    raise TypeError(f"{where}: cannot load a field of type {tp!r}")
