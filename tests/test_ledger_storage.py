"""How the ledger is stored (issue 3): WAL, integer UTC microseconds, cost in
integer nano-USD, an index for every filter with a time range, and one batching
writer fast enough for per-request recording. The file is inspected with
Python's sqlite3 in a child process, after the store is closed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import usagewarden as uw
from ledger_helpers import T0, event, sqlite_rows

FILTER_COLUMNS = ["namespace", "agent_id", "consumer_id", "task_id", "model", "action"]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("storage") / "ledger.db"
    tokyo = dt.timezone(dt.timedelta(hours=9))
    with uw.SQLiteStore(path) as store:
        store.record_batch(
            [
                event(0, cost=1.5, timestamp=dt.datetime(2026, 2, 14, 21, 0, 0, 7, tzinfo=tokyo)),
                event(1, cost=None, request_id="unpriced"),
            ]
        )
    return path


def event_table(path: Path) -> str:
    tables = [
        name
        for (name,) in sqlite_rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")
        if not name.startswith("sqlite_")
    ]
    for name in tables:
        columns = {c for (_, c, *_rest) in sqlite_rows(path, f"PRAGMA table_info({name})")}
        if {"request_id", *FILTER_COLUMNS} <= columns:
            return name
    raise AssertionError(f"no table holds the events: {tables}")


def test_the_database_is_in_wal_mode(ledger: Path) -> None:
    assert sqlite_rows(ledger, "PRAGMA journal_mode") == [("wal",)]


def integer_columns_equal_to(path: Path, table: str, request_id: str, value: int) -> list[str]:
    columns = [c for (_, c, *_rest) in sqlite_rows(path, f"PRAGMA table_info({table})")]
    (row,) = sqlite_rows(
        path,
        f"SELECT {', '.join(f'typeof({c}), {c}' for c in columns)} FROM {table} "
        f"WHERE request_id = '{request_id}'",
    )
    return [
        c
        for c, kind, v in zip(columns, row[0::2], row[1::2], strict=True)
        if kind == "integer" and v == value
    ]


def test_timestamps_are_integer_utc_microseconds(ledger: Path) -> None:
    table = event_table(ledger)
    ts = dt.datetime(2026, 2, 14, 12, 0, 0, 7, tzinfo=dt.timezone.utc)
    micros = (ts - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
    assert integer_columns_equal_to(ledger, table, "req-0", micros), "no integer µs column"


def test_cost_is_integer_nano_usd_and_unknown_cost_is_null(ledger: Path) -> None:
    table = event_table(ledger)
    cost_columns = integer_columns_equal_to(ledger, table, "req-0", 1_500_000_000)
    assert cost_columns, "no integer nano-USD column"
    (column,) = cost_columns
    assert sqlite_rows(ledger, f"SELECT {column} FROM {table} WHERE request_id = 'unpriced'") == [
        (None,)
    ], "an unknown cost is NULL, not 0"


def test_every_filter_has_an_index_with_the_time(ledger: Path) -> None:
    table = event_table(ledger)
    (ts_column,) = integer_columns_equal_to(
        ledger, table, "req-0", int(T0.timestamp()) * 1_000_000 + 7
    )
    indexes = {}
    for _, name, *_rest in sqlite_rows(ledger, f"PRAGMA index_list({table})"):
        columns = [c for (_, _, c) in sqlite_rows(ledger, f"PRAGMA index_info({name})")]
        indexes[name] = columns
    leading = [cols[:2] for cols in indexes.values()]
    for column in FILTER_COLUMNS:
        assert [column, ts_column] in leading, f"no ({column}, {ts_column}) index: {indexes}"
    assert any(cols[:1] == [ts_column] for cols in indexes.values()), "no index on time alone"
    unique = [cols for cols in indexes.values() if set(cols) == {"namespace", "request_id"}]
    assert unique, "(namespace, request_id) is unique"


def test_many_queued_records_are_all_committed_by_one_flush(tmp_path: Path) -> None:
    """Events queued faster than one transaction commits are grouped into the
    writer's next transactions; none is lost or duplicated. (Throughput is
    measured in benchmarks/bench_ledger.py, not here.)"""
    evs = [uw.UsageEvent("a", "c", request_id=f"fast-{i}") for i in range(20_000)]
    with uw.SQLiteStore(tmp_path / "fast.db") as store:
        for e in evs:
            store.record(e)
        store.flush()
        stats = store.stats()
        assert (stats.events, stats.queued, stats.inserted) == (20_000, 0, 20_000)
