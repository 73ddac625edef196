"""The usage API's budget routes over real HTTP (uvicorn on 127.0.0.1), on
both stores: create, list, get, update, soft-delete, reset, status with
alerts, one budget's status and its daily history; 409, 404 and 422; the
admin scope; and one namespace's keys never seeing or changing another's.
An engine on the same ledger picks the changes up on its refresh."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import usagewarden as uw  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from http_helpers import locs, refused, serving  # noqa: E402
from ledger_helpers import LedgerBackend  # noqa: E402
from usagewarden.fastapi import (  # noqa: E402
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    Principal,
    api_key_auth,
    usage_router,
)

NS = "team-a"
OTHER_NS = "team-b"
EVERYTHING = frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN})
KEYS = {
    "admin": Principal("admin", NS, EVERYTHING),
    "read": Principal("reader", NS, frozenset({SCOPE_READ, SCOPE_WRITE})),
    "other": Principal("other", OTHER_NS, EVERYTHING),
}
AUTH = api_key_auth({f"budget-key-{kind}-0123456789": p for kind, p in KEYS.items()})
#: The stores' clock: 2026-03-10T12:00:00Z.
NOON = datetime(2026, 3, 10, 12, tzinfo=timezone.utc)
BASE = "/usage/budgets/managed"


def as_(kind: str) -> dict[str, str]:
    return {"Authorization": f"Bearer budget-key-{kind}-0123456789"}


@contextmanager
def api(
    backend: LedgerBackend, clock: uw.ManualClock, **options: Any
) -> Iterator[tuple[httpx.Client, uw.AsyncMeteringStore]]:
    """The usage router on a store of ``backend``; ``engine(store)``, when
    given, is the router's ``budgets``."""
    store = backend.async_(clock=clock)
    engine = options.pop("engine", None)
    if engine is not None:
        options["budgets"] = engine(store)
    app = FastAPI()
    app.include_router(usage_router(store, auth=AUTH, **options))
    try:
        with serving(app) as (host, port), httpx.Client(base_url=f"http://{host}:{port}") as c:
            yield c, store
    finally:
        asyncio.run(close(store))


async def close(store: uw.AsyncMeteringStore) -> None:
    await store.close()


def definition(**fields: Any) -> dict[str, Any]:
    return {
        "name": "daily",
        "limit_usd": 10.0,
        "period": "daily",
        "thresholds": [0.5, 1.0],
    } | fields


def record_spend(client: httpx.Client, usd: float, at: datetime, **fields: Any) -> None:
    event = {"agent_id": "bot", "consumer_id": "alice", "cost": usd, "timestamp": at.isoformat()}
    response = client.post("/usage", json=event | fields, headers=as_("admin"))
    assert response.status_code == 201, response.text


@pytest.fixture
def clock() -> uw.ManualClock:
    return uw.ManualClock(start=NOON.timestamp())


