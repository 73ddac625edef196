"""await RateLimiter.acquire: waiting (FIFO per key), timeouts and cancellation.

Waiting is driven by a ManualClock: tasks are started, given a few loop
iterations to queue, then the clock is advanced and their results awaited.
"""

from __future__ import annotations

import asyncio
import collections.abc
import time

import pytest
import usagewarden as uw
from conftest import GRACE, eventually, is_queued, result_of, spin


@pytest.fixture
def limiter(make_limiter) -> uw.RateLimiter:
    return make_limiter(total_tokens_per_minute=100)


async def test_admitted_at_once_when_it_fits(limiter, clock) -> None:
    clock.set(3)
    r = await limiter.acquire("k", input_tokens=40)
    assert isinstance(r, uw.Reservation)
    assert r.at == 3.0
    assert r.key == "k"
    assert r.usage == uw.Usage(requests=1, input_tokens=40)
    assert limiter.usage("k") == r.usage


async def test_acquire_returns_a_coroutine_object(limiter) -> None:
    coro = limiter.acquire(input_tokens=1)
    assert isinstance(coro, collections.abc.Coroutine)
    assert asyncio.iscoroutine(coro)
    # Like an async def, it does nothing until awaited.
    assert limiter.usage() == uw.Usage()
    r = await coro
    assert limiter.usage() == r.usage
    with pytest.raises(RuntimeError):
        await coro  # a coroutine can be awaited once


async def test_an_acquire_never_awaited_records_nothing(limiter) -> None:
    coro = limiter.acquire(input_tokens=10)
    coro.close()
    del coro
    assert limiter.usage() == uw.Usage()
    assert not is_queued(limiter)


async def test_works_with_create_task_and_wait_for(limiter) -> None:
    task = asyncio.create_task(limiter.acquire(input_tokens=10))
    r1 = await result_of(task)
    r2 = await asyncio.wait_for(limiter.acquire(input_tokens=20), GRACE)
    r3, r4 = await asyncio.gather(limiter.acquire(input_tokens=1), limiter.acquire(input_tokens=2))
    assert limiter.usage().input_tokens == 33
    assert all(isinstance(r, uw.Reservation) for r in (r1, r2, r3, r4))


async def test_waits_until_the_clock_makes_room(limiter, clock) -> None:
    await limiter.acquire(input_tokens=70)
    clock.set(20)
    task = asyncio.create_task(limiter.acquire(input_tokens=50))
    await spin()
    assert not task.done()
    assert is_queued(limiter)
    clock.set(59.999)
    await spin()
    assert not task.done()
    clock.set(60)
    r = await result_of(task)
    assert r.at == 60.0
    assert limiter.usage() == uw.Usage(requests=1, input_tokens=50)
    assert not is_queued(limiter)


async def test_a_large_advance_wakes_every_waiter_that_fits(limiter, clock) -> None:
    await limiter.acquire(input_tokens=100)
    tasks = [asyncio.create_task(limiter.acquire(input_tokens=20)) for _ in range(5)]
    await spin()
    assert not any(t.done() for t in tasks)
    clock.advance(60)
    done = await asyncio.wait_for(asyncio.gather(*tasks), GRACE)
    assert {r.at for r in done} == {60.0}
    assert limiter.usage().input_tokens == 100


async def test_a_request_larger_than_a_limit_raises_at_once(limiter) -> None:
    with pytest.raises(uw.RateLimitExceeded) as info:
        await limiter.acquire("k", input_tokens=60, output_tokens=41)
    err = info.value
    assert isinstance(err, uw.UsageWardenError)
    assert err.retry_after is None
    assert err.limit.name == "total_tokens_per_minute"
    assert err.key == "k"
    assert limiter.usage("k") == uw.Usage()
    assert not is_queued(limiter, "k")


async def test_fifo_a_big_request_queued_first_goes_first(limiter, clock) -> None:
    await limiter.acquire(input_tokens=90)  # t=0
    big = asyncio.create_task(limiter.acquire(input_tokens=80))  # fits at t=60
    await spin()
    small = asyncio.create_task(limiter.acquire(input_tokens=5))  # would fit now
    await spin()
    assert not big.done() and not small.done()
    # try_acquire and check do not jump the queue either.
    decision = limiter.try_acquire(input_tokens=5)
    assert not decision
    assert decision.retry_after == pytest.approx(60.0)
    assert not limiter.check(input_tokens=5)
    assert limiter.usage().input_tokens == 90
    clock.set(60)
    r_big = await result_of(big)
    r_small = await result_of(small)
    assert (r_big.at, r_small.at) == (60.0, 60.0)
    assert limiter.usage().input_tokens == 85


async def test_fifo_a_later_small_request_waits_for_the_big_one(limiter, clock) -> None:
    await limiter.acquire(input_tokens=90)  # t=0
    big = asyncio.create_task(limiter.acquire(input_tokens=80))
    await spin()
    await a_later_small_request_waits_for_the_big_one(limiter, big, clock)


