"""Benchmark usagewarden's SQLite ledger: writes against the physical limit and the old
approach, and reads over a large store, in one run.

1. Events/s through ``SQLiteStore.record`` from Python (``durability="batch"``, one
   ``UsageEvent`` constructed per call inside the timed loop, the final ``flush()`` timed
   too) and through ``record_batch`` with lists of 1,000 events built before the clock starts.
2. The physical limit: plain rusqlite inserting the same kind of events into the same
   schema, with the writer's exact INSERT statement, 10,000 events per transaction, on the
   store's own write connection (so with its pragmas): ``benchmarks/ledger_raw.rs``, built
   once with ``cargo build --release --example ledger_raw`` and then run directly for each
   sample (what ``cargo run --release --example ledger_raw -- <path> <n>`` runs), so that a
   source edit during the benchmark cannot rebuild it between samples. For reference the
   same program also drives the store from Rust (``record`` and ``record_batch``).
3. The old approach as a baseline: aiosqlite opening a new connection per event (open,
   INSERT, commit, close) into a similar table, awaited in one event loop (the figure the
   target is judged on), and as the old sync interface called it (a thread running
   ``asyncio.run`` per event).
4. Reads over a store of 1,000,000 events (50 agents, 30 days, 5 consumers, 4 models),
   built once with ``record_batch`` and cached: ``summary`` for one agent and one day, and
   ``aggregate`` by day (UTC and America/New_York) and by agent.

Every write figure is the median over several runs, each into a fresh database file. Every
read figure is the median of several calls, after the database file has been read once into
the OS page cache and one untimed warm-up call (warm cache). Times are taken with
``time.perf_counter``; the garbage collector is paused while timing.

Run it from the repository root, after building the extension into the environment::

    pip install -e '.[bench]'
    python benchmarks/bench_ledger.py              # full run, a few minutes
    python benchmarks/bench_ledger.py --quick      # short run (100,000 events in part 4)
    python benchmarks/bench_ledger.py --rebuild    # rebuild the cached read store first

``--events N`` sets the events per write run (default 200,000; 50,000 with ``--quick``).
Part 2 needs cargo; it is skipped (and said so) without it. The read store is cached in the
temporary directory (``/tmp/usagewarden-bench-1m.db``) and reused while it holds the
expected events.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal, TypeVar

with warnings.catch_warnings():
    # A debug build warns on import; the header reports the build type instead.
    warnings.simplefilter("ignore", RuntimeWarning)
    import usagewarden as uw

ROOT = Path(__file__).resolve().parent.parent

TARGET_RAW_RATIO = 0.70  # record / raw rusqlite
TARGET_BASELINE_RATIO = 1_000.0  # record / aiosqlite connection per event
TARGET_SUMMARY_MS = 20.0
TARGET_AGGREGATE_MS = 500.0

BATCH = 1_000  # events per record_batch call
RAW_TRANSACTION = 10_000  # events per transaction in the raw program (the writer's MAX_GROUP)

# The write runs: the same mix as ledger_raw.rs builds.
AGENTS = 50
CONSUMERS = 5
WRITE_MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4")

# The read store.
READ_DAYS = 30
READ_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
READ_CONSUMERS = 5
# model -> (USD per input token, USD per output token)
READ_PRICES = {
    "gpt-4o": (2.5e-6, 10e-6),
    "gpt-4o-mini": (0.15e-6, 0.6e-6),
    "claude-sonnet-4": (3e-6, 15e-6),
    "claude-haiku-4": (0.8e-6, 4e-6),
}
UNPRICED_SHARE = 0.02  # events recorded with cost=None (price unknown)
DATASET_SEED = 20260101

T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Timing helpers.
# --------------------------------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Seconds ``fn`` took (garbage collector paused), and its result."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result
    finally:
        gc.enable()


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@dataclass
class Rate:
    """Events/s over several runs."""

    label: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


# --------------------------------------------------------------------------------------
# Parts 1 and 2: writes.
# --------------------------------------------------------------------------------------


def write_event(i: int) -> uw.UsageEvent:
    """The ``i``-th event of a write run (the same mix as ``ledger_raw.rs`` builds)."""
    return uw.UsageEvent(
        f"agent-{i % AGENTS:02d}",
        f"consumer-{i % CONSUMERS}",
        model=WRITE_MODELS[i % 3],
        tokens_in=500 + i % 1000,
        tokens_out=100 + i % 300,
        cost=0.001,
    )


def record_rate(path: Path, n: int) -> float:
    """``record(UsageEvent(...))`` per event, then ``flush()``: all timed."""
    agents = [f"agent-{i:02d}" for i in range(AGENTS)]
    consumers = [f"consumer-{i}" for i in range(CONSUMERS)]
    models = WRITE_MODELS
    event = uw.UsageEvent
    store = uw.SQLiteStore(path, durability="batch")
    record = store.record

    def run() -> None:
        for i in range(n):
            record(
                event(
                    agents[i % AGENTS],
                    consumers[i % CONSUMERS],
                    model=models[i % 3],
                    tokens_in=500 + i % 1000,
                    tokens_out=100 + i % 300,
                    cost=0.001,
                )
            )
        store.flush()

    try:
        seconds, _ = timed(run)
        stored = store.stats().events
    finally:
        store.close()
    if stored != n:
        raise RuntimeError(f"record: {stored:,} of {n:,} events stored")
    return n / seconds


def record_batch_rate(path: Path, n: int) -> float:
    """``record_batch`` with lists of ``BATCH`` events built before the clock starts."""
    batches = [
        [write_event(i) for i in range(start, min(start + BATCH, n))]
        for start in range(0, n, BATCH)
    ]
    store = uw.SQLiteStore(path, durability="batch")

    def run() -> int:
        return sum(store.record_batch(batch) for batch in batches)

    try:
        seconds, inserted = timed(run)
    finally:
        store.close()
    if inserted != n:
        raise RuntimeError(f"record_batch: {inserted:,} of {n:,} events inserted")
    return n / seconds


RawMode = Literal["raw", "store-record", "store-batch"]


def build_ledger_raw() -> tuple[Path | None, str]:
    """Builds the raw program once; returns its executable, or None and why not.

    The samples then run that executable directly (what ``cargo run --release --example
    ledger_raw -- <path> <n>`` runs), so that a source edit in the middle of the benchmark
    cannot rebuild it between samples."""
    if shutil.which("cargo") is None:
        return None, "cargo is not on PATH"
    done = subprocess.run(
        ["cargo", "build", "--release", "--example", "ledger_raw", "--message-format=json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return None, "cargo build failed:\n" + done.stderr[-2_000:]
    for line in done.stdout.splitlines():
        message = json.loads(line)
        if message.get("target", {}).get("name") == "ledger_raw" and message.get("executable"):
            return Path(message["executable"]), ""
    return None, "cargo build did not report the ledger_raw executable"


@dataclass
class RawProgram:
    exe: Path
    pragmas: dict[str, object] = field(default_factory=dict)
    sqlite_version: str = "?"

    def rate(self, path: Path, n: int, mode: RawMode, batch: int) -> float:
        """Runs ``ledger_raw`` (which times itself) and returns its events/s."""
        done = subprocess.run(
            [str(self.exe), str(path), str(n), "--mode", mode, "--batch", str(batch)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ledger_raw --mode {mode} failed: {done.stderr.strip()}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        if report["stored"] != n:
            raise RuntimeError(f"ledger_raw --mode {mode}: {report['stored']:,} of {n:,} stored")
        self.pragmas = report["pragmas"] or self.pragmas
        self.sqlite_version = report["sqlite_version"]
        return float(report["events_per_s"])


# --------------------------------------------------------------------------------------
# Part 3: the old approach.
# --------------------------------------------------------------------------------------

BASELINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    timestamp TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    consumer_id TEXT NOT NULL,
    task_id TEXT,
    action TEXT NOT NULL,
    model TEXT,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    cost_usd REAL,
    metadata TEXT
);
CREATE INDEX IF NOT EXISTS usage_records_timestamp ON usage_records (timestamp);
CREATE INDEX IF NOT EXISTS usage_records_agent ON usage_records (agent_id, timestamp);
CREATE INDEX IF NOT EXISTS usage_records_consumer ON usage_records (consumer_id, timestamp);
"""

