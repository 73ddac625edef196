"""The same events give the same aggregates on SQLite and PostgreSQL: every
``group_by``, in zones with DST, half-hour and 45-minute offsets, a historic
offset of seconds (Monrovia before 1972) and UTC — labels, totals and
distinct counts alike."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_cluster import PostgresCluster

UTC = dt.timezone.utc
GROUP_BYS = ["agent", "consumer", "model", "action", "namespace", "hour", "day", "week", "month"]
ZONES = [
    "America/New_York",
    "Europe/Paris",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Africa/Monrovia",
    "UTC",
]
#: Windows around clock changes (a few days each), so events fall on both sides.
WINDOWS = [
    dt.datetime(2026, 3, 8, 7, tzinfo=UTC),  # New York springs forward
    dt.datetime(2026, 11, 1, 6, tzinfo=UTC),  # New York falls back
    dt.datetime(2026, 10, 25, 1, tzinfo=UTC),  # Paris falls back
    dt.datetime(2026, 4, 4, 15, tzinfo=UTC),  # Lord Howe: back 30 minutes
    dt.datetime(2026, 9, 26, 14, tzinfo=UTC),  # Chatham springs forward (+13:45)
    dt.datetime(1970, 6, 1, tzinfo=UTC),  # Monrovia at -00:44:30
    dt.datetime(1972, 1, 7, tzinfo=UTC),  # Monrovia moves to GMT
    dt.datetime(1985, 12, 31, 18, tzinfo=UTC),  # Kathmandu moves to +05:45
    dt.datetime(2026, 12, 31, 12, tzinfo=UTC),  # an ISO week across a year end
]
SPAN_US = 3 * 86_400 * 1_000_000


@st.composite
def timestamps(draw: Callable[..., Any]) -> dt.datetime:
    window = draw(st.sampled_from(WINDOWS))
    return window + dt.timedelta(microseconds=draw(st.integers(-SPAN_US, SPAN_US)))


@st.composite
def ledger_events(draw: Callable[..., Any], namespace: str) -> list[uw.UsageEvent]:
    out = []
    for i in range(draw(st.integers(1, 40))):
        cost = draw(st.one_of(st.none(), st.integers(0, 10**12)))
        out.append(
            uw.UsageEvent(
                draw(st.sampled_from(["a1", "a2", "Agent-é", "B"])),
                draw(st.sampled_from(["c1", "c2", "Z"])),
                namespace=namespace,
                task_id=draw(st.sampled_from([None, "t1"])),
                action=draw(st.sampled_from(["llm.request", "tool:search", "embed"])),
                model=draw(st.sampled_from([None, "m1", "M2"])),
                tokens_in=draw(st.integers(0, 10**6)),
                tokens_out=draw(st.integers(0, 10**6)),
                cache_read_tokens=draw(st.integers(0, 10**3)),
                duration_ms=draw(st.integers(0, 10**5)),
                api_calls=draw(st.integers(0, 3)),
                units=draw(st.integers(0, 9)),
                cost=None if cost is None else cost / 1e9,
                timestamp=draw(timestamps()),
                request_id=f"r{i}",
            )
        )
    return out


@pytest.fixture(scope="module")
def both(
    postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[uw.SQLiteStore, uw.PostgresStore]]:
    lite = uw.SQLiteStore(tmp_path_factory.mktemp("equal") / "equal.db", durability="commit")
    pg = uw.PostgresStore(
        postgres_cluster.dsn(), schema=postgres_cluster.new_schema(), durability="commit"
    )
    with lite, pg:
        yield lite, pg


NAMESPACES = (f"ns{i}" for i in itertools.count())


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_the_same_events_aggregate_the_same(
    both: tuple[uw.SQLiteStore, uw.PostgresStore], data: st.DataObject
) -> None:
    lite, pg = both
    namespace = next(NAMESPACES)  # each example's events, apart from the others'
    evs = data.draw(ledger_events(namespace), label="events")
    assert lite.record_batch(evs) == pg.record_batch(evs) == len(evs)
    for group_by, tz in itertools.product(GROUP_BYS, ZONES):
        got = pg.aggregate(group_by, tz=tz, namespace=namespace)
        want = lite.aggregate(group_by, tz=tz, namespace=namespace)
        assert [a.to_dict() for a in got] == [a.to_dict() for a in want], (group_by, tz)
    assert pg.summary(namespace=namespace).to_dict() == lite.summary(namespace=namespace).to_dict()
    assert pg.agents(namespace=namespace) == lite.agents(namespace=namespace)
    assert pg.query(namespace=namespace) == lite.query(namespace=namespace)


def test_labels_are_not_only_equal_but_right(tmp_path: Path, postgres_cluster: Any) -> None:
    """A fixed case checked by hand: New York's fall-back hour comes twice."""
    first = dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    second = dt.datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST
    evs = [
        uw.UsageEvent("a", "c", timestamp=t, request_id=str(i))
        for i, t in enumerate([first, second])
    ]
    with uw.PostgresStore(postgres_cluster.dsn(), schema=postgres_cluster.new_schema()) as pg:
        pg.record_batch(evs)
        hours = [(a.group, a.events) for a in pg.aggregate("hour", tz="America/New_York")]
        assert hours == [("2026-11-01T01:00-04:00", 1), ("2026-11-01T01:00-05:00", 1)]
        days = [(a.group, a.events) for a in pg.aggregate("day", tz="America/New_York")]
        assert days == [("2026-11-01", 2)]


@pytest.mark.parametrize(
    ("zone", "instants"),
    [
        # Monrovia at -00:44:30: local midnight falls inside a 15-minute UTC slot.
        ("Africa/Monrovia", ["1970-06-01T00:44:29", "1970-06-01T00:44:30"]),
        # St. John's fell back at 00:01 local (02:31 UTC): one slot holds two days.
        ("America/St_Johns", ["2006-10-29T02:30:30", "2006-10-29T02:35:00"]),
    ],
)
@pytest.mark.parametrize("task_id", [None, "t1"])
def test_a_bucket_edge_inside_a_utc_slot_splits_it(
    tmp_path: Path, postgres_cluster: Any, zone: str, instants: list[str], task_id: str | None
) -> None:
    """Days as Python's own zone data labels them, on both stores, whether
    the read uses the hourly totals or (with a task filter) the events."""
    from zoneinfo import ZoneInfo

    times = [dt.datetime.fromisoformat(t).replace(tzinfo=UTC) for t in instants]
    evs = [
        uw.UsageEvent("a", "c", task_id="t1", timestamp=t, request_id=str(i))
        for i, t in enumerate(times)
    ]
    want = sorted({t.astimezone(ZoneInfo(zone)).date().isoformat(): 1 for t in times}.items())
    assert len(want) == 2  # the two instants are a day apart in local time
    lite = uw.SQLiteStore(tmp_path / "edge.db")
    pg = uw.PostgresStore(postgres_cluster.dsn(), schema=postgres_cluster.new_schema())
    with lite, pg:
        got = []
        for store in (lite, pg):
            store.record_batch(evs)
            days = [(a.group, a.events) for a in store.aggregate("day", tz=zone, task_id=task_id)]
            assert sorted(days) == want, store
            got.append(days)
        assert got[0] == got[1]  # in the same order too
