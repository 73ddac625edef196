"""`import usagewarden` stays light: no agent framework, no web framework."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import usagewarden as uw

#: Top-level packages that importing usagewarden must not pull in.
FORBIDDEN = (
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic_core",
    "pydantic_ai",
    "langchain",
    "langchain_core",
    "langgraph",
    "agents",
    "openai",
    "anthropic",
    "litellm",
    "llama_index",
    "crewai",
    "autogen",
    "httpx",
    "aiohttp",
    "requests",
)

PUBLIC = {
    "Usage",
    "RateLimits",
    "Limit",
    "ManualClock",
    "UsageHistory",
    "RateLimiter",
    "Decision",
    "Reservation",
    "UsageWardenError",
    "RateLimitExceeded",
    "ConflictError",
    "StoreError",
    "BudgetExceeded",
}


def imported_by(statement: str) -> set[str]:
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_pulls_in_no_framework() -> None:
    loaded = imported_by("import usagewarden")
    assert "usagewarden" in loaded and "usagewarden._core" in loaded
    top = {name.split(".")[0] for name in loaded}
    assert not top & set(FORBIDDEN), sorted(top & set(FORBIDDEN))


def test_the_integrations_package_pulls_in_no_framework() -> None:
    loaded = imported_by("import usagewarden.integrations, usagewarden.pytest_plugin")
    top = {name.split(".")[0] for name in loaded}
    assert not top & (set(FORBIDDEN) - {"pytest"}), sorted(top & set(FORBIDDEN))


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("pydantic_ai", "pydantic_ai", "pydantic-ai"),
        ("langchain", "langchain_core", "langchain"),
        ("openai_agents", "agents", "openai-agents"),
        ("fastapi", "fastapi", "fastapi"),
    ],
)
def test_a_missing_framework_is_an_import_error_naming_the_extra(
    module: str, framework: str, extra: str
) -> None:
    package = "usagewarden" if module == "fastapi" else "usagewarden.integrations"
    code = (
        "import sys\n"
        f"sys.modules[{framework!r}] = None  # as if it were not installed\n"
        "try:\n"
        f"    import {package}.{module}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert f"pip install 'usagewarden[{extra}]'" in out.stdout


def test_from_import_of_the_api_pulls_in_no_framework() -> None:
    loaded = imported_by("from usagewarden import RateLimiter, RateLimits, Usage, ManualClock")
    top = {name.split(".")[0] for name in loaded}
    assert not top & set(FORBIDDEN), sorted(top & set(FORBIDDEN))


def test_the_contract_names_are_exported() -> None:
    for name in PUBLIC:
        assert hasattr(uw, name), name
        assert name in uw.__all__, name
    for name in uw.__all__:
        assert hasattr(uw, name), name
    assert isinstance(uw.__version__, str) and uw.__version__


def test_error_hierarchy() -> None:
    for cls in (uw.RateLimitExceeded, uw.ConflictError, uw.StoreError, uw.BudgetExceeded):
        assert issubclass(cls, uw.UsageWardenError)
    assert issubclass(uw.UsageWardenError, Exception)
    # Bad arguments are ValueError/TypeError, not part of the hierarchy.
    assert not issubclass(uw.UsageWardenError, (ValueError, TypeError))


def test_rate_limit_exceeded_attributes() -> None:
    limit = uw.RateLimits(requests_per_minute=1).limits[0]
    err = uw.RateLimitExceeded("full", retry_after=2.5, limit=limit, key="k")
    assert (str(err), err.retry_after, err.limit, err.key) == ("full", 2.5, limit, "k")
    bare = uw.RateLimitExceeded("full")
    assert (bare.retry_after, bare.limit, bare.key) == (None, None, None)


def test_library_logger_has_a_null_handler() -> None:
    import logging

    handlers = logging.getLogger("usagewarden").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
