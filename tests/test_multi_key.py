"""Tuple keys (atomic on every key or none) and per-key limits."""

from __future__ import annotations

import pytest
import usagewarden as uw


@pytest.fixture
def limiter(clock) -> uw.RateLimiter:
    return uw.RateLimiter(
        uw.RateLimits(requests_per_minute=10, total_tokens_per_minute=1000),
        per_key={
            "org": uw.RateLimits(total_tokens_per_minute=150),
            "tiny": uw.RateLimits(requests_per_minute=1),
        },
        clock=clock,
    )


def test_per_key_limits_replace_the_defaults(limiter) -> None:
    # "org" has only a token limit: requests are unlimited there.
    for _ in range(20):
        assert limiter.try_acquire("org", input_tokens=1)
    assert not limiter.try_acquire("org", input_tokens=131)
    # "tiny" has only a request limit of 1.
    assert limiter.try_acquire("tiny", input_tokens=10_000)
    assert not limiter.try_acquire("tiny")
    # Other keys get the defaults.
    for _ in range(10):
        assert limiter.try_acquire("user")
    assert not limiter.try_acquire("user")


def test_per_key_remaining(limiter) -> None:
    assert limiter.remaining("org").input_tokens == 150
    assert limiter.remaining("org").requests == 2**63 - 1
    assert limiter.remaining("user").requests == 10


def test_a_tuple_is_admitted_on_every_key(limiter) -> None:
    decision = limiter.try_acquire(("user", "org"), input_tokens=100)
    assert decision
    assert limiter.usage("user") == limiter.usage("org") == uw.Usage(requests=1, input_tokens=100)
    assert decision.reservation.key == ("user", "org")


def test_refusal_on_one_key_records_nothing_on_the_other(limiter) -> None:
    limiter.try_acquire("org", input_tokens=100)
    before_user = limiter.usage("user")
    decision = limiter.try_acquire(("user", "org"), input_tokens=60)
    assert not decision
    assert decision.reservation is None
    assert limiter.usage("user") == before_user == uw.Usage()
    assert limiter.usage("org").input_tokens == 100
    # The key order in the tuple does not matter.
    assert not limiter.try_acquire(("org", "user"), input_tokens=60)
    assert limiter.usage("user") == uw.Usage()


def test_never_fitting_key_records_nothing_anywhere(limiter) -> None:
    decision = limiter.try_acquire(("user", "tiny", "org"), requests=2)
    assert not decision and decision.retry_after is None
    assert [limiter.usage(k) for k in ("user", "tiny", "org")] == [uw.Usage()] * 3


def test_remaining_of_a_tuple_is_the_minimum(limiter) -> None:
    limiter.try_acquire("user", input_tokens=900)
    remaining = limiter.remaining(("user", "org"))
    assert remaining.input_tokens == 100  # user: 1000 - 900 < org: 150
    assert remaining.requests == 9  # org has no request limit


def test_decision_remaining_of_a_tuple(limiter) -> None:
    decision = limiter.try_acquire(("user", "org"), input_tokens=100)
    assert decision.remaining.input_tokens == 50
    assert decision.remaining.requests == 9


def test_a_one_element_tuple_is_that_key(limiter) -> None:
    assert limiter.try_acquire(("tiny",))
    assert not limiter.try_acquire("tiny")
    assert limiter.usage(("tiny",)).requests == 1


def test_many_keys(limiter) -> None:
    keys = tuple(f"k{i}" for i in range(40))
    assert limiter.try_acquire(keys, input_tokens=5)
    for key in keys:
        assert limiter.usage(key) == uw.Usage(requests=1, input_tokens=5)
    limiter.try_acquire("k17", requests=9)
    assert not limiter.try_acquire(keys)
    assert all(limiter.usage(k).requests == 1 for k in keys if k != "k17")


@pytest.mark.parametrize("key", [("a", "a"), ("a", "b", "a")])
def test_duplicate_keys_are_a_value_error(limiter, key) -> None:
    with pytest.raises(ValueError, match="key"):
        limiter.try_acquire(key)
    with pytest.raises(ValueError, match="key"):
        limiter.check(key)
    assert limiter.usage("a") == uw.Usage()


def test_empty_tuple_is_a_value_error(limiter) -> None:
    with pytest.raises(ValueError, match="key"):
        limiter.try_acquire(())


@pytest.mark.parametrize("key", [1, 1.5, b"a", ["a"], {"a"}, ("a", 1), ("a", None), object()])
def test_other_key_types_are_a_type_error(limiter, key) -> None:
    with pytest.raises(TypeError, match="key"):
        limiter.try_acquire(key)
    with pytest.raises(TypeError, match="key"):
        limiter.check(key)
    with pytest.raises(TypeError, match="key"):
        limiter.remaining(key)
    assert limiter.usage("a") == uw.Usage()


def test_str_subclass_keys_are_str(limiter) -> None:
    class Name(str):
        pass

    assert limiter.try_acquire(Name("tiny"))
    assert not limiter.try_acquire("tiny")


def test_waiters_on_tuples_are_atomic_too(limiter, clock) -> None:
    limiter.try_acquire("tiny")
    with pytest.raises(uw.RateLimitExceeded) as info:
        limiter.acquire_blocking(("user", "tiny"), timeout=0)
    assert info.value.retry_after == pytest.approx(60.0)
    assert limiter.usage("user") == uw.Usage()
