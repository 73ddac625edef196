"""uw.RateLimits and uw.Limit: limits per dimension per window."""

from __future__ import annotations

import copy
import pickle

import pytest
import usagewarden as uw

DIMENSIONS = ("requests", "input_tokens", "output_tokens", "total_tokens", "cost")
UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
ALL_NAMES = [f"{d}_per_{u}" for d in DIMENSIONS for u in UNITS]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_dimension_and_unit_is_accepted(name: str) -> None:
    dimension, unit = name.split("_per_")
    amount = 2.5 if dimension == "cost" else 7
    limits = uw.RateLimits(**{name: amount})
    [limit] = limits.limits
    assert isinstance(limit, uw.Limit)
    assert limit.name == name
    assert limit.dimension == dimension
    assert limit.unit == unit
    assert limit.window == UNITS[unit]
    assert limit.amount == amount
    assert limits.to_dict() == {name: amount}


def test_several_limits_shortest_window_first() -> None:
    limits = uw.RateLimits(
        requests_per_day=10_000,
        total_tokens_per_minute=90_000,
        requests_per_minute=500,
        cost_per_hour=2.0,
        input_tokens_per_second=100,
    )
    windows = [limit.window for limit in limits.limits]
    assert windows == sorted(windows)
    assert {limit.name for limit in limits.limits} == {
        "requests_per_day",
        "total_tokens_per_minute",
        "requests_per_minute",
        "cost_per_hour",
        "input_tokens_per_second",
    }
    assert limits.to_dict() == {
        "requests_per_day": 10_000,
        "total_tokens_per_minute": 90_000,
        "requests_per_minute": 500,
        "cost_per_hour": 2.0,
        "input_tokens_per_second": 100,
    }


def test_count_amounts_are_ints_and_cost_is_usd() -> None:
    limits = uw.RateLimits(requests_per_minute=3, cost_per_day=1.5)
    amounts = {limit.name: limit.amount for limit in limits.limits}
    assert amounts == {"requests_per_minute": 3, "cost_per_day": 1.5}
    assert type(amounts["requests_per_minute"]) is int
    assert type(amounts["cost_per_day"]) is float
    # A whole-dollar cost limit may be given as an int.
    assert uw.RateLimits(cost_per_day=2).to_dict() == {"cost_per_day": 2.0}


def test_to_dict_rebuilds_an_equal_value() -> None:
    limits = uw.RateLimits(requests_per_minute=3, total_tokens_per_hour=1000, cost_per_day=0.75)
    assert uw.RateLimits(**limits.to_dict()) == limits


def test_equality() -> None:
    a = uw.RateLimits(requests_per_minute=3, total_tokens_per_minute=10)
    b = uw.RateLimits(total_tokens_per_minute=10, requests_per_minute=3)
    c = uw.RateLimits(requests_per_minute=4, total_tokens_per_minute=10)
    assert a == b
    assert a != c
    assert uw.RateLimits() == uw.RateLimits()
    assert uw.RateLimits() != a


def test_pickle_and_deepcopy() -> None:
    limits = uw.RateLimits(requests_per_minute=3, cost_per_day=1.5, output_tokens_per_second=9)
    assert pickle.loads(pickle.dumps(limits)) == limits
    assert copy.deepcopy(limits) == limits


def test_limits_compare_by_value() -> None:
    a = uw.RateLimits(requests_per_minute=3).limits[0]
    b = uw.RateLimits(requests_per_minute=3, cost_per_day=1.0).limits[0]
    c = uw.RateLimits(requests_per_minute=4).limits[0]
    assert a == b and hash(a) == hash(b)
    assert a != c


def test_limit_pickles() -> None:
    # Regression: uw.Limit had no __reduce__, so it (and every RateLimitExceeded
    # carrying one) cannot be pickled.
    limit = uw.RateLimits(requests_per_minute=3).limits[0]
    assert pickle.loads(pickle.dumps(limit)) == limit


@pytest.mark.parametrize(
    "name",
    ["tokens_per_minute", "requests_per_week", "requests", "per_minute", "Requests_per_minute"],
)
def test_unknown_keyword_is_a_type_error_listing_valid_names(name: str) -> None:
    with pytest.raises(TypeError) as info:
        uw.RateLimits(**{name: 1})
    message = str(info.value)
    assert name in message
    for valid in ALL_NAMES:
        assert valid in message


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"requests_per_minute": 0}, ValueError),
        ({"requests_per_minute": -1}, ValueError),
        ({"input_tokens_per_hour": 2**63}, ValueError),
        ({"requests_per_minute": 1.5}, TypeError),
        ({"requests_per_minute": 2.0}, TypeError),
        ({"total_tokens_per_day": True}, TypeError),
        ({"output_tokens_per_second": "10"}, TypeError),
        ({"requests_per_minute": None}, TypeError),
        ({"cost_per_day": 0}, ValueError),
        ({"cost_per_day": 0.0}, ValueError),
        ({"cost_per_day": -1.0}, ValueError),
        ({"cost_per_day": float("nan")}, ValueError),
        ({"cost_per_day": float("inf")}, ValueError),
        ({"cost_per_day": 1e-12}, ValueError),  # rounds to zero nano-USD
        ({"cost_per_day": "1.0"}, TypeError),
        ({"cost_per_hour": False}, TypeError),
    ],
)
def test_bad_amount_names_the_keyword(kwargs: dict[str, object], error: type[Exception]) -> None:
    [name] = kwargs
    with pytest.raises(error, match=name):
        uw.RateLimits(**kwargs)  # type: ignore[arg-type]


def test_one_bad_keyword_among_good_ones_fails_the_whole_call() -> None:
    with pytest.raises(ValueError, match="requests_per_day"):
        uw.RateLimits(requests_per_minute=3, requests_per_day=0)


def test_comparison_with_other_types_is_false_not_none() -> None:
    # Regression: RateLimits/Limit __eq__ returned None (not NotImplemented) for other
    # types, so `limits != 5` is falsy.
    limits = uw.RateLimits(requests_per_minute=3)
    for value in (limits, limits.limits[0]):
        assert (value == 5) is False
        assert (value != 5) is True
