"""uw.UsageHistory: a lock-safe sliding window with running sums."""

from __future__ import annotations

import threading

import pytest
import usagewarden as uw


def req(n: int = 1, **fields: int) -> uw.Usage:
    return uw.Usage(requests=n, **fields)


def test_defaults_to_a_one_minute_window() -> None:
    assert uw.UsageHistory().window_seconds == 60.0
    assert uw.UsageHistory(2.5).window_seconds == 2.5


def test_empty_history() -> None:
    history = uw.UsageHistory(60, clock=uw.ManualClock())
    assert history.usage_in_window() == uw.Usage()
    assert len(history) == 0
    assert history.cleanup() == 0


def test_a_lone_entry_counts_for_exactly_one_window(clock: uw.ManualClock) -> None:
    history = uw.UsageHistory(60, clock=clock)
    clock.set(10)
    history.add(req(1, input_tokens=5))
    clock.set(69.999_999_999)
    assert history.usage_in_window() == req(1, input_tokens=5)
    assert len(history) == 1
    clock.set(70)  # counts while now < t + window
    assert history.usage_in_window() == uw.Usage()
    assert len(history) == 0


def test_running_sum_over_a_sliding_window(clock: uw.ManualClock) -> None:
    history = uw.UsageHistory(60, clock=clock)
    for t, tokens in [(0, 100), (10, 50), (20, 25), (30, 12)]:
        clock.set(t)
        history.add(req(1, input_tokens=tokens, output_tokens=1, cost=0.01))
    assert history.usage_in_window() == uw.Usage(4, 187, 4, cost=0.04)
    expected = {59: 187, 60: 87, 69: 87, 70: 37, 80: 12, 90: 0}
    for t, tokens in expected.items():
        clock.set(t)
        assert history.usage_in_window().input_tokens == tokens, t


def test_usage_in_a_shorter_span(clock: uw.ManualClock) -> None:
    history = uw.UsageHistory(100, clock=clock)
    for t, n in [(0, 1), (50, 2), (90, 4)]:
        clock.set(t)
        history.add(req(n))
    clock.set(95)
    assert history.usage_in_window(10).requests == 4
    assert history.usage_in_window(50).requests == 6
    assert history.usage_in_window(100).requests == 7
    assert history.usage_in_window().requests == 7
    assert history.usage_in_window(45.000_000_001).requests == 6
    assert history.usage_in_window(45).requests == 4  # t=50 counts while now < 50 + span


def test_span_longer_than_the_window_is_refused(clock: uw.ManualClock) -> None:
    history = uw.UsageHistory(60, clock=clock)
    with pytest.raises(ValueError, match="window_seconds"):
        history.usage_in_window(61)


def test_add_at_a_past_time(clock: uw.ManualClock) -> None:
    history = uw.UsageHistory(60, clock=clock)
    clock.set(100)
    history.add(req(1), at=100)
    history.add(req(2), at=50)  # still inside the window: counted until t=110
    history.add(req(4), at=40)  # exactly one window old: already gone
    history.add(req(8), at=10)  # long gone: ignored
    assert history.usage_in_window().requests == 3
    clock.set(109.9)
    assert history.usage_in_window().requests == 3
    clock.set(110)
    assert history.usage_in_window().requests == 1


def test_add_in_the_future_is_refused_and_records_nothing(clock: uw.ManualClock) -> None:
    history = uw.UsageHistory(60, clock=clock)
    clock.set(10)
    with pytest.raises(ValueError, match="at"):
        history.add(req(1), at=10.5)
    assert history.usage_in_window() == uw.Usage()
    assert len(history) == 0


def test_entries_within_a_quantum_merge_and_leave_with_the_latest(clock: uw.ManualClock) -> None:
    # window 60 s: quantum = 60 ms
    history = uw.UsageHistory(60, clock=clock)
    history.add(req(1))  # t = 0
    clock.set(0.03)
    history.add(req(1))  # merged with t = 0
    assert len(history) == 1
    clock.set(0.06)
    history.add(req(1))  # 60 ms after the bucket's first entry: a new bucket
    assert len(history) == 2
    clock.set(60)
    # The t=0 entry's window has ended, but it was merged with t=0.03: never early.
    assert history.usage_in_window().requests == 3
    clock.set(60.03)
    assert history.usage_in_window().requests == 1
    clock.set(60.06)
    assert history.usage_in_window().requests == 0


def test_quantum_scales_with_the_window(clock: uw.ManualClock) -> None:
    history = uw.UsageHistory(1.0, clock=clock)  # quantum = 1 ms
    history.add(req(1))
    clock.set(0.0009)
    history.add(req(1))
    clock.set(0.001)
    history.add(req(1))
    assert len(history) == 2
    clock.set(1.0009)
    assert history.usage_in_window().requests == 1
    clock.set(1.001)
    assert history.usage_in_window().requests == 0


def test_cleanup_returns_entries_removed(clock: uw.ManualClock) -> None:
    history = uw.UsageHistory(10, clock=clock)
    for t in (0, 1, 2, 5):
        clock.set(t)
        history.add(req(1))
    assert len(history) == 4
    clock.set(12)
    assert history.cleanup() == 3
    assert history.cleanup() == 0
    assert len(history) == 1
    clock.set(15)
    assert history.cleanup() == 1
    assert len(history) == 0


def test_zero_usage_is_not_an_entry(clock: uw.ManualClock) -> None:
    history = uw.UsageHistory(10, clock=clock)
    history.add(uw.Usage())
    assert len(history) == 0


def test_every_field_is_summed(clock: uw.ManualClock) -> None:
    history = uw.UsageHistory(10, clock=clock)
    history.add(uw.Usage(1, 2, 3, 4, 5, 0.5))
    clock.advance(1)
    history.add(uw.Usage(1, 2, 3, 4, 5, 0.25))
    assert history.usage_in_window() == uw.Usage(2, 4, 6, 8, 10, 0.75)


def test_system_clock_history_counts_what_was_just_added() -> None:
    history = uw.UsageHistory(3600)
    history.add(req(3, input_tokens=9))
    assert history.usage_in_window() == req(3, input_tokens=9)


def test_concurrent_adds_are_all_counted(clock: uw.ManualClock) -> None:
    history = uw.UsageHistory(3600, clock=clock)
    per_thread = 2000

    def hammer() -> None:
        for _ in range(per_thread):
            history.add(req(1, input_tokens=3))

    def tick() -> None:
        for _ in range(200):
            clock.advance(0.01)

    threads = [threading.Thread(target=hammer) for _ in range(6)] + [threading.Thread(target=tick)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert history.usage_in_window() == req(6 * per_thread, input_tokens=3 * 6 * per_thread)
