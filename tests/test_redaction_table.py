"""Redaction, table-driven: every case hides a unique marker inside a secret
(under a sensitive key in any spelling, in a header pair, in a URL, or shaped
like a provider key) and the marker must not appear in the event, the database
file, its write-ahead log before a checkpoint, any export or the HTTP API.
Harmless values, marked the same way, must survive unchanged."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import usagewarden as uw
from fastapi import FastAPI
from ledger_helpers import all_bytes, popen_python
from usagewarden.fastapi import Principal, api_key_auth, usage_router

Case = tuple[str, Callable[[str], dict[str, Any]]]


def under(key: str) -> Callable[[str], dict[str, Any]]:
    return lambda m: {key: f"uw-{m}-value"}


SECRET_KEYS = [
    "accessToken", "access_token", "AccessToken", "access-token", "clientSecret",
    "client-secret", "Client Secret", "refreshToken", "refresh_token", "idToken", "id_token",
    "privateKey", "private_key", "private-key", "api.key", "api key", "apiKey", "APIKey",
    "x-api-key", "X-Api-Key", "aws_secret_access_key", "AWS_SECRET_ACCESS_KEY",
    "awsSecretAccessKey", "secret_key", "secretKey", "auth", "jwt", "JWT", "passphrase",
    "Passphrase", "password", "Password", "passwd", "pwd", "cookie", "Cookie", "set-cookie",
    "Set-Cookie", "credentials", "credential", "session", "sessionId", "session_id",
    "authorization", "Authorization", "proxy-authorization", "token", "Token", "secret",
    "github_token", "slackBotToken", "csrfToken", "signing_key", "encryption.key",
    "aws_access_key_id", "db_password", "smtp.password",
]  # fmt: skip

PEM = "-----BEGIN "
SECRET_SHAPES: list[Case] = [
    ("header pair in a list", lambda m: {"headers": [["Authorization", f"Token {m}"]]}),
    ("one header pair", lambda m: {"headers": ["Authorization", f"Bearer {m}"]}),
    ("api key header pair", lambda m: {"headers": [["X-Api-Key", m]]}),
    ("cookie header pair", lambda m: {"headers": [["Cookie", f"sid={m}"]]}),
    ("nested header pairs", lambda m: {"h": [{"v": [["accept", "*/*"], ["authorization", m]]}]}),
    ("second bearer", lambda m: {"note": f"Bearer x, then Bearer {m}abcdefgh"}),
    ("bearer after a tab", lambda m: {"note": f"Bearer\t{m}abcdefgh"}),
    ("basic credentials", lambda m: {"note": f"Authorization: Basic {m}dXNlcjpw"}),
    ("token scheme", lambda m: {"note": f"sent Token {m}0123456789abcdef"}),
    ("access_token in a url", lambda m: {"url": f"https://x.test/cb?state=1&access_token={m}"}),
    ("api_key in a url", lambda m: {"url": f"https://x.test/v1?api_key={m}"}),
    ("key in a url", lambda m: {"url": f"https://maps.test/api?key={m}&q=1"}),
    ("token in a url", lambda m: {"url": f"wss://x.test/ws?token={m}"}),
    ("sig in a url", lambda m: {"url": f"https://blob.test/f?sv=1&sig={m}"}),
    ("userinfo in a url", lambda m: {"url": f"https://bob:{m}@x.test/path"}),
    ("dsn password", lambda m: {"target": f"postgresql://app:{m}@db.test:5432/prod"}),
    ("password in free text", lambda m: {"log": f"login password={m} ok"}),
    ("openai key", lambda m: {"k": f"sk-proj-{m}abcdefghijklmnop"}),
    ("anthropic key", lambda m: {"k": f"sk-ant-api03-{m}abcdefghijklmn"}),
    ("anthropic key in text", lambda m: {"log": f"key=sk-ant-api03-{m}abcdefgh region=us"}),
    ("aws key id", lambda m: {"k": f"AKIA{m.upper()}ABCDEFGHIJ"[:20]}),
    ("github classic token", lambda m: {"k": f"ghp_{m}abcdefghijklmnopqrstuv"}),
    ("github oauth token", lambda m: {"k": f"gho_{m}abcdefghijklmnopqrstuv"}),
    ("github fine-grained token", lambda m: {"k": f"github_pat_{m}abcdefghijklmnop"}),
    ("slack bot token", lambda m: {"k": f"xoxb-{m}-123456789"}),
    ("slack user token", lambda m: {"k": f"xoxp-{m}-123456789"}),
    ("slack refresh token", lambda m: {"k": f"xoxe-{m}-123456789"}),
    ("jwt", lambda m: {"k": f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ{m}fQ.c2lnbmF0dXJl"}),
    ("pem private key", lambda m: {"k": f"{PEM}PRIVATE KEY-----\nMII{m}\n-----END PRIVATE KEY"}),
    ("rsa private key", lambda m: {"k": f"{PEM}RSA PRIVATE KEY-----\n{m}\n-----END RSA"}),
    ("secret used as a key", lambda m: {"by_key": {f"sk-proj-{m}abcdefghijklmnop": 1}}),
    ("key in a list", lambda m: {"keys": ["ok", f"ghp_{m}abcdefghijklmnopqrstuv"]}),
    ("deep sensitive key", lambda m: {"a": {"b": [{"c": {"clientSecret": m}}]}}),
    ("subtree under a secret key", lambda m: {"credentials": {"user": "bob", "value": m}}),
]  # fmt: skip

BENIGN: list[Case] = [
    ("model", lambda m: {"model": f"gpt-4o-mini-{m}"}),
    ("max_tokens", lambda m: {"max_tokens": 1024, "note": m}),
    ("tokenizer", lambda m: {"tokenizer": f"cl100k_{m}"}),
    ("task id", lambda m: {"task": f"task-123-{m}"}),
    ("short sk", lambda m: {"label": "sk-short", "tag": m}),
    ("plain url", lambda m: {"url": f"https://example.test/a?page=2&q={m}"}),
    ("tokens in prose", lambda m: {"note": f"used 1024 tokens for {m}"}),
    ("author", lambda m: {"author": m}),
    ("session count", lambda m: {"session_count": 3, "label": m}),
    ("keyboard", lambda m: {"keyboard": m}),
    ("user at host", lambda m: {"url": f"https://example.test/{m}"}),
    ("token count", lambda m: {"token_count": 7, "tag": m}),
]  # fmt: skip

SECRET_CASES: list[Case] = [(f"key {k!r}", under(k)) for k in SECRET_KEYS] + SECRET_SHAPES


def marker(kind: str, index: int) -> str:
    return f"uw{kind}{index:03d}mark"


SECRETS = [(name, make(marker("secret", i))) for i, (name, make) in enumerate(SECRET_CASES)]
SECRET_MARKERS = [marker("secret", i) for i in range(len(SECRET_CASES))]
HARMLESS = [(name, make(marker("benign", i))) for i, (name, make) in enumerate(BENIGN)]
BENIGN_MARKERS = [marker("benign", i) for i in range(len(BENIGN))]


def test_the_table_has_at_least_80_cases() -> None:
    assert len(SECRET_CASES) + len(BENIGN) >= 80


def find_markers(data: str | bytes, markers: list[str]) -> list[str]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    lowered = text.lower()
    return [m for m in markers if m.lower() in lowered]


@pytest.mark.parametrize(("name", "metadata"), SECRETS, ids=[n for n, _ in SECRETS])
def test_the_secret_is_redacted_from_the_event(name: str, metadata: dict[str, Any]) -> None:
    stored = uw.UsageEvent("a", "c", metadata=metadata).metadata
    assert find_markers(json.dumps(stored), SECRET_MARKERS) == [], stored
    assert "[REDACTED]" in json.dumps(stored)


@pytest.mark.parametrize(("name", "metadata"), HARMLESS, ids=[n for n, _ in HARMLESS])
def test_a_harmless_value_is_kept(name: str, metadata: dict[str, Any]) -> None:
    assert uw.UsageEvent("a", "c", metadata=metadata).metadata == metadata


def all_events() -> list[uw.UsageEvent]:
    cases = [*SECRETS, *HARMLESS]
    return [
        uw.UsageEvent("a", "c", request_id=f"r{i}", metadata=m) for i, (_, m) in enumerate(cases)
    ]


def test_no_secret_reaches_the_database_or_any_export(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    store = uw.SQLiteStore(path)
    store.record_batch(all_events())
    store.flush()
    for fmt in ("csv", "json", "ndjson"):
        out = io.StringIO()
        store.export(out, format=fmt)
        assert find_markers(out.getvalue(), SECRET_MARKERS) == [], fmt
        assert find_markers(out.getvalue(), BENIGN_MARKERS) == BENIGN_MARKERS, fmt
        target = tmp_path / f"export.{fmt}"
        store.export(target, format=fmt)
        assert find_markers(target.read_bytes(), SECRET_MARKERS) == [], fmt
    store.close()
    data = all_bytes(path)
    assert find_markers(data, SECRET_MARKERS) == []
    assert find_markers(data, BENIGN_MARKERS) == BENIGN_MARKERS


def test_no_secret_reaches_the_wal_before_a_checkpoint(tmp_path: Path) -> None:
    """A child writes with commit durability and is killed: the WAL is as it
    stood, never checkpointed or truncated."""
    path = tmp_path / "ledger.db"
    cases = [m for _, m in [*SECRETS, *HARMLESS]]
    code = """
    store = uw.SQLiteStore(sys.argv[1], durability="commit")
    for i, meta in enumerate(json.loads(sys.argv[2])):
        store.record(uw.UsageEvent("a", "c", request_id=f"r{i}", metadata=meta))
    print("written", flush=True)
    time.sleep(60)
    """
    child = popen_python(code, path, json.dumps(cases))
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "written"
        assert Path(f"{path}-wal").stat().st_size > 0
    finally:
        child.kill()
        child.wait()
    data = all_bytes(path)
    assert find_markers(data, SECRET_MARKERS) == []
    assert find_markers(data, BENIGN_MARKERS) == BENIGN_MARKERS


async def test_no_secret_posted_over_http_is_stored_or_served(tmp_path: Path) -> None:
    key = "redaction-key-0123456789"
    principal = Principal("p", namespace="n", scopes=frozenset({"usage:read", "usage:write"}))
    store = uw.AsyncSQLiteStore(tmp_path / "http.db")
    app = FastAPI()
    app.include_router(usage_router(store, auth=api_key_auth({key: principal})))
    headers = {"Authorization": f"Bearer {key}"}
    bodies = [
        {"agent_id": "a", "consumer_id": "c", "request_id": f"h{i}", "metadata": m}
        for i, (_, m) in enumerate([*SECRETS, *HARMLESS])
    ]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        posted = await client.post("/usage/batch", json=bodies, headers=headers)
        assert posted.status_code == 201, posted.text
        served = await client.get("/usage", params={"limit": 1000}, headers=headers)
        assert served.status_code == 200
    assert find_markers(served.text, SECRET_MARKERS) == []
    assert find_markers(served.text, BENIGN_MARKERS) == BENIGN_MARKERS
    await store.close()
    assert find_markers(all_bytes(tmp_path / "http.db"), SECRET_MARKERS) == []