def test_the_whole_life_of_a_budget(backend: LedgerBackend, clock: uw.ManualClock) -> None:
    with api(backend, clock) as (client, _store):
        made = client.post(BASE, json=definition(), headers=as_("admin"))
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["namespace"] == NS and body["limit_usd"] == 10.0
        assert datetime.fromisoformat(body["created_at"]) == NOON
        assert body["deleted_at"] is None and body["reset_at"] is None
        again = client.post(BASE, json=definition(limit_usd=1.0), headers=as_("admin"))
        refused(again, 409, "conflict")

        assert client.get(BASE, headers=as_("admin")).json()["budgets"] == [body]
        assert client.get(f"{BASE}/daily", headers=as_("admin")).json() == body

        clock.advance(60)
        put = client.put(
            f"{BASE}/daily",
            json={"limit_usd": 4.0, "period": "daily", "thresholds": [0.25, 0.5]},
            headers=as_("admin"),
        )
        assert put.status_code == 200, put.text
        assert (put.json()["limit_usd"], put.json()["thresholds"]) == (4.0, [0.25, 0.5])
        assert datetime.fromisoformat(put.json()["updated_at"]) == NOON + timedelta(seconds=60)

        record_spend(client, 1.5, NOON - timedelta(hours=1))
        record_spend(client, 0.5, NOON - timedelta(days=1))
        summary = client.get(f"{BASE}/status", headers=as_("admin")).json()
        [row] = summary["budgets"]
        assert (row["budget"], row["namespace"], row["spent_usd"], row["limit_usd"]) == (
            "daily",
            NS,
            pytest.approx(1.5),
            4.0,
        )
        assert row["thresholds_crossed"] == [0.25]
        assert summary["alerts"] == [
            {
                "budget": "daily",
                "scope_value": "",
                "threshold": 0.25,
                "spent_usd": pytest.approx(1.5),
                "limit_usd": 4.0,
            }
        ]
        one = client.get(f"{BASE}/daily/status", headers=as_("admin")).json()
        assert one["thresholds"] == [0.25, 0.5]
        assert one["status"] == summary["budgets"]
        assert datetime.fromisoformat(one["status"][0]["next_reset"]) == datetime(
            2026, 3, 11, tzinfo=timezone.utc
        )
        history = client.get(f"{BASE}/daily/history?days=7", headers=as_("admin")).json()
        assert history["history"] == [
            {"day": "2026-03-09", "spent_usd": pytest.approx(0.5)},
            {"day": "2026-03-10", "spent_usd": pytest.approx(1.5)},
        ]
        assert (history["days"], history["tz"]) == (7, "UTC")

        clock.advance(1)
        reset = client.post(f"{BASE}/daily/reset", headers=as_("admin"))
        assert datetime.fromisoformat(reset.json()["reset_at"]) == NOON + timedelta(seconds=61)
        assert client.get(f"{BASE}/status", headers=as_("admin")).json()["alerts"] == []

        gone = client.delete(f"{BASE}/daily", headers=as_("admin"))
        assert gone.status_code == 200 and gone.json()["deleted_at"] is not None
        refused(client.get(f"{BASE}/daily", headers=as_("admin")), 404, "not_found")
        assert client.get(BASE, headers=as_("admin")).json()["budgets"] == []
        listed = client.get(f"{BASE}?include_deleted=true", headers=as_("admin")).json()
        assert [b["name"] for b in listed["budgets"]] == ["daily"]
        # Soft-deleted, then created again: a new budget of the same name.
        back = client.post(BASE, json=definition(limit_usd=2.0), headers=as_("admin"))
        assert back.status_code == 201 and back.json()["deleted_at"] is None
        assert back.json()["limit_usd"] == 2.0


def test_unknown_budgets_are_404_and_bad_input_422(
    backend: LedgerBackend, clock: uw.ManualClock
) -> None:
    with api(backend, clock) as (client, _store):
        for method, path in [
            ("GET", f"{BASE}/nope"),
            ("DELETE", f"{BASE}/nope"),
            ("POST", f"{BASE}/nope/reset"),
            ("GET", f"{BASE}/nope/status"),
            ("GET", f"{BASE}/nope/history"),
        ]:
            refused(client.request(method, path, headers=as_("admin")), 404, "not_found")
        put = client.put(f"{BASE}/nope", json={"limit_usd": 1.0}, headers=as_("admin"))
        refused(put, 404, "not_found")
        client.post(BASE, json=definition(), headers=as_("admin")).raise_for_status()
        for days in ("0", "366", "x", "-1"):
            detail = refused(
                client.get(f"{BASE}/daily/history?days={days}", headers=as_("admin")),
                422,
                "invalid_request",
            )
            assert locs(detail) == [["query", "days"]]
        bad_bodies = [
            (definition(name="has space"), ["body", "name"]),
            (definition(limit_usd=-1), ["body", "limit_usd"]),
            (definition(period="yearly"), ["body", "period"]),
            (definition(thresholds=[0.9, 0.5]), ["body", "thresholds"]),
            (definition(tz="Mars/Olympus"), ["body", "tz"]),
            (definition(action="downgrade"), ["body", "downgrade_to"]),
            (definition(unknown=1), ["body", "unknown"]),
        ]
        for body, loc in bad_bodies:
            detail = refused(
                client.post(BASE, json=body, headers=as_("admin")), 422, "invalid_request"
            )
            assert loc in [x[: len(loc)] for x in locs(detail)], (body, detail)
        refused(client.post(BASE, content=b"{nope", headers=as_("admin")), 400, "malformed_json")
        refused(client.get(f"{BASE}/bad%20name", headers=as_("admin")), 422, "invalid_request")
        # Nothing of the refused requests was stored.
        assert [b["name"] for b in client.get(BASE, headers=as_("admin")).json()["budgets"]] == [
            "daily"
        ]


def test_a_key_without_the_admin_scope_can_neither_read_nor_write(
    backend: LedgerBackend, clock: uw.ManualClock
) -> None:
    with api(backend, clock) as (client, _store):
        client.post(BASE, json=definition(), headers=as_("admin")).raise_for_status()
        for method, path, body in [
            ("GET", BASE, None),
            ("POST", BASE, definition(name="mine")),
            ("GET", f"{BASE}/status", None),
            ("GET", f"{BASE}/daily", None),
            ("PUT", f"{BASE}/daily", {"limit_usd": 999.0}),
            ("DELETE", f"{BASE}/daily", None),
            ("POST", f"{BASE}/daily/reset", None),
            ("GET", f"{BASE}/daily/history", None),
        ]:
            response = client.request(method, path, json=body, headers=as_("read"))
            refused(response, 403, "missing_scope")
            refused(client.request(method, path, json=body), 401, "unauthenticated")
        row = client.get(f"{BASE}/daily", headers=as_("admin")).json()
        assert (row["limit_usd"], row["deleted_at"], row["reset_at"]) == (10.0, None, None)
        assert [b["name"] for b in client.get(BASE, headers=as_("admin")).json()["budgets"]] == [
            "daily"
        ]


