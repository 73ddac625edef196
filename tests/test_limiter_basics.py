"""uw.RateLimiter: admitting, refusing, counting and forgetting usage."""

from __future__ import annotations

import gc

import pytest
import usagewarden as uw
from conftest import MAX_COST, MAX_COUNT, SLICE_ENDS_LATER


def test_properties(clock: uw.ManualClock) -> None:
    limits = uw.RateLimits(requests_per_minute=3)
    small = uw.RateLimits(requests_per_minute=1)
    per_key = {"small": small}
    limiter = uw.RateLimiter(limits, per_key=per_key, clock=clock)
    assert limiter.limits == limits
    assert limiter.per_key == {"small": small}
    assert limiter.clock is clock
    # per_key is a copy: mutating what was passed (or returned) changes nothing.
    per_key["other"] = small
    limiter.per_key["x"] = small
    assert limiter.per_key == {"small": small}


def test_system_clock_by_default() -> None:
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_day=2))
    assert limiter.clock is None
    assert limiter.try_acquire()
    assert limiter.try_acquire()
    decision = limiter.try_acquire()
    assert not decision
    assert 86_399 < decision.retry_after <= 86_400


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_admits_until_the_limit_then_refuses(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_minute=3)
    for _ in range(3):
        decision = limiter.try_acquire()
        assert decision.allowed is True
        assert bool(decision) is True
        assert decision.retry_after == 0.0
        assert decision.reservation is not None
        clock.advance(10)
    decision = limiter.try_acquire()
    assert decision.allowed is False
    assert bool(decision) is False
    assert decision.reservation is None
    assert decision.retry_after == pytest.approx(30.0, abs=1e-9)
    assert decision.limit.name == "requests_per_minute"
    assert limiter.usage().requests == 3


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_refused_exactly_until_the_oldest_entry_leaves(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_minute=1)
    assert limiter.try_acquire()
    clock.set(59.999_999_999)
    assert not limiter.try_acquire()
    clock.set(60)
    assert limiter.try_acquire()


def test_decision_key_and_reservation(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=3)
    assert limiter.try_acquire().key == "default"
    decision = limiter.try_acquire("alice", input_tokens=5)
    assert decision.key == "alice"
    reservation = decision.reservation
    assert reservation is decision.reservation  # the same object every time
    assert reservation.key == "alice"
    assert reservation.usage == uw.Usage(requests=1, input_tokens=5)
    assert limiter.try_acquire(("a", "b")).key == ("a", "b")


def test_requests_defaults_to_one_and_may_be_zero_or_more(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=10)
    limiter.try_acquire()
    limiter.try_acquire(requests=3)
    limiter.try_acquire(requests=0, input_tokens=4)
    assert limiter.usage() == uw.Usage(requests=4, input_tokens=4)


def test_every_field_is_recorded(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=10)
    limiter.try_acquire(
        requests=2,
        input_tokens=3,
        output_tokens=4,
        cache_read_tokens=5,
        cache_write_tokens=6,
        cost=0.07,
    )
    assert limiter.usage() == uw.Usage(2, 3, 4, 5, 6, 0.07)


def test_keys_are_independent(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=1)
    assert limiter.try_acquire("a")
    assert not limiter.try_acquire("a")
    assert limiter.try_acquire("b")
    assert limiter.try_acquire()  # "default" is a key like any other
    assert limiter.usage("a").requests == 1
    assert limiter.usage("b").requests == 1
    assert limiter.usage("never-used") == uw.Usage()


@pytest.mark.parametrize(
    ("limits", "first", "over"),
    [
        ({"input_tokens_per_minute": 100}, {"input_tokens": 60}, {"input_tokens": 41}),
        ({"output_tokens_per_minute": 100}, {"output_tokens": 60}, {"output_tokens": 41}),
        (
            {"total_tokens_per_minute": 100},
            {"input_tokens": 30, "output_tokens": 30},
            {"input_tokens": 20, "output_tokens": 21},
        ),
        ({"cost_per_minute": 1.0}, {"cost": 0.6}, {"cost": 0.400_000_001}),
        ({"requests_per_minute": 5}, {"requests": 3}, {"requests": 3}),
    ],
)
def test_each_dimension_is_limited(make_limiter, limits, first, over) -> None:
    limiter = make_limiter(**limits)
    assert limiter.try_acquire(**first)
    assert not limiter.check(**over)
    fits = {k: (v - 1 if isinstance(v, int) else v - 1e-9) for k, v in over.items()}
    if "requests" not in fits:
        fits["requests"] = 1
    assert limiter.check(**fits)


