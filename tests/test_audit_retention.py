"""The chain across retention purges and across the migration that adds it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import usagewarden as uw
from audit_helpers import rows, tamper
from ledger_helpers import T0, event

RETENTION = 3600
OLD = T0 - dt.timedelta(days=2)


def purged_ledger(db: Path) -> None:
    """10 old events, 5 recent ones, then a late old one (out of time order),
    purged: the chain has two purged runs, 1-10 and 16."""
    clock = uw.ManualClock(T0.timestamp())
    with uw.SQLiteStore(db, retention_seconds=RETENTION, clock=clock) as store:
        store.record_batch([event(i, timestamp=OLD + dt.timedelta(seconds=i)) for i in range(10)])
        store.record_batch([event(i) for i in range(10, 15)])
        store.record(event(15, timestamp=OLD))
        store.record(event(16))
        store.flush()
        assert store.purge_expired() == 11
        report = store.verify()
        assert report.ok, report.problem
        assert report.rows == 6
        assert report.checkpoints[0].position == 17


def test_verify_passes_after_a_purge(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    purged_ledger(db)
    boundaries = rows(
        db, "SELECT first_position, last_position FROM chain_purges ORDER BY first_position"
    )
    assert boundaries == [(1, 10), (16, 16)]
    with uw.SQLiteStore(db) as store:
        assert store.verify().ok
        receipt = store.receipt("req-10")
        assert receipt.position == 11 and receipt.verify()
        (boundary,) = rows(db, "SELECT digest FROM chain_purges WHERE last_position = 10")
        assert receipt.previous == boundary[0].hex()


def test_tampering_after_a_purge_is_still_caught(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    purged_ledger(db)
    tamper(db, "UPDATE usage_events SET cost_nanos = 0 WHERE request_id = 'req-12'")
    with uw.SQLiteStore(db) as store:
        found = store.verify().problem
        assert found is not None
        assert (found.kind, found.position, found.request_id) == ("altered", 13, "req-12")


def test_a_row_deleted_after_a_purge_is_missing(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    purged_ledger(db)
    tamper(db, "DELETE FROM usage_events WHERE request_id = 'req-10'")
    with uw.SQLiteStore(db) as store:
        found = store.verify().problem
        assert found is not None and (found.kind, found.position) == ("missing", 11)


def test_a_forged_purge_boundary_is_caught(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    purged_ledger(db)
    tamper(db, "UPDATE chain_purges SET digest = zeroblob(32) WHERE last_position = 10")
    with uw.SQLiteStore(db) as store:
        found = store.verify().problem
        assert found is not None and (found.kind, found.request_id) == ("altered", "req-10")


def test_a_purge_of_everything_keeps_the_head(tmp_path: Path) -> None:
    clock = uw.ManualClock(T0.timestamp())
    with uw.SQLiteStore(tmp_path / "p.db", retention_seconds=RETENTION, clock=clock) as store:
        store.record_batch([event(i) for i in range(4)])
        store.flush()
        head = store.checkpoint()
        clock.advance(2 * RETENTION)
        assert store.purge_expired() == 4
        report = store.verify(checkpoints=[head])
        assert report.ok and report.rows == 0
        store.record(event(9))
        store.flush()
        assert store.receipt("req-9").position == 5
        assert store.receipt("req-9").previous == head.digest
        assert store.verify(checkpoints=[head]).ok


def old_ledger(db: Path) -> None:
    """A ledger as the version before the chain wrote it (schema version 3)."""
    with uw.SQLiteStore(db) as store:
        store.record_batch([event(i, timestamp=T0 - dt.timedelta(seconds=i)) for i in range(5)])
        store.record(event(5, namespace="other"))
    for sql in [
        "DROP INDEX usage_events_chain",
        "DROP TABLE chain_heads",
        "DROP TABLE chain_purges",
        "ALTER TABLE usage_events DROP COLUMN artifact_digest",
        "ALTER TABLE usage_events DROP COLUMN chain_position",
        "ALTER TABLE usage_events DROP COLUMN chain_digest",
        "DELETE FROM schema_version WHERE version > 3",
    ]:
        tamper(db, sql)


def test_the_migration_chains_an_existing_ledger_once_in_time_order(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old_ledger(db)
    assert "chain_position" not in {r[1] for r in rows(db, "PRAGMA table_info(usage_events)")}
    with uw.SQLiteStore(db) as store:
        report = store.verify()
        assert report.ok and report.rows == 6
        assert report.namespaces == ["default", "other"]
        store.record(event(6))
        store.flush()
        assert store.receipt("req-6").position == 6
    chained = rows(
        db,
        "SELECT request_id FROM usage_events WHERE namespace = 'default' ORDER BY chain_position",
    )
    assert [r[0] for r in chained] == ["req-4", "req-3", "req-2", "req-1", "req-0", "req-6"]
    digests = rows(db, "SELECT chain_digest FROM usage_events ORDER BY id")
    # Opening again does not chain anything twice.
    with uw.SQLiteStore(db) as store:
        assert store.verify().ok
    assert rows(db, "SELECT chain_digest FROM usage_events ORDER BY id") == digests
    assert max(r[0] for r in rows(db, "SELECT version FROM schema_version")) == 4
