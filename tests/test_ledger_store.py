"""SQLiteStore basics: recording, reading back, ordering, pagination, filters,
agents/consumers, stats, persistence and the store's life cycle."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import usagewarden as uw
from ledger_helpers import T0, UTC, event, events, ids


@pytest.fixture
def store(backend):  # type: ignore[no-untyped-def]
    with backend.sync("ledger.db") as s:
        yield s


def test_properties(tmp_path: Path) -> None:
    clock = uw.ManualClock(100.0)
    with uw.SQLiteStore(
        tmp_path / "a.db", retention_seconds=90, durability="commit", clock=clock
    ) as s:
        assert s.path == str(tmp_path / "a.db")
        assert s.durability == "commit"
        assert s.retention_seconds == 90.0
        assert s.clock is clock
        assert not s.closed
    assert s.closed
    with uw.SQLiteStore(str(tmp_path / "b.db")) as s:
        assert s.durability == "batch"
        assert s.retention_seconds is None
        assert s.clock is None


def test_record_returns_the_request_id_and_flush_makes_it_readable(store: uw.SQLiteStore) -> None:
    e = uw.UsageEvent("a", "c", timestamp=T0)
    assert store.record(e) == e.request_id
    assert store.record(event(1)) == "req-1"
    store.flush()
    assert store.query() == [e, event(1)]


def test_commit_durability_is_readable_without_flush(tmp_path: Path) -> None:
    with uw.SQLiteStore(tmp_path / "c.db", durability="commit") as s:
        for i in range(5):
            s.record(event(i))
            assert len(s.query()) == i + 1


def test_record_batch_is_readable_when_it_returns(store: uw.SQLiteStore) -> None:
    assert store.record_batch(events(100)) == 100
    assert store.stats().events == 100
    assert store.record_batch([]) == 0
    assert store.record_batch(event(i) for i in range(100, 103)) == 3, "any iterable"
    assert store.stats().events == 103


def test_what_comes_back_equals_what_went_in(store: uw.SQLiteStore) -> None:
    sent = [
        event(
            i,
            task_id=None if i % 2 else f"task-{i}",
            model=None if i % 3 == 0 else "m",
            cost=None if i % 4 == 0 else i / 7,
            source=None if i % 5 == 0 else "src",
            metadata=None if i % 2 else {"i": i, "s": 'ü,"\n'},
            cache_read_tokens=i,
            cache_write_tokens=2 * i,
            units=3 * i,
            namespace="ns" if i % 2 else "default",
            action="tool:x" if i % 2 else "llm.request",
        )
        for i in range(40)
    ]
    store.record_batch(sent)
    got = store.query()
    assert got == sent
    assert [g.to_dict() for g in got] == [s.to_dict() for s in sent]


def test_query_orders_by_timestamp_then_insertion(store: uw.SQLiteStore) -> None:
    offsets = [30, 10, 20, 10, 0, 20, 10]
    for n, seconds in enumerate(offsets):
        store.record(event(n, timestamp=T0 + dt.timedelta(seconds=seconds)))
    store.flush()
    expected = sorted(range(len(offsets)), key=lambda n: (offsets[n], n))
    assert ids(store.query()) == [f"req-{n}" for n in expected]


def test_microsecond_ordering(store: uw.SQLiteStore) -> None:
    store.record_batch(
        [event(i, timestamp=T0 + dt.timedelta(microseconds=5 - i)) for i in range(5)]
    )
    assert ids(store.query()) == [f"req-{i}" for i in reversed(range(5))]


def test_limit_and_offset_page_through_the_events(store: uw.SQLiteStore) -> None:
    store.record_batch(events(25))
    everything = ids(store.query())
    pages = [ids(store.query(limit=10, offset=o)) for o in range(0, 30, 10)]
    assert pages[0] == everything[:10]
    assert pages[1] == everything[10:20]
    assert pages[2] == everything[20:]
    assert sum(pages, []) == everything
    assert ids(store.query(offset=20)) == everything[20:], "an offset without a limit"
    assert store.query(limit=0) == []
    assert store.query(offset=25) == []
    assert store.query(offset=10**12) == []
    assert ids(store.query(limit=10**12)) == everything
    assert (
        ids(store.query(limit=3, offset=4, agent_id="agent-1"))
        == [f"req-{i}" for i in range(25) if i % 3 == 1][4:7]
    )


def test_pages_far_from_the_start_equal_the_slices_of_the_events(store: uw.SQLiteStore) -> None:
    # Past 1,000 events of offset a page is read from the nearer end, counted from the
    # pre-aggregated totals: over whole hours, partial hours and filters they do not keep.
    n = 3_000
    store.record_batch(
        event(i, timestamp=T0 + dt.timedelta(seconds=5 * i), task_id=("t1", "t2")[i % 2])
        for i in range(n)
    )
    store.flush()
    everything = ids(store.query())
    ranged = {
        "start": T0 + dt.timedelta(seconds=1_234),
        "end": T0 + dt.timedelta(hours=3, seconds=7),
    }
    in_range = ids(store.query(**ranged))  # type: ignore[arg-type]
    for filters, expected in [
        ({}, everything),
        (ranged, in_range),
        ({"agent_id": "agent-1"}, ids(store.query(agent_id="agent-1"))),
        ({"task_id": "t2"}, ids(store.query(task_id="t2"))),
    ]:
        total = len(expected)
        for offset in (999, 1_000, total // 2, total - 26, total - 25, total - 1, total, total + 5):
            page, cursor = store.page(limit=25, offset=offset, **filters)  # type: ignore[arg-type]
            assert ids(page) == expected[offset : offset + 25], (filters, offset)
            if offset + 25 < total:
                assert cursor is not None, (filters, offset)
                following, _ = store.page(limit=25, cursor=cursor, **filters)  # type: ignore[arg-type]
                assert ids(following) == expected[offset + 25 : offset + 50]
            else:
                assert cursor is None, (filters, offset)


@pytest.fixture
def mixed(store: uw.SQLiteStore) -> list[uw.UsageEvent]:
    evs = [
        event(
            i,
            namespace=("ns-a", "ns-b")[i % 2],
            task_id=(None, "task-x", "task-y")[i % 3],
            model=(None, "m1", "m2", "m3")[i % 4],
            action=("llm.request", "tool:search", "embed")[i % 3],
            timestamp=T0 + dt.timedelta(minutes=i),
        )
        for i in range(36)
    ]
    store.record_batch(evs)
    return evs


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("namespace", "ns-a"),
        ("namespace", "ns-b"),
        ("agent_id", "agent-2"),
        ("consumer_id", "consumer-1"),
        ("task_id", "task-x"),
        ("model", "m3"),
        ("action", "tool:search"),
        ("agent_id", "nobody"),
        ("agent_id", "x' OR '1'='1"),
    ],
)
def test_each_filter(
    store: uw.SQLiteStore, mixed: list[uw.UsageEvent], name: str, value: str
) -> None:
    expected = [e for e in mixed if getattr(e, name) == value]
    assert store.query(**{name: value}) == expected
    assert store.summary(**{name: value}).events == len(expected)


def test_none_means_no_filter(store: uw.SQLiteStore, mixed: list[uw.UsageEvent]) -> None:
    assert store.query(model=None, task_id=None, start=None, end=None) == mixed


def test_filters_combine(store: uw.SQLiteStore, mixed: list[uw.UsageEvent]) -> None:
    got = store.query(namespace="ns-a", model="m2", agent_id="agent-0")
    assert got == [
        e for e in mixed if e.namespace == "ns-a" and e.model == "m2" and e.agent_id == "agent-0"
    ]
    assert got


def test_time_range_is_inclusive_at_both_ends(
    store: uw.SQLiteStore, mixed: list[uw.UsageEvent]
) -> None:
    start, end = mixed[5].timestamp, mixed[9].timestamp
    assert store.query(start=start, end=end) == mixed[5:10]
    assert store.query(start=start) == mixed[5:]
    assert store.query(end=end) == mixed[:10]
    assert store.query(start=start, end=start) == [mixed[5]]
    us = dt.timedelta(microseconds=1)
    assert store.query(start=start + us, end=end - us) == mixed[6:9]
    # The same instants given in another zone select the same events.
    tokyo = dt.timezone(dt.timedelta(hours=9))
    assert store.query(start=start.astimezone(tokyo), end=end.astimezone(tokyo)) == mixed[5:10]


def test_agents_and_consumers(store: uw.SQLiteStore, mixed: list[uw.UsageEvent]) -> None:
    assert store.agents() == [("agent-0", 12), ("agent-1", 12), ("agent-2", 12)]
    assert store.consumers() == [("consumer-0", 18), ("consumer-1", 18)]
    assert store.agents(consumer_id="consumer-1") == [
        ("agent-0", 6),
        ("agent-1", 6),
        ("agent-2", 6),
    ]
    assert store.consumers(agent_id="agent-0", namespace="ns-a") == [("consumer-0", 6)]
    assert store.agents(agent_id="nobody") == []
    assert store.consumers(end=mixed[0].timestamp) == [("consumer-0", 1)]


def test_stats(tmp_path: Path) -> None:
    with uw.SQLiteStore(tmp_path / "s.db", retention_seconds=3600.5) as s:
        st = s.stats()
        assert (st.events, st.oldest, st.newest) == (0, None, None)
        assert (st.inserted, st.duplicates, st.conflicts, st.queued, st.write_errors) == (
            0,
            0,
            0,
            0,
            0,
        )
        assert st.last_error is None
        assert st.retention_seconds == 3600.5
        s.record_batch([event(3), event(1), event(2)])
        s.record(event(2))
        s.flush()
        st = s.stats()
        assert st.events == 3
        assert st.oldest == event(1).timestamp
        assert st.newest == event(3).timestamp
        assert st.oldest.tzinfo is not None
        assert st.inserted == 3
        assert st.duplicates == 1
        assert st.queued == 0
        assert st.size_bytes > 0
        files = [tmp_path / "s.db", tmp_path / "s.db-wal"]
        assert st.size_bytes == sum(os.path.getsize(f) for f in files if f.exists())
        d = st.to_dict()
        assert d["events"] == 3 and d["inserted"] == 3 and d["oldest"] == st.oldest


def test_events_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with uw.SQLiteStore(path) as s:
        s.record_batch(events(10))
        s.record(event(10))
    with uw.SQLiteStore(path) as s:
        assert s.query() == events(11)
        st = s.stats()
        assert st.events == 11
        assert st.inserted == 0, "inserted counts what this store recorded"


def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    s = uw.SQLiteStore(path)
    for e in events(500):
        s.record(e)
    s.close()
    with uw.SQLiteStore(path) as again:
        assert again.stats().events == 500


def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    s = uw.SQLiteStore(tmp_path / "closed.db")
    s.record(event(0))
    s.close()
    s.close()  # idempotent
    assert s.closed
    with pytest.raises(uw.StoreError):
        s.record(event(1))
    with pytest.raises(uw.StoreError):
        s.record_batch([event(2)])
    with pytest.raises(uw.StoreError):
        s.flush()
    assert issubclass(uw.StoreError, uw.UsageWardenError)
    with uw.SQLiteStore(tmp_path / "closed.db") as again:
        assert ids(again.query()) == ["req-0"]


def test_context_manager_closes_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), uw.SQLiteStore(tmp_path / "cm.db") as s:
        s.record(event(0))
        raise RuntimeError("boom")
    assert s.closed
    with uw.SQLiteStore(tmp_path / "cm.db") as again:
        assert again.stats().events == 1


def test_two_stores_on_one_file_see_each_others_events(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with uw.SQLiteStore(path) as a, uw.SQLiteStore(path, durability="commit") as b:
        a.record_batch(events(5))
        b.record(event(5))
        assert b.stats().events == 6
        assert a.query() == events(6)


def test_reads_see_events_in_utc(store: uw.SQLiteStore) -> None:
    local = dt.datetime(2026, 7, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=-7)))
    store.record_batch([uw.UsageEvent("a", "c", timestamp=local)])
    (got,) = store.query()
    assert got.timestamp == local
    assert got.timestamp.utcoffset() == dt.timedelta(0)
    assert got.timestamp == dt.datetime(2026, 7, 1, 16, 30, tzinfo=UTC)


def test_many_threads_record_into_one_store(tmp_path: Path) -> None:
    import threading

    with uw.SQLiteStore(tmp_path / "threads.db") as s:
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for i in range(2000):
                    s.record(uw.UsageEvent(f"thread-{t}", "c", request_id=f"{t}-{i}"))
                    if i % 500 == 0:
                        s.summary()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        s.flush()
        assert s.agents() == [(f"thread-{t}", 2000) for t in range(8)]
        assert s.stats().inserted == 16_000
