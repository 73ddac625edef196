"""The command line through click's runner, on a real SQLite ledger seeded
with known events: every figure it prints is checked against the store."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw
from click.testing import CliRunner
from operator_helpers import KEYS_TOML, known_events, seed
from usagewarden.cli import cli, main
from usagewarden.cli._ledger_access import describe
from usagewarden.cli._times import point_in_time, zone

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory, now: dt.datetime) -> Path:
    path = tmp_path_factory.mktemp("cli") / "usage.db"
    seed(path, known_events(now))
    return path


@pytest.fixture
def store(ledger: Path) -> Any:
    with uw.SQLiteStore(ledger) as opened:
        yield opened


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    """``usagewarden ARGS`` as ``main`` runs it: exit code, stdout, stderr."""
    runner = CliRunner()
    return runner.invoke(_Main(), list(args), env=env, catch_exceptions=False)


class _Main:
    """Adapts ``main`` (which returns the exit code) to CliRunner."""

    name = "usagewarden"

    def main(self, args: list[str], prog_name: str | None = None, **_: Any) -> None:
        raise SystemExit(main(args))


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = run(*args, env=env)
    assert result.exit_code == 0, result.stderr
    return str(result.stdout)


def failure(*args: str, code: int = 1, env: dict[str, str] | None = None) -> str:
    result = run(*args, env=env)
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("usagewarden: error: ")
    return lines[0]


def totals(aggregate: uw.Aggregate) -> dict[str, Any]:
    values = aggregate.to_dict()
    values.pop("group")
    return values


# --- report ---------------------------------------------------------------------------------


def test_report_summary_is_the_store_summary(ledger: Path, store: Any) -> None:
    shown = json.loads(ok("report", "--db", str(ledger), "--format", "json"))
    assert shown == totals(store.summary())


@pytest.mark.parametrize("group_by", ["agent", "consumer", "model", "namespace", "action"])
def test_report_groups_are_the_store_aggregates(ledger: Path, store: Any, group_by: str) -> None:
    shown = json.loads(
        ok("report", "--db", str(ledger), "--group-by", group_by, "--format", "json")
    )
    assert shown["group_by"] == group_by
    assert shown["groups"] == [row.to_dict() for row in store.aggregate(group_by)]


@pytest.mark.parametrize("tz", ["UTC", "Asia/Tokyo", "America/New_York"])
def test_report_days_in_a_time_zone(ledger: Path, store: Any, tz: str) -> None:
    shown = json.loads(
        ok("report", "--db", str(ledger), "--group-by", "day", "--tz", tz, "--format", "json")
    )
    assert shown["tz"] == tz
    assert shown["groups"] == [row.to_dict() for row in store.aggregate("day", tz=tz)]


@pytest.mark.parametrize("since", ["7d", "36h", "90m", "2w"])
def test_since_a_duration_counts_the_events_after_it(
    ledger: Path, store: Any, now: dt.datetime, since: str
) -> None:
    shown = json.loads(ok("report", "--db", str(ledger), "--since", since, "--format", "json"))
    amount, unit = float(since[:-1]), since[-1]
    seconds = amount * {"m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    start = now - dt.timedelta(seconds=seconds)
    # The command reads the clock a moment after `now`; every seeded event is
    # half a minute away from any whole minute, so the count is exact.
    expected = [e for e in store.query() if e.timestamp >= start]
    assert shown["events"] == len(expected)
    assert 0 < shown["events"] < store.summary().events


def test_since_and_until_dates_cover_whole_days_in_the_zone(
    ledger: Path, store: Any, now: dt.datetime
) -> None:
    tokyo = zone("Asia/Tokyo")
    first = (now - dt.timedelta(days=6)).astimezone(tokyo).date()
    last = (now - dt.timedelta(days=2)).astimezone(tokyo).date()
    shown = json.loads(
        ok(
            "report",
            "--db",
            str(ledger),
            "--since",
            first.isoformat(),
            "--until",
            last.isoformat(),
            "--tz",
            "Asia/Tokyo",
            "--format",
            "json",
        )
    )
    inside = [e for e in store.query() if first <= e.timestamp.astimezone(tokyo).date() <= last]
    assert shown["events"] == len(inside) > 0


def test_filters_narrow_the_report(ledger: Path, store: Any) -> None:
    args = ["--agent", "support-bot", "--model", "gpt-4o", "--namespace", "team-a"]
    shown = json.loads(ok("report", "--db", str(ledger), *args, "--format", "json"))
    filters = {"agent_id": "support-bot", "model": "gpt-4o", "namespace": "team-a"}
    assert shown == totals(store.summary(**filters))
    assert 0 < shown["events"] < store.summary().events


def test_report_csv_and_table(ledger: Path, store: Any) -> None:
    text = ok("report", "--db", str(ledger), "--group-by", "model", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    expected = {row.group: row for row in store.aggregate("model")}
    assert {row["group"] for row in rows} == set(expected)
    for row in rows:
        assert int(row["events"]) == expected[row["group"]].events
        assert float(row["cost"]) == pytest.approx(expected[row["group"]].cost, abs=1e-9)
    table = ok("report", "--db", str(ledger), "--group-by", "model", "--sort", "cost")
    ordered = sorted(expected.values(), key=lambda r: -(r.cost or 0))
    positions = [table.index(row.group or "—") for row in ordered]
    assert positions == sorted(positions)
    for row in ordered:
        assert f"${row.cost:,.6f}" in table
        assert f"{row.total_tokens:,}" in table


def test_report_top_keeps_the_largest(ledger: Path, store: Any) -> None:
    shown = json.loads(
        ok(
            "report",
            "--db",
            str(ledger),
            "--group-by",
            "agent",
            "--sort",
            "events",
            "--top",
            "2",
            "--format",
            "json",
        )
    )
    largest = sorted(store.aggregate("agent"), key=lambda r: -r.events)[:2]
    assert [g["group"] for g in shown["groups"]] == [r.group for r in largest]


def test_db_comes_from_the_group_option_or_the_environment(ledger: Path, store: Any) -> None:
    expected = totals(store.summary())
    assert json.loads(ok("--db", str(ledger), "report", "--format", "json")) == expected
    via_env = ok("report", "--format", "json", env={"USAGEWARDEN_DB": str(ledger)})
    assert json.loads(via_env) == expected
    url = ok("report", "--db", f"sqlite:///{ledger}", "--format", "json")
    assert json.loads(url) == expected


# --- export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_export_to_a_file_is_the_store_export(
    ledger: Path, store: Any, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"events.{fmt}"
    result = run("export", str(out), "--db", str(ledger), "--agent", "triage-bot")
    assert result.exit_code == 0, result.stderr
    reference = tmp_path / f"reference.{fmt}"
    count = store.export(reference, format=fmt, agent_id="triage-bot")
    assert out.read_bytes() == reference.read_bytes()
    assert f"{count:,} events written" in result.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_to_stdout_with_a_limit(ledger: Path, store: Any) -> None:
    text = ok("export", "--db", str(ledger), "--format", "ndjson", "--limit", "7")
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["request_id"] for line in lines] == [e.request_id for e in store.query(limit=7)]


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_export_with_a_progress_bar_writes_the_same_bytes(
    ledger: Path, store: Any, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / "with-progress.out"
    result = run("export", str(out), "--db", str(ledger), "--format", fmt, "--progress")
    assert result.exit_code == 0, result.stderr
    reference = tmp_path / "reference.out"
    store.export(reference, format=fmt)
    assert out.read_bytes() == reference.read_bytes()


# --- purge, stats, migrate ------------------------------------------------------------------


def test_purge_shows_first_and_deletes_with_yes(tmp_path: Path, now: dt.datetime) -> None:
    path = tmp_path / "purge.db"
    seed(path, known_events(now, days=12, per_day=5))
    with uw.SQLiteStore(path) as store:
        cutoff = now - dt.timedelta(days=8)
        old = [e for e in store.query() if e.timestamp < cutoff]
        total = store.summary().events
    assert old
    shown = json.loads(ok("purge", "--db", str(path), "--older-than", "8d", "--format", "json"))
    assert shown["events"] == len(old)
    assert sum(n["events"] for n in shown["namespaces"]) == len(old)
    assert shown["deleted"] == 0
    table = ok("purge", "--db", str(path), "--older-than", "8d")
    assert f"{len(old):,} events would be deleted" in table
    assert "--yes" in table
    with uw.SQLiteStore(path) as store:
        assert store.summary().events == total
    done = json.loads(
        ok("purge", "--db", str(path), "--older-than", "8d", "--yes", "--format", "json")
    )
    assert done["deleted"] == len(old)
    with uw.SQLiteStore(path) as store:
        assert store.summary().events == total - len(old)
        assert all(e.timestamp >= cutoff for e in store.query())


def test_purge_needs_a_positive_duration(ledger: Path) -> None:
    line = failure("purge", "--db", str(ledger), "--older-than", "soon", code=2)
    assert "--older-than" in line


def test_stats(ledger: Path, store: Any) -> None:
    shown = json.loads(ok("stats", "--db", str(ledger), "--format", "json"))
    health = store.stats()
    summary = store.summary()
    assert shown["events"] == health.events == summary.events
    assert shown["oldest"] == health.oldest.isoformat()
    assert shown["newest"] == health.newest.isoformat()
    assert shown["cost"] == summary.cost
    assert shown["unique_agents"] == summary.unique_agents
    assert f"{health.events:,}" in ok("stats", "--db", str(ledger))


def test_migrate_on_sqlite_says_it_migrates_on_open(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    text = ok("migrate", "--db", str(path))
    assert "migrates itself whenever it is opened" in text
    assert "was created" in text
    with uw.SQLiteStore(path) as store:
        assert store.stats().events == 0
    assert "holds 0 events" in ok("migrate", "--db", str(path))


# --- budgets --------------------------------------------------------------------------------

BUDGETS_TOML = """
[[budgets]]
name = "org"
limit_usd = 1.0
period = "total"