BASELINE_INSERT = (
    "INSERT INTO usage_records (request_id, timestamp, agent_id, consumer_id, task_id, action, "
    "model, tokens_in, tokens_out, cost_usd, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass
class Baseline:
    label: str
    events: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def baseline_rate(path: Path, max_events: int, max_seconds: float, *, bridged: bool) -> Baseline:
    """The old approach: aiosqlite with a new connection per event (open, INSERT, commit,
    close), SQLite defaults (rollback journal, synchronous=FULL), ISO-text timestamps.

    Not ``bridged``: awaited in one long-lived event loop. ``bridged``: called as the old
    sync storage interface called it, a new thread running ``asyncio.run`` per event."""
    import aiosqlite

    async def setup() -> None:
        async with aiosqlite.connect(path) as db:
            await db.executescript(BASELINE_SCHEMA)
            await db.commit()

    async def insert(e: uw.UsageEvent) -> None:
        row = (e.request_id, e.timestamp.isoformat(), e.agent_id, e.consumer_id, e.task_id)
        async with aiosqlite.connect(path) as db:
            await db.execute(
                BASELINE_INSERT, (*row, e.action, e.model, e.tokens_in, e.tokens_out, e.cost, None)
            )
            await db.commit()

    def bridge(e: uw.UsageEvent) -> None:
        thread = threading.Thread(target=asyncio.run, args=(insert(e),))
        thread.start()
        thread.join()

    asyncio.run(setup())
    loop = asyncio.new_event_loop()
    record: Callable[[uw.UsageEvent], object] = (
        bridge if bridged else lambda e: loop.run_until_complete(insert(e))
    )
    latencies = []
    try:
        start = time.perf_counter()
        for i in range(max_events):
            began = time.perf_counter()
            record(write_event(i))
            now = time.perf_counter()
            latencies.append(now - began)
            if now - start >= max_seconds:
                break
        seconds = time.perf_counter() - start
    finally:
        loop.close()
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT COUNT(*) FROM usage_records").fetchone()[0]
    if stored != len(latencies):
        raise RuntimeError(f"baseline: {stored} of {len(latencies)} events stored")
    label = "thread + asyncio.run per event" if bridged else "awaited in one event loop"
    return Baseline(label, len(latencies), seconds, latencies)


# --------------------------------------------------------------------------------------
# Part 4: reads over a large store.
# --------------------------------------------------------------------------------------


def dataset_events(n: int) -> Iterator[list[uw.UsageEvent]]:
    """The read store's events in batches of ``BATCH``, deterministic, oldest first, with
    request ids ``bench-00000000`` … (so that a rebuild is idempotent and checkable)."""
    rng = random.Random(DATASET_SEED)
    models = list(READ_PRICES)
    model_weights = [4, 3, 2, 1]
    step_us = READ_DAYS * 86_400_000_000 / n
    batch: list[uw.UsageEvent] = []
    for i in range(n):
        model = rng.choices(models, model_weights)[0]
        tokens_in = rng.randint(100, 4_000)
        tokens_out = rng.randint(20, 1_000)
        price_in, price_out = READ_PRICES[model]
        cost = (
            None if rng.random() < UNPRICED_SHARE else tokens_in * price_in + tokens_out * price_out
        )
        offset_us = int((i + rng.random()) * step_us)
        batch.append(
            uw.UsageEvent(
                f"agent-{rng.randrange(AGENTS):02d}",
                f"consumer-{rng.randrange(READ_CONSUMERS)}",
                model=model,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                duration_ms=rng.randint(200, 20_000),
                api_calls=1,
                cost=cost,
                timestamp=READ_START + timedelta(microseconds=offset_us),
                request_id=f"bench-{i:08d}",
            )
        )
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def read_store_is_complete(store: uw.SQLiteStore, n: int) -> bool:
    stats = store.stats()
    if stats.events != n or stats.oldest is None or stats.newest is None:
        return False
    newest = store.query(start=stats.newest, end=stats.newest)
    return (
        stats.oldest >= READ_START
        and stats.newest < READ_START + timedelta(days=READ_DAYS)
        and [e.request_id for e in newest] == [f"bench-{n - 1:08d}"]
    )


def open_read_store(path: Path, n: int, rebuild: bool) -> tuple[uw.SQLiteStore, str]:
    """The cached read store, rebuilt when asked or when it does not hold what it should."""
    if path.exists() and not rebuild:
        store = uw.SQLiteStore(path)
        if read_store_is_complete(store, n):
            return store, f"reused {path}"
        store.close()
        reason = "did not hold the expected events; rebuilt"
    else:
        reason = "rebuilt (--rebuild)" if rebuild and path.exists() else "built"
    remove_db(path)
    store = uw.SQLiteStore(path)
    start = time.perf_counter()
    inserted = sum(store.record_batch(batch) for batch in dataset_events(n))
    store.flush()
    seconds = time.perf_counter() - start
    if inserted != n or not read_store_is_complete(store, n):
        raise RuntimeError(f"building {path}: {inserted:,} of {n:,} events inserted")
    return store, (
        f"{reason} {path} in {seconds:.1f} s ({n / seconds:,.0f} events/s, "
        "constructing the events included)"
    )


def warm_page_cache(path: Path) -> float:
    """Reads the database (and its write-ahead log) once, so that the timed reads find it
    in the OS page cache whatever touched the machine before; returns the seconds taken."""
    start = time.perf_counter()
    for suffix in ("", "-wal"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            with part.open("rb", buffering=0) as f:
                while f.read(1 << 20):
                    pass
    return time.perf_counter() - start


@dataclass
class ReadResult:
    label: str
    target_ms: float | None
    times_ms: list[float]
    detail: str

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


def time_calls(calls: Sequence[Callable[[], T]]) -> tuple[list[float], list[T]]:
    """Milliseconds per call (each timed alone) and the results."""
    times, results = [], []
    for call in calls:
        seconds, result = timed(call)
        times.append(seconds * 1_000)
        results.append(result)
    return times, results


def measure_reads(store: uw.SQLiteStore, n: int, repeats: int) -> list[ReadResult]:
    out = []
    day = timedelta(days=1)
    # Different agents and days per call; bounds inclusive, so a day ends 1 us before the next.
    picks = [(f"agent-{(7 * k) % AGENTS:02d}", (11 * k) % READ_DAYS) for k in range(4 * repeats)]

    def summary_call(agent: str, d: int) -> Callable[[], uw.Aggregate]:
        start = READ_START + d * day
        end = start + day - timedelta(microseconds=1)
        return lambda: store.summary(agent_id=agent, start=start, end=end)

    summary_call(*picks[0])()  # warm-up: prepares the statement, warms the cache
    times, results = time_calls([summary_call(a, d) for a, d in picks])
    mean_events = statistics.mean(r.events for r in results)
    out.append(
        ReadResult(
            "summary(agent_id=…, start=day, end=day end)",
            TARGET_SUMMARY_MS,
            times,
            f"{len(picks)} calls over different agents/days, {mean_events:,.0f} events each",
        )
    )

    cases: list[tuple[str, float | None, Callable[[], list[uw.Aggregate]]]] = [
        ('aggregate("day")', TARGET_AGGREGATE_MS, lambda: store.aggregate("day")),
        (
            'aggregate("day", tz="America/New_York")',
            None,
            lambda: store.aggregate("day", tz="America/New_York"),
        ),
        ('aggregate("agent")', None, lambda: store.aggregate("agent")),
    ]
    for label, target, call in cases:
        call()  # warm-up
        agg_times, agg_results = time_calls([call] * repeats)
        groups = agg_results[0]
        total = sum(g.events for g in groups)
        if total != n:
            raise RuntimeError(f"{label}: the groups hold {total:,} events, not {n:,}")
        out.append(ReadResult(label, target, agg_times, f"{len(groups)} groups, {repeats} calls"))
    return out


# --------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------


@dataclass
class Summary:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def check(self, target: str, value: str | None, ok: bool | None) -> None:
        """Print the verdict for one target under the current table, and keep it."""
        verdict = "SKIP" if ok is None else ("PASS" if ok else "MISS")
        value = value or "not measured"
        self.rows.append((verdict, target, value))
        print(f"  target {target}: {value}  -> {verdict}")

    def print(self) -> None:
        print("\nSummary")
        width = max(len(target) for _, target, _ in self.rows) + 2
        for verdict, target, value in self.rows:
            print(f"  {verdict:<5} {target:<{width}}{value}")


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"


def fmt_ms(ms: float) -> str:
    return f"{ms:,.1f}" if ms >= 10 else f"{ms:.2f}"


def describe_build() -> list[str]:
    """Version, build type and which compiled module was loaded (and when it was built),
    with a warning when the Rust source (what ledger_raw is built from) is newer."""
    build = "!! DEBUG build: figures are meaningless" if uw._core.DEBUG_BUILD else "release build"
    path = Path(uw._core.__file__ or "?")
    if not path.exists():
        return [f"usagewarden {uw.__version__} ({build}): {path}"]
    built = path.stat().st_mtime
    lines = [
        f"usagewarden {uw.__version__} ({build}): {path}, built "
        + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(built))
    ]
    sources = list((ROOT / "src").rglob("*.rs"))
    newest = max(sources, key=lambda p: p.stat().st_mtime, default=None)
    if newest is not None and newest.stat().st_mtime > built:
        changed = time.strftime("%H:%M:%S", time.localtime(newest.stat().st_mtime))
        lines.append(
            f"!! {newest.relative_to(ROOT)} changed at {changed}, after the extension was "
            "built: the Python rows run the older build, the [2] rows the current source"
        )
    return lines


def print_write_table(rates: Sequence[Rate], record: Rate, raw: Rate | None) -> None:
    width = max(len(r.label) for r in rates) + 2
    print(f"  {'path':<{width}}{'events/s':>12}{'min..max':>22}{'/record':>10}{'/raw':>8}")
    for r in rates:
        spread = f"{fmt_rate(min(r.samples))}..{fmt_rate(max(r.samples))}"
        vs_record = f"{r.median / record.median:.2f}x"
        vs_raw = "" if raw is None else f"{r.median / raw.median:.2f}x"
        print(f"  {r.label:<{width}}{fmt_rate(r.median):>12}{spread:>22}{vs_record:>10}{vs_raw:>8}")


# --------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------


@dataclass
class Writes:
    record: Rate
    batch: Rate
    raw: Rate | None  # None when part 2 was skipped
    rust: list[Rate]
    program: RawProgram | None
    baselines: list[Baseline]
    baseline_limits: tuple[int, float]  # at most so many events, or seconds
    skipped: list[str]


def measure_writes(workdir: Path, events: int, repeats: int, baseline: tuple[int, float]) -> Writes:
    """Parts 1-3; every path's runs interleaved, so that all see the same machine conditions."""
    skipped = []
    exe, why = build_ledger_raw()
    program = None if exe is None else RawProgram(exe)
    if program is None:
        skipped.append(f"part 2 skipped: {why}")
    record = Rate("[1] record(UsageEvent(...)) per event, then flush()")
    batch = Rate(f"[1] record_batch({BATCH:,} prebuilt events)")
    runs: list[tuple[Rate, Callable[[Path], float]]] = [
        (record, lambda p: record_rate(p, events)),
        (batch, lambda p: record_batch_rate(p, events)),
    ]
    raw, rust = None, []
    if program is not None:
        prog = program
        raw = Rate(f"[2] raw rusqlite, {RAW_TRANSACTION:,} events per transaction")
        rust = [
            Rate("    the store from Rust: record() per event, then flush()"),
            Rate(f"    the store from Rust: record_batch({BATCH:,} events)"),
        ]
        runs += [
            (raw, lambda p: prog.rate(p, events, "raw", RAW_TRANSACTION)),
            (rust[0], lambda p: prog.rate(p, events, "store-record", BATCH)),
            (rust[1], lambda p: prog.rate(p, events, "store-batch", BATCH)),
        ]
    for i in range(repeats):
        for rate, run in runs:
            path = workdir / f"write-{i}.db"
            rate.samples.append(run(path))
            remove_db(path)
    baselines = []
    try:
        for bridged in (False, True):
            path = workdir / f"baseline-{bridged}.db"
            baselines.append(baseline_rate(path, *baseline, bridged=bridged))
    except ImportError:
        skipped.append("part 3 skipped: aiosqlite is not installed (pip install -e '.[bench]')")
    return Writes(record, batch, raw, rust, program, baselines, baseline, skipped)


def report_writes(w: Writes, events: int, repeats: int, summary: Summary) -> None:
    print(
        f"\n[1-3] writes: {events:,} events per run into a fresh database, median of {repeats} "
        f'runs\n      (50 agents, 5 consumers, 3 models; durability="batch"; WAL, '
        "synchronous=NORMAL)"
    )
    rates = [w.record, w.batch] + ([w.raw] if w.raw else []) + w.rust
    print_write_table(rates, w.record, w.raw)
    if w.program is not None:
        settings = ", ".join(f"{k}={v}" for k, v in sorted(w.program.pragmas.items()))
        print(f"  [2] SQLite {w.program.sqlite_version}, the writer's connection: {settings}")
    if w.baselines:
        max_events, max_seconds = w.baseline_limits
        print(
            "  [3] aiosqlite, a new connection per event (open, INSERT, commit, close), SQLite "
            "defaults\n      (rollback journal, synchronous=FULL), at most "
            f"{max_events} events or {max_seconds:.0f} s:"
        )
        for b in w.baselines:
            per_event_ms = statistics.median(b.latencies) * 1_000
            print(
                f"      {b.label + ':':<34}{fmt_rate(b.rate):>7} events/s, median "
                f"{fmt_ms(per_event_ms)} ms per event ({b.events} events in {b.seconds:.2f} s); "
                f"record is {w.record.median / b.rate:,.0f}x"
            )
    for note in w.skipped:
        print(f"  !! {note}")

    target = f"[2] record >= {TARGET_RAW_RATIO:.0%} of raw rusqlite"
    if w.raw is None:
        summary.check(target, None, None)
    else:
        ratio = w.record.median / w.raw.median
        summary.check(
            target,
            f"{ratio:.1%} ({fmt_rate(w.record.median)} vs {fmt_rate(w.raw.median)} events/s; "
            f"record_batch {w.batch.median / w.raw.median:.1%})",
            ratio >= TARGET_RAW_RATIO,
        )
    target = f"[3] record >= {TARGET_BASELINE_RATIO:,.0f}x the connection-per-event baseline"
    if not w.baselines:
        summary.check(target, None, None)
    else:
        base = w.baselines[0]  # the one judged: awaited in one event loop
        ratio = w.record.median / base.rate
        summary.check(
            target,
            f"{ratio:,.0f}x ({fmt_rate(w.record.median)} vs {fmt_rate(base.rate)} events/s, "
            f"{base.label})",
            ratio >= TARGET_BASELINE_RATIO,
        )


def run_reads(n: int, repeats: int, rebuild: bool, quick: bool, summary: Summary) -> None:
    """Part 4, on the cached store of ``n`` events."""
    label = "1m" if n == 1_000_000 else f"{n // 1_000}k"
    path = Path(tempfile.gettempdir()) / f"usagewarden-bench-{label}.db"
    print(
        f"\n[4] reads over {n:,} events ({AGENTS} agents, {READ_DAYS} days, "
        f"{READ_CONSUMERS} consumers, {len(READ_PRICES)} models)"
        + (" -- --quick: NOT the 1,000,000 the targets are set for" if quick else "")
    )
    store, how = open_read_store(path, n, rebuild)
    try:
        print(f"  store: {how}; {store.stats().size_bytes / 1e6:,.0f} MB")
        warmed = warm_page_cache(path)
        print(
            f"  warm cache: the file read once into the OS page cache ({warmed:.1f} s), then "
            "the median\n  of the calls after one untimed warm-up call per kind"
        )
        reads = measure_reads(store, n, repeats)
    finally:
        store.close()
    width = max(len(r.label) for r in reads) + 2
    print(f"  {'call':<{width}}{'median ms':>10}{'min':>9}{'max':>9}  notes")
    for r in reads:
        print(
            f"  {r.label:<{width}}{fmt_ms(r.median_ms):>10}{fmt_ms(min(r.times_ms)):>9}"
            f"{fmt_ms(max(r.times_ms)):>9}  {r.detail}"
        )
    scale = f" at {n:,} events" + (" (--quick)" if quick else "")
    for r in reads:
        if r.target_ms is not None:
            name = "summary, one agent and one day" if r.label.startswith("summary") else r.label
            summary.check(
                f"[4] {name} <= {r.target_ms:.0f} ms{scale}",
                f"{fmt_ms(r.median_ms)} ms median",
                r.median_ms <= r.target_ms,
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (smaller N everywhere)")
    parser.add_argument("--events", type=int, help="events per write run (parts 1 and 2)")
    parser.add_argument("--repeats", type=int, help="write runs per figure (the median is kept)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached read store")
    args = parser.parse_args(argv)

    events = args.events or (50_000 if args.quick else 200_000)
    repeats = args.repeats or (3 if args.quick else 5)
    if events < 1 or repeats < 1:
        parser.error("--events and --repeats must be positive")
    baseline = (200, 3.0) if args.quick else (500, 10.0)

    print(
        "usagewarden ledger benchmark" + (" (--quick: smaller N everywhere)" if args.quick else "")
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"  Python {platform.python_version()} ({platform.python_implementation()}) "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load}"
    )
    for line in describe_build():
        print(f"  {line}")
    print("  building benchmarks/ledger_raw.rs (cargo build --release --example ledger_raw)")
    summary = Summary()
    with tempfile.TemporaryDirectory(prefix="usagewarden-bench-") as tmp:
        writes = measure_writes(Path(tmp), events, repeats, baseline)
    report_writes(writes, events, repeats, summary)
    run_reads(
        100_000 if args.quick else 1_000_000,
        3 if args.quick else 7,
        args.rebuild,
        args.quick,
        summary,
    )
    summary.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
