"""Idempotent ingestion per (namespace, request_id): replays add nothing,
different content under a known id is a conflict, batches are all or nothing."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import usagewarden as uw
from ledger_helpers import T0, LedgerBackend, event, events, ids


@pytest.fixture(params=["batch", "commit"])
def durability(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_replaying_records_adds_nothing(backend: LedgerBackend, durability: str) -> None:
    with backend.sync("l.db", durability=durability) as store:
        sent = events(50)
        for e in sent:
            store.record(e)
        store.flush()
        for e in sent:  # the same events, replayed
            assert store.record(e) == e.request_id
        for e in events(50):  # equal events built again
            store.record(e)
        store.flush()
        st = store.stats()
        assert st.events == 50
        assert st.inserted == 50
        assert st.duplicates == 100
        assert st.conflicts == 0
        assert store.query() == sent


def test_replaying_batches_adds_nothing(backend: LedgerBackend) -> None:
    with backend.sync("l.db") as store:
        assert store.record_batch(events(100)) == 100
        assert store.record_batch(events(100)) == 0
        assert store.record_batch(events(120)) == 20, "only the new ones count"
        st = store.stats()
        assert st.events == 120
        assert st.inserted == 120
        assert st.duplicates == 100 + 100
        assert store.summary().tokens_in == sum(e.tokens_in for e in events(120))


def test_replays_after_reopening_add_nothing(backend: LedgerBackend) -> None:
    with backend.sync("l.db") as store:
        store.record_batch(events(10))
    with backend.sync("l.db") as store:
        assert store.record_batch(events(10)) == 0
        for e in events(10):
            store.record(e)
        store.flush()
        assert store.stats().events == 10
        assert store.stats().duplicates == 20


def test_a_record_replaying_a_batch_and_vice_versa(backend: LedgerBackend) -> None:
    with backend.sync("l.db", durability="commit") as store:
        store.record(event(0))
        assert store.record_batch([event(0), event(1)]) == 1
        store.record(event(1))
        assert store.stats().events == 2


def test_same_content_means_same_instant_and_same_metadata(backend: LedgerBackend) -> None:
    """Equal content written differently (another zone, another key order) is a duplicate."""
    with backend.sync("l.db", durability="commit") as store:
        store.record(event(0, metadata={"a": 1, "b": {"c": 2, "d": 3}}))
        tokyo = dt.timezone(dt.timedelta(hours=9))
        store.record(
            event(
                0,
                metadata={"b": {"d": 3, "c": 2}, "a": 1},
                timestamp=event(0).timestamp.astimezone(tokyo),
            )
        )
        assert store.stats().duplicates == 1
        assert store.stats().conflicts == 0


def test_the_same_request_id_in_another_namespace_is_another_event(backend: LedgerBackend) -> None:
    with backend.sync("l.db", durability="commit") as store:
        store.record(event(0))
        store.record(event(0, namespace="other", tokens_in=999))
        assert store.record_batch([event(0, namespace="third")]) == 1
        assert store.stats().events == 3
        assert store.stats().conflicts == 0
        assert [e.namespace for e in store.query()] == ["default", "other", "third"]


@pytest.mark.parametrize(
    "change",
    [
        {"tokens_in": 1},
        {"tokens_out": 1},
        {"cache_read_tokens": 1},
        {"cache_write_tokens": 1},
        {"duration_ms": 1},
        {"api_calls": 7},
        {"units": 1},
        {"cost": None},
        {"cost": 123.0},
        {"agent_id": "someone-else"},
        {"consumer_id": "someone-else"},
        {"task_id": "t"},
        {"action": "tool:other"},
        {"model": None},
        {"model": "other"},
        {"source": "s"},
        {"metadata": {"k": "v"}},
        {"timestamp": T0 + dt.timedelta(microseconds=1)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_commit_durability_raises_on_a_conflict(backend: LedgerBackend, change: dict) -> None:  # type: ignore[type-arg]
    with backend.sync("l.db", durability="commit") as store:
        original = event(0)
        store.record(original)
        with pytest.raises(uw.ConflictError, match="req-0"):
            store.record(event(0, **change))
        assert issubclass(uw.ConflictError, uw.UsageWardenError)
        assert store.query() == [original], "the first event stays as it was"
        st = store.stats()
        assert st.conflicts == 1
        assert st.events == 1
        assert st.queued == 0


def test_batch_durability_counts_and_logs_conflicts(
    backend: LedgerBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="usagewarden")
    with backend.sync("l.db") as store:
        original = event(0)
        store.record(original)
        assert store.record(event(0, tokens_in=1)) == "req-0", "never raises on the request path"
        store.record(event(0, tokens_out=1))
        store.flush()
        st = store.stats()
        assert st.conflicts == 2
        assert st.events == 1
        assert st.queued == 0
        assert store.query() == [original]
    conflicts = [r for r in caplog.records if r.name == "usagewarden" and "req-0" in r.getMessage()]
    assert len(conflicts) == 2
    assert all(r.levelno >= logging.WARNING for r in conflicts)


def test_a_batch_with_one_conflict_stores_nothing(backend: LedgerBackend, durability: str) -> None:
    with backend.sync("l.db", durability=durability) as store:
        store.record_batch(events(3))
        before = store.stats()
        batch = [event(i) for i in range(10, 20)] + [event(1, tokens_in=0)] + events(5, start=20)
        with pytest.raises(uw.ConflictError) as info:
            store.record_batch(batch)
        assert "req-1" in str(info.value)
        after = store.stats()
        assert after.events == 3
        assert ids(store.query()) == ["req-0", "req-1", "req-2"]
        assert after.conflicts == before.conflicts + 1
        assert after.inserted == before.inserted, "a refused batch inserted nothing"
        assert after.duplicates == before.duplicates
        # The same batch without the conflict goes in whole.
        assert store.record_batch([e for e in batch if e.request_id != "req-1"]) == 15


def test_a_conflict_inside_one_batch_stores_nothing(backend: LedgerBackend) -> None:
    with backend.sync("l.db") as store:
        with pytest.raises(uw.ConflictError):
            store.record_batch([event(1), event(2), event(1, tokens_in=0)])
        assert store.stats().events == 0
        # A replay inside one batch is only a duplicate.
        assert store.record_batch([event(1), event(2), event(1)]) == 2
        assert store.stats().events == 2
