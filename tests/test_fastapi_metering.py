"""Request metering (usagewarden.fastapi.MeteringMiddleware)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import usagewarden as uw  # noqa: E402
from fastapi import FastAPI, HTTPException, Request  # noqa: E402
from usagewarden.fastapi import MeteringMiddleware  # noqa: E402

SECRET = "sk-live-0123456789abcdefghijklmn"


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.get("/boom")
    async def boom() -> None:
        raise HTTPException(503, "down")

    return app


def tenant(request: Request) -> str:
    return request.headers.get("x-tenant", "anonymous")


async def call(asgi: MeteringMiddleware, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers=headers)


@pytest.mark.parametrize("store_class", [uw.SQLiteStore, uw.AsyncSQLiteStore])
async def test_one_event_per_request_with_the_route_template(
    tmp_path: Path, store_class: type[uw.SQLiteStore] | type[uw.AsyncSQLiteStore]
) -> None:
    store = store_class(tmp_path / "meter.db")
    metered = MeteringMiddleware(make_app(), store, agent_id="api", consumer_func=tenant)
    assert (await call(metered, "/items/42?q=1", **{"x-tenant": "acme"})).status_code == 200
    assert (await call(metered, "/boom")).status_code == 503
    assert (await call(metered, "/nowhere/at/all")).status_code == 404
    await metered.drain()
    check = uw.SQLiteStore(tmp_path / "meter.db")
    if isinstance(store, uw.AsyncSQLiteStore):
        await store.close()
    else:
        store.close()
    events = check.query()
    assert [(e.consumer_id, e.metadata) for e in events] == [
        ("acme", {"method": "GET", "route": "/items/{item_id}", "status": 200}),
        ("anonymous", {"method": "GET", "route": "/boom", "status": 503}),
        ("anonymous", {"method": "GET", "route": "<unmatched>", "status": 404}),
    ]
    assert {(e.agent_id, e.action, e.api_calls, e.source) for e in events} == {
        ("api", "http.request", 1, "usagewarden.fastapi")
    }
    check.close()


async def test_headers_query_strings_and_bodies_never_reach_the_database(tmp_path: Path) -> None:
    path = tmp_path / "meter.db"
    store = uw.SQLiteStore(path)
    metered = MeteringMiddleware(make_app(), store, agent_id="api")
    response = await call(
        metered, f"/items/7?api_key={SECRET}", Authorization=f"Bearer {SECRET}", Cookie=SECRET
    )
    assert response.status_code == 200
    await metered.drain()
    store.close()
    for file in tmp_path.iterdir():
        assert SECRET.encode() not in file.read_bytes(), file.name
    assert uw.SQLiteStore(path).stats().events == 1


async def test_a_storage_failure_never_changes_the_response(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = uw.SQLiteStore(tmp_path / "meter.db")
    store.close()  # every record() now fails
    metered = MeteringMiddleware(make_app(), store, agent_id="api")
    with caplog.at_level(logging.ERROR, logger="usagewarden"):
        response = await call(metered, "/items/1")
        await metered.drain()
    assert response.status_code == 200
    assert response.json() == {"item": 1}
    assert "could not meter a request" in caplog.text


def test_bad_arguments_are_refused_when_the_app_is_built(tmp_path: Path) -> None:
    store = uw.SQLiteStore(tmp_path / "meter.db")
    with pytest.raises(TypeError, match="store"):
        MeteringMiddleware(make_app(), "db", agent_id="api")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="agent_id"):
        MeteringMiddleware(make_app(), store, agent_id="")
    with pytest.raises(ValueError, match="action"):
        MeteringMiddleware(make_app(), store, agent_id="api", action="HTTP REQUEST")
    with pytest.raises(TypeError, match="consumer_func"):
        MeteringMiddleware(make_app(), store, agent_id="api", consumer_func="x")  # type: ignore[arg-type]
    store.close()


async def test_the_lifespan_commits_and_closes_the_store(tmp_path: Path) -> None:
    from usagewarden.fastapi import store_lifespan

    store = uw.AsyncSQLiteStore(tmp_path / "life.db")
    app = FastAPI(lifespan=store_lifespan(store))
    async with app.router.lifespan_context(app):
        await store.record(uw.UsageEvent("api", "c"))
        assert not store.closed
    assert store.closed
    assert uw.SQLiteStore(tmp_path / "life.db").stats().events == 1
    with pytest.raises(TypeError, match="store"):
        store_lifespan("db")  # type: ignore[arg-type]


async def test_every_method_and_status_is_metered_as_sent_past_the_prototype_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client-chosen methods cannot grow the middleware without bound, and an
    event built from a kept prototype carries its own request's shape."""
    from fastapi import Response
    from usagewarden.fastapi import metering

    monkeypatch.setattr(metering, "MAX_SHAPES", 50)
    app = FastAPI()

    @app.api_route("/any/{code}", methods=[f"M{i}" for i in range(60)])
    async def anything(code: int) -> Response:
        return Response(status_code=code)

    store = uw.SQLiteStore(tmp_path / "meter.db")
    metered = MeteringMiddleware(app, store, agent_id="api", consumer_func=tenant)
    sent = []
    transport = httpx.ASGITransport(app=metered)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for i in range(60):
            for code in (200, 404, 418):
                method = f"M{i}"
                response = await client.request(
                    method, f"/any/{code}", headers={"x-tenant": f"t{i % 3}"}
                )
                sent.append((f"t{i % 3}", method, response.status_code))
    store.flush()
    assert len(metered._prototypes) == 50
    events = store.query()
    assert [(e.consumer_id, e.metadata["method"], e.metadata["status"]) for e in events] == sent
    assert len({e.request_id for e in events}) == len(sent)
    store.close()
