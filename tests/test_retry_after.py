"""Decision.retry_after: exactly how long until a refused request would fit."""

from __future__ import annotations

import pytest
import usagewarden as uw
from conftest import SLICE_ENDS_LATER


def exactly(seconds: float) -> object:
    return pytest.approx(seconds, abs=1e-9)


def at(limiter: uw.RateLimiter, clock: uw.ManualClock, t: float, **request: object) -> uw.Decision:
    clock.set(t)
    decision = limiter.try_acquire(**request)  # type: ignore[arg-type]
    assert decision, f"setup request at t={t} was refused"
    return decision


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_requests_per_minute_by_hand(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_minute=2)
    at(limiter, clock, 0)
    at(limiter, clock, 10)
    clock.set(20)
    # Entry at t=0 leaves at t=60.
    assert limiter.check().retry_after == exactly(40)
    # Two more need both entries gone: t=10 leaves at t=70.
    assert limiter.check(requests=2).retry_after == exactly(50)
    clock.set(59.25)
    assert limiter.check().retry_after == exactly(0.75)
    clock.set(60)
    assert limiter.check().retry_after == 0.0


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_tokens_wait_until_enough_have_left(make_limiter, clock) -> None:
    limiter = make_limiter(total_tokens_per_minute=100)
    at(limiter, clock, 0, input_tokens=60)
    at(limiter, clock, 10, output_tokens=30)
    at(limiter, clock, 20, input_tokens=5, output_tokens=5)
    clock.set(30)
    # 100 used. 1 token needs 1 gone: t=0 (60 tokens) leaves at 60.
    assert limiter.check(input_tokens=1).retry_after == exactly(30)
    # 60 tokens: the t=0 entry frees exactly 60.
    assert limiter.check(input_tokens=60).retry_after == exactly(30)
    # 61 tokens: t=0 and t=10 must both leave: t=70.
    assert limiter.check(input_tokens=31, output_tokens=30).retry_after == exactly(40)
    # 95 tokens: needs 95 gone: 60 + 30 + 10 -> the t=20 entry: t=80.
    assert limiter.check(output_tokens=95).retry_after == exactly(50)
    # 101 tokens can never fit.
    assert limiter.check(output_tokens=101).retry_after is None


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_cost_wait(make_limiter, clock) -> None:
    limiter = make_limiter(cost_per_hour=1.0)
    at(limiter, clock, 0, cost=0.6)
    at(limiter, clock, 100, cost=0.3)
    clock.set(200)
    assert limiter.check(cost=0.1).retry_after == 0.0
    assert limiter.check(cost=0.100_000_001).retry_after == exactly(3400)
    assert limiter.check(cost=0.8).retry_after == exactly(3500)


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_the_limit_that_frees_last_is_reported(make_limiter, clock) -> None:
    limiter = make_limiter(
        requests_per_second=1, requests_per_minute=2, total_tokens_per_minute=1000
    )
    at(limiter, clock, 0)
    at(limiter, clock, 1)
    clock.set(1.5)
    decision = limiter.check()
    # per second: t=1 leaves at 2 (0.5 s); per minute: t=0 leaves at 60 (58.5 s).
    assert decision.retry_after == exactly(58.5)
    assert decision.limit.name == "requests_per_minute"
    clock.set(60.25)
    decision = limiter.check()
    assert decision.retry_after == 0.0  # t=0 gone; t=1 gone from the 1-second window
    at(limiter, clock, 60.5)
    decision = limiter.check()
    # per second: t=60.5 leaves at 61.5 (1 s); per minute: t=1 leaves at 61 (0.5 s).
    assert decision.retry_after == exactly(1.0)
    assert decision.limit.name == "requests_per_second"


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_the_longest_wait_over_dimensions(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_minute=5, input_tokens_per_minute=100)
    at(limiter, clock, 0, input_tokens=90)
    at(limiter, clock, 20, requests=4)
    clock.set(30)
    decision = limiter.check(input_tokens=20)
    # tokens: t=0 leaves at 60 (30 s); requests: 5 used + 1 > 5 -> t=0 leaves at 60 too.
    assert decision.retry_after == exactly(30)
    decision = limiter.check(requests=2, input_tokens=5)
    # requests: 6 more than fits... 5 + 2 - 5 = 2 must go: t=0 (1) then t=20 (4): t=80.
    assert decision.retry_after == exactly(50)
    assert decision.limit.name == "requests_per_minute"


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_merged_entries_wait_for_the_latest(make_limiter, clock) -> None:
    # One minute window: entries within 60 ms merge and leave with the latest.
    limiter = make_limiter(requests_per_minute=2)
    at(limiter, clock, 0)
    at(limiter, clock, 0.03)
    clock.set(10)
    assert limiter.check().retry_after == exactly(50.03)
    clock.set(60)
    assert not limiter.check()
    clock.set(60.03)
    assert limiter.check()


