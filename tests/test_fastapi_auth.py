"""API-key authentication (usagewarden.fastapi.api_key_auth)."""

from __future__ import annotations

import subprocess
import sys

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi import Depends, FastAPI  # noqa: E402
from usagewarden.fastapi import SCOPE_READ, Principal, api_key_auth  # noqa: E402

READER_KEY = "reader-key-0123456789"
ADMIN_KEY = "admin-key-0123456789ab"


def make_app() -> FastAPI:
    auth = api_key_auth(
        {
            READER_KEY: Principal("reader", "team-a", frozenset({SCOPE_READ})),
            ADMIN_KEY: Principal("admin", "team-b", frozenset({"usage:admin"})),
        }
    )
    app = FastAPI()

    @app.get("/whoami")
    async def whoami(principal: Principal = Depends(auth)) -> dict[str, object]:  # noqa: B008
        return {"id": principal.id, "namespace": principal.namespace}

    return app


async def get(app: FastAPI, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/whoami", headers=headers)


@pytest.mark.parametrize(
    ("headers", "who"),
    [
        ({"Authorization": f"Bearer {READER_KEY}"}, "reader"),
        ({"X-API-Key": ADMIN_KEY}, "admin"),
    ],
)
async def test_a_known_key_gives_its_principal(headers: dict[str, str], who: str) -> None:
    response = await get(make_app(), headers)
    assert response.status_code == 200
    assert response.json()["id"] == who


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-key-at-all-xxxx"},
        {"X-API-Key": READER_KEY[:-1]},
        {"X-API-Key": READER_KEY + "x"},
        {"Authorization": f"Basic {READER_KEY}"},
    ],
)
async def test_missing_or_unknown_keys_are_401_with_a_challenge(headers: dict[str, str]) -> None:
    response = await get(make_app(), headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["detail"]["code"] == "unauthenticated"
    assert READER_KEY not in response.text


def test_the_openapi_schema_declares_both_schemes() -> None:
    schemes = make_app().openapi()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ({}, ValueError),
        ({"short": Principal("a")}, ValueError),
        ({"long-enough-key-0001": "not a principal"}, TypeError),
    ],
)
def test_bad_key_tables_are_refused(keys: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error, match="keys"):
        api_key_auth(keys)  # type: ignore[arg-type]


def test_principals_validate_their_fields() -> None:
    with pytest.raises(ValueError, match="id"):
        Principal("")
    with pytest.raises(ValueError, match="namespace"):
        Principal("a", "")
    assert Principal("a", scopes={SCOPE_READ}).has_scope(SCOPE_READ)  # type: ignore[arg-type]


def test_a_missing_fastapi_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "try:\n    import usagewarden.fastapi\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'usagewarden[fastapi]'" in out.stdout