def test_one_namespace_never_sees_or_changes_anothers_budgets(
    backend: LedgerBackend, clock: uw.ManualClock
) -> None:
    with api(backend, clock) as (client, _store):
        client.post(BASE, json=definition(), headers=as_("admin")).raise_for_status()
        # The same name in namespace B is B's own budget.
        mine = client.post(BASE, json=definition(limit_usd=1.0), headers=as_("other"))
        assert mine.status_code == 201 and mine.json()["namespace"] == OTHER_NS
        assert [
            b["limit_usd"] for b in client.get(BASE, headers=as_("other")).json()["budgets"]
        ] == [1.0]
        # B can reach A's namespace neither by asking for it nor through its names.
        for method, path, body in [
            ("GET", f"{BASE}?namespace={NS}", None),
            ("POST", f"{BASE}?namespace={NS}", definition(name="sneaky")),
            ("GET", f"{BASE}/daily?namespace={NS}", None),
            ("PUT", f"{BASE}/daily?namespace={NS}", {"limit_usd": 999.0}),
            ("DELETE", f"{BASE}/daily?namespace={NS}", None),
            ("POST", f"{BASE}/daily/reset?namespace={NS}", None),
            ("GET", f"{BASE}/status?namespace={NS}", None),
            ("GET", f"{BASE}/daily/history?namespace={NS}", None),
        ]:
            response = client.request(method, path, json=body, headers=as_("other"))
            refused(response, 403, "forbidden_namespace")
        client.delete(f"{BASE}/daily", headers=as_("other")).raise_for_status()
        refused(client.get(f"{BASE}/sneaky", headers=as_("admin")), 404, "not_found")
        a = client.get(f"{BASE}/daily", headers=as_("admin")).json()
        assert (a["limit_usd"], a["deleted_at"]) == (10.0, None)
        record_spend(client, 3.0, NOON - timedelta(minutes=5))
        other_status = client.get(f"{BASE}/status", headers=as_("other")).json()
        assert other_status == {"namespace": OTHER_NS, "budgets": [], "alerts": []}


def test_an_engine_on_the_same_ledger_enforces_what_the_api_stores(
    backend: LedgerBackend, clock: uw.ManualClock
) -> None:
    engines: list[uw.BudgetEngine] = []

    def engine_of(store: uw.AsyncMeteringStore) -> uw.BudgetEngine:
        engines.append(uw.BudgetEngine([], store, clock=clock, refresh_seconds=30))
        return engines[0]

    with api(backend, clock, engine=engine_of) as (client, _store):
        [engine] = engines
        assert engine.check(namespace=NS, estimated_cost=5.0).model is None
        client.post(BASE, json=definition(limit_usd=1.0), headers=as_("admin")).raise_for_status()
        clock.advance(30)
        with pytest.raises(uw.BudgetExceeded, match="'daily'"):
            engine.check(namespace=NS, estimated_cost=5.0)
        client.put(
            f"{BASE}/daily", json={"limit_usd": 100.0, "period": "daily"}, headers=as_("admin")
        ).raise_for_status()
        clock.advance(30)
        engine.check(namespace=NS, estimated_cost=5.0)
        # Its status through GET /usage/budgets: the namespace's own stored budget.
        rows = client.get("/usage/budgets", headers=as_("read")).json()["budgets"]
        assert [(r["budget"], r["limit_usd"]) for r in rows] == [("daily", 100.0)]
        assert client.get("/usage/budgets", headers=as_("other")).json()["budgets"] == []


def test_a_body_over_the_limit_is_413_and_stores_nothing(
    backend: LedgerBackend, clock: uw.ManualClock
) -> None:
    store = backend.async_(clock=clock)
    app = FastAPI()
    app.include_router(usage_router(store, auth=AUTH, max_body_bytes=256))
    try:
        with serving(app) as (host, port), httpx.Client(base_url=f"http://{host}:{port}") as c:
            padded = definition(name="big", match="x" * 250)
            refused(c.post(BASE, json=padded, headers=as_("admin")), 413, "body_too_large")
            assert c.get(BASE, headers=as_("admin")).json()["budgets"] == []
    finally:
        asyncio.run(close(store))
