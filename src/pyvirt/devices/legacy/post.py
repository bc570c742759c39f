"""The port 0x80 POST-code sink.

Firmware writes progress codes here, and Linux writes to it as an I/O delay
(`outb_p`), thousands of times while booting. We keep the last code and a
count, so a hung guest's last checkpoint can be reported, and reads return
the last code as on boards with a POST-code latch.
"""

from __future__ import annotations

import threading

from ._common import VALID_SIZES, check_int, check_state_type, lazy_states, ones

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .states import PostCodeState

__getattr__ = lazy_states(__name__, ("PostCodeState",))

PORT = 0x80
LENGTH = 1
COUNT_MASK = 2**64 - 1  # wraps like the u64 counter it will be serialized as


class PostCode:
    LENGTH = LENGTH

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0
        self._count = 0

    @property
    def last(self) -> int:
        return self._last

    @property
    def count(self) -> int:
        return self._count

    def read(self, offset: int, size: int) -> int:
        if size not in VALID_SIZES or offset != 0:
            return ones(size)
        return self._last | (ones(size) & ~0xFF)  # only port 0x80 is ours

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in VALID_SIZES or offset != 0:
            return
        with self._lock:
            self._last = value & 0xFF
            self._count = (self._count + 1) & COUNT_MASK

    def state(self) -> PostCodeState:
        from .states import PostCodeState

        with self._lock:
            return PostCodeState(last=self._last, count=self._count)

    def restore(self, state: PostCodeState) -> None:
        from .states import PostCodeState

        check_state_type(state, PostCodeState)
        check_int("post last", state.last, 0, 0xFF)
        check_int("post count", state.count, 0, COUNT_MASK)
        with self._lock:
            self._last, self._count = state.last, state.count
