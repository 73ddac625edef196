"""SQL aggregation: hand-checked totals, and a property test comparing every
group_by (with and without filters) to a plain-Python computation."""

from __future__ import annotations

import datetime as dt
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import usagewarden as uw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import MAX_COUNT, T0, UTC, event, nanos

GROUP_BYS = ["agent", "consumer", "model", "action", "namespace", "hour", "day", "week", "month"]
SUMMED = [
    "tokens_in",
    "tokens_out",
    "cache_read_tokens",
    "cache_write_tokens",
    "duration_ms",
    "api_calls",
    "units",
]
FILTERS = ["namespace", "agent_id", "consumer_id", "task_id", "model", "action", "start", "end"]


def offset_label(offset: dt.timedelta) -> str:
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def group_key(e: uw.UsageEvent, group_by: str, tz: str) -> str | None:
    """The documented bucket label, computed with zoneinfo."""
    column = {
        "agent": "agent_id",
        "consumer": "consumer_id",
        "model": "model",
        "action": "action",
        "namespace": "namespace",
    }
    if group_by in column:
        return getattr(e, column[group_by])  # type: ignore[no-any-return]
    local = e.timestamp.astimezone(ZoneInfo(tz))
    if group_by == "hour":
        offset = local.utcoffset()
        assert offset is not None
        return local.strftime("%Y-%m-%dT%H:00") + offset_label(offset)
    if group_by == "day":
        return local.strftime("%Y-%m-%d")
    if group_by == "week":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    assert group_by == "month"
    return local.strftime("%Y-%m")


def totals(evs: list[uw.UsageEvent], group: str | None) -> dict[str, Any]:
    costs = [nanos(e) for e in evs]
    known = [c for c in costs if c is not None]
    out: dict[str, Any] = {"group": group, "events": len(evs)}
    for field in SUMMED:
        out[field] = sum(getattr(e, field) for e in evs)
    out["total_tokens"] = out["tokens_in"] + out["tokens_out"]
    out["cost"] = sum(known) / 1e9 if known else None
    out["unpriced_events"] = len(costs) - len(known)
    out["unique_agents"] = len({e.agent_id for e in evs})
    out["unique_consumers"] = len({e.consumer_id for e in evs})
    return out


def matches(e: uw.UsageEvent, filters: dict[str, Any]) -> bool:
    for name, value in filters.items():
        if value is None:
            continue
        if name == "start":
            if e.timestamp < value:
                return False
        elif name == "end":
            if e.timestamp > value:
                return False
        elif getattr(e, name) != value:
            return False
    return True


def expected_aggregate(
    evs: list[uw.UsageEvent], group_by: str, tz: str, filters: dict[str, Any]
) -> dict[str | None, dict[str, Any]]:
    groups: dict[str | None, list[uw.UsageEvent]] = defaultdict(list)
    for e in evs:
        if matches(e, filters):
            groups[group_key(e, group_by, tz)].append(e)
    return {g: totals(members, g) for g, members in groups.items()}


def as_dicts(aggs: list[uw.Aggregate]) -> dict[str | None, dict[str, Any]]:
    out = {a.group: a.to_dict() for a in aggs}
    assert len(out) == len(aggs), "each group appears once"
    return out


# --- hand-checked examples -------------------------------------------------------------------


@pytest.fixture
def store(backend):  # type: ignore[no-untyped-def]
    with backend.sync("agg.db") as s:
        yield s


def test_summary_of_an_empty_store(store: uw.SQLiteStore) -> None:
    s = store.summary()
    assert s.group == "all"
    assert (s.events, s.tokens_in, s.total_tokens, s.unique_agents) == (0, 0, 0, 0)
    assert s.cost is None
    assert s.unpriced_events == 0
    for group_by in GROUP_BYS:
        assert store.aggregate(group_by) == []


