"""PostgreSQL down or restarted: queued events are kept and retried (never
dropped, never raised into the caller under ``durability="batch"``), reads
raise ``StoreError``, ``"commit"`` writes fail in bounded time, and
``stats()`` shows the write errors and the queue depth."""

from __future__ import annotations

import threading
import time

import pytest
import usagewarden as uw
from ledger_helpers import event, ids
from postgres_cluster import PostgresCluster


@pytest.mark.slow
def test_a_restart_mid_stream_loses_no_acknowledged_event(
    postgres_cluster: PostgresCluster,
) -> None:
    schema = postgres_cluster.new_schema()
    acknowledged: list[str] = []
    stop = threading.Event()
    with uw.PostgresStore(postgres_cluster.dsn(), schema=schema) as store:

        def record_until_stopped() -> None:
            i = 0
            while not stop.is_set() or i < 2_000:
                acknowledged.append(store.record(event(i)))
                i += 1

        writer = threading.Thread(target=record_until_stopped)
        writer.start()
        while len(acknowledged) < 1_000:
            time.sleep(0.001)  # only waits for the writer thread to get going
        postgres_cluster.restart()  # the server goes away mid-batch and comes back
        stop.set()
        writer.join()
        store.flush()
        stored = set(ids(store.query()))
        assert stored == set(acknowledged), "every acknowledged event is stored"
        st = store.stats()
        assert st.queued == 0
        assert st.write_errors >= 1, "the restart did interrupt the writer"


@pytest.mark.slow
def test_while_the_server_is_down(postgres_cluster: PostgresCluster) -> None:
    schema = postgres_cluster.new_schema()
    batch = uw.PostgresStore(postgres_cluster.dsn(), schema=schema)
    commit = uw.PostgresStore(postgres_cluster.dsn(), schema=schema, durability="commit")
    commit.record(event(0))
    postgres_cluster.stop()
    try:
        # Reads fail at once with the library's error.
        with pytest.raises(uw.StoreError, match="PostgreSQL"):
            batch.query()
        with pytest.raises(uw.StoreError):
            commit.summary()
        # "batch": queued, never raised; stats (in memory) shows the backlog.
        for i in range(1, 51):
            assert batch.record(event(i)) == f"req-{i}"
        deadline = time.monotonic() + 30
        while batch.stats().write_errors == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the writer has tried (and failed) once
        st = batch.stats()
        assert st.queued == 50, "the backlog is kept, and shown"
        assert st.write_errors >= 1 and "PostgreSQL" in (st.last_error or "")
        # "commit": a clear error in bounded time (the writer's deadline), not a hang.
        started = time.monotonic()
        with pytest.raises(uw.StoreError, match="PostgreSQL"):
            commit.record(event(100))
        assert time.monotonic() - started < 30
    finally:
        postgres_cluster.start()
    batch.flush()
    st = batch.stats()
    assert st.write_errors >= 1 and st.last_error is not None
    assert st.queued == 0
    assert ids(batch.query()) == [f"req-{i}" for i in range(51)]
    batch.close()
    commit.close()
