"""copy.deepcopy and pickle give independent copies of UsageHistory and RateLimiter."""

from __future__ import annotations

import asyncio
import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import usagewarden as uw

DEEP: list[Callable[[Any], Any]] = [copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))]
IDS = ["deepcopy", "pickle"]


# --- UsageHistory -------------------------------------------------------------------


@pytest.fixture
def history(clock) -> uw.UsageHistory:
    h = uw.UsageHistory(60, clock=clock)
    for t, tokens in [(0, 10), (20, 20), (40, 40)]:
        clock.set(t)
        h.add(uw.Usage(requests=1, input_tokens=tokens, cost=0.001))
    clock.set(50)
    return h


@pytest.mark.parametrize("clone", DEEP, ids=IDS)
def test_history_copy_has_the_same_contents(history, clone) -> None:
    other = clone(history)
    assert other is not history
    assert other.window_seconds == history.window_seconds
    assert other.usage_in_window() == history.usage_in_window()
    assert other.usage_in_window(15) == history.usage_in_window(15)
    assert len(other) == len(history)


@pytest.mark.parametrize("clone", DEEP, ids=IDS)
def test_history_copy_is_independent(history, clone) -> None:
    other = clone(history)
    history.add(uw.Usage(requests=100))
    assert other.usage_in_window().requests == 3
    other.add(uw.Usage(requests=1000))
    assert history.usage_in_window().requests == 103


@pytest.mark.parametrize("clone", DEEP, ids=IDS)
def test_history_copy_keeps_release_times_on_its_own_clock(history, clock, clone) -> None:
    other, other_clock = clone((history, clock))  # copied together: the copy uses other_clock
    assert other_clock is not clock
    assert other_clock.now() == 50.0
    other_clock.set(60)  # t=0 entry leaves the copy
    assert other.usage_in_window().input_tokens == 60
    assert history.usage_in_window().input_tokens == 70  # the original's clock did not move
    clock.set(80)
    assert history.usage_in_window().input_tokens == 40
    assert other.usage_in_window().input_tokens == 60
    other_clock.set(100)
    assert other.usage_in_window() == uw.Usage()


@pytest.mark.parametrize("clone", DEEP, ids=IDS)
def test_history_copy_keeps_merged_entries_merged(clock, clone) -> None:
    h = uw.UsageHistory(60, clock=clock)
    h.add(uw.Usage(requests=1))
    clock.set(0.05)
    h.add(uw.Usage(requests=1))  # merged: both leave at 60.05
    other, other_clock = clone((h, clock))
    assert len(other) == 1
    other_clock.set(60)
    assert other.usage_in_window().requests == 2
    other_clock.set(60.05)
    assert other.usage_in_window().requests == 0


def test_history_copy_on_the_system_clock() -> None:
    h = uw.UsageHistory(3600)
    h.add(uw.Usage(requests=2, input_tokens=7))
    for other in (copy.deepcopy(h), pickle.loads(pickle.dumps(h))):
        assert other.usage_in_window() == uw.Usage(requests=2, input_tokens=7)
        other.add(uw.Usage(requests=1))
        assert h.usage_in_window().requests == 2


# --- RateLimiter --------------------------------------------------------------------


@pytest.fixture
def limiter(clock) -> uw.RateLimiter:
    limiter = uw.RateLimiter(
        uw.RateLimits(requests_per_minute=5, total_tokens_per_hour=1000),
        per_key={"vip": uw.RateLimits(requests_per_minute=50)},
        clock=clock,
    )
    limiter.try_acquire("a", input_tokens=100)
    clock.set(30)
    limiter.try_acquire("a", requests=2, output_tokens=50)
    limiter.try_acquire("vip", requests=20)
    limiter.try_acquire(("a", "b"), input_tokens=1)
    clock.set(40)
    return limiter


def state(limiter: uw.RateLimiter) -> dict[str, Any]:
    return {k: (limiter.usage(k), limiter.remaining(k)) for k in ("a", "b", "vip", "c")}


@pytest.mark.parametrize("clone", DEEP, ids=IDS)
def test_limiter_copy_has_the_same_state_and_configuration(limiter, clone) -> None:
    other = clone(limiter)
    assert other is not limiter
    assert other.limits == limiter.limits
    assert other.per_key == limiter.per_key
    assert state(other) == state(limiter)
    assert other.usage("a", window_seconds=60) == limiter.usage("a", window_seconds=60)
    assert other.usage("a", window_seconds=15) == limiter.usage("a", window_seconds=15)


