"""Four processes writing one namespace of one ledger: one unbroken chain."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import usagewarden as uw
from audit_helpers import rows
from ledger_helpers import popen_python

WRITERS = 4
EACH = 300

CHILD = """
db, writer, each = sys.argv[1], sys.argv[2], int(sys.argv[3])
with uw.SQLiteStore(db, durability="commit") as store:
    print("ready", flush=True)
    sys.stdin.readline()  # all start together
    for i in range(each):
        store.record(uw.UsageEvent(f"agent-{writer}", "c", namespace="shared",
                                   request_id=f"w{writer}-{i}", tokens_in=i,
                                   timestamp=T0 + dt.timedelta(microseconds=i)))
"""


@pytest.mark.slow
def test_four_processes_make_one_unbroken_chain(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    uw.SQLiteStore(db).close()  # created and migrated before the race
    children = [popen_python(CHILD, db, w, EACH, stdin=subprocess.PIPE) for w in range(WRITERS)]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    with uw.SQLiteStore(db) as store:
        report = store.verify()
        assert report.ok, report.problem
        assert report.rows == WRITERS * EACH
        assert store.checkpoint("shared").position == WRITERS * EACH
    chained = rows(
        db,
        "SELECT chain_position, request_id FROM usage_events WHERE namespace = 'shared' ORDER BY "
        "chain_position",
    )
    assert [p for p, _ in chained] == list(range(1, WRITERS * EACH + 1)), "no gap, no fork"
    # Replay: each process's events sit in the chain in the order it recorded them.
    for w in range(WRITERS):
        mine = [int(r.split("-")[1]) for _, r in chained if r.startswith(f"w{w}-")]
        assert mine == list(range(EACH))
    # The writers really interleaved (otherwise this proves little).
    switches = sum(1 for a, b in zip(chained, chained[1:], strict=False) if a[1][:2] != b[1][:2])
    assert switches > WRITERS
