"""Every ```python block of the README runs as written, in order, in one
namespace, once its placeholders (the reader's own model call, app, agent…)
are defined. Top-level ``await``/``async with`` run on an event loop."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import types
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[str]:
    return BLOCK.findall(README.read_text())


async def call_model(*_: Any) -> Any:
    """The reader's model call: an OpenAI-shaped response."""
    usage = types.SimpleNamespace(input_tokens=1_000, output_tokens=200, cached_tokens=100)
    return types.SimpleNamespace(usage=usage)


class Runner:
    """The OpenAI Agents SDK's runner, standing in for a paid model call."""

    @staticmethod
    async def run(agent: Any, prompt: str, **_: Any) -> str:
        return "hello"


def anything(*_: Any, **__: Any) -> Any:
    return types.SimpleNamespace()


def placeholders(tmp_path: Path) -> dict[str, Any]:
    import usagewarden as uw
    from fastapi import FastAPI

    return {
        "__name__": "readme",
        "call_model": call_model,
        "new_pricing": uw.Pricing.from_dict({"gpt-4o": {"input": 2.0, "output": 8.0}}),
        "notify": lambda alert: None,
        "my_agent": types.SimpleNamespace(answer=anything),
        "Agent": anything,
        "Deps": object,
        "create_agent": anything,
        "model": "openai:gpt-4o",
        "tools": [],
        "Runner": Runner,
        "app": FastAPI(),
    }


#: What a block needs from the reader that an earlier block did not define.
BEFORE_BLOCK = {
    # The usage API serves an AsyncSQLiteStore (the blocks above use sync ones).
    "usage_router(store": "store = uw.AsyncSQLiteStore('api.db')",
    # The dashboard block's API keys; it serves an async store too.
    "api_key_auth(keys)": (
        "store = uw.AsyncSQLiteStore('dashboard.db')\n"
        "import os\n"
        "from usagewarden.fastapi import Principal\n"
        "keys = {os.environ['DASHBOARD_KEY']: Principal('ops', 'default', {'usage:read'})}"
    ),
}


def test_every_readme_python_block_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, postgres_cluster: Any
) -> None:
    pytest.importorskip("fastapi")
    monkeypatch.chdir(tmp_path)
    # The Redis block reads its URL from REDIS_URL: the test's throwaway redis-server.
    monkeypatch.setenv("REDIS_URL", redis_url)
    # The row-security block: a database of its own and the reader role it names.
    database = postgres_cluster.new_schema()
    postgres_cluster.sql(f"CREATE DATABASE {database}")
    postgres_cluster.sql(
        "DO $$ BEGIN CREATE ROLE team_a_reader LOGIN; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    monkeypatch.setenv("POSTGRES_URL", postgres_cluster.dsn(database))
    monkeypatch.setenv(
        "TEAM_A_READER_URL", postgres_cluster.dsn(database).replace("postgres@", "team_a_reader@")
    )
    for name in ("API_KEY", "INGEST_KEY", "DASHBOARD_KEY"):
        monkeypatch.setenv(name, f"{name.lower()}-0123456789abcdef")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-0123456789")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key-0123456789")
    (tmp_path / "model_prices_and_context_window.json").write_text(
        json.dumps({"gpt-4o": {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5}})
    )
    namespace = placeholders(tmp_path)
    found = blocks()
    assert len(found) >= 9

    async def run_all() -> None:
        for index, source in enumerate(found):
            for marker, setup in BEFORE_BLOCK.items():
                if marker in source:
                    exec(setup, namespace)
            code = compile(
                source, f"README block {index + 1}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
            )
            try:
                result = eval(code, namespace)
                if asyncio.iscoroutine(result):
                    await result
            except Exception as exc:
                raise AssertionError(f"README block {index + 1} failed: {exc!r}\n{source}") from exc

    asyncio.run(run_all())
