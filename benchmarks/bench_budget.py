"""Budget check cost from Python: ``BudgetEngine.check`` (reserve the
estimate on every covering budget) and ``settle``, against the target of
5 µs per check (the reference product aimed at 5 ms).

    python benchmarks/bench_budget.py [--quick]

Three budgets cover each call (global, per agent, per model), so a check
takes the lock once and updates three slots. The same engine with
``shared=`` (a ``RedisRateLimiter`` on a throwaway redis-server) runs side by
side, next to a PING over the limiter's own connection (the round-trip
floor): each shared check and settle is one script call. Medians of several
samples; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import usagewarden as uw
from bench_redis import start_redis


def sample(engine: uw.BudgetEngine, n: int) -> tuple[float, float]:
    checks = []
    started = time.perf_counter()
    for _ in range(n):
        checks.append(engine.check("gpt-4o", agent_id="bot", estimated_cost=0.001))
    checked = time.perf_counter()
    for check in checks:
        engine.settle(check, 0.0009)
    settled = time.perf_counter()
    return (checked - started) / n * 1e6, (settled - checked) / n * 1e6


def ping_us(limiter: uw.RedisRateLimiter, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        limiter._ping()
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, samples = (5_000, 5) if args.quick else (50_000, 9)
    shared_n = n // 10
    with tempfile.TemporaryDirectory() as scratch:
        store = uw.SQLiteStore(Path(scratch) / "budget.db")
        budgets = [
            uw.Budget("org", 1e9),
            uw.Budget("per-agent", 1e9, scope="agent", period="daily", tz="Europe/Paris"),
            uw.Budget("per-model", 1e9, scope="model", action="downgrade", downgrade_to="mini"),
        ]
        engine = uw.BudgetEngine(budgets, store)
        sample(engine, 1_000)  # first sight of each slot reads the ledger once
        results = [sample(engine, n) for _ in range(samples)]
        shared_results: list[tuple[float, float]] = []
        pings: list[float] = []
        if shutil.which("redis-server") is not None:
            server, url = start_redis(scratch)
            try:
                limiter = uw.RedisRateLimiter(uw.RateLimits(requests_per_minute=1), url)
                shared = uw.BudgetEngine(budgets, store, shared=limiter)
                sample(shared, 100)
                for _ in range(samples):
                    pings.append(ping_us(limiter, shared_n))
                    shared_results.append(sample(shared, shared_n))
            finally:
                server.terminate()
                server.wait()
        else:
            print("redis-server is not installed (Debian: apt-get install -y redis-server): "
                  "the shared engine is not measured")  # fmt: skip
        store.close()
    check = statistics.median(r[0] for r in results)
    settle = statistics.median(r[1] for r in results)
    print(f"budget check, 3 covering budgets: median {check:.2f} µs over {samples}×{n:,} calls")
    print(f"budget settle:                    median {settle:.2f} µs")
    verdict = "met" if check <= 5.0 else "MISSED"
    print(f"target check <= 5 µs: {verdict} ({5000 / check:,.0f}× under the reference's 5 ms)")
    if shared_results:
        ping = statistics.median(pings)
        shared_check = statistics.median(r[0] for r in shared_results)
        shared_settle = statistics.median(r[1] for r in shared_results)
        print(f"shared (Redis), check:            median {shared_check:.2f} µs over "
              f"{samples}×{shared_n:,} calls ({shared_check / ping:.2f}× a PING)")  # fmt: skip
        print(f"shared (Redis), settle:           median {shared_settle:.2f} µs "
              f"({shared_settle / ping:.2f}× a PING)")  # fmt: skip
        print(f"PING over the limiter's connection: median {ping:.2f} µs")


if __name__ == "__main__":
    main()
