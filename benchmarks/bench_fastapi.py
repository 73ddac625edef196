"""Benchmark usagewarden's HTTP API: ``usage_router`` served by a real uvicorn server.

The server runs in its own process (``multiprocessing``, spawn), listening on a free port
of 127.0.0.1, and serves ``usage_router(AsyncSQLiteStore(path), auth=api_key_auth({...}))``
under ``/usage`` with one API key (namespace ``default``, scopes read and write). The client
is this process: one ``httpx.Client`` (keep-alive, one connection), requests sent one after
the other (no concurrency), each timed from before ``post``/``get`` to the response read.

1. ``POST /usage/batch`` with 1,000 distinct events per request (fresh ``request_id`` for
   every event, explicit timestamps), into a fresh database, after a few untimed warm-up
   requests. Each body is encoded before its clock starts.
2. ``GET /usage/summary`` over the 1,000,000-event store that ``bench_ledger.py`` builds and
   caches (``/tmp/usagewarden-bench-1m.db``; built here with its builder if missing), whose
   events are all in namespace ``default``, the principal's: unfiltered (all 1,000,000
   events), with ``agent_id`` (one of 50 agents, ~20,000 events), and with ``agent_id`` plus
   one day (~670 events, the query ``bench_ledger.py`` times in-process).
3. ``GET /bench/ping``, a trivial route of the benchmark app: the HTTP floor (client,
   loopback, uvicorn, FastAPI) that every figure above includes.

Inside the server, a benchmark-only task sleeps 5 ms in a loop and records how late each
wake-up is (event-loop lag), and a benchmark-only ASGI wrapper records the server time of
each ``/usage`` request (from the app being called to its last body byte being sent). Both
are read, and reset, through ``GET /bench/stats`` (a route of the benchmark app, not of the
library) before and after each phase; an idle second is measured first as the lag baseline.

4. Where the time of a batch request goes, in-process (no HTTP): the router's own steps on
   the same bodies, one after the other: JSON parse alone (``pydantic_core.from_json``, for
   reference), the pydantic models plus ``UsageEvent(...)`` per item (for reference: the
   path of bodies the Rust reader declines, which names each bad field), ``_events`` (what
   the route does: the body read into events in Rust), ``store.record_batch`` (the call,
   which blocks the loop, and the await), and the JSON response. ``--profile`` adds a
   cProfile listing of batch requests sent through the whole ASGI app in-process.

Run it from the repository root, after building the extension into the environment::

    pip install -e '.[fastapi,bench]'
    python benchmarks/bench_fastapi.py              # full run, about 2 minutes
    python benchmarks/bench_fastapi.py --quick      # short run, well under a minute
    python benchmarks/bench_fastapi.py --profile    # also a cProfile of batch requests
    python benchmarks/bench_fastapi.py --gc-freeze  # the server calls gc.freeze() once up

The client's garbage collector is paused while timing; the server's is not, and its
collections (count, full ones, longest) are reported per phase: with FastAPI and pydantic
imported a full collection takes tens of milliseconds, all of it on the event loop. The
server runs uvicorn's defaults for what is installed (h11 or httptools, asyncio or uvloop;
printed), with the access log off. On a machine with few cores the client, the server's
event loop and the store's Rust threads compete for them: the header says how many there are.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import math
import multiprocessing
import os
import platform
import pstats
import socket
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

with warnings.catch_warnings():
    # A debug build warns on import; the header reports the build type instead.
    warnings.simplefilter("ignore", RuntimeWarning)
    import usagewarden as uw
    from usagewarden.fastapi import (
        SCOPE_READ,
        SCOPE_WRITE,
        Principal,
        api_key_auth,
        store_lifespan,
        usage_router,
    )

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ledger  # noqa: E402  (the cached read store, its builder, the build banner)

TARGET_BATCH_P50_MS = 15.0
TARGET_SUMMARY_P50_MS = 10.0

BATCH_EVENTS = 1_000
READ_EVENTS = 1_000_000  # what the targets are set for
NAMESPACE = "default"  # the namespace of every event bench_ledger's builder records
API_KEY = "bench-key-0123456789abcdef"
PRINCIPAL = Principal("bench", namespace=NAMESPACE, scopes=frozenset({SCOPE_READ, SCOPE_WRITE}))
LAG_INTERVAL_S = 0.005
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4")


# --------------------------------------------------------------------------------------
# The server process.
# --------------------------------------------------------------------------------------


@dataclass
class ServerStats:
    """Event-loop lag samples, /usage request times and garbage-collector pauses
    (milliseconds)."""

    lag_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    gc_ms: list[float] = field(default_factory=list)
    gc_full: int = 0  # generation-2 collections
    _gc_start: float = 0.0

    def snapshot(self, reset: bool) -> dict[str, Any]:
        out = {
            "lag_ms": list(self.lag_ms),
            "server_ms": list(self.server_ms),
            "gc_ms": list(self.gc_ms),
            "gc_full": self.gc_full,
        }
        if reset:
            self.lag_ms.clear()
            self.server_ms.clear()
            self.gc_ms.clear()
            self.gc_full = 0
        return out

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """A ``gc.callbacks`` entry: times every collection."""
        if phase == "start":
            self._gc_start = time.perf_counter()
            return
        self.gc_ms.append((time.perf_counter() - self._gc_start) * 1_000)
        self.gc_full += info["generation"] == 2


async def watch_lag(stats: ServerStats) -> None:
    """Sleeps ``LAG_INTERVAL_S`` in a loop; records how late each wake-up is."""
    clock = time.perf_counter
    while True:
        before = clock()
        await asyncio.sleep(LAG_INTERVAL_S)
        stats.lag_ms.append(max(0.0, (clock() - before - LAG_INTERVAL_S) * 1_000))


class ServerTimer:
    """ASGI wrapper: the time from the app being called for a ``/usage`` request (headers
    parsed) to its last body byte being handed to the server."""

    def __init__(self, app: Any, stats: ServerStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/usage"):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.stats.server_ms.append((time.perf_counter() - start) * 1_000)

        await self.app(scope, receive, timed_send)


def build_app(db_path: str, stats: ServerStats | None = None, gc_freeze: bool = False) -> FastAPI:
    """The benchmark app: the library's router, plus /bench routes (and, with ``stats``,
    the lag watcher) that are the benchmark's own. ``gc_freeze``: ``gc.freeze()`` once
    started, so that full collections no longer traverse the objects built at import and
    startup (pydantic's validators among them), a mitigation to compare against."""
    store = uw.AsyncSQLiteStore(db_path)
    close_store = store_lifespan(store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = None if stats is None else asyncio.create_task(watch_lag(stats))
        if gc_freeze:
            gc.collect()
            gc.freeze()
        try:
            async with close_store(app):
                yield
        finally:
            if watcher is not None:
                watcher.cancel()

    app = FastAPI(lifespan=lifespan)
    app.include_router(usage_router(store, auth=api_key_auth({API_KEY: PRINCIPAL})))

    @app.get("/bench/ping")
    async def ping() -> JSONResponse:
        loop = type(asyncio.get_running_loop())
        return JSONResponse({"ok": True, "loop": f"{loop.__module__}.{loop.__qualname__}"})

    @app.get("/bench/stats")
    async def bench_stats(reset: bool = False) -> JSONResponse:
        return JSONResponse((stats or ServerStats()).snapshot(reset))

    return app


def serve(db_path: str, conn: Connection, gc_freeze: bool) -> None:
    """The server process: binds a free port, reports it (and uvicorn's choices), serves."""
    stats = ServerStats()
    gc.callbacks.append(stats.on_gc)
    app = ServerTimer(build_app(db_path, stats, gc_freeze), stats)
    # proto=IPPROTO_TCP, as uvicorn's own binding (via getaddrinfo) gets: asyncio sets
    # TCP_NODELAY only on such sockets. With proto 0 every response would wait for the
    # client's delayed ACK (~40 ms on Linux) behind Nagle's algorithm.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    config.load()  # resolves "auto" to the HTTP implementation actually used
    http = getattr(config.http_protocol_class, "__module__", "?").rsplit(".", 1)[-1]
    conn.send((sock.getsockname()[1], http.removesuffix("_impl")))
    conn.close()
    uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def running_server(db_path: Path, gc_freeze: bool) -> Iterator[tuple[str, str]]:
    """A server process on ``db_path``; yields its base URL and a description."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=serve, args=(str(db_path), child, gc_freeze), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(60):
            raise RuntimeError("the server process did not report its port")
        port, http = parent.recv()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"{base}/bench/ping", timeout=1)
                if response.status_code == 200:
                    loop = response.json()["loop"]
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not proc.is_alive():
                raise RuntimeError("the server did not come up")
            time.sleep(0.05)
        frozen = ", gc.freeze() after startup" if gc_freeze else ""
        yield base, f"uvicorn {uvicorn.__version__}, http={http}, loop={loop}{frozen}"
    finally:
        proc.terminate()  # SIGTERM: uvicorn shuts down, the lifespan closes the store
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


# --------------------------------------------------------------------------------------
# The client.
# --------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile, nearest-rank (p99 of 100 values is the 99th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Phase:
    label: str
    times_ms: list[float]
    server: dict[str, Any]  # ServerStats.snapshot() over the phase
    target_ms: float | None = None
    note: str = ""


def server_stats(client: httpx.Client, reset: bool) -> dict[str, Any]:
    response = client.get("/bench/stats", params={"reset": reset})
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def run_phase(
    client: httpx.Client,
    label: str,
    send: Callable[[int], Callable[[], httpx.Response]],
    n: int,
    warmup: int,
    check: Callable[[httpx.Response], None],
    target_ms: float | None = None,
) -> Phase:
    """``warmup`` untimed requests, then ``n`` timed ones; ``send(i)`` prepares request
    ``i`` (outside the clock) and returns the call to time."""
    for i in range(warmup):
        check(send(i)())
    server_stats(client, reset=True)
    times = []
    gc.collect()
    gc.disable()
    try:
        for i in range(warmup, warmup + n):
            call = send(i)
            start = time.perf_counter()
            response = call()
            times.append((time.perf_counter() - start) * 1_000)
            check(response)
    finally:
        gc.enable()
    return Phase(label, times, server_stats(client, reset=True), target_ms)


def batch_body(run: str, request: int, now: datetime) -> bytes:
    """Request ``request``'s 1,000 events, each with a request id no other event has."""
    events = []
    for i in range(BATCH_EVENTS):
        k = request * BATCH_EVENTS + i
        events.append(
            {
                "agent_id": f"agent-{k % 50:02d}",
                "consumer_id": f"consumer-{k % 5}",
                "model": MODELS[k % 3],
                "tokens_in": 500 + k % 1_000,
                "tokens_out": 100 + k % 300,
                "duration_ms": 200 + k % 5_000,
                "api_calls": 1,
                "cost": 0.001 + (k % 7) * 1e-4,
                "timestamp": (now + timedelta(microseconds=k)).isoformat(),
                "request_id": f"{run}-{request:05d}-{i:04d}",
            }
        )
    return json.dumps(events).encode()


def expect(status: int, **fields: Any) -> Callable[[httpx.Response], None]:
    def check(response: httpx.Response) -> None:
        if response.status_code != status:
            raise RuntimeError(
                f"{response.request.method} {response.request.url.path}: "
                f"{response.status_code} {response.text[:300]}"
            )
        body = response.json()
        for name, value in fields.items():
            if body.get(name) != value:
                raise RuntimeError(
                    f"{response.request.url}: {name}={body.get(name)!r}, not {value}"
                )

    return check


def measure_writes(
    path: Path, n: int, warmup: int, gc_freeze: bool
) -> tuple[list[Phase], str, int]:
    run = uuid.uuid4().hex[:12]
    now = datetime.now(timezone.utc)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    with (
        running_server(path, gc_freeze) as (base, how),
        httpx.Client(base_url=base, headers=headers, timeout=120) as client,
    ):
        server_stats(client, reset=True)  # forget the startup
        time.sleep(1.0)  # one idle second: the lag baseline
        idle = Phase("idle server (no requests), 1 s", [], server_stats(client, True))
        ping = run_phase(
            client,
            "GET /bench/ping (HTTP floor)",
            lambda i: lambda: client.get("/bench/ping"),
            200,
            20,
            expect(200, ok=True),
        )

        def post(i: int) -> Callable[[], httpx.Response]:
            body = batch_body(run, i, now)
            return lambda: client.post("/usage/batch", content=body)

        body_kb = len(batch_body(run, 0, now)) / 1_000
        batch = run_phase(
            client,
            f"POST /usage/batch ({BATCH_EVENTS:,} new events)",
            post,
            n,
            warmup,
            expect(201, received=BATCH_EVENTS, inserted=BATCH_EVENTS, duplicates=0),
            TARGET_BATCH_P50_MS,
        )
        batch.note = (
            f"{body_kb:,.0f} kB body; {BATCH_EVENTS / pct(batch.times_ms, 50) * 1_000:,.0f} "
            "events/s at the p50"
        )
        stored = client.get("/usage/summary").json()["events"]
    if stored != (warmup + n) * BATCH_EVENTS:
        raise RuntimeError(f"the write store holds {stored:,} events, not {(warmup + n) * 1_000:,}")
    return [idle, ping, batch], how, stored


def measure_reads(
    path: Path, n_all: int, n_filtered: int, warmup: int, gc_freeze: bool
) -> tuple[list[Phase], str]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    day = timedelta(days=1)
    agents = bench_ledger.AGENTS
    with (
        running_server(path, gc_freeze) as (base, how),
        httpx.Client(base_url=base, headers=headers, timeout=120) as client,
    ):
        server_stats(client, reset=True)
        time.sleep(1.0)
        idle = Phase("idle server (no requests), 1 s", [], server_stats(client, True))

        def get(params: dict[str, str]) -> Callable[[], httpx.Response]:
            return lambda: client.get("/usage/summary", params=params)

        def one_day(i: int) -> dict[str, str]:
            start = bench_ledger.READ_START + ((11 * i) % bench_ledger.READ_DAYS) * day
            return {
                "agent_id": f"agent-{(7 * i) % agents:02d}",
                "start": start.isoformat(),
                "end": (start + day - timedelta(microseconds=1)).isoformat(),
            }

        phases = [
            run_phase(
                client,
                f"GET /usage/summary (all {READ_EVENTS:,} events)",
                lambda i: get({}),
                n_all,
                min(warmup, 2),
                expect(200, events=READ_EVENTS),
                TARGET_SUMMARY_P50_MS,
            ),
            run_phase(
                client,
                "GET /usage/summary?agent_id=",
                lambda i: get({"agent_id": f"agent-{(7 * i) % agents:02d}"}),
                n_filtered,
                warmup,
                expect(200, unique_agents=1),
                TARGET_SUMMARY_P50_MS,
            ),
            run_phase(
                client,
                "GET /usage/summary?agent_id=&start=&end= (1 day)",
                lambda i: get(one_day(i)),
                n_filtered,
                warmup,
                expect(200, unique_agents=1),
                TARGET_SUMMARY_P50_MS,
            ),
        ]
        phases[0].note = "every event of the namespace"
        phases[1].note = f"1 of {agents} agents, ~{READ_EVENTS // agents:,} events"
        phases[2].note = f"~{READ_EVENTS // agents // bench_ledger.READ_DAYS:,} events"
    return [idle, *phases], how


# --------------------------------------------------------------------------------------
# Part 4: where a batch request's time goes, in-process.
# --------------------------------------------------------------------------------------


def stage_split(workdir: Path, bodies: Sequence[bytes]) -> list[tuple[str, list[float]]]:
    """Milliseconds per step of ``POST /usage/batch``'s handler, on each body (the first
    one untimed), into a fresh store, the steps as the route runs them."""
    from pydantic_core import from_json
    from usagewarden.fastapi.models import batch_adapter
    from usagewarden.fastapi.router import Access, _events, _to_event, parse_json

    access = Access(PRINCIPAL, PRINCIPAL.namespace)
    steps = [
        "JSON parse only (pydantic_core.from_json; reference, not a step)",
        "models + UsageEvent(...) x 1,000 (reference: the path for bodies Rust declines)",
        "_events(body): JSON to 1,000 UsageEvents in Rust (what the route does)",
        "store.record_batch(events): the call (on the loop)",
        "await ...: the write (off the loop)",
        "JSONResponse(...)",
    ]
    times: list[list[float]] = [[] for _ in steps]

    async def run() -> None:
        store = uw.AsyncSQLiteStore(workdir / "stages.db")
        try:
            for k, body in enumerate(bodies):
                gc.collect()
                gc.disable()
                try:
                    t0 = time.perf_counter()
                    from_json(body)
                    t1 = time.perf_counter()
                    items = parse_json(batch_adapter, body)
                    [_to_event(it, access, ["body", i]) for i, it in enumerate(items)]
                    t2 = time.perf_counter()
                    events = _events(body, access, many=True)
                    t3 = time.perf_counter()
                    pending = store.record_batch(events)
                    t4 = time.perf_counter()
                    inserted = await pending
                    t5 = time.perf_counter()
                    JSONResponse({"received": len(events), "inserted": inserted, "duplicates": 0})
                    t6 = time.perf_counter()
                finally:
                    gc.enable()
                if inserted != BATCH_EVENTS:
                    raise RuntimeError(f"stage split: {inserted} of {BATCH_EVENTS} inserted")
                if k:
                    marks = (t0, t1, t2, t3, t4, t5, t6)
                    for s in range(len(steps)):
                        times[s].append((marks[s + 1] - marks[s]) * 1_000)
        finally:
            await store.close()

    asyncio.run(run())
    return list(zip(steps, times, strict=True))


def profile_batches(workdir: Path, bodies: Sequence[bytes], top: int = 20) -> str:
    """cProfile of batch requests through the whole ASGI app, in-process (the first one
    untimed); the ``top`` functions by own time."""
    app = build_app(str(workdir / "profile.db"))
    profiler = cProfile.Profile()

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers=headers
        ) as client:
            check = expect(201, inserted=BATCH_EVENTS)
            check(await client.post("/usage/batch", content=bodies[0]))
            profiler.enable()
            for body in bodies[1:]:
                check(await client.post("/usage/batch", content=body))
            profiler.disable()
        async with app.router.lifespan_context(app):
            pass  # runs the shutdown half: closes the store

    asyncio.run(run())
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------


def fmt_ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else (f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}")


def print_table(phases: Sequence[Phase]) -> None:
    width = max(len(p.label) for p in phases) + 2
    print(
        f"  {'request':<{width}}{'n':>5}{'p50':>8}{'p99':>8}{'max':>8}{'srv p50':>9}{'srv p99':>9}"
        f"{'lag p50':>9}{'lag p99':>9}{'lag max':>9}{'gc n/full/max':>15}  notes"
    )
    for p in phases:
        client = [""] * 4
        if p.times_ms:
            client = [str(len(p.times_ms))] + [
                fmt_ms(v) for v in (pct(p.times_ms, 50), pct(p.times_ms, 99), max(p.times_ms))
            ]
        server, lag = ["-"] * 2, ["-"] * 3
        if p.server["server_ms"]:
            server = [fmt_ms(pct(p.server["server_ms"], q)) for q in (50, 99)]
        if p.server["lag_ms"]:
            values = p.server["lag_ms"]
            lag = [fmt_ms(v) for v in (pct(values, 50), pct(values, 99), max(values))]
        gc_ms = p.server["gc_ms"]
        collected = f"{len(gc_ms)}/{p.server['gc_full']}/{fmt_ms(max(gc_ms, default=0.0))}"
        cells = [*client, *server, *lag]
        print(
            f"  {p.label:<{width}}{cells[0]:>5}"
            + "".join(f"{c:>8}" for c in cells[1:4])
            + "".join(f"{c:>9}" for c in cells[4:])
            + f"{collected:>15}  {p.note}"
        )


def describe_build() -> list[str]:
    """Version, build type, the compiled module loaded and when it was built; a warning
    when the Rust source is newer (this benchmark runs the installed build, not the source)."""
    build = "!! DEBUG build: figures are meaningless" if uw._core.DEBUG_BUILD else "release build"
    path = Path(uw._core.__file__ or "?")
    if not path.exists():
        return [f"usagewarden {uw.__version__} ({build}): {path}"]
    built = path.stat().st_mtime
    lines = [
        f"usagewarden {uw.__version__} ({build}): {path}, built "
        + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(built))
    ]
    sources = list((bench_ledger.ROOT / "src").rglob("*.rs"))
    newest = max(sources, key=lambda p: p.stat().st_mtime, default=None)
    if newest is not None and newest.stat().st_mtime > built:
        changed = time.strftime("%H:%M:%S", time.localtime(newest.stat().st_mtime))
        lines.append(
            f"!! {newest.relative_to(bench_ledger.ROOT)} changed at {changed}, after the "
            "extension was built: these figures are the installed build's"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (fewer requests)")
    parser.add_argument("--batch-requests", type=int, help="timed POST /usage/batch requests")
    parser.add_argument(
        "--summary-requests", type=int, help="timed filtered GET /usage/summary requests, each"
    )
    parser.add_argument(
        "--full-summary-requests", type=int, help="timed unfiltered GET /usage/summary requests"
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="the server calls gc.freeze() after startup (a mitigation, not the default)",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached read store")
    parser.add_argument("--profile", action="store_true", help="cProfile batch requests in-process")
    args = parser.parse_args(argv)
    n_batch = args.batch_requests or (40 if args.quick else 300)
    n_filtered = args.summary_requests or (60 if args.quick else 300)
    n_all = args.full_summary_requests or (8 if args.quick else 60)
    warmup = 5 if args.quick else 20
    if min(n_batch, n_filtered, n_all) < 1:
        parser.error("request counts must be positive")

    print(
        "usagewarden HTTP API benchmark"
        + (" (--quick: fewer requests, p99 of few samples)" if args.quick else "")
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    cores = os.cpu_count()
    print(
        f"  Python {platform.python_version()} ({platform.python_implementation()}) "
        f"{platform.machine()}, {cores} CPUs, load average {load}"
    )
    if cores is not None and cores <= 2:
        print(
            f"  !! only {cores} cores: the client, the server's event loop and the store's Rust "
            "threads share them"
        )
    for line in describe_build():
        print(f"  {line}")
    import fastapi
    import pydantic

    print(
        f"  FastAPI {fastapi.__version__}, pydantic {pydantic.__version__}, "
        f"httpx {httpx.__version__}; client: one keep-alive connection, sequential requests"
    )

    read_path = Path(tempfile.gettempdir()) / "usagewarden-bench-1m.db"
    store, how = bench_ledger.open_read_store(read_path, READ_EVENTS, args.rebuild)
    store.close()
    print(f"  read store: {how}; warmed into the page cache")
    bench_ledger.warm_page_cache(read_path)

    with tempfile.TemporaryDirectory(prefix="usagewarden-bench-http-") as tmp:
        workdir = Path(tmp)
        writes, write_server, stored = measure_writes(
            workdir / "writes.db", n_batch, warmup, args.gc_freeze
        )
        reads, read_server = measure_reads(read_path, n_all, n_filtered, warmup, args.gc_freeze)

        now = datetime.now(timezone.utc)
        bodies = [batch_body("split", i, now) for i in range(21 if args.quick else 41)]
        split = stage_split(workdir, bodies)
        profile = profile_batches(workdir, bodies[:11]) if args.profile else ""

    print(f"\n[1] writes, a fresh database: {write_server}; {stored:,} events stored")
    print(f"[2] reads, {READ_EVENTS:,} events in namespace {NAMESPACE!r}: {read_server}")
    print(
        "    milliseconds. p50/p99/max: the client's round trips (nearest rank). srv: the "
        "server's time,\n    app called -> last byte sent. lag: how late the server's 5 ms "
        "sleeps woke during the phase.\n    gc: the server's garbage collections during the "
        "phase: count / of them full (gen 2) / longest ms.\n"
    )
    print_table([*writes, *reads])

    print(f"\n[4] POST /usage/batch's steps in-process, median of {len(bodies) - 1} bodies, ms")
    width = max(len(label) for label, _ in split) + 2
    for label, values in split:
        print(f"  {label:<{width}}{fmt_ms(statistics.median(values)):>8}")
    blocking = sum(
        statistics.median(v)
        for label, v in split
        if "reference" not in label and "await" not in label
    )
    print(f"  {'on the event loop (every route step but the await)':<{width}}{fmt_ms(blocking):>8}")
    if profile:
        print(f"\n  cProfile, {len(bodies[:11]) - 1} requests through the ASGI app, by own time")
        print("\n".join("  " + line for line in profile.strip().splitlines()))

    print("\nTargets (p50 of the round trip)")
    for p in [*writes, *reads]:
        if p.target_ms is None:
            continue
        p50 = pct(p.times_ms, 50)
        verdict = "met" if p50 <= p.target_ms else "MISSED"
        print(f"  {verdict:<7}{p.label} p50 <= {p.target_ms:.0f} ms: {fmt_ms(p50)} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
