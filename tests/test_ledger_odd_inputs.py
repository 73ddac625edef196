"""Odd inputs: times have an explicit unit, timeouts their documented meaning,
and hour buckets over a wide, sparse range are all returned."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import usagewarden as uw
from fastapi import FastAPI
from usagewarden.fastapi import usage_router

UTC = dt.timezone.utc


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = uw.AsyncSQLiteStore(tmp_path / "odd.db")
    app = FastAPI()
    app.include_router(usage_router(store, auth=None, allow_unauthenticated=True))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
    await store.close()


def event(timestamp: Any, i: int = 0) -> dict[str, Any]:
    return {"agent_id": "a", "consumer_id": "c", "request_id": f"t{i}", "timestamp": timestamp}


@pytest.mark.parametrize("timestamp", ["-62135596800", "1700000000", "1.7e9", " 42 "])
async def test_a_numeric_string_timestamp_is_refused_naming_the_field(
    client: httpx.AsyncClient, timestamp: str
) -> None:
    response = await client.post("/usage", json=event(timestamp))
    assert response.status_code == 422, response.text
    assert ["body", "timestamp"] in [e["loc"] for e in response.json()["detail"]["errors"]]


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1_700_000_000, "2023-11-14T22:13:20.000000+00:00"),
        (1_700_000_000.5, "2023-11-14T22:13:20.500000+00:00"),
        (-62_135_596_800, "0001-01-01T00:00:00.000000+00:00"),
        ("2026-01-31T12:00:00+01:00", "2026-01-31T11:00:00.000000+00:00"),
    ],
)
async def test_numbers_are_unix_seconds_and_strings_iso_8601(
    client: httpx.AsyncClient, timestamp: Any, expected: str
) -> None:
    assert (await client.post("/usage", json=event(timestamp))).status_code == 201
    [stored] = (await client.get("/usage")).json()["events"]
    assert stored["timestamp"] == expected


async def test_a_numeric_string_filter_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/usage", params={"start": "1700000000"})
    assert response.status_code == 422
    ok = await client.get("/usage", params={"start": "2026-01-01T00:00:00Z"})
    assert ok.status_code == 200


def test_timeout_zero_on_acquire_means_do_not_wait() -> None:
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=1), clock=uw.ManualClock())
    assert limiter.acquire_blocking(timeout=0).key == "default"
    with pytest.raises(uw.RateLimitExceeded):
        limiter.acquire_blocking(timeout=0)


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris", "Asia/Kolkata"])
def test_hour_buckets_over_thousands_of_sparse_hours_are_all_returned(
    tmp_path: Path, tz: str
) -> None:
    """2,000 events, one every 7 hours over 19 months (DST changes included):
    one bucket each, labelled in the zone, oldest first."""
    from zoneinfo import ZoneInfo

    start = dt.datetime(2025, 1, 1, tzinfo=UTC)
    times = [start + dt.timedelta(hours=7 * i, minutes=13) for i in range(2_000)]
    with uw.SQLiteStore(tmp_path / "sparse.db") as store:
        store.record_batch(
            [
                uw.UsageEvent("a", "c", request_id=f"s{i}", timestamp=t, tokens_in=i)
                for i, t in enumerate(times)
            ]
        )
        buckets = store.aggregate("hour", tz=tz)
    zone = ZoneInfo(tz)

    def hour_label(t: dt.datetime) -> str:
        local = t.astimezone(zone).replace(minute=0)
        return local.isoformat(timespec="minutes")

    assert [(b.group, b.events, b.tokens_in) for b in buckets] == [
        (hour_label(t), 1, i) for i, t in enumerate(times)
    ]