async def a_later_small_request_waits_for_the_big_one(
    limiter: uw.Limiter, big: asyncio.Task[uw.Reservation], clock: uw.ManualClock
) -> None:
    """``big`` (80 of 100 tokens a minute, 90 used at t=0) is queued: a later
    request of 30 on ``limiter`` fits now but not after it, so it waits."""
    later = asyncio.create_task(limiter.acquire(input_tokens=30))
    await spin()
    clock.set(60)
    assert (await result_of(big)).at == 60.0
    await spin()
    await asyncio.sleep(0.05)  # give a wrongly woken waiter the chance to run
    assert not later.done()
    assert limiter.usage().input_tokens == 80
    clock.set(120)
    assert (await result_of(later)).at == 120.0


async def test_fifo_order_of_many_waiters(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_second=1)
    await limiter.acquire()
    order: list[int] = []

    async def one(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    tasks = []
    for i in range(10):
        tasks.append(asyncio.create_task(one(i)))
        await spin(2)
    for step in range(1, 11):
        clock.advance(1)
        for _ in range(200):
            if len(order) == step:
                break
            await asyncio.sleep(0.001)
        assert len(order) == step
    assert order == list(range(10))
    await asyncio.wait_for(asyncio.gather(*tasks), GRACE)


async def test_timeout_raises_and_records_nothing(limiter, clock) -> None:
    await limiter.acquire(input_tokens=90)
    task = asyncio.create_task(limiter.acquire("default", input_tokens=50, timeout=10))
    await spin()
    clock.advance(9.999)
    await spin()
    assert not task.done()
    clock.advance(0.001)
    with pytest.raises(uw.RateLimitExceeded) as info:
        await result_of(task)
    err = info.value
    assert err.retry_after == pytest.approx(50.0)  # t=0 leaves at 60; now is 10
    assert err.limit.name == "total_tokens_per_minute"
    assert err.key == "default"
    assert limiter.usage().input_tokens == 90
    assert not is_queued(limiter)
    clock.set(60)
    assert limiter.usage() == uw.Usage()


async def test_zero_timeout_fails_at_once_when_it_does_not_fit(limiter) -> None:
    await limiter.acquire(input_tokens=90)
    with pytest.raises(uw.RateLimitExceeded):
        await asyncio.wait_for(limiter.acquire(input_tokens=50, timeout=0), GRACE)
    assert (await limiter.acquire(input_tokens=10, timeout=0)).usage.input_tokens == 10


async def test_a_timed_out_head_unblocks_the_queue(limiter, clock) -> None:
    await limiter.acquire(input_tokens=60)
    head = asyncio.create_task(limiter.acquire(input_tokens=50, timeout=5))
    await spin()
    behind = asyncio.create_task(limiter.acquire(input_tokens=30))  # fits, but queued
    await spin()
    assert not behind.done()
    clock.advance(5)
    with pytest.raises(uw.RateLimitExceeded):
        await result_of(head)
    r = await result_of(behind)
    assert r.at == 5.0
    assert limiter.usage().input_tokens == 90


async def test_a_timeout_behind_the_head_reports_a_retry_after(limiter, clock) -> None:
    # Regression: a waiter that timed out while not at the head of the queue
    # raised RateLimitExceeded with retry_after=None and limit=None, which by
    # contract means "can never fit". It can: retry_after must be a number.
    await limiter.acquire(input_tokens=90)
    head = asyncio.create_task(limiter.acquire(input_tokens=50))
    await spin()
    behind = asyncio.create_task(limiter.acquire(input_tokens=20, timeout=5))
    await spin()
    clock.advance(5)
    with pytest.raises(uw.RateLimitExceeded) as info:
        await result_of(behind)
    assert limiter.usage().input_tokens == 90
    head.cancel()
    err = info.value
    # t=0 (90) leaves at 60; the head (50) is admitted then and 20 more fit too.
    assert err.retry_after == pytest.approx(55.0)
    assert err.limit is not None and err.limit.name == "total_tokens_per_minute"


async def test_cancelling_a_waiting_task_records_nothing_and_unblocks_the_queue(
    limiter, clock
) -> None:
    await limiter.acquire(input_tokens=60)
    head = asyncio.create_task(limiter.acquire(input_tokens=50))
    await spin()
    behind = asyncio.create_task(limiter.acquire(input_tokens=30))
    await spin()
    assert not behind.done()
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await head
    r = await result_of(behind)  # admitted without the clock moving
    assert r.at == 0.0
    await eventually(lambda: not is_queued(limiter))
    clock.advance(61)
    await spin()
    assert limiter.usage() == uw.Usage()


async def test_wait_for_timeout_cancels_and_records_nothing(limiter, clock) -> None:
    await limiter.acquire(input_tokens=100)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(limiter.acquire(input_tokens=10), 0.01)
    await eventually(lambda: not is_queued(limiter))
    clock.advance(60)
    await spin()
    assert limiter.usage() == uw.Usage()


async def test_closing_a_waiting_coroutine_leaves_the_queue(limiter, clock) -> None:
    await limiter.acquire(input_tokens=100)
    coro = limiter.acquire(input_tokens=10)
    future = coro.send(None)  # started: queued, parked on a future
    assert future is not None
    assert is_queued(limiter)
    coro.close()
    await eventually(lambda: not is_queued(limiter))
    clock.advance(60)
    await spin()
    assert limiter.usage() == uw.Usage()


async def test_cancel_right_after_the_grant_records_nothing(limiter, clock) -> None:
    # BUG: if the task is cancelled after the grant was delivered to its future
    # but before the task resumed, the task raises CancelledError and the
    # reservation is dropped while its usage stays recorded.
    await limiter.acquire(input_tokens=100)
    task = asyncio.create_task(limiter.acquire(input_tokens=100))
    await spin()
    clock.advance(60)
    # Wait (blocking the loop on purpose) until the grant is recorded and handed
    # to the loop, then let the loop deliver it, and cancel before the task runs.
    deadline = time.monotonic() + GRACE
    while limiter.usage().input_tokens < 100 and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)
    await asyncio.sleep(0)
    task.cancel()
    try:
        reservation = await task
    except asyncio.CancelledError:
        assert limiter.usage() == uw.Usage(), "a cancelled acquire left its usage recorded"
    else:  # the task won the race: it must hold what is counted
        assert limiter.usage() == reservation.usage


