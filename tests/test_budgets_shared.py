"""Budgets shared by processes and hosts through a real redis-server
(``BudgetEngine(..., shared=...)``): calls in flight elsewhere count, spend
is seeded from the ledger when Redis has none, a dead process's estimates
are released at their deadline, and Redis being away fails fast or falls
back as the limiter's ``on_unavailable`` says."""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw
from redis_server import RedisServer

UTC = dt.timezone.utc
JAN_31_NOON = dt.datetime(2026, 1, 31, 12, tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> uw.ManualClock:
    return uw.ManualClock(JAN_31_NOON)


def ledger(tmp_path: Path, name: str, clock: uw.ManualClock | None) -> uw.SQLiteStore:
    """A ledger of its own: a separate host."""
    return uw.SQLiteStore(tmp_path / f"{name}.db", durability="commit", clock=clock)


def test_two_hosts_see_each_others_calls_in_flight(
    tmp_path: Path, clock: uw.ManualClock, redis_url: str
) -> None:
    alerts: list[tuple[str, Any]] = []

    def host(name: str) -> uw.BudgetEngine:
        return uw.BudgetEngine(
            [uw.Budget("org", 10.0)],
            ledger(tmp_path, name, clock),
            clock=clock,
            shared=redis_url,
            on_alert=lambda a: alerts.append((name, a["threshold"])),
        )

    here, there = host("here"), host("there")
    in_flight = here.check(estimated_cost=8.0)
    with pytest.raises(uw.BudgetExceeded) as refused:
        there.check(estimated_cost=3.0)
    assert (refused.value.spent, refused.value.reserved) == (0.0, 8.0)
    assert there.check(estimated_cost=2.0).estimated_cost == 2.0
    here.settle(in_flight, 5.0)
    [status] = there.status()
    assert (status["spent_usd"], status["reserved_usd"]) == (5.0, 2.0)
    assert status["thresholds_crossed"] == [0.5]
    # Each threshold fires once for the budget, in whichever process crossed it.
    there.settle(there.check(estimated_cost=2.5), 2.5)
    assert alerts == [("here", 0.5), ("there", 0.75)]


def test_spend_is_seeded_from_the_ledger_once_when_redis_lost_it(
    tmp_path: Path, clock: uw.ManualClock, redis_server: RedisServer, redis_url: str
) -> None:
    store = ledger(tmp_path, "one", clock)
    now = dt.datetime.fromtimestamp(clock.now(), UTC)
    store.record(uw.UsageEvent("bot", "c", cost=6.0, timestamp=now))
    budgets = [uw.Budget("org", 10.0)]
    first = uw.BudgetEngine(budgets, store, clock=clock, shared=redis_url)
    second = uw.BudgetEngine(budgets, store, clock=clock, shared=redis_url)
    first.settle(first.check(estimated_cost=1.0), 1.0)
    store.record(uw.UsageEvent("bot", "c", cost=1.0, timestamp=now))
    # Both seeded the same slot (the second found it known): counted once.
    with pytest.raises(uw.BudgetExceeded) as refused:
        second.check(estimated_cost=3.5)
    assert refused.value.spent == 7.0
    redis_server.flush()  # an eviction: Redis has no spend for the period
    assert first.status()[0]["spent_usd"] == 0.0, "status only reads"
    with pytest.raises(uw.BudgetExceeded) as refused:
        second.check(estimated_cost=3.5)
    assert refused.value.spent == 7.0, "seeded again from the ledger"
    [status] = first.status()
    assert (status["spent_usd"], status["reserved_usd"]) == (7.0, 0.0)
    assert status["thresholds_crossed"] == [0.5], "spend seeded does not alert again"
    store.close()


def test_a_dead_process_estimate_is_released_at_its_deadline(
    tmp_path: Path, clock: uw.ManualClock, redis_url: str
) -> None:
    budgets = [uw.Budget("org", 10.0)]
    dying = uw.BudgetEngine(budgets, ledger(tmp_path, "a", clock), clock=clock, shared=redis_url)
    dying.check(estimated_cost=9.0)  # never settled: its process dies
    del dying
    survivor = uw.BudgetEngine(budgets, ledger(tmp_path, "b", clock), clock=clock, shared=redis_url)
    with pytest.raises(uw.BudgetExceeded):
        survivor.check(estimated_cost=2.0)
    clock.advance(9 * 60)
    with pytest.raises(uw.BudgetExceeded):
        survivor.check(estimated_cost=2.0)
    clock.advance(60)  # ten minutes after it was made
    assert survivor.check(estimated_cost=2.0).estimated_cost == 2.0
    [status] = survivor.status()
    assert status["reserved_usd"] == 2.0


def test_shared_budgets_live_under_the_limiter_prefix(
    tmp_path: Path, clock: uw.ManualClock, redis_server: RedisServer, redis_url: str
) -> None:
    limiter = uw.RedisRateLimiter(uw.RateLimits(requests_per_minute=10), redis_url, prefix="tenant")
    engine = uw.BudgetEngine(
        [uw.Budget("org", 10.0)], ledger(tmp_path, "p", clock), clock=clock, shared=limiter
    )
    engine.settle(engine.check(estimated_cost=1.0), 1.0)
    limiter.try_acquire("alice")
    keys = redis_server.command("KEYS", "*").decode()
    assert "tenant.budgets:{b}:" in keys and "tenant:v2:alice" in keys
    limiter.reset()  # the limiter's reset leaves budgets alone
    assert engine.status()[0]["spent_usd"] == 1.0


def test_bad_shared_names_the_argument(tmp_path: Path, redis_url: str) -> None:
    store = ledger(tmp_path, "bad", None)
    budgets = [uw.Budget("org", 10.0)]
    with pytest.raises(TypeError, match="shared"):
        uw.BudgetEngine(budgets, store, shared=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="shared"):
        uw.BudgetEngine(budgets, store, shared=uw.RateLimiter(uw.RateLimits(requests_per_minute=1)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shared"):
        uw.BudgetEngine(budgets, store, shared="http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="shared"):
        uw.BudgetEngine(budgets, store, shared="redis://127.0.0.1:notaport")
    store.close()


@pytest.mark.slow
def test_redis_away_denies_fast_or_falls_back(
    tmp_path: Path, clock: uw.ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    try:
        store = ledger(tmp_path, "down", clock)
        budgets = [uw.Budget("org", 10.0)]
        deny = uw.RedisRateLimiter(uw.RateLimits(), server.url, timeout=0.2)
        local = uw.RedisRateLimiter(
            uw.RateLimits(), server.url, timeout=0.2, on_unavailable="local", local_processes=2
        )
        denying = uw.BudgetEngine(budgets, store, clock=clock, shared=deny)
        falling_back = uw.BudgetEngine(budgets, store, clock=clock, shared=local)
        held = denying.check(estimated_cost=4.0)
        server.stop()
        with pytest.raises(uw.StoreError, match="Redis"):
            denying.check(estimated_cost=1.0)
        with caplog.at_level(logging.WARNING, logger="usagewarden"):
            denying.settle(held, 4.0)  # the call happened: logged, not raised
            check = falling_back.check(estimated_cost=9.0)
        assert "could not settle" in caplog.text
        assert "Redis" in caplog.text and "kept in this process" in caplog.text
        with pytest.raises(uw.BudgetExceeded):
            falling_back.check(estimated_cost=2.0)  # still enforced, here
        falling_back.settle(check, 9.0)
        now = dt.datetime.fromtimestamp(clock.now(), UTC)
        store.record(uw.UsageEvent("bot", "c", cost=9.0, timestamp=now))
        server.start()  # empty: what was in flight is gone with it
        deadline = time.monotonic() + 20
        while not deny.health()["ok"]:
            assert time.monotonic() < deadline, "never reconnected"
            time.sleep(0.2)  # the connection manager reconnects with backoff
        with pytest.raises(uw.BudgetExceeded) as refused:
            denying.check(estimated_cost=2.0)
        assert (refused.value.spent, refused.value.reserved) == (9.0, 0.0), "reseeded"
        store.close()
    finally:
        server.stop()


LIMIT = 50.0
PROCESSES = 4
CALLS = 50


def estimate_of(worker: int, i: int) -> float:
    return 0.5 + ((worker * 7 + i) % 3) * 0.25


def budget_worker(url: str, directory: str, worker: int, start: Any, results: Any) -> None:
    """One process: 50 concurrent calls; each admitted one settles at its estimate."""
    store = uw.SQLiteStore(Path(directory) / f"w{worker}.db", durability="commit")
    engine = uw.BudgetEngine([uw.Budget("org", LIMIT)], store, shared=url)
    threads_ready = threading.Barrier(CALLS)
    checked = threading.Barrier(CALLS)
    committed: list[tuple[int, int, float]] = []
    refusals: list[tuple[float, float, float]] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        estimate = estimate_of(worker, i)
        threads_ready.wait()
        try:
            check = engine.check(estimated_cost=estimate)
        except uw.BudgetExceeded as exc:
            with lock:
                refusals.append((exc.spent, exc.reserved, estimate))
            checked.wait()
            return
        reserved_by = time.time_ns()
        checked.wait()
        released_from = time.time_ns()
        engine.settle(check, estimate)
        with lock:
            committed.append((reserved_by, released_from, estimate))

    start.wait()
    threads = [threading.Thread(target=call, args=(i,)) for i in range(CALLS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    results.put((committed, refusals))


@pytest.mark.slow
def test_four_processes_never_commit_more_than_the_limit(tmp_path: Path, redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=budget_worker, args=(redis_url, str(tmp_path), w, start, results))
        for w in range(PROCESSES)
    ]
    for p in processes:
        p.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(30)
        assert p.exitcode == 0
    committed = [c for done, _ in outcomes for c in done]
    refusals = [r for _, refused in outcomes for r in refused]
    assert len(committed) + len(refusals) == PROCESSES * CALLS
    assert sum(1 for done, _ in outcomes if done) >= 2, "several processes were admitted"
    # Replay in the order the checks returned: each reservation counts its
    # estimate, and its cost (the same) stays once settled.
    held = 0.0
    for _, estimate in sorted((at, estimate) for at, _, estimate in committed):
        held += estimate
        assert held <= LIMIT + 1e-9, "spend and estimates in flight went over the limit"
    spent = sum(estimate for _, _, estimate in committed)
    # Every refusal was due: the call did not fit beside what was committed.
    assert refusals and all(s + r + e > LIMIT and s + r <= LIMIT for s, r, e in refusals)
    assert LIMIT - 1.0 < spent <= LIMIT, "filled to within one call, never past"
    fresh = uw.BudgetEngine(
        [uw.Budget("org", LIMIT)], ledger(tmp_path, "check", None), shared=redis_url
    )
    with pytest.raises(uw.BudgetExceeded) as refused:
        fresh.check(estimated_cost=1.0)
    assert refused.value.spent == pytest.approx(spent) and refused.value.reserved == 0.0
