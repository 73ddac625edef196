"""Receipts, checked by a script written from the documented encoding alone
(hashlib and json, never the library), and artifact digests."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import usagewarden as uw
from audit_helpers import AuditLedger
from ledger_helpers import event, events

#: A third party's verifier: from the README's "Auditing" section, nothing else.
VERIFIER = textwrap.dedent(
    """
    import datetime, hashlib, json, sys

    def canonical(e):
        ts = datetime.datetime.fromisoformat(e["timestamp"])
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        fields = {k: e[k] for k in (
            "action", "agent_id", "api_calls", "artifact_digest", "cache_read_tokens",
            "cache_write_tokens", "consumer_id", "duration_ms", "model", "namespace",
            "request_id", "source", "task_id", "tokens_in", "tokens_out", "units")}
        fields["cost_nanos"] = None if e["cost"] is None else round(e["cost"] * 10**9)
        fields["timestamp_us"] = (ts - epoch) // datetime.timedelta(microseconds=1)
        meta = e["metadata"]
        fields["metadata"] = None if meta is None else json.dumps(
            meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        fields["v"] = 1
        return json.dumps(fields, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")

    checked, previous_digest = 0, None
    for item in json.load(sys.stdin):
        event, receipt = item["event"], item["receipt"]
        payload = canonical(event)
        assert payload == receipt["payload"].encode("utf-8"), (payload, receipt["payload"])
        previous = bytes.fromhex(receipt["previous"])
        if previous_digest is not None:
            assert previous == previous_digest, "receipts do not link"
        digest = hashlib.sha256(previous + payload).hexdigest()
        assert digest == receipt["digest"], (digest, receipt["digest"])
        previous_digest, checked = bytes.fromhex(digest), checked + 1
    print(checked)
    """
)


def third_party_check(items: list[dict[str, Any]]) -> int:
    assert len(VERIFIER.strip().splitlines()) <= 32
    done = subprocess.run(
        [sys.executable, "-I", "-c", VERIFIER],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def awkward(i: int) -> uw.UsageEvent:
    return event(
        i,
        agent_id=f'agent "é" \\ {i}\t😀',
        task_id=None if i % 2 else f"task-{i}",
        source="tests",
        cost=None if i == 3 else (i + 1) / 1000,
        metadata={"z": [1, "two", None, True], "a": {"api_key": "sk-secret"}, "ü": i},
        artifact_digest=f"{i:02x}" * 32 if i % 3 else None,
        units=i,
        cache_read_tokens=2 * i,
    )


@pytest.fixture
def db(backend: Any) -> AuditLedger:
    return AuditLedger(backend, "r.db")


def test_receipts_verify_with_hashlib_and_json_alone(db: AuditLedger) -> None:
    with db.store() as store:
        store.record_batch([awkward(i) for i in range(6)])
        store.flush()
        items = []
        for e in store.query():
            receipt = store.receipt(e.request_id)
            assert receipt.verify()
            assert receipt.payload == receipt.to_dict()["payload"].encode("utf-8")
            items.append({"event": e.to_dict(), "receipt": receipt.to_dict()})
        assert [i["receipt"]["position"] for i in items] == list(range(1, 7))
        assert items[0]["receipt"]["previous"] == "0" * 64, "the genesis digest"
        assert items[-1]["receipt"]["digest"] == store.checkpoint().digest
    assert third_party_check(items) == 6
    # The verifier is not a rubber stamp: one changed count fails it.
    items[2]["event"]["tokens_in"] += 1
    with pytest.raises(AssertionError, match="child|payload|assert"):
        third_party_check(items)


def test_a_receipt_detects_its_own_tampering_offline(db: AuditLedger) -> None:
    with db.store() as store:
        store.record_batch(events(3))
    db.tamper("UPDATE usage_events SET tokens_in = 0 WHERE request_id = 'req-1'")
    with db.store() as store:
        receipt = store.receipt("req-1")
        assert not receipt.verify()
        assert store.receipt("req-2").verify()


def test_receipts_are_per_namespace(db: AuditLedger) -> None:
    with db.store() as store:
        store.record_batch(
            [event(0, namespace="a"), event(0, namespace="b"), event(1, namespace="b")]
        )
        store.flush()
        assert store.receipt("req-0", namespace="b").position == 1
        assert store.receipt("req-1", namespace="b").position == 2
        assert store.receipt("req-0", namespace="a").namespace == "a"
        with pytest.raises(ValueError, match="request_id"):
            store.receipt("req-1", namespace="a")


@pytest.mark.parametrize(
    "bad",
    ["ab" * 15, "a" * 33, "AB" * 16, "g" * 32, "a" * 130, "", "0x" + "a" * 32],
)
def test_artifact_digest_is_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="artifact_digest"):
        uw.UsageEvent("a", "c", artifact_digest=bad)


def test_artifact_digest_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="artifact_digest"):
        uw.UsageEvent("a", "c", artifact_digest=b"ab" * 16)  # type: ignore[arg-type]


def test_artifact_digest_is_stored_exported_and_chained(db: AuditLedger) -> None:
    digest = "3f" * 32
    with db.store() as store:
        store.record(event(0, artifact_digest=digest))
        store.record(event(1))
        store.flush()
        first, second = store.query()
        assert (first.artifact_digest, second.artifact_digest) == (digest, None)
        assert first.to_dict()["artifact_digest"] == digest
        assert uw.UsageEvent.from_dict(first.to_dict()) == first
        out = io.StringIO()
        store.export(out, format="json")
        assert [e["artifact_digest"] for e in json.loads(out.getvalue())] == [digest, None]
        out = io.StringIO()
        store.export(out, format="csv")
        assert [r["artifact_digest"] for r in csv.DictReader(io.StringIO(out.getvalue()))] == [
            digest,
            "",
        ]
        assert f'"artifact_digest":"{digest}"'.encode() in store.receipt("req-0").payload
    db.tamper(f"UPDATE usage_events SET artifact_digest = '{'00' * 32}' WHERE request_id = 'req-0'")
    with db.store() as store:
        found = store.verify().problem
        assert found is not None and (found.kind, found.request_id) == ("altered", "req-0")


def test_an_event_with_a_digest_differs_from_one_without() -> None:
    plain = event(0)
    marked = event(0, artifact_digest="ab" * 16)
    assert plain != marked
    assert plain.artifact_digest is None


def test_a_checkpoint_round_trips_through_json() -> None:
    data = {
        "namespace": "n",
        "position": 7,
        "digest": "ab" * 32,
        "time": "2026-02-14T12:00:00+00:00",
    }
    checkpoint = uw.Checkpoint.from_dict(json.loads(json.dumps(data)))
    assert checkpoint.to_dict() == {**data, "time": "2026-02-14T12:00:00.000000+00:00"}
    assert checkpoint == uw.Checkpoint.from_dict(checkpoint.to_dict())
    with pytest.raises(ValueError, match="position"):
        uw.Checkpoint.from_dict({**data, "position": -1})
    with pytest.raises(ValueError, match="namespace"):
        uw.Checkpoint.from_dict({"position": 1, "digest": "ab" * 32})
