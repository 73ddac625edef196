"""Retention: purge_expired deletes events older than now - retention, on the
store's clock (a ManualClock's seconds are Unix time)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import usagewarden as uw
from ledger_helpers import T0, UTC, LedgerBackend, event, ids

US = dt.timedelta(microseconds=1)
RETENTION = 3600


def test_the_cutoff_is_exact_to_the_microsecond(backend: LedgerBackend) -> None:
    clock = uw.ManualClock(T0.timestamp())
    cutoff = T0 - dt.timedelta(seconds=RETENTION)
    with backend.sync("r.db", retention_seconds=RETENTION, clock=clock) as store:
        store.record_batch(
            [
                event(0, timestamp=cutoff - dt.timedelta(days=400)),
                event(1, timestamp=cutoff - US),
                event(2, timestamp=cutoff),
                event(3, timestamp=cutoff + US),
                event(4, timestamp=T0),
                event(5, timestamp=T0 + dt.timedelta(days=1)),  # from the future: kept
            ]
        )
        assert store.purge_expired() == 2
        assert ids(store.query()) == ["req-2", "req-3", "req-4", "req-5"], "the cutoff stays"
        assert store.purge_expired() == 0, "nothing more to purge"
        clock.advance(0.000001)
        assert store.purge_expired() == 1
        assert ids(store.query()) == ["req-3", "req-4", "req-5"]
        clock.advance(RETENTION)
        assert store.purge_expired() == 2
        assert ids(store.query()) == ["req-5"]
        st = store.stats()
        assert st.events == 1
        assert st.oldest == st.newest == event(5, timestamp=T0 + dt.timedelta(days=1)).timestamp


def test_purge_covers_every_namespace_agent_and_consumer(backend: LedgerBackend) -> None:
    clock = uw.ManualClock(T0.timestamp())
    with backend.sync("r.db", retention_seconds=60, clock=clock) as store:
        old = T0 - dt.timedelta(minutes=5)
        store.record_batch(
            [event(i, namespace=f"ns{i % 3}", timestamp=old) for i in range(9)]
            + [event(i, namespace=f"ns{i % 3}") for i in range(9, 12)]
        )
        assert store.purge_expired() == 9
        assert store.stats().events == 3


def test_purge_sees_events_still_queued(backend: LedgerBackend) -> None:
    clock = uw.ManualClock(T0.timestamp())
    with backend.sync("r.db", retention_seconds=60, clock=clock) as store:
        for i in range(200):
            store.record(event(i, timestamp=T0 - dt.timedelta(hours=1)))
        assert store.purge_expired() == 200, "writes queued before the purge are purged too"
        assert store.stats().events == 0


def test_without_retention_nothing_is_purged(backend: LedgerBackend) -> None:
    with backend.sync("r.db") as store:
        store.record_batch([event(0, timestamp=dt.datetime(1990, 1, 1, tzinfo=UTC))])
        assert store.purge_expired() == 0
        assert store.stats().events == 1
        assert store.stats().retention_seconds is None


def test_the_system_clock_is_the_default(backend: LedgerBackend) -> None:
    now = dt.datetime.now(UTC)
    with backend.sync("r.db", retention_seconds=3600) as store:
        store.record_batch(
            [
                event(0, timestamp=now - dt.timedelta(hours=2)),
                event(1, timestamp=now - dt.timedelta(minutes=30)),
            ]
        )
        assert store.purge_expired() == 1
        assert ids(store.query()) == ["req-1"]


def test_fractional_retention(backend: LedgerBackend) -> None:
    clock = uw.ManualClock(T0.timestamp())
    retention = dt.timedelta(seconds=100, milliseconds=250)
    with backend.sync("r.db", retention_seconds=100.25, clock=clock) as store:
        store.record_batch(
            [
                event(0, timestamp=T0 - retention - US),
                event(1, timestamp=T0 - retention),
            ]
        )
        assert store.purge_expired() == 1
        assert ids(store.query()) == ["req-1"]
        assert store.retention_seconds == 100.25


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_retention_must_be_positive_and_finite(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ValueError, match="retention_seconds"):
        uw.SQLiteStore(tmp_path / "r.db", retention_seconds=bad)
    assert not (tmp_path / "r.db").exists()


def test_purge_on_a_closed_store_raises(tmp_path: Path) -> None:
    store = uw.SQLiteStore(tmp_path / "r.db", retention_seconds=1)
    store.close()
    with pytest.raises(uw.StoreError):
        store.purge_expired()
