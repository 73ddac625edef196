"""``on_unavailable="local"``: while Redis is away, each process admits from
its own share of every limit; once Redis is back, the limits are shared again."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import usagewarden as uw
from redis_server import RedisServer

LIMITS = uw.RateLimits(requests_per_minute=100, total_tokens_per_minute=10_000)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, to stop and start without disturbing others."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"on_unavailable": "local"}, "local_processes"),
        ({"on_unavailable": "local", "local_processes": 0}, "local_processes"),
        ({"on_unavailable": "local", "local_processes": True}, "local_processes"),
        ({"on_unavailable": "local", "local_processes": "4"}, "local_processes"),
        ({"on_unavailable": "local", "local_processes": 2.5}, "local_processes"),
        ({"on_unavailable": "fail-open"}, "on_unavailable"),
    ],
)
def test_bad_fallback_options_are_refused_by_name(
    redis_url: str, options: dict[str, object], argument: str
) -> None:
    with pytest.raises(ValueError, match=argument):
        uw.RedisRateLimiter(LIMITS, redis_url, **options)  # type: ignore[arg-type]


def test_with_redis_up_the_fallback_changes_nothing(redis_url: str) -> None:
    clock = uw.ManualClock(1_000.0)
    shared = uw.RedisRateLimiter(
        LIMITS, redis_url, clock=clock, on_unavailable="local", local_processes=4
    )
    other = uw.RedisRateLimiter(LIMITS, redis_url, clock=clock)
    admitted = sum(bool(shared.try_acquire("k")) for _ in range(60))
    admitted += sum(bool(other.try_acquire("k")) for _ in range(60))
    assert admitted == 100, "the whole limit is shared through Redis, not split"
    assert other.usage("k").requests == 100
    assert shared.health()["local"] is False


@pytest.mark.slow
def test_while_redis_is_away_each_process_admits_its_share_then_limits_are_shared_again(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="usagewarden")
    clock = uw.ManualClock(1_000.0)
    limiter = uw.RedisRateLimiter(
        LIMITS,
        own_server.url,
        clock=clock,
        timeout=0.5,
        on_unavailable="local",
        local_processes=4,
    )
    assert limiter.try_acquire("k")
    own_server.stop()

    started = time.monotonic()
    decisions = [limiter.try_acquire("k") for _ in range(40)]
    assert time.monotonic() - started < 5, "calls do not each wait for Redis to time out"
    assert sum(bool(d) for d in decisions) == 25, "a quarter of 100 requests per minute"
    refused = next(d for d in decisions if not d)
    assert refused.retry_after is not None and refused.retry_after > 0
    health = limiter.health()
    assert health["ok"] is False and health["local"] is True
    switched = [r.getMessage() for r in caplog.records if "share" in r.getMessage()]
    assert len(switched) == 1 and "Redis" in switched[0], "one warning for the switch"

    # A reservation made locally settles locally.
    clock.advance(60)
    reservation = limiter.acquire_blocking("k", input_tokens=1_000)
    reservation.settle(input_tokens=400)
    assert limiter.usage("k").input_tokens == 400

    own_server.start()
    deadline = time.monotonic() + 20
    while limiter.health()["local"] or not limiter.try_acquire("k"):
        assert time.monotonic() < deadline, "the limiter never went back to Redis"
        time.sleep(0.2)  # the limiter tries Redis again once a second
    assert limiter.usage("k").requests >= 1
    assert integer(own_server.command("EXISTS", *redis_keys(own_server))) >= 1
    assert any("is back" in r.getMessage() for r in caplog.records)


def integer(reply: bytes) -> int:
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


def redis_keys(server: RedisServer) -> list[str]:
    reply = server.command("KEYS", "usagewarden*")
    lines = reply.split(b"\r\n")
    keys = [line.decode() for line in lines[2::2] if line]
    assert keys, f"the limiter wrote nothing to Redis: {reply!r}"
    return keys