@pytest.mark.parametrize("clone", DEEP, ids=IDS)
def test_limiter_copy_has_its_own_clock(limiter, clock, clone) -> None:
    other = clone(limiter)
    assert isinstance(other.clock, uw.ManualClock)
    assert other.clock is not clock
    assert other.clock.now() == clock.now()
    other.clock.advance(100)
    assert clock.now() == 40.0


@pytest.mark.parametrize("clone", DEEP, ids=IDS)
def test_limiter_copy_is_independent(limiter, clone) -> None:
    other = clone(limiter)
    before = state(limiter)
    assert other.try_acquire("c", requests=5)
    assert not other.try_acquire("a", requests=3)
    other.reset("vip")
    assert state(limiter) == before
    limiter.try_acquire("b", requests=4)
    assert other.usage("b").requests == 1
    limiter.reset()
    assert other.usage("a").requests == 4


@pytest.mark.parametrize("clone", DEEP, ids=IDS)
def test_limiter_copy_keeps_release_times(limiter, clone) -> None:
    other = clone(limiter)
    # "a" holds t=0 (1 request, 100 tokens) and t=30 (2 + 1 requests, 51 tokens).
    assert other.check("a", requests=2).retry_after == pytest.approx(20.0)
    other.clock.set(60)
    assert other.usage("a", window_seconds=60).requests == 3
    assert other.usage("a").input_tokens == 101  # the hour window still holds it
    other.clock.set(90)
    assert other.usage("a", window_seconds=60) == uw.Usage()
    assert limiter.usage("a", window_seconds=60).requests == 4  # original clock at 40


@pytest.mark.parametrize("clone", DEEP, ids=IDS)
def test_reservations_of_the_original_do_not_touch_the_copy(clock, clone) -> None:
    limiter = uw.RateLimiter(uw.RateLimits(total_tokens_per_minute=100), clock=clock)
    r = limiter.try_acquire(input_tokens=60).reservation
    other = clone(limiter)
    r.cancel()
    assert limiter.usage() == uw.Usage()
    assert other.usage() == uw.Usage(requests=1, input_tokens=60)


# A RedisRateLimiter is a connection: its state lives in Redis and is not copied.
@pytest.mark.in_process("copies the limiter's state")
@pytest.mark.parametrize("clone", DEEP, ids=IDS)
def test_a_copy_taken_while_waiters_are_queued_has_no_waiters(make_limiter, clock, clone) -> None:
    limiter = make_limiter(requests_per_minute=1)

    async def scenario() -> None:
        limiter.try_acquire()
        task = asyncio.create_task(limiter.acquire())
        for _ in range(5):
            await asyncio.sleep(0)
        other = clone(limiter)
        assert not limiter.check(requests=0)  # queued in the original
        assert other.check(requests=0)  # not in the copy
        other.clock.advance(60)
        assert other.try_acquire()
        clock.advance(60)
        assert (await asyncio.wait_for(task, 10)).at == 60.0

    asyncio.run(scenario())


def test_copy_copy_shares_the_clock_but_not_the_state(limiter, clock) -> None:
    other = copy.copy(limiter)
    assert other.clock is clock
    assert state(other) == state(limiter)
    other.try_acquire("c")
    assert limiter.usage("c") == uw.Usage()


def test_limiter_copy_on_the_system_clock() -> None:
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_hour=3))
    limiter.try_acquire("k", requests=2)
    for other in (copy.deepcopy(limiter), pickle.loads(pickle.dumps(limiter))):
        assert other.clock is None
        assert other.usage("k").requests == 2
        assert other.try_acquire("k")
        assert not other.try_acquire("k")
        assert limiter.usage("k").requests == 2


def test_rate_limit_exceeded_pickles() -> None:
    # Regression: RateLimitExceeded defines __reduce__ so that it pickles, but the
    # uw.Limit it carries cannot be pickled, so the error cannot cross a
    # process boundary (multiprocessing, ProcessPoolExecutor).
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=1), clock=uw.ManualClock())
    with pytest.raises(uw.RateLimitExceeded) as info:
        limiter.acquire_blocking(requests=2)
    err = pickle.loads(pickle.dumps(info.value))
    assert isinstance(err, uw.RateLimitExceeded)
    assert (str(err), err.retry_after, err.key) == (str(info.value), None, "default")
    assert err.limit == info.value.limit


def test_rate_limit_exceeded_without_a_limit_pickles() -> None:
    err = uw.RateLimitExceeded("no room", retry_after=1.5, key="k")
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.retry_after, back.limit, back.key) == ("no room", 1.5, None, "k")
