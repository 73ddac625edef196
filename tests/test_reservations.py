"""uw.Reservation: reserve on an estimate, settle on the actual usage, or cancel."""

from __future__ import annotations

import pytest
import usagewarden as uw
from conftest import SLICE_ENDS_LATER


@pytest.fixture
def limiter(make_limiter) -> uw.RateLimiter:
    return make_limiter(requests_per_minute=10, total_tokens_per_minute=100, cost_per_minute=1.0)


def reserve(limiter: uw.RateLimiter, key: object = "default", **request: object) -> uw.Reservation:
    decision = limiter.try_acquire(key, **request)  # type: ignore[arg-type]
    assert decision, "the reservation under test was refused"
    return decision.reservation


def test_a_fresh_reservation(limiter, clock) -> None:
    clock.set(12.5)
    r = reserve(limiter, "k", input_tokens=40, output_tokens=10, cost=0.2)
    assert r.usage == uw.Usage(requests=1, input_tokens=40, output_tokens=10, cost=0.2)
    assert r.at == 12.5
    assert r.key == "k"
    assert (r.settled, r.cancelled) == (False, False)
    assert "open" in repr(r)


def test_settle_refunds_the_difference(limiter) -> None:
    r = reserve(limiter, input_tokens=50, output_tokens=30, cost=0.5)
    counted = r.settle(input_tokens=45, output_tokens=5, cost=0.125)
    assert counted == uw.Usage(requests=1, input_tokens=45, output_tokens=5, cost=0.125)
    assert r.usage == counted
    assert r.settled and not r.cancelled
    assert limiter.usage() == counted
    assert limiter.remaining().input_tokens == 50
    assert limiter.remaining().cost == 0.875


def test_settle_charges_extra(limiter) -> None:
    r = reserve(limiter, input_tokens=10)
    r.settle(input_tokens=10, output_tokens=70, cache_read_tokens=500, cache_write_tokens=7)
    assert limiter.usage() == uw.Usage(
        requests=1,
        input_tokens=10,
        output_tokens=70,
        cache_read_tokens=500,
        cache_write_tokens=7,
    )
    assert limiter.remaining().output_tokens == 20


def test_settle_fields_left_none_keep_the_estimate(limiter) -> None:
    r = reserve(limiter, input_tokens=20, output_tokens=30, cache_read_tokens=4, cost=0.3)
    counted = r.settle(output_tokens=12)
    assert counted == uw.Usage(
        requests=1,
        input_tokens=20,
        output_tokens=12,
        cache_read_tokens=4,
        cost=0.3,
    )
    assert limiter.usage() == counted


def test_settle_to_zero_keeps_the_request(limiter) -> None:
    r = reserve(limiter, requests=2, input_tokens=20, output_tokens=30, cost=0.3)
    counted = r.settle(input_tokens=0, output_tokens=0, cost=0)
    assert counted == uw.Usage(requests=2)
    assert limiter.usage() == uw.Usage(requests=2)


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_settled_usage_leaves_with_the_original_entry(limiter, clock) -> None:
    clock.set(0)
    r = reserve(limiter, input_tokens=10)
    clock.set(30)
    r.settle(input_tokens=90)  # an extra charge, recorded at t=0
    assert limiter.usage().input_tokens == 90
    assert not limiter.check(input_tokens=11)
    clock.set(59.999)
    assert limiter.usage().input_tokens == 90
    clock.set(60)
    assert limiter.usage() == uw.Usage()


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_refund_after_the_entry_left_the_window_changes_nothing(limiter, clock) -> None:
    r = reserve(limiter, input_tokens=60)
    clock.set(60)
    fresh = reserve(limiter, input_tokens=30)
    r.settle(input_tokens=0)
    assert limiter.usage() == fresh.usage


def test_extra_charge_after_the_entry_left_the_window_is_not_counted(limiter, clock) -> None:
    r = reserve(limiter, input_tokens=10)
    clock.set(61)
    r.settle(input_tokens=500)
    assert limiter.usage() == uw.Usage()
    assert limiter.try_acquire(input_tokens=100)


def test_settle_in_a_merged_entry_only_changes_its_own_share(limiter, clock) -> None:
    a = reserve(limiter, input_tokens=30)
    clock.set(0.01)  # within the 60 ms quantum: merged with a
    b = reserve(limiter, input_tokens=40)
    a.settle(input_tokens=5)
    assert limiter.usage().input_tokens == 45
    b.cancel()
    assert limiter.usage() == uw.Usage(requests=1, input_tokens=5)


@pytest.mark.exact(SLICE_ENDS_LATER)
def test_a_zero_estimate_can_be_settled_at_its_original_time(limiter, clock) -> None:
    r = reserve(limiter, requests=0)
    assert limiter.usage() == uw.Usage()
    clock.set(20)
    r.settle(input_tokens=30, cost=0.1)
    assert limiter.usage() == uw.Usage(input_tokens=30, cost=0.1)
    clock.set(60)  # it belongs to t=0
    assert limiter.usage() == uw.Usage()


