"""Many hosts, one ledger: processes and stores writing one PostgreSQL schema
at once store every event exactly once, a replay adds nothing, and a
conflicting event from another process is detected."""

from __future__ import annotations

import json
import threading

import pytest
import usagewarden as uw
from ledger_helpers import popen_python, run_python
from postgres_cluster import PostgresCluster

PER_PROCESS = 5_000
PROCESSES = 4
TOTAL = PER_PROCESS * PROCESSES

#: A child: records its share of events (and the first 500 of the next
#: share, which another process records too), then prints its counters.
CHILD = """
dsn, schema, durability = sys.argv[1], sys.argv[2], sys.argv[5]
start, count, total = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[6])

def ev(i):
    return uw.UsageEvent(f"agent-{i % 7}", f"consumer-{i % 5}", tokens_in=i, cost=i / 1e6,
                         timestamp=T0 + dt.timedelta(seconds=i), request_id=f"req-{i}")

with uw.PostgresStore(dsn, schema=schema, durability=durability) as store:
    for i in list(range(start, start + count)) + [(start + count + k) % total for k in range(500)]:
        store.record(ev(i))
    store.flush()
    st = store.stats()
print(json.dumps({"inserted": st.inserted, "duplicates": st.duplicates, "conflicts": st.conflicts}))
"""


def parent_event(i: int) -> uw.UsageEvent:
    import datetime as dt

    from ledger_helpers import T0

    return uw.UsageEvent(
        f"agent-{i % 7}",
        f"consumer-{i % 5}",
        tokens_in=i,
        cost=i / 1e6,
        timestamp=T0 + dt.timedelta(seconds=i),
        request_id=f"req-{i}",
    )


def run_children(cluster: PostgresCluster, schema: str) -> list[dict[str, int]]:
    children = [
        popen_python(CHILD, cluster.dsn(), schema, w * PER_PROCESS, PER_PROCESS, "batch", TOTAL)
        for w in range(PROCESSES)
    ]
    out = []
    for child in children:
        stdout, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@pytest.mark.slow
def test_four_processes_and_two_stores_store_each_event_once(
    postgres_cluster: PostgresCluster,
) -> None:
    schema = postgres_cluster.new_schema()
    uw.PostgresStore(postgres_cluster.dsn(), schema=schema).close()  # migrated once, up front

    # Two more "hosts" in this process, writing every event in batches meanwhile.
    host_a = uw.PostgresStore(postgres_cluster.dsn(), schema=schema)
    host_b = uw.PostgresStore(postgres_cluster.dsn(), schema=schema, durability="commit")
    in_process = {"a": 0, "b": 0}

    def write_all(name: str, store: uw.PostgresStore, order: range) -> None:
        evs = [parent_event(i) for i in order]
        for k in range(0, len(evs), 1000):
            in_process[name] += store.record_batch(evs[k : k + 1000])

    threads = [
        threading.Thread(target=write_all, args=("a", host_a, range(TOTAL))),
        threading.Thread(target=write_all, args=("b", host_b, range(TOTAL - 1, -1, -1))),
    ]
    for t in threads:
        t.start()
    counters = run_children(postgres_cluster, schema)
    for t in threads:
        t.join()
    host_a.flush()

    assert postgres_cluster.sql(f"SELECT COUNT(*) FROM {schema}.usage_events") == str(TOTAL)
    assert postgres_cluster.sql(
        f"SELECT COUNT(DISTINCT (namespace, request_id)) FROM {schema}.usage_events"
    ) == str(TOTAL)
    # Every event was inserted by exactly one writer; every other copy was a duplicate.
    inserted = sum(c["inserted"] for c in counters) + in_process["a"] + in_process["b"]
    assert inserted == TOTAL
    assert all(c["conflicts"] == 0 for c in counters)
    summary = host_a.summary()
    assert summary.events == TOTAL
    assert summary.tokens_in == sum(range(TOTAL))
    assert summary.unique_agents == 7 and summary.unique_consumers == 5

    # A replay from every process adds nothing.
    replay = run_children(postgres_cluster, schema)
    assert sum(c["inserted"] for c in replay) == 0
    assert host_b.record_batch([parent_event(i) for i in range(1000)]) == 0
    assert postgres_cluster.sql(f"SELECT COUNT(*) FROM {schema}.usage_events") == str(TOTAL)

    # Another process recording req-7 with other content is told so.
    done = run_python(
        """
        dsn, schema = sys.argv[1], sys.argv[2]
        with uw.PostgresStore(dsn, schema=schema, durability="commit") as store:
            try:
                store.record(uw.UsageEvent("agent-0", "consumer-2", tokens_in=999,
                                           timestamp=T0 + dt.timedelta(seconds=7),
                                           request_id="req-7"))
            except uw.ConflictError as e:
                print("conflict:", e)
        """,
        postgres_cluster.dsn(),
        schema,
    )
    assert "conflict:" in done.stdout and "req-7" in done.stdout
    assert (
        host_a.query(
            agent_id="agent-0", start=parent_event(7).timestamp, end=parent_event(7).timestamp
        )[0].tokens_in
        == 7
    )
    host_a.close()
    host_b.close()
