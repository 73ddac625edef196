"""pause() and observe(): what a provider said (a 429 with Retry-After, its
remaining-quota headers) tightening the limiter on a key."""

from __future__ import annotations

import asyncio
import math

import pytest
import usagewarden as uw
from conftest import MAX_COUNT, Worker, is_queued, result_of, spin, wait_until


@pytest.fixture
def limiter(make_limiter) -> uw.RateLimiter:
    return make_limiter(requests_per_minute=100, total_tokens_per_minute=10_000)


def test_a_pause_refuses_the_key_with_the_time_left(limiter, clock) -> None:
    assert limiter.pause("k", 30) is None
    d = limiter.try_acquire("k", input_tokens=1)
    assert not d.allowed
    assert d.retry_after == 30.0
    assert d.limit is not None and d.limit.name == "pause"
    assert limiter.check("k").retry_after == 30.0
    assert limiter.remaining("k") == uw.Usage()
    assert limiter.usage("k") == uw.Usage(), "a refused request records nothing"
    assert limiter.try_acquire("other"), "other keys are not paused"
    clock.advance(29.5)
    assert limiter.check("k").retry_after == 0.5
    clock.advance(0.5)
    assert limiter.try_acquire("k", input_tokens=1)


def test_a_longer_pause_extends_a_shorter_one_does_not_shorten(limiter, clock) -> None:
    limiter.pause("k", 10)
    limiter.pause("k", 5)
    assert limiter.check("k").retry_after == 10.0
    clock.advance(4)
    limiter.pause("k", 20)
    assert limiter.check("k").retry_after == 20.0


def test_a_pause_on_a_tuple_pauses_every_key(limiter) -> None:
    limiter.pause(("a", "b"), 7)
    assert limiter.check("a").retry_after == 7.0
    assert limiter.check("b").retry_after == 7.0
    assert not limiter.try_acquire(("a", "c"))
    assert limiter.try_acquire("c")


def test_reset_lifts_a_pause(limiter) -> None:
    limiter.pause("k", 10)
    limiter.reset("k")
    assert limiter.try_acquire("k")


@pytest.mark.parametrize("seconds", [0, -1, math.inf, math.nan])
def test_pause_seconds_must_be_positive_and_finite(limiter, seconds) -> None:
    with pytest.raises(ValueError, match="seconds"):
        limiter.pause("k", seconds)
    assert limiter.try_acquire("k")


def test_pause_seconds_must_be_a_number(limiter) -> None:
    with pytest.raises(TypeError, match="seconds"):
        limiter.pause("k", "10")  # type: ignore[arg-type]


def test_waiters_wake_in_order_when_a_pause_ends(limiter, clock) -> None:
    limiter.pause("k", 10)
    first = Worker(lambda: limiter.acquire_blocking("k", input_tokens=1))
    first.start()
    wait_until(lambda: is_queued(limiter, "k"))
    second = Worker(lambda: limiter.acquire_blocking("k", input_tokens=2))
    second.start()
    clock.advance(9.9)
    assert first.is_alive() and second.is_alive()
    clock.advance(0.1)
    a, b = first.outcome(), second.outcome()
    assert (a.at, b.at) == (10.0, 10.0)
    assert limiter.usage("k") == uw.Usage(requests=2, input_tokens=3)


async def test_async_waiters_wake_when_a_pause_ends(limiter, clock) -> None:
    limiter.pause("k", 10)
    task = asyncio.create_task(limiter.acquire("k", input_tokens=5))
    await spin()
    assert not task.done()
    clock.advance(10)
    r = await result_of(task)
    assert r.at == 10.0


def test_observed_remaining_tokens_cap_admissions_until_the_reset(limiter, clock) -> None:
    limiter.observe("k", remaining_tokens=300, reset_tokens=20)
    assert limiter.remaining("k").input_tokens == 300
    assert limiter.remaining("k").output_tokens == 300
    assert limiter.try_acquire("k", input_tokens=200, output_tokens=50)
    d = limiter.try_acquire("k", input_tokens=100)
    assert not d.allowed
    assert d.retry_after == 20.0
    assert d.limit is not None and d.limit.name == "observed_total_tokens"
    assert limiter.try_acquire("k", input_tokens=50)
    assert limiter.remaining("k").input_tokens == 0
    clock.advance(20)
    assert limiter.remaining("k").input_tokens == 10_000 - 300


def test_a_looser_observation_changes_nothing(limiter) -> None:
    limiter.try_acquire("k", input_tokens=9_000)
    limiter.observe("k", remaining_tokens=5_000, reset_tokens=60)
    assert limiter.remaining("k").input_tokens == 1_000
    assert limiter.try_acquire("k", input_tokens=1_000)


def test_observed_requests_and_input_and_output(limiter, clock) -> None:
    limiter.observe(
        "k",
        remaining_requests=2,
        reset_requests=5,
        remaining_input_tokens=100,
        reset_input_tokens=30,
        remaining_output_tokens=10,
        reset_output_tokens=40,
    )
    r = limiter.remaining("k")
    assert (r.requests, r.input_tokens, r.output_tokens) == (2, 100, 10)
    assert limiter.try_acquire("k", output_tokens=10)
    assert limiter.check("k", output_tokens=1).retry_after == 40.0
    assert limiter.try_acquire("k", input_tokens=1)
    d = limiter.check("k")
    assert (d.retry_after, d.limit.name if d.limit else None) == (5.0, "observed_requests")
    clock.advance(5)
    assert limiter.try_acquire("k", input_tokens=1)
    assert limiter.check("k", input_tokens=99).retry_after == 25.0


def test_a_remaining_without_a_reset_takes_the_dimension_window(limiter, clock) -> None:
    limiter.observe("k", remaining_requests=0)
    assert limiter.check("k").retry_after == 60.0
    assert limiter.remaining("k").requests == 0


def test_an_observation_without_a_local_limit_still_applies(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=100)
    assert limiter.remaining("k").input_tokens == MAX_COUNT
    limiter.observe("k", remaining_tokens=10, reset_tokens=60)
    assert limiter.remaining("k").input_tokens == 10
    assert not limiter.try_acquire("k", input_tokens=11)


def test_observe_with_nothing_given_changes_nothing(limiter) -> None:
    assert limiter.observe("k") is None
    assert limiter.remaining("k").requests == 100


@pytest.mark.parametrize(
    ("argument", "value", "error"),
    [
        ("remaining_requests", -1, ValueError),
        ("remaining_tokens", 1.5, TypeError),
        ("remaining_input_tokens", 2**64, ValueError),
        ("remaining_output_tokens", "3", TypeError),
        ("reset_requests", -1.0, ValueError),
        ("reset_tokens", math.inf, ValueError),
        ("reset_input_tokens", math.nan, ValueError),
        ("reset_output_tokens", "soon", TypeError),
    ],
)
def test_bad_observations_name_the_argument_and_change_nothing(
    limiter, argument, value, error
) -> None:
    valid = "remaining_tokens" if argument != "remaining_tokens" else "remaining_requests"
    with pytest.raises(error, match=argument):
        limiter.observe("k", **{valid: 0, argument: value})
    remaining = limiter.remaining("k")
    assert (remaining.requests, remaining.input_tokens) == (100, 10_000)