def test_hand_checked_totals(store: uw.SQLiteStore) -> None:
    store.record_batch(
        [
            uw.UsageEvent("a1", "c1", model="m1", tokens_in=10, tokens_out=1, cost=0.5,
                          cache_read_tokens=2, cache_write_tokens=3, duration_ms=100,
                          api_calls=1, units=4, timestamp=T0, request_id="1"),
            uw.UsageEvent("a1", "c2", model="m1", tokens_in=20, tokens_out=2, cost=None,
                          timestamp=T0, request_id="2"),
            uw.UsageEvent("a2", "c1", model=None, tokens_in=30, tokens_out=3, cost=0.25,
                          timestamp=T0, request_id="3"),
        ]
    )  # fmt: skip
    s = store.summary()
    assert s.to_dict() == {
        "group": "all",
        "events": 3,
        "tokens_in": 60,
        "tokens_out": 6,
        "total_tokens": 66,
        "cache_read_tokens": 2,
        "cache_write_tokens": 3,
        "duration_ms": 100,
        "api_calls": 1,
        "units": 4,
        "cost": 0.75,
        "unpriced_events": 1,
        "unique_agents": 2,
        "unique_consumers": 2,
    }
    by_model = store.aggregate("model")
    assert [a.group for a in by_model] == [None, "m1"], "events without a model form group None"
    none, m1 = by_model
    assert (none.events, none.tokens_in, none.cost) == (1, 30, 0.25)
    assert (m1.events, m1.tokens_in, m1.cost, m1.unpriced_events) == (2, 30, 0.5, 1)
    assert (m1.unique_agents, m1.unique_consumers) == (1, 2)
    by_agent = store.aggregate("agent", model="m1")
    assert [(a.group, a.events) for a in by_agent] == [("a1", 2)]
    unpriced = store.summary(agent_id="a1", consumer_id="c2")
    assert unpriced.cost is None, "no event with a known cost: None, not 0.0"
    assert unpriced.unpriced_events == 1


def test_costs_add_up_exactly_in_nano_dollars(store: uw.SQLiteStore) -> None:
    store.record_batch([event(i, cost=0.1) for i in range(10)])
    assert store.summary().cost == 1.0, "ten times 0.1 USD is exactly 1 USD"
    store.record_batch([event(i, cost=1e-9) for i in range(10, 13)])
    assert store.summary(start=event(10).timestamp).cost == 3e-9


def test_big_counts_are_summed_exactly(store: uw.SQLiteStore) -> None:
    big = 2**62
    store.record_batch([event(0, tokens_in=big, tokens_out=0), event(1, tokens_in=big - 1)])
    assert store.summary().tokens_in == 2**63 - 1


def test_sums_beyond_the_integer_range_saturate(store: uw.SQLiteStore) -> None:
    """Each count may be up to 2**63 - 1; their sum may not fit SQLite's integers.
    Totals then saturate at that same maximum on every path (never wrap, never go
    negative, never leave the ledger unable to answer)."""
    store.record_batch([event(i, agent_id="a", tokens_in=MAX_COUNT, cost=9e9) for i in range(2)])
    store.record(event(9, agent_id="a", tokens_in=5, cost=1.0))
    store.flush()
    most_usd = MAX_COUNT / 1e9
    for group_by in ("agent", "day", "model"):
        (result,) = store.aggregate(group_by)
        assert (result.events, result.tokens_in) == (3, MAX_COUNT)
        assert result.cost == pytest.approx(most_usd)
    summary = store.summary()
    assert (summary.events, summary.tokens_in) == (3, MAX_COUNT)
    assert summary.cost == pytest.approx(most_usd)


def test_time_buckets_in_utc_by_default(store: uw.SQLiteStore) -> None:
    ts = [
        dt.datetime(2026, 2, 14, 12, 30, tzinfo=UTC),
        dt.datetime(2026, 2, 14, 12, 59, 59, 999999, tzinfo=UTC),
        dt.datetime(2026, 2, 14, 13, 0, tzinfo=UTC),
        dt.datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
    ]
    store.record_batch([event(i, timestamp=t) for i, t in enumerate(ts)])
    assert [(a.group, a.events) for a in store.aggregate("hour")] == [
        ("2026-02-14T12:00+00:00", 2),
        ("2026-02-14T13:00+00:00", 1),
        ("2026-03-01T00:00+00:00", 1),
    ]
    assert [(a.group, a.events) for a in store.aggregate("day")] == [
        ("2026-02-14", 3),
        ("2026-03-01", 1),
    ]
    assert [(a.group, a.events) for a in store.aggregate("week")] == [
        ("2026-W07", 3),
        ("2026-W09", 1),
    ]
    assert [(a.group, a.events) for a in store.aggregate("month")] == [
        ("2026-02", 3),
        ("2026-03", 1),
    ]


def test_non_time_groups_are_sorted(store: uw.SQLiteStore) -> None:
    names = ["zeta", "Alpha", "beta", "ärger", "0-first", "beta2"]
    store.record_batch([event(i, agent_id=n) for i, n in enumerate(names)])
    assert [a.group for a in store.aggregate("agent")] == sorted(names)


# --- the property: SQL equals Python -------------------------------------------------------

ZONES = ["UTC", "America/New_York", "Europe/Paris", "Asia/Kathmandu", "Australia/Lord_Howe",
         "Pacific/Chatham", "America/St_Johns"]  # fmt: skip
