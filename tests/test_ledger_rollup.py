"""The pre-aggregated totals (per hour and per UTC day × namespace × agent ×
consumer × model × action, per hour × namespace, per hour × namespace × model,
per hour and per UTC day × namespace × agent × consumer, and the hours each
agent and consumer was seen in per UTC day × namespace × model) give what the
events themselves give, on both stores, through records, purges that cut an
hour and reprices: every ``group_by`` in zones whose bucket edges are off the
hour, summaries and distinct counts, over ranges whose edges cut hours, with
filters the totals keep and one they do not (the task).

The reference is computed here in Python from the events the store's ``query``
reads (the events table itself, never the totals)."""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import usagewarden as uw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
GROUP_BYS = ["agent", "consumer", "model", "action", "namespace", "hour", "day", "week", "month"]
TIME_GROUPS = ("hour", "day", "week", "month")
#: Zones whose hour labels carry whole minutes (the reference formats them).
ZONES = ["UTC", "Asia/Kathmandu", "Australia/Lord_Howe", "Pacific/Chatham", "Europe/Paris"]
#: Monrovia's −00:44:30 of 1970: day, week and month buckets only.
SECONDS_ZONE = "Africa/Monrovia"
WINDOWS = [
    dt.datetime(2026, 4, 4, 15, tzinfo=UTC),  # Lord Howe falls back 30 minutes
    dt.datetime(2026, 6, 10, 18, tzinfo=UTC),  # Kathmandu's midnight at 18:15 UTC
    dt.datetime(1970, 6, 1, tzinfo=UTC),  # Monrovia at −00:44:30
]
SPAN = dt.timedelta(days=2)
RETENTION_S = 86_400
PRICES = {"m1": {"input": 0.5, "output": 1.5}, "M2": {"input": 3.0, "output": 0.25}}
DEARER = {"m1": {"input": 0.75, "output": 2.0}}


def micros(t: dt.datetime) -> int:
    return (t - EPOCH) // dt.timedelta(microseconds=1)


@st.composite
def moments(draw: Callable[..., Any]) -> dt.datetime:
    window = draw(st.sampled_from(WINDOWS))
    spread = int(draw(st.sampled_from([SPAN, 3 * HOUR])).total_seconds())  # sparse or clustered
    seconds = draw(st.integers(-spread, spread))
    return window + dt.timedelta(seconds=seconds, microseconds=draw(st.integers(0, 999_999)))


@st.composite
def batches(draw: Callable[..., Any], first_id: int) -> list[uw.UsageEvent]:
    out = []
    for i in range(draw(st.integers(1, 25))):
        cost = draw(st.one_of(st.none(), st.integers(0, 10**12)))
        out.append(
            uw.UsageEvent(
                draw(st.sampled_from(["a1", "a2", "Agent-é"])),
                draw(st.sampled_from(["c1", "Z"])),
                namespace=draw(st.sampled_from(["ns", "other"])),
                task_id=draw(st.sampled_from([None, "t1"])),
                action=draw(st.sampled_from(["llm.request", "tool:search"])),
                model=draw(st.sampled_from([None, "m1", "M2"])),
                tokens_in=draw(st.integers(0, 10**6)),
                tokens_out=draw(st.integers(0, 10**6)),
                cache_read_tokens=draw(st.integers(0, 10**3)),
                duration_ms=draw(st.integers(0, 10**5)),
                api_calls=draw(st.integers(0, 3)),
                units=draw(st.integers(0, 9)),
                cost=None if cost is None else cost / 1e9,
                timestamp=draw(moments()),
                request_id=f"r{first_id + i}",
            )
        )
    return out


def local(e: uw.UsageEvent, tz: str) -> dt.datetime:
    return e.timestamp.astimezone(ZoneInfo(tz))


def label(e: uw.UsageEvent, group_by: str, tz: str) -> str | None:
    if group_by in ("agent", "consumer"):
        return e.agent_id if group_by == "agent" else e.consumer_id
    if group_by in ("model", "action", "namespace"):
        value: str | None = getattr(e, group_by)
        return value
    t = local(e, tz)
    if group_by == "hour":
        offset = t.utcoffset()
        assert offset is not None
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        return (
            t.strftime("%Y-%m-%dT%H:00") + f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        )
    if group_by == "day":
        return t.strftime("%Y-%m-%d")
    if group_by == "week":
        year, week, _ = t.isocalendar()
        return f"{year}-W{week:02d}"
    return t.strftime("%Y-%m")


def totals(group: str | None, events: list[uw.UsageEvent]) -> dict[str, Any]:
    costs = [round(e.cost * 1e9) for e in events if e.cost is not None]
    return {
        "group": group,
        "events": len(events),
        **{
            f: sum(getattr(e, f) for e in events)
            for f in (
                "tokens_in",
                "tokens_out",
                "cache_read_tokens",
                "cache_write_tokens",
                "duration_ms",
                "api_calls",
                "units",
            )
        },
        "cost_nanos": sum(costs) if costs else None,
        "unpriced_events": len(events) - len(costs),
        "unique_agents": len({e.agent_id for e in events}),
        "unique_consumers": len({e.consumer_id for e in events}),
    }


