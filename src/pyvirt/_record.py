"""Plain-class records for the data `pyvirt run` builds while it starts a VM.

Every launch of the VMM imports its whole start path, and on a slow host
(nested, paravirtualised) `import dataclasses` and each `@dataclass` cost
milliseconds. Records made on that path (memory layout, boot specs, parsed
kernel headers, configuration) derive from these bases instead. A record
lists its fields in `__match_args__`, in constructor order, and keeps them
in `__slots__`; it compares and prints by value like a dataclass, and a
`FrozenRecord` is also immutable and hashable.

Saved device state stays in frozen dataclasses (`devices/legacy/states.py`),
which load only when state is saved or restored.
"""

from __future__ import annotations


class Record:
    """A mutable record: equal when of the same class with equal fields; not hashable."""

    __slots__ = ()
    __match_args__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple([getattr(self, name) for name in self.__match_args__])

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"{type(self).__qualname__}({fields})"


class FrozenRecord(Record):
    """An immutable record; `__init__` sets the fields with `_init`."""

    __slots__ = ()

    def _init(self, *values: object) -> None:
        for name, value in zip(self.__match_args__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")

    def __hash__(self) -> int:
        return hash(self._values())