[[budgets]]
name = "per-agent"
limit_usd = 0.05
scope = "agent"
period = "total"
thresholds = [0.5, 1.0]
"""


def test_budgets_status_reads_the_spend_from_the_ledger(
    ledger: Path, store: Any, tmp_path: Path
) -> None:
    config = tmp_path / "budgets.toml"
    config.write_text(BUDGETS_TOML)
    before = store.summary().events
    shown = json.loads(
        ok("budgets", "status", "--db", str(ledger), "--config", str(config), "--format", "json")
    )
    rows = {(row["budget"], row["scope_value"]): row for row in shown["budgets"]}
    org = rows.pop(("org", ""))
    assert org["spent_usd"] == pytest.approx(store.summary().cost, abs=1e-9)
    assert org["limit_usd"] == 1.0
    agents = {row.group: row for row in store.aggregate("agent")}
    assert set(rows) == {("per-agent", name) for name in agents}
    for (_, agent), row in rows.items():
        spent = agents[agent].cost
        assert row["spent_usd"] == pytest.approx(spent, abs=1e-9)
        assert row["thresholds_crossed"] == [t for t in (0.5, 1.0) if spent >= t * 0.05]
    # Reading a status records nothing (no alert, no event).
    assert store.summary().events == before
    table = ok("budgets", "status", "--db", str(ledger), "--config", str(config))
    assert "per-agent" in table and "support-bot" in table


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[[budgets]]\nname = 'x'\n", "needs a name and a limit_usd"),
        ("[[budgets]]\nname = 'x'\nlimit_usd = 1\ncolour = 'red'\n", "unknown key(s) ['colour']"),
        ("[[budgets]]\nname = 'x'\nlimit_usd = 1\nperiod = 'fortnightly'\n", "budget 'x'"),
        ("budgets = 3\n", "holds no [[budgets]] table"),
        ("not toml [", "is not valid TOML"),
    ],
)
def test_a_bad_budgets_file_is_one_line(
    ledger: Path, tmp_path: Path, content: str, message: str
) -> None:
    config = tmp_path / "budgets.toml"
    config.write_text(content)
    line = failure("budgets", "status", "--db", str(ledger), "--config", str(config))
    assert message in line
    assert str(config) in line


# --- errors and the command line itself ------------------------------------------------------


def test_version() -> None:
    assert ok("--version").strip() == f"usagewarden, version {uw.__version__}"


def test_no_command_prints_the_help() -> None:
    text = ok()
    for command in (
        "report", "export", "purge", "stats", "budgets", "grants", "serve", "migrate", "demo"
    ):  # fmt: skip
        assert command in text


def test_a_missing_ledger_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    line = failure("report", "--db", str(missing))
    assert "no ledger at" in line and "typo.db" in line
    assert not missing.exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["report", "--since", "last tuesday"], 2, "--since"),
        (["report", "--tz", "Mars/Olympus"], 2, "IANA time zone"),
        (["report", "--since", "1d", "--until", "3d"], 2, "--since is after --until"),
        (["report", "--group-by", "planet"], 2, "--group-by"),
        (["report", "--format", "xml"], 2, "--format"),
        (["frobnicate"], 2, "No such command"),
        (["report", "--db", "sqlite:///"], 1, "names no file"),
        (["report", "--db", "mysql://db/usage"], 1, "neither a path nor"),
    ],
)
def test_bad_arguments_are_one_line(ledger: Path, args: list[str], code: int, message: str) -> None:
    if "--db" not in args:
        args = [*args, "--db", str(ledger)]
    assert message in failure(*args, code=code)


def test_an_unreachable_postgres_is_one_line_without_its_password() -> None:
    # Port 1 of 127.0.0.1: nothing listens there.
    line = failure("stats", "--db", "postgresql://ops:s3cret-pw@127.0.0.1:1/usage")
    if hasattr(uw, "open_store"):
        assert "cannot open postgresql://ops@127.0.0.1:1/usage" in line
    else:
        assert "needs the PostgreSQL backend" in line
    assert "s3cret-pw" not in line


@pytest.mark.parametrize(
    "db",
    [
        "postgresql://ops@127.0.0.1:1/usage?password=s3cret-pw",
        "postgresql://ops:s3cret%2Dpw@127.0.0.1:1/usage?sslmode=disable",
        "host=127.0.0.1 port=1 user=ops password='s3cret-pw' dbname=usage",
    ],
)
def test_a_password_in_a_query_or_a_dsn_is_never_shown(db: str) -> None:
    line = failure("stats", "--db", db)
    assert "s3cret" not in line
    assert "s3cret" not in describe(db)


def test_point_in_time_parses_what_the_help_promises() -> None:
    now = dt.datetime(2026, 3, 29, 12, 0, tzinfo=UTC)
    paris = zone("Europe/Paris")
    assert point_in_time("12h", paris, option="--since", now=now) == now - dt.timedelta(hours=12)
    assert point_in_time("now", paris, option="--since", now=now) == now
    # 29 March 2026 is 23 hours long in Paris (summer time starts).
    start = point_in_time("2026-03-29", paris, option="--since", now=now)
    end = point_in_time("2026-03-29", paris, option="--until", end_of_day=True, now=now)
    assert start.astimezone(UTC) == dt.datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    length = end.astimezone(UTC) - start.astimezone(UTC)
    assert length == dt.timedelta(hours=23) - dt.timedelta(microseconds=1)
    given = point_in_time("2026-03-01T08:30:00Z", paris, option="--since", now=now)
    assert given == dt.datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    local = point_in_time("2026-03-01T08:30", paris, option="--since", now=now)
    assert local.astimezone(UTC) == dt.datetime(2026, 3, 1, 7, 30, tzinfo=UTC)


def test_cli_is_a_click_group() -> None:
    # Host programs can embed it: `cli` is the click group `main` runs.
    assert set(cli.commands) == {
        "report",
        "export",
        "purge",
        "stats",
        "budgets",
        "grants",
        "serve",
        "migrate",
        "demo",
    }


# --- serve: what it refuses before starting --------------------------------------------------


def test_serve_refuses_to_start_without_keys(ledger: Path) -> None:
    line = failure("serve", "--db", str(ledger), env={"USAGEWARDEN_API_KEYS": ""})
    assert "without API keys" in line and "--allow-unauthenticated" in line


def test_serve_without_keys_only_on_loopback(ledger: Path) -> None:
    line = failure("serve", "--db", str(ledger), "--allow-unauthenticated", "--host", "0.0.0.0")
    assert "only on 127.0.0.1" in line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[[keys]]\nid = "a"\nkey = "short-secret"\nscopes = ["usage:read"]\n', "16 characters"),
        ('[[keys]]\nid = "a"\nkey = "0123456789abcdef-x"\nscopes = ["usage:all"]\n', "scopes"),
        ('[[keys]]\nid = "a"\nkey_env = "UW_TEST_UNSET_KEY"\n', "UW_TEST_UNSET_KEY is not set"),
        ('{"0123456789abcdef-secret": "team-a"}', "must map to a table"),
        ("[[keys]\n", "neither valid JSON nor valid TOML"),
    ],
)
def test_a_bad_keys_file_is_named_without_its_secret(
    ledger: Path, tmp_path: Path, content: str, message: str
) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(content)
    line = failure("serve", "--db", str(ledger), "--keys", str(keys))
    assert message in line
    for secret in ("short-secret", "0123456789abcdef"):
        assert secret not in line


def test_keys_load_from_toml_json_and_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    from usagewarden.cli._keys import load_keys

    toml_file = tmp_path / "keys.toml"
    toml_file.write_text(KEYS_TOML)
    from_toml = load_keys(toml_file)
    assert {p.id: (p.namespace, sorted(p.scopes)) for p in from_toml.values()} == {
        "viewer": ("team-a", ["usage:read"]),
        "operator": ("team-a", ["usage:admin", "usage:all-namespaces", "usage:read"]),
        "outsider": ("team-b", ["usage:read"]),
    }
    document = {
        key: {"id": p.id, "namespace": p.namespace, "scopes": sorted(p.scopes)}
        for key, p in from_toml.items()
    }
    json_file = tmp_path / "keys.json"
    json_file.write_text(json.dumps(document))
    assert load_keys(json_file) == from_toml
    monkeypatch.setenv("USAGEWARDEN_API_KEYS", json.dumps(document))
    assert load_keys(None) == from_toml


# --- stored budgets -------------------------------------------------------------------------


def stored_json(*args: str) -> Any:
    return json.loads(ok("budgets", *args, "--format", "json"))["budgets"]


def test_stored_budgets_are_created_listed_changed_and_deleted(tmp_path: Path) -> None:
    db = str(tmp_path / "budgets.db")
    uw.SQLiteStore(db).close()
    [made] = stored_json(
        "create", "team-daily", "--db", db, "--namespace", "team-a", "--limit-usd", "5",
        "--period", "daily", "--thresholds", "0.5,1", "--tz", "Europe/Paris",
    )  # fmt: skip
    assert (made["namespace"], made["limit_usd"], made["period"], made["tz"]) == (
        "team-a",
        5.0,
        "daily",
        "Europe/Paris",
    )
    assert made["thresholds"] == [0.5, 1.0]
    stored_json("create", "rolling", "--db", db, "--limit-usd", "1", "--period", "3600")
    listed = stored_json("list", "--db", db)
    assert [(b["namespace"], b["name"]) for b in listed] == [
        ("default", "rolling"),
        ("team-a", "team-daily"),
    ]
    assert [b["name"] for b in stored_json("list", "--db", db, "--namespace", "team-a")] == [
        "team-daily"
    ]
    [updated] = stored_json(
        "update", "team-daily", "--db", db, "--namespace", "team-a", "--limit-usd", "9",
        "--scope", "agent", "--match", "bot", "--action", "downgrade", "--downgrade-to", "small",
    )  # fmt: skip
    # Every field is replaced: the period is the default again.
    assert (updated["limit_usd"], updated["scope"], updated["downgrade_to"]) == (
        9.0,
        "agent",
        "small",
    )
    assert (updated["period"], updated["tz"]) == ("monthly", "UTC")
    [reset] = stored_json("reset", "team-daily", "--db", db, "--namespace", "team-a")
    assert reset["reset_at"] is not None
    [deleted] = stored_json("delete", "rolling", "--db", db)
    assert deleted["deleted_at"] is not None
    assert [b["name"] for b in stored_json("list", "--db", db)] == ["team-daily"]
    assert [b["name"] for b in stored_json("list", "--db", db, "--include-deleted")] == [
        "rolling",
        "team-daily",
    ]
    # What the commands wrote is what the store holds.
    with uw.SQLiteStore(db) as store:
        record = store.get_budget("team-daily", namespace="team-a")
        assert record.budget.limit_usd == 9.0 and record.budget.match == "bot"
        assert record.to_dict()["reset_at"].isoformat() == reset["reset_at"]
    table = ok("budgets", "list", "--db", db)
    assert "team-daily" in table and "$9.00" in table
    header, row = ok("budgets", "list", "--db", db, "--format", "csv").splitlines()
    assert header.startswith("namespace,name,limit_usd,period")
    assert row.startswith("team-a,team-daily,9.0,monthly,agent,bot,downgrade,")


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (
            ["create", "b", "--limit-usd", "1"],
            "already exists in namespace 'default'|\"default\"",
            1,
        ),
        (["update", "nope", "--limit-usd", "1"], 'name: no budget "nope"', 1),
        (["delete", "nope"], 'name: no budget "nope"', 1),
        (["reset", "nope"], 'name: no budget "nope"', 1),
        (["create", "bad name", "--limit-usd", "1"], "name: may hold only", 1),
        (["create", "c", "--limit-usd", "1", "--tz", "Mars/Olympus"], "budget 'c': tz", 1),
        (["create", "c", "--limit-usd", "1", "--period", "fortnight"], "--period", 2),
        (["create", "c", "--limit-usd", "1", "--thresholds", "half"], "--thresholds", 2),
        (["create", "c", "--limit-usd", "-1"], "budget 'c': limit_usd", 1),
        (["create", "c"], "--limit-usd", 2),
    ],
)
def test_stored_budget_errors_are_one_line(
    tmp_path: Path, args: list[str], message: str, code: int
) -> None:
    db = str(tmp_path / "budgets.db")
    with uw.SQLiteStore(db) as store:
        store.create_budget(uw.Budget("b", 1.0))
    line = failure("budgets", *args, "--db", db, code=code)
    assert any(part in line for part in message.split("|")), line
    with uw.SQLiteStore(db) as store:
        assert [r.name for r in store.budgets(include_deleted=True)] == ["b"]


def test_stored_budget_commands_need_an_existing_ledger(tmp_path: Path) -> None:
    line = failure("budgets", "list", "--db", str(tmp_path / "missing.db"))
    assert "no ledger at" in line
    assert not (tmp_path / "missing.db").exists()


# --- grants (PostgreSQL row-level security) ---------------------------------------------------


def test_grants_add_list_and_remove_on_postgres(postgres_cluster: Any) -> None:
    database = postgres_cluster.new_schema()
    postgres_cluster.sql(f"CREATE DATABASE {database}")
    role = f"cli_{database}"
    postgres_cluster.sql(f'CREATE ROLE "{role}" LOGIN')
    db = postgres_cluster.dsn(database)
    assert json.loads(ok("grants", "list", "--db", db, "--format", "json")) == {"grants": []}
    assert ok("grants", "add", role, "team-a", "--db", db).strip() == f"{role} may read team-a"
    ok("grants", "add", role, "team-b", "--db", db)
    listed = json.loads(ok("grants", "list", "--db", db, "--format", "json"))
    assert listed == {
        "grants": [{"role": role, "namespace": "team-a"}, {"role": role, "namespace": "team-b"}]
    }
    with uw.PostgresStore(db) as owner:
        assert owner.namespace_grants() == [(role, "team-a"), (role, "team-b")]
    assert "may no longer read team-b" in ok("grants", "remove", role, "team-b", "--db", db)
    line = failure("grants", "remove", role, "team-b", "--db", db)
    assert f"{role} had no grant on team-b" in line
    line = failure("grants", "add", "nobody_has_this_role", "team-a", "--db", db)
    assert "role" in line and "nobody_has_this_role" in line
    assert "team-a" in ok("grants", "list", "--db", db)


def test_grants_on_sqlite_say_they_need_postgres(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    uw.SQLiteStore(path).close()
    line = failure("grants", "list", "--db", str(path))
    assert "not PostgreSQL" in line
