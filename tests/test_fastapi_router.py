"""The usage API (usagewarden.fastapi.usage_router), in process: scopes,
namespace confinement, idempotent and atomic writes, cursor pagination,
request validation, body limits, export, purge, rate limits and the OpenAPI
schema, against a real AsyncSQLiteStore on disk.

Building a FastAPI app (and its routes' state, built on their first request)
takes a large part of a second, so most tests share one app and one store
per module and work in namespaces of their own: each test draws fresh teams
(a namespace and its API keys) from a pool. Tests that need other router
options build their own app on their own store.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import usagewarden as uw  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from http_helpers import locs, refused  # noqa: E402
from ledger_helpers import T0, event, events  # noqa: E402
from ledger_helpers import event_json as payload  # noqa: E402
from usagewarden.fastapi import (  # noqa: E402
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    Principal,
    api_key_auth,
    usage_router,
)
from usagewarden.fastapi.models import EventPage  # noqa: E402

ALL_SCOPES = frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN})
SCOPES = (SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN)
#: Key kinds: every scope, none, exactly one, every one but one.
KINDS: dict[str, frozenset[str]] = {
    "all": ALL_SCOPES,
    "none": frozenset(),
    **{f"only-{scope}": frozenset({scope}) for scope in SCOPES},
    **{f"all-but-{scope}": ALL_SCOPES - {scope} for scope in SCOPES},
}
POOL = 150


@dataclass(frozen=True)
class Team:
    """A namespace of its own and an API key of every kind for it."""

    index: int

    @property
    def namespace(self) -> str:
        return f"team-{self.index:03d}"

    def key(self, kind: str = "all") -> str:
        return f"key-{self.index:03d}-{kind}-0123456789"

    def principal_id(self, kind: str = "all") -> str:
        return f"{self.namespace}-{kind}"

    def as_(self, kind: str = "all") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(kind)}"}

    @property
    def headers(self) -> dict[str, str]:
        return self.as_("all")


#: A namespace that would break a Content-Disposition header if copied as is.
QUOTE_KEY = "key-quote-namespace-0123456789"
QUOTE_NAMESPACE = 'evil"; filename="x.sh'
KEYS = {
    Team(i).key(kind): Principal(Team(i).principal_id(kind), Team(i).namespace, scopes)
    for i in range(POOL)
    for kind, scopes in KINDS.items()
}
KEYS[QUOTE_KEY] = Principal("quote", QUOTE_NAMESPACE, ALL_SCOPES)
AUTH = api_key_auth(KEYS)
_teams = itertools.count()


def new_team() -> Team:
    index = next(_teams)
    assert index < POOL, "the pool of test teams is exhausted: raise POOL"
    return Team(index)


FILTER_PARAMS = [
    "namespace",
    "agent_id",
    "consumer_id",
    "task_id",
    "model",
    "action",
    "start",
    "end",
]
#: Every operation: (method, path, JSON body, scope, status on success).
ENDPOINTS: list[tuple[str, str, Any, str, int]] = [
    ("GET", "/usage", None, SCOPE_READ, 200),
    ("GET", "/usage/aggregate?group_by=agent", None, SCOPE_READ, 200),
    ("GET", "/usage/summary", None, SCOPE_READ, 200),
    ("GET", "/usage/agents", None, SCOPE_READ, 200),
    ("GET", "/usage/consumers", None, SCOPE_READ, 200),
    ("GET", "/usage/stats", None, SCOPE_READ, 200),
    ("GET", "/usage/budgets", None, SCOPE_READ, 200),
    ("POST", "/usage", {"agent_id": "a", "consumer_id": "c"}, SCOPE_WRITE, 201),
    ("POST", "/usage/batch", [{"agent_id": "a", "consumer_id": "c"}], SCOPE_WRITE, 201),
    ("POST", "/usage/validate", {"agent_id": "a", "consumer_id": "c"}, SCOPE_WRITE, 200),
    ("POST", "/usage/purge", None, SCOPE_ADMIN, 200),
    ("GET", "/usage/export", None, SCOPE_ADMIN, 200),
    ("GET", "/usage/checkpoint", None, SCOPE_READ, 200),
    ("POST", "/usage/verify", {}, SCOPE_ADMIN, 200),
]
#: Operations that need an existing event, checked in test_audit_http.py.
EVENT_OPERATIONS = {("get", "/usage/receipts/{request_id}")}
#: The stored-budget operations, checked in test_budgets_http.py.
BUDGET_OPERATIONS = {
    ("get", "/usage/budgets/managed"),
    ("post", "/usage/budgets/managed"),
    ("get", "/usage/budgets/managed/status"),
    ("get", "/usage/budgets/managed/{name}"),
    ("put", "/usage/budgets/managed/{name}"),
    ("delete", "/usage/budgets/managed/{name}"),
    ("post", "/usage/budgets/managed/{name}/reset"),
    ("get", "/usage/budgets/managed/{name}/status"),
    ("get", "/usage/budgets/managed/{name}/history"),
}
ENDPOINT_IDS = [f"{method} {path}" for method, path, *_ in ENDPOINTS]
#: Read operations that take the ledger filters.
FILTERED_READS = [
    "/usage",
    "/usage/aggregate",
    "/usage/summary",
    "/usage/agents",
    "/usage/consumers",
    "/usage/export",
]
BODY_POSTS = ["/usage", "/usage/batch", "/usage/validate"]


def query(path: str, **params: Any) -> dict[str, Any]:
    """``params`` plus what ``path`` requires (``group_by`` for aggregates)."""
    return {"group_by": "agent", **params} if path == "/usage/aggregate" else params


def make_app(store: uw.AsyncSQLiteStore, **options: Any) -> FastAPI:
    options.setdefault("auth", AUTH)
    app = FastAPI()
    app.include_router(usage_router(store, **options))
    return app


@asynccontextmanager
async def serve(app: FastAPI, **transport_options: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, **transport_options)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def close(store: uw.AsyncSQLiteStore) -> None:
    await store.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[uw.AsyncSQLiteStore]:
    """The module's shared ledger (each test works in namespaces of its own)."""
    ledger = uw.AsyncSQLiteStore(tmp_path_factory.mktemp("router") / "usage.db")
    yield ledger
    asyncio.run(close(ledger))


@pytest.fixture(scope="module")
def app(store: uw.AsyncSQLiteStore) -> FastAPI:
    return make_app(store)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as c:
        yield c


@pytest.fixture
async def own_store(tmp_path: Path) -> AsyncIterator[uw.AsyncSQLiteStore]:
    """A ledger of the test's own, for an app with other router options."""
    ledger = uw.AsyncSQLiteStore(tmp_path / "own.db")
    yield ledger
    await ledger.close()


@pytest.fixture
def a() -> Team:
    return new_team()


@pytest.fixture
def b() -> Team:
    return new_team()


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.request(method, path, json=body, headers=headers or {})


def request_ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["request_id"] for row in rows]


async def stored_ids(store: uw.AsyncSQLiteStore, namespace: str, **filters: Any) -> list[str]:
    return [e.request_id for e in await store.query(namespace=namespace, **filters)]


