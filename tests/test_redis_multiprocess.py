"""Several processes on one RedisRateLimiter key: every admitted entry is
replayed by its server timestamp, and no window ever holds more than a limit.

The processes run on the server's clock (``TIME``): this is the one place
where real time passes, because what is proven is what happens across
processes on a real server.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence

import pytest
import usagewarden as uw

pytestmark = pytest.mark.slow

PROCESSES = 4
MICROS = 1_000_000


def tokens_of(worker: int, i: int) -> int:
    return (worker * 31 + i * 17) % 100


def try_acquire_worker(args: tuple[str, int, int, int, int]) -> list[tuple[int, int]]:
    url, worker, attempts, rpm, tpm = args
    limiter = uw.RedisRateLimiter(
        uw.RateLimits(requests_per_minute=rpm, total_tokens_per_minute=tpm), url
    )
    admitted = []
    for i in range(attempts):
        tokens = tokens_of(worker, i)
        decision = limiter.try_acquire("shared", input_tokens=tokens)
        if decision.reservation is not None:
            admitted.append((round(decision.reservation.at * MICROS), tokens))
    return admitted


def acquire_worker(args: tuple[str, int, int, int, int]) -> list[tuple[int, int]]:
    url, worker, calls, rps, tps = args
    limiter = uw.RedisRateLimiter(
        uw.RateLimits(requests_per_second=rps, total_tokens_per_second=tps), url, timeout=5
    )

    async def run() -> list[tuple[int, int]]:
        admitted = []
        for i in range(calls):
            tokens = tokens_of(worker, i)
            reservation = await limiter.acquire("shared", input_tokens=tokens, timeout=60)
            admitted.append((round(reservation.at * MICROS), tokens))
        return admitted

    return asyncio.run(run())


def run_workers(worker: object, args: Sequence[tuple[str, int, int, int, int]]) -> list:
    with multiprocessing.get_context("spawn").Pool(len(args)) as pool:
        return [entry for part in pool.map(worker, args) for entry in part]  # type: ignore[arg-type]


def worst_window(log: list[tuple[int, int]], window_us: int) -> tuple[int, int]:
    """The most requests and tokens any window (end - window, end] holds."""
    log = sorted(log)
    start, requests, tokens = 0, 0, 0
    most_requests, most_tokens = 0, 0
    for end in range(len(log)):
        requests += 1
        tokens += log[end][1]
        while log[start][0] + window_us <= log[end][0]:
            requests -= 1
            tokens -= log[start][1]
            start += 1
        most_requests = max(most_requests, requests)
        most_tokens = max(most_tokens, tokens)
    return most_requests, most_tokens


def test_four_processes_of_try_acquire_admit_exactly_the_limit(redis_url) -> None:
    rpm, tpm = 1_000, 200_000
    args = [(redis_url, w, 5_000, rpm, tpm) for w in range(PROCESSES)]
    log = run_workers(try_acquire_worker, args)
    # A burst well inside one minute: exactly the request limit is admitted.
    assert len(log) == rpm
    requests, tokens = worst_window(log, 60 * MICROS)
    assert requests <= rpm and tokens <= tpm
    assert max(at for at, _ in log) - min(at for at, _ in log) < 60 * MICROS


def test_four_processes_of_try_acquire_stay_inside_the_token_limit(redis_url) -> None:
    rpm, tpm = 100_000, 30_000
    args = [(redis_url, w, 5_000, rpm, tpm) for w in range(PROCESSES)]
    log = run_workers(try_acquire_worker, args)
    requests, tokens = worst_window(log, 60 * MICROS)
    assert tokens <= tpm
    # The token limit is what refused: it is nearly full (a refused request
    # needed at most 99 more tokens than were left).
    assert tokens > tpm - 100


def test_four_processes_of_acquire_wait_and_never_exceed_a_window(redis_url) -> None:
    # Per-second limits, so that 800 waits take seconds rather than minutes.
    rps, tps = 200, 10_000
    args = [(redis_url, w, 200, rps, tps) for w in range(PROCESSES)]
    log = run_workers(acquire_worker, args)
    assert len(log) == PROCESSES * 200, "every acquire was admitted"
    requests, tokens = worst_window(log, MICROS)
    assert requests <= rps and tokens <= tps
    assert requests == rps or tokens > tps - 100, "the limits were reached"
