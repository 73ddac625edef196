"""The usage API over real HTTP: a uvicorn server on 127.0.0.1 running an app
built as examples/fastapi_app.py builds one (API keys, rate limiting, request
metering, the store's lifespan) plus the usage router."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

import usagewarden as uw  # noqa: E402
from conftest import GRACE, wait_until  # noqa: E402
from fastapi import Depends, FastAPI, Request  # noqa: E402
from ledger_helpers import T0, all_bytes, db_files  # noqa: E402
from usagewarden.fastapi import (  # noqa: E402
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    MeteringMiddleware,
    Principal,
    RateLimitMiddleware,
    api_key_auth,
    store_lifespan,
    usage_router,
)

#: The API key, sent as a bearer token: it must never reach the database.
API_KEY = "sk-e2e-bearer-7f3a9c1e5b2d4f60"
WRONG_KEY = "sk-e2e-wrong-key-3e8d1b6a9c4f72"
QUERY_SECRET = "sk-e2e-query-0b8e6d2c4a1f3957"
BODY_SECRET = "body-marker-5c1e9a7f3d2b8e64"
PATH_MARKER = "raw-path-segment-9d4b2f7a"
NAMESPACE = "team-e2e"
MAX_BODY = 64 * 1024


def tenant(request: Request) -> str:
    """The rate-limit and metering key: the tenant header, else the client address."""
    return request.headers.get("x-tenant") or (request.client.host if request.client else "-")


def create_app(db_path: Path) -> FastAPI:
    store = uw.AsyncSQLiteStore(db_path)
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=1000))
    scopes = frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN})
    auth = api_key_auth({API_KEY: Principal("e2e", NAMESPACE, scopes)})

    app = FastAPI(title="usagewarden e2e", lifespan=store_lifespan(store))
    app.state.store = store
    app.include_router(usage_router(store, auth=auth, max_body_bytes=MAX_BODY))

    @app.get("/items/{item_id}")
    async def item(item_id: str, principal: Principal = Depends(auth)) -> dict[str, object]:  # noqa: B008
        return {"item": item_id, "for": principal.id}

    @app.post("/items/{item_id}")
    async def update(
        item_id: str,
        request: Request,
        principal: Principal = Depends(auth),  # noqa: B008
    ) -> dict[str, object]:
        return {"item": item_id, "fields": len(await request.json())}

    app.add_middleware(RateLimitMiddleware, limiter=limiter, key_func=tenant)
    app.add_middleware(
        MeteringMiddleware,
        store=store,
        agent_id="e2e-api",
        consumer_func=tenant,
        namespace="metering",
    )
    return app


@dataclass
class Running:
    base_url: str
    db_path: Path
    store: uw.AsyncSQLiteStore
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Shuts the server down, its lifespan (and the store) included."""
        self.server.should_exit = True
        self.thread.join(GRACE)
        assert not self.thread.is_alive(), "the server did not stop"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    db_path = tmp_path / "e2e.db"
    app = create_app(db_path)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # a free port, held until the server listens on it
    host, port = sock.getsockname()
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive())
        assert server.started, "the server did not start"
        served = Running(f"http://{host}:{port}", db_path, app.state.store, server, thread)
        yield served
    finally:
        server.should_exit = True
        thread.join(GRACE)
        sock.close()


def client(running: Running, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=running.base_url, headers=headers, timeout=GRACE)


BEARER = {"Authorization": f"Bearer {API_KEY}", "X-Tenant": "acme"}


def payload(i: int) -> dict[str, Any]:
    return {
        "agent_id": f"agent-{i % 2}",
        "consumer_id": "acme",
        "model": "gpt-4o",
        "tokens_in": 100 + i,
        "tokens_out": 10 + i,
        "cost": (i + 1) / 100,
        "timestamp": (T0 + dt.timedelta(seconds=i)).isoformat(),
        "request_id": f"e2e-{i}",
        "metadata": {"run": i},
    }


