"""Shared helpers for the command-line and dashboard tests: a ledger seeded
with known events, and a real ``usagewarden serve`` on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import usagewarden as uw

UTC = dt.timezone.utc
#: Two keys of one namespace (reader and admin) and a key of another namespace.
READ_KEY = "read-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"

KEYS_TOML = f"""
[[keys]]
id = "viewer"
key = "{READ_KEY}"
namespace = "team-a"
scopes = ["usage:read"]

[[keys]]
id = "operator"
key = "{ADMIN_KEY}"
namespace = "team-a"
scopes = ["usage:read", "usage:admin", "usage:all-namespaces"]

[[keys]]
id = "outsider"
key = "{OTHER_KEY}"
namespace = "team-b"
scopes = ["usage:read"]
"""

AGENTS = ("support-bot", "triage-bot", "research-bot")
CONSUMERS = ("acme", "globex")
MODELS = (("gpt-4o", 2.5, 10.0), ("gpt-4o-mini", 0.15, 0.6), ("claude-3-5-haiku", 0.8, 4.0))


def known_events(
    now: dt.datetime, *, days: int = 20, per_day: int = 12, scale: int = 1
) -> list[uw.UsageEvent]:
    """Events spread over the ``days`` before ``now``, in namespaces team-a
    (most) and team-b, with costs from fixed prices (token counts times
    ``scale``); some have no price."""
    events = []
    for day in range(days):
        for n in range(per_day):
            agent = AGENTS[(day + n) % len(AGENTS)]
            model, price_in, price_out = MODELS[(day + n // 3) % len(MODELS)]
            tokens_in = scale * (400 + 37 * ((day * per_day + n) % 29))
            tokens_out = scale * (60 + 11 * ((day + 3 * n) % 17))
            unpriced = (day + n) % 23 == 0
            cost = None if unpriced else (tokens_in * price_in + tokens_out * price_out) / 1e6
            # Half a minute off the hour: never near a boundary such as 7d or 90m.
            at = now - dt.timedelta(
                days=day, hours=(n * 97) % 23, minutes=(n * 13) % 60, seconds=30
            )
            events.append(
                uw.UsageEvent(
                    agent,
                    CONSUMERS[n % len(CONSUMERS)],
                    namespace="team-b" if n % 6 == 5 else "team-a",
                    task_id=f"task-{n % 4}",
                    model=model,
                    tokens_in=tokens_in,
                    tokens_out=tokens_out,
                    api_calls=1,
                    duration_ms=200 + n,
                    cost=cost,
                    timestamp=at,
                    request_id=f"req-{day}-{n}",
                )
            )
    return events


def seed(path: Path, events: list[uw.UsageEvent]) -> None:
    with uw.SQLiteStore(path) as store:
        store.record_batch(events)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_command() -> list[str]:
    """The installed command line, run by this interpreter."""
    return [sys.executable, "-m", "usagewarden"]


@contextmanager
def running_server(
    *args: str, log: Path, env: dict[str, str] | None = None, timeout: float = 30.0
) -> Iterator[str]:
    """``usagewarden serve ARGS`` on a free port of 127.0.0.1, its output in
    ``log``; yields its base URL once it answers, and stops it afterwards."""
    port = free_port()
    command = [*cli_command(), "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    child_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    output = log.open("w")
    process = subprocess.Popen(command, env=child_env, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"usagewarden serve exited early:\n{log.read_text()}")
            try:
                httpx.get(base + "/static/icon.svg", timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("usagewarden serve did not answer in time") from None
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.close()