def test_input_limit_does_not_limit_output(make_limiter) -> None:
    limiter = make_limiter(input_tokens_per_minute=10)
    assert limiter.try_acquire(output_tokens=1_000_000, cache_read_tokens=10**9)
    assert limiter.try_acquire(input_tokens=10)
    assert not limiter.try_acquire(input_tokens=1)


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_all_limits_apply_at_once(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_second=2, requests_per_minute=3)
    assert limiter.try_acquire()
    assert limiter.try_acquire()
    assert not limiter.try_acquire()  # per second
    clock.advance(1)
    assert limiter.try_acquire()
    clock.advance(1)
    decision = limiter.try_acquire()  # per minute
    assert not decision
    assert decision.limit.name == "requests_per_minute"
    assert limiter.usage().requests == 3


def test_check_decides_like_try_acquire_and_records_nothing(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_minute=3, total_tokens_per_minute=100)
    for step, tokens in enumerate([40, 40, 30, 20, 20, 90]):
        before = limiter.usage()
        checked = limiter.check(input_tokens=tokens)
        assert limiter.usage() == before
        assert checked.reservation is None
        decided = limiter.try_acquire(input_tokens=tokens)
        assert (checked.allowed, checked.retry_after, checked.limit) == (
            decided.allowed,
            decided.retry_after,
            decided.limit,
        ), step
        assert checked.remaining == decided.remaining or checked.allowed
        clock.advance(7)


def test_request_larger_than_a_limit_never_fits(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=10, total_tokens_per_minute=100)
    decision = limiter.try_acquire(input_tokens=60, output_tokens=41)
    assert not decision
    assert decision.retry_after is None
    assert decision.limit.name == "total_tokens_per_minute"
    assert decision.reservation is None
    assert limiter.usage() == uw.Usage()
    assert limiter.check(requests=11).retry_after is None


def test_decision_limit_when_allowed_is_the_one_with_least_share_left(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=10, total_tokens_per_minute=100)
    # 9/10 requests vs 50/100 tokens left: tokens bind.
    assert limiter.check(input_tokens=50).limit.name == "total_tokens_per_minute"
    # 9/10 requests vs 99/100 tokens left: requests bind.
    assert limiter.check(input_tokens=1).limit.name == "requests_per_minute"


def test_decision_remaining_is_what_is_left_after_the_request(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=10, total_tokens_per_minute=100, cost_per_minute=1.0)
    decision = limiter.try_acquire(input_tokens=30, output_tokens=10, cost=0.25)
    assert decision.remaining == uw.Usage(
        requests=9,
        input_tokens=60,
        output_tokens=60,
        cache_read_tokens=MAX_COUNT,
        cache_write_tokens=MAX_COUNT,
        cost=0.75,
    )
    assert limiter.remaining() == decision.remaining


def test_remaining_reads_max_for_fields_without_a_limit(make_limiter) -> None:
    limiter = make_limiter(input_tokens_per_minute=100)
    # Compared as dicts: MAX_COST is not exactly representable as a float.
    assert limiter.remaining().to_dict() == {
        "requests": MAX_COUNT,
        "input_tokens": 100,
        "output_tokens": MAX_COUNT,
        "cache_read_tokens": MAX_COUNT,
        "cache_write_tokens": MAX_COUNT,
        "cost": MAX_COST,
    }


