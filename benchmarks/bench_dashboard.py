"""Benchmark the requests the dashboard makes, over a 1,000,000-event ledger (SQLite or PostgreSQL).

The server is ``usagewarden serve``'s own app (``usagewarden.cli._serve.build_app``: the usage
API, the dashboard's routes, one API key, a budget engine with a global and a per-agent
budget, and a per-key rate limiter) on a real uvicorn in its own process (spawn), on a free
port of 127.0.0.1, over the 1,000,000-event store ``bench_ledger.py`` builds and caches
(``/tmp/usagewarden-bench-1m.db``: 30 days of January 2026, 50 agents, 5 consumers, 4
models, one namespace; built here with its builder if missing).

For each of four time ranges of the dashboard's picker (the 30 days of the data, a week
and a day within them, and a week ending at an instant inside an hour, as the page's
"now − 7 days .. now" is), the client sends, one after the other on one keep-alive
connection, exactly the requests one refresh of the page sends (``static/app.js``): the
summary; totals per agent, consumer and model; the budgets and their settings; the
buckets of the range (days, or hours for the day) in Europe/Paris, in all and for each of
the top models; the first page of events and the limiter's windows; once per page load,
who the key is (``/me``); and on a click of the pager, the next page of events (cursor) and
the latest one (offset). Each request is timed from before ``get`` to the response read;
p50 and p90 over the rounds. The whole refresh is also timed as the browser sends it (the
first six requests at once, then the buckets at once, then the events and the limiter at
once; the pager's requests are not part of it), with httpx's async client.

Run it from the repository root, after a release build of the extension::

    maturin develop --release && pip install -e '.[dashboard,test]'
    python benchmarks/bench_dashboard.py              # full run
    python benchmarks/bench_dashboard.py --quick      # 3 rounds instead of 7
    python benchmarks/bench_dashboard.py --store postgres   # the same events in PostgreSQL

With ``--store postgres`` the same events are loaded with ``record_batch`` into a schema of a
throwaway PostgreSQL cluster (``tests/postgres_cluster.py``: loopback, fsync off) and the
server reads them through ``AsyncPostgresStore``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ledger  # noqa: E402  (the cached read store, its builder, the build banner)

warnings.filterwarnings("ignore", message="usagewarden was built in debug mode")
import usagewarden as uw  # noqa: E402

READ_EVENTS = 1_000_000
KEY = "bench-dashboard-key-0123456789"
TZ = "Europe/Paris"
TARGET_MS = 50.0
TOP_MODELS = 6
PAGE = 25
#: The stage of the requests a click of the pager sends (not part of a refresh).
CLICK = 99


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Ledger:
    """Where the 1,000,000 events are: a SQLite file, or a PostgreSQL schema."""

    path: str | None = None
    dsn: str | None = None
    schema: str | None = None

    def open(self) -> uw.AsyncMeteringStore:
        if self.dsn is not None:
            return uw.AsyncPostgresStore(self.dsn, schema=self.schema or "usagewarden")
        assert self.path is not None
        return uw.AsyncSQLiteStore(self.path)


def serve(ledger: Ledger, port: int, ready: Connection) -> None:
    """The server process: ``serve``'s app on ``port``."""
    warnings.filterwarnings("ignore")
    import uvicorn
    from usagewarden.cli._serve import build_app
    from usagewarden.fastapi import SCOPE_ADMIN, SCOPE_READ, Principal

    store = ledger.open()
    budgets = uw.BudgetEngine(
        [uw.Budget("org", 5_000.0), uw.Budget("per-agent", 50.0, scope="agent", period="daily")],
        store,
    )
    keys = {KEY: Principal("bench", "default", frozenset({SCOPE_READ, SCOPE_ADMIN}))}
    app = build_app(store, keys=keys, budgets=budgets, requests_per_minute=1_000_000)
    ready.send(uvicorn.__version__)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextmanager
def running_server(ledger: Ledger) -> Iterator[str]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    port = free_port()
    proc = ctx.Process(target=serve, args=(ledger, port, child), daemon=True)
    proc.start()
    child.close()
    base = f"http://127.0.0.1:{port}"
    try:
        if not parent.poll(60):
            raise RuntimeError("the server process did not start")
        parent.recv()
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/static/icon.svg", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not proc.is_alive():
                raise RuntimeError("the server did not come up")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