async def totals(client: httpx.AsyncClient, team: Team) -> tuple[int, int]:
    """(events, tokens_in) of the team's namespace, from GET /usage/summary."""
    response = await client.get("/usage/summary", headers=team.headers)
    assert response.status_code == 200, response.text
    summary = response.json()
    return summary["events"], summary["tokens_in"]


async def stored_count(store: uw.AsyncSQLiteStore) -> int:
    return (await store.stats()).events


# --- scopes -----------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body", "scope", "ok"), ENDPOINTS, ids=ENDPOINT_IDS)
async def test_every_operation_needs_an_api_key(
    client: httpx.AsyncClient,
    store: uw.AsyncSQLiteStore,
    method: str,
    path: str,
    body: Any,
    scope: str,
    ok: int,
) -> None:
    before = await stored_count(store)
    for headers in ({}, {"Authorization": "Bearer key-nobody-was-given-0000"}):
        response = await call(client, method, path, body, headers)
        refused(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == "Bearer"
    assert await stored_count(store) == before


@pytest.mark.parametrize(("method", "path", "body", "scope", "ok"), ENDPOINTS, ids=ENDPOINT_IDS)
async def test_every_operation_needs_its_scope(
    client: httpx.AsyncClient,
    store: uw.AsyncSQLiteStore,
    a: Team,
    method: str,
    path: str,
    body: Any,
    scope: str,
    ok: int,
) -> None:
    for kind in ("none", f"all-but-{scope}"):
        response = await call(client, method, path, body, a.as_(kind))
        assert refused(response, 403, "missing_scope")["scope"] == scope
    assert await stored_ids(store, a.namespace) == [], "a refused write stores nothing"
    response = await call(client, method, path, body, a.as_(f"only-{scope}"))
    assert response.status_code == ok, response.text


# --- namespaces -------------------------------------------------------------


async def seed_two_teams(store: uw.AsyncSQLiteStore, a: Team, b: Team) -> None:
    await store.record_batch(
        events(6, namespace=a.namespace)
        + events(
            4,
            start=100,
            namespace=b.namespace,
            agent_id="agent-b",
            consumer_id="consumer-b",
            model="model-b",
        )
    )


async def test_reads_show_only_the_callers_namespace(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, b: Team
) -> None:
    await seed_two_teams(store, a, b)
    for team, own, agents, consumers in (
        (a, [f"req-{i}" for i in range(6)], {"agent-0", "agent-1", "agent-2"}, 2),
        (b, [f"req-{i}" for i in range(100, 104)], {"agent-b"}, 1),
    ):
        headers = team.headers
        listed = (await client.get("/usage", headers=headers)).json()
        assert request_ids(listed["events"]) == own
        assert {e["namespace"] for e in listed["events"]} == {team.namespace}
        summary = (await client.get("/usage/summary", headers=headers)).json()
        assert (summary["events"], summary["unique_agents"]) == (len(own), len(agents))
        by_namespace = await client.get(
            "/usage/aggregate", params={"group_by": "namespace"}, headers=headers
        )
        assert [(g["group"], g["events"]) for g in by_namespace.json()["groups"]] == [
            (team.namespace, len(own))
        ]
        by_agent = await client.get(
            "/usage/aggregate", params={"group_by": "agent"}, headers=headers
        )
        assert {g["group"] for g in by_agent.json()["groups"]} == agents
        listed_agents = (await client.get("/usage/agents", headers=headers)).json()
        assert {item["id"] for item in listed_agents["items"]} == agents
        listed_consumers = (await client.get("/usage/consumers", headers=headers)).json()
        assert len(listed_consumers["items"]) == consumers
        stats = (await client.get("/usage/stats", headers=headers)).json()
        assert stats["namespace"] == team.namespace
        assert (stats["events"], stats["unique_agents"]) == (len(own), len(agents))
        exported = await client.get("/usage/export", params={"format": "json"}, headers=headers)
        assert request_ids(exported.json()) == own


@pytest.mark.parametrize("path", FILTERED_READS)
async def test_another_namespace_is_403_and_its_values_match_nothing(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, b: Team, path: str
) -> None:
    await seed_two_teams(store, a, b)
    response = await client.get(path, params=query(path, namespace=b.namespace), headers=a.headers)
    assert b.namespace in refused(response, 403, "forbidden_namespace")["message"]
    assert "req-100" not in response.text
    own = await client.get(path, params=query(path, namespace=a.namespace), headers=a.headers)
    assert own.status_code == 200, "naming one's own namespace is allowed"

    params = query(path, agent_id="agent-b", format="json")
    body = (await client.get(path, params=params, headers=a.headers)).json()
    found = {
        "/usage": lambda: body["events"],
        "/usage/aggregate": lambda: body["groups"],
        "/usage/summary": lambda: [] if body["events"] == 0 else [body],
        "/usage/agents": lambda: body["items"],
        "/usage/consumers": lambda: body["items"],
        "/usage/export": lambda: body,
    }[path]()
    assert found == [], "filtering on another team's values finds nothing"


async def test_writing_to_another_namespace_is_403_and_stores_nothing(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, b: Team
) -> None:
    one = await client.post("/usage", json=payload(0, namespace=b.namespace), headers=a.headers)
    refused(one, 403, "forbidden_namespace")
    batch = [payload(i) for i in range(5)]
    batch[2]["namespace"] = b.namespace
    response = await client.post("/usage/batch", json=batch, headers=a.headers)
    refused(response, 403, "forbidden_namespace")
    assert await stored_ids(store, a.namespace) == []
    assert await stored_ids(store, b.namespace) == []

    implicit = await client.post("/usage", json=payload(0), headers=a.headers)
    assert implicit.status_code == 201
    assert implicit.json() == {"request_id": "req-0", "namespace": a.namespace, "created": True}
    explicit = await client.post(
        "/usage", json=payload(1, namespace=a.namespace), headers=a.headers
    )
    assert explicit.status_code == 201
    assert await stored_ids(store, a.namespace) == ["req-0", "req-1"]
    assert await stored_ids(store, b.namespace) == []


# --- idempotency ------------------------------------------------------------


async def test_a_retry_is_200_and_a_reused_request_id_is_409(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team
) -> None:
    first = await client.post("/usage", json=payload(0), headers=a.headers)
    assert first.status_code == 201
    assert first.json() == {"request_id": "req-0", "namespace": a.namespace, "created": True}

    retry = await client.post("/usage", json=payload(0), headers=a.headers)
    assert retry.status_code == 200
    assert retry.json() == {"request_id": "req-0", "namespace": a.namespace, "created": False}
    plus_five = dt.timezone(dt.timedelta(hours=5))
    same_instant = payload(0, timestamp=T0.astimezone(plus_five).isoformat())
    assert (await client.post("/usage", json=same_instant, headers=a.headers)).status_code == 200

    changed = await client.post("/usage", json=payload(0, tokens_in=999), headers=a.headers)
    assert "req-0" in refused(changed, 409, "conflict")["message"]
    no_timestamp = await client.post("/usage", json=payload(0, timestamp=None), headers=a.headers)
    detail = refused(no_timestamp, 409, "conflict")
    assert "timestamp" in detail["message"], "the message says how to retry"

    kept = await store.query(namespace=a.namespace)
    assert [(e.request_id, e.tokens_in) for e in kept] == [("req-0", 100)]
    assert await totals(client, a) == (1, 100), "retries and conflicts are not counted"


async def test_the_same_request_id_in_another_namespace_is_another_event(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, b: Team
) -> None:
    assert (await client.post("/usage", json=payload(0), headers=a.headers)).status_code == 201
    other = await client.post("/usage", json=payload(0, tokens_in=5), headers=b.headers)
    assert other.status_code == 201
    assert other.json()["namespace"] == b.namespace
    assert await stored_ids(store, b.namespace) == ["req-0"]


# --- batches ----------------------------------------------------------------


async def test_a_batch_is_recorded_whole_and_retried_whole(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team
) -> None:
    batch = [payload(i) for i in range(5)]
    first = await client.post("/usage/batch", json=batch, headers=a.headers)
    assert first.status_code == 201
    assert first.json() == {"received": 5, "inserted": 5, "duplicates": 0}
    retry = await client.post("/usage/batch", json=batch, headers=a.headers)
    assert retry.status_code == 200
    assert retry.json() == {"received": 5, "inserted": 0, "duplicates": 5}
    mixed = await client.post("/usage/batch", json=batch[3:] + [payload(5)], headers=a.headers)
    assert mixed.status_code == 201
    assert mixed.json() == {"received": 3, "inserted": 1, "duplicates": 2}
    assert await stored_ids(store, a.namespace) == [f"req-{i}" for i in range(6)]
    assert await totals(client, a) == (6, sum(100 + i for i in range(6)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tokens_in", -1),  # refused by the request model
        ("tokens_out", "10"),  # strict: no strings for numbers
        ("action", "Not An Action"),
        ("timestamp", "2026-02-14T12:00:00"),  # naive
        ("unknown_field", 1),
        ("agent_id", "agent\u0000nul"),  # refused by UsageEvent itself
        ("metadata", {"x": float("inf")}),
    ],
)
async def test_one_invalid_event_refuses_the_whole_batch(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, field: str, value: Any
) -> None:
    batch = [payload(i) for i in range(6)]
    batch[3][field] = value
    content = json.dumps(batch)  # allow_nan: Infinity reaches the server as sent
    headers = {**a.headers, "Content-Type": "application/json"}
    response = await client.post("/usage/batch", content=content, headers=headers)
    assert locs(refused(response, 422, "invalid_request")) == [["body", 3, field]]
    assert await stored_ids(store, a.namespace) == []


async def test_one_conflicting_event_refuses_the_whole_batch(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team
) -> None:
    assert (await client.post("/usage", json=payload(7), headers=a.headers)).status_code == 201
    batch = [payload(i) for i in range(5)] + [payload(7, tokens_in=1)]
    response = await client.post("/usage/batch", json=batch, headers=a.headers)
    assert "req-7" in refused(response, 409, "conflict")["message"]
    kept = await store.query(namespace=a.namespace)
    assert [(e.request_id, e.tokens_in) for e in kept] == [("req-7", 107)]
    assert await totals(client, a) == (1, 107)


@pytest.mark.parametrize("size", [0, 1001])
async def test_a_batch_holds_1_to_1000_events(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, size: int
) -> None:
    batch = [payload(i) for i in range(size)]
    response = await client.post("/usage/batch", json=batch, headers=a.headers)
    detail = refused(response, 422, "invalid_request")
    assert locs(detail) == [["body"]]
    assert detail["errors"][0]["type"] == ("too_short" if size == 0 else "too_long")
    assert await stored_ids(store, a.namespace) == []


async def test_a_batch_of_1000_events_is_accepted(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team
) -> None:
    batch = [payload(i) for i in range(1000)]
    response = await client.post("/usage/batch", json=batch, headers=a.headers)
    assert response.status_code == 201
    assert response.json()["inserted"] == 1000
    assert len(await stored_ids(store, a.namespace)) == 1000


@pytest.mark.parametrize(
    ("path", "body"), [("/usage", []), ("/usage", "event"), ("/usage/batch", payload(0))]
)
async def test_a_body_of_the_wrong_shape_is_422(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, path: str, body: Any
) -> None:
    response = await client.post(path, json=body, headers=a.headers)
    assert locs(refused(response, 422, "invalid_request")) == [["body"]]
    assert await stored_ids(store, a.namespace) == []


# --- pagination -------------------------------------------------------------


async def test_cursor_pages_neither_skip_nor_repeat_while_events_arrive(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, b: Team
) -> None:
    # Three events a second: page boundaries fall inside runs of equal timestamps.
    await store.record_batch(
        [
            event(i, namespace=a.namespace, timestamp=T0 + dt.timedelta(seconds=i // 3))
            for i in range(250)
        ]
    )
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get("/usage", params=params, headers=a.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += request_ids(page["events"])
        sizes.append(len(page["events"]))
        if len(sizes) <= 2:
            # Newer events arrive between pages, in this namespace and another.
            late = payload(0, timestamp=(T0 + dt.timedelta(hours=len(sizes))).isoformat())
            late["request_id"] = f"late-{len(sizes)}"
            for team in (a, b):
                posted = await client.post("/usage", json=late, headers=team.headers)
                assert posted.status_code == 201
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(sizes) < 10, "pagination does not end"
    assert seen == [f"req-{i}" for i in range(250)] + ["late-1", "late-2"]
    assert len(set(seen)) == len(seen)
    assert sizes == [100, 100, 52], "no empty trailing page"


async def test_a_cursor_is_bound_to_its_filters_and_namespace(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, b: Team
) -> None:
    await store.record_batch(events(10, namespace=a.namespace) + events(10, namespace=b.namespace))
    first = (await client.get("/usage", params={"limit": 3}, headers=a.headers)).json()
    cursor = first["next_cursor"]
    assert isinstance(cursor, str)
    params = {"limit": 3, "cursor": cursor}
    second = await client.get("/usage", params=params, headers=a.headers)
    assert request_ids(second.json()["events"]) == ["req-3", "req-4", "req-5"]

    other_filters = await client.get(
        "/usage", params={**params, "agent_id": "agent-0"}, headers=a.headers
    )
    detail = refused(other_filters, 422, "invalid_request")
    assert locs(detail) == [["query", "cursor"]]
    assert "cursor" in detail["message"]
    other_team = await client.get("/usage", params=params, headers=b.headers)
    assert locs(refused(other_team, 422, "invalid_request")) == [["query", "cursor"]]


async def test_a_garbage_cursor_is_422(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team
) -> None:
    await store.record_batch(events(3, namespace=a.namespace))
    for cursor in ("garbage", "0" * 48, "g" * 48, "f" * 47, "a" * 129, ""):
        response = await client.get("/usage", params={"cursor": cursor}, headers=a.headers)
        assert locs(refused(response, 422, "invalid_request")) == [["query", "cursor"]], cursor


async def test_limit_and_offset_are_bounded(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team
) -> None:
    await store.record_batch(events(60, namespace=a.namespace))
    for params in ({"limit": 1001}, {"limit": 0}, {"limit": -1}, {"offset": -1}):
        response = await client.get("/usage", params=params, headers=a.headers)
        assert locs(refused(response, 422, "invalid_request")) == [["query", next(iter(params))]]
    largest = await client.get("/usage", params={"limit": 1000}, headers=a.headers)
    assert largest.status_code == 200
    skipped = await client.get("/usage", params={"limit": 5, "offset": 55}, headers=a.headers)
    assert request_ids(skipped.json()["events"]) == [f"req-{i}" for i in range(55, 60)]
    assert skipped.json()["next_cursor"] is None


async def test_max_page_bounds_limit(own_store: uw.AsyncSQLiteStore, a: Team) -> None:
    await own_store.record_batch(events(60, namespace=a.namespace))
    async with serve(make_app(own_store, max_page=50)) as client:
        full = await client.get("/usage", params={"limit": 50}, headers=a.headers)
        assert len(full.json()["events"]) == 50
        over = await client.get("/usage", params={"limit": 51}, headers=a.headers)
        assert locs(refused(over, 422, "invalid_request")) == [["query", "limit"]]


# --- query validation -------------------------------------------------------


@pytest.mark.parametrize("path", FILTERED_READS)
async def test_start_after_end_is_422(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, path: str
) -> None:
    await store.record_batch(events(5, namespace=a.namespace))
    later = (T0 + dt.timedelta(seconds=3)).isoformat()
    params = query(path, start=later, end=T0.isoformat())
    response = await client.get(path, params=params, headers=a.headers)
    assert locs(refused(response, 422, "invalid_request")) == [["query", "start"]]
    same = await client.get(path, params=query(path, start=later, end=later), headers=a.headers)
    assert same.status_code == 200, "both bounds are inclusive: start == end is one instant"


@pytest.mark.parametrize("path", FILTERED_READS)
async def test_a_naive_time_in_a_filter_is_422(
    client: httpx.AsyncClient, a: Team, path: str
) -> None:
    for bound in ("start", "end"):
        params = query(path, **{bound: "2026-02-14T12:00:00"})
        response = await client.get(path, params=params, headers=a.headers)
        detail = refused(response, 422, "invalid_request")
        assert locs(detail) == [["query", bound]]
        assert detail["errors"][0]["type"] == "timezone_aware"
        params = query(path, **{bound: "2026-02-14T12:00:00+02:00"})
        assert (await client.get(path, params=params, headers=a.headers)).status_code == 200


async def test_filters_and_time_bounds_select_events(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team
) -> None:
    await store.record_batch(events(9, namespace=a.namespace))
    minus_three = dt.timezone(dt.timedelta(hours=-3))
    params = {
        "agent_id": "agent-1",
        "start": (T0 + dt.timedelta(seconds=2)).isoformat(),
        "end": (T0 + dt.timedelta(seconds=7)).astimezone(minus_three).isoformat(),
    }
    listed = (await client.get("/usage", params=params, headers=a.headers)).json()
    assert request_ids(listed["events"]) == ["req-4", "req-7"]
    summary = (await client.get("/usage/summary", params=params, headers=a.headers)).json()
    assert (summary["events"], summary["tokens_in"]) == (2, 104 + 107)


async def test_aggregate_refuses_unknown_groups_and_zones(
    client: httpx.AsyncClient, a: Team
) -> None:
    for params, bad in (
        ({"group_by": "galaxy"}, "group_by"),
        ({"group_by": "day", "tz": "No/Zone"}, "tz"),
    ):
        response = await client.get("/usage/aggregate", params=params, headers=a.headers)
        assert locs(refused(response, 422, "invalid_request")) == [["query", bad]]


# --- bodies -----------------------------------------------------------------


@pytest.mark.parametrize("path", BODY_POSTS)
async def test_malformed_json_is_400(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, path: str
) -> None:
    headers = {**a.headers, "Content-Type": "application/json"}
    for content in (b"{", b"", b'{"agent_id": "a",}', b"\xff\xfe{}", b"nul", b"[{}"):
        response = await client.post(path, content=content, headers=headers)
        refused(response, 400, "malformed_json")
    assert await stored_ids(store, a.namespace) == []


LIMIT = 1024


def body_of_size(size: int, path: str) -> bytes:
    """A valid body for ``path``, padded with JSON whitespace to ``size`` bytes."""
    document: Any = payload(0) if path != "/usage/batch" else [payload(0)]
    text = json.dumps(document).encode()
    assert len(text) <= size
    return text + b" " * (size - len(text))


async def chunked(data: bytes, size: int = 300) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


async def test_a_body_over_the_limit_is_413(own_store: uw.AsyncSQLiteStore, a: Team) -> None:
    headers = {**a.headers, "Content-Type": "application/json"}
    async with serve(make_app(own_store, max_body_bytes=LIMIT)) as client:
        for path in BODY_POSTS:
            too_big = body_of_size(LIMIT + 1, path)
            declared = await client.post(path, content=too_big, headers=headers)
            assert declared.request.headers["content-length"] == str(LIMIT + 1)
            assert refused(declared, 413, "body_too_large")["max_bytes"] == LIMIT

            streamed = await client.post(path, content=chunked(too_big), headers=headers)
            assert "content-length" not in streamed.request.headers
            assert streamed.request.headers["transfer-encoding"] == "chunked"
            refused(streamed, 413, "body_too_large")
            assert await stored_count(own_store) == 0

        for path in BODY_POSTS:
            at_limit = body_of_size(LIMIT, path)
            for content in (at_limit, chunked(at_limit)):
                response = await client.post(path, content=content, headers=headers)
                assert response.status_code in (200, 201), (path, response.text)
        assert await stored_ids(own_store, a.namespace) == ["req-0"]


# --- validate ---------------------------------------------------------------


async def test_validate_reports_every_problem_with_its_path(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, b: Team
) -> None:
    async def validate(body: Any) -> dict[str, Any]:
        response = await client.post("/usage/validate", json=body, headers=a.headers)
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()
        return report

    assert await validate(payload(0)) == {"valid": True, "errors": []}
    assert await validate([payload(0), payload(1)]) == {"valid": True, "errors": []}
    single = await validate(payload(0, tokens_in=-5))
    assert single["valid"] is False
    assert locs(single) == [["body", "tokens_in"]]

    report = await validate(
        [
            payload(0),
            payload(1, agent_id=""),
            payload(2, namespace=b.namespace),
            {**payload(3, tokens_in=-1), "extra": 1},
            payload(4, agent_id="nul\u0000inside"),
            payload(5, timestamp="2026-02-14T12:00:00"),
        ]
    )
    assert report["valid"] is False
    types = {json.dumps(e["loc"]): e["type"] for e in report["errors"]}
    assert set(types) == {
        json.dumps(loc)
        for loc in (
            ["body", 1, "agent_id"],
            ["body", 2, "namespace"],
            ["body", 3, "tokens_in"],
            ["body", 3, "extra"],
            ["body", 4, "agent_id"],
            ["body", 5, "timestamp"],
        )
    }
    assert types['["body", 2, "namespace"]'] == "forbidden_namespace"
    assert types['["body", 3, "extra"]'] == "extra_forbidden"
    assert all(set(e) == {"loc", "msg", "type"} for e in report["errors"])

    for size in (0, 1001):
        limits = await validate([payload(i) for i in range(size)])
        assert limits == {
            "valid": False,
            "errors": [
                {
                    "loc": ["body"],
                    "msg": "a batch holds 1 to 1000 events",
                    "type": "too_short" if size == 0 else "too_long",
                }
            ],
        }
    assert await stored_ids(store, a.namespace) == [], "validation records nothing"


# --- export -----------------------------------------------------------------

MEDIA_TYPES = {"csv": "text/csv", "json": "application/json", "ndjson": "application/x-ndjson"}


def filename(label: str, fmt: str) -> str:
    return rf'attachment; filename="usage-{re.escape(label)}-\d{{8}}T\d{{6}}Z\.{fmt}"'


def sample(namespace: str) -> list[uw.UsageEvent]:
    awkward = 'comma, "quote", newline\n, unicode ü€'
    return [
        event(
            i,
            namespace=namespace,
            task_id=None if i % 2 else f"task-{i}",
            model=None if i % 3 == 0 else "m,1",
            cost=None if i % 4 == 0 else (i * 1_000_000_007) / 1e9,
            cache_read_tokens=i,
            units=3 * i,
            source=None if i % 5 == 0 else awkward,
            metadata=None if i % 2 else {"text": awkward, "n": i, "nested": {"list": [1, None]}},
        )
        for i in range(12)
    ]


def parse_export(fmt: str, text: str) -> list[dict[str, Any]]:
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text, newline="")))
    if fmt == "json":
        parsed = json.loads(text)
        assert isinstance(parsed, list)
        return parsed
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def matches_csv(row: dict[str, str], e: uw.UsageEvent) -> None:
    expected = e.to_dict()
    assert set(row) == set(expected) | {"total_tokens"}
    assert int(row["total_tokens"]) == e.total_tokens
    for name, value in expected.items():
        if value is None:
            assert row[name] == "", name
        elif name == "timestamp":
            assert dt.datetime.fromisoformat(row[name]) == e.timestamp
        elif name == "metadata":
            assert json.loads(row[name]) == value
        elif name == "cost":
            assert float(row[name]) == pytest.approx(value, abs=1e-9)
        elif isinstance(value, int):
            assert int(row[name]) == value, name
        else:
            assert row[name] == value, name


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
async def test_export_is_what_was_recorded(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team, b: Team, fmt: str
) -> None:
    await store.record_batch(sample(a.namespace) + events(3, start=50, namespace=b.namespace))
    response = await client.get("/usage/export", params={"format": fmt}, headers=a.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(MEDIA_TYPES[fmt])
    disposition = response.headers["content-disposition"]
    assert re.fullmatch(filename(a.namespace, fmt), disposition), disposition
    assert response.headers["x-export-limit"] == "100000"
    rows = parse_export(fmt, response.text)
    expected = await store.query(namespace=a.namespace)
    assert len(rows) == len(expected) == 12
    for row, e in zip(rows, expected, strict=True):
        if fmt == "csv":
            matches_csv(row, e)
        else:
            assert row.pop("total_tokens") == e.total_tokens
            assert row == e.to_dict()
            assert uw.UsageEvent.from_dict(row) == e

    params = {"format": fmt, "agent_id": "agent-1"}
    filtered = await client.get("/usage/export", params=params, headers=a.headers)
    assert [r["request_id"] for r in parse_export(fmt, filtered.text)] == [
        e.request_id for e in expected if e.agent_id == "agent-1"
    ]


async def test_an_empty_export_is_still_a_document(client: httpx.AsyncClient, a: Team) -> None:
    async def export(fmt: str) -> str:
        response = await client.get("/usage/export", params={"format": fmt}, headers=a.headers)
        assert response.status_code == 200
        return response.text

    csv_text = await export("csv")
    assert csv_text.startswith("request_id,namespace,timestamp,")
    assert parse_export("csv", csv_text) == []
    assert json.loads(await export("json")) == []
    assert await export("ndjson") == ""


async def test_export_is_capped_by_max_export_rows(own_store: uw.AsyncSQLiteStore, a: Team) -> None:
    await own_store.record_batch(events(8, namespace=a.namespace))
    async with serve(make_app(own_store, max_export_rows=5)) as client:
        params: dict[str, Any] = {"format": "json"}
        capped = await client.get("/usage/export", params=params, headers=a.headers)
        assert request_ids(capped.json()) == [f"req-{i}" for i in range(5)]
        assert capped.headers["x-export-limit"] == "5"
        fewer = await client.get("/usage/export", params={**params, "limit": 3}, headers=a.headers)
        assert request_ids(fewer.json()) == ["req-0", "req-1", "req-2"]
        assert fewer.headers["x-export-limit"] == "3"
        over = await client.get("/usage/export", params={"limit": 6}, headers=a.headers)
        assert locs(refused(over, 422, "invalid_request")) == [["query", "limit"]]
        xml = await client.get("/usage/export", params={"format": "xml"}, headers=a.headers)
        assert locs(refused(xml, 422, "invalid_request")) == [["query", "format"]]


async def test_the_export_filename_cannot_break_its_header(client: httpx.AsyncClient) -> None:
    response = await client.get("/usage/export", headers={"X-API-Key": QUOTE_KEY})
    assert response.status_code == 200
    disposition = response.headers["content-disposition"]
    assert re.fullmatch(filename("evil_filename_x.sh", "csv"), disposition), disposition


# --- purge ------------------------------------------------------------------


async def test_purge_deletes_what_the_retention_has_expired(tmp_path: Path, a: Team) -> None:
    clock = uw.ManualClock(T0.timestamp())
    store = uw.AsyncSQLiteStore(tmp_path / "retained.db", retention_seconds=3600, clock=clock)
    await store.record_batch(
        [
            event(0, namespace=a.namespace, timestamp=T0 - dt.timedelta(hours=2)),
            event(1, namespace=a.namespace, timestamp=T0 - dt.timedelta(minutes=30)),
            event(2, namespace=a.namespace, timestamp=T0),
        ]
    )
    admin = a.as_(f"only-{SCOPE_ADMIN}")
    async with serve(make_app(store)) as client:

        async def purge() -> int:
            response = await client.post("/usage/purge", headers=admin)
            assert response.status_code == 200, response.text
            purged: int = response.json()["purged"]
            return purged

        assert await purge() == 1
        assert await purge() == 0
        clock.advance(1800)  # req-1 is now exactly at the cutoff: kept
        assert await purge() == 0
        clock.advance(0.001)
        assert await purge() == 1
        listed = await client.get("/usage", headers=a.headers)
        assert request_ids(listed.json()["events"]) == ["req-2"]
        stats = (await client.get("/usage/stats", headers=a.headers)).json()
        assert stats["store"]["retention_seconds"] == 3600
        assert stats["events"] == 1
        assert await totals(client, a) == (1, 102), "purged events leave the totals"
    await store.close()


# --- mounting ---------------------------------------------------------------


def test_auth_is_required_unless_explicitly_waived(store: uw.AsyncSQLiteStore) -> None:
    with pytest.raises(ValueError, match="auth"):
        usage_router(store, auth=None)


async def test_an_unauthenticated_router_warns_and_serves_everyone(
    own_store: uw.AsyncSQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="usagewarden"):
        router = usage_router(own_store, auth=None, allow_unauthenticated=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "WITHOUT authentication" in warnings[0].getMessage()
    app = FastAPI()
    app.include_router(router)
    async with serve(app) as client:
        for method, path, body, _scope, _ok in ENDPOINTS:
            response = await call(client, method, path, body)
            assert 200 <= response.status_code < 300, (method, path, response.text)
        posted = await client.post("/usage", json=payload(9, namespace="team-x"))
        assert posted.status_code == 201
        assert posted.json()["namespace"] == "team-x", "no namespace is imposed"
        listed = (await client.get("/usage")).json()
        assert {e["namespace"] for e in listed["events"]} == {"default", "team-x"}
        only_x = (await client.get("/usage", params={"namespace": "team-x"})).json()
        assert request_ids(only_x["events"]) == ["req-9"]
        stats = (await client.get("/usage/stats")).json()
        assert stats["namespace"] is None
        assert stats["events"] == 3, "two from the loop above, one in team-x"
        export = await client.get("/usage/export")
        assert re.fullmatch(filename("all", "csv"), export.headers["content-disposition"])


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_page": 0}, ValueError, "max_page"),
        ({"max_export_rows": True}, ValueError, "max_export_rows"),
        ({"max_body_bytes": -1}, ValueError, "max_body_bytes"),
        ({"prefix": "usage"}, ValueError, "prefix"),
        ({"prefix": "/usage/"}, ValueError, "prefix"),
        ({"rate_limiter": "fast"}, TypeError, "rate_limiter"),
        ({"auth": "key"}, TypeError, "auth"),
    ],
)
def test_bad_router_options_are_refused_when_mounting(
    store: uw.AsyncSQLiteStore, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    options.setdefault("auth", AUTH)
    with pytest.raises(error, match=match):
        usage_router(store, **options)


def test_the_store_must_be_an_async_sqlite_store(tmp_path: Path) -> None:
    with (
        uw.SQLiteStore(tmp_path / "sync.db") as sync_store,
        pytest.raises(TypeError, match="store"),
    ):
        usage_router(sync_store, auth=AUTH)  # type: ignore[arg-type]


# --- rate limits ------------------------------------------------------------

LIMIT_HEADERS = ("limit", "remaining", "reset")


def limit_headers(response: httpx.Response) -> list[str]:
    values = [response.headers[f"ratelimit-{name}"] for name in LIMIT_HEADERS]
    assert values == [response.headers[f"x-ratelimit-{name}"] for name in LIMIT_HEADERS]
    return values


async def test_the_router_rate_limits_each_principal(
    own_store: uw.AsyncSQLiteStore, a: Team, b: Team
) -> None:
    clock = uw.ManualClock()
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=2), clock=clock)
    async with serve(make_app(own_store, rate_limiter=limiter, prefix="/api/usage")) as client:
        first = await client.get("/api/usage/summary", headers=a.headers)
        assert first.status_code == 200
        assert limit_headers(first) == ["2", "1", "60"]
        clock.advance(15)
        second = await client.post("/api/usage", json=payload(0), headers=a.headers)
        assert second.status_code == 201
        assert limit_headers(second) == ["2", "0", "60"]

        third = await client.post("/api/usage", json=payload(1), headers=a.headers)
        detail = refused(third, 429, "rate_limited")
        assert third.headers["retry-after"] == "45"
        assert limit_headers(third) == ["2", "0", "45"]
        assert detail["limit"] == "requests_per_minute"
        assert detail["retry_after"] == 45.0
        assert await stored_ids(own_store, a.namespace) == ["req-0"], "a refusal stores nothing"
        refused(await client.get("/api/usage/export", headers=a.headers), 429, "rate_limited")

        other = await client.get("/api/usage/summary", headers=b.headers)
        assert other.status_code == 200, "each principal has its own budget"
        refused(await client.get("/api/usage/summary"), 401, "unauthenticated")
        assert limiter.usage(a.principal_id()).requests == 2, "refusals and 401s cost nothing"

        clock.advance(45)
        export = await client.get("/api/usage/export", headers=a.headers)
        assert export.status_code == 200
        assert limit_headers(export) == ["2", "0", "60"], "streamed responses carry them too"
        assert (await client.get("/usage/summary", headers=b.headers)).status_code == 404