def reference(events: Iterable[uw.UsageEvent], group_by: str, tz: str) -> list[dict[str, Any]]:
    groups: dict[str | None, list[uw.UsageEvent]] = {}
    for e in events:
        groups.setdefault(label(e, group_by, tz), []).append(e)
    if group_by in TIME_GROUPS:
        keys = sorted(groups, key=lambda k: min(e.timestamp for e in groups[k]))
    else:
        keys = sorted(groups, key=lambda k: (k is not None, (k or "").encode()))
    return [totals(k, groups[k]) for k in keys]


def shape(a: uw.Aggregate) -> dict[str, Any]:
    cost = a.cost
    return {
        "group": a.group,
        "events": a.events,
        "tokens_in": a.tokens_in,
        "tokens_out": a.tokens_out,
        "cache_read_tokens": a.cache_read_tokens,
        "cache_write_tokens": a.cache_write_tokens,
        "duration_ms": a.duration_ms,
        "api_calls": a.api_calls,
        "units": a.units,
        "cost_nanos": None if cost is None else round(cost * 1e9),
        "unpriced_events": a.unpriced_events,
        "unique_agents": a.unique_agents,
        "unique_consumers": a.unique_consumers,
    }


def filter_sets(draw: Callable[..., Any]) -> list[dict[str, Any]]:
    """The namespace alone, a range whose edges cut hours (and holds whole UTC
    days or not), filters on columns the totals keep and on the task (which
    they do not), an agent within a namespace (the totals per agent ×
    consumer), and a model alone (the per-model hours), bounded or not."""
    window = draw(st.sampled_from(WINDOWS))
    start = window - dt.timedelta(seconds=draw(st.integers(0, 40 * 3600)))
    end = window + dt.timedelta(seconds=draw(st.integers(0, 40 * 3600)), microseconds=17)
    return [
        {"namespace": "ns", "start": start, "end": end},
        {"model": "m1", "agent_id": "a1", "start": start},
        {"consumer_id": "Z", "end": end},
        {"namespace": "other", "agent_id": "a2", "start": start, "end": end},
        {"namespace": "ns", "action": "tool:search", "task_id": "t1"},
        {"namespace": "ns", "model": "M2", "start": start, "end": end},
        {"model": "m1"},
    ]


def check(store: uw.MeteringStore, filters: list[dict[str, Any]]) -> None:
    for f in filters:
        events = store.query(**f)
        for group_by, tz in itertools.product(GROUP_BYS, [*ZONES, SECONDS_ZONE]):
            if (tz == SECONDS_ZONE and group_by == "hour") or (
                group_by not in TIME_GROUPS and tz != "UTC"
            ):
                continue  # keys do not depend on the zone
            got = [shape(a) for a in store.aggregate(group_by, tz=tz, **f)]
            assert got == reference(events, group_by, tz), (group_by, tz, f)
        assert shape(store.summary(**f)) == totals("all", events), f
        for column, listed in (
            ("agent_id", store.agents(**f)),
            ("consumer_id", store.consumers(**f)),
        ):
            counts: dict[str, int] = {}
            for e in events:
                counts[getattr(e, column)] = counts.get(getattr(e, column), 0) + 1
            assert listed == sorted(counts.items(), key=lambda kv: kv[0].encode()), (column, f)


EXAMPLES = itertools.count()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_pre_aggregated_totals_equal_the_events_through_purges_and_reprices(
    backend: Any, data: st.DataObject
) -> None:
    clock = uw.ManualClock(0.0)
    pricing = uw.Pricing.from_dict(PRICES)
    with backend.sync(
        f"rollup{next(EXAMPLES)}.db",
        retention_seconds=RETENTION_S,
        clock=clock,
        pricing=pricing,
        durability="commit",
    ) as store:
        recorded = 0
        steps = data.draw(
            st.lists(st.sampled_from(["record", "purge", "reprice"]), min_size=1, max_size=3),
            label="steps",
        )
        for step in ["record", *steps]:
            if step == "record":
                batch = data.draw(batches(recorded), label="events")
                recorded += len(batch)
                store.record_batch(batch)
            elif step == "purge":
                # The cutoff (now − a day) falls just after an event: inside its hour.
                stored = store.query()
                if not stored:
                    continue
                after = data.draw(st.sampled_from(stored), label="purged").timestamp
                drawn = after + dt.timedelta(
                    seconds=RETENTION_S + data.draw(st.integers(1, 3600), label="after")
                )
                now = max(drawn, EPOCH + dt.timedelta(seconds=clock.now()))  # never backwards
                clock.set(now.timestamp())
                store.purge_expired()
                cutoff = micros(now) - RETENTION_S * 1_000_000
                assert all(micros(e.timestamp) >= cutoff for e in store.query())
            else:
                store.reprice(uw.Pricing.from_dict(data.draw(st.sampled_from([PRICES, DEARER]))))
            check(store, filter_sets(data.draw))


