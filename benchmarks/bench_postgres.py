"""Benchmark usagewarden's PostgreSQL ledger against the physical limit and the Python
peers, on one throwaway server, in one run.

Writes (events/s, each run into a fresh schema, median of the runs; the writers take turns,
run 1 of each then run 2 of each, so a change in the machine's load falls on all alike):

1. The floor: a binary ``COPY`` of the same rows straight into the store's own
   ``usage_events`` table (same partitions and indexes, no idempotency), with psycopg 3.
2. ``PostgresStore.record`` (``durability="batch"``; one ``UsageEvent`` built per call inside
   the timed loop, the final ``flush()`` timed too) and ``record_batch`` of 1,000 events.
3. Python peers writing the same rows into the same table: psycopg 3 ``executemany`` and
   ``copy`` (text rows), and asyncpg ``copy_records_to_table``. Like the floor they write the
   events table only; the store also claims each request id (``request_keys``), chains the
   events and adds the hourly and daily totals, in the same transaction. The output says which
   writer writes what.

Reads, over 1,000,000 events (50 agents, 30 days) recorded with ``record_batch``: ``summary``
of one agent-day and of the whole ledger, ``aggregate("day")`` (UTC, America/New_York, and
Asia/Kathmandu, whose midnight cuts an hour), ``aggregate("agent")`` and ``("model")``, median
of 5 calls after one warm-up. ``--reads-only`` skips the writes.

Run from the repository root after ``maturin develop --release`` and
``pip install -e '.[bench]'``::

    python benchmarks/bench_postgres.py            # 100,000 events per write run
    python benchmarks/bench_postgres.py --events 20000 --read-events 200000   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import asyncpg  # noqa: E402
import psycopg  # noqa: E402
import usagewarden as uw  # noqa: E402
from postgres_cluster import _start_cluster  # noqa: E402

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 2, 1, tzinfo=UTC)
T0_US = int(T0.timestamp() * 1_000_000)
COLUMNS = (
    "namespace, request_id, ts, agent_id, consumer_id, task_id, action, model, tokens_in, "
    "tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, "
    "cost_nanos, source, metadata, fingerprint, cost_priced"
)
COLUMN_LIST = [c.strip() for c in COLUMNS.split(",")]
EVENTS_ONLY = "events only"
STORE_WRITES = "the store's whole write"


def row(i: int, days: int = 1) -> tuple[Any, ...]:
    ts = T0_US + (i * 86_400_000_000 * days) // 1_000_000 % (86_400_000_000 * days)
    return (
        "default", f"r{i}", ts, f"agent-{i % 50}", f"consumer-{i % 5}", None, "llm.request",
        f"model-{i % 4}", 100 + i % 100, 10 + i % 10, 0, 0, 5, 1, 0, 1000 + i, None, None, i,
        False,
    )  # fmt: skip


def event(i: int, days: int = 1) -> uw.UsageEvent:
    r = row(i, days)
    return uw.UsageEvent(
        r[3], r[4], model=r[7], tokens_in=r[8], tokens_out=r[9], duration_ms=5, api_calls=1,
        cost=r[15] / 1e9, timestamp=dt.datetime.fromtimestamp(r[2] / 1e6, UTC), request_id=r[1],
    )  # fmt: skip


def timed(f: Callable[[], None]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        f()
        return time.perf_counter() - start
    finally:
        gc.enable()


class Bench:
    def __init__(self, cluster: Any, n: int, runs: int) -> None:
        self.cluster = cluster
        self.dsn = cluster.dsn()
        self.n = n
        self.runs = runs

    def fresh_schema(self) -> str:
        schema = self.cluster.new_schema()
        uw.PostgresStore(self.dsn, schema=schema, clock=uw.ManualClock(T0.timestamp())).close()
        with psycopg.connect(self.dsn, autocommit=True) as c:  # the month's partition
            c.execute(f"SELECT 1 FROM {schema}.usage_events LIMIT 0")
        return schema

    def rates(self, writers: list[Callable[[str], Callable[[], None]]]) -> list[float]:
        """Events/s of each writer, median of the runs. The writers take turns
        (run 1 of each, then run 2 of each, ...), so that a change in the
        machine's load falls on all of them alike."""
        times: list[list[float]] = [[] for _ in writers]
        for _ in range(self.runs):
            for write, spent in zip(writers, times, strict=True):
                schema = self.fresh_schema()
                spent.append(timed(write(schema)))
                with psycopg.connect(self.dsn) as c:
                    got = c.execute(f"SELECT COUNT(*) FROM {schema}.usage_events").fetchone()
                    assert got is not None and got[0] == self.n, (got, self.n)
        return [self.n / statistics.median(spent) for spent in times]

    def copy_binary(self, schema: str) -> Callable[[], None]:
        rows = [row(i) for i in range(self.n)]

        def run() -> None:
            with psycopg.connect(self.dsn) as c, c.cursor() as cur:
                sql = f"COPY {schema}.usage_events ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
                with cur.copy(sql) as copy:
                    copy.set_types(
                        ["text", "text", "int8", "text", "text", "text", "text", "text"]
                        + ["int8"] * 8
                        + ["text", "text", "int8", "bool"]
                    )
                    for r in rows:
                        copy.write_row(r)

        return run

    def copy_text(self, schema: str) -> Callable[[], None]:
        rows = [row(i) for i in range(self.n)]

        def run() -> None:
            sql = f"COPY {schema}.usage_events ({COLUMNS}) FROM STDIN"
            with psycopg.connect(self.dsn) as c, c.cursor() as cur, cur.copy(sql) as copy:
                for r in rows:
                    copy.write_row(r)

        return run

    def executemany(self, schema: str) -> Callable[[], None]:
        rows = [row(i) for i in range(self.n)]
        marks = ", ".join(["%s"] * len(COLUMN_LIST))

        def run() -> None:
            with psycopg.connect(self.dsn) as c, c.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {schema}.usage_events ({COLUMNS}) VALUES ({marks})", rows
                )

        return run

    def asyncpg_copy(self, schema: str) -> Callable[[], None]:
        rows = [row(i) for i in range(self.n)]

        async def go() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.copy_records_to_table(
                    "usage_events", schema_name=schema, records=rows, columns=COLUMN_LIST
                )
            finally:
                await conn.close()

        return lambda: asyncio.run(go())

    def store_record(self, schema: str) -> Callable[[], None]:
        store = uw.PostgresStore(self.dsn, schema=schema)
        n = self.n

        def run() -> None:
            for i in range(n):
                r = row(i)
                store.record(
                    uw.UsageEvent(
                        r[3],
                        r[4],
                        model=r[7],
                        tokens_in=r[8],
                        tokens_out=r[9],
                        duration_ms=5,
                        api_calls=1,
                        cost=r[15] / 1e9,
                        timestamp=dt.datetime.fromtimestamp(r[2] / 1e6, UTC),
                        request_id=r[1],
                    )  # fmt: skip
                )
            store.flush()
            store.close()

        return run

    def store_batch(self, schema: str) -> Callable[[], None]:
        store = uw.PostgresStore(self.dsn, schema=schema)
        batches = [
            [event(i) for i in range(k, min(k + 1000, self.n))] for k in range(0, self.n, 1000)
        ]

        def run() -> None:
            for b in batches:
                store.record_batch(b)
            store.close()

        return run


