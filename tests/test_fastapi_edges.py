"""HTTP edges of the usage API and the middlewares: a failing store answers
503 with Retry-After in bounded time; refusals carry Retry-After."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import usagewarden as uw
from fastapi import Depends, FastAPI, Request
from fault_helpers import fill, small_disk_at
from http_helpers import serving
from ledger_helpers import run_python
from usagewarden.fastapi import (
    MeteringMiddleware,
    Principal,
    RateLimitMiddleware,
    api_key_auth,
    rate_limit,
    rate_limit_headers,
    usage_router,
)

KEY = "edge-key-0123456789abcdef"
ADMIN = Principal(
    "edge", namespace="edge", scopes=frozenset({"usage:read", "usage:write", "usage:admin"})
)
HEADERS = {"Authorization": f"Bearer {KEY}"}
#: Far more than the router's 2 s write timeout: only keeps a hang from stalling the suite.
GUARD = 20.0


def app_for(store: uw.AsyncSQLiteStore, **options: Any) -> FastAPI:
    app = FastAPI()
    app.include_router(usage_router(store, auth=api_key_auth({KEY: ADMIN}), **options))
    return app


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def body(i: int) -> dict[str, Any]:
    return {
        "agent_id": "a",
        "consumer_id": "c",
        "request_id": f"r{i}",
        "metadata": {"pad": "x" * 400},
    }


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["detail"]["code"] == "store_unavailable"
    assert int(response.headers["Retry-After"]) >= 1


async def test_writes_answer_503_with_retry_after_on_a_full_disk(tmp_path: Path) -> None:
    with small_disk_at(tmp_path) as disk:
        store = uw.AsyncSQLiteStore(disk / "full.db", retention_seconds=60)
        async with client_for(app_for(store)) as client:
            assert (await client.post("/usage", json=body(0), headers=HEADERS)).status_code == 201
            filler = fill(disk)
            blocking = store.blocking()
            for i in range(1, 20_000):
                blocking.record(
                    uw.UsageEvent("a", "c", request_id=f"q{i}", metadata={"pad": "x" * 400})
                )
            for request in (
                client.post("/usage", json=body(1), headers=HEADERS),
                client.post("/usage/batch", json=[body(2), body(3)], headers=HEADERS),
                client.post("/usage/purge", headers=HEADERS),
            ):
                assert_unavailable(await asyncio.wait_for(request, GUARD))
        filler.unlink()
        await store.close(timeout=60)


async def test_writes_answer_503_at_once_when_the_store_stopped(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    store = uw.AsyncSQLiteStore(path, retention_seconds=60)
    async with client_for(app_for(store)) as client:
        assert (await client.post("/usage", json=body(0), headers=HEADERS)).status_code == 201
        run_python(
            "import sqlite3\nsqlite3.connect(sys.argv[1]).execute('DROP TABLE usage_hourly')",
            path,
        )
        for request in (
            client.post("/usage", json=body(1), headers=HEADERS),
            client.post("/usage/batch", json=[body(2)], headers=HEADERS),
            client.post("/usage/purge", headers=HEADERS),
        ):
            assert_unavailable(await asyncio.wait_for(request, GUARD))
    await store.close()


async def test_budgets_and_store_health_stay_in_the_namespace_without_the_wide_scope(
    tmp_path: Path,
) -> None:
    from usagewarden.fastapi import SCOPE_ADMIN, SCOPE_ALL_NAMESPACES, SCOPE_READ

    store = uw.AsyncSQLiteStore(tmp_path / "budgets.db")
    engine = uw.BudgetEngine(
        [
            uw.Budget("org", 100.0),
            uw.Budget("per-agent", 50.0, scope="agent", match="bot-of-team-b"),
            uw.Budget("a", 10.0, scope="namespace", match="team-a"),
            uw.Budget("b", 10.0, scope="namespace", match="team-b"),
        ],
        store,
    )
    engine.settle(engine.check(namespace="team-b", agent_id="bot-of-team-b", estimated_cost=1.0), 3)
    engine.settle(engine.check(namespace="team-a", agent_id="bot-of-team-a", estimated_cost=1.0), 1)
    keys = {
        "admin-of-team-a-000": Principal("adm", "team-a", frozenset({SCOPE_READ, SCOPE_ADMIN})),
        "operator-000000000": Principal(
            "ops", "team-a", frozenset({SCOPE_READ, SCOPE_ALL_NAMESPACES})
        ),
    }
    app = FastAPI()
    app.include_router(usage_router(store, auth=api_key_auth(keys), budgets=engine))
    async with client_for(app) as client:
        answers = {}
        for key in keys:
            headers = {"X-API-Key": key}
            budgets = (await client.get("/usage/budgets", headers=headers)).json()["budgets"]
            stats = (await client.get("/usage/stats", headers=headers)).json()["store"]
            answers[key] = ([b["budget"] for b in budgets], stats)
    admin_budgets, admin_store = answers["admin-of-team-a-000"]
    assert admin_budgets == ["a"], "no global, per-agent or other namespace's budget"
    assert "bot-of-team-b" not in json.dumps(answers["admin-of-team-a-000"])
    assert (admin_store["queued"], admin_store["write_errors"], admin_store["size_bytes"]) == (
        None,
        None,
        None,
    )
    wide_budgets, wide_store = answers["operator-000000000"]
    assert wide_budgets == ["org", "per-agent", "a", "b"]
    assert wide_store["size_bytes"] > 0 and wide_store["queued"] == 0
    await store.close()


def disconnect_mid_body(host: str, port: int, path: str) -> None:
    """Announces a 1,000-byte body, sends 10 bytes and hangs up."""
    with socket.create_connection((host, port), timeout=GUARD) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            '{"agent_i'.encode()
        )


def metered_app(store: uw.AsyncSQLiteStore, meter: uw.SQLiteStore) -> FastAPI:
    app = app_for(store)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    app.add_middleware(MeteringMiddleware, store=meter, agent_id="api")
    return app


def test_a_client_hanging_up_mid_body_ends_quietly_and_is_metered_499(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    store = uw.AsyncSQLiteStore(tmp_path / "usage.db")
    meter = uw.SQLiteStore(tmp_path / "meter.db")
    with serving(metered_app(store, meter)) as (host, port):
        for path in ("/usage", "/usage/batch", "/echo"):
            disconnect_mid_body(host, port, path)
        deadline = time.monotonic() + GUARD
        while meter.stats().events + meter.stats().queued < 3:
            assert time.monotonic() < deadline, "the requests were never metered"
            time.sleep(0.01)
    meter.flush()
    statuses = sorted(
        (e.metadata or {})["route"] + f" {(e.metadata or {})['status']}" for e in meter.query()
    )
    assert statuses == ["/echo 499", "/usage 499", "/usage/batch 499"]
    assert store.blocking().stats().events == 0, "nothing half-read was recorded"
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]
    meter.close()
    store.blocking().close()


def limited_app(middleware_limits: uw.RateLimits, route_limits: uw.RateLimits) -> FastAPI:
    clock = uw.ManualClock()
    app = FastAPI()
    route_limiter = uw.RateLimiter(route_limits, clock=clock)

    @app.get("/limited", dependencies=[Depends(rate_limit(route_limiter))])
    async def limited() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(RateLimitMiddleware, limiter=uw.RateLimiter(middleware_limits, clock=clock))
    return app


LEGACY = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "x-ratelimit-limit")
DRAFT = ("ratelimit-policy", "ratelimit")


def one_set(response: httpx.Response) -> dict[str, str]:
    for name in (*LEGACY, *DRAFT):
        assert len(response.headers.get_list(name)) == 1, (name, response.headers.raw)
    return {name: response.headers[name] for name in (*LEGACY, *DRAFT)}


async def test_the_route_limit_binds_when_it_has_less_left_and_when_it_refuses() -> None:
    app = limited_app(uw.RateLimits(requests_per_minute=120), uw.RateLimits(requests_per_minute=10))
    async with client_for(app) as client:
        answers = [await client.get("/limited") for _ in range(11)]
    assert [r.status_code for r in answers] == [200] * 10 + [429]
    first, refused = one_set(answers[0]), one_set(answers[10])
    assert (first["ratelimit-limit"], first["ratelimit-remaining"]) == ("10", "9")
    assert first["ratelimit-policy"] == '"requests_per_minute";q=10;w=60'
    assert first["ratelimit"] == '"requests_per_minute";r=9;t=60'
    assert (refused["ratelimit-limit"], refused["ratelimit-remaining"]) == ("10", "0")
    assert refused["ratelimit"] == '"requests_per_minute";r=0;t=60'
    assert answers[10].headers["retry-after"] == "60"


async def test_the_middleware_limit_binds_when_it_has_less_left_and_when_it_refuses() -> None:
    app = limited_app(uw.RateLimits(requests_per_minute=2), uw.RateLimits(requests_per_minute=10))
    async with client_for(app) as client:
        answers = [await client.get("/limited") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert [one_set(r)["ratelimit-limit"] for r in answers] == ["2", "2", "2"]
    assert one_set(answers[1])["ratelimit"] == '"requests_per_minute";r=0;t=60'
    assert answers[2].headers["retry-after"] == "60"


def test_token_limits_name_their_quota_unit() -> None:
    limiter = uw.RateLimiter(uw.RateLimits(total_tokens_per_minute=1000), clock=uw.ManualClock())
    headers = rate_limit_headers(limiter.try_acquire("k", input_tokens=300, output_tokens=600))
    assert headers["RateLimit-Policy"] == '"total_tokens_per_minute";q=1000;w=60;qu="tokens"'
    assert headers["RateLimit"] == '"total_tokens_per_minute";r=100;t=60'
    cost = uw.RateLimiter(uw.RateLimits(cost_per_hour=2.5), clock=uw.ManualClock())
    headers = rate_limit_headers(cost.try_acquire("k", cost=0.5))
    assert headers["RateLimit-Policy"] == '"cost_per_hour";q=2500000;w=3600;qu="usd-micros"'
    assert headers["RateLimit"] == '"cost_per_hour";r=2000000;t=3600'


async def test_the_routers_own_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    store = uw.AsyncSQLiteStore(tmp_path / "limited.db")
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=1), clock=uw.ManualClock())
    async with client_for(app_for(store, rate_limiter=limiter)) as client:
        assert (await client.get("/usage/stats", headers=HEADERS)).status_code == 200
        refused = await client.get("/usage/stats", headers=HEADERS)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "60"
    assert one_set(refused)["ratelimit-limit"] == "1"
    await store.close()
