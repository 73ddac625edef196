"""The tamper-evident ledger: the per-namespace hash chain, verify(), and
what it names when someone edits the ledger with the database's own client
(Python's sqlite3, psql) — on every backend."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from typing import Any

import pytest
import usagewarden as uw
from audit_helpers import COLUMNS, KEYS, AuditLedger, payload, rechain
from ledger_helpers import T0, event, events

N = 10


@pytest.fixture
def db(backend: Any) -> AuditLedger:
    return AuditLedger(backend)


def ledger(db: AuditLedger, n: int = N, **fields: object) -> None:
    """Records ``req-0`` … ``req-{n-1}`` (positions 1 … n) and closes the store."""
    with db.store() as store:
        store.record_batch(events(n, **fields))


def verify(db: AuditLedger, **kwargs: object) -> uw.VerifyReport:
    with db.store() as store:
        return store.verify(**kwargs)  # type: ignore[arg-type]


def problem(report: uw.VerifyReport) -> uw.VerifyProblem:
    assert not report.ok, "verify passed a tampered ledger"
    assert report.problem is not None
    return report.problem


def test_an_untouched_ledger_verifies(db: AuditLedger) -> None:
    with db.store() as store:
        store.record_batch(events(N))
        store.record_batch(events(4, namespace="other"))
        store.flush()
        report = store.verify()
        assert report.ok and report.problem is None
        assert report.namespaces == ["default", "other"]
        assert report.rows == N + 4
        heads = {c.namespace: c for c in report.checkpoints}
        head = store.checkpoint("default")
        assert (heads["default"].position, heads["default"].digest) == (N, head.digest)
        assert heads["other"].position == 4
        assert store.verify("other").rows == 4
        assert store.verify("nobody").rows == 0 and store.verify("nobody").ok
    stored = db.rows(
        "SELECT request_id, chain_position FROM usage_events WHERE namespace = 'default' ORDER BY "
        "id",
    )
    assert stored == [(f"req-{i}", i + 1) for i in range(N)], "positions follow commit order"


@pytest.mark.parametrize(
    ("column", "sql"),
    [
        ("one stored byte", "UPDATE usage_events SET model = 'gpt-4p' WHERE request_id = 'req-5'"),
        (
            "the cost",
            "UPDATE usage_events SET cost_nanos = cost_nanos + 1 WHERE request_id = 'req-5'",
        ),
        ("the timestamp", "UPDATE usage_events SET ts = ts - 1 WHERE request_id = 'req-5'"),
        (
            "the digest",
            "UPDATE usage_events SET chain_digest = {zero} WHERE request_id = 'req-5'",
        ),
        (
            "the namespace's counts",
            "UPDATE usage_events SET tokens_out = 0 WHERE request_id = 'req-5'",
        ),
        (
            "a caller's cost made to look store-priced",
            "UPDATE usage_events SET cost_priced = TRUE, cost_nanos = 1 WHERE request_id = 'req-5'",
        ),
    ],
)
def test_an_altered_row_is_named(db: AuditLedger, column: str, sql: str) -> None:
    ledger(db)
    assert verify(db).ok
    assert db.tamper(sql.format(zero=db.blob(bytes(32)))) == 1
    found = problem(verify(db))
    assert (found.kind, found.position, found.request_id) == ("altered", 6, "req-5"), column
    assert "req-5" in found.message


def test_a_deleted_row_is_named_missing(db: AuditLedger) -> None:
    ledger(db)
    db.tamper("DELETE FROM usage_events WHERE request_id = 'req-3'")
    found = problem(verify(db))
    assert (found.kind, found.position, found.request_id) == ("missing", 4, None)
    assert "req-4" in found.message, "names the event after the gap"


def test_deleting_the_newest_rows_is_caught_by_the_head(db: AuditLedger) -> None:
    ledger(db)
    db.tamper("DELETE FROM usage_events WHERE chain_position > 8")
    found = problem(verify(db))
    assert (found.kind, found.position) == ("missing", 9)


def test_an_inserted_row_is_named(db: AuditLedger) -> None:
    ledger(db)
    copy = (
        "INSERT INTO usage_events (namespace, request_id, ts, agent_id, consumer_id, action, "
        "tokens_in, "
        "tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, "
        "cost_nanos, "
        "fingerprint, chain_position, chain_digest) SELECT namespace, 'forged', ts, agent_id, "
        "consumer_id, action, "
        "tokens_in, tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, "
        "units, "
        "cost_nanos, fingerprint, {position}, chain_digest FROM usage_events "
        "WHERE request_id = 'req-2'"
    )
    # Without a chain position (as plain SQL would add it).
    db.tamper(copy.format(position="NULL"))
    found = problem(verify(db))
    assert (found.kind, found.request_id) == ("inserted", "forged")
    db.tamper("DELETE FROM usage_events WHERE request_id = 'forged'")
    assert verify(db).ok
    # Past the chain head, with a copied digest.
    db.tamper(copy.format(position=N + 1))
    found = problem(verify(db))
    assert (found.kind, found.position, found.request_id) == ("inserted", N + 1, "forged")


def test_a_row_slipped_in_with_the_chain_recomputed_from_it_is_named(db: AuditLedger) -> None:
    """Positions shifted to make room, the forged row's digest computed
    properly: the row after it still chains from the one before it."""
    ledger(db)
    db.tamper("UPDATE usage_events SET chain_position = -chain_position WHERE chain_position >= 5")
    db.tamper(
        "UPDATE usage_events SET chain_position = 1 - chain_position WHERE chain_position < 0"
    )
    db.tamper(
        "INSERT INTO usage_events (namespace, request_id, ts, agent_id, consumer_id, action, "
        "tokens_in, "
        "tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, "
        "cost_nanos, "
        "fingerprint, chain_position) SELECT namespace, 'forged', ts, agent_id, consumer_id, "
        "action, "
        "tokens_in, tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, "
        "units, "
        "cost_nanos, fingerprint, 5 FROM usage_events WHERE request_id = 'req-2'",
    )
    db.tamper("UPDATE chain_heads SET position = position + 1")
    # Give the forged row the digest it would have had, nothing else.
    before = db.rows("SELECT chain_digest FROM usage_events WHERE chain_position = 4")
    (forged,) = db.rows(f"SELECT {COLUMNS} FROM usage_events WHERE request_id = 'forged'")
    digest = hashlib.sha256(before[0][0] + payload(dict(zip(KEYS, forged, strict=True)))).digest()
    db.tamper(
        f"UPDATE usage_events SET chain_digest = {db.blob(digest)} WHERE request_id = 'forged'"
    )
    found = problem(verify(db))
    assert (found.kind, found.position, found.request_id) == ("inserted", 5, "forged")


def test_swapped_rows_are_named_reordered(db: AuditLedger) -> None:
    ledger(db)
    db.tamper("UPDATE usage_events SET chain_position = -1 WHERE request_id = 'req-3'")
    db.tamper("UPDATE usage_events SET chain_position = 4 WHERE request_id = 'req-4'")
    db.tamper("UPDATE usage_events SET chain_position = 5 WHERE request_id = 'req-3'")
    found = problem(verify(db))
    assert (found.kind, found.position, found.request_id) == ("reordered", 4, "req-4")
    assert "req-3" in found.message


def test_swapped_contents_are_named_reordered(db: AuditLedger) -> None:
    """Every column but the chain's swapped between two rows."""
    ledger(db)
    db.tamper("UPDATE usage_events SET request_id = 'tmp' WHERE request_id = 'req-3'")
    db.tamper(
        "UPDATE usage_events SET request_id = 'req-3', ts = ts - 1000000, tokens_in = tokens_in - "
        "1, "
        "tokens_out = tokens_out - 1, cost_nanos = 4000000, agent_id = 'agent-0', consumer_id = "
        "'consumer-1' "
        "WHERE request_id = 'req-4'",
    )
    db.tamper(
        "UPDATE usage_events SET request_id = 'req-4', ts = ts + 1000000, tokens_in = tokens_in + "
        "1, "
        "tokens_out = tokens_out + 1, cost_nanos = 5000000, agent_id = 'agent-1', consumer_id = "
        "'consumer-0' "
        "WHERE request_id = 'tmp'",
    )
    found = problem(verify(db))
    assert (found.kind, found.position) == ("reordered", 4)


