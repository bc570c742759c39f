"""QEMU's isa-debug-exit: a port a test guest writes to end the VM with a status.

Any write of 1, 2 or 4 bytes at offset 0 calls `on_exit(value)` with the raw
value; the VMM turns V into exit status (V << 1) | 1, so a guest can never
produce a plain 0 or 1 and be mistaken for a clean shutdown or a pyvirt error.
Reads return all-ones, as on QEMU.
"""

from __future__ import annotations

from ._common import VALID_SIZES, check_state_type, lazy_states, ones

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    from .states import DebugExitState

__getattr__ = lazy_states(__name__, ("DebugExitState",))

PORT = 0xF4
LENGTH = 1


class DebugExit:
    LENGTH = LENGTH

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit

    def read(self, offset: int, size: int) -> int:
        return ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size in VALID_SIZES:
            self._on_exit(value & ones(size))

    def state(self) -> DebugExitState:
        from .states import DebugExitState

        return DebugExitState()

    def restore(self, state: DebugExitState) -> None:
        from .states import DebugExitState

        check_state_type(state, DebugExitState)
