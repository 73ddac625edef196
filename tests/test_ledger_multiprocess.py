"""Several processes write one ledger file at once: every event lands exactly
once, "database is locked" never reaches a caller, readers never wait."""

from __future__ import annotations

import json
import time
from pathlib import Path

import usagewarden as uw
from ledger_helpers import popen_python, sqlite_rows

PROCESSES = 4
PER_PROCESS = 10_000

WRITER = """
path, go, worker, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
events = [
    uw.UsageEvent(f"worker-{worker}", f"consumer-{i % 7}", request_id=f"w{worker}-{i}",
                  tokens_in=1, tokens_out=2, cost=0.001,
                  timestamp=T0 + dt.timedelta(microseconds=i))
    for i in range(count)
]
print("ready", flush=True)
while not os.path.exists(go):  # start together
    time.sleep(0.001)
store = uw.SQLiteStore(path)
for i, e in enumerate(events):
    store.record(e)
    if i == count // 2:
        store.record_batch(events[:100])  # a replay in the middle: all duplicates
store.flush()
stats = store.stats()
store.close()
print(json.dumps({"write_errors": stats.write_errors, "inserted": stats.inserted,
                  "duplicates": stats.duplicates, "conflicts": stats.conflicts,
                  "last_error": stats.last_error}), flush=True)
"""


def test_four_processes_write_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    go = tmp_path / "go"
    uw.SQLiteStore(path).close()  # the schema exists (racing to create it: see below)
    children = [popen_python(WRITER, path, go, w, PER_PROCESS) for w in range(PROCESSES)]
    reader = uw.SQLiteStore(path)
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        go.touch()
        # Read while they write: a reader in this process never fails or waits long.
        seen = []
        deadline = time.monotonic() + 60
        while any(c.poll() is None for c in children) and time.monotonic() < deadline:
            t = time.perf_counter()
            seen.append(reader.summary().events)
            assert time.perf_counter() - t < 1.0, "a read waited for the writers"
            time.sleep(0.01)
        assert seen == sorted(seen), "readers see a growing ledger"
        reports = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            assert "locked" not in err.lower()
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        reader.close()
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    for report in reports:
        assert report["write_errors"] == 0, report
        assert report["inserted"] == PER_PROCESS, report
        assert report["duplicates"] == 100, report
        assert report["conflicts"] == 0, report
        assert report["last_error"] is None, report
    with uw.SQLiteStore(path) as store:
        st = store.stats()
        assert st.events == PROCESSES * PER_PROCESS
        assert store.agents() == [(f"worker-{w}", PER_PROCESS) for w in range(PROCESSES)]
        summary = store.summary()
        assert summary.tokens_in == PROCESSES * PER_PROCESS
        assert summary.total_tokens == 3 * PROCESSES * PER_PROCESS
        assert summary.cost == PROCESSES * PER_PROCESS / 1000
    assert sqlite_rows(path, "SELECT COUNT(DISTINCT request_id) FROM usage_events") == [
        (PROCESSES * PER_PROCESS,)
    ]
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]


OPENER = """
directory, worker, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
errors = []
for r in range(rounds):
    print("ready", r, flush=True)
    go = os.path.join(directory, f"go-{r}")
    while not os.path.exists(go):
        time.sleep(0.0005)
    try:
        with uw.SQLiteStore(os.path.join(directory, f"fresh-{r}.db")) as store:
            store.record(uw.UsageEvent(f"worker-{worker}", "c", request_id=f"{worker}"))
    except Exception as exc:
        errors.append(f"round {r}: {type(exc).__name__}: {exc}")
print(json.dumps(errors), flush=True)
"""


def test_processes_racing_to_create_a_new_file_never_see_locked(tmp_path: Path) -> None:
    """Every process opens the same brand-new file at the same moment, many times
    over (a race: one round rarely shows a failure, a hundred almost always do)."""
    rounds = 100
    children = [popen_python(OPENER, tmp_path, w, rounds) for w in range(PROCESSES)]
    try:
        for r in range(rounds):
            for child in children:
                assert child.stdout is not None
                line = child.stdout.readline()
                assert line.split() == ["ready", str(r)], line
            (tmp_path / f"go-{r}").touch()
        errors = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            errors += json.loads(out.strip().splitlines()[-1])
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert errors == [], f"{len(errors)} of {rounds * PROCESSES} opens failed: {errors[:3]}"
    for r in range(rounds):
        with uw.SQLiteStore(tmp_path / f"fresh-{r}.db") as store:
            assert store.stats().events == PROCESSES