def reads(cluster: Any, n: int) -> list[tuple[str, float]]:
    schema = cluster.new_schema()
    store = uw.PostgresStore(cluster.dsn(), schema=schema)
    for k in range(0, n, 10_000):
        store.record_batch([event(i, days=30) for i in range(k, min(k + 10_000, n))])
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute(f"VACUUM ANALYZE {schema}.usage_events")
    day = T0 + dt.timedelta(days=10)
    calls: list[tuple[str, Callable[[], object]]] = [
        (
            "summary(agent_id, one day)",
            lambda: store.summary(agent_id="agent-7", start=day, end=day + dt.timedelta(days=1)),
        ),
        ('aggregate("day")', lambda: store.aggregate("day")),
        (
            'aggregate("day", tz="America/New_York")',
            lambda: store.aggregate("day", tz="America/New_York"),
        ),
        ('aggregate("agent")', lambda: store.aggregate("agent")),
        ('aggregate("model")', lambda: store.aggregate("model")),
        ("summary() of the whole ledger", lambda: store.summary()),
        (
            'aggregate("day", tz="Asia/Kathmandu") (a cut hour a day)',
            lambda: store.aggregate("day", tz="Asia/Kathmandu"),
        ),
    ]
    out = []
    for name, call in calls:
        call()
        times = [timed(lambda c=call: c() and None) for _ in range(5)]  # type: ignore[misc]
        out.append((name, statistics.median(times)))
    assert store.summary().events == n
    store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--read-events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reads-only", action="store_true", help="skip the write runs")
    args = parser.parse_args()
    if uw.DEBUG_BUILD:
        print("warning: a debug build of the extension; build with maturin develop --release")
    clusters = _start_cluster()
    cluster = next(clusters)
    try:
        server = cluster.sql("SHOW server_version")
        print(
            f"PostgreSQL {server}, one loopback server, fsync off; "
            f"{args.events:,} events per run, median of {args.runs}"
        )
        b = Bench(cluster, args.events, args.runs)
        # (name, what it writes, writer); the first is the floor, the last three the peers.
        writers = [
            ("binary COPY (psycopg; the floor)", EVENTS_ONLY, b.copy_binary),
            ("PostgresStore.record (batch durability)", STORE_WRITES, b.store_record),
            ("PostgresStore.record_batch(1000)", STORE_WRITES, b.store_batch),
            ("psycopg 3 executemany", EVENTS_ONLY, b.executemany),
            ("psycopg 3 copy (text)", EVENTS_ONLY, b.copy_text),
            ("asyncpg copy_records_to_table", EVENTS_ONLY, b.asyncpg_copy),
        ]
        if not args.reads_only:
            rates = b.rates([w for _, _, w in writers])
            floor = rates[0]
            peers = max(rates[-3:])
            print(f"\n{'writes':<42} {'events/s':>9} {'vs floor':>9} {'vs best peer':>13}  writes")
            for (name, what, _), rate in zip(writers, rates, strict=True):
                print(
                    f"{name:<42} {rate:>9,.0f} {rate / floor:>8.0%} {rate / peers:>12.2f}x  {what}"
                )
            print(
                f"\n{EVENTS_ONLY}: the rows alone, into usage_events (same partitions and "
                "indexes), with no idempotency, chain or totals.\n"
                f"{STORE_WRITES}: the rows with their chain positions and digests, each new "
                "request id in request_keys (duplicates and conflicts decided), the chain "
                "heads, and the hourly and daily totals, in one transaction per batch."
            )
        print(f"\nreads over {args.read_events:,} events (median of 5, warm)")
        for name, seconds in reads(cluster, args.read_events):
            print(f"{name:<52} {seconds * 1000:>10.1f} ms")
    finally:
        for _ in clusters:
            pass


if __name__ == "__main__":
    main()
