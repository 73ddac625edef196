"""The examples run as documented."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import usagewarden as uw  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    monkeypatch.chdir(tmp_path)  # the module-level app creates its ledger here
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[None]:
    """Runs the app's ASGI lifespan (startup, then shutdown) around the block,
    as a server would, middleware included."""
    to_app: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, to_app.get, from_app.put)
    )
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await task


async def test_the_fastapi_example_limits_authenticates_and_meters(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    example = load("fastapi_app", monkeypatch, tmp_path)
    app = example.create_app(str(tmp_path / "usage.db"))
    key = {"X-API-Key": example.API_KEY, "x-tenant": "acme"}
    async with served(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/me")).status_code == 401
            statuses = [
                (await client.get("/search?q=x", headers=key)).status_code for _ in range(11)
            ]
            assert statuses == [200] * 10 + [429]
            me = await client.get("/me", headers=key)
            assert me.json() == {"id": "demo", "namespace": "default"}
            assert me.headers["ratelimit-limit"] == "120"
            # The requests above were metered; the usage API reads them back.
            # Metering records after each response; the first flush lets those
            # records reach the store's queue, the second commits them.
            await app.state.store.flush()
            await app.state.store.flush()
            summary = await client.get("/usage/summary", headers=key)
            assert summary.status_code == 200 and summary.json()["events"] >= 13
            refused = await client.post("/usage/purge", headers=key)
            assert refused.status_code == 403
            admin = {"X-API-Key": example.ADMIN_KEY, "x-tenant": "acme"}
            export = await client.get("/usage/export?format=ndjson", headers=admin)
            assert export.status_code == 200 and len(export.text.splitlines()) >= 13
    store = uw.SQLiteStore(tmp_path / "usage.db")
    routes = [e.metadata["route"] for e in store.query() if e.metadata]
    assert routes.count("/search") == 11 and routes.count("/me") == 2
    assert routes.count("/usage/summary") == 1 and routes.count("/usage/export") == 1
    store.close()


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("pydantic_ai_agent.py", "recorded"),
        ("langchain_agent.py", "calls recorded: 6"),
        ("openai_agents_run.py", "calls recorded: 6"),
    ],
)
def test_the_agent_examples_run_offline(tmp_path: Path, script: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "ignore", str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
    # The ledger goes to a temporary file: nothing is left where it ran.
    assert list(tmp_path.iterdir()) == []
    if "waited" in done.stdout:
        # The offline runs drive a ManualClock: their waits are simulated, and say so.
        assert "(simulated time)" in done.stdout
