"""Token buckets and the rate limiter, on a hand-moved clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirt.disk.ratelimit import RateLimiter, TokenBucket
from pyvirt.testing import FakeClock


def test_bucket_starts_full_and_refills() -> None:
    c = FakeClock()
    b = TokenBucket(100, 50, clock=c)
    assert b.tokens == 50 and b.wait_time(50) == 0
    b.take(50)
    assert b.wait_time(10) == pytest.approx(0.1)
    c.advance(0.1)
    assert b.tokens == pytest.approx(10)
    c.advance(100)
    assert b.tokens == 50  # capped at capacity


def test_default_capacity_is_one_second() -> None:
    assert TokenBucket(300, clock=FakeClock()).capacity == 300


def test_oversized_request_runs_into_debt() -> None:
    c = FakeClock()
    b = TokenBucket(10, 10, clock=c)
    assert b.wait_time(35) == 0  # full bucket: may go ahead
    b.take(35)
    assert b.tokens == -25
    assert b.wait_time(1) == pytest.approx(2.6)
    c.advance(2.6)
    assert b.wait_time(1) == 0


def test_clock_going_back_refills_nothing() -> None:
    c = FakeClock(10)
    b = TokenBucket(10, 10, clock=c)
    b.take(10)
    c.set(5)
    assert b.tokens == 0
    c.set(6)
    assert b.tokens == pytest.approx(10)


def test_one_time_burst() -> None:
    c = FakeClock()
    b = TokenBucket(10, 10, one_time_burst=100, clock=c)
    assert b.tokens == 110
    b.take(105)
    assert b.one_time_burst == 0 and b.tokens == 5
    c.advance(10)
    assert b.tokens == 10  # the burst never comes back


def test_refund() -> None:
    b = TokenBucket(10, 10, clock=FakeClock())
    b.take(8)
    b.refund(5)
    assert b.tokens == 7
    b.refund(50)
    assert b.tokens == 10


@pytest.mark.parametrize("args", [(0,), (-1,), (10, 0), (10, -5)])
def test_bad_buckets(args: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        TokenBucket(*args)
    with pytest.raises(ValueError):
        TokenBucket(1, one_time_burst=-1)


def test_limiter_pays_both_or_neither() -> None:
    c = FakeClock()
    lim = RateLimiter.per_second(bytes_per_sec=1000, ops_per_sec=2, clock=c)
    assert lim.consume(400) == (True, 0.0)
    assert lim.consume(400) == (True, 0.0)
    ok, wait = lim.consume(100)  # bytes would fit, ops do not
    assert not ok and wait == pytest.approx(0.5)
    assert lim.bandwidth is not None and lim.bandwidth.tokens == pytest.approx(200)  # nothing taken
    assert lim.throttled == 1
    c.advance(0.5)
    assert lim.consume(100)[0]


def test_limiter_wait_is_the_longer_one() -> None:
    c = FakeClock()
    lim = RateLimiter.per_second(bytes_per_sec=100, ops_per_sec=100, clock=c)
    lim.consume(100, 1)
    ok, wait = lim.consume(50)
    assert not ok and wait == pytest.approx(0.5)


def test_unlimited() -> None:
    lim = RateLimiter()
    assert all(lim.consume(1 << 40)[0] for _ in range(100))


@settings(max_examples=100, deadline=None)
@given(rate=st.integers(1, 10_000), sizes=st.lists(st.integers(0, 50_000), min_size=1, max_size=40))
def test_average_rate_holds(rate: int, sizes: list[int]) -> None:
    """Serving requests as soon as allowed never beats rate * time + burst."""
    c = FakeClock()
    lim = RateLimiter.per_second(bytes_per_sec=rate, clock=c)
    served = 0
    for n in sizes:
        while True:
            ok, wait = lim.consume(n)
            if ok:
                break
            assert wait > 0
            c.advance(wait)
        served += n
        assert served - max(sizes) <= rate * c.now + rate + 1e-6
