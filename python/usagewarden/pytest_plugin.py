"""pytest fixtures for applications that use usagewarden (loaded automatically
once usagewarden is installed, through the ``pytest11`` entry point).

- ``manual_clock``: a ``ManualClock`` at 2026-01-01T00:00:00Z; advance it
  instead of sleeping.
- ``usage_store``: a fresh ``SQLiteStore`` in ``tmp_path`` on that clock,
  committing each record at once, so assertions see it without a flush.
- ``rate_limiter``: a ``RateLimiter`` on that clock; 60 requests and 100,000
  tokens a minute unless the test says otherwise with
  ``@pytest.mark.usagewarden_limits(requests_per_minute=5, …)``.
- ``warden``: a ``Warden`` over the two, agent ``"test-agent"``.

::

    async def test_the_agent_is_metered(warden, usage_store):
        await my_agent.answer("hi", warden=warden)
        [event] = usage_store.query(agent_id="test-agent")
        assert event.tokens_out > 0

An ``async def`` test that uses one of these fixtures runs on pytest-asyncio
(which must be installed) without ``@pytest.mark.asyncio`` or
``asyncio_mode = "auto"``: the plugin marks it.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ._core import ManualClock, RateLimiter, RateLimits, SQLiteStore
from .warden import Warden

#: 2026-01-01T00:00:00Z, so that events carry believable timestamps.
START = 1_767_225_600.0
DEFAULT_LIMITS = {"requests_per_minute": 60, "total_tokens_per_minute": 100_000}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "usagewarden_limits(**limits): the RateLimits of the rate_limiter and warden fixtures",
    )


#: The fixtures this plugin provides.
FIXTURES = frozenset({"manual_clock", "usage_store", "rate_limiter", "warden"})


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(
    collector: pytest.Collector, name: str, obj: object
) -> Generator[None, Any, None]:
    """Marks ``async def`` tests that use these fixtures for pytest-asyncio
    in its default strict mode. Runs inside pytest-asyncio's own wrapper of
    this hook, which turns marked coroutine tests into its items."""
    outcome = yield
    if (
        not inspect.iscoroutinefunction(obj)
        or collector.config.pluginmanager.get_plugin("asyncio") is None
    ):
        return
    items = outcome.get_result()
    for item in items if isinstance(items, list) else [items]:
        if (
            isinstance(item, pytest.Function)
            and FIXTURES.intersection(item.fixturenames)
            and item.get_closest_marker("asyncio") is None
        ):
            item.add_marker(pytest.mark.asyncio)


@pytest.fixture
def manual_clock() -> ManualClock:
    """A clock that moves only when the test advances it."""
    return ManualClock(START)


@pytest.fixture
def usage_store(tmp_path: Path, manual_clock: ManualClock) -> Iterator[SQLiteStore]:
    """A fresh SQLite ledger in ``tmp_path`` (closed after the test)."""
    store = SQLiteStore(tmp_path / "usage.db", durability="commit", clock=manual_clock)
    yield store
    store.close()


@pytest.fixture
def rate_limiter(request: pytest.FixtureRequest, manual_clock: ManualClock) -> RateLimiter:
    """A limiter on ``manual_clock``; limits from ``@pytest.mark.usagewarden_limits``."""
    marker = request.node.get_closest_marker("usagewarden_limits")
    limits = dict(marker.kwargs) if marker is not None else DEFAULT_LIMITS
    return RateLimiter(RateLimits(**limits), clock=manual_clock)


@pytest.fixture
def warden(
    rate_limiter: RateLimiter, usage_store: SQLiteStore, manual_clock: ManualClock
) -> Warden:
    """A ``Warden`` that limits with ``rate_limiter`` and records into ``usage_store``."""
    return Warden(rate_limiter, usage_store, agent_id="test-agent", clock=manual_clock)
