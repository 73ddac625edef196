"""What only the PostgreSQL store has: opening by URL, the schema name, the
versioned schema, monthly partitions and retention by partition, indexes
for every filter with a time range."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import usagewarden as uw
from ledger_helpers import T0, UTC, event, events, ids
from postgres_cluster import PostgresCluster


def partitions(cluster: PostgresCluster, schema: str) -> list[str]:
    rows = cluster.sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        f"WHERE i.inhparent = '{schema}.usage_events'::regclass ORDER BY 1"
    )
    return rows.split()


def test_open_store_by_url(tmp_path: Path, postgres_cluster: PostgresCluster) -> None:
    with uw.open_store(f"sqlite:///{tmp_path / 'a.db'}", durability="commit") as lite:
        assert isinstance(lite, uw.SQLiteStore)
        assert lite.path == str(tmp_path / "a.db")
        assert lite.durability == "commit"
    schema = postgres_cluster.new_schema()
    with uw.open_store(postgres_cluster.dsn(), schema=schema) as pg:
        assert isinstance(pg, uw.PostgresStore)
        assert isinstance(pg, uw.MeteringStore)
        pg.record(event(0))
        pg.flush()
    again = uw.open_async_store(postgres_cluster.dsn(), schema=schema)
    assert isinstance(again, uw.AsyncPostgresStore)
    assert isinstance(again, uw.AsyncMeteringStore)
    assert ids(again.blocking().query()) == ["req-0"]
    again.blocking().close()


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite:relative.db", "usage.db", "sqlite:///"])
def test_a_bad_url_is_a_value_error_naming_url(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        uw.open_store(url)
    with pytest.raises(ValueError, match="url"):
        uw.open_async_store(url)


def test_the_dsn_shown_has_no_password(postgres_cluster: PostgresCluster) -> None:
    dsn = postgres_cluster.dsn().replace("postgres@", "postgres:s3cret@")
    with uw.PostgresStore(dsn, schema=postgres_cluster.new_schema()) as store:
        assert "s3cret" not in store.dsn and "s3cret" not in repr(store)
        assert store.dsn.startswith("postgresql://postgres@127.0.0.1:")


@pytest.mark.parametrize("schema", ["", "Upper", "a-b", 'x"; DROP SCHEMA public; --', "pg_x"])
def test_the_schema_name_is_validated(postgres_cluster: PostgresCluster, schema: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        uw.PostgresStore(postgres_cluster.dsn(), schema=schema)


def test_an_unreachable_server_is_a_store_error() -> None:
    with pytest.raises(uw.StoreError, match="PostgreSQL"):
        uw.PostgresStore("postgresql://postgres@127.0.0.1:1/none")


def test_a_newer_schema_refuses_to_open_naming_both_versions(
    postgres_cluster: PostgresCluster,
) -> None:
    schema = postgres_cluster.new_schema()
    uw.PostgresStore(postgres_cluster.dsn(), schema=schema).close()
    postgres_cluster.sql(f"INSERT INTO {schema}.schema_version VALUES (99)")
    with pytest.raises(uw.StoreError, match=r"version 99.*newer than this usagewarden's \d+"):
        uw.PostgresStore(postgres_cluster.dsn(), schema=schema)


def test_hosts_opening_at_once_migrate_once(postgres_cluster: PostgresCluster) -> None:
    import concurrent.futures

    schema = postgres_cluster.new_schema()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        stores = list(
            pool.map(lambda _: uw.PostgresStore(postgres_cluster.dsn(), schema=schema), range(8))
        )
    for s in stores:
        s.close()
    # Each migration ran once: one row per version, no repeats.
    assert (
        postgres_cluster.sql(
            f"SELECT COUNT(*) - COUNT(DISTINCT version) FROM {schema}.schema_version"
        )
        == "0"
    )
    assert int(postgres_cluster.sql(f"SELECT COUNT(*) FROM {schema}.schema_version")) >= 2


def test_partitions_are_monthly_and_retention_drops_whole_ones(
    postgres_cluster: PostgresCluster,
) -> None:
    schema = postgres_cluster.new_schema()
    clock = uw.ManualClock(dt.datetime(2026, 4, 10, tzinfo=UTC).timestamp())
    month = 30 * 86_400
    with uw.PostgresStore(
        postgres_cluster.dsn(), schema=schema, retention_seconds=month, clock=clock
    ) as store:
        # Opening created this month's and the next month's partitions ahead of need.
        assert partitions(postgres_cluster, schema) == [
            "usage_events_p202604",
            "usage_events_p202605",
        ]
        evs = [
            event(i, timestamp=dt.datetime(2026, m, d, tzinfo=UTC))
            for i, (m, d) in enumerate([(1, 5), (1, 20), (2, 7), (3, 1), (3, 15), (4, 9)])
        ]
        assert store.record_batch(evs) == 6
        assert partitions(postgres_cluster, schema) == [
            f"usage_events_p2026{m:02d}" for m in (1, 2, 3, 4, 5)
        ]
        # Cutoff 2026-03-11: January and February go whole, March is cut at the edge.
        assert store.purge_expired() == 4
        assert partitions(postgres_cluster, schema) == [
            f"usage_events_p2026{m:02d}" for m in (3, 4, 5)
        ]
        assert ids(store.query()) == ["req-4", "req-5"]
        assert store.summary().events == 2
        # A purged request id may be recorded again, as on SQLite.
        assert store.record_batch([evs[0]]) == 1


@pytest.mark.parametrize(
    "column", ["namespace", "agent_id", "consumer_id", "task_id", "model", "action"]
)
def test_every_filter_with_a_time_range_has_an_index(
    postgres_cluster: PostgresCluster, column: str
) -> None:
    schema = postgres_cluster.new_schema()
    with uw.PostgresStore(postgres_cluster.dsn(), schema=schema) as store:
        store.record_batch(events(50, task_id="t", model="m"))
    start = int(T0.timestamp() * 1e6)
    plan = postgres_cluster.sql(
        "SET enable_seqscan = off; EXPLAIN SELECT COUNT(*) FROM "
        f"{schema}.usage_events WHERE {column} = 'x' AND ts >= {start} AND ts <= {start + 10**9}"
    )
    assert "Seq Scan" not in plan, plan
    assert "Index" in plan, plan
    # Partitions outside the range are pruned.
    assert plan.count(" on usage_events_p") == 1, plan
