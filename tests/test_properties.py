"""Property tests (hypothesis) of the sliding-window invariants, on a ManualClock.

For any stream of usage, at any time, the running sum is never below the
exact sliding-window sum (usage is never released early) and never above the
exact sum over a window one quantum longer (at most one quantum late).
"""

from __future__ import annotations

import copy

import usagewarden as uw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NS = 1_000_000_000
WINDOWS_NS = [NS, 60 * NS]  # quantum: 1 ms and 60 ms

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def seconds(t_ns: int) -> float:
    return t_ns / NS


@st.composite
def history_scripts(draw: st.DrawFn) -> tuple[int, list[tuple[int, int, int, int]]]:
    window = draw(st.sampled_from(WINDOWS_NS))
    quantum = window // 1000
    gap = st.one_of(
        st.just(0),
        st.integers(0, 2 * quantum),  # within / around one quantum: merging
        st.integers(0, window + 2 * quantum),  # across whole windows: eviction
    )
    back = st.one_of(st.just(0), st.integers(0, 3 * quantum), st.integers(0, window + quantum))
    ops = draw(
        st.lists(
            st.tuples(gap, back, st.integers(1, 1000), st.integers(1, window)),
            min_size=1,
            max_size=60,
        )
    )
    return window, ops


def check_bounds(
    history: uw.UsageHistory, log: list[tuple[int, int]], now: int, window: int, span: int
) -> None:
    quantum = window // 1000
    counted = history.usage_in_window().input_tokens
    exact = sum(a for t, a in log if t + window > now)
    loose = sum(a for t, a in log if t + window + quantum > now)
    assert exact <= counted <= loose, (now, exact, counted, loose)
    if loose == 0:
        assert len(history) == 0
    # The same bounds hold over any shorter span.
    within = history.usage_in_window(seconds(span)).input_tokens
    exact_span = sum(a for t, a in log if t + span > now)
    loose_span = sum(a for t, a in log if t + span + quantum > now)
    assert exact_span <= within <= loose_span, (now, span, exact_span, within, loose_span)


@PROPERTY_SETTINGS
@given(history_scripts())
def test_history_is_never_early_and_at_most_one_quantum_late(script) -> None:
    window, ops = script
    clock = uw.ManualClock()
    history = uw.UsageHistory(seconds(window), clock=clock)
    log: list[tuple[int, int]] = []
    now = 0
    for gap, back, amount, span in ops:
        now += gap
        clock.set(seconds(now))
        at = max(0, now - back)
        history.add(uw.Usage(requests=1, input_tokens=amount), at=seconds(at))
        log.append((at, amount))
        check_bounds(history, log, now, window, span)
    # And as time runs out afterwards: just before, at and just after the moment
    # each entry's window ends (where early or late release would show).
    quantum = window // 1000
    probes = {t + window + d for t, _ in log for d in (-1, 0, quantum // 2, quantum - 1)}
    for probe in sorted(p for p in probes if p >= now):
        now = probe
        clock.set(seconds(now))
        check_bounds(history, log, now, window, window // 7)
    now += window + window // 1000
    clock.set(seconds(now))
    assert history.usage_in_window() == uw.Usage()
    assert history.cleanup() == 0
    assert len(history) == 0


@PROPERTY_SETTINGS
@given(history_scripts())
def test_cleanup_removes_only_what_no_longer_counts(script) -> None:
    window, ops = script
    clock = uw.ManualClock()
    history = uw.UsageHistory(seconds(window), clock=clock)
    now = 0
    for gap, back, amount, _ in ops:
        now += gap
        clock.set(seconds(now))
        before = history.usage_in_window()
        removed = history.cleanup()
        assert removed >= 0
        assert history.usage_in_window() == before
        history.add(uw.Usage(input_tokens=amount), at=seconds(max(0, now - back)))


LIMITER_LIMITS = uw.RateLimits(
    requests_per_second=4, total_tokens_per_second=300, total_tokens_per_minute=5000
)


@st.composite
def limiter_scripts(draw: st.DrawFn) -> list[tuple[int, int, int, str]]:
    return draw(
        st.lists(
            st.tuples(
                st.one_of(st.just(0), st.integers(0, 2_000_000), st.integers(0, 2 * NS)),
                st.integers(0, 200),
                st.integers(0, 120),
                st.sampled_from(["keep", "keep", "keep", "refund", "cancel"]),
            ),
            min_size=1,
            max_size=50,
        )
    )


@PROPERTY_SETTINGS
@given(limiter_scripts())
def test_limiter_decisions_match_the_exact_windows(script) -> None:
    clock = uw.ManualClock()
    limiter = uw.RateLimiter(LIMITER_LIMITS, clock=clock)
    specs = [(lim.dimension, round(lim.window * NS), lim.amount) for lim in LIMITER_LIMITS.limits]
    admitted: list[tuple[int, uw.Reservation]] = []
    now = 0

    def amount(usage: uw.Usage, dimension: str) -> int:
        return usage.total_tokens if dimension == "total_tokens" else getattr(usage, dimension)

    def in_window(dimension: str, window: int, slack: int) -> int:
        return sum(amount(r.usage, dimension) for t, r in admitted if t + window + slack > now)

    for gap, input_tokens, output_tokens, then in script:
        now += gap
        clock.set(seconds(now))
        wanted = uw.Usage(requests=1, input_tokens=input_tokens, output_tokens=output_tokens)
        decision = limiter.try_acquire(input_tokens=input_tokens, output_tokens=output_tokens)
        if decision:
            admitted.append((now, decision.reservation))
            # Admitted: no exact window now holds more than its limit.
            for dimension, window, limit in specs:
                assert in_window(dimension, window, 0) <= limit
            if then == "refund":
                decision.reservation.settle(output_tokens=0)
            elif then == "cancel":
                decision.reservation.cancel()
            continue
        # Refused: some limit is full even counting a quantum of slack...
        assert any(in_window(d, w, w // 1000) + amount(wanted, d) > limit for d, w, limit in specs)
        # ...and retry_after is exact: one nanosecond short it is still refused,
        # at retry_after it fits (checked on an independent copy).
        wait = decision.retry_after
        if wait is None:
            assert any(amount(wanted, d) > limit for d, _, limit in specs)
            continue
        assert wait > 0
        probe = copy.deepcopy(limiter)
        probe.clock.advance(wait - 1e-9)
        assert not probe.check(input_tokens=input_tokens, output_tokens=output_tokens)
        probe.clock.advance(1e-9)
        assert probe.check(input_tokens=input_tokens, output_tokens=output_tokens)

    # Everything admitted (as settled) is counted in the longest window.
    counted = limiter.usage(window_seconds=60)
    lo = sum(r.usage.total_tokens for t, r in admitted if t + 60 * NS > now)
    hi = sum(r.usage.total_tokens for t, r in admitted if t + 60 * NS + 60_000_000 > now)
    assert lo <= counted.total_tokens <= hi