#: The PostgreSQL schema version of the calendar tables (the per-model hours
#: and the presence masks); the totals per agent × consumer come after it.
CALENDAR_VERSION = 7


def mixed_events(start: dt.datetime) -> list[uw.UsageEvent]:
    """160 events every 37 minutes from `start`: three agents (one not
    ASCII), two consumers, two namespaces, unpriced events and no model."""
    return [
        uw.UsageEvent(
            ["a1", "a2", "Agent-é"][i % 3],
            ["c1", "Z"][i % 2],
            namespace=["ns", "other"][i % 5 == 0],
            model=[None, "m1", "M2"][i % 3 if i % 7 else 0],
            tokens_in=i * 11,
            tokens_out=i,
            cost=None if i % 4 == 0 else i / 1e6,
            timestamp=start + dt.timedelta(minutes=37 * i),
            request_id=f"r{i}",
        )
        for i in range(160)
    ]


def test_a_postgres_ledger_from_before_the_calendar_tables_gets_them_filled(
    postgres_cluster: Any,
) -> None:
    """Wound back to before the per-model hours, the presence masks and the
    totals per agent × consumer, a ledger fills them from its hourly totals
    on opening: buckets in every zone, summaries and totals per agent equal
    the events again."""
    schema = postgres_cluster.new_schema()
    start = dt.datetime(2026, 6, 9, 20, 17, tzinfo=UTC)
    recorded = mixed_events(start)
    with uw.PostgresStore(postgres_cluster.dsn(), schema=schema) as store:
        store.record_batch(recorded)
        store.flush()
    postgres_cluster.sql(
        f"DROP TABLE {schema}.usage_hourly_model; DROP TABLE {schema}.usage_presence; "
        f"DROP TABLE {schema}.usage_hourly_pair; DROP TABLE {schema}.usage_daily_pair; "
        f"DELETE FROM {schema}.schema_version WHERE version >= {CALENDAR_VERSION}"
    )
    with uw.PostgresStore(postgres_cluster.dsn(), schema=schema) as store:
        for table in ("usage_presence", "usage_hourly_pair", "usage_daily_pair"):
            assert postgres_cluster.sql(f"SELECT COUNT(*) FROM {schema}.{table}") != "0"
        middle = start + dt.timedelta(hours=40, minutes=5)
        check(
            store,
            [
                {"namespace": "ns"},
                {"namespace": "ns", "model": "m1", "start": start, "end": middle},
                {"start": middle},
                {"namespace": "ns", "agent_id": "a2", "start": start, "end": middle},
            ],
        )


#: The SQLite schema version of the totals per agent × consumer and the
#: presence masks.
SQLITE_PAIRS_VERSION = 8


def test_a_sqlite_ledger_from_before_the_pair_totals_gets_them_filled(tmp_path: Path) -> None:
    """Wound back to before the totals per agent × consumer and the presence
    masks, a SQLite ledger fills them from its hourly totals on opening:
    buckets in every zone, totals per agent, consumer and model, summaries
    and the lists of agents and consumers equal the events again."""
    path = tmp_path / "ledger.db"
    start = dt.datetime(2026, 6, 9, 20, 17, tzinfo=UTC)
    recorded = mixed_events(start)
    with uw.SQLiteStore(path) as store:
        store.record_batch(recorded)
        store.flush()
    tables = ("usage_hourly_pair", "usage_daily_pair", "usage_presence")
    with sqlite3.connect(path) as db:
        for table in tables:
            db.execute(f"DROP TABLE {table}")
        db.execute(f"DELETE FROM schema_version WHERE version >= {SQLITE_PAIRS_VERSION}")
    with uw.SQLiteStore(path) as store:
        store.summary()  # opened and migrated
        with sqlite3.connect(path) as db:
            for table in tables:
                [(rows,)] = db.execute(f"SELECT COUNT(*) FROM {table}").fetchall()
                assert rows > 0, table
            [(version,)] = db.execute("SELECT MAX(version) FROM schema_version").fetchall()
            assert version >= SQLITE_PAIRS_VERSION
        middle = start + dt.timedelta(hours=40, minutes=5)
        check(
            store,
            [
                {"namespace": "ns"},
                {"namespace": "ns", "start": start + HOUR, "end": middle},
                {"namespace": "ns", "model": "m1", "start": start, "end": middle},
                {"start": middle},
                {"namespace": "ns", "agent_id": "a2", "start": start, "end": middle},
            ],
        )
