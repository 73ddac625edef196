"""Failure isolation: once record() has queued an event, a storage failure never
reaches the caller's request path; it is retried, logged and visible in stats(),
and the event is stored when the database recovers. A full queue makes record()
wait, it never drops."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import usagewarden as uw
from ledger_helpers import event, events, popen_python

LOCK_HOLDER = """
import sqlite3
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
con.execute("COMMIT")
con.close()
print("released", flush=True)
"""


class ExclusiveLock:
    """`BEGIN EXCLUSIVE` held by Python's sqlite3 module in another process (in
    this process it would share the process's POSIX locks with the store)."""

    def __init__(self, path: Path) -> None:
        self.child = popen_python(LOCK_HOLDER, path, stdin=subprocess.PIPE)
        assert self.child.stdout is not None
        line = self.child.stdout.readline().strip()
        assert line == "locked", self.child.stderr.read() if self.child.stderr else line

    def release(self) -> None:
        if self.child.poll() is None:
            assert self.child.stdin is not None and self.child.stdout is not None
            self.child.stdin.write("\n")
            self.child.stdin.flush()
            assert self.child.stdout.readline().strip() == "released"
            self.child.wait(timeout=30)
        assert self.child.returncode == 0

    def __enter__(self) -> ExclusiveLock:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.release()
        finally:
            if self.child.poll() is None:
                self.child.kill()
                self.child.wait()
            for stream in (self.child.stdin, self.child.stdout, self.child.stderr):
                if stream is not None:
                    stream.close()


def test_record_returns_promptly_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    with uw.SQLiteStore(path) as store:
        store.record(event(0))
        store.flush()
        with ExclusiveLock(path) as lock:
            slowest = 0.0
            started = time.perf_counter()
            for e in events(2000, start=1):
                t = time.perf_counter()
                store.record(e)
                slowest = max(slowest, time.perf_counter() - t)
            total = time.perf_counter() - started
            # The lock is held until the `with` block releases it, so a
            # record() that waited for the database would never return here;
            # that these returned, all 2000 of them, is the point. (The
            # bounds only keep a regression from hanging the suite.)
            assert slowest < 5.0, f"one record() took {slowest:.3f}s"
            assert total < 30.0, f"2000 record() calls took {total:.3f}s"
            # Reads are not blocked by the writer lock, and see the committed state.
            t = time.perf_counter()
            assert [e.request_id for e in store.query()] == ["req-0"]
            assert time.perf_counter() - t < 0.5
            time.sleep(1.0)  # hold the lock for about a second
            st = store.stats()
            assert st.events == 1, "nothing could be committed under the lock"
            assert st.queued == 2000
            lock.release()
        t = time.perf_counter()
        store.flush()
        assert time.perf_counter() - t < 10
        st = store.stats()
        assert st.events == 2001
        assert st.queued == 0
        assert store.query() == events(2001)


def test_commit_durability_waits_for_the_lock_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "commit.db"
    with uw.SQLiteStore(path, durability="commit") as store:
        store.record(event(0))
        with ExclusiveLock(path) as lock:
            result: list[object] = []
            writer = threading.Thread(target=lambda: result.append(store.record(event(1))))
            writer.start()
            time.sleep(0.5)
            assert writer.is_alive(), "a committed record waits while the file is locked"
            lock.release()
            writer.join(15)
            assert not writer.is_alive()
        assert result == ["req-1"]
        assert store.stats().events == 2


def test_a_full_queue_makes_record_wait_and_never_drops(tmp_path: Path) -> None:
    """More events than the queue holds are recorded while the file is locked:
    the producer may wait, but every event is stored in the end."""
    path = tmp_path / "full.db"
    n = 130_000
    batch = [uw.UsageEvent("a", "c", request_id=f"q{i}") for i in range(n)]
    with uw.SQLiteStore(path) as store:
        with ExclusiveLock(path) as lock:
            done = threading.Event()
            failure: list[BaseException] = []

            def produce() -> None:
                try:
                    for e in batch:
                        store.record(e)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    failure.append(exc)
                finally:
                    done.set()

            producer = threading.Thread(target=produce, daemon=True)
            producer.start()
            time.sleep(1.0)
            assert store.stats().events == 0
            lock.release()
            assert done.wait(30), "record() stayed blocked after the lock was released"
            producer.join(5)
        assert failure == []
        store.flush()
        st = store.stats()
        assert st.events == n
        assert st.inserted == n
        assert st.queued == 0
