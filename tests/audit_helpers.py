"""Helpers for the audit tests: editing a closed ledger with the database's
own client (Python's ``sqlite3`` for a file, ``psql`` for PostgreSQL), as
someone with access to it could, and an independent implementation of the
documented chain encoding (hashlib and json only)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import usagewarden as uw

#: The columns, in the canonical encoding's key order, that rebuild an event.
COLUMNS = (
    "action, agent_id, api_calls, artifact_digest, cache_read_tokens, cache_write_tokens, "
    "consumer_id, CASE WHEN cost_priced THEN NULL ELSE cost_nanos END, duration_ms, "
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


class AuditLedger:
    """One test's ledger on one backend (the ``backend`` fixture), and its
    database's own client to edit it behind the store's back. SQL is written
    once for both engines: ``blob()`` spells a byte string, booleans are
    ``TRUE``/``FALSE``; ``rows`` gives blobs back as ``bytes``."""

    def __init__(self, backend: Any, name: str = "a.db") -> None:
        self.backend = backend
        self.name = name

    def store(self, **options: Any) -> uw.MeteringStore:
        return self.backend.sync(self.name, **options)  # type: ignore[no-any-return]

    def async_store(self, **options: Any) -> uw.AsyncMeteringStore:
        return self.backend.async_(self.name, **options)  # type: ignore[no-any-return]

    @property
    def is_postgres(self) -> bool:
        return bool(self.backend.name == "postgres")

    @property
    def path(self) -> Path:
        return Path(self.backend.tmp_path) / self.name

    def blob(self, data: bytes) -> str:
        return f"'\\x{data.hex()}'::bytea" if self.is_postgres else f"X'{data.hex()}'"

    def _psql(self, sql: str, *, quiet: bool) -> str:
        schema = self.backend.schema(self.name)
        args = ["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"] + (["-q"] if quiet else [])
        cluster = self.backend.cluster
        done = cluster.run(
            "psql",
            *args,
            "-h",
            str(cluster.socket_dir),
            "-p",
            str(cluster.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            f'SET search_path TO "{schema}"; {sql}',
        )
        return str(done.stdout).strip()

    def tamper(self, sql: str) -> int:
        """Runs one statement on the ledger; returns the rows it changed."""
        if not self.is_postgres:
            return tamper(self.path, sql)
        # psql prints the command tag last: "UPDATE 1", "INSERT 0 1", "DROP TABLE".
        tag = self._psql(sql, quiet=False).split()[-1]
        return int(tag) if tag.isdigit() else 0

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.is_postgres:
            return rows(self.path, sql)
        out = self._psql(f"SELECT json_agg(q) FROM ({sql}) q", quiet=True)
        # Each row is an object in column order; pairs keep repeated names.
        records = json.loads(out or "null", object_pairs_hook=list) or []
        return [
            tuple(
                bytes.fromhex(v[2:]) if isinstance(v, str) and v.startswith("\\x") else v
                for _, v in record
            )
            for record in records
        ]


def rechain(ledger: AuditLedger, namespace: str) -> None:
    """Recomputes every digest and the head of ``namespace`` after an edit:
    what someone who rewrites the whole chain does."""
    digest = bytes(32)
    position = 0
    statements = []
    for row in ledger.rows(
        f"SELECT id, chain_position, {COLUMNS} FROM usage_events "
        f"WHERE namespace = '{namespace}' ORDER BY chain_position"
    ):
        fields = dict(zip(KEYS, row[2:], strict=True))
        digest = hashlib.sha256(digest + payload(fields)).digest()
        position = row[1]
        statements.append(
            f"UPDATE usage_events SET chain_digest = {ledger.blob(digest)} WHERE id = {row[0]}"
        )
    statements.append(
        f"UPDATE chain_heads SET position = {position}, digest = {ledger.blob(digest)} "
        f"WHERE namespace = '{namespace}'"
    )
    for statement in statements:
        ledger.tamper(statement)
