"""Helpers for the audit tests: editing a closed ledger with Python's own
``sqlite3`` (as someone with the file could), and an independent
implementation of the documented chain encoding (hashlib and json only)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

#: The columns, in the canonical encoding's key order, that rebuild an event.
COLUMNS = (
    "action, agent_id, api_calls, artifact_digest, cache_read_tokens, cache_write_tokens, "
    "consumer_id, CASE WHEN cost_priced = 1 THEN NULL ELSE cost_nanos END, duration_ms, "
    "metadata, model, namespace, request_id, source, task_id, ts, tokens_in, tokens_out, units"
)
KEYS = [
    "action",
    "agent_id",
    "api_calls",
    "artifact_digest",
    "cache_read_tokens",
    "cache_write_tokens",
    "consumer_id",
    "cost_nanos",
    "duration_ms",
    "metadata",
    "model",
    "namespace",
    "request_id",
    "source",
    "task_id",
    "timestamp_us",
    "tokens_in",
    "tokens_out",
    "units",
]


def tamper(path: Path, sql: str, *params: Any) -> int:
    """Runs one statement on the closed ledger; returns the rows it changed."""
    con = sqlite3.connect(path)
    try:
        changed = con.execute(sql, params).rowcount
        con.commit()
    finally:
        con.close()
    return changed


def rows(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def payload(fields: dict[str, Any]) -> bytes:
    """The documented canonical encoding, from the documentation alone."""
    return json.dumps(
        {**fields, "v": 1}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def rechain(path: Path, namespace: str) -> None:
    """Recomputes every digest and the head of ``namespace`` after an edit:
    what someone who rewrites the whole chain does."""
    con = sqlite3.connect(path)
    try:
        digest = bytes(32)
        position = 0
        for row in con.execute(
            f"SELECT id, chain_position, {COLUMNS} FROM usage_events "
            "WHERE namespace = ? ORDER BY chain_position",
            (namespace,),
        ).fetchall():
            fields = dict(zip(KEYS, row[2:], strict=True))
            digest = hashlib.sha256(digest + payload(fields)).digest()
            position = row[1]
            con.execute("UPDATE usage_events SET chain_digest = ? WHERE id = ?", (digest, row[0]))
        con.execute(
            "UPDATE chain_heads SET position = ?, digest = ? WHERE namespace = ?",
            (position, digest, namespace),
        )
        con.commit()
    finally:
        con.close()
