"""Helpers shared by the legacy device models: access sizes and state checks.

Port I/O reaches a device as (offset, size, value) straight from a guest, so
every model funnels accesses through the same small checks, and every
`restore` validates untrusted state the same way.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

VALID_SIZES = (1, 2, 4)


def lazy_states(module: str, names: tuple[str, ...]) -> Callable[[str], object]:
    """A module `__getattr__` that loads the records `names` from states.py on first use.

    Device modules export their `XState` this way so that building a device
    does not import `dataclasses` (see states.py).
    """

    def __getattr__(name: str) -> object:
        if name in names:
            from . import states

            return getattr(states, name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def ones(size: int) -> int:
    """What floating ISA data lines read as for an access of `size` bytes."""
    # An absurd size (only a broken caller or a fuzzer sends one) gets a
    # bounded answer rather than a giant int.
    return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0


def read_bytes(read_byte: Callable[[int], int], offset: int, size: int) -> int:
    """Split a wide access into byte reads at consecutive offsets, little-endian.

    This is what the ISA bus does with a 16- or 32-bit cycle to an 8-bit
    device: the bytes land on consecutive ports.
    """
    value = 0
    for i in range(size):
        value |= (read_byte(offset + i) & 0xFF) << (8 * i)
    return value


def write_bytes(write_byte: Callable[[int, int], None], offset: int, size: int, value: int) -> None:
    """Split a wide write into byte writes at consecutive offsets, little-endian."""
    for i in range(size):
        write_byte(offset + i, (value >> (8 * i)) & 0xFF)


def register_slice(offset: int, size: int, value: int, reg: int, width: int) -> tuple[int, int] | None:
    """The part of a write that lands in the register at [reg, reg+width).

    Returns (bits, mask) in the register's own bit positions, or None when the
    access misses the register; lets 8-, 16- and 32-bit accesses share one
    register implementation.
    """
    lo, hi = max(offset, reg), min(offset + size, reg + width)
    if lo >= hi:
        return None
    bits = mask = 0
    for addr in range(lo, hi):
        bits |= ((value >> (8 * (addr - offset))) & 0xFF) << (8 * (addr - reg))
        mask |= 0xFF << (8 * (addr - reg))
    return bits, mask


def check_state_type(state: object, cls: type, version: int = 1) -> None:
    if not isinstance(state, cls):
        raise ValueError(f"expected a {cls.__name__}, got {type(state).__name__}")
    got = getattr(state, "version", None)
    if got != version:
        raise ValueError(f"{cls.__name__}: unsupported version {got!r} (this build reads version {version})")


def check_int(what: str, value: object, lo: int, hi: int) -> int:
    """Raise ValueError unless `value` is an int in [lo, hi]."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} = {value:#x} out of range [{lo:#x}, {hi:#x}]")
    return value


def check_bool(what: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be a bool, got {type(value).__name__}")
    return value


def check_bytes(what: str, value: object, max_len: int, exact: bool = False) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) > max_len or (exact and len(value) != max_len):
        want = f"exactly {max_len}" if exact else f"at most {max_len}"
        raise ValueError(f"{what} has {len(value)} bytes, want {want}")
    return bytes(value)