def test_the_chain_rewritten_from_scratch_is_caught_by_an_anchored_checkpoint(
    db: AuditLedger,
) -> None:
    ledger(db)
    with db.store() as store:
        anchored = json.dumps(store.checkpoint().to_dict())  # kept elsewhere
        store.record_batch(events(3, start=N))
    db.tamper("UPDATE usage_events SET cost_nanos = 1 WHERE request_id = 'req-2'")
    rechain(db, "default")
    assert verify(db).ok, "without an anchor a full rewrite is consistent"
    found = problem(verify(db, checkpoints=[json.loads(anchored)]))
    assert (found.kind, found.position) == ("altered", N)
    assert "anchored" in found.message


def test_anchored_checkpoints_pass_on_an_intact_ledger(db: AuditLedger) -> None:
    with db.store() as store:
        store.record_batch(events(3))
        first = store.checkpoint()
        store.record_batch(events(3, start=3))
        second = store.checkpoint()
        assert (first.position, second.position) == (3, 6)
        assert store.verify(checkpoints=[first, second.to_dict()]).ok
        # A checkpoint past the end: the events after the last one were removed.
        ahead = {**second.to_dict(), "position": 9}
        found = problem(store.verify(checkpoints=[ahead]))
        assert found.kind == "missing"


def test_a_range_of_positions_is_checked(db: AuditLedger) -> None:
    ledger(db)
    db.tamper("UPDATE usage_events SET cost_nanos = 1 WHERE request_id = 'req-8'")
    assert verify(db, start=1, end=8).ok and verify(db, start=1, end=8).rows == 8
    assert verify(db, start=4, end=8).rows == 5
    found = problem(verify(db, start=4))
    assert (found.kind, found.position) == ("altered", 9)


