"""The chain across retention purges (on every backend) and across the
migration that adds it (to an SQLite file and to a PostgreSQL schema)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw
from audit_helpers import AuditLedger, rows, tamper
from ledger_helpers import T0, event

RETENTION = 3600
OLD = T0 - dt.timedelta(days=2)


@pytest.fixture
def db(backend: Any) -> AuditLedger:
    return AuditLedger(backend, "p.db")


def purged_ledger(db: AuditLedger) -> None:
    """10 old events, 5 recent ones, then a late old one (out of time order),
    purged: the chain has two purged runs, 1-10 and 16."""
    clock = uw.ManualClock(T0.timestamp())
    with db.store(retention_seconds=RETENTION, clock=clock) as store:
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


def test_verify_passes_after_a_purge(db: AuditLedger) -> None:
    purged_ledger(db)
    boundaries = db.rows(
        "SELECT first_position, last_position FROM chain_purges ORDER BY first_position"
    )
    assert boundaries == [(1, 10), (16, 16)]
    with db.store() as store:
        assert store.verify().ok
        receipt = store.receipt("req-10")
        assert receipt.position == 11 and receipt.verify()
        (boundary,) = db.rows("SELECT digest FROM chain_purges WHERE last_position = 10")
        assert receipt.previous == boundary[0].hex()


def test_tampering_after_a_purge_is_still_caught(db: AuditLedger) -> None:
    purged_ledger(db)
    db.tamper("UPDATE usage_events SET cost_nanos = 0 WHERE request_id = 'req-12'")
    with db.store() as store:
        found = store.verify().problem
        assert found is not None
        assert (found.kind, found.position, found.request_id) == ("altered", 13, "req-12")


def test_a_row_deleted_after_a_purge_is_missing(db: AuditLedger) -> None:
    purged_ledger(db)
    db.tamper("DELETE FROM usage_events WHERE request_id = 'req-10'")
    with db.store() as store:
        found = store.verify().problem
        assert found is not None and (found.kind, found.position) == ("missing", 11)


def test_a_forged_purge_boundary_is_caught(db: AuditLedger) -> None:
    purged_ledger(db)
    db.tamper(f"UPDATE chain_purges SET digest = {db.blob(bytes(32))} WHERE last_position = 10")
    with db.store() as store:
        found = store.verify().problem
        assert found is not None and (found.kind, found.request_id) == ("altered", "req-10")


def test_a_purge_of_everything_keeps_the_head(db: AuditLedger) -> None:
    clock = uw.ManualClock(T0.timestamp())
    with db.store(retention_seconds=RETENTION, clock=clock) as store:
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
        "DROP TABLE usage_rollup",
        "DROP INDEX usage_events_unchained",
        "DROP TABLE chain_blocks",
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
    # Brought up to the version a new ledger has (later migrations included).
    fresh = tmp_path / "fresh.db"
    uw.SQLiteStore(fresh).close()
    newest = rows(fresh, "SELECT MAX(version) FROM schema_version")[0][0]
    assert newest >= 4
    assert max(r[0] for r in rows(db, "SELECT version FROM schema_version")) == newest


def test_the_postgres_migration_chains_an_existing_ledger_once_in_insertion_order(
    tmp_path: Path, postgres_cluster: Any
) -> None:
    from ledger_helpers import PostgresBackend

    backend = PostgresBackend(tmp_path, postgres_cluster)
    db = AuditLedger(backend, "old")
    with db.store() as store:
        store.record_batch([event(i, timestamp=T0 - dt.timedelta(seconds=i)) for i in range(5)])
        store.record(event(5, namespace="other"))
    # As the version before the chain wrote it (schema version 2).
    for sql in [
        "DROP TABLE usage_rollup",
        "DROP TABLE chain_heads",
        "DROP TABLE chain_purges",
        "ALTER TABLE usage_events DROP COLUMN chain_position",
        "ALTER TABLE usage_events DROP COLUMN chain_digest",
        "DELETE FROM schema_version WHERE version > 2",
    ]:
        db.tamper(sql)
    with db.store() as store:
        report = store.verify()
        assert report.ok and report.rows == 6
        assert report.namespaces == ["default", "other"]
        store.record(event(6))
        store.flush()
        assert store.receipt("req-6").position == 6
    chained = db.rows(
        "SELECT request_id, chain_position FROM usage_events WHERE namespace = 'default' "
        "ORDER BY id"
    )
    expected = [(f"req-{i}", i + 1) for i in range(5)] + [("req-6", 6)]
    assert chained == expected, "chained in insertion order, not time order"
    digests = db.rows("SELECT chain_digest FROM usage_events ORDER BY id")
    with db.store() as store:
        assert store.verify().ok
    assert db.rows("SELECT chain_digest FROM usage_events ORDER BY id") == digests
    fresh = AuditLedger(backend, "fresh")
    with fresh.store():
        pass
    [(newest,)] = fresh.rows("SELECT MAX(version) FROM schema_version")
    assert newest >= 3
    assert db.rows("SELECT MAX(version) FROM schema_version") == [(newest,)]


def test_a_purge_that_drops_whole_months_keeps_the_chain(db: AuditLedger) -> None:
    """Events months old (whole PostgreSQL partitions dropped) and recent
    ones: the boundary is recorded before the rows go."""
    clock = uw.ManualClock(T0.timestamp())
    months_ago = T0 - dt.timedelta(days=70)
    with db.store(retention_seconds=RETENTION, clock=clock) as store:
        store.record_batch(
            [event(i, timestamp=months_ago + dt.timedelta(days=i)) for i in range(4)]
        )
        store.record_batch([event(i) for i in range(4, 8)])
        store.flush()
        assert store.purge_expired() == 4
        report = store.verify()
        assert report.ok, report.problem
        assert report.rows == 4
        assert store.receipt("req-4").position == 5 and store.receipt("req-4").verify()
    assert db.rows("SELECT first_position, last_position FROM chain_purges") == [(1, 4)]
    db.tamper("UPDATE usage_events SET tokens_in = 1 WHERE request_id = 'req-4'")
    with db.store() as store:
        found = store.verify().problem
        assert found is not None and (found.kind, found.position) == ("altered", 5)
