"""The async store's in-memory calls complete without a loop round trip.

``await AsyncSQLiteStore.record(event)`` under ``durability="batch"`` only
queues the event, so with room in the queue it returns an awaitable that is
already complete: awaiting it never hands control back to the event loop.
Whether the loop ran in between is measured by a task that counts its own
iterations, never by a timer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import usagewarden as uw
from ledger_helpers import LedgerBackend, event, events, popen_python


class LoopTurns:
    """A task that adds one each time the event loop gives it a turn."""

    def __init__(self) -> None:
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def _spin(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._spin())
        while self.count == 0:  # let it start
            await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


async def test_batch_record_never_yields_to_the_loop(backend: LedgerBackend) -> None:
    async with backend.async_("fast.db") as store, LoopTurns() as turns:
        before = turns.count
        ids = [await store.record(e) for e in events(200)]
        assert turns.count == before, "an await of a queued record let the loop run"
        assert ids == [f"req-{i}" for i in range(200)]
        await store.flush()
        assert (await store.stats()).events == 200


async def test_commit_durability_parks_on_a_future(backend: LedgerBackend) -> None:
    """The counter does see a real wait: "commit" returns only after the commit."""
    async with backend.async_("commit.db", durability="commit") as store, LoopTurns() as turns:
        before = turns.count
        assert await store.record(event(0)) == "req-0"
        assert turns.count > before
        assert (await store.stats()).events == 1


async def test_the_completed_awaitable_is_a_real_awaitable(backend: LedgerBackend) -> None:
    async with backend.async_("await.db") as store:
        task = asyncio.create_task(store.record(event(0)))  # type: ignore[arg-type]
        assert await task == "req-0"
        assert await asyncio.gather(store.record(event(1)), store.record(event(2))) == [
            "req-1",
            "req-2",
        ]
        assert await asyncio.wait_for(store.record(event(3)), timeout=5) == "req-3"
        coroutine = store.record(event(4))
        assert await coroutine == "req-4"
        with pytest.raises(RuntimeError, match="already awaited"):
            await coroutine
        # A coroutine never awaited records its event all the same (it was queued).
        store.record(event(5)).close()
        await store.flush()
        assert [e.request_id for e in await store.query()] == [f"req-{i}" for i in range(6)]


async def test_a_closed_store_raises_at_await_not_at_call(backend: LedgerBackend) -> None:
    store = backend.async_("closed.db")
    await store.close()
    pending = store.record(event(0))
    with pytest.raises(uw.StoreError, match="closed"):
        await pending
    with pytest.raises(TypeError, match="event"):
        store.record("not an event")  # type: ignore[arg-type]


@asynccontextmanager
async def write_lock_held_by_another_process(path: Path) -> AsyncIterator[None]:
    """Another process holds the database's write lock until the block ends,
    so the store's writer cannot commit and its queue fills."""
    child = popen_python(
        """
        import sqlite3
        con = sqlite3.connect(sys.argv[1], isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        print("locked", flush=True)
        sys.stdin.readline()
        con.execute("ROLLBACK")
        """,
        path,
        stdin=__import__("subprocess").PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    line = await asyncio.to_thread(child.stdout.readline)
    assert line.strip() == "locked", child.stderr.read() if child.stderr else ""
    try:
        yield
    finally:
        child.stdin.write("\n")
        child.stdin.flush()
        await asyncio.to_thread(child.wait, 30)


# SQLite only: another process's write lock is how the test stalls the writer.
@pytest.mark.slow
async def test_a_full_queue_parks_and_loses_no_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "full.db"
    # More than the writer's queue (100,000) plus the group it holds (10,000).
    n = 130_000
    batch = events(n)
    acknowledged: list[str] = []

    async def recorder() -> None:
        for e in batch:
            acknowledged.append(await store.record(e))

    store = uw.AsyncSQLiteStore(path)
    async with write_lock_held_by_another_process(path):
        task = asyncio.create_task(recorder())
        await asyncio.sleep(0)
        # The recorder can only have given the loop a turn by parking on a full queue.
        assert not task.done()
        assert 100_000 <= len(acknowledged) < n
        parked_at = len(acknowledged)
    await task
    assert len(acknowledged) == n > parked_at
    await store.close()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        stored = {row[0] for row in con.execute("SELECT request_id FROM usage_events")}
    finally:
        con.close()
    assert stored == set(acknowledged)
