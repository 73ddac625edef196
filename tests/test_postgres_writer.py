"""The PostgreSQL writer's batches: one transaction that mixes new events,
duplicates and conflicts (with stored rows and within the batch) stores
exactly the first of each new request id, extends the chain by those alone
and adds exactly them to the grouped totals."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import usagewarden as uw
from ledger_helpers import event
from postgres_cluster import PostgresCluster


@contextmanager
def chain_heads_locked(cluster: PostgresCluster, schema: str) -> Iterator[None]:
    """Holds every chain head of `schema` (FOR UPDATE) in another session: a
    writer transaction waits for it before deciding anything."""
    psql = subprocess.Popen(
        cluster.psql_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert psql.stdin is not None and psql.stdout is not None
    psql.stdin.write(
        f"BEGIN; SELECT namespace FROM {schema}.chain_heads FOR UPDATE; SELECT 'locked';\n"
    )
    psql.stdin.flush()
    while (line := psql.stdout.readline()) != "locked\n":
        assert line, "psql ended before it held the lock"
    try:
        yield
    finally:
        psql.stdin.write("ROLLBACK;\n")
        psql.stdin.close()
        psql.wait(timeout=30)


def wait_for_a_blocked_writer(cluster: PostgresCluster) -> None:
    """Polls until a usagewarden session waits on a lock (the writer's head lock)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        waiting = cluster.sql(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'usagewarden' AND wait_event_type = 'Lock'"
        )
        if int(waiting) > 0:
            return
        time.sleep(0.01)
    pytest.fail("the writer never waited on the held chain head")


def test_a_batch_mixing_new_duplicate_and_conflicting_ids_stores_exactly_the_new(
    postgres_cluster: PostgresCluster,
) -> None:
    schema = postgres_cluster.new_schema()
    store = uw.PostgresStore(postgres_cluster.dsn(), schema=schema)
    store.record(event(0))
    store.flush()
    with chain_heads_locked(postgres_cluster, schema):
        store.record(event(100))
        wait_for_a_blocked_writer(postgres_cluster)
        # Queued while the writer waits: one transaction once the head is free.
        mixed = [
            event(1),  # new
            event(0),  # a duplicate of a stored event
            event(0, tokens_in=999),  # a conflict with a stored event
            event(2),  # new
            event(2),  # a duplicate of a new event of the same batch
            event(3),  # new
            event(3, tokens_in=5),  # a conflict with a new event of the same batch
            event(1),  # a duplicate of a new event of the same batch
        ]
        for e in mixed:
            store.record(e)
    store.flush()

    stored = store.query()
    assert sorted(e.request_id for e in stored) == ["req-0", "req-1", "req-100", "req-2", "req-3"]
    by_id = {e.request_id: e for e in stored}
    assert by_id["req-3"].tokens_in == event(3).tokens_in
    assert by_id["req-0"].tokens_in == event(0).tokens_in
    stats = store.stats()
    assert (stats.inserted, stats.duplicates, stats.conflicts) == (5, 3, 2)

    # The mixed batch's new events went in one transaction.
    xmins = postgres_cluster.sql(
        f"SELECT DISTINCT xmin::text FROM {schema}.usage_events "
        "WHERE request_id IN ('req-1', 'req-2', 'req-3')"
    ).split()
    assert len(xmins) == 1

    # The chain: one position per stored event, in commit order, no gaps.
    positions = postgres_cluster.sql(
        f"SELECT string_agg(request_id || ':' || chain_position, ' ' ORDER BY chain_position) "
        f"FROM {schema}.usage_events"
    ).split()
    assert positions == ["req-0:1", "req-100:2", "req-1:3", "req-2:4", "req-3:5"]
    head = postgres_cluster.sql(f"SELECT position FROM {schema}.chain_heads")
    assert head == "5"
    report = store.verify()
    assert report.ok and report.rows == 5

    # The grouped totals hold the stored events and nothing else.
    summary = store.summary()
    assert summary.events == 5
    assert summary.tokens_in == sum(e.tokens_in for e in stored)
    assert summary.cost == pytest.approx(sum(e.cost or 0 for e in stored))
    rollup = postgres_cluster.sql(
        f"SELECT sum(events), sum(tokens_in), sum(cost_nanos) FROM {schema}.usage_rollup"
    )
    daily = postgres_cluster.sql(
        f"SELECT sum(events), sum(tokens_in), sum(cost_nanos) FROM {schema}.usage_daily"
    )
    expected = postgres_cluster.sql(
        f"SELECT count(*), sum(tokens_in), sum(cost_nanos) FROM {schema}.usage_events"
    )
    assert rollup == daily == expected
    store.close()


def test_record_batch_with_an_in_batch_conflict_stores_nothing(
    postgres_cluster: PostgresCluster,
) -> None:
    schema = postgres_cluster.new_schema()
    with uw.PostgresStore(postgres_cluster.dsn(), schema=schema) as store:
        assert store.record_batch([event(0), event(1), event(0), event(1)]) == 2
        with pytest.raises(uw.ConflictError, match=r"events\[3\].*req-2"):
            store.record_batch([event(5), event(0), event(2), event(2, tokens_in=1)])
        assert sorted(e.request_id for e in store.query()) == ["req-0", "req-1"]
        assert store.summary().events == 2
        assert postgres_cluster.sql(f"SELECT position FROM {schema}.chain_heads") == "2"
        assert store.record_batch([event(2), event(0)]) == 1
        assert store.verify().ok