def test_waiting_exactly_retry_after_is_enough() -> None:
    limits = uw.RateLimits(requests_per_second=3, total_tokens_per_minute=500)
    schedule = [(0.0, 100), (0.2, 150), (0.7, 50), (1.1, 150), (1.3, 40)]

    def replay() -> tuple[uw.RateLimiter, uw.ManualClock]:
        clock = uw.ManualClock()
        limiter = uw.RateLimiter(limits, clock=clock)
        for t, tokens in schedule:
            clock.set(t)
            assert limiter.try_acquire(input_tokens=tokens)
        return limiter, clock

    limiter, clock = replay()
    refused = 0
    for wanted in (1, 20, 60, 200, 350, 490):
        decision = limiter.check(input_tokens=wanted)
        if decision:
            continue
        refused += 1
        wait = decision.retry_after
        assert wait is not None and wait > 0
        # One nanosecond short of retry_after it still does not fit; at retry_after it does.
        probe, probe_clock = replay()
        probe_clock.set(clock.now() + wait - 1e-9)
        assert not probe.check(input_tokens=wanted), wanted
        probe_clock.set(clock.now() + wait)
        assert probe.check(input_tokens=wanted), wanted
    assert refused >= 4


def test_multi_key_waits_for_the_slowest_key(clock) -> None:
    limiter = uw.RateLimiter(
        uw.RateLimits(requests_per_minute=1),
        per_key={"fast": uw.RateLimits(requests_per_second=1)},
        clock=clock,
    )
    limiter.try_acquire("slow")
    limiter.try_acquire("fast")
    clock.set(0.5)
    decision = limiter.check(("fast", "slow"))
    assert decision.retry_after == exactly(59.5)
    assert decision.limit.name == "requests_per_minute"
    decision = limiter.check(("fast", "other"))
    assert decision.retry_after == exactly(0.5)
    assert decision.limit.name == "requests_per_second"


def test_never_fits_on_any_key_of_a_tuple(clock) -> None:
    limiter = uw.RateLimiter(
        uw.RateLimits(requests_per_minute=10),
        per_key={"tiny": uw.RateLimits(requests_per_minute=1)},
        clock=clock,
    )
    decision = limiter.check(("big", "tiny"), requests=2)
    assert decision.retry_after is None
    assert decision.limit == uw.RateLimits(requests_per_minute=1).limits[0]


# The exact replay behind queued waiters needs the whole queue; a Redis limiter's
# script sees the queue's usage together, so it reports an estimate (what all of it
# and the request need together).
@pytest.mark.in_process("Redis estimates from the queue's usage together")
async def test_retry_after_behind_a_queued_waiter_accounts_for_it(make_limiter, clock) -> None:
    # Regression (minor): behind a queued waiter, retry_after was the head's wait, not
    # when this request would fit. Here the head (80 tokens) is admitted at
    # t=60 and then 30 more tokens only fit once it leaves, at t=120.
    import asyncio

    limiter = make_limiter(total_tokens_per_minute=100)
    limiter.try_acquire(input_tokens=90)
    head = asyncio.create_task(limiter.acquire(input_tokens=80))
    for _ in range(5):
        await asyncio.sleep(0)
    small = limiter.check(input_tokens=5)  # fits right after the head: t=60
    assert small.retry_after == exactly(60)
    decision = limiter.check(input_tokens=30)
    clock.set(60)
    await asyncio.wait_for(head, 10)
    assert not limiter.check(input_tokens=30)  # so 60 s was not enough
    assert decision.retry_after == exactly(120)
