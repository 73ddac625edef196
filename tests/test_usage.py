"""uw.Usage: an immutable usage vector with exact (nano-USD) cost."""

from __future__ import annotations

import copy
import pickle

import pytest
import usagewarden as uw
from conftest import MAX_COUNT, USAGE_FIELDS


def test_defaults_are_zero_and_falsy() -> None:
    u = uw.Usage()
    assert [getattr(u, f) for f in USAGE_FIELDS] == [0, 0, 0, 0, 0, 0.0]
    assert u.total_tokens == 0
    assert not u
    assert uw.Usage(cache_read_tokens=1)


def test_fields_and_total_tokens() -> None:
    u = uw.Usage(
        requests=2,
        input_tokens=10,
        output_tokens=5,
        cache_read_tokens=7,
        cache_write_tokens=3,
        cost=0.25,
    )
    assert (u.requests, u.input_tokens, u.output_tokens) == (2, 10, 5)
    assert (u.cache_read_tokens, u.cache_write_tokens, u.cost) == (7, 3, 0.25)
    # total_tokens is input + output only; cache tokens are not part of it.
    assert u.total_tokens == 15


def test_positional_arguments_follow_field_order() -> None:
    assert uw.Usage(1, 2, 3, 4, 5, 0.5) == uw.Usage(
        requests=1,
        input_tokens=2,
        output_tokens=3,
        cache_read_tokens=4,
        cache_write_tokens=5,
        cost=0.5,
    )


def test_is_frozen() -> None:
    u = uw.Usage(requests=1)
    with pytest.raises(AttributeError):
        u.requests = 2  # type: ignore[misc]
    assert u.requests == 1


def test_add_is_fieldwise() -> None:
    a = uw.Usage(1, 10, 20, 1, 2, 0.1)
    b = uw.Usage(2, 5, 1, 3, 4, 0.2)
    assert a + b == uw.Usage(3, 15, 21, 4, 6, 0.3)


def test_cost_is_exact_in_nano_usd() -> None:
    # 0.1 + 0.2 != 0.3 in floats; in integer nano-USD it is exact.
    assert (uw.Usage(cost=0.1) + uw.Usage(cost=0.2)).cost == 0.3
    assert uw.Usage(cost=0.000_000_001).cost == 1e-9
    assert uw.Usage(cost=1.5e-10).cost == 0.0  # below one nano-USD rounds away
    assert uw.Usage(cost=3).cost == 3.0  # an int is accepted as USD
    tenths = uw.Usage()
    for _ in range(10):
        tenths = tenths + uw.Usage(cost=0.1)
    assert tenths.cost == 1.0


def test_sub_is_fieldwise() -> None:
    a = uw.Usage(3, 15, 21, 4, 6, 0.3)
    b = uw.Usage(2, 5, 1, 3, 4, 0.2)
    assert a - b == uw.Usage(1, 10, 20, 1, 2, 0.1)
    assert a - a == uw.Usage()


@pytest.mark.parametrize("field", USAGE_FIELDS)
def test_sub_going_negative_names_the_field(field: str) -> None:
    small = uw.Usage(**{field: 1})
    big = uw.Usage(**{field: 2})
    with pytest.raises(ValueError, match=field):
        small - big


def test_add_past_the_maximum_raises() -> None:
    with pytest.raises(ValueError):
        uw.Usage(input_tokens=MAX_COUNT) + uw.Usage(input_tokens=1)
    assert (uw.Usage(input_tokens=MAX_COUNT) + uw.Usage()).input_tokens == MAX_COUNT


def test_equality_and_hash() -> None:
    a = uw.Usage(1, 2, 3, 4, 5, 0.5)
    b = uw.Usage(1, 2, 3, 4, 5, 0.5)
    c = uw.Usage(1, 2, 3, 4, 5, 0.6)
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert not (a != b)  # noqa: SIM202 - __ne__ itself is under test
    assert len({a, b, c}) == 2


def test_comparison_with_other_types_is_false_not_none() -> None:
    # Regression: Usage.__eq__/__ne__ returned None (not NotImplemented) for other types,
    # so `Usage() != 5` is falsy.
    u = uw.Usage(requests=1)
    assert (u == 5) is False
    assert (u != 5) is True
    assert (u == "x") is False


@pytest.mark.parametrize("other", [5, 1.5, "x", None, (1,)])
def test_arithmetic_with_other_types_raises_type_error(other: object) -> None:
    # Regression: Usage.__add__/__sub__ returned None for other operand types instead
    # of NotImplemented, so `Usage() + 5` silently evaluates to None.
    u = uw.Usage(requests=1)
    with pytest.raises(TypeError):
        u + other  # type: ignore[operator]
    with pytest.raises(TypeError):
        u - other  # type: ignore[operator]


def test_to_dict_has_the_six_constructor_fields_and_rebuilds() -> None:
    u = uw.Usage(1, 2, 3, 4, 5, 0.125)
    d = u.to_dict()
    assert d == {
        "requests": 1,
        "input_tokens": 2,
        "output_tokens": 3,
        "cache_read_tokens": 4,
        "cache_write_tokens": 5,
        "cost": 0.125,
    }
    assert uw.Usage(**d) == u
    assert "total_tokens" not in d


def test_pickle_and_copy_round_trip() -> None:
    u = uw.Usage(1, 2, 3, 4, 5, 1.000000001)
    for clone in (pickle.loads(pickle.dumps(u)), copy.copy(u), copy.deepcopy(u)):
        assert clone == u
        assert clone.cost == u.cost


def test_max_counts_are_accepted() -> None:
    u = uw.Usage(requests=MAX_COUNT, cache_write_tokens=MAX_COUNT)
    assert u.requests == MAX_COUNT
    assert u.to_dict()["cache_write_tokens"] == MAX_COUNT


def test_an_accepted_cost_is_usable() -> None:
    # Regression: a cost that rounds to exactly 2**63 nano-USD passed validation
    # (`nanos > MAX_COUNT as f64` compares against 2**63, not 2**63 - 1) and
    # then breaks arithmetic on the value. Either refuse it at construction
    # (ValueError naming `cost`) or keep it usable.
    try:
        u = uw.Usage(cost=2**63 / 1e9)
    except ValueError as exc:
        assert "cost" in str(exc)
        return
    assert u + uw.Usage() == u


def test_repr_shows_every_field() -> None:
    text = repr(uw.Usage(1, 2, 3, 4, 5, 0.5))
    for field in USAGE_FIELDS:
        assert field in text
