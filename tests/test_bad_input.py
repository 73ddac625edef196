"""Bad arguments: ValueError/TypeError naming the argument, and nothing recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import usagewarden as uw
from conftest import SLICE_ENDS_LATER, is_queued

COUNT_FIELDS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
)

#: (value, exception) for every count field.
BAD_COUNTS: list[tuple[Any, type[Exception]]] = [
    (-1, ValueError),
    (-(2**70), ValueError),
    (2**63, ValueError),
    (2**64 + 5, ValueError),
    (1.0, TypeError),
    (0.5, TypeError),
    (float("nan"), TypeError),
    (True, TypeError),
    (False, TypeError),
    ("3", TypeError),
    (b"3", TypeError),
    ([1], TypeError),
]

#: (value, exception) for cost.
BAD_COSTS: list[tuple[Any, type[Exception]]] = [
    (-0.01, ValueError),
    (-1, ValueError),
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    (float("-inf"), ValueError),
    (10**400, ValueError),
    (1e30, ValueError),
    (True, TypeError),
    ("0.1", TypeError),
    ([0.1], TypeError),
]

BAD_USAGE_ARGS = [
    pytest.param(field, value, error, id=f"{field}={value!r:.12}")
    for field in COUNT_FIELDS
    for value, error in BAD_COUNTS
] + [pytest.param("cost", value, error, id=f"cost={value!r:.12}") for value, error in BAD_COSTS]

#: Good values given alongside the bad one: they must not be recorded either.
GOOD = {
    "requests": 1,
    "input_tokens": 5,
    "output_tokens": 6,
    "cache_read_tokens": 7,
    "cache_write_tokens": 8,
    "cost": 0.01,
}


def with_bad(field: str, value: Any) -> dict[str, Any]:
    return {**GOOD, field: value}


@pytest.fixture
def limiter(make_limiter) -> uw.RateLimiter:
    return make_limiter(requests_per_minute=100, total_tokens_per_minute=10**6, cost_per_day=100.0)


def assert_nothing_recorded(limiter: uw.RateLimiter, key: str = "default") -> None:
    assert limiter.usage(key) == uw.Usage()
    assert not is_queued(limiter, key)


# --- the usage keywords of every limiter method -------------------------------------


@pytest.mark.parametrize(("field", "value", "error"), BAD_USAGE_ARGS)
@pytest.mark.parametrize("method", ["try_acquire", "check", "acquire_blocking"])
def test_limiter_sync_methods(limiter, method, field, value, error) -> None:
    with pytest.raises(error, match=field):
        getattr(limiter, method)("k", **with_bad(field, value))
    assert_nothing_recorded(limiter, "k")


@pytest.mark.parametrize(("field", "value", "error"), BAD_USAGE_ARGS)
async def test_limiter_acquire(limiter, field, value, error) -> None:
    with pytest.raises(error, match=field):
        await limiter.acquire("k", **with_bad(field, value))
    assert_nothing_recorded(limiter, "k")


@pytest.mark.parametrize(("field", "value", "error"), BAD_USAGE_ARGS)
def test_usage_constructor(field, value, error) -> None:
    with pytest.raises(error, match=field):
        uw.Usage(**with_bad(field, value))


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [p for p in BAD_USAGE_ARGS if p.values[0] != "requests"],
)
def test_settle(limiter, field, value, error) -> None:
    r = limiter.try_acquire("k", input_tokens=10).reservation
    with pytest.raises(error, match=field):
        r.settle(**{k: v for k, v in with_bad(field, value).items() if k != "requests"})
    assert not r.settled and not r.cancelled
    assert limiter.usage("k") == uw.Usage(requests=1, input_tokens=10)


def test_settle_takes_no_requests(limiter) -> None:
    r = limiter.try_acquire(input_tokens=10).reservation
    with pytest.raises(TypeError, match="requests"):
        r.settle(requests=2)  # type: ignore[call-arg]
    assert limiter.usage() == uw.Usage(requests=1, input_tokens=10)


def test_usage_fields_are_keyword_only_on_the_limiter(limiter) -> None:
    with pytest.raises(TypeError):
        limiter.try_acquire("k", 1)  # type: ignore[misc]
    assert_nothing_recorded(limiter, "k")


def test_unknown_keyword_is_a_type_error(limiter) -> None:
    with pytest.raises(TypeError, match="tokens"):
        limiter.try_acquire(tokens=5)  # type: ignore[call-arg]
    assert_nothing_recorded(limiter)


# --- seconds: timeouts, windows, times ----------------------------------------------

BAD_TIMEOUTS = [
    (-1, ValueError),
    (-0.001, ValueError),
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    ("1", TypeError),
    (True, TypeError),
    ([1], TypeError),
]


@pytest.mark.parametrize(("value", "error"), BAD_TIMEOUTS)
def test_acquire_blocking_timeout(limiter, value, error) -> None:
    with pytest.raises(error, match="timeout"):
        limiter.acquire_blocking("k", input_tokens=5, timeout=value)
    assert_nothing_recorded(limiter, "k")


@pytest.mark.parametrize(("value", "error"), BAD_TIMEOUTS)
async def test_acquire_timeout(limiter, value, error) -> None:
    with pytest.raises(error, match="timeout"):
        await limiter.acquire("k", input_tokens=5, timeout=value)
    assert_nothing_recorded(limiter, "k")


BAD_WINDOWS = [
    (0, ValueError),
    (-1, ValueError),
    (1e-12, ValueError),  # rounds to zero nanoseconds
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    ("60", TypeError),
    (True, TypeError),
]


@pytest.mark.parametrize(("value", "error"), BAD_WINDOWS)
def test_history_window(value, error) -> None:
    with pytest.raises(error, match="window_seconds"):
        uw.UsageHistory(value)


@pytest.mark.parametrize(("value", "error"), BAD_WINDOWS)
def test_history_usage_in_window(clock, value, error) -> None:
    history = uw.UsageHistory(60, clock=clock)
    history.add(uw.Usage(requests=1))
    with pytest.raises(error, match="window_seconds"):
        history.usage_in_window(value)
    assert history.usage_in_window() == uw.Usage(requests=1)


@pytest.mark.parametrize(("value", "error"), BAD_WINDOWS)
def test_limiter_usage_window(limiter, value, error) -> None:
    limiter.try_acquire()
    with pytest.raises(error, match="window_seconds"):
        limiter.usage(window_seconds=value)
    assert limiter.usage().requests == 1


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (101, ValueError),
        ("1", TypeError),
        (True, TypeError),
    ],
)
def test_history_add_at(value, error) -> None:
    history = uw.UsageHistory(60, clock=uw.ManualClock(100))
    with pytest.raises(error, match=r"\bat\b"):
        history.add(uw.Usage(requests=1), at=value)
    assert history.usage_in_window() == uw.Usage()
    assert len(history) == 0


@pytest.mark.parametrize("value", [{"requests": 1}, None, 1, "usage"])
def test_history_add_needs_a_usage(value) -> None:
    history = uw.UsageHistory(60, clock=uw.ManualClock())
    with pytest.raises(TypeError, match="usage"):
        history.add(value)
    assert len(history) == 0


# --- constructors -------------------------------------------------------------------

CONSTRUCTOR_CASES: list[tuple[Callable[[], Any], type[Exception], str]] = [
    (lambda: uw.RateLimiter({"requests_per_minute": 1}), TypeError, "limits"),
    (lambda: uw.RateLimiter(None), TypeError, "limits"),
    (
        lambda: uw.RateLimiter(uw.RateLimits(), per_key=[("a", uw.RateLimits())]),
        TypeError,
        "per_key",
    ),
    (
        lambda: uw.RateLimiter(uw.RateLimits(), per_key={"a": {"requests_per_minute": 1}}),
        TypeError,
        "per_key",
    ),
    (lambda: uw.RateLimiter(uw.RateLimits(), per_key={1: uw.RateLimits()}), TypeError, "per_key"),
    (lambda: uw.RateLimiter(uw.RateLimits(), clock=5), TypeError, "clock"),
    (lambda: uw.RateLimiter(uw.RateLimits(), clock="manual"), TypeError, "clock"),
    (lambda: uw.UsageHistory(60, clock=object()), TypeError, "clock"),
    (lambda: uw.ManualClock(-1), ValueError, "start"),
    (lambda: uw.ManualClock("0"), TypeError, "start"),
]


@pytest.mark.parametrize(("build", "error", "name"), CONSTRUCTOR_CASES)
def test_constructors(build, error, name) -> None:
    with pytest.raises(error, match=name):
        build()


def test_limits_and_per_key_are_keyword_only() -> None:
    limits = uw.RateLimits(requests_per_minute=1)
    with pytest.raises(TypeError):
        uw.RateLimiter(limits, {"a": limits})  # type: ignore[misc]


# --- nothing half-written -----------------------------------------------------------


def test_bad_tuple_key_records_nothing_on_its_good_keys(limiter) -> None:
    with pytest.raises(TypeError, match="key"):
        limiter.try_acquire(("good", 5), input_tokens=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        limiter.try_acquire(("good", "other", "good"), input_tokens=1)
    assert_nothing_recorded(limiter, "good")
    assert_nothing_recorded(limiter, "other")


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_bad_argument_does_not_disturb_waiters(limiter, clock) -> None:
    async def scenario() -> None:
        limiter.try_acquire(requests=100)
        task = asyncio.create_task(limiter.acquire(input_tokens=1))
        for _ in range(5):
            await asyncio.sleep(0)
        with pytest.raises(ValueError, match="input_tokens"):
            limiter.try_acquire(input_tokens=-1)
        assert is_queued(limiter)
        clock.advance(60)
        r = await asyncio.wait_for(task, 10)
        assert r.at == 60.0

    asyncio.run(scenario())