def test_total_tokens_limit_caps_input_and_output(make_limiter) -> None:
    limiter = make_limiter(total_tokens_per_minute=100, output_tokens_per_minute=30)
    limiter.try_acquire(input_tokens=20, output_tokens=10)
    remaining = limiter.remaining()
    assert remaining.input_tokens == 70
    assert remaining.output_tokens == 20  # the tighter output limit
    assert remaining.requests == MAX_COUNT


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_remaining_is_the_minimum_over_windows(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_second=5, requests_per_minute=7)
    limiter.try_acquire(requests=4)
    assert limiter.remaining().requests == 1
    clock.advance(1)
    assert limiter.remaining().requests == 3


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_usage_defaults_to_the_longest_window(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_second=100, requests_per_hour=1000)
    limiter.try_acquire(requests=5)
    clock.advance(30)
    limiter.try_acquire(requests=2)
    clock.advance(0.5)
    assert limiter.usage().requests == 7
    assert limiter.usage(window_seconds=1).requests == 2
    assert limiter.usage(window_seconds=30).requests == 2
    assert limiter.usage(window_seconds=30.6).requests == 7
    assert limiter.usage("default", 3600).requests == 7
    with pytest.raises(ValueError, match="window_seconds"):
        limiter.usage(window_seconds=3601)


def test_usage_takes_a_single_key(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=3)
    with pytest.raises(ValueError, match="key"):
        limiter.usage(("a", "b"))


def test_no_limits_admits_everything(clock) -> None:
    limiter = uw.RateLimiter(uw.RateLimits(), clock=clock)
    decision = limiter.try_acquire(requests=10**6, input_tokens=10**12)
    assert decision
    assert decision.limit is None
    assert decision.remaining.requests == MAX_COUNT


def test_reset_one_key(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=1)
    limiter.try_acquire("a")
    limiter.try_acquire("b")
    limiter.reset("a")
    assert limiter.usage("a") == uw.Usage()
    assert limiter.usage("b").requests == 1
    assert limiter.try_acquire("a")
    assert not limiter.try_acquire("b")


def test_reset_a_tuple_of_keys_and_all_keys(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=1)
    for key in "abc":
        limiter.try_acquire(key)
    limiter.reset(("a", "b"))
    assert [limiter.usage(k).requests for k in "abc"] == [0, 0, 1]
    limiter.reset()
    assert [limiter.usage(k).requests for k in "abc"] == [0, 0, 0]
    limiter.reset("never-used")  # no error


def test_reservations_from_before_a_reset_no_longer_count(make_limiter) -> None:
    limiter = make_limiter(total_tokens_per_minute=100)
    old = limiter.try_acquire(input_tokens=50).reservation
    limiter.reset()
    limiter.try_acquire(input_tokens=10)
    assert old.cancel() is True
    assert limiter.usage().input_tokens == 10  # not 10 - 50, not 0
    other_old = limiter.try_acquire(input_tokens=5).reservation
    limiter.reset()
    other_old.settle(input_tokens=80)
    assert limiter.usage() == uw.Usage()


# len() and reclaim() count process memory; Redis expires idle keys by itself.
@pytest.mark.in_process("len() and reclaim() count process memory")
def test_len_counts_keys_with_state_and_reclaim_drops_idle_ones(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_minute=5)
    assert len(limiter) == 0
    for key in ("a", "b", "c"):
        limiter.try_acquire(key)
    gc.collect()
    assert len(limiter) == 3
    assert limiter.reclaim() == 0  # still counted in their windows
    assert len(limiter) == 3
    clock.advance(60)
    assert limiter.reclaim() == 3
    assert len(limiter) == 0
    assert limiter.reclaim() == 0


# len() counts process memory; Redis expires idle keys by itself.
@pytest.mark.in_process("len() counts process memory")
def test_idle_keys_are_reclaimed_over_time_without_calling_reclaim(make_limiter, clock) -> None:
    limiter = make_limiter(requests_per_minute=5)
    for i in range(500):
        limiter.try_acquire(f"old-{i}")
    assert len(limiter) == 500
    clock.advance(60)
    # Ongoing traffic on other keys sweeps idle ones as it goes: a shard is
    # swept once it has seen four times as many operations as it holds keys.
    for round_ in range(40):
        for i in range(1000):
            limiter.try_acquire(f"new-{i}", requests=0 if round_ else 1)
    assert len(limiter) == 1000


def test_repr_mentions_the_limits(make_limiter) -> None:
    limiter = make_limiter(requests_per_minute=3)
    assert "requests_per_minute=3" in repr(limiter)
    decision = limiter.try_acquire()
    assert "allowed=True" in repr(decision)
