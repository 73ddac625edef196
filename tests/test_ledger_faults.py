"""The writer's failure model, by fault injection on real files.

A failure that may pass (a full disk, a lock) is retried while the events stay
queued; ``flush(timeout=…)`` and ``close(timeout=…)`` answer in bounded time and
drop nothing. A failure retrying cannot fix (a table dropped by another
process, a file that is not a database) stops writes with a ``StoreError``
at once, and the acknowledged events still queued go to the spill file that
the next open records, idempotently.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import usagewarden as uw
from fault_helpers import fill, small_disk_at
from ledger_helpers import event, events, run_python

EXEC_SQL = """
import sqlite3
from collections.abc import Iterator
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.executescript(sys.argv[2])
con.close()
"""


def spill_of(path: Path) -> Path:
    return Path(f"{path}-spill.ndjson")


def spilled_ids(path: Path) -> list[str]:
    lines = spill_of(path).read_text().splitlines()
    return [json.loads(line)["request_id"] for line in lines]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk_at(tmp_path) as disk:
        yield disk


def padded(i: int) -> uw.UsageEvent:
    return event(i, metadata={"note": "x" * 400})


def test_a_dropped_table_stops_writes_at_once_and_spills_what_was_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="usagewarden")
    path = tmp_path / "broken.db"
    store = uw.SQLiteStore(path)
    store.record(event(0))
    store.flush()
    run_python(EXEC_SQL, path, "DROP TABLE usage_hourly;")
    acknowledged = [store.record(e) for e in events(50, start=1)]
    with pytest.raises(uw.StoreError, match="stopped accepting writes"):
        store.flush(timeout=30)
    with pytest.raises(uw.StoreError, match="stopped accepting writes"):
        store.record(event(99))
    with pytest.raises(uw.StoreError, match="stopped accepting writes"):
        store.record_batch([event(98)])
    stats = store.stats()
    assert stats.last_error is not None and "usage_hourly" in stats.last_error
    store.close(timeout=5)  # waits for the writer to spill what was still queued
    assert sorted(spilled_ids(path)) == sorted(acknowledged)
    assert any("saved to" in r.getMessage() for r in caplog.records)


def test_the_next_open_records_the_spill_file_once(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    store = uw.SQLiteStore(path)
    store.record(event(0))
    store.flush()
    run_python(EXEC_SQL, path, "DROP TABLE usage_hourly;")
    for e in events(20, start=1):
        store.record(e)
    store.close(timeout=5)
    spill = spill_of(path)
    kept = tmp_path / "kept.ndjson"
    shutil.copy(spill, kept)
    # The operator replaces the broken file; the acknowledged events come back.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with uw.SQLiteStore(path) as store:
        assert store.query() == events(20, start=1)
    assert not spill.exists()
    # Replaying the same file again (a crash before it was removed) adds nothing.
    shutil.copy(kept, spill)
    with uw.SQLiteStore(path) as store:
        assert store.query() == events(20, start=1)
        assert store.stats().inserted == 0
    assert not spill.exists()


def test_commit_durability_raises_instead_of_hanging_on_a_permanent_failure(
    tmp_path: Path,
) -> None:
    path = tmp_path / "commit.db"
    with uw.SQLiteStore(path, durability="commit") as store:
        store.record(event(0))
        run_python(EXEC_SQL, path, "DROP TABLE usage_events;")
        with pytest.raises(uw.StoreError, match="usage_events"):
            store.record(event(1))
        with pytest.raises(uw.StoreError, match="stopped accepting writes"):
            store.record(event(2))
    # Nothing was acknowledged, so nothing is spilled.
    assert not spill_of(path).exists()


def test_a_file_that_is_not_a_database_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(uw.StoreError, match="garbage.db"):
        uw.SQLiteStore(path)


def test_a_database_from_a_newer_version_is_refused_naming_both_versions(
    tmp_path: Path,
) -> None:
    path = tmp_path / "newer.db"
    with uw.SQLiteStore(path) as store:
        store.record(event(0))
    con = sqlite3.connect(path)
    current = con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    con.execute("INSERT INTO schema_version (version) VALUES (99)")
    con.commit()
    con.close()
    with pytest.raises(uw.StoreError, match=rf"schema version 99.*version {current}\b"):
        uw.SQLiteStore(path)


@pytest.mark.parametrize("method", ["flush", "close", "record_batch", "purge_expired"])
@pytest.mark.parametrize("timeout", [0, -1.0, float("nan")])
def test_timeouts_must_be_positive(tmp_path: Path, method: str, timeout: float) -> None:
    with uw.SQLiteStore(tmp_path / "t.db", retention_seconds=60) as store:
        args: list[object] = [[event(0)]] if method == "record_batch" else []
        with pytest.raises(ValueError, match="timeout"):
            getattr(store, method)(*args, timeout=timeout)


def test_a_full_disk_holds_the_events_answers_in_bounded_time_and_recovers(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="usagewarden")
    path = small_disk / "full.db"
    store = uw.SQLiteStore(path)
    store.record(padded(0))
    store.flush()
    filler = fill(small_disk)
    n = 30_000
    for i in range(1, n):
        store.record(padded(i))
    with pytest.raises(uw.StoreError, match="did not finish in time"):
        store.flush(timeout=1)
    with pytest.raises(uw.StoreError, match="did not finish in time"):
        store.record_batch([padded(n)], timeout=0.5)
    stats = store.stats()
    assert stats.queued > 0, "the events wait in the queue, not dropped"
    assert stats.last_error is not None and "full" in stats.last_error
    filler.unlink()
    store.flush(timeout=120)
    stats = store.stats()
    assert stats.last_error is None, "a write that succeeds clears the last error"
    assert stats.queued == 0
    assert stats.events == n, "every acknowledged event is stored; the timed-out batch is not"
    store.close()
    assert not spill_of(path).exists()


def test_close_on_a_full_disk_returns_in_bounded_time_and_keeps_or_reports_every_event(
    small_disk: Path, tmp_path: Path
) -> None:
    """close(timeout=…) gives up on the full disk, tries to spill, and says how
    many acknowledged events it could not keep: none is dropped silently."""
    path = small_disk / "full.db"
    store = uw.SQLiteStore(path)
    store.record(padded(0))
    store.flush()
    fill(small_disk)
    for i in range(1, 20_000):
        store.record(padded(i))
    try:
        store.close(timeout=1)
    except uw.StoreError as exc:
        assert "acknowledged events could not be written" in str(exc)
        lost = int(str(exc).split()[0])
    else:
        lost = 0
    spilled = len(spilled_ids(path)) if spill_of(path).exists() else 0
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    stored = con.execute("SELECT COUNT(*) FROM usage_events").fetchone()[0]
    con.close()
    assert stored + spilled + lost == 20_000


def test_a_repaired_database_takes_the_spilled_events_on_the_next_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process hides the table: writes stop (retrying would not bring
    it back), record() still never blocks, the failure is logged and counted.
    Once the table is back, reopening records every acknowledged event."""
    caplog.set_level(logging.WARNING, logger="usagewarden")
    path = tmp_path / "failing.db"
    with uw.SQLiteStore(path) as store:
        store.record(event(0))
        store.flush()
        run_python(EXEC_SQL, path, "ALTER TABLE usage_events RENAME TO usage_events_away;")
        for e in events(100, start=1):
            try:
                store.record(e)
            except uw.StoreError:
                break  # the writer has seen the failure: later writes are refused
        with pytest.raises(uw.StoreError, match="usage_events"):
            store.flush(timeout=30)
    acknowledged = sorted(spilled_ids(path))  # complete once the store is closed
    assert acknowledged, "events recorded before the writer saw the failure are spilled"
    run_python(EXEC_SQL, path, "ALTER TABLE usage_events_away RENAME TO usage_events;")
    with uw.SQLiteStore(path) as store:
        assert sorted(e.request_id for e in store.query()) == sorted(["req-0", *acknowledged])
    logged = [r for r in caplog.records if r.name == "usagewarden"]
    assert logged and all(r.levelno >= logging.WARNING for r in logged)
    assert any("usage_events" in r.getMessage() for r in logged)
