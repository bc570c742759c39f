"""virtio-rng: entropy for the guest from the host kernel's CSPRNG.

Specification: VIRTIO 1.2 section 5.4. One queue (requestq) of
device-writable buffers, no feature bits of its own, no config space. The
device fills each buffer from `os.getrandom` and may use less than all of
it (spec 5.4.6.2), which is what bounds the work one request can ask for:
at most `MAX_REQUEST` bytes per chain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .device import RNG, VirtioDevice
from .queue import VirtqueueError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_REQUEST = 64 << 10


@dataclass(frozen=True)
class RngState:
    device_features: int
    driver_features: int
    version: int = 1


class VirtioRng(VirtioDevice):
    """A virtio entropy source. `source(n)` returns n random bytes (tests pass a fake)."""

    device_type = RNG
    num_queues = 1
    queue_max_size = 256
    name = "rng"

    def __init__(self, source: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__()
        # os.urandom is getrandom(2) (no flags) in a loop until the buffer is
        # full; os.getrandom alone may return short. It blocks only until the
        # host's pool is first initialised, early in the host's boot.
        self._source = source
        self.bytes_served = 0

    def queue_notify(self, index: int) -> None:
        with self.lock:
            mem, irq = self.mem, self.interrupt
            if index != 0 or self.broken or mem is None or irq is None or not self.queues:
                return
            q = self.queues[0]
            try:
                while (chain := q.pop()) is not None:
                    n = min(chain.writable_len, MAX_REQUEST)
                    written = chain.write(mem, self._source(n)) if n else 0
                    self.bytes_served += written
                    q.push(chain.head, written)
            except VirtqueueError as e:
                self.needs_reset(str(e))
            if q.should_notify():
                irq.used(0)

    def state(self) -> RngState:
        with self.lock:
            return RngState(self.device_features, self.driver_features)

    def restore(self, state: RngState) -> None:
        from ..legacy._common import check_int, check_state_type

        check_state_type(state, RngState)
        check_int("virtio-rng device_features", state.device_features, 0, (1 << 64) - 1)
        check_int("virtio-rng driver_features", state.driver_features, 0, (1 << 64) - 1)
        if state.device_features != self.device_features or state.driver_features & ~self.device_features:
            raise ValueError(f"virtio-rng features {state.driver_features:#x} of {state.device_features:#x} "
                             f"saved; this device offers {self.device_features:#x}")
        with self.lock:
            self.driver_features = state.driver_features
