"""MeteringMiddleware on the request path: it queues each event synchronously
(no task, no thread per request), so the server's event loop stays responsive
under load; a full queue is counted, never waited on, and every event it
accepted is committed."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import usagewarden as uw
from fastapi import FastAPI
from http_helpers import serving
from ledger_helpers import popen_python, run_python
from usagewarden.fastapi import MeteringMiddleware, RateLimitMiddleware

REQUESTS = 1_000

LOAD = """
import httpx
url, n = sys.argv[1], int(sys.argv[2])
with httpx.Client(timeout=30) as client:
    statuses = [client.get(url).status_code for _ in range(n)]
print(json.dumps(statuses), flush=True)
"""


class LagMonitor:
    """Samples how late the loop wakes a task that asks to sleep 1 ms."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.running = True

    async def run(self) -> None:
        while self.running:
            asked = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append(time.perf_counter() - asked - 0.001)

    def p99(self, since: int) -> float:
        return statistics.quantiles(self.lags[since:], n=100)[98]


def app_for(
    monitor: LagMonitor, store: uw.SQLiteStore | uw.AsyncSQLiteStore | None = None
) -> FastAPI:
    """One route; with a store, rate-limited and metered."""
    app = FastAPI()
    tasks: set[asyncio.Task[None]] = set()

    @app.on_event("startup")
    async def start_monitor() -> None:
        tasks.add(asyncio.get_running_loop().create_task(monitor.run()))

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    if store is not None:
        limiter = uw.RateLimiter(uw.RateLimits(requests_per_second=1_000_000))
        app.add_middleware(MeteringMiddleware, store=store, agent_id="api")
        app.add_middleware(RateLimitMiddleware, limiter=limiter)
    return app


def loaded_p99(app: FastAPI, monitor: LagMonitor) -> float:
    """The loop lag p99 while a client in another process sends REQUESTS requests."""
    with serving(app) as (host, port):
        since = len(monitor.lags)
        done = run_python(LOAD, f"http://{host}:{port}/items/1", REQUESTS, timeout=300)
        monitor.running = False
    assert json.loads(done.stdout) == [200] * REQUESTS
    assert len(monitor.lags) - since > 100, "the monitor ran while the requests were served"
    return monitor.p99(since)


#: Paired measurements a loop-lag check may take: another process's burst
#: on this 2-core machine can stall one, while metering that blocked the
#: loop would fail every pair.
ATTEMPTS = 3


@pytest.mark.slow
@pytest.mark.parametrize("store_class", [uw.SQLiteStore, uw.AsyncSQLiteStore])
def test_loop_lag_under_1000_metered_requests_stays_below_2ms_p99(
    tmp_path: Path, store_class: type[uw.SQLiteStore] | type[uw.AsyncSQLiteStore]
) -> None:
    """2 ms over what the same machine shows for the bare app at that moment
    (on a quiet machine the bare app's own p99 is well under a millisecond;
    a busy one adds the same to both), in one of ``ATTEMPTS`` pairs."""
    pairs: list[tuple[float, float]] = []
    for attempt in range(ATTEMPTS):
        monitor = LagMonitor()
        bare = loaded_p99(app_for(monitor), monitor)
        store = store_class(tmp_path / f"lag-{attempt}.db")
        monitor = LagMonitor()
        metered = loaded_p99(app_for(monitor, store), monitor)
        sync = store if isinstance(store, uw.SQLiteStore) else store.blocking()
        sync.flush()
        assert sync.stats().events == REQUESTS
        sync.close()
        pairs.append((metered, bare))
        if metered < bare + 0.002:
            return
    shown = ", ".join(f"{m * 1e3:.2f} ms (bare {b * 1e3:.2f} ms)" for m, b in pairs)
    pytest.fail(f"loop lag p99 metered, in {ATTEMPTS} attempts: {shown}")


async def test_metering_starts_no_task_and_no_thread_per_request(tmp_path: Path) -> None:
    """Counted, not timed: the tasks the loop creates and the threads alive
    while 200 requests are metered, against the same app unmetered."""
    store = uw.AsyncSQLiteStore(tmp_path / "tasks.db")
    loop = asyncio.get_running_loop()
    created: list[int] = []
    default_factory = loop.get_task_factory()

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        created.append(1)
        if default_factory is not None:
            return default_factory(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def tasks_and_threads(app: Any) -> tuple[int, set[str]]:
        created.clear()
        threads: set[str] = set()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for i in range(200):
                assert (await client.get(f"/items/{i}")).status_code == 200
                threads.update(t.name for t in threading.enumerate())
        return len(created), threads

    loop.set_task_factory(counting_factory)
    try:
        bare = await tasks_and_threads(app_for(LagMonitor()))
        metered = await tasks_and_threads(app_for(LagMonitor(), store))
    finally:
        loop.set_task_factory(default_factory)
    assert metered[0] == bare[0], "metering created tasks of its own"
    assert metered[1] - bare[1] <= {"usagewarden-writer"}, "metering started threads"
    await store.flush()
    assert (await store.stats()).events == 200
    await store.close()


LOCK_HOLDER = """
import sqlite3
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
con.execute("COMMIT")
print("released", flush=True)
"""


async def test_a_full_queue_is_counted_not_waited_on_and_what_was_queued_is_committed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds the database while the queue is filled to the
    brim: metered requests are answered at once and the middleware counts the
    events it could not queue. Every event it did queue is committed."""
    caplog.set_level(logging.WARNING, logger="usagewarden")
    path = tmp_path / "full.db"
    store = uw.SQLiteStore(path)
    store.record(uw.UsageEvent("seed", "c"))
    store.flush()
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    metered = MeteringMiddleware(app, store, agent_id="api")

    holder = popen_python(LOCK_HOLDER, path, stdin=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "locked"
    try:
        filler = 0
        while store.record_nowait(uw.UsageEvent("filler", "c", request_id=f"f{filler}")):
            filler += 1
        transport = httpx.ASGITransport(app=metered)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            started = time.perf_counter()
            statuses = [(await client.get("/ping")).status_code for _ in range(50)]
            elapsed = time.perf_counter() - started
        assert statuses == [200] * 50
        assert elapsed < 10, "requests waited on the full queue"
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)
    store.flush()
    metered_events = len(store.query(agent_id="api"))
    assert metered_events + metered.dropped == 50
    assert metered.dropped > 0
    assert store.stats().events == 1 + filler + metered_events
    assert "queue is full" in caplog.text
    store.close()
