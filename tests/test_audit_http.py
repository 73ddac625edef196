"""The usage API's audit routes over real HTTP (uvicorn on 127.0.0.1):
receipts checked with hashlib alone, the chain head, and verification in
bounded, resumable requests that name a row altered with Python's sqlite3.

The routes reach the ledger through the store protocol only, and run here on
both stores. A store that keeps no chain answers 501 (``not_supported``):
the tests that run on every backend assert exactly that for a backend not
listed in ``CHAIN_BACKENDS``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import usagewarden as uw  # noqa: E402
from audit_helpers import tamper  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from http_helpers import locs, refused, serving  # noqa: E402
from ledger_helpers import LedgerBackend  # noqa: E402
from ledger_helpers import event_json as body  # noqa: E402
from usagewarden.fastapi import (  # noqa: E402
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    Principal,
    api_key_auth,
    usage_router,
)

#: Backends whose stores keep the hash chain; the others answer 501.
CHAIN_BACKENDS = {"sqlite", "postgres"}
NS = "team-audit"
OTHER_NS = "team-other"
GENESIS = "0" * 64
KEYS = {
    "admin": Principal("admin", NS, frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN})),
    "read": Principal("reader", NS, frozenset({SCOPE_READ})),
    "write": Principal("writer", NS, frozenset({SCOPE_WRITE})),
    "other": Principal("other", OTHER_NS, frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN})),
}
AUTH = api_key_auth({f"audit-key-{kind}-0123456789": p for kind, p in KEYS.items()})


def as_(kind: str) -> dict[str, str]:
    return {"Authorization": f"Bearer audit-key-{kind}-0123456789"}


@contextmanager
def api(store: uw.AsyncMeteringStore, **options: Any) -> Iterator[httpx.Client]:
    """The usage router on ``store``, served by uvicorn on a free loopback port."""
    app = FastAPI()
    app.include_router(usage_router(store, auth=AUTH, **options))
    with serving(app) as (host, port), httpx.Client(base_url=f"http://{host}:{port}") as client:
        yield client


@contextmanager
def ledger(backend: LedgerBackend, **options: Any) -> Iterator[httpx.Client]:
    """A store of ``backend`` behind the API; the store is closed afterwards."""
    store = backend.async_()
    try:
        with api(store, **options) as client:
            yield client
    finally:
        asyncio.run(close(store))


async def close(store: uw.AsyncMeteringStore) -> None:
    await store.close()


def record(client: httpx.Client, *events: dict[str, Any], kind: str = "admin") -> None:
    response = client.post("/usage/batch", json=list(events), headers=as_(kind))
    assert response.status_code == 201, response.text


def chained(backend: LedgerBackend, response: httpx.Response) -> bool:
    """Whether ``backend`` keeps the chain; when it does not, ``response``
    must be the 501 that says so."""
    if backend.name in CHAIN_BACKENDS:
        return True
    detail = refused(response, 501, "not_supported")
    assert "not supported by this backend" in detail["message"]
    return False


def receipt_path(request_id: str) -> str:
    return "/usage/receipts/" + quote(request_id, safe="")


def recomputed(receipt: dict[str, Any]) -> str:
    """What a client computes offline, with hashlib alone."""
    previous = bytes.fromhex(receipt["previous"])
    return hashlib.sha256(previous + receipt["payload"].encode("utf-8")).hexdigest()


def verify(client: httpx.Client, kind: str = "admin", **fields: Any) -> httpx.Response:
    return client.post("/usage/verify", json=fields, headers=as_(kind))


def walk(client: httpx.Client, **fields: Any) -> list[dict[str, Any]]:
    """Every response of a verification walked through ``next_start``, each
    request anchored on where the previous one ended."""
    reports: list[dict[str, Any]] = []
    start: int | None = fields.pop("start", None)
    anchors: list[dict[str, Any]] = []
    while True:
        response = verify(client, start=start, checkpoints=anchors, **fields)
        assert response.status_code == 200, response.text
        reports.append(response.json())
        start = reports[-1]["next_start"]
        if start is None:
            return reports
        assert len(reports) < 100, "the walk does not end"
        anchors = [reports[-1]["checkpoint"]]


# --- authentication and scopes --------------------------------------------------


def test_the_audit_routes_need_a_key_their_scope_and_the_namespace(tmp_path: Any) -> None:
    with ledger(LedgerBackend(tmp_path)) as client:
        record(client, body(0))
        record(client, body(1, request_id="theirs"), kind="other")
        routes = [
            ("GET", receipt_path("req-0"), None),
            ("GET", "/usage/checkpoint", None),
            ("POST", "/usage/verify", {}),
        ]
        for method, path, payload in routes:
            for headers in ({}, {"Authorization": "Bearer audit-key-nobody-0123456789"}):
                response = client.request(method, path, json=payload, headers=headers)
                refused(response, 401, "unauthenticated")
                assert response.headers["www-authenticate"] == "Bearer"
        for path in (receipt_path("req-0"), "/usage/checkpoint"):
            detail = refused(client.get(path, headers=as_("write")), 403, "missing_scope")
            assert detail["scope"] == SCOPE_READ
            assert client.get(path, headers=as_("read")).status_code == 200
            response = client.get(path, params={"namespace": OTHER_NS}, headers=as_("read"))
            refused(response, 403, "forbidden_namespace")
            own = client.get(path, params={"namespace": NS}, headers=as_("read"))
            assert own.status_code == 200, "naming one's own namespace is allowed"
        detail = refused(verify(client, "read"), 403, "missing_scope")
        assert detail["scope"] == SCOPE_ADMIN
        refused(verify(client, namespace=OTHER_NS), 403, "forbidden_namespace")
        assert verify(client).json()["ok"] is True

        # Another namespace's request id is not found in one's own.
        detail = refused(client.get(receipt_path("theirs"), headers=as_("read")), 404, "not_found")
        assert "theirs" in detail["message"] and NS in detail["message"]
        assert client.get(receipt_path("theirs"), headers=as_("other")).status_code == 200
        assert client.get(receipt_path("req-0"), headers=as_("other")).status_code == 404


def test_the_router_without_authentication_verifies_the_namespace_asked(tmp_path: Any) -> None:
    store = LedgerBackend(tmp_path).async_()
    app = FastAPI()
    app.include_router(usage_router(store, auth=None, allow_unauthenticated=True))
    try:
        with serving(app) as (host, port), httpx.Client(base_url=f"http://{host}:{port}") as c:
            assert c.post("/usage", json=body(0, namespace="x")).status_code == 201
            assert c.post("/usage", json=body(1)).status_code == 201
            assert c.get("/usage/checkpoint", params={"namespace": "x"}).json()["position"] == 1
            report = c.post("/usage/verify", json={"namespace": "x"}).json()
            assert (report["namespace"], report["rows"]) == ("x", 1)
            default = c.post("/usage/verify").json()
            assert (default["namespace"], default["rows"]) == ("default", 1)
            assert c.get(receipt_path("req-0"), params={"namespace": "x"}).status_code == 200
            assert c.get(receipt_path("req-0")).status_code == 404, "not in 'default'"
    finally:
        asyncio.run(close(store))


# --- receipts and checkpoints ----------------------------------------------------


def test_a_receipt_over_http_verifies_with_hashlib_alone(backend: LedgerBackend) -> None:
    ids = ["req-0", "order/7 é?#", "req-2", "req-3"]
    with ledger(backend) as client:
        record(client, *(body(i, request_id=rid) for i, rid in enumerate(ids)))
        previous = GENESIS
        for position, rid in enumerate(ids, start=1):
            response = client.get(receipt_path(rid), headers=as_("read"))
            if not chained(backend, response):
                return
            assert response.status_code == 200, response.text
            receipt = response.json()
            assert (receipt["request_id"], receipt["namespace"]) == (rid, NS)
            assert receipt["position"] == position
            assert receipt["previous"] == previous, "each receipt links to the one before"
            assert recomputed(receipt) == receipt["digest"]
            fields = json.loads(receipt["payload"])
            i = ids.index(rid)
            assert (fields["request_id"], fields["tokens_in"]) == (rid, 100 + i)
            assert fields["cost_nanos"] == (i + 1) * 1_000_000
            previous = receipt["digest"]
        head = client.get("/usage/checkpoint", headers=as_("read")).json()
        assert (head["position"], head["digest"]) == (len(ids), previous)


def test_a_receipt_needs_a_well_formed_id_that_exists(backend: LedgerBackend) -> None:
    with ledger(backend) as client:
        record(client, body(0))
        missing = client.get(receipt_path("req-404"), headers=as_("read"))
        if chained(backend, missing):
            assert "req-404" in refused(missing, 404, "not_found")["message"]
        for bad in ("r" * 257, "nul\x00byte"):
            detail = refused(
                client.get(receipt_path(bad), headers=as_("read")), 422, "invalid_request"
            )
            assert locs(detail) == [["path", "request_id"]]
        detail = refused(
            client.get(receipt_path("req-0"), params={"namespace": ""}, headers=as_("read")),
            422,
            "invalid_request",
        )
        assert locs(detail) == [["query", "namespace"]]


def test_the_checkpoint_is_the_stores_chain_head(backend: LedgerBackend) -> None:
    store = backend.async_()
    try:
        with api(store) as client:
            empty = client.get("/usage/checkpoint", headers=as_("read"))
            if not chained(backend, empty):
                return
            assert (empty.json()["position"], empty.json()["digest"]) == (0, GENESIS)
            record(client, *(body(i) for i in range(5)))
            record(client, body(9), kind="other")
            head = client.get("/usage/checkpoint", headers=as_("read")).json()
            stored = store.blocking().checkpoint(NS)
            assert head["namespace"] == NS
            assert (head["position"], head["digest"]) == (stored.position, stored.digest)
            assert head["position"] == 5
            assert dt.datetime.fromisoformat(head["time"]).tzinfo is not None
            assert uw.Checkpoint.from_dict(head).digest == stored.digest
            last = client.get(receipt_path("req-4"), headers=as_("read")).json()
            assert head["digest"] == last["digest"]
    finally:
        asyncio.run(close(store))


# --- verify -----------------------------------------------------------------------


def test_verify_passes_on_an_intact_ledger(backend: LedgerBackend) -> None:
    with ledger(backend) as client:
        record(client, *(body(i) for i in range(8)))
        record(client, body(0), kind="other")
        response = verify(client)
        if not chained(backend, response):
            return
        report = response.json()
        assert report["ok"] is True and report["problem"] is None
        assert (report["namespace"], report["start"], report["rows"]) == (NS, 1, 8)
        assert report["next_start"] is None
        head = client.get("/usage/checkpoint", headers=as_("read")).json()
        assert report["checkpoint"]["position"] == 8
        assert report["checkpoint"]["digest"] == head["digest"]
        # Anchored earlier, the head still checks out; the empty body is `{}`.
        anchored = verify(client, checkpoints=[head]).json()
        assert anchored["ok"] is True
        empty = client.post("/usage/verify", headers=as_("admin")).json()
        assert (empty["ok"], empty["rows"]) == (True, 8)


def test_verify_walks_a_large_ledger_in_several_requests(backend: LedgerBackend) -> None:
    with ledger(backend, max_verify_rows=4) as client:
        record(client, *(body(i) for i in range(10)))
        if not chained(backend, verify(client)):
            return
        reports = walk(client)
        assert [r["start"] for r in reports] == [1, 5, 9]
        assert [r["rows"] for r in reports] == [4, 4, 2]
        assert [r["next_start"] for r in reports] == [5, 9, None]
        assert all(r["ok"] for r in reports)
        assert [r["checkpoint"]["position"] for r in reports] == [4, 8, 10]
        head = client.get("/usage/checkpoint", headers=as_("read")).json()
        assert reports[-1]["checkpoint"]["digest"] == head["digest"]
        # A smaller bound per request, and a range that ends before the head.
        assert [r["rows"] for r in walk(client, max_rows=3, end=8)] == [3, 3, 2]
        assert [r["start"] for r in walk(client, start=6, max_rows=2)] == [6, 8, 10]
        detail = refused(verify(client, max_rows=5), 422, "invalid_request")
        assert locs(detail) == [["body", "max_rows"]]


def test_verify_names_a_row_whose_cost_was_changed_with_sqlite3(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = LedgerBackend(tmp_path)
    with ledger(backend) as client:
        record(client, *(body(i) for i in range(6)))
        record(client, body(3), kind="other")
        anchor = client.get("/usage/checkpoint", headers=as_("read")).json()
    changed = tamper(
        tmp_path / "ledger.db",
        "UPDATE usage_events SET cost_nanos = cost_nanos * 10 "
        "WHERE request_id = 'req-3' AND namespace = ?",
        NS,
    )
    assert changed == 1
    with ledger(backend, max_verify_rows=2) as client, caplog.at_level(logging.WARNING):
        reports = walk(client)
        assert [r["ok"] for r in reports] == [True, False]
        found = reports[-1]
        assert found["next_start"] is None, "a problem ends the walk"
        assert found["problem"]["kind"] == "altered"
        assert (found["problem"]["position"], found["problem"]["request_id"]) == (4, "req-3")
        assert found["problem"]["namespace"] == NS
        assert "req-3" in found["problem"]["message"]
        warned = [r.getMessage() for r in caplog.records if r.name == "usagewarden"]
        assert any("position 4" in m and "req-3" in m for m in warned), warned
        whole = verify(client, max_rows=1).json()
        assert whole["ok"] is True, "position 1 alone is intact"
        # The other namespace's req-3 is untouched.
        assert client.post("/usage/verify", json={}, headers=as_("other")).json()["ok"] is True
        # The altered row's receipt no longer adds up offline.
        receipt = client.get(receipt_path("req-3"), headers=as_("read")).json()
        assert recomputed(receipt) != receipt["digest"]
        assert json.loads(receipt["payload"])["cost_nanos"] == 40_000_000
        # Anchored before the edit: a range holding the row fails, while one
        # after it (seeded with the digest stored at 4) is intact.
        anchored = verify(client, start=3, checkpoints=[anchor]).json()
        assert (anchored["problem"]["position"], anchored["problem"]["request_id"]) == (4, "req-3")
        assert verify(client, start=5, checkpoints=[anchor]).json()["ok"] is True


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"start": 0}, ["body", "start"]),
        ({"end": 0}, ["body", "end"]),
        ({"start": "1"}, ["body", "start"]),
        ({"start": 3, "end": 2}, ["body", "end"]),
        ({"start": 99}, ["body", "start"]),
        ({"max_rows": 0}, ["body", "max_rows"]),
        ({"max_rows": 10**6}, ["body", "max_rows"]),
        ({"limit": 5}, ["body", "limit"]),
        (
            {"checkpoints": [{"position": 1, "digest": "AB" * 32}]},
            ["body", "checkpoints", 0, "digest"],
        ),
        ({"checkpoints": [{"digest": GENESIS}]}, ["body", "checkpoints", 0, "position"]),
        (
            {"checkpoints": [{"namespace": OTHER_NS, "position": 1, "digest": GENESIS}]},
            ["body", "checkpoints", 0, "namespace"],
        ),
    ],
)
def test_verify_refuses_bad_input_naming_the_field(
    tmp_path: Any, fields: dict[str, Any], loc: list[str | int]
) -> None:
    with ledger(LedgerBackend(tmp_path)) as client:
        record(client, *(body(i) for i in range(3)))
        detail = refused(verify(client, **fields), 422, "invalid_request")
        assert loc in locs(detail)


def test_verify_refuses_a_malformed_body(tmp_path: Any) -> None:
    with ledger(LedgerBackend(tmp_path)) as client:
        for raw in (b"{", b"[1]", b"null"):
            response = client.post("/usage/verify", content=raw, headers=as_("admin"))
            assert response.status_code in (400, 422), response.text
        refused(
            client.post("/usage/verify", content=b"{", headers=as_("admin")), 400, "malformed_json"
        )


def test_verify_catches_an_anchored_checkpoint_that_was_rewritten(tmp_path: Any) -> None:
    with ledger(LedgerBackend(tmp_path)) as client:
        record(client, *(body(i) for i in range(4)))
        anchor = client.get("/usage/checkpoint", headers=as_("read")).json()
        forged = {**anchor, "digest": "ab" * 32}
        report = verify(client, checkpoints=[forged]).json()
        assert report["ok"] is False
        assert (report["problem"]["kind"], report["problem"]["position"]) == ("altered", 4)
        assert verify(client, checkpoints=[anchor]).json()["ok"] is True


def test_a_receipt_id_may_hold_any_character_but_nul(tmp_path: Any) -> None:
    odd = ["line\nbreak", "tab\there", "%2F already encoded", "a/b/../c", " spaced "]
    with ledger(LedgerBackend(tmp_path)) as client:
        record(client, *(body(i, request_id=rid) for i, rid in enumerate(odd)))
        for rid in odd:
            response = client.get(receipt_path(rid), headers=as_("read"))
            assert response.status_code == 200, (rid, response.text)
            assert response.json()["request_id"] == rid
            assert json.loads(response.json()["payload"])["request_id"] == rid