@dataclass(frozen=True)
class Request:
    label: str
    path: str
    params: dict[str, Any]
    stage: int  # requests of one stage go out together in the browser


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def refresh_requests(client: httpx.Client, start: datetime, end: datetime) -> list[Request]:
    """What one refresh of the page asks for a range (as static/app.js builds it)."""
    base = {"namespace": "default", "start": iso(start), "end": iso(end)}
    bucket = "hour" if end - start <= timedelta(days=2) else "day"
    models = client.get("/usage/aggregate", params={**base, "group_by": "model"}).json()
    top = sorted(
        (g for g in models["groups"] if g["group"] is not None),
        key=lambda g: (-(g["cost"] or 0), -g["total_tokens"]),
    )[:TOP_MODELS]
    first = client.get("/usage", params={**base, "limit": PAGE}).json()
    total = client.get("/usage/summary", params=base).json()["events"]
    requests = [
        Request("summary", "/usage/summary", base, 1),
        Request("aggregate agent", "/usage/aggregate", {**base, "group_by": "agent"}, 1),
        Request("aggregate consumer", "/usage/aggregate", {**base, "group_by": "consumer"}, 1),
        Request("aggregate model", "/usage/aggregate", {**base, "group_by": "model"}, 1),
        Request("budgets", "/usage/budgets", {}, 1),
        Request("budgets/settings", "/usage/budgets/settings", {}, 1),
        Request(
            f"aggregate {bucket} (all models)",
            "/usage/aggregate",
            {**base, "group_by": bucket, "tz": TZ},
            2,
        ),
    ]
    for model in top:
        requests.append(
            Request(
                f"aggregate {bucket}, model={model['group']}",
                "/usage/aggregate",
                {**base, "group_by": bucket, "tz": TZ, "model": model["group"]},
                2,
            )
        )
    requests += [
        Request("events, first page", "/usage", {**base, "limit": PAGE}, 3),
        Request(
            "events, next page (cursor)",
            "/usage",
            {**base, "limit": PAGE, "cursor": first["next_cursor"]},
            CLICK,
        ),
        Request(
            "events, latest page (offset)",
            "/usage",
            {**base, "limit": PAGE, "offset": max(total - PAGE, 0)},
            CLICK,
        ),
        Request("limiter", "/usage/limiter", {}, 3),
    ]
    # The pager's requests last, as a person clicks after the refresh.
    return sorted(requests, key=lambda r: r.stage == CLICK)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def time_sequential(
    client: httpx.Client, requests: Sequence[Request], rounds: int
) -> list[list[float]]:
    times: list[list[float]] = [[] for _ in requests]
    for _ in range(rounds):
        for i, request in enumerate(requests):
            started = time.perf_counter()
            response = client.get(request.path, params=request.params)
            response.read()
            times[i].append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{request.label}: {response.status_code} {response.text}")
    return times


async def time_refresh(base: str, requests: Sequence[Request], rounds: int) -> list[float]:
    """A whole refresh as the browser sends it: each stage's requests at once."""
    stages = sorted({r.stage for r in requests if r.stage != CLICK})
    times = []
    headers = {"X-API-Key": KEY}
    limits = httpx.Limits(max_connections=6)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=120
    ) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            for stage in stages:
                batch = [r for r in requests if r.stage == stage]
                answers = await asyncio.gather(
                    *(client.get(r.path, params=r.params) for r in batch)
                )
                for request, answer in zip(batch, answers, strict=True):
                    if answer.status_code != 200:
                        raise RuntimeError(f"{request.label}: {answer.status_code}")
            times.append((time.perf_counter() - started) * 1000)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached 1M store")
    parser.add_argument(
        "--store",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="the ledger the server reads (postgres: a throwaway cluster, loaded in the run)",
    )
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 7

    print("\n".join(bench_ledger.describe_build()))
    print(f"cores: {os.cpu_count()}, rounds: {rounds}, python {sys.version.split()[0]}")
    with ledger_for(args.store, args.rebuild) as ledger:
        return run(ledger, rounds)