async def test_a_refund_wakes_the_head(limiter) -> None:
    r = await limiter.acquire(input_tokens=100)
    task = asyncio.create_task(limiter.acquire(input_tokens=50))
    await spin()
    assert not task.done()
    r.settle(input_tokens=40)  # 60 free now, no clock movement
    got = await result_of(task)
    assert got.at == 0.0
    assert limiter.usage().input_tokens == 90


async def test_a_cancelled_reservation_wakes_the_head(limiter) -> None:
    r = await limiter.acquire(input_tokens=100)
    task = asyncio.create_task(limiter.acquire(input_tokens=100))
    await spin()
    r.cancel()
    await result_of(task)
    assert limiter.usage().input_tokens == 100


async def test_reset_wakes_the_head(limiter) -> None:
    await limiter.acquire(input_tokens=100)
    task = asyncio.create_task(limiter.acquire(input_tokens=100))
    await spin()
    limiter.reset()
    await result_of(task)
    assert limiter.usage().input_tokens == 100


async def test_waiters_on_other_keys_are_independent(limiter, clock) -> None:
    await limiter.acquire("a", input_tokens=100)
    waiting = asyncio.create_task(limiter.acquire("a", input_tokens=1))
    await spin()
    r = await asyncio.wait_for(limiter.acquire("b", input_tokens=100), GRACE)
    assert r.key == "b"
    assert limiter.try_acquire("c", input_tokens=1)
    assert not waiting.done()
    clock.advance(60)
    await result_of(waiting)


async def test_multi_key_waiter_is_admitted_on_all_keys_at_once(limiter, clock) -> None:
    await limiter.acquire("a", input_tokens=100)
    clock.set(30)
    await limiter.acquire("b", input_tokens=100)
    task = asyncio.create_task(limiter.acquire(("a", "b"), input_tokens=50))
    await spin()
    clock.set(60)  # room on a, not on b
    await spin()
    await asyncio.sleep(0.05)
    assert not task.done()
    assert limiter.usage("a") == uw.Usage()
    clock.set(90)
    r = await result_of(task)
    assert r.at == 90.0 and r.key == ("a", "b")
    assert limiter.usage("a").input_tokens == limiter.usage("b").input_tokens == 50


async def test_many_cancellations_during_grants_leave_exactly_what_was_returned(
    make_limiter, clock, request
) -> None:
    # Every admission stays inside the hour window, so whatever is counted must
    # be exactly what the tasks that were not cancelled got back.
    limiter = make_limiter(requests_per_second=5, requests_per_hour=10_000)
    tasks = [asyncio.create_task(limiter.acquire(input_tokens=i)) for i in range(60)]
    await spin()
    for step in range(40):
        clock.advance(0.25)
        await asyncio.sleep(0.002)
        if step % 3 == 0:
            for t in tasks[step::7]:
                t.cancel()
    clock.advance(60)
    await asyncio.sleep(0.01)
    for t in tasks:
        if not t.done():
            t.cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), GRACE)
    assert all(isinstance(r, (uw.Reservation, asyncio.CancelledError)) for r in results)
    reservations = [r for r in results if isinstance(r, uw.Reservation)]
    cancelled = len(results) - len(reservations)
    assert reservations and cancelled  # both outcomes happened
    await eventually(lambda: not is_queued(limiter))
    counted = limiter.usage()
    assert counted.requests == len(reservations)
    assert counted.input_tokens == sum(r.usage.input_tokens for r in reservations)


async def test_one_clock_wakes_the_waiters_of_every_limiter(clock) -> None:
    limiters = [uw.RateLimiter(uw.RateLimits(requests_per_second=1), clock=clock) for _ in range(3)]
    for limiter in limiters:
        limiter.try_acquire()
    tasks = [asyncio.create_task(limiter.acquire()) for limiter in limiters]
    await spin()
    assert not any(t.done() for t in tasks)
    clock.advance(1)
    got = await asyncio.wait_for(asyncio.gather(*tasks), GRACE)
    assert [r.at for r in got] == [1.0, 1.0, 1.0]