def test_duplicates_do_not_extend_the_chain(db: AuditLedger) -> None:
    with db.store() as store:
        store.record_batch(events(3))
        store.record_batch(events(3))
        store.record(event(1))
        store.flush()
        assert store.checkpoint().position == 3
        assert store.verify().rows == 3


def test_verify_checks_its_arguments(db: AuditLedger) -> None:
    with db.store() as store:
        with pytest.raises(ValueError, match="start"):
            store.verify(start=0)
        with pytest.raises(ValueError, match="end"):
            store.verify(start=5, end=4)
        with pytest.raises(TypeError, match="checkpoints"):
            store.verify(checkpoints=5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="digest"):
            store.verify(checkpoints=[{"namespace": "default", "position": 0, "digest": "xy"}])
        with pytest.raises(ValueError, match="request_id"):
            store.receipt("nope")


def test_the_async_store_verifies(db: AuditLedger) -> None:
    async def main() -> None:
        async with db.async_store() as store:
            await store.record_batch(events(5))
            report = await store.verify()
            assert report.ok and report.rows == 5
            receipt = await store.receipt("req-2")
            assert receipt.position == 3 and receipt.verify()
            assert (await store.checkpoint()).position == 5

    asyncio.run(main())


def test_a_store_priced_cost_may_be_repriced(db: AuditLedger) -> None:
    """The chain covers the cost the caller gave; a cost the store's pricing
    filled in is derived from the counts (covered) and may be recomputed."""
    cheap = uw.Pricing.from_dict({"gpt-4o": {"input": 1.0, "output": 1.0}})
    dear = uw.Pricing.from_dict({"gpt-4o": {"input": 2.0, "output": 2.0}})
    with db.store(pricing=cheap) as store:
        store.record_batch(events(4, cost=None))
        store.flush()
        assert store.reprice(dear) == 4
        assert store.verify().ok


def test_events_at_the_same_instant_chain_in_commit_order(db: AuditLedger) -> None:
    same = T0 + dt.timedelta(hours=1)
    with db.store() as store:
        for i in (3, 1, 2):
            store.record(event(i, timestamp=same))
        store.flush()
        assert [store.receipt(f"req-{i}").position for i in (3, 1, 2)] == [1, 2, 3]


def test_two_stores_racing_the_same_events_chain_each_once(db: AuditLedger) -> None:
    """Two stores on one ledger (two hosts) record overlapping batches at
    once: every event is chained exactly once, duplicates advance nothing."""
    import threading

    first, second = db.store(), db.store()
    barrier = threading.Barrier(2)

    def write(store: uw.MeteringStore, offset: int) -> None:
        barrier.wait()
        for i in range(0, 40, 4):
            store.record_batch(events(6, start=i + offset))

    threads = [
        threading.Thread(target=write, args=(first, 0)),
        threading.Thread(target=write, args=(second, 2)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    first.close()
    second.close()
    expected = {f"req-{i}" for i in range(0, 44)}
    chained = db.rows(
        "SELECT chain_position, request_id FROM usage_events WHERE namespace = 'default' "
        "ORDER BY chain_position"
    )
    assert {r for _, r in chained} == expected and len(chained) == len(expected)
    assert [p for p, _ in chained] == list(range(1, len(expected) + 1))
    report = verify(db)
    assert report.ok, report.problem
    assert report.checkpoints[0].position == len(expected)


@pytest.mark.slow
def test_a_large_ledger_verifies_and_names_one_altered_row_among_many(db: AuditLedger) -> None:
    """Large enough (over 100,000 positions) for SQLite to walk the chains
    in parts on several readers at once; the report is the same as a walk
    on one thread: every row counted when intact, the one altered row named."""
    n = 60_000
    with db.store() as store:
        for namespace in ("a", "b"):
            for start in range(0, n, 10_000):
                store.record_batch(events(10_000, start, namespace=namespace))
        store.flush()
        intact = store.verify()
        assert intact.ok and intact.rows == 2 * n
        assert [(c.namespace, c.position) for c in intact.checkpoints] == [("a", n), ("b", n)]
        assert [c.digest for c in intact.checkpoints] == [
            store.checkpoint("a").digest,
            store.checkpoint("b").digest,
        ]
    for namespace, position in (("b", 45_001), ("a", 60_000), ("a", 8)):
        request_id = f"req-{position - 1}"
        edit = (
            "UPDATE usage_events SET tokens_in = tokens_in + 1 "
            f"WHERE namespace = '{namespace}' AND request_id = '{request_id}'"
        )
        assert db.tamper(edit) == 1
        found = problem(verify(db))
        assert (found.namespace, found.kind, found.request_id, found.position) == (
            namespace,
            "altered",
            request_id,
            position,
        )
