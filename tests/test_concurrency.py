"""Concurrency replay: threads and tasks hammer one limiter while another thread
moves its ManualClock; every admitted entry is then replayed to check that no
sliding window ever held more than a limit, and that everything admitted is
counted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import usagewarden as uw
from conftest import NS, Worker, nanos, ns

KEY = "shared"
LIMITS = {
    "requests_per_second": 60,
    "total_tokens_per_second": 6_000,
    "cost_per_second": 0.05,
    "input_tokens_per_minute": 150_000,
    "requests_per_hour": 1_000_000,  # the longest window: it holds the whole run
}
THREADS = 8
CALLS_PER_THREAD = 10_000
TASKS = 1_000


@dataclass(frozen=True)
class Entry:
    at: int  # ns
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cost: int  # nano-USD

    @classmethod
    def of(cls, r: uw.Reservation) -> Entry:
        u = r.usage
        return cls(
            ns(r.at),
            u.requests,
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            nanos(u.cost),
        )

    def amount(self, dimension: str) -> int:
        if dimension == "total_tokens":
            return self.input_tokens + self.output_tokens
        return getattr(self, dimension)


def limit_specs(limits: uw.RateLimits) -> Iterator[tuple[str, int, int]]:
    """(dimension, window ns, amount in integer units) for every limit."""
    for limit in limits.limits:
        amount = nanos(limit.amount) if limit.dimension == "cost" else limit.amount
        yield limit.dimension, ns(limit.window), amount


def window_sums(entries: list[Entry], dimension: str, window: int) -> list[tuple[int, int]]:
    """For every distinct admission time t: the exact sum over (t - window, t]."""
    entries = sorted(entries, key=lambda e: e.at)
    times = [e.at for e in entries]
    prefix = [0]
    for e in entries:
        prefix.append(prefix[-1] + e.amount(dimension))
    out = []
    for t in sorted(set(times)):
        hi = bisect.bisect_right(times, t)
        lo = bisect.bisect_right(times, t - window)
        out.append((t, prefix[hi] - prefix[lo]))
    return out


def sum_since(entries: list[Entry], dimension: str, after: int) -> int:
    return sum(e.amount(dimension) for e in entries if e.at > after)


def assert_replay(limits: uw.RateLimits, entries: list[Entry], key: str = KEY) -> dict[str, int]:
    """Check every window of every limit; return the peak seen per limit."""
    peaks = {}
    for dimension, window, amount in limit_specs(limits):
        sums = window_sums(entries, dimension, window)
        worst_t, worst = max(sums, key=lambda p: p[1], default=(0, 0))
        assert worst <= amount, (
            f"{key}: {dimension} over a {window / NS:g}s window ending at "
            f"{worst_t / NS}s was {worst}, limit {amount}"
        )
        peaks[f"{dimension}/{window / NS:g}s"] = worst
    return peaks


def assert_counted(limiter: uw.RateLimiter, entries: list[Entry], key: str = KEY) -> None:
    """The longest window holds the whole run: it must count every admitted entry exactly."""
    counted = limiter.usage(key)
    assert counted.requests == sum(e.requests for e in entries)
    assert counted.input_tokens == sum(e.input_tokens for e in entries)
    assert counted.output_tokens == sum(e.output_tokens for e in entries)
    assert counted.cache_read_tokens == sum(e.cache_read_tokens for e in entries)
    assert nanos(counted.cost) == sum(e.cost for e in entries)
    # Shorter windows: never less than the exact sum, at most one quantum's worth more.
    now = ns(limiter.clock.now())
    for seconds in (1, 60):
        window = seconds * NS
        quantum = window // 1000
        within = limiter.usage(key, window_seconds=seconds)
        for dimension in ("requests", "input_tokens"):
            exact = sum_since(entries, dimension, now - window)
            loose = sum_since(entries, dimension, now - window - quantum)
            assert exact <= getattr(within, dimension) <= loose, (seconds, dimension)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads often so that the workers really interleave."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


class Ticker(threading.Thread):
    """Moves the clock forward in small random steps until stopped."""

    def __init__(self, clock: uw.ManualClock, seed: int) -> None:
        super().__init__(daemon=True)
        self.clock = clock
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.steps = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.clock.advance(self.rng.randint(1, 8) / 1000)
            self.steps += 1
            time.sleep(0.0002)


@dataclass
class Progress:
    """What the two sides of the run tell each other (no correctness depends on it)."""

    thread_admissions: list[float]  # append-only, read with len()
    tasks_done: threading.Event
    refused: list[int]


def hammer(limiter: uw.RateLimiter, seed: int, progress: Progress) -> list[uw.Reservation]:
    rng = random.Random(seed)
    admitted = []
    refused = 0
    for i in range(CALLS_PER_THREAD):
        if i % 4 == 0 and not progress.tasks_done.is_set():
            time.sleep(0.001)  # pacing: keep the threads running while the tasks arrive
        decision = limiter.try_acquire(
            KEY,
            input_tokens=rng.randint(1, 150),
            output_tokens=rng.randint(0, 60),
            cache_read_tokens=rng.randint(0, 5),
            cost=rng.choice((0.0, 0.001, 0.003)),
        )
        if not decision:
            refused += 1
            continue
        r = decision.reservation
        if i % 13 == 0:
            r.cancel()
        elif i % 5 == 0:
            r.settle(output_tokens=rng.randint(0, r.usage.output_tokens))
        admitted.append(r)
        progress.thread_admissions.append(r.at)
    progress.refused.append(refused)
    return admitted


def test_the_replay_detects_an_overrun() -> None:
    """The checker itself: one entry too many in some window must be caught."""
    limits = uw.RateLimits(requests_per_second=2, total_tokens_per_minute=100)

    def entry(t: float, tokens: int = 0) -> Entry:
        return Entry(ns(t), 1, tokens, 0, 0, 0)

    fine = [entry(0), entry(0.9), entry(1.0), entry(1.95), entry(2.0, 99), entry(61.999, 1)]
    assert assert_replay(limits, fine)["requests/1s"] == 2
    with pytest.raises(AssertionError, match="requests"):
        assert_replay(limits, [*fine, entry(1.5)])  # 0.9, 1.0, 1.5 in (0.5, 1.5]
    with pytest.raises(AssertionError, match="total_tokens"):
        assert_replay(limits, [*fine, entry(61.999, 1)])  # 99 + 1 + 1 in (1.999, 61.999]


async def test_threads_and_tasks_never_exceed_a_limit_and_all_are_counted(
    fast_switching, clock
) -> None:
    limiter = uw.RateLimiter(uw.RateLimits(**LIMITS), clock=clock)
    progress = Progress([], threading.Event(), [])
    ticker = Ticker(clock, seed=1)
    workers = [Worker(lambda s=s: hammer(limiter, s, progress)) for s in range(THREADS)]
    rng = random.Random(2)

    async def one(i: int) -> uw.Reservation:
        r = await limiter.acquire(
            KEY,
            input_tokens=rng.randint(1, 200),
            output_tokens=rng.randint(0, 100),
            cost=rng.choice((0.0, 0.002)),
        )
        if i % 7 == 0:
            r.settle(input_tokens=1)
        return r

    async def threads_get_a_turn() -> None:
        # Pacing only: after a wave of tasks has drained, let the threads be
        # admitted a few times before the next wave queues up again.
        seen = len(progress.thread_admissions)
        deadline = time.monotonic() + 5
        while (
            len(progress.thread_admissions) < seen + 3
            and any(w.is_alive() for w in workers)
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.001)

    started = time.monotonic()
    ticker.start()
    try:
        for w in workers:
            w.start()
        task_reservations: list[uw.Reservation] = []
        wave = 20
        for first in range(0, TASKS, wave):
            tasks = [asyncio.create_task(one(i)) for i in range(first, first + wave)]
            task_reservations += await asyncio.wait_for(asyncio.gather(*tasks), 60)
            await threads_get_a_turn()
        progress.tasks_done.set()
        thread_reservations = await asyncio.to_thread(
            lambda: [r for w in workers for r in w.outcome(60)]
        )
    finally:
        progress.tasks_done.set()
        ticker.stop.set()
        ticker.join(10)
    elapsed = time.monotonic() - started

    entries = [Entry.of(r) for r in thread_reservations + task_reservations]
    peaks = assert_replay(limiter.limits, entries)
    assert_counted(limiter, entries)

    # The run was not vacuous: both sides were admitted, over overlapping
    # stretches of clock time; the limiter refused most thread calls; and the
    # per-second limits were driven to (or within 10% of) their amounts.
    assert len(task_reservations) == TASKS
    assert len(thread_reservations) > 100
    thread_times = [r.at for r in thread_reservations]
    task_times = [r.at for r in task_reservations]
    assert min(task_times) < max(thread_times) and min(thread_times) < max(task_times)
    assert sum(progress.refused) > THREADS * CALLS_PER_THREAD // 2
    amounts = {f"{d}/{w / NS:g}s": a for d, w, a in limit_specs(limiter.limits)}
    for name in ("requests/1s", "total_tokens/1s", "cost/1s"):
        assert peaks[name] >= 0.9 * amounts[name], (name, peaks[name])
    assert any(peaks[name] == amounts[name] for name in peaks), peaks
    assert ticker.steps > 100
    assert elapsed < 60


def test_threads_on_tuple_keys_are_atomic_and_within_every_key_limit(fast_switching, clock) -> None:
    limiter = uw.RateLimiter(
        uw.RateLimits(
            requests_per_second=40, total_tokens_per_second=2000, requests_per_hour=10**6
        ),
        per_key={
            "org": uw.RateLimits(requests_per_second=50, requests_per_hour=10**6),
            "tight": uw.RateLimits(requests_per_second=5, requests_per_hour=10**6),
        },
        clock=clock,
    )
    key_sets = [
        ("org", "alice"),
        ("org", "bob"),
        ("alice",),
        ("bob", "tight"),
        ("tight", "org", "carol"),
    ]
    ticker = Ticker(clock, seed=3)

    def run(seed: int) -> list[uw.Reservation]:
        rng = random.Random(seed)
        admitted = []
        for i in range(3000):
            keys = key_sets[rng.randrange(len(key_sets))]
            key = keys if len(keys) > 1 else keys[0]
            if i % 50 == 0:
                with contextlib.suppress(uw.RateLimitExceeded):
                    admitted.append(
                        limiter.acquire_blocking(key, input_tokens=rng.randint(1, 40), timeout=0.05)
                    )
                continue
            d = limiter.try_acquire(
                key, input_tokens=rng.randint(1, 40), output_tokens=rng.randint(0, 10)
            )
            if d:
                admitted.append(d.reservation)
        return admitted

    ticker.start()
    try:
        workers = [Worker(lambda s=s: run(s)) for s in range(6)]
        for w in workers:
            w.start()
        reservations = [r for w in workers for r in w.outcome(60)]
    finally:
        ticker.stop.set()
        ticker.join(10)

    assert len(reservations) > 100
    per_key: dict[str, list[Entry]] = {}
    for r in reservations:
        keys = r.key if isinstance(r.key, tuple) else (r.key,)
        for k in keys:
            per_key.setdefault(k, []).append(Entry.of(r))
    assert set(per_key) == {"org", "alice", "bob", "tight", "carol"}
    for key, entries in per_key.items():
        assert_replay(limiter.per_key.get(key, limiter.limits), entries, key)
        counted = limiter.usage(key)
        assert counted.requests == len(entries), key
        assert counted.input_tokens == sum(e.input_tokens for e in entries), key


def test_a_reservation_settles_or_cancels_once_under_contention(clock) -> None:
    limiter = uw.RateLimiter(uw.RateLimits(total_tokens_per_minute=10**6), clock=clock)
    for trial in range(20):
        r = limiter.try_acquire(f"k{trial}", input_tokens=100).reservation
        barrier = threading.Barrier(8)

        def act(i: int, r: uw.Reservation = r, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            try:
                if i % 2:
                    r.settle(input_tokens=10 * i)
                    return "settled"
                return "cancelled" if r.cancel() else "already cancelled"
            except ValueError:
                return "refused"

        workers = [Worker(lambda i=i: act(i)) for i in range(8)]
        for w in workers:
            w.start()
        outcomes = [w.outcome() for w in workers]
        winners = [o for o in outcomes if o in ("settled", "cancelled")]
        assert len(winners) == 1, outcomes
        counted = limiter.usage(f"k{trial}")
        if winners[0] == "cancelled":
            assert r.cancelled and counted == uw.Usage()
        else:
            assert r.settled and counted == r.usage and counted.input_tokens in range(10, 80, 20)