# --- OpenAPI ----------------------------------------------------------------

#: (method, path): (parameters, {success status: response model or media types}).
OPERATIONS: dict[tuple[str, str], tuple[list[str], dict[str, str | set[str]]]] = {
    ("get", "/usage"): ([*FILTER_PARAMS, "limit", "offset", "cursor"], {"200": "EventPage"}),
    ("post", "/usage"): ([], {"201": "Recorded", "200": "Recorded"}),
    ("post", "/usage/batch"): ([], {"201": "BatchRecorded", "200": "BatchRecorded"}),
    ("post", "/usage/validate"): ([], {"200": "Validation"}),
    ("post", "/usage/purge"): ([], {"200": "Purged"}),
    ("get", "/usage/aggregate"): ([*FILTER_PARAMS, "group_by", "tz"], {"200": "AggregateOut"}),
    ("get", "/usage/summary"): (FILTER_PARAMS, {"200": "Totals"}),
    ("get", "/usage/agents"): (FILTER_PARAMS, {"200": "CountList"}),
    ("get", "/usage/consumers"): (FILTER_PARAMS, {"200": "CountList"}),
    ("get", "/usage/stats"): ([], {"200": "StatsOut"}),
    ("get", "/usage/budgets"): ([], {"200": "BudgetList"}),
    ("get", "/usage/export"): (
        [*FILTER_PARAMS, "format", "limit"],
        {"200": {"text/csv; charset=utf-8", "application/json", "application/x-ndjson"}},
    ),
    ("get", "/usage/receipts/{request_id}"): (["request_id", "namespace"], {"200": "ReceiptOut"}),
    ("get", "/usage/checkpoint"): (["namespace"], {"200": "CheckpointOut"}),
    ("post", "/usage/verify"): ([], {"200": "VerifyOut"}),
    ("get", "/usage/budgets/managed"): (
        ["namespace", "include_deleted"],
        {"200": "StoredBudgetList"},
    ),
    ("post", "/usage/budgets/managed"): (["namespace"], {"201": "BudgetOut"}),
    ("get", "/usage/budgets/managed/status"): (["namespace"], {"200": "StatusSummary"}),
    ("get", "/usage/budgets/managed/{name}"): (["name", "namespace"], {"200": "BudgetOut"}),
    ("put", "/usage/budgets/managed/{name}"): (["name", "namespace"], {"200": "BudgetOut"}),
    ("delete", "/usage/budgets/managed/{name}"): (["name", "namespace"], {"200": "BudgetOut"}),
    ("post", "/usage/budgets/managed/{name}/reset"): (
        ["name", "namespace"],
        {"200": "BudgetOut"},
    ),
    ("get", "/usage/budgets/managed/{name}/status"): (
        ["name", "namespace"],
        {"200": "OneBudgetStatus"},
    ),
    ("get", "/usage/budgets/managed/{name}/history"): (
        ["name", "days", "namespace"],
        {"200": "BudgetHistory"},
    ),
}
EVENT_FIELDS = {
    "agent_id", "consumer_id", "task_id", "namespace", "action", "model", "tokens_in",
    "tokens_out", "cache_read_tokens", "cache_write_tokens", "duration_ms", "api_calls",
    "units", "cost", "timestamp", "request_id", "source", "metadata", "artifact_digest",
}  # fmt: skip
COUNT_FIELDS = [
    "tokens_in",
    "tokens_out",
    "cache_read_tokens",
    "cache_write_tokens",
    "duration_ms",
    "api_calls",
    "units",
]