EPOCH_2025 = int(dt.datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
EPOCH_2028 = int(dt.datetime(2028, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
# Instants people get wrong: DST changes, midnights, week and year boundaries.
TRICKY = [
    dt.datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # New York springs forward
    dt.datetime(2026, 11, 1, 6, 0, tzinfo=UTC),  # New York falls back
    dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # Paris springs forward
    dt.datetime(2026, 10, 25, 1, 0, tzinfo=UTC),  # Paris falls back
    dt.datetime(2026, 4, 4, 15, 0, tzinfo=UTC),  # Lord Howe falls back half an hour
    dt.datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    dt.datetime(2027, 1, 1, 0, 0, tzinfo=UTC),
    dt.datetime(2026, 2, 28, 18, 15, tzinfo=UTC),  # midnight in Kathmandu
]


@st.composite
def timestamps(draw: Callable[..., Any]) -> dt.datetime:
    if draw(st.booleans()):
        base = draw(st.sampled_from(TRICKY))
        delta = draw(st.integers(-2 * 3600 * 1_000_000, 2 * 3600 * 1_000_000))
        return base + dt.timedelta(microseconds=delta)
    us = draw(st.integers(EPOCH_2025, EPOCH_2028))
    return dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=us)


@st.composite
def ledger_events(draw: Callable[..., Any]) -> list[uw.UsageEvent]:
    n = draw(st.integers(0, 30))
    out = []
    for i in range(n):
        cost = draw(st.one_of(st.none(), st.integers(0, 10**12)))
        out.append(
            uw.UsageEvent(
                draw(st.sampled_from(["a1", "a2", "a3", "Agent-é"])),
                draw(st.sampled_from(["c1", "c2"])),
                task_id=draw(st.sampled_from([None, "t1", "t2"])),
                namespace=draw(st.sampled_from(["default", "ns2"])),
                action=draw(st.sampled_from(["llm.request", "tool:search", "embed"])),
                model=draw(st.sampled_from([None, "m1", "m2"])),
                tokens_in=draw(st.integers(0, 10**9)),
                tokens_out=draw(st.integers(0, 10**9)),
                cache_read_tokens=draw(st.integers(0, 10**6)),
                cache_write_tokens=draw(st.integers(0, 10**6)),
                duration_ms=draw(st.integers(0, 10**7)),
                api_calls=draw(st.integers(0, 5)),
                units=draw(st.integers(0, 100)),
                cost=None if cost is None else cost / 1e9,
                timestamp=draw(timestamps()),
                request_id=f"r{i}",
            )
        )
    return out


@st.composite
def filter_sets(draw: Callable[..., Any], evs: list[uw.UsageEvent]) -> dict[str, Any]:
    chosen = draw(st.sets(st.sampled_from(FILTERS), max_size=3))
    values: dict[str, Any] = {
        "namespace": draw(st.sampled_from(["default", "ns2"])),
        "agent_id": draw(st.sampled_from(["a1", "a2", "a3", "Agent-é", "nobody"])),
        "consumer_id": draw(st.sampled_from(["c1", "c2"])),
        "task_id": draw(st.sampled_from(["t1", "t2"])),
        "model": draw(st.sampled_from(["m1", "m2"])),
        "action": draw(st.sampled_from(["llm.request", "tool:search", "embed"])),
    }
    known = [e.timestamp for e in evs]
    bound = st.sampled_from(known) if known and draw(st.booleans()) else timestamps()
    values["start"], values["end"] = sorted([draw(bound), draw(bound)])
    return {name: values[name] for name in chosen}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_aggregates_equal_a_python_computation(data: st.DataObject) -> None:
    evs = data.draw(ledger_events(), label="events")
    with tempfile.TemporaryDirectory() as tmp, uw.SQLiteStore(Path(tmp) / "prop.db") as store:
        store.record_batch(evs)
        # Every group_by, unfiltered and with random filters, in a random zone.
        for group_by in GROUP_BYS:
            tz = data.draw(st.sampled_from(ZONES), label=f"tz for {group_by}")
            filters = data.draw(filter_sets(evs), label=f"filters for {group_by}")
            for f in ({}, filters):
                got = as_dicts(store.aggregate(group_by, tz=tz, **f))
                assert got == expected_aggregate(evs, group_by, tz, f), (group_by, tz, f)
        filters = data.draw(filter_sets(evs), label="filters for the rest")
        for f in ({}, filters):
            selected = [e for e in evs if matches(e, f)]
            assert store.summary(**f).to_dict() == totals(selected, "all")
            in_order = sorted(selected, key=lambda e: e.timestamp)  # stable: insertion order
            assert store.query(**f) == in_order
            agents: dict[str, int] = defaultdict(int)
            consumers: dict[str, int] = defaultdict(int)
            for e in selected:
                agents[e.agent_id] += 1
                consumers[e.consumer_id] += 1
            assert store.agents(**f) == sorted(agents.items())
            assert store.consumers(**f) == sorted(consumers.items())
