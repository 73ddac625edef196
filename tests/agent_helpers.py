"""Helpers shared by the agent-framework integration tests: a Warden that
keeps the calls it hands out, a replay of what the limiter admitted, and a
driver that moves a ManualClock only while a call waits."""

from __future__ import annotations

import asyncio
from typing import Any

import usagewarden as uw
from conftest import GRACE, is_queued


class SpyWarden(uw.Warden):
    """A Warden that keeps every Call it hands out, so a test can replay
    exactly what the limiter admitted (each reservation's time and usage)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[uw.Call] = []

    def call(self, *args: Any, **kwargs: Any) -> uw.Call:
        call = super().call(*args, **kwargs)
        self.calls.append(call)
        return call

    def call_blocking(self, *args: Any, **kwargs: Any) -> uw.Call:
        call = super().call_blocking(*args, **kwargs)
        self.calls.append(call)
        return call

    def admitted(self) -> list[uw.Reservation]:
        return [c.reservation for c in self.calls if c.reservation is not None]


def make_warden(
    clock: uw.ManualClock, store: uw.SQLiteStore | None, agent_id: str, **limits: Any
) -> SpyWarden:
    limiter = uw.RateLimiter(uw.RateLimits(**limits), clock=clock) if limits else None
    return SpyWarden(limiter, store, agent_id=agent_id, clock=clock)


def recorded(store: uw.SQLiteStore) -> list[uw.UsageEvent]:
    store.flush()
    return store.query()


def assert_replay(
    admitted: list[uw.Reservation], *, requests: int, total_tokens: int, window: float = 60.0
) -> None:
    """Replays what the limiter admitted, at the moments it admitted it (with
    the settled usage): no window of ``window`` seconds (half-open,
    (t - window, t], as the limiter counts) holds more than the limits."""
    entries = sorted(((r.at, r.usage) for r in admitted if not r.cancelled), key=lambda e: e[0])
    for end, _ in entries:
        inside = [u for t, u in entries if end - window < t <= end]
        assert sum(u.requests for u in inside) <= requests, f"requests over, window ending {end}"
        tokens = sum(u.total_tokens for u in inside)
        assert tokens <= total_tokens, f"{tokens} tokens in the window ending {end}"


async def drive(
    clock: uw.ManualClock,
    limiter: uw.RateLimiter,
    tasks: list[asyncio.Task[Any]],
    key: str,
    step: float = 1.0,
) -> None:
    """Runs ``tasks`` to completion, advancing the clock only while a call
    waits on the limiter (so the limits bind; time never moves under a call
    that could proceed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GRACE * 3
    pending: set[asyncio.Task[Any]] = set(tasks)
    while pending:
        assert loop.time() < deadline, "runs did not finish"
        _, pending = await asyncio.wait(pending, timeout=0.002)
        if pending and is_queued(limiter, key):
            clock.advance(step)
    for task in tasks:
        task.result()