def test_record_list_summarise_and_export_over_http(running: Running) -> None:
    with client(running, **BEARER) as http:
        batch = [payload(i) for i in range(3)]
        recorded = http.post("/usage/batch", json=batch)
        assert recorded.status_code == 201, recorded.text
        assert recorded.json() == {"received": 3, "inserted": 3, "duplicates": 0}
        assert recorded.headers["ratelimit-limit"] == "1000", "the app's middleware ran"
        retried = http.post("/usage/batch", json=batch)
        assert retried.status_code == 200
        assert http.post("/usage", json=payload(3)).status_code == 201

        listed = http.get("/usage", params={"limit": 2})
        assert listed.status_code == 200
        page = listed.json()
        assert [e["request_id"] for e in page["events"]] == ["e2e-0", "e2e-1"]
        rest = http.get("/usage", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        assert [e["request_id"] for e in rest["events"]] == ["e2e-2", "e2e-3"]
        assert rest["next_cursor"] is None
        assert {e["namespace"] for e in page["events"] + rest["events"]} == {NAMESPACE}

        summary = http.get("/usage/summary").json()
        assert summary["events"] == 4
        assert summary["tokens_in"] == 100 + 101 + 102 + 103
        assert summary["cost"] == pytest.approx(0.10)
        by_agent = http.get("/usage/aggregate", params={"group_by": "agent"}).json()
        assert {g["group"]: g["events"] for g in by_agent["groups"]} == {"agent-0": 2, "agent-1": 2}

        with http.stream("GET", "/usage/export", params={"format": "csv"}) as export:
            assert export.status_code == 200
            assert export.headers["content-type"].startswith("text/csv")
            assert f"usage-{NAMESPACE}-" in export.headers["content-disposition"]
            text = "".join(export.iter_text())
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        assert [r["request_id"] for r in rows] == ["e2e-0", "e2e-1", "e2e-2", "e2e-3"]
        assert [json.loads(r["metadata"]) for r in rows] == [{"run": i} for i in range(4)]
        ndjson = http.get("/usage/export", params={"format": "ndjson"}).text.splitlines()
        assert [json.loads(line)["tokens_out"] for line in ndjson] == [10, 11, 12, 13]

        metering = http.get("/usage", params={"namespace": "metering"})
        assert metering.status_code == 403, "the metering namespace is not this key's"
    with client(running) as anonymous:
        assert anonymous.get("/usage/summary").status_code == 401


def test_body_limits_hold_over_the_wire(running: Running) -> None:
    too_big = json.dumps([payload(0)]).encode().ljust(MAX_BODY + 1)

    def chunks() -> Iterator[bytes]:
        for at in range(0, len(too_big), 8192):
            yield too_big[at : at + 8192]

    with client(running, **BEARER, **{"Content-Type": "application/json"}) as http:
        declared = http.post("/usage/batch", content=too_big)
        assert declared.status_code == 413
        assert declared.json()["detail"]["code"] == "body_too_large"
        streamed = http.post("/usage/batch", content=chunks())
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413
        malformed = http.post("/usage", content=b'{"agent_id": ')
        assert malformed.status_code == 400
        assert http.get("/usage/stats").json()["events"] == 0


def test_secrets_never_reach_the_database(running: Running) -> None:
    secret = {"api_key": QUERY_SECRET}
    with client(running, **BEARER) as http:
        assert http.get(f"/items/{PATH_MARKER}", params=secret).status_code == 200
        posted = http.post(f"/items/{PATH_MARKER}", params=secret, json={"note": BODY_SECRET})
        assert posted.status_code == 200
        assert http.get("/usage/summary", params=secret).status_code == 200
        check = http.post(
            "/usage/validate",
            params=secret,
            json={"agent_id": "a", "consumer_id": "c", "metadata": {"note": BODY_SECRET}},
        )
        assert check.json() == {"valid": True, "errors": []}
        refused = http.get(
            f"/items/{PATH_MARKER}",
            params=secret,
            headers={"Authorization": f"Bearer {WRONG_KEY}", "Cookie": f"session={WRONG_KEY}"},
        )
        assert refused.status_code == 401
    running.stop()
    assert running.store.closed, "the lifespan closed the store"

    raw = all_bytes(running.db_path)
    assert raw, [p.name for p in db_files(running.db_path)]
    for needle in (API_KEY, WRONG_KEY, QUERY_SECRET, BODY_SECRET, PATH_MARKER):
        assert needle.encode() not in raw, f"{needle} reached the database"
    assert b"/items/{item_id}" in raw, "the bytes read are the ledger's"

    with uw.SQLiteStore(running.db_path) as ledger:
        metered = ledger.query(namespace="metering")
        assert all(e.consumer_id == "acme" for e in metered)
        assert all((e.agent_id, e.action) == ("e2e-api", "http.request") for e in metered)
        seen = sorted(
            (str(e.metadata["method"]), str(e.metadata["route"]), int(e.metadata["status"]))
            for e in metered
            if e.metadata is not None
        )
        assert seen == sorted(
            [
                ("GET", "/items/{item_id}", 200),
                ("POST", "/items/{item_id}", 200),
                ("GET", "/usage/summary", 200),
                ("POST", "/usage/validate", 200),
                ("GET", "/items/{item_id}", 401),
            ]
        )
        assert ledger.query(namespace=NAMESPACE) == [], "validation recorded nothing"