@pytest.fixture(scope="module")
def openapi(store: uw.AsyncSQLiteStore) -> dict[str, Any]:
    """The schema as served at /openapi.json by an app with non-default bounds."""
    app = make_app(store, max_page=50, max_export_rows=500)
    with TestClient(app) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    return schema


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def request_schema(openapi: dict[str, Any], path: str) -> dict[str, Any]:
    request_body = openapi["paths"][path]["post"]["requestBody"]
    assert request_body["required"] is True
    assert list(request_body["content"]) == ["application/json"]
    schema: dict[str, Any] = request_body["content"]["application/json"]["schema"]
    return schema


def test_the_schema_has_exactly_the_documented_operations(openapi: dict[str, Any]) -> None:
    found = {(method, path) for path, ops in openapi["paths"].items() for method in ops}
    assert found == set(OPERATIONS)
    listed = {(m.lower(), p.split("?")[0]) for m, p, *_ in ENDPOINTS}
    assert listed | EVENT_OPERATIONS | BUDGET_OPERATIONS == set(OPERATIONS)


@pytest.mark.parametrize(
    ("method", "path"), list(OPERATIONS), ids=[f"{m} {p}" for m, p in OPERATIONS]
)
def test_every_operation_is_fully_described(
    openapi: dict[str, Any], method: str, path: str
) -> None:
    operation = openapi["paths"][path][method]
    expected_params, successes = OPERATIONS[(method, path)]
    parameters = {p["name"]: p for p in operation.get("parameters", [])}
    assert set(parameters) == set(expected_params)
    path_params = {"request_id", "name"}
    assert all(p["in"] == "query" for p in parameters.values() if p["name"] not in path_params)
    assert operation["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}]

    responses = operation["responses"]
    for status, model in successes.items():
        content = responses[status]["content"]
        if isinstance(model, set):
            assert set(content) == model
        else:
            assert content == {"application/json": {"schema": ref(model)}}
    errors = {status for status in responses if status.startswith("4")}
    required = {"401", "403", "429"}
    if parameters:
        required.add("422")
    if method == "post" and path in BODY_POSTS:
        required |= {"400", "413"}
    if method == "post" and path in ("/usage", "/usage/batch"):
        required |= {"409", "422"}
    assert required <= errors, f"undocumented: {required - errors}"
    for status in errors:
        error_content = responses[status]["content"]
        assert error_content == {"application/json": {"schema": ref("ErrorResponse")}}


def test_parameters_carry_their_bounds(openapi: dict[str, Any]) -> None:
    def params(method: str, path: str) -> dict[str, Any]:
        return {p["name"]: p["schema"] for p in openapi["paths"][path][method]["parameters"]}

    listing = params("get", "/usage")
    assert (listing["limit"]["minimum"], listing["limit"]["maximum"]) == (1, 50)
    assert listing["cursor"]["anyOf"][0]["maxLength"] == 128
    for bound in ("start", "end"):
        assert listing[bound]["anyOf"][0] == {"type": "string", "format": "date-time"}
    export = params("get", "/usage/export")
    assert export["limit"]["anyOf"][0]["maximum"] == 500
    assert set(export["format"]["enum"]) == {"csv", "json", "ndjson"}
    group_by = params("get", "/usage/aggregate")["group_by"]
    assert set(group_by["enum"]) == {
        "agent", "consumer", "model", "action", "namespace", "hour", "day", "week", "month"
    }  # fmt: skip


def test_the_posts_describe_their_bodies(openapi: dict[str, Any]) -> None:
    one = request_schema(openapi, "/usage")
    batch = request_schema(openapi, "/usage/batch")
    either = request_schema(openapi, "/usage/validate")["anyOf"]
    assert (batch["type"], batch["minItems"], batch["maxItems"]) == ("array", 1, 1000)
    assert [s.get("type") for s in either] == ["object", "array"]
    for event_schema in (one, batch["items"], either[0], either[1]["items"]):
        assert event_schema["type"] == "object"
        assert event_schema["additionalProperties"] is False
        assert set(event_schema["required"]) == {"agent_id", "consumer_id"}
        assert set(event_schema["properties"]) == EVENT_FIELDS
    assert "requestBody" not in openapi["paths"]["/usage/purge"]["post"]


def test_every_body_schema_bounds_counts_as_the_server_does(openapi: dict[str, Any]) -> None:
    """The server takes counts up to 2**63 - 1 and refuses 2**63 (422): the
    schema says so exactly (an exclusive bound of 2**63, which even a float
    holds exactly, or an inclusive one of 2**63 - 1 as an integer)."""
    batch = request_schema(openapi, "/usage/batch")
    either = request_schema(openapi, "/usage/validate")["anyOf"]
    schemas = {
        "POST /usage": request_schema(openapi, "/usage"),
        "POST /usage/batch items": batch["items"],
        "POST /usage/validate anyOf[0]": either[0],
        "POST /usage/validate anyOf[1] items": either[1]["items"],
    }

    def exact(bounds: dict[str, Any]) -> bool:
        if "exclusiveMaximum" in bounds:
            return int(bounds["exclusiveMaximum"]) == 2**63 and "maximum" not in bounds
        return bounds.get("maximum") == 2**63 - 1 and isinstance(bounds["maximum"], int)

    wrong = {
        f"{where}: {name}": schema["properties"][name]
        for where, schema in schemas.items()
        for name in COUNT_FIELDS
        if not exact(schema["properties"][name])
    }
    assert not wrong, f"documented bound is not exactly 2**63 - 1: {wrong}"


def test_the_error_model_is_in_the_schema(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    assert schemas["ErrorResponse"]["properties"]["detail"] == ref("ErrorDetail")
    detail = schemas["ErrorDetail"]
    assert set(detail["required"]) == {"code", "message"}
    assert detail["additionalProperties"] is True
    assert set(schemas["FieldError"]["required"]) == {"loc", "msg", "type"}


# --- one validator --------------------------------------------------------------

#: Edge cases of every field: (what is being tried, fields over a minimal event).
EDGE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("minimal", {}),
    ("every field", payload(0, task_id="t", source="s", units=3, metadata={"k": "v"})),
    ("largest count", {"tokens_in": 2**63 - 1}),
    ("count over 2**63 - 1", {"tokens_in": 2**63}),
    ("float count", {"tokens_out": 1.0}),
    ("bool count", {"api_calls": True}),
    ("zero cost", {"cost": 0}),
    ("tiny cost", {"cost": 1e-12}),
    ("largest cost", {"cost": 9223372036.0}),
    ("cost too large", {"cost": 9223372037.0}),
    ("negative cost", {"cost": -0.5}),
    ("256-character id", {"agent_id": "é" * 256}),
    ("257-character id", {"agent_id": "x" * 257}),
    ("astral id", {"consumer_id": "😀" * 256}),
    ("64-character action", {"action": "a" * 64}),
    ("65-character action", {"action": "a" * 65}),
    ("empty task", {"task_id": ""}),
    ("null optionals", {"task_id": None, "model": None, "namespace": None, "metadata": None}),
    ("microseconds", {"timestamp": "2026-02-14T12:00:00.123456+05:30"}),
    ("nanoseconds", {"timestamp": "2026-02-14T12:00:00.123456789Z"}),
    ("lowercase z", {"timestamp": "2026-02-14T12:00:00z"}),
    ("minus zero offset", {"timestamp": "2026-02-14T12:00:00-00:00"}),
    ("leap second", {"timestamp": "2016-12-31T23:59:60Z"}),
    ("year 0", {"timestamp": "0000-06-01T00:00:00Z"}),
    ("year 1", {"timestamp": "0001-01-01T00:00:00Z"}),
    ("space separator", {"timestamp": "2026-02-14 12:00:00Z"}),
    ("no seconds", {"timestamp": "2026-02-14T12:00Z"}),
    ("metadata numbers", {"metadata": {"f": 0.1, "e": 1e-07, "big": 10**30, "neg": -0.0}}),
    ("metadata nesting", {"metadata": {"a": [1, {"b": None}], "s": "é\n\u2028"}}),
    ("metadata secret", {"metadata": {"api_key": "sk-123", "nested": {"password": "p"}}}),
    ("metadata array", {"metadata": [1]}),
    ("artifact digest", {"artifact_digest": "3f" * 32}),
    ("artifact digest, 32 digits", {"artifact_digest": "0a" * 16}),
    ("artifact digest, uppercase", {"artifact_digest": "3F" * 32}),
    ("artifact digest, odd length", {"artifact_digest": "a" * 33}),
    ("artifact digest, too long", {"artifact_digest": "ab" * 65}),
]


def edge_body(i: int, fields: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agent_id": "edge",
        "consumer_id": "c",
        "timestamp": T0.isoformat(),
        "request_id": f"edge-{i}",
    }
    body.update(fields)
    return body


def with_a_repeated_key(body: dict[str, Any]) -> bytes:
    """The same JSON object with ``consumer_id`` given twice (same value): the
    Rust fast path declines repeated keys, so this takes the model path."""
    text = json.dumps(body)
    assert text.startswith("{")
    return ('{"consumer_id": ' + json.dumps(body["consumer_id"]) + ", " + text[1:]).encode()


async def test_recording_accepts_exactly_what_validate_accepts(
    client: httpx.AsyncClient, store: uw.AsyncSQLiteStore, a: Team
) -> None:
    """Well-formed bodies may be read by a faster path than the request
    models; it must accept exactly what they accept (as /validate reports),
    and read the same event from the same content: a retry that happens to
    take the other path is a duplicate (200), not a conflict (409)."""
    json_headers = {**a.headers, "Content-Type": "application/json"}
    disagreements: list[str] = []
    for i, (name, fields) in enumerate(EDGE_CASES):
        body = edge_body(i, fields)
        verdict = await client.post("/usage/validate", json=body, headers=a.headers)
        valid = verdict.json()["valid"]
        recorded = await client.post("/usage", json=body, headers=a.headers)
        if valid != (recorded.status_code == 201):
            disagreements.append(
                f"{name}: /validate says valid={valid}, POST answers {recorded.status_code} "
                f"{recorded.text[:160]}"
            )
            continue
        if not valid:
            assert recorded.status_code in (400, 422), (name, recorded.text)
            continue
        retry = await client.post("/usage", content=with_a_repeated_key(body), headers=json_headers)
        if retry.status_code != 200:
            disagreements.append(
                f"{name}: the same event read by the model path answers {retry.status_code} "
                f"{retry.text[:160]}"
            )
        batch = [edge_body(i, fields)]
        batch[0]["request_id"] = f"edge-batch-{i}"
        in_batch = await client.post("/usage/batch", json=batch, headers=a.headers)
        if in_batch.status_code != 201:
            disagreements.append(f"{name}: valid, but /batch answers {in_batch.status_code}")
    assert not disagreements, "\n".join(disagreements)


# --- what an accepted event must allow afterwards ----------------------------


async def test_every_accepted_timestamp_reads_back_as_a_valid_event(
    client: httpx.AsyncClient, a: Team
) -> None:
    """Aware times whose UTC instant falls outside years 1-9999: the API must
    refuse them (422) or list them as the documented EventOut."""
    problems: list[str] = []
    for i, stamp in enumerate(["0001-01-01T00:00:00+12:00", "9999-12-31T23:59:59-12:00"]):
        posted = await client.post("/usage", json=payload(i, timestamp=stamp), headers=a.headers)
        if posted.status_code == 422:
            continue
        assert posted.status_code == 201, posted.text
        listed = await client.get("/usage", params={"agent_id": f"agent-{i}"}, headers=a.headers)
        try:
            EventPage.model_validate(listed.json())
        except ValueError as exc:
            timestamps = [e["timestamp"] for e in listed.json()["events"]]
            problems.append(f"{stamp}: accepted (201), then listed as {timestamps}: {exc}")
    assert not problems, "\n".join(problems)


GROUP_BYS = ["agent", "consumer", "model", "action", "namespace", "hour", "day", "week", "month"]


async def test_totals_stay_answerable_for_accepted_events(
    own_store: uw.AsyncSQLiteStore, a: Team
) -> None:
    """Each count may be up to 2**63 - 1 (the documented maximum); two such
    events in one group must not leave its totals failing for good: totals
    saturate at that same maximum, the same way on every path."""
    most = 2**63 - 1
    async with serve(make_app(own_store)) as client:
        big = [payload(i, agent_id="a", consumer_id="c", tokens_in=most) for i in range(2)]
        assert (await client.post("/usage/batch", json=big, headers=a.headers)).status_code == 201
        answers: dict[str, Any] = {}
        summary = await client.get("/usage/summary", headers=a.headers)
        answers["summary"] = summary.status_code, summary.json().get("tokens_in")
        for group_by in GROUP_BYS:
            response = await client.get(
                "/usage/aggregate", params={"group_by": group_by}, headers=a.headers
            )
            groups = response.json().get("groups", [{}])
            answers[group_by] = response.status_code, groups[0].get("tokens_in")
        stats = await client.get("/usage/stats", headers=a.headers)
        answers["stats"] = stats.status_code, stats.json().get("events")
    expected = {"summary": (200, most), **dict.fromkeys(GROUP_BYS, (200, most))}
    assert answers == {**expected, "stats": (200, 2)}


async def test_export_from_a_failed_store_is_503_like_every_read(
    own_store: uw.AsyncSQLiteStore, a: Team
) -> None:
    await own_store.record_batch(events(3, namespace=a.namespace))
    async with serve(make_app(own_store), raise_app_exceptions=False) as client:
        await own_store.close()
        refused(await client.get("/usage/summary", headers=a.headers), 503, "store_unavailable")
        export = await client.get("/usage/export", headers=a.headers)
        refused(export, 503, "store_unavailable")
