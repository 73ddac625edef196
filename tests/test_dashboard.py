"""``usagewarden.dashboard.mount`` in an app of one's own, served by a real
uvicorn on 127.0.0.1: where the page and its files are, their headers, and
the dashboard's API routes behind the usage API's keys and namespaces."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import usagewarden as uw
import uvicorn
from fastapi import FastAPI
from operator_helpers import ADMIN_KEY, OTHER_KEY, READ_KEY, free_port, known_events, seed
from usagewarden.dashboard import CONTENT_SECURITY_POLICY, mount
from usagewarden.fastapi import (
    SCOPE_ADMIN,
    SCOPE_ALL_NAMESPACES,
    SCOPE_READ,
    Principal,
    api_key_auth,
    usage_router,
)

UTC = dt.timezone.utc
LOCAL_ADMIN_KEY = "local-admin-key-0123456789"
KEYS = {
    READ_KEY: Principal("viewer", "team-a", frozenset({SCOPE_READ})),
    ADMIN_KEY: Principal(
        "operator", "team-a", frozenset({SCOPE_READ, SCOPE_ADMIN, SCOPE_ALL_NAMESPACES})
    ),
    # An admin of its namespace only: no other namespace's budget or limiter key.
    LOCAL_ADMIN_KEY: Principal("local-admin", "team-a", frozenset({SCOPE_READ, SCOPE_ADMIN})),
    OTHER_KEY: Principal("outsider", "team-b", frozenset({SCOPE_READ})),
}


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` on a real uvicorn on 127.0.0.1, in a thread of this process."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(2000):
            if server.started:
                break
            threading.Event().wait(0.005)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mount") / "usage.db"
    seed(path, known_events(dt.datetime.now(UTC), days=5))
    return path


@pytest.fixture(scope="module")
def limiter() -> uw.RateLimiter:
    return uw.RateLimiter(
        uw.RateLimits(requests_per_minute=100, total_tokens_per_minute=10_000),
        per_key={"batch-jobs": uw.RateLimits(requests_per_second=5)},
    )


@pytest.fixture(scope="module")
def site(ledger: Path, limiter: uw.RateLimiter) -> Iterator[str]:
    """An app with a page of its own and the dashboard at /dashboard."""
    store = uw.AsyncSQLiteStore(ledger)
    budgets = uw.BudgetEngine(
        [
            uw.Budget("a", 5.0, scope="namespace", match="team-a", thresholds=[0.25, 0.5]),
            uw.Budget("b", 5.0, scope="namespace", match="team-b"),
            uw.Budget("all", 50.0),
        ],
        store,
    )
    app = FastAPI()

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"app": "mine"}

    mount(
        app,
        store,
        auth=api_key_auth(KEYS),
        budgets=budgets,
        limiter=limiter,
        limiter_keys=["operator", "viewer", "outsider"],
    )
    with serving(app) as base:
        yield base
    store.blocking().close()


def get(base: str, path: str, key: str | None = None) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.get(base + path, headers=headers)


def test_the_page_lives_at_its_path_beside_the_app(site: str) -> None:
    assert get(site, "/").json() == {"app": "mine"}
    redirect = get(site, "/dashboard")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "/dashboard/"
    page = get(site, "/dashboard/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert '<meta name="usagewarden-api" content="/usage">' in page.text
    assert '<meta name="usagewarden-auth" content="key">' in page.text
    assert 'src="/dashboard/static/app.js"' in page.text
    assert "{{" not in page.text


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("app.js", "text/javascript"),
        ("panels.js", "text/javascript"),
        ("style.css", "text/css"),
        ("plotly-base.css", "text/css"),
        ("plotly.min.js", "text/javascript"),
        ("icon.svg", "image/svg+xml"),
    ],
)
def test_every_file_the_page_loads_is_served_from_here(
    site: str, name: str, media_type: str
) -> None:
    response = get(site, f"/dashboard/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.headers["x-content-type-options"] == "nosniff"


def test_only_the_page_files_are_served(site: str) -> None:
    for name in ("index.html", "..%2F__init__.py", "_assets.py", "nothing.js"):
        assert get(site, f"/dashboard/static/{name}").status_code == 404


def test_the_usage_api_is_mounted_with_the_same_keys(site: str, ledger: Path) -> None:
    with uw.SQLiteStore(ledger) as store:
        team_a = store.summary(namespace="team-a").to_dict()
    assert get(site, "/usage/summary", READ_KEY).json() == team_a
    assert get(site, "/usage/summary").status_code == 401
    assert get(site, "/usage/limiter").status_code == 401
    assert get(site, "/usage/budgets/settings").status_code == 401


def test_me_names_the_principal_never_the_key(site: str) -> None:
    me = get(site, "/usage/me", READ_KEY)
    assert me.json() == {"id": "viewer", "namespace": "team-a", "scopes": ["usage:read"]}
    assert READ_KEY not in me.text
    assert get(site, "/usage/me", OTHER_KEY).json()["namespace"] == "team-b"
    assert get(site, "/usage/me").status_code == 401


def test_the_limiter_windows_follow_the_scopes(site: str, limiter: uw.RateLimiter) -> None:
    limiter.try_acquire("viewer", input_tokens=300, output_tokens=200)
    limiter.try_acquire("batch-jobs")
    everything = get(site, "/usage/limiter", ADMIN_KEY).json()
    assert everything["attached"] is True
    keys = {k["key"]: k for k in everything["keys"]}
    assert set(keys) == {"operator", "viewer", "outsider", "batch-jobs"}
    viewer = {limit["name"]: limit for limit in keys["viewer"]["limits"]}
    assert viewer["requests_per_minute"]["used"] == limiter.usage("viewer").requests
    assert viewer["total_tokens_per_minute"]["used"] == limiter.usage("viewer").total_tokens
    assert viewer["total_tokens_per_minute"]["remaining"] == 10_000 - 500
    [batch] = keys["batch-jobs"]["limits"]
    assert (batch["name"], batch["used"], batch["amount"]) == ("requests_per_second", 1, 5)
    own = get(site, "/usage/limiter", READ_KEY).json()
    assert [k["key"] for k in own["keys"]] == ["viewer"]
    # Administering one namespace does not show the other principals' windows.
    assert get(site, "/usage/limiter", LOCAL_ADMIN_KEY).json()["keys"] == []


def budget_names(site: str, path: str, key: str) -> list[str]:
    return [b["budget"] for b in get(site, path, key).json()["budgets"]]


def test_budget_settings_follow_the_budgets_rule(site: str) -> None:
    everything = get(site, "/usage/budgets/settings", ADMIN_KEY).json()["budgets"]
    assert [b["budget"] for b in everything] == ["a", "b", "all"]
    assert everything[0]["thresholds"] == [0.25, 0.5]
    for key, names in (
        (ADMIN_KEY, ["a", "b", "all"]),
        (LOCAL_ADMIN_KEY, ["a"]),
        (READ_KEY, ["a"]),
        (OTHER_KEY, ["b"]),
    ):
        assert budget_names(site, "/usage/budgets/settings", key) == names
        # The same budgets as the spend the usage API shows the key.
        shown = budget_names(site, "/usage/budgets", key)
        assert sorted(set(shown)) == sorted(n for n in names if n in shown)


def test_mount_beside_an_existing_usage_api(ledger: Path) -> None:
    store = uw.AsyncSQLiteStore(ledger)
    auth = api_key_auth(KEYS)
    app = FastAPI()
    app.include_router(usage_router(store, auth=auth, prefix="/api/usage"))
    mount(app, store, auth=auth, path="/ops", api_prefix="/api/usage", include_api=False)
    try:
        with serving(app) as base:
            page = get(base, "/ops/")
            assert '<meta name="usagewarden-api" content="/api/usage">' in page.text
            assert get(base, "/api/usage/limiter", READ_KEY).json() == {
                "attached": False,
                "keys": [],
            }
            assert get(base, "/api/usage/budgets/settings", READ_KEY).json() == {"budgets": []}
            assert get(base, "/usage/summary", READ_KEY).status_code == 404
    finally:
        store.blocking().close()


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"auth": None}, ValueError, "auth: is required"),
        ({"path": "dashboard"}, ValueError, "path: must be a str starting with '/'"),
        ({"path": "/dashboard/"}, ValueError, "path: must not end with '/'"),
        ({"api_prefix": "/"}, ValueError, "api_prefix: must not be '/'"),
        ({"limiter": object()}, TypeError, "limiter: must be a usagewarden limiter"),
        ({"limiter_keys": "viewer"}, TypeError, "limiter_keys: must be an iterable of keys"),
    ],
)
def test_mount_names_a_bad_argument(
    ledger: Path, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    options: dict[str, Any] = {"auth": api_key_auth(KEYS), **arguments}
    app = FastAPI()
    with pytest.raises(error, match=message):
        mount(app, uw.AsyncSQLiteStore(ledger), **options)
    with pytest.raises(TypeError, match="app: must be a fastapi.FastAPI"):
        mount(object(), uw.AsyncSQLiteStore(ledger), auth=api_key_auth(KEYS))  # type: ignore[arg-type]


def test_an_open_dashboard_says_so_in_the_page(ledger: Path) -> None:
    store = uw.AsyncSQLiteStore(ledger)
    app = FastAPI()
    mount(app, store, auth=None, allow_unauthenticated=True, path="/")
    try:
        with serving(app) as base:
            assert '<meta name="usagewarden-auth" content="none">' in get(base, "/").text
            assert get(base, "/usage/me").json()["namespace"] is None
            assert get(base, "/usage/summary").status_code == 200
    finally:
        store.blocking().close()
