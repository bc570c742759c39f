"""Token-bucket rate limiting for disk (and other device) I/O.

A `TokenBucket` refills at `rate` tokens per second up to `capacity`, the
burst it allows after an idle spell; an optional `one_time_burst` is spent
first and never refills (fast boot, then steady state), as in Firecracker.
A `RateLimiter` pairs a bandwidth bucket (bytes) and an operations bucket
(requests); a request goes ahead only when both can pay, and pays both.

A request larger than a bucket's capacity could never be paid in full, so
it is allowed once the bucket is full and drives the balance negative: the
debt is paid off by refills before the next request may pass. The average
rate therefore holds for any request size.

Time comes from an injectable `clock` (default `time.monotonic`), so tests
drive the buckets with `pyvirt.testing.FakeClock`.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable


class TokenBucket:
    """`rate` tokens/s, at most `capacity` banked (default: one second's worth)."""

    def __init__(self, rate: float, capacity: float | None = None, *, one_time_burst: float = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"token bucket rate must be positive, got {rate!r}")
        capacity = rate if capacity is None else capacity
        if not capacity > 0:
            raise ValueError(f"token bucket capacity must be positive, got {capacity!r}")
        if one_time_burst < 0:
            raise ValueError(f"one-time burst must not be negative, got {one_time_burst!r}")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.one_time_burst = float(one_time_burst)
        self._clock = clock
        self._tokens = self.capacity  # starts full
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:  # a clock that steps back refills nothing
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while paying off a large request)."""
        self._refill()
        return self._tokens + self.one_time_burst

    def wait_time(self, n: float) -> float:
        """Seconds until `n` tokens can be taken; 0.0 if they can be now."""
        self._refill()
        need = min(n, self.capacity) - self.one_time_burst
        if need <= self._tokens + 1e-9:  # float error must not leave a timer firing forever
            return 0.0
        return (need - self._tokens) / self.rate

    def take(self, n: float) -> None:
        """Spend `n` tokens, one-time burst first; the balance may go negative."""
        self._refill()
        from_burst = min(n, self.one_time_burst)
        self.one_time_burst -= from_burst
        self._tokens -= n - from_burst

    def refund(self, n: float) -> None:
        """Give back tokens for work that did not happen."""
        self._tokens = min(self.capacity, self._tokens + n)


class RateLimiter:
    """Bandwidth and operation limits for one device; either may be None (unlimited)."""

    def __init__(self, bandwidth: TokenBucket | None = None, ops: TokenBucket | None = None) -> None:
        self.bandwidth = bandwidth
        self.ops = ops
        self.throttled = 0  # requests refused, for statistics

    @classmethod
    def per_second(cls, bytes_per_sec: float | None = None, ops_per_sec: float | None = None, *,
                   bytes_burst: float | None = None, ops_burst: float | None = None,
                   clock: Callable[[], float] = time.monotonic) -> RateLimiter:
        """Buckets from plain numbers (bursts default to one second's worth)."""
        bw = TokenBucket(bytes_per_sec, bytes_burst, clock=clock) if bytes_per_sec else None
        ops = TokenBucket(ops_per_sec, ops_burst, clock=clock) if ops_per_sec else None
        return cls(bw, ops)

    def consume(self, nbytes: int, ops: int = 1) -> tuple[bool, float]:
        """Pay for a request of `nbytes` bytes and `ops` operations.

        Returns (True, 0.0) when it may go ahead (both buckets paid), else
        (False, seconds until it could) and takes nothing."""
        wait = 0.0
        if self.bandwidth is not None and nbytes:
            wait = self.bandwidth.wait_time(nbytes)
        if self.ops is not None and ops:
            wait = max(wait, self.ops.wait_time(ops))
        if wait > 0:
            self.throttled += 1
            return False, wait
        if self.bandwidth is not None and nbytes:
            self.bandwidth.take(nbytes)
        if self.ops is not None and ops:
            self.ops.take(ops)
        return True, 0.0
