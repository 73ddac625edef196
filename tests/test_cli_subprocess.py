"""The installed command line as an operator runs it: a child process, its
exit code, its stdout and its stderr; and ``usagewarden serve`` on a real
uvicorn on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import usagewarden as uw
from operator_helpers import (
    ADMIN_KEY,
    KEYS_TOML,
    OTHER_KEY,
    READ_KEY,
    cli_command,
    known_events,
    running_server,
    seed,
)

UTC = dt.timezone.utc
SCRIPT = Path(sys.executable).with_name("usagewarden")


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-subprocess") / "usage.db"
    seed(path, known_events(dt.datetime.now(UTC)))
    return path


def run(
    *args: str, command: list[str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("USAGEWARDEN_DB", None)
    return subprocess.run(
        [*(command or cli_command()), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        **kwargs,
    )


@pytest.mark.parametrize("command", [cli_command(), [str(SCRIPT)]], ids=["python -m", "script"])
def test_version(command: list[str]) -> None:
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed")
    done = run("--version", command=command)
    assert done.returncode == 0
    assert done.stdout.strip() == f"usagewarden, version {uw.__version__}"
    assert done.stderr == ""


def test_report_as_json_in_a_child_process(ledger: Path) -> None:
    done = run("report", "--db", str(ledger), "--group-by", "model", "--format", "json")
    assert done.returncode == 0, done.stderr
    with uw.SQLiteStore(ledger) as store:
        expected = [row.to_dict() for row in store.aggregate("model")]
    assert json.loads(done.stdout)["groups"] == expected


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["report", "--db", "/nonexistent/usage.db"], 1),
        (["report", "--since", "whenever"], 2),
        (["stats", "--db", "postgresql://u:pw@127.0.0.1:1/x"], 1),
        (["no-such-command"], 2),
    ],
)
def test_errors_are_one_line_and_an_exit_code(args: list[str], code: int, ledger: Path) -> None:
    if "--db" not in args:
        args = [*args, "--db", str(ledger)]
    done = run(*args)
    assert done.returncode == code
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("usagewarden: error: ")
    assert "Traceback" not in done.stderr


def test_export_into_a_closed_pipe_stops_quietly(ledger: Path) -> None:
    command = [*cli_command(), "export", "--db", str(ledger), "--format", "ndjson"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as p:
        assert p.stdout is not None and p.stderr is not None
        first = p.stdout.readline()
        p.stdout.close()
        errors = p.stderr.read().decode()
        code = p.wait(timeout=60)
    assert json.loads(first)["request_id"]
    assert "Traceback" not in errors
    assert code in (0, 1)


def test_demo_records_every_call(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    done = run("demo", "--agents", "2", "--calls", "2", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert "4 calls admitted" in done.stdout
    with uw.SQLiteStore(db) as store:
        assert store.summary().events == 4


# --- serve -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(ledger: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = tmp_path_factory.mktemp("serve")
    keys = directory / "keys.toml"
    keys.write_text(KEYS_TOML)
    budgets = directory / "budgets.toml"
    budgets.write_text(
        '[[budgets]]\nname = "team-a"\nlimit_usd = 2.0\nscope = "namespace"\n'
        'match = "team-a"\nperiod = "total"\n'
    )
    log = directory / "serve.log"
    with running_server(
        "--db",
        str(ledger),
        "--keys",
        str(keys),
        "--budgets",
        str(budgets),
        "--requests-per-minute",
        "1000",
        log=log,
    ) as base:
        yield base, log


@pytest.mark.slow
def test_serve_answers_the_usage_api_with_the_keys_of_the_file(ledger: Path, server: Any) -> None:
    base, _ = server
    with uw.SQLiteStore(ledger) as store:
        team_a = store.summary(namespace="team-a").to_dict()
        team_b = store.summary(namespace="team-b").to_dict()
    reader = httpx.get(f"{base}/usage/summary", headers={"X-API-Key": READ_KEY})
    assert reader.status_code == 200
    assert reader.json() == team_a
    outsider = httpx.get(f"{base}/usage/summary", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert outsider.json() == team_b
    assert httpx.get(f"{base}/usage/summary").status_code == 401
    assert httpx.get(f"{base}/usage/summary", headers={"X-API-Key": "x" * 20}).status_code == 401
    # A reader cannot export; the admin key of the namespace can.
    assert httpx.get(f"{base}/usage/export", headers={"X-API-Key": READ_KEY}).status_code == 403
    export = httpx.get(f"{base}/usage/export?format=ndjson", headers={"X-API-Key": ADMIN_KEY})
    assert export.status_code == 200
    assert len(export.text.splitlines()) == team_a["events"]


@pytest.mark.slow
def test_serve_shows_budgets_and_the_limiter(ledger: Path, server: Any) -> None:
    base, _ = server
    with uw.SQLiteStore(ledger) as store:
        spent = store.summary(namespace="team-a").cost
    budgets = httpx.get(f"{base}/usage/budgets", headers={"X-API-Key": READ_KEY}).json()
    [row] = budgets["budgets"]
    assert (row["budget"], row["scope_value"], row["limit_usd"]) == ("team-a", "team-a", 2.0)
    assert row["spent_usd"] == pytest.approx(spent, abs=1e-9)
    limiter = httpx.get(f"{base}/usage/limiter", headers={"X-API-Key": ADMIN_KEY}).json()
    assert limiter["attached"] is True
    assert {k["key"] for k in limiter["keys"]} == {"viewer", "operator", "outsider"}
    # A reader sees only the window of its own key.
    mine = httpx.get(f"{base}/usage/limiter", headers={"X-API-Key": READ_KEY}).json()
    [key] = mine["keys"]
    assert key["key"] == "viewer"
    [limit] = key["limits"]
    assert limit["amount"] == 1000 and limit["dimension"] == "requests"
    assert limit["used"] >= 3  # the requests this key made above were counted


@pytest.mark.slow
def test_serve_dashboard_page_holds_no_secret(server: Any) -> None:
    base, log = server
    page = httpx.get(base + "/")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    for key in (READ_KEY, ADMIN_KEY, OTHER_KEY):
        assert key not in page.text
        assert key not in log.read_text()
    assert 'src="http' not in page.text and 'href="http' not in page.text
    bundle = httpx.get(base + "/static/plotly.min.js")
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("text/javascript")


@pytest.mark.slow
def test_serve_without_keys_listens_on_loopback_only(ledger: Path, tmp_path: Path) -> None:
    with running_server(
        "--db",
        str(ledger),
        "--allow-unauthenticated",
        log=tmp_path / "open.log",
        env={"USAGEWARDEN_API_KEYS": "", "USAGEWARDEN_KEYS_FILE": ""},
    ) as base:
        assert base.startswith("http://127.0.0.1:")
        summary = httpx.get(f"{base}/usage/summary")
        assert summary.status_code == 200
        with uw.SQLiteStore(ledger) as store:
            assert summary.json()["events"] == store.summary().events
    assert "WITHOUT authentication" in (tmp_path / "open.log").read_text()
