"""Crash safety: a writer process killed with SIGKILL loses nothing it reported
committed (durability="commit") or flushed (durability="batch"); a clean exit
commits what was queued even without close()."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import usagewarden as uw
from ledger_helpers import popen_python, run_python, sqlite_rows

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

WRITER = """
path, durability, total, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = uw.SQLiteStore(path, durability=durability)
print("ready", flush=True)
for i in range(total):
    store.record(uw.UsageEvent(
        f"agent-{i % 5}", "consumer", request_id=f"crash-{i}", tokens_in=i, tokens_out=2 * i,
        cost=i / 1000, timestamp=T0 + dt.timedelta(milliseconds=i), metadata={"i": i},
    ))
    if durability == "commit":
        print(i, flush=True)  # record returned: committed
    elif (i + 1) % every == 0:
        store.flush()
        print(i, flush=True)  # everything up to i is committed
print("finished", flush=True)
time.sleep(60)
"""


def kill_after(path: Path, durability: str, reports: int, every: int = 1) -> list[int]:
    """Starts the writer, SIGKILLs it after `reports` progress lines; returns every
    index it reported (including lines already in the pipe when it died)."""
    child = popen_python(WRITER, path, durability, 1_000_000, every)
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        reported: list[int] = []
        while len(reported) < reports:
            line = child.stdout.readline()
            assert line, f"writer died early: {child.stderr.read() if child.stderr else ''}"
            reported.append(int(line))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        for line in child.stdout.read().splitlines():
            assert line != "finished", "the writer should have been killed mid-way"
            reported.append(int(line))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()
    return reported


def check_after_crash(path: Path, reported: list[int]) -> None:
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]
    with uw.SQLiteStore(path) as store:
        stored = store.query()
        by_id = {e.request_id: e for e in stored}
        missing = [i for i in reported if f"crash-{i}" not in by_id]
        assert not missing, f"{len(missing)} reported events lost, first {missing[:5]}"
        # What is there is whole: a prefix of what was sent, with the right content.
        stored = [e for e in stored if e.request_id.startswith("crash-")]
        indexes = sorted(int(e.request_id.split("-")[1]) for e in stored)
        assert indexes == list(range(len(indexes)))
        for e in stored:
            i = int(e.request_id.split("-")[1])
            assert (e.tokens_in, e.tokens_out, e.metadata) == (i, 2 * i, {"i": i})
        # The store still works after the crash.
        store.record(uw.UsageEvent("after", "crash"))
        store.flush()
        assert store.stats().events == len(by_id) + 1


def test_commit_durability_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "commit.db"
    reported = kill_after(path, "commit", reports=300)
    assert len(reported) >= 300
    check_after_crash(path, reported)


def test_flushed_batches_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "batch.db"
    reported = kill_after(path, "batch", reports=20, every=250)
    assert len(reported) >= 20
    check_after_crash(path, reported)
    with uw.SQLiteStore(path) as store:
        assert store.stats().events >= max(reported) + 1


def test_repeated_crashes_lose_nothing_reported(tmp_path: Path) -> None:
    path = tmp_path / "again.db"
    reported = kill_after(path, "commit", reports=50)
    check_after_crash(path, reported)
    # A second writer resumes on the crashed file, replaying from the start:
    # what was stored is a duplicate, the rest is new.
    reported = kill_after(path, "commit", reports=len(reported) + 100)
    check_after_crash(path, reported)


def test_interpreter_exit_commits_what_was_queued(tmp_path: Path) -> None:
    path = tmp_path / "exit.db"
    run_python(
        """
        store = uw.SQLiteStore(sys.argv[1])  # batch durability, never closed or flushed
        for i in range(5000):
            store.record(uw.UsageEvent("a", "c", request_id=f"exit-{i}"))
        """,
        path,
    )
    with uw.SQLiteStore(path) as store:
        assert store.stats().events == 5000


def test_interpreter_exit_commits_an_async_store(tmp_path: Path) -> None:
    path = tmp_path / "exit-async.db"
    run_python(
        """
        import asyncio
        async def main():
            store = uw.AsyncSQLiteStore(sys.argv[1])
            for i in range(2000):
                await store.record(uw.UsageEvent("a", "c", request_id=f"exit-{i}"))
        asyncio.run(main())
        """,
        path,
    )
    with uw.SQLiteStore(path) as store:
        assert store.stats().events == 2000


def test_a_store_dropped_without_close_commits(tmp_path: Path) -> None:
    path = tmp_path / "dropped.db"
    run_python(
        """
        import gc
        store = uw.SQLiteStore(sys.argv[1])
        for i in range(1000):
            store.record(uw.UsageEvent("a", "c", request_id=f"drop-{i}"))
        del store
        gc.collect()
        again = uw.SQLiteStore(sys.argv[1])
        print(again.stats().events)
        os._exit(0)  # no atexit handlers: only what the dropped store committed counts
        """,
        path,
    )
    with uw.SQLiteStore(path) as store:
        assert store.stats().events == 1000
