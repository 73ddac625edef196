"""uw.ManualClock: a clock that moves only when told to."""

from __future__ import annotations

import copy
import pickle

import pytest
import usagewarden as uw


def test_starts_where_told_and_defaults_to_zero() -> None:
    assert uw.ManualClock().now() == 0.0
    assert uw.ManualClock(12.5).now() == 12.5
    assert uw.ManualClock(start=3).now() == 3.0


def test_advance_and_set() -> None:
    clock = uw.ManualClock(1.0)
    clock.advance(2.5)
    assert clock.now() == 3.5
    clock.advance(0)
    assert clock.now() == 3.5
    clock.set(10)
    assert clock.now() == 10.0
    clock.set(10)  # setting the current time is allowed
    assert clock.now() == 10.0


def test_many_small_steps_do_not_drift() -> None:
    # Time is integer nanoseconds inside: 1000 steps of 1 ms are exactly 1 s.
    clock = uw.ManualClock()
    for _ in range(1000):
        clock.advance(0.001)
    assert clock.now() == 1.0


def test_set_cannot_go_backwards() -> None:
    clock = uw.ManualClock(5.0)
    with pytest.raises(ValueError, match="seconds"):
        clock.set(4.999)
    assert clock.now() == 5.0


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf")])
def test_advance_refuses_bad_seconds(bad: float) -> None:
    clock = uw.ManualClock(5.0)
    with pytest.raises(ValueError, match="seconds"):
        clock.advance(bad)
    assert clock.now() == 5.0


@pytest.mark.parametrize("bad", ["1", None, True, [1]])
def test_advance_refuses_non_numbers(bad: object) -> None:
    clock = uw.ManualClock()
    with pytest.raises(TypeError, match="seconds"):
        clock.advance(bad)  # type: ignore[arg-type]
    assert clock.now() == 0.0


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_start_must_be_a_finite_non_negative_time(bad: float) -> None:
    with pytest.raises(ValueError, match="start"):
        uw.ManualClock(bad)


def test_pickle_and_deepcopy_give_an_independent_clock_at_the_same_time() -> None:
    clock = uw.ManualClock(7.0)
    for clone in (pickle.loads(pickle.dumps(clock)), copy.deepcopy(clock)):
        assert clone is not clock
        assert clone.now() == 7.0
        clone.advance(1)
        assert clone.now() == 8.0
        assert clock.now() == 7.0
