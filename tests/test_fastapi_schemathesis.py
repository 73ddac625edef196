"""The usage API tested from its own OpenAPI schema with schemathesis: no
generated request, valid or not, may make it answer 5xx, and every response
must match what the schema documents for it."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

import usagewarden as uw  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from usagewarden.fastapi import (  # noqa: E402
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    Principal,
    api_key_auth,
    usage_router,
)

ADMIN_KEY = "schemathesis-admin-key-0123456789"
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
#: Bounded, and the same cases every run: the cases share one ledger, whose
#: state decides some answers, so random runs would not be reproducible. The
#: coverage phase adds its own boundary and invalid cases to these.
FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


async def close(store: uw.AsyncSQLiteStore) -> None:
    await store.close()


# The schema is loaded at import, so the app and its ledger are built then (in
# a directory of their own); schemathesis.pytest.from_fixture would defer
# this, but its lazy loader does not work with pytest 9.
_ledger_dir = tempfile.TemporaryDirectory(prefix="usagewarden-schemathesis-")
store = uw.AsyncSQLiteStore(Path(_ledger_dir.name) / "usage.db")
app = FastAPI(title="usagewarden usage API")
_admin = Principal("fuzzer", "team-fuzz", frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN}))
app.include_router(usage_router(store, auth=api_key_auth({ADMIN_KEY: _admin})))
#: Every phase, the coverage phase's boundary and invalid cases included.
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
#: Generated cases only: the conformance checks, bounded in time.
fuzzed = schemathesis.openapi.from_asgi(
    "/openapi.json",
    app,
    config=schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": False}}}),
)


@pytest.fixture(scope="module", autouse=True)
def _close_the_ledger() -> Iterator[None]:
    yield
    asyncio.run(close(store))
    _ledger_dir.cleanup()


def describe(case: schemathesis.Case, response: schemathesis.Response) -> str:
    return (
        f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r} "
        f"-> {response.status_code} {response.text[:500]}"
    )


@schema.parametrize()
@FUZZ
def test_no_request_makes_the_api_fail(case: schemathesis.Case) -> None:
    response = case.call(headers=HEADERS)
    assert response.status_code < 500, describe(case, response)
    case.validate_response(response, checks=[not_a_server_error])


@fuzzed.parametrize()
@FUZZ
def test_every_response_matches_the_schema(case: schemathesis.Case) -> None:
    response = case.call(headers=HEADERS)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
