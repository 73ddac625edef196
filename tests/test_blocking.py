"""RateLimiter.acquire_blocking: waiting in threads (the GIL is released)."""

from __future__ import annotations

import threading

import pytest
import usagewarden as uw
from conftest import SLICE_ENDS_LATER, Worker, is_queued, wait_until


@pytest.fixture
def limiter(make_limiter) -> uw.RateLimiter:
    return make_limiter(requests_per_minute=2, total_tokens_per_minute=100)


def test_admitted_at_once_when_it_fits(limiter, clock) -> None:
    clock.set(4)
    r = limiter.acquire_blocking("k", input_tokens=30)
    assert isinstance(r, uw.Reservation)
    assert (r.at, r.key, r.usage) == (4.0, "k", uw.Usage(requests=1, input_tokens=30))
    assert limiter.usage("k") == r.usage


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_blocks_until_the_clock_makes_room(limiter, clock) -> None:
    limiter.acquire_blocking(input_tokens=80)
    worker = Worker(lambda: limiter.acquire_blocking(input_tokens=50, timeout=600))
    worker.start()
    # The worker waits with the GIL released: this thread keeps running.
    wait_until(lambda: is_queued(limiter))
    assert worker.is_alive()
    clock.advance(59)
    assert worker.is_alive() or worker.error is not None
    assert limiter.usage().input_tokens == 80
    clock.advance(1)
    r = worker.outcome()
    assert r.at == 60.0
    assert limiter.usage() == uw.Usage(requests=1, input_tokens=50)


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_timeout_raises_and_records_nothing(limiter, clock) -> None:
    limiter.acquire_blocking(input_tokens=80)
    worker = Worker(lambda: limiter.acquire_blocking("default", input_tokens=50, timeout=5))
    worker.start()
    wait_until(lambda: is_queued(limiter))
    clock.advance(5)
    with pytest.raises(uw.RateLimitExceeded) as info:
        worker.outcome()
    assert info.value.retry_after == pytest.approx(55.0)
    assert info.value.limit.name == "total_tokens_per_minute"
    assert info.value.key == "default"
    assert not is_queued(limiter)
    assert limiter.usage().input_tokens == 80


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_zero_timeout_does_not_wait(limiter) -> None:
    limiter.acquire_blocking(input_tokens=80)
    with pytest.raises(uw.RateLimitExceeded) as info:
        limiter.acquire_blocking(input_tokens=50, timeout=0)
    assert info.value.retry_after == pytest.approx(60.0)
    assert limiter.usage().input_tokens == 80
    assert not is_queued(limiter)


def test_larger_than_a_limit_raises_at_once(limiter) -> None:
    with pytest.raises(uw.RateLimitExceeded) as info:
        limiter.acquire_blocking(requests=3)
    assert info.value.retry_after is None
    assert info.value.limit.name == "requests_per_minute"
    assert limiter.usage() == uw.Usage()


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_blocking_waiters_are_fifo(make_limiter, clock) -> None:
    limiter = make_limiter(total_tokens_per_minute=100)
    limiter.acquire_blocking(input_tokens=90)
    order: list[str] = []
    lock = threading.Lock()

    def take(name: str, tokens: int) -> uw.Reservation:
        r = limiter.acquire_blocking(input_tokens=tokens)
        with lock:
            order.append(name)
        return r

    big = Worker(lambda: take("big", 80))
    big.start()
    wait_until(lambda: is_queued(limiter))
    small = Worker(lambda: take("small", 30))  # fits now, not after big
    small.start()
    # try_acquire does not jump the queue.
    assert not limiter.try_acquire(input_tokens=5)
    clock.set(60)
    assert big.outcome().at == 60.0
    assert small.is_alive()
    assert limiter.usage().input_tokens == 80
    clock.set(120)
    assert small.outcome().at == 120.0
    assert order == ["big", "small"]


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_blocking_and_async_waiters_share_one_queue(make_limiter, clock) -> None:
    import asyncio

    limiter = make_limiter(requests_per_second=1)
    limiter.try_acquire()
    blocked = Worker(lambda: limiter.acquire_blocking())
    blocked.start()
    wait_until(lambda: is_queued(limiter))

    async def later() -> uw.Reservation:
        task = asyncio.create_task(limiter.acquire())
        for _ in range(5):
            await asyncio.sleep(0)
        clock.advance(1)  # room for one: the blocked thread was first
        r_thread = blocked.outcome()
        assert r_thread.at == 1.0
        assert not task.done()
        clock.advance(1)
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(later()).at == 2.0


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_many_threads_block_and_are_all_admitted(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_second=3)
    workers = [Worker(lambda: limiter.acquire_blocking(timeout=1000)) for _ in range(12)]
    for w in workers:
        w.start()

    def admitted() -> int:
        return sum(not w.is_alive() for w in workers)

    wait_until(lambda: admitted() == 3)
    for step in range(2, 5):
        wait_until(lambda: is_queued(limiter))
        clock.advance(1)
        wait_until(lambda: admitted() >= 3 * step)  # noqa: B023
        assert admitted() == 3 * step
    ats = sorted(w.outcome().at for w in workers)
    assert ats == [0.0] * 3 + [1.0] * 3 + [2.0] * 3 + [3.0] * 3
