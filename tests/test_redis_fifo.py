"""FIFO through the queue in Redis: two RedisRateLimiter instances on one URL
share nothing in process (as two processes would not), so whatever orders
their waiters is the queue of tickets in Redis. On a manual clock, no sleep.

The multi-process proofs (and a killed ticket holder) are in
``test_redis_fifo_multiprocess.py``.
"""

from __future__ import annotations

import asyncio

import pytest
import usagewarden as uw
from conftest import eventually, is_queued, result_of, spin
from test_async_acquire import a_later_small_request_waits_for_the_big_one


def two_limiters(url: str, clock: uw.ManualClock) -> tuple[uw.RedisRateLimiter, ...]:
    limits = uw.RateLimits(total_tokens_per_minute=100)
    return tuple(uw.RedisRateLimiter(limits, url, clock=clock) for _ in range(2))


async def test_a_waiter_of_one_limiter_is_ahead_of_another_limiters_requests(
    redis_url, clock
) -> None:
    a, b = two_limiters(redis_url, clock)
    assert a.try_acquire(input_tokens=90)  # t=0
    big = asyncio.create_task(a.acquire(input_tokens=80))  # fits at t=60
    await eventually(lambda: is_queued(b))
    # b has no waiter of its own: only a's ticket in Redis refuses these.
    refused = b.try_acquire(input_tokens=5)
    assert not refused
    assert refused.retry_after == pytest.approx(60.0)  # once the 80 has gone first
    assert not b.check(input_tokens=5)
    await a_later_small_request_waits_for_the_big_one(b, big, clock)
    assert not is_queued(a) and not is_queued(b)


async def test_a_cancelled_waiter_leaves_the_queue_in_redis(redis_url, clock) -> None:
    a, b = two_limiters(redis_url, clock)
    assert a.try_acquire(input_tokens=60)
    head = asyncio.create_task(a.acquire(input_tokens=50))
    await eventually(lambda: is_queued(b))
    behind = asyncio.create_task(b.acquire(input_tokens=30))  # fits, but queued
    await spin()
    await asyncio.sleep(0.05)
    assert not behind.done()
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await head
    # Woken by the departure (pub/sub), without the clock moving.
    assert (await result_of(behind)).at == 0.0
    await eventually(lambda: not is_queued(a))
    assert a.usage().input_tokens == 90


async def test_a_timed_out_waiter_leaves_the_queue_in_redis(redis_url, clock) -> None:
    a, b = two_limiters(redis_url, clock)
    assert a.try_acquire(input_tokens=60)
    head = asyncio.create_task(a.acquire(input_tokens=50, timeout=5))
    await eventually(lambda: is_queued(b))
    clock.advance(5)
    with pytest.raises(uw.RateLimitExceeded) as info:
        await result_of(head)
    assert info.value.retry_after == pytest.approx(55.0)  # t=0 leaves at 60
    await eventually(lambda: not is_queued(b))
    assert b.try_acquire(input_tokens=30)


async def test_a_reset_keeps_the_queue_in_order(redis_url, clock) -> None:
    a, b = two_limiters(redis_url, clock)
    assert a.try_acquire(input_tokens=100)
    big = asyncio.create_task(a.acquire(input_tokens=100))
    await eventually(lambda: is_queued(b))
    b.reset()  # capacity is back; the queue stays, so its head goes first
    assert (await result_of(big)).at == 0.0
    assert not b.try_acquire(input_tokens=1)  # the big one holds the limit
