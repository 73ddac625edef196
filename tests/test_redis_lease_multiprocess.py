"""Four processes in lease mode on one key: every admitted entry is replayed by
its timestamp on the Redis server's clock, and no window ever holds more than
a limit, although each process admits from its slices without a round trip.

Why that holds: a slice counts in Redis from when it is taken until one window
after its end, and every admission from it falls within its time. Take any
window and the slice taken last among those that admitted in it: when it was
taken, Redis still counted every other such slice (each admitted inside the
window, so it counts until after the window ends), and granted it only what
was left of the limit. The replay checks the outcome, not the argument.

Real time passes here (the server's clock), with per-second limits so that
windows roll many times over during the run.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest
import usagewarden as uw
from test_redis_multiprocess import MICROS, PROCESSES, tokens_of, worst_window

pytestmark = pytest.mark.slow

RPS, TPS = 400, 20_000
SECONDS = 3.0


def lease_worker(args: tuple[str, int, float]) -> list[tuple[int, int]]:
    url, worker, fraction = args
    limiter = uw.RedisRateLimiter(
        uw.RateLimits(requests_per_second=RPS, total_tokens_per_second=TPS),
        url,
        lease=uw.Lease(fraction=fraction, seconds=0.1),
    )
    admitted = []
    i = 0
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        tokens = tokens_of(worker, i)
        i += 1
        decision = limiter.try_acquire("shared", input_tokens=tokens)
        if decision.reservation is not None:
            # On the server's clock: when the slice was taken there, plus the
            # time since on this host (never before the true moment, always
            # before the slice ends).
            admitted.append((round(decision.reservation.at * MICROS), tokens))
    limiter.close()
    return admitted


@pytest.mark.parametrize("fraction", [0.05, 0.25])
def test_four_lease_processes_never_exceed_a_window(redis_url, fraction: float) -> None:
    args = [(redis_url, w, fraction) for w in range(PROCESSES)]
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        parts = pool.map(lease_worker, args)
    log = [entry for part in parts for entry in part]
    requests, tokens = worst_window(log, MICROS)
    assert requests <= RPS and tokens <= TPS
    # Every process admitted, and together they used most of some window:
    # slices are returned, not hoarded.
    # Slices are not fair between processes (a process that starts late on a
    # loaded machine can find every slice of the window taken), but none is
    # hoarded: more than one process was admitted.
    assert sum(1 for part in parts if part) >= 2, "slices were shared between processes"
    assert requests > RPS / 2 or tokens > TPS / 2
    assert len(log) > RPS * SECONDS / 4
