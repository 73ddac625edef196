"""FIFO across processes on one RedisRateLimiter key: a waiter holds a ticket
in a queue in Redis, nobody behind it is admitted first, and a holder that
dies stops blocking the queue once its ticket's lease runs out.

Real processes on a real server, on the server's clock (``TIME``): ticket
leases run on it even under an injected clock, so what is proven here needs
real time. Admissions are replayed by their server timestamps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import usagewarden as uw
from conftest import is_queued, wait_until

pytestmark = pytest.mark.slow

#: How long a ticket holds its place without a refresh (``TICKET_LEASE`` in
#: src/limiter/redis/waiting.rs, documented in the README).
TICKET_LEASE = 5.0
LIMIT = 100
LIMITS = f"uw.RateLimits(requests_per_minute=1000, total_tokens_per_minute={LIMIT})"

#: A large request: it waits for the whole limit.
LARGE = f"""
import sys, usagewarden as uw
limiter = uw.RedisRateLimiter({LIMITS}, sys.argv[1])
print("waiting", flush=True)
reservation = limiter.acquire_blocking("shared", input_tokens={LIMIT}, timeout=60)
print(repr(reservation.at), flush=True)
if sys.argv[2] == "give-back":
    sys.stdin.readline()
    reservation.cancel()
    limiter.close()
    print("gave back", flush=True)
"""

#: A stream of small requests by try_acquire; it says when FIFO first refused it.
SPINNER = f"""
import sys, usagewarden as uw
limiter = uw.RedisRateLimiter({LIMITS}, sys.argv[1])
admitted, told = [], False
while len(admitted) < 10:
    decision = limiter.try_acquire("shared", input_tokens=5)
    if decision.reservation is not None:
        admitted.append(decision.reservation.at)
    elif not told:
        print("refused", flush=True)
        told = True
print(" ".join(repr(a) for a in admitted), flush=True)
"""

#: A stream of small requests by await acquire; its first wait must time out.
WAITER = f"""
import asyncio, sys, usagewarden as uw
limiter = uw.RedisRateLimiter({LIMITS}, sys.argv[1])
async def main():
    try:
        await limiter.acquire("shared", input_tokens=5, timeout=0.3)
    except uw.RateLimitExceeded:
        print("refused", flush=True)
    admitted = []
    for _ in range(10):
        admitted.append((await limiter.acquire("shared", input_tokens=5, timeout=60)).at)
    print(" ".join(repr(a) for a in admitted), flush=True)
asyncio.run(main())
"""


def start(tmp_path: Path, name: str, source: str, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / f"{name}.py"
    script.write_text(source)
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def line_of(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line, f"process ended early with {process.wait(10)}"
    return line


def limiter_on(url: str) -> uw.RedisRateLimiter:
    return uw.RedisRateLimiter(
        uw.RateLimits(requests_per_minute=1000, total_tokens_per_minute=LIMIT), url
    )


def queue_a_large_waiter(
    url: str, tmp_path: Path, then: str
) -> tuple[uw.RedisRateLimiter, uw.Reservation, subprocess.Popen[str]]:
    """Half the limit held here (so every small request fits), and a process
    waiting for the whole limit, its ticket queued in Redis."""
    limiter = limiter_on(url)
    held = limiter.try_acquire("shared", input_tokens=LIMIT // 2).reservation
    assert held is not None
    large = start(tmp_path, "large", LARGE, url, then)
    assert line_of(large) == "waiting"
    wait_until(lambda: is_queued(limiter, "shared"), timeout=30)
    return limiter, held, large


def admitted_and_given_back(large: subprocess.Popen[str]) -> float:
    """When the large request was admitted (server time); then it gives it back."""
    at = float(line_of(large))
    assert large.stdin is not None
    large.stdin.write("\n")
    large.stdin.flush()
    assert line_of(large) == "gave back"
    return at


def test_a_large_waiter_is_admitted_before_small_ones_from_other_processes(
    redis_url, tmp_path: Path
) -> None:
    limiter, held, large = queue_a_large_waiter(redis_url, tmp_path, "give-back")
    processes = [large]
    try:
        # Arriving after it, from two more processes: refused although they fit.
        small = [start(tmp_path, "spinner", SPINNER, redis_url)]
        small.append(start(tmp_path, "waiter", WAITER, redis_url))
        processes += small
        for process in small:
            assert line_of(process) == "refused"
        assert large.poll() is None, "the large request is still waiting"
        held.cancel()  # the whole limit is free: the head goes first
        large_at = admitted_and_given_back(large)
        small_at = [float(a) for process in small for a in line_of(process).split()]
        for process in processes:
            assert process.wait(30) == 0
    finally:
        for process in processes:
            process.kill()
    assert len(small_at) == 20
    assert large_at < min(small_at), "nobody behind the large request went first"
    # Replay: the large request was given back, the small ones fill the limit exactly.
    assert 5 * len(small_at) == LIMIT
    assert limiter.usage("shared").input_tokens == LIMIT


def test_a_killed_ticket_holder_stops_blocking_the_queue_within_its_lease(
    redis_url, tmp_path: Path
) -> None:
    limiter, _, holder = queue_a_large_waiter(redis_url, tmp_path, "keep")
    try:
        os.kill(holder.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert holder.wait(10) == -signal.SIGKILL
    finally:
        holder.kill()
    # Its ticket is still at the head: a small request that fits is refused...
    refused = limiter.try_acquire("shared", input_tokens=5)
    assert not refused and refused.retry_after is not None
    # ...until the ticket's lease runs out; a waiter behind it is then admitted.
    reservation = limiter.acquire_blocking("shared", input_tokens=5, timeout=3 * TICKET_LEASE)
    blocked_for = time.monotonic() - killed_at
    assert blocked_for <= TICKET_LEASE + 1.0
    assert reservation.usage.input_tokens == 5
    assert not is_queued(limiter, "shared")
    assert limiter.usage("shared").input_tokens == LIMIT // 2 + 5


def test_a_live_waiter_keeps_its_place_past_its_lease(redis_url, tmp_path: Path) -> None:
    limiter, held, large = queue_a_large_waiter(redis_url, tmp_path, "give-back")
    try:
        # Longer than a lease: the waiter's refreshes keep its ticket at the head.
        with pytest.raises(uw.RateLimitExceeded):
            limiter.acquire_blocking("shared", input_tokens=5, timeout=1.5 * TICKET_LEASE)
        assert large.poll() is None
        assert is_queued(limiter, "shared")
        held.cancel()
        large_at = admitted_and_given_back(large)
        assert large.wait(30) == 0
    finally:
        large.kill()
    assert large_at > 0
    assert not is_queued(limiter, "shared")
