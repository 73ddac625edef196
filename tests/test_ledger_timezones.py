"""Calendar buckets in IANA time zones, across daylight-saving changes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import usagewarden as uw
from ledger_helpers import UTC, event

NY = ZoneInfo("America/New_York")
HOUR = dt.timedelta(hours=1)
US = dt.timedelta(microseconds=1)


@pytest.fixture
def store(backend):  # type: ignore[no-untyped-def]
    with backend.sync("tz.db") as s:
        yield s


def buckets(store: uw.SQLiteStore, group_by: str, tz: str, **filters: object) -> list[tuple]:  # type: ignore[type-arg]
    return [(a.group, a.events) for a in store.aggregate(group_by, tz=tz, **filters)]


def test_events_near_local_midnight_land_in_the_local_day(store: uw.SQLiteStore) -> None:
    local = [
        dt.datetime(2026, 3, 7, 23, 59, 59, 999999, tzinfo=NY),  # EST, the day before
        dt.datetime(2026, 3, 8, 0, 0, tzinfo=NY),  # EST midnight (05:00Z)
        dt.datetime(2026, 3, 8, 1, 59, 59, 999999, tzinfo=NY),  # last EST instant
        dt.datetime(2026, 3, 8, 3, 0, tzinfo=NY),  # first EDT instant (07:00Z)
        dt.datetime(2026, 3, 8, 23, 59, 59, 999999, tzinfo=NY),  # EDT, 03:59:59Z next day
        dt.datetime(2026, 3, 9, 0, 0, tzinfo=NY),  # EDT midnight (04:00Z)
        dt.datetime(2026, 10, 31, 23, 59, 59, 999999, tzinfo=NY),  # EDT
        dt.datetime(2026, 11, 1, 0, 0, tzinfo=NY),  # EDT midnight (04:00Z)
        dt.datetime(2026, 11, 1, 1, 30, tzinfo=NY, fold=0),  # EDT 01:30 (05:30Z)
        dt.datetime(2026, 11, 1, 1, 30, tzinfo=NY, fold=1),  # EST 01:30 (06:30Z)
        dt.datetime(2026, 11, 1, 23, 59, 59, 999999, tzinfo=NY),  # EST, 04:59:59Z next day
        dt.datetime(2026, 11, 2, 0, 0, tzinfo=NY),  # EST midnight (05:00Z)
    ]
    store.record_batch([event(i, timestamp=t) for i, t in enumerate(local)])
    assert buckets(store, "day", "America/New_York") == [
        ("2026-03-07", 1),
        ("2026-03-08", 4),
        ("2026-03-09", 1),
        ("2026-10-31", 1),
        ("2026-11-01", 4),
        ("2026-11-02", 1),
    ]
    # The same events by UTC day: 23:59:59 EDT on 03-08 is already 03-09 in UTC.
    assert buckets(store, "day", "UTC") == [
        ("2026-03-08", 4),
        ("2026-03-09", 2),
        ("2026-11-01", 4),
        ("2026-11-02", 2),
    ]
    # A local day as a filter: [local midnight, next local midnight - 1 µs].
    day = store.summary(
        start=dt.datetime(2026, 3, 8, tzinfo=NY), end=dt.datetime(2026, 3, 9, tzinfo=NY) - US
    )
    assert day.events == 4


def test_the_spring_forward_day_has_23_hourly_buckets(store: uw.SQLiteStore) -> None:
    start = dt.datetime(2026, 3, 8, 0, 0, tzinfo=NY).astimezone(UTC)
    end = dt.datetime(2026, 3, 9, 0, 0, tzinfo=NY).astimezone(UTC)
    assert end - start == 23 * HOUR
    store.record_batch(
        [event(i, timestamp=start + i * HOUR + 30 * dt.timedelta(minutes=1)) for i in range(23)]
    )
    assert buckets(store, "day", "America/New_York") == [("2026-03-08", 23)]
    hours = buckets(store, "hour", "America/New_York")
    assert len(hours) == 23
    labels = [h for h, _ in hours]
    assert labels[:3] == [
        "2026-03-08T00:00-05:00",
        "2026-03-08T01:00-05:00",
        "2026-03-08T03:00-04:00",
    ], "02:00 does not exist that day; the offset changes from -05:00 to -04:00"
    assert labels[-1] == "2026-03-08T23:00-04:00"
    assert "2026-03-08T02:00-05:00" not in labels
    assert "2026-03-08T02:00-04:00" not in labels
    assert all(n == 1 for _, n in hours)


def test_the_fall_back_day_has_25_hourly_buckets(store: uw.SQLiteStore) -> None:
    start = dt.datetime(2026, 11, 1, 0, 0, tzinfo=NY).astimezone(UTC)
    end = dt.datetime(2026, 11, 2, 0, 0, tzinfo=NY).astimezone(UTC)
    assert end - start == 25 * HOUR
    store.record_batch(
        [event(i, timestamp=start + i * HOUR + 10 * dt.timedelta(minutes=1)) for i in range(25)]
    )
    assert buckets(store, "day", "America/New_York") == [("2026-11-01", 25)]
    hours = buckets(store, "hour", "America/New_York")
    assert len(hours) == 25
    labels = [h for h, _ in hours]
    assert labels[:3] == [
        "2026-11-01T00:00-04:00",
        "2026-11-01T01:00-04:00",
        "2026-11-01T01:00-05:00",
    ], "01:00 happens twice: once in EDT, once in EST"
    assert labels[-1] == "2026-11-01T23:00-05:00"
    # The same 25 hours in UTC are 25 plain UTC hours.
    utc_hours = buckets(store, "hour", "UTC")
    assert [h for h, _ in utc_hours][0] == "2026-11-01T04:00+00:00"
    assert len(utc_hours) == 25


def test_weeks_are_iso_weeks_in_the_zone(store: uw.SQLiteStore) -> None:
    ts = [
        dt.datetime(2026, 2, 14, 12, tzinfo=UTC),  # 2026-W07
        dt.datetime(2027, 1, 1, 12, tzinfo=UTC),  # a Friday of 2026-W53
        dt.datetime(2027, 1, 4, 3, tzinfo=UTC),  # Monday 2027-W01 in UTC, Sunday 2026-W53 in NY
    ]
    store.record_batch([event(i, timestamp=t) for i, t in enumerate(ts)])
    assert buckets(store, "week", "UTC") == [("2026-W07", 1), ("2026-W53", 1), ("2027-W01", 1)]
    assert buckets(store, "week", "America/New_York") == [("2026-W07", 1), ("2026-W53", 2)]


def test_months_follow_the_zone(store: uw.SQLiteStore) -> None:
    store.record_batch(
        [
            event(0, timestamp=dt.datetime(2026, 1, 31, 15, 0, tzinfo=UTC)),  # Feb 1st in Tokyo
            event(1, timestamp=dt.datetime(2026, 1, 31, 14, 59, 59, tzinfo=UTC)),
        ]
    )
    assert buckets(store, "month", "Asia/Tokyo") == [("2026-01", 1), ("2026-02", 1)]
    assert buckets(store, "month", "UTC") == [("2026-01", 2)]


def test_quarter_hour_zones(store: uw.SQLiteStore) -> None:
    # Kathmandu is UTC+05:45: its hours start at :15 UTC.
    ts = [
        dt.datetime(2026, 5, 1, 6, 14, 59, tzinfo=UTC),
        dt.datetime(2026, 5, 1, 6, 15, tzinfo=UTC),
    ]
    store.record_batch([event(i, timestamp=t) for i, t in enumerate(ts)])
    assert buckets(store, "hour", "Asia/Kathmandu") == [
        ("2026-05-01T11:00+05:45", 1),
        ("2026-05-01T12:00+05:45", 1),
    ]


def test_a_filter_and_a_zone_together(store: uw.SQLiteStore) -> None:
    base = dt.datetime(2026, 3, 8, 4, 30, tzinfo=UTC)
    store.record_batch([event(i, timestamp=base + i * HOUR) for i in range(6)])
    got = buckets(
        store,
        "hour",
        "America/New_York",
        start=base + HOUR,
        end=base + 3 * HOUR,
        agent_id="agent-1",
    )
    assert got == [("2026-03-08T00:00-05:00", 1)]
    got = buckets(store, "hour", "America/New_York", start=base + HOUR, end=base + 3 * HOUR)
    assert got == [
        ("2026-03-08T00:00-05:00", 1),
        ("2026-03-08T01:00-05:00", 1),
        ("2026-03-08T03:00-04:00", 1),
    ]


def test_hour_buckets_come_in_time_order_when_a_zone_east_of_utc_falls_back(
    store: uw.SQLiteStore,
) -> None:
    """Paris falls back at 03:00 CEST (01:00Z) on 2026-10-25: local 02:00-03:00
    happens first at +02:00, then again at +01:00. Time buckets should be listed
    oldest first, as they are for zones west of UTC."""
    store.record_batch(
        [
            event(0, timestamp=dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),  # 02:30+02:00
            event(1, timestamp=dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),  # 02:30+01:00
        ]
    )
    assert buckets(store, "hour", "Europe/Paris") == [
        ("2026-10-25T02:00+02:00", 1),
        ("2026-10-25T02:00+01:00", 1),
    ]


def test_historic_offsets_that_are_not_whole_quarter_hours(tmp_path: Path) -> None:
    """Liberia kept UTC-00:44:30 until 1972: local hours started at hh:44:30 UTC.
    An event at local 09:55:30 and one at local 10:00:15 belong to different
    hours (and the later one to its own hour in any query)."""
    early = dt.datetime(1970, 6, 1, 10, 40, tzinfo=UTC)  # 09:55:30 local
    late = dt.datetime(1970, 6, 1, 10, 44, 45, tzinfo=UTC)  # 10:00:15 local
    monrovia = ZoneInfo("Africa/Monrovia")
    assert early.astimezone(monrovia).hour == 9
    assert late.astimezone(monrovia).hour == 10
    with uw.SQLiteStore(tmp_path / "liberia.db") as store:
        store.record_batch([event(0, timestamp=early), event(1, timestamp=late)])
        hours = [a.group for a in store.aggregate("hour", tz="Africa/Monrovia")]
        assert len(hours) == 2, hours
        assert hours[0] is not None and hours[0].startswith("1970-06-01T09:00")
        assert hours[1] is not None and hours[1].startswith("1970-06-01T10:00")
        (late_only,) = store.aggregate("hour", tz="Africa/Monrovia", start=late)
        assert late_only.group is not None and late_only.group.startswith("1970-06-01T10:00")
