"""HTTP edges of the usage API and the middlewares: a failing store answers
503 with Retry-After in bounded time; refusals carry Retry-After."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import usagewarden as uw
from fastapi import FastAPI
from fault_helpers import fill, small_disk_at
from ledger_helpers import run_python
from usagewarden.fastapi import Principal, api_key_auth, usage_router

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
        "admin-of-team-a-000": Principal("adm", "team-a", {SCOPE_READ, SCOPE_ADMIN}),
        "operator-000000000": Principal("ops", "team-a", {SCOPE_READ, SCOPE_ALL_NAMESPACES}),
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
