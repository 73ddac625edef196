"""Four processes writing one namespace of one ledger: one unbroken chain,
on every backend (one SQLite file; one PostgreSQL schema, as four hosts)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

import pytest
from audit_helpers import COLUMNS, KEYS, AuditLedger, payload
from ledger_helpers import popen_python

WRITERS = 4
EACH = 300

CHILD = """
url, options, writer, each = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
with uw.open_store(url, durability="commit", **options) as store:
    print("ready", flush=True)
    sys.stdin.readline()  # all start together
    for i in range(each):
        if i == each // 2:  # all halfway before any goes on: the writers must interleave
            print("half", flush=True)
            sys.stdin.readline()
        store.record(uw.UsageEvent(f"agent-{writer}", "c", namespace="shared",
                                   request_id=f"w{writer}-{i}", tokens_in=i,
                                   timestamp=T0 + dt.timedelta(microseconds=i)))
"""


def release(children: list[subprocess.Popen[str]]) -> None:
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()


@pytest.mark.slow
def test_four_processes_make_one_unbroken_chain(backend: Any) -> None:
    db = AuditLedger(backend, "shared.db")
    db.store().close()  # created and migrated before the race
    url, options = backend.url("shared.db")
    children = [
        popen_python(CHILD, url, json.dumps(options), w, EACH, stdin=subprocess.PIPE)
        for w in range(WRITERS)
    ]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    release(children)
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "half"
    release(children)
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    with db.store() as store:
        report = store.verify()
        assert report.ok, report.problem
        assert report.rows == WRITERS * EACH
        head = store.checkpoint("shared")
        assert head.position == WRITERS * EACH
    # The chain recomputed from the rows with hashlib alone ends at the head.
    digest = bytes(32)
    for row in db.rows(
        f"SELECT chain_digest, {COLUMNS} FROM usage_events WHERE namespace = 'shared' "
        "ORDER BY chain_position"
    ):
        digest = hashlib.sha256(digest + payload(dict(zip(KEYS, row[1:], strict=True)))).digest()
        assert digest == row[0]
    assert digest.hex() == head.digest
    chained = db.rows(
        "SELECT chain_position, request_id FROM usage_events WHERE namespace = 'shared' ORDER BY "
        "chain_position"
    )
    assert [p for p, _ in chained] == list(range(1, WRITERS * EACH + 1)), "no gap, no fork"
    # Replay: each process's events sit in the chain in the order it recorded them.
    for w in range(WRITERS):
        mine = [int(r.split("-")[1]) for _, r in chained if r.startswith(f"w{w}-")]
        assert mine == list(range(EACH))
    # The writers really interleaved: the halfway barrier alone forces at least
    # 2 × (WRITERS - 1) switches; sequential writers would make WRITERS - 1.
    switches = sum(1 for a, b in zip(chained, chained[1:], strict=False) if a[1][:2] != b[1][:2])
    assert switches >= 2 * (WRITERS - 1)