@contextmanager
def ledger_for(kind: str, rebuild: bool) -> Iterator[Ledger]:
    """The cached SQLite file, or the same events loaded into a throwaway PostgreSQL."""
    if kind == "sqlite":
        read_path = Path(tempfile.gettempdir()) / "usagewarden-bench-1m.db"
        store, how = bench_ledger.open_read_store(read_path, READ_EVENTS, rebuild)
        store.close()
        print(f"ledger: {how}")
        bench_ledger.warm_page_cache(read_path)
        yield Ledger(path=str(read_path))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import psycopg
    from postgres_cluster import _start_cluster

    clusters = _start_cluster()
    cluster = next(clusters)
    try:
        schema = cluster.new_schema()
        started = time.perf_counter()
        with uw.PostgresStore(cluster.dsn(), schema=schema) as pg:
            loaded = sum(pg.record_batch(b) for b in bench_ledger.dataset_events(READ_EVENTS))
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            for table in (
                "usage_events",
                "usage_rollup",
                "usage_daily",
                "usage_hourly_model",
                "usage_presence",
                "usage_hourly_pair",
                "usage_daily_pair",
            ):
                c.execute(f"VACUUM ANALYZE {schema}.{table}")
        print(
            f"ledger: PostgreSQL {cluster.sql('SHOW server_version')} (loopback, fsync off), "
            f"{loaded:,} events loaded in {time.perf_counter() - started:.0f} s"
        )
        yield Ledger(dsn=cluster.dsn(), schema=schema)
    finally:
        for _ in clusters:
            pass


def run(ledger: Ledger, rounds: int) -> int:
    start = bench_ledger.READ_START
    data_end = start + timedelta(days=bench_ledger.READ_DAYS) - timedelta(microseconds=1)
    ranges = [
        ("30 days (every event)", start, data_end),
        ("7 days", start + timedelta(days=10), start + timedelta(days=17)),
        ("24 hours", start + timedelta(days=20), start + timedelta(days=21)),
        # As the page asks (now − 7 days .. now): edges inside hours and days.
        (
            "7 days to 07:23:41",
            start + timedelta(days=10, hours=7, minutes=23, seconds=41),
            start + timedelta(days=17, hours=7, minutes=23, seconds=41),
        ),
    ]
    missed: list[str] = []
    with running_server(ledger) as base:
        headers = {"X-API-Key": KEY}
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            # Only a page served without authentication also lists every namespace.
            page_load = [Request("me (once per page load)", "/usage/me", {}, 0)]
            [load_times] = time_sequential(client, page_load, rounds)
            once = statistics.median(load_times)
            print(f"\n{page_load[0].label}: p50 {once:.1f} ms")
            if once > TARGET_MS:
                missed.append(page_load[0].label)
            for title, first, last in ranges:
                requests = refresh_requests(client, first, last)
                time_sequential(client, requests, 1)  # warm-up
                times = time_sequential(client, requests, rounds)
                refresh = asyncio.run(time_refresh(base, requests, rounds))
                print(
                    f"\nrange: {title} ({iso(first)} .. {iso(last)}), events in it: "
                    f"{client.get('/usage/summary', params=requests[0].params).json()['events']:,}"
                )
                print(f"  {'request':<44} {'p50 ms':>9} {'p90 ms':>9}  target {TARGET_MS:.0f} ms")
                for request, samples in zip(requests, times, strict=True):
                    p50 = statistics.median(samples)
                    verdict = "met" if p50 <= TARGET_MS else "MISSED"
                    if p50 > TARGET_MS:
                        missed.append(f"{title}: {request.label}")
                    print(f"  {request.label:<44} {p50:>9.1f} {pct(samples, 90):>9.1f}  {verdict}")
                total = sum(
                    statistics.median(s)
                    for r, s in zip(requests, times, strict=True)
                    if r.stage != CLICK
                )
                print(f"  {'sum of the refresh p50s (one after the other)':<44} {total:>9.1f}")
                print(
                    f"  {'whole refresh as the browser sends it':<44} "
                    f"{statistics.median(refresh):>9.1f} {pct(refresh, 90):>9.1f}"
                )
    print(f"\n{len(missed)} request(s) over {TARGET_MS:.0f} ms p50:")
    for label in missed:
        print(f"  - {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