def test_settle_twice_is_a_value_error(limiter) -> None:
    r = reserve(limiter, input_tokens=10)
    r.settle(input_tokens=5)
    with pytest.raises(ValueError):
        r.settle(input_tokens=1)
    assert limiter.usage().input_tokens == 5
    assert r.usage.input_tokens == 5


def test_cancel_refunds_everything_once(limiter) -> None:
    keep = reserve(limiter, input_tokens=7)
    r = reserve(limiter, requests=3, input_tokens=50, output_tokens=20, cost=0.4)
    assert r.cancel() is True
    assert r.cancelled and not r.settled
    assert r.usage == uw.Usage()
    assert limiter.usage() == keep.usage
    assert r.cancel() is False
    assert limiter.usage() == keep.usage


def test_cancel_after_settle_is_a_value_error(limiter) -> None:
    r = reserve(limiter, input_tokens=10)
    r.settle(input_tokens=8)
    with pytest.raises(ValueError):
        r.cancel()
    assert limiter.usage().input_tokens == 8
    assert r.settled


def test_settle_after_cancel_is_a_value_error(limiter) -> None:
    r = reserve(limiter, input_tokens=10)
    r.cancel()
    with pytest.raises(ValueError):
        r.settle(input_tokens=8)
    assert limiter.usage() == uw.Usage()


def test_a_bad_settle_records_nothing_and_leaves_it_open(limiter) -> None:
    r = reserve(limiter, input_tokens=10)
    with pytest.raises(ValueError, match="output_tokens"):
        r.settle(input_tokens=3, output_tokens=-1)
    assert not r.settled
    assert limiter.usage().input_tokens == 10
    r.settle(input_tokens=3)
    assert limiter.usage().input_tokens == 3


def test_a_refund_makes_room_at_once(limiter) -> None:
    r = reserve(limiter, input_tokens=100)
    assert not limiter.check(input_tokens=60)
    r.settle(input_tokens=40)
    assert limiter.try_acquire(input_tokens=60)
    assert not limiter.check(input_tokens=1)


def test_multi_key_settle_and_cancel_apply_to_every_key(limiter) -> None:
    r = reserve(limiter, ("a", "b"), input_tokens=40)
    r.settle(input_tokens=10)
    assert limiter.usage("a").input_tokens == limiter.usage("b").input_tokens == 10
    r2 = reserve(limiter, ("b", "c"), output_tokens=20)
    r2.cancel()
    assert limiter.usage("b") == uw.Usage(requests=1, input_tokens=10)
    assert limiter.usage("c") == uw.Usage()


def test_sync_context_manager_cancels_on_exception(limiter) -> None:
    with pytest.raises(RuntimeError), reserve(limiter, input_tokens=50) as r:
        assert limiter.usage().input_tokens == 50
        raise RuntimeError("model call failed")
    assert r.cancelled
    assert limiter.usage() == uw.Usage()


def test_sync_context_manager_keeps_a_settled_reservation(limiter) -> None:
    with pytest.raises(RuntimeError), reserve(limiter, input_tokens=50) as r:
        r.settle(input_tokens=20)
        raise RuntimeError("after the call")
    assert r.settled and not r.cancelled
    assert limiter.usage().input_tokens == 20


def test_sync_context_manager_keeps_the_estimate_without_exception(limiter) -> None:
    with reserve(limiter, input_tokens=50) as r:
        pass
    assert not r.cancelled and not r.settled
    assert limiter.usage().input_tokens == 50


def test_context_manager_does_not_swallow_the_exception(limiter) -> None:
    r = reserve(limiter, input_tokens=1)
    assert r.__exit__(ValueError, ValueError("x"), None) is False
    assert r.cancelled


async def test_async_context_manager_cancels_on_exception(limiter) -> None:
    with pytest.raises(RuntimeError):
        async with await limiter.acquire(input_tokens=50) as r:
            assert isinstance(r, uw.Reservation)
            raise RuntimeError("model call failed")
    assert r.cancelled
    assert limiter.usage() == uw.Usage()


async def test_async_context_manager_keeps_settled_usage(limiter) -> None:
    async with await limiter.acquire(input_tokens=50) as r:
        r.settle(input_tokens=25, output_tokens=5)
    assert r.settled
    assert limiter.usage() == uw.Usage(requests=1, input_tokens=25, output_tokens=5)
    with pytest.raises(KeyError):
        async with await limiter.acquire(input_tokens=50) as r2:
            r2.settle(input_tokens=1)
            raise KeyError("late failure")
    assert limiter.usage() == uw.Usage(requests=2, input_tokens=26, output_tokens=5)


def test_settle_without_arguments_confirms_the_estimate(limiter) -> None:
    r = reserve(limiter, input_tokens=20, output_tokens=5, cost=0.1)
    assert r.settle() == r.usage == uw.Usage(requests=1, input_tokens=20, output_tokens=5, cost=0.1)
    assert r.settled
    assert limiter.usage() == r.usage
