"""Secrets in metadata are redacted before an event exists, and never reach the
database file, its write-ahead log, or an export."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw
from ledger_helpers import all_bytes, db_files, event, popen_python

REDACTED = "[REDACTED]"

# Unique markers so a hit in the file's bytes can only come from these values.
SECRETS = {
    "auth_header": "Bearer uwtest-bearer-9f8e7d6c5b4a39281706",
    "openai_key": "sk-proj-uwtestOPENAIkey0123456789abcdefXYZ",
    "anthropic_key": "sk-ant-api03-uwtestANTHROPIC0123456789abcdef",
    "aws_key_id": "AKIAUWTEST0123456789",
    "github_token": "ghp_uwtestGITHUB0123456789abcdefghijkl",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1d3Rlc3QtancifQ.c2lnbmF0dXJlLXV3dGVzdA",
    "password": "uwtest-hunter2-password-value",
    "cookie": "session=uwtest-cookie-value-31337",
    "api_key": "uwtest-plain-api-key-value-4242",
    "client_secret": "uwtest-client-secret-value-777",
    "x_api_key": "uwtest-x-api-key-value-5150",
    "nested_token": "uwtest-nested-token-value-8080",
    "list_password": "uwtest-password-in-a-list-606",
}


def secret_metadata() -> dict[str, Any]:
    s = SECRETS
    return {
        # Sensitive keys, in any case and spelling, at any depth.
        "Authorization": s["auth_header"],
        "API_KEY": s["api_key"],
        "X-Api-Key": s["x_api_key"],
        "Cookie": s["cookie"],
        "request": {
            "headers": {"PASSWORD": s["password"], "client_secret": s["client_secret"]},
            "auth": {"deeper": {"Token": s["nested_token"]}},
            "attempts": [{"password": s["list_password"]}, {"status": 200}],
        },
        # Values that look like credentials, under harmless keys.
        "note": f"retried with {s['auth_header']} after a 401",
        "provider_key": s["openai_key"],
        "log_line": f"key={s['anthropic_key']} region=us",
        "aws": s["aws_key_id"],
        "gh": [s["github_token"]],
        "session": {"jwt": s["jwt"]},
        # Harmless content that must survive.
        "model": "gpt-4o-mini",
        "max_tokens": 1024,
        "tokenizer": "cl100k_base",
        "task": "task-123",
        "short": "sk-short",
    }


def assert_no_secret(text: str | bytes, where: str) -> None:
    for name, secret in SECRETS.items():
        needle: str | bytes = secret if isinstance(text, str) else secret.encode()
        assert needle not in text, f"secret {name!r} found in {where}"
        # The distinctive tail of each secret (e.g. without a "Bearer " prefix).
        tail = secret.split()[-1].split("=")[-1][-16:]
        needle = tail if isinstance(text, str) else tail.encode()
        assert needle not in text, f"part of secret {name!r} found in {where}"


def test_event_metadata_is_redacted_at_any_depth_and_case() -> None:
    m = uw.UsageEvent("a", "c", metadata=secret_metadata()).metadata
    assert m is not None
    assert m["Authorization"] == REDACTED
    assert m["API_KEY"] == REDACTED
    assert m["X-Api-Key"] == REDACTED
    assert m["Cookie"] == REDACTED
    assert m["request"]["headers"] == {"PASSWORD": REDACTED, "client_secret": REDACTED}
    assert m["request"]["auth"]["deeper"]["Token"] == REDACTED
    assert m["request"]["attempts"] == [{"password": REDACTED}, {"status": 200}]
    assert m["note"] == REDACTED
    assert m["provider_key"] == REDACTED
    assert m["log_line"] == REDACTED
    assert m["aws"] == REDACTED
    assert m["gh"] == [REDACTED]
    assert m["session"]["jwt"] == REDACTED
    assert m["model"] == "gpt-4o-mini"
    assert m["max_tokens"] == 1024
    assert m["tokenizer"] == "cl100k_base"
    assert m["task"] == "task-123"
    assert m["short"] == "sk-short"
    assert_no_secret(json.dumps(m), "UsageEvent.metadata")
    as_dict = uw.UsageEvent("a", "c", metadata=secret_metadata()).to_dict()
    assert_no_secret(json.dumps(as_dict), "to_dict()")
    assert_no_secret(repr(uw.UsageEvent("a", "c", metadata=secret_metadata())), "repr()")


@pytest.mark.parametrize("key", ["password", "secret", "token", "api_key", "authorization"])
def test_a_whole_subtree_under_a_sensitive_key_is_redacted(key: str) -> None:
    m = uw.UsageEvent("a", "c", metadata={key: {"inner": "x", "list": [1, 2]}}).metadata
    assert m == {key: REDACTED}


@pytest.mark.parametrize("durability", ["batch", "commit"])
def test_secrets_never_reach_the_database_file(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "ledger.db"
    store = uw.SQLiteStore(path, durability=durability)
    store.record(event(0, metadata=secret_metadata()))
    store.record_batch([event(i, metadata=secret_metadata()) for i in range(1, 50)])
    store.record(event(50, metadata={"wrapper": [secret_metadata(), {"more": secret_metadata()}]}))
    # A replay and a conflict go through the same paths.
    store.record(event(0, metadata=secret_metadata()))
    store.flush()
    stored = store.query()
    assert len(stored) == 51
    assert stored[0].metadata == uw.UsageEvent("a", "c", metadata=secret_metadata()).metadata
    out = io.StringIO()
    store.export(out, format="json")
    assert_no_secret(out.getvalue(), "a JSON export")
    out = io.StringIO()
    store.export(out, format="csv")
    assert_no_secret(out.getvalue(), "a CSV export")
    # Only after close is it safe to open the files from this process (see
    # ledger_helpers); the next test looks at a WAL that was never checkpointed.
    store.close()
    files = db_files(path)
    assert path in files
    data = all_bytes(path)
    assert REDACTED.encode() in data, "the redacted events are in the file"
    assert b"gpt-4o-mini" in data
    assert_no_secret(data, "the database files")


def test_secrets_never_reach_the_wal_before_a_checkpoint(tmp_path: Path) -> None:
    """The WAL as it stands before close (a child process writes and is killed,
    so nothing is checkpointed into the main file or truncated)."""
    path = tmp_path / "ledger.db"
    code = """
    store = uw.SQLiteStore(sys.argv[1], durability="commit")
    meta = json.loads(sys.argv[2])
    for i in range(20):
        store.record(uw.UsageEvent("a", "c", request_id=f"r{i}", metadata=meta))
    print("written", flush=True)
    time.sleep(60)
    """
    child = popen_python(code, path, json.dumps(secret_metadata()))
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "written"
        wal = Path(f"{path}-wal")
        assert wal.exists() and wal.stat().st_size > 0
    finally:
        child.kill()
        child.wait()
    data = all_bytes(path)
    assert REDACTED.encode() in data
    assert_no_secret(data, "the database files of a killed writer")
