"""Shared fixtures and helpers for the usagewarden test suite.

Every time-dependent test drives a ``uw.ManualClock``: advancing it wakes the
waiters of every limiter that uses it, so no test sleeps to make time pass.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pytest

# A development build of the extension warns at import that it is slow; that
# is about how it was built, not about anything a test checks.
warnings.filterwarnings(
    "ignore", message="usagewarden was built in debug mode", category=RuntimeWarning
)

import usagewarden as uw  # noqa: E402

# The throwaway redis-server fixtures (``redis_server``, ``redis_url``,
# ``redis_tls_server``) and the TLS test certificates (``tls_files``).
pytest_plugins = ["tls_certs", "redis_server"]

MAX_COUNT = 2**63 - 1
#: What an unlimited cost field of ``remaining`` reads (2**63 - 1 nano-USD, in USD).
MAX_COST = MAX_COUNT / 1e9
NS = 1_000_000_000

USAGE_FIELDS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost",
)

#: Real-time safety net for waits that should complete at once (never needed
#: for a passing test; it only turns a hang into a failure).
GRACE = 10.0


@pytest.fixture
def clock() -> uw.ManualClock:
    return uw.ManualClock()


#: The limiter backends every limiter contract test runs on.
BACKENDS = ("memory", "redis", "redis-lease")

#: The lease of the "redis-lease" backend: the whole limit in one slice, so one
#: process admits what an exact limiter would, from its slice.
CONTRACT_LEASE = uw.Lease(fraction=1.0, seconds=1.0)

#: Why a test of exact timings skips lease mode.
SLICE_ENDS_LATER = (
    "a slice counts until one window after its end, the lease's seconds after an exact entry"
)


@pytest.fixture(params=BACKENDS)
def make_limiter(request: pytest.FixtureRequest, clock: uw.ManualClock) -> Any:
    """``make_limiter(requests_per_minute=3, per_key={...})`` on the test's clock,
    once in-process and once on a real redis-server (one suite, two backends).
    A test marked ``in_process("why")`` runs on the in-process limiter only;
    one marked ``exact("why")`` skips lease mode, whose slices count as used."""
    backend = request.param
    marker = request.node.get_closest_marker("in_process")
    if backend != "memory" and marker is not None:
        pytest.skip(f"in-process only: {marker.args[0]}")
    marker = request.node.get_closest_marker("exact")
    if backend == "redis-lease" and marker is not None:
        pytest.skip(f"exact limiters only: {marker.args[0]}")
    url = request.getfixturevalue("redis_url") if backend != "memory" else None
    lease = CONTRACT_LEASE if backend == "redis-lease" else None

    def make(*, per_key: dict[str, uw.RateLimits] | None = None, **limits: Any) -> uw.Limiter:
        if url is None:
            return uw.RateLimiter(uw.RateLimits(**limits), per_key=per_key, clock=clock)
        return uw.RedisRateLimiter(
            uw.RateLimits(**limits), url, per_key=per_key, clock=clock, lease=lease
        )

    return make


def usage(**fields: Any) -> uw.Usage:
    return uw.Usage(**fields)


def ns(seconds: float) -> int:
    """Seconds as read from the library (float) back to integer nanoseconds."""
    return round(seconds * NS)


def nanos(usd: float) -> int:
    return round(usd * NS)


async def spin(times: int = 5) -> None:
    """Let every ready task run ``times`` loop iterations (no real time passes)."""
    for _ in range(times):
        await asyncio.sleep(0)


async def result_of(task: asyncio.Future[Any], timeout: float = GRACE) -> Any:
    """Await a task that must already be able to finish."""
    return await asyncio.wait_for(task, timeout)


async def eventually(predicate: Callable[[], bool], timeout: float = GRACE) -> None:
    """Let the loop run (and real time pass) until ``predicate`` holds; fail if it
    never does. For effects handed to the limiter's own threads, such as a
    cancelled wait leaving its queue."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the grace period")
        await asyncio.sleep(0.001)


def is_queued(limiter: uw.RateLimiter, key: Any = "default") -> bool:
    """True while a waiter is queued on ``key``: an empty request always fits
    a limiter, so only FIFO fairness can refuse it."""
    return not limiter.check(key, requests=0)


def wait_until(predicate: Callable[[], bool], timeout: float = GRACE) -> None:
    """Wait (real time) for another *thread* to reach a state; fail if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the grace period")
        time.sleep(0.001)


class Worker(threading.Thread):
    """A thread that runs ``fn`` and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            self.error = exc

    def outcome(self, timeout: float = GRACE) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "worker thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def total(usages: Iterable[uw.Usage]) -> uw.Usage:
    out = uw.Usage()
    for u in usages:
        out = out + u
    return out


# --- the ledger backends: one contract suite over SQLite and PostgreSQL ---------------------

from postgres_cluster import postgres_cluster, postgres_tls_cluster  # noqa: E402, F401


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """Opens the test's stores on each backend in turn (``ledger_helpers.LedgerBackend``)."""
    from ledger_helpers import LedgerBackend, PostgresBackend

    if request.param == "postgres":
        return PostgresBackend(tmp_path, request.getfixturevalue("postgres_cluster"))
    return LedgerBackend(tmp_path)
