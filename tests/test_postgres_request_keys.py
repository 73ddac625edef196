"""`request_keys`, the table that keeps each PostgreSQL event's request id
unique across partitions: a ledger written with its first shape (a `ts`
column and index, keys in the database's collation) migrates to the narrow
one and keeps deciding duplicates and conflicts; a purge removes exactly the
keys of the events it removes."""

from __future__ import annotations

import datetime as dt

import pytest
import usagewarden as uw
from ledger_helpers import T0, event
from postgres_cluster import PostgresCluster

#: The calendar tables' migration, the last before the narrow `request_keys`.
CALENDAR_VERSION = 7


def shape(cluster: PostgresCluster, schema: str) -> tuple[str, str, str]:
    """(columns, collations of the key columns, indexes) of `request_keys`."""
    columns = cluster.sql(
        "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) "
        "FROM information_schema.columns "
        f"WHERE table_schema = '{schema}' AND table_name = 'request_keys'"
    )
    collations = cluster.sql(
        "SELECT string_agg(coalesce(collation_name, 'default'), ',' ORDER BY ordinal_position) "
        "FROM information_schema.columns "
        f"WHERE table_schema = '{schema}' AND table_name = 'request_keys' "
        "AND column_name IN ('namespace', 'request_id')"
    )
    indexes = cluster.sql(
        "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes "
        f"WHERE schemaname = '{schema}' AND tablename = 'request_keys'"
    )
    return columns, collations, indexes


def test_a_ledger_with_the_first_request_keys_migrates_and_keeps_its_ids(
    postgres_cluster: PostgresCluster,
) -> None:
    schema = postgres_cluster.new_schema()
    s = schema
    with uw.PostgresStore(postgres_cluster.dsn(), schema=schema) as store:
        assert store.record_batch([event(i) for i in range(6)]) == 6
    # Back to the table as the first migration made it, with its rows.
    postgres_cluster.sql(
        f"ALTER TABLE {s}.request_keys "
        'ALTER COLUMN namespace TYPE TEXT COLLATE "default", '
        'ALTER COLUMN request_id TYPE TEXT COLLATE "default", ADD COLUMN ts BIGINT; '
        f"UPDATE {s}.request_keys k SET ts = e.ts FROM {s}.usage_events e "
        "WHERE e.namespace = k.namespace AND e.request_id = k.request_id; "
        f"ALTER TABLE {s}.request_keys ALTER COLUMN ts SET NOT NULL; "
        f"CREATE INDEX request_keys_ts ON {s}.request_keys (ts); "
        f"DELETE FROM {s}.schema_version WHERE version > {CALENDAR_VERSION}"
    )
    old = shape(postgres_cluster, schema)
    assert old == (
        "namespace,request_id,fingerprint,ts",
        "default,default",
        "request_keys_pkey,request_keys_ts",
    )

    with uw.PostgresStore(postgres_cluster.dsn(), schema=schema) as store:
        assert shape(postgres_cluster, schema) == (
            "namespace,request_id,fingerprint",
            "C,C",
            "request_keys_pkey",
        )
        # The ids written before the migration are still known.
        assert store.record_batch([event(i) for i in range(4, 8)]) == 2
        with pytest.raises(uw.ConflictError, match=r"events\[1\].*req-2"):
            store.record_batch([event(9), event(2, tokens_in=1)])
        assert store.record(event(3)) == "req-3"
        store.record(event(0, tokens_in=5))
        store.flush()
        stats = store.stats()
        assert (stats.inserted, stats.duplicates, stats.conflicts) == (2, 3, 2)
        assert sorted(e.request_id for e in store.query()) == [f"req-{i}" for i in range(8)]
        assert store.summary().events == 8
        assert store.verify().ok
    keys = postgres_cluster.sql(f"SELECT count(*) FROM {s}.request_keys")
    assert keys == "8"
    versions = postgres_cluster.sql(f"SELECT count(*) FROM {s}.schema_version")
    assert int(versions) > CALENDAR_VERSION


def test_a_purge_removes_the_keys_of_the_events_it_removes(
    postgres_cluster: PostgresCluster,
) -> None:
    schema = postgres_cluster.new_schema()
    clock = uw.ManualClock(T0.timestamp())
    old = T0 - dt.timedelta(days=70)  # a whole month's partition, dropped
    edge = T0 - dt.timedelta(hours=2)  # the partition the cutoff falls in
    with uw.PostgresStore(
        postgres_cluster.dsn(), schema=schema, retention_seconds=3600, clock=clock
    ) as store:
        store.record_batch(
            [event(i, timestamp=old + dt.timedelta(minutes=i)) for i in range(3)]
            + [event(i, timestamp=edge) for i in range(3, 5)]
            + [event(i) for i in range(5, 8)]
        )
        assert store.purge_expired() == 5
        kept = postgres_cluster.sql(
            f"SELECT string_agg(request_id, ',' ORDER BY request_id) FROM {schema}.request_keys"
        )
        assert kept == "req-5,req-6,req-7"
        # A purged id is new again (a stored one is still a duplicate).
        assert store.record_batch([event(0), event(5)]) == 1
        assert store.summary().events == 4
