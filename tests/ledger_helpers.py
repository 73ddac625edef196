"""Shared helpers for the usage-ledger tests (``tests/test_ledger_*.py``).

Every ledger test uses a real SQLite file under pytest's ``tmp_path``.

One caution about SQLite itself: the extension links its own copy of SQLite,
separate from the one Python's ``sqlite3`` module uses. POSIX advisory locks
belong to the process, so two copies of SQLite in one process do not see each
other's locks, and closing *any* descriptor of the database file (including a
plain ``open()``) drops every lock this process holds on it. Tests therefore
only read a database's bytes, or open it with ``sqlite3``, after every store
on it is closed, or do so from a child process (``run_python``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import usagewarden as uw

UTC = dt.timezone.utc
#: A fixed instant most events are placed around (a Saturday, ISO week 2026-W07).
T0 = dt.datetime(2026, 2, 14, 12, 0, tzinfo=UTC)
MAX_COUNT = 2**63 - 1

#: What every child process starts with: no debug-build warning, the package.
CHILD_PRELUDE = textwrap.dedent(
    """
    import warnings
    warnings.simplefilter("ignore")
    import datetime as dt
    import json
    import os
    import sys
    import time
    import usagewarden as uw
    UTC = dt.timezone.utc
    T0 = dt.datetime(2026, 2, 14, 12, 0, tzinfo=UTC)
    """
)


def _fields(i: int) -> dict[str, Any]:
    return {
        "agent_id": f"agent-{i % 3}",
        "consumer_id": f"consumer-{i % 2}",
        "model": "gpt-4o",
        "tokens_in": 100 + i,
        "tokens_out": 10 + i,
        "api_calls": 1,
        "duration_ms": 5,
        "cost": (i + 1) / 1000,
        "timestamp": T0 + dt.timedelta(seconds=i),
        "request_id": f"req-{i}",
    }


def event(i: int = 0, **fields: Any) -> uw.UsageEvent:
    """A deterministic event: ``event(3)`` is request ``req-3`` at T0 + 3 s."""
    values = {**_fields(i), **fields}
    agent = values.pop("agent_id")
    consumer = values.pop("consumer_id")
    return uw.UsageEvent(agent, consumer, **values)


def event_json(i: int = 0, **fields: Any) -> dict[str, Any]:
    """The usage API's JSON for ``event(i)``: request ``req-i`` at T0 + i s."""
    body = _fields(i)
    body["timestamp"] = body["timestamp"].isoformat()
    return {**body, **fields}


def events(n: int, start: int = 0, **fields: Any) -> list[uw.UsageEvent]:
    return [event(i, **fields) for i in range(start, start + n)]


def db_files(path: str | os.PathLike[str]) -> list[Path]:
    """The database and its WAL/shared-memory companions that exist."""
    base = Path(path)
    candidates = [base, Path(f"{base}-wal"), Path(f"{base}-shm"), Path(f"{base}-journal")]
    return [p for p in candidates if p.exists()]


def all_bytes(path: str | os.PathLike[str]) -> bytes:
    """Every byte of the database and its companion files (read only after close)."""
    return b"".join(p.read_bytes() for p in db_files(path))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    env.pop("PYTHONSTARTUP", None)
    return env


def child_command(code: str, *args: object) -> list[str]:
    return [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code), *map(str, args)]


def run_python(code: str, *args: object, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` (after CHILD_PRELUDE) in a fresh interpreter; fails the test on error."""
    done = subprocess.run(
        child_command(code, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stderr}"
    return done


def popen_python(code: str, *args: object, **kwargs: Any) -> subprocess.Popen[str]:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(child_command(code, *args), text=True, env=child_env(), **kwargs)


def sqlite_rows(path: str | os.PathLike[str], sql: str) -> list[tuple[Any, ...]]:
    """Runs a read-only SQL statement with Python's sqlite3 in a child process."""
    done = run_python(
        """
        import sqlite3
        con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
        print(json.dumps(con.execute(sys.argv[2]).fetchall(), default=bytes.hex))
        con.close()
        """,
        path,
        sql,
    )
    return [tuple(row) for row in json.loads(done.stdout)]


def ids(evs: Iterable[uw.UsageEvent]) -> list[str]:
    return [e.request_id for e in evs]


def nanos(e: uw.UsageEvent) -> int | None:
    """An event's cost back in integer nano-USD (exact for the amounts tests use)."""
    return None if e.cost is None else round(e.cost * 1e9)


# --- one contract suite over every backend -------------------------------------------------


class LedgerBackend:
    """Opens stores of one backend for one test. ``sync(name)`` and
    ``async_(name)`` open the same ledger for the same name, like two
    ``SQLiteStore``s on one file; different names are different ledgers."""

    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def url(self, name: str = "ledger.db") -> tuple[str, dict[str, Any]]:
        """What ``uw.open_store`` takes to open this ledger: a URL and options."""
        return f"sqlite:///{self.tmp_path / name}", {}

    def sync(self, name: str = "ledger.db", **options: Any) -> uw.MeteringStore:
        return uw.SQLiteStore(self.tmp_path / name, **options)

    def async_(self, name: str = "ledger.db", **options: Any) -> uw.AsyncMeteringStore:
        return uw.AsyncSQLiteStore(self.tmp_path / name, **options)


class PostgresBackend(LedgerBackend):
    """Each test's ledgers are schemas of their own in the session's cluster."""

    name = "postgres"

    def __init__(self, tmp_path: Path, cluster: Any) -> None:
        super().__init__(tmp_path)
        self.cluster = cluster
        self.prefix = cluster.new_schema()

    def schema(self, name: str) -> str:
        stem = "".join(c if c.isalnum() else "_" for c in name.lower())
        return f"{self.prefix}_{stem}"[:63]

    def url(self, name: str = "ledger.db") -> tuple[str, dict[str, Any]]:
        return self.cluster.dsn(), {"schema": self.schema(name)}

    def sync(self, name: str = "ledger.db", **options: Any) -> uw.MeteringStore:
        return uw.PostgresStore(self.cluster.dsn(), schema=self.schema(name), **options)

    def async_(self, name: str = "ledger.db", **options: Any) -> uw.AsyncMeteringStore:
        return uw.AsyncPostgresStore(self.cluster.dsn(), schema=self.schema(name), **options)
