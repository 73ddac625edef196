"""Row-level security by namespace on PostgreSQL: a role granted a namespace
reads that one only — through the store, and with raw SQL (psql) too."""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import usagewarden as uw
from ledger_helpers import T0

NAMESPACES = ("team-a", "team-b", "team-c")
EACH = 40


def events_of(namespace: str) -> list[uw.UsageEvent]:
    # Spread over three hours, so reads use the pre-aggregated totals and the events.
    return [
        uw.UsageEvent(
            f"agent-{i % 3}",
            "c",
            namespace=namespace,
            request_id=f"{namespace}-{i}",
            tokens_in=i,
            cost=0.001,
            timestamp=T0 + dt.timedelta(minutes=4 * i + 1),
        )
        for i in range(EACH)
    ]


def totals(rows: list[uw.Aggregate]) -> list[tuple[Any, ...]]:
    return [(a.group, a.events, a.total_tokens, a.cost, a.unique_consumers) for a in rows]


class Ledger:
    """One schema written by its owner, and login roles to read it with."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.schema = cluster.new_schema()
        self.owner = uw.PostgresStore(cluster.dsn(), schema=self.schema, durability="commit")
        self.roles: list[str] = []

    def role(self) -> str:
        name = f"reader_{uuid.uuid4().hex[:10]}"
        self.cluster.sql(f'CREATE ROLE "{name}" LOGIN')
        self.roles.append(name)
        return name

    def dsn(self, role: str) -> str:
        return f"postgresql://{role}@127.0.0.1:{self.cluster.port}/postgres"

    def reader(self, role: str, **options: Any) -> uw.PostgresStore:
        return uw.PostgresStore(self.dsn(role), schema=self.schema, row_security=True, **options)

    def psql(self, role: str, statement: str) -> subprocess.CompletedProcess[str]:
        """``statement`` as ``role`` with psql: what anyone holding its connection can run."""
        return self.cluster.run(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.cluster.socket_dir), "-p", str(self.cluster.port),
            "-U", role, "-d", "postgres", "-c", statement,
            check=False,
        )  # fmt: skip

    def close(self) -> None:
        self.owner.close()
        for name in self.roles:
            self.cluster.sql(f'DROP OWNED BY "{name}"; DROP ROLE "{name}"')


@pytest.fixture
def ledger(postgres_cluster: Any) -> Iterator[Ledger]:
    db = Ledger(postgres_cluster)
    for namespace in NAMESPACES:
        db.owner.record_batch(events_of(namespace))
    yield db
    db.close()


def test_a_role_granted_one_namespace_reads_only_that_one(ledger: Ledger) -> None:
    role = ledger.role()
    ledger.owner.grant_namespace(role, "team-a")
    assert ledger.owner.namespace_grants() == [(role, "team-a")]
    with ledger.reader(role) as reader:
        assert {e.namespace for e in reader.query()} == {"team-a"}
        assert len(reader.query()) == EACH
        assert reader.query(namespace="team-b") == [], "another namespace reads as empty"
        assert reader.summary(namespace="team-b").events == 0
        assert reader.summary().events == EACH
        assert [a.group for a in reader.aggregate("namespace")] == ["team-a"]
        owners = ledger.owner.aggregate("agent", namespace="team-a")
        assert totals(reader.aggregate("agent")) == totals(owners), "the owner's totals"
        assert reader.agents() == ledger.owner.agents(namespace="team-a")
        page, _ = reader.page(limit=5, namespace="team-b")
        assert page == []
    # The owner is not bound by the policies.
    assert {e.namespace for e in ledger.owner.query()} == set(NAMESPACES)


def test_raw_sql_cannot_read_around_the_grant(ledger: Ledger) -> None:
    role = ledger.role()
    ledger.owner.grant_namespace(role, "team-a")
    s = ledger.schema
    count = f"SELECT count(*) FROM {s}.usage_events"

    def scalar(statement: str) -> str:
        done = ledger.psql(role, statement)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert scalar(count) == str(EACH)
    assert scalar(f"SET usagewarden.namespace = 'team-b'; {count}") == "0", "a setting is no grant"
    assert scalar(f"SET usagewarden.namespace = 'team-a'; {count}") == str(EACH)
    assert scalar(f"SELECT count(*) FROM {s}.usage_rollup WHERE namespace <> 'team-a'") == "0"
    assert scalar(f"SELECT count(*) FROM {s}.request_keys WHERE namespace <> 'team-a'") == "0"
    assert scalar(f"SELECT count(DISTINCT namespace) FROM {s}.namespace_grants") == "1"
    # Around the policies: a partition, a write to the grants, turning the policies off.
    partition = ledger.cluster.sql(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = '{s}' AND c.relispartition AND c.relkind = 'r' "
        "AND c.relname LIKE 'usage_events_p%' LIMIT 1"
    )
    for statement in [
        f"SELECT count(*) FROM {s}.{partition}",
        f"INSERT INTO {s}.namespace_grants VALUES (current_user, 'team-b')",
        f"ALTER TABLE {s}.usage_events DISABLE ROW LEVEL SECURITY",
        f"DELETE FROM {s}.usage_events",
        f"SET row_security = off; {count}",
    ]:
        done = ledger.psql(role, statement)
        assert done.returncode != 0, statement
        assert (
            "permission denied" in done.stderr
            or "must be owner" in done.stderr
            or ("row-level security" in done.stderr)
        ), done.stderr
    assert scalar(count) == str(EACH), "nothing changed"


def test_a_role_granted_several_reads_one_at_a_time_or_all(ledger: Ledger) -> None:
    role = ledger.role()
    ledger.owner.grant_namespace(role, "team-a")
    ledger.owner.grant_namespace(role, "team-b")
    ledger.owner.grant_namespace(role, "team-b")  # twice is once
    assert ledger.owner.namespace_grants() == [(role, "team-a"), (role, "team-b")]
    with ledger.reader(role) as reader:
        assert reader.summary().events == 2 * EACH
        assert {e.namespace for e in reader.query(namespace="team-b")} == {"team-b"}
        assert reader.query(namespace="team-c") == []
    assert ledger.owner.revoke_namespace(role, "team-b") is True
    assert ledger.owner.revoke_namespace(role, "team-b") is False
    with ledger.reader(role) as reader:
        assert reader.summary().events == EACH
        assert reader.query(namespace="team-b") == []


def test_a_role_with_no_grant_reads_nothing(ledger: Ledger) -> None:
    granted, other = ledger.role(), ledger.role()
    ledger.owner.grant_namespace(granted, "team-a")
    ledger.cluster.sql(f'GRANT USAGE ON SCHEMA {ledger.schema} TO "{other}"')
    ledger.cluster.sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA {ledger.schema} TO "{other}"')
    done = ledger.psql(other, f"SELECT count(*) FROM {ledger.schema}.usage_events")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", "select on the table is not enough"


def test_tables_added_by_later_migrations_are_protected_too(ledger: Ledger) -> None:
    role = ledger.role()
    ledger.owner.grant_namespace(role, "team-a")
    protected = ledger.cluster.sql(
        "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'namespace' "
        f"WHERE n.nspname = '{ledger.schema}' AND NOT c.relispartition AND c.relkind IN ('r', 'p') "
        "AND NOT c.relrowsecurity"
    )
    assert protected == "", f"every table with a namespace has row security: {protected}"


def test_the_usage_api_over_a_reader_store_is_bound_by_the_grant(ledger: Ledger) -> None:
    pytest.importorskip("fastapi")
    import httpx
    from fastapi import FastAPI
    from http_helpers import serving
    from usagewarden.fastapi import SCOPE_READ, Principal, api_key_auth, usage_router

    role = ledger.role()
    ledger.owner.grant_namespace(role, "team-a")
    keys = {
        "key-a-0123456789abcdef": Principal("a", "team-a", {SCOPE_READ}),
        "key-b-0123456789abcdef": Principal("b", "team-b", {SCOPE_READ}),
    }
    reader = uw.AsyncPostgresStore(ledger.dsn(role), schema=ledger.schema, row_security=True)
    app = FastAPI()
    app.include_router(usage_router(reader, auth=api_key_auth(keys)))
    with serving(app) as (host, port):

        def events(key: str) -> int:
            response = httpx.get(
                f"http://{host}:{port}/usage/summary", headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 200, response.text
            return int(response.json()["events"])

        assert events("key-a-0123456789abcdef") == EACH
        # The database itself withholds team-b from this role, whatever the app asks.
        assert events("key-b-0123456789abcdef") == 0
    reader.blocking().close()


@pytest.mark.parametrize(
    ("role", "namespace", "message"),
    [
        ("no_such_role_anywhere", "team-a", "role"),
        ("", "team-a", "role"),
        ("postgres", "", "namespace"),
        ("postgres", "x" * 300, "namespace"),
    ],
)
def test_bad_grants_name_the_argument_and_change_nothing(
    ledger: Ledger, role: str, namespace: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ledger.owner.grant_namespace(role, namespace)
    assert ledger.owner.namespace_grants() == []
    with pytest.raises(TypeError, match="role"):
        ledger.owner.grant_namespace(3, "team-a")  # type: ignore[arg-type]


def test_a_sqlite_store_has_no_grants(tmp_path: Any) -> None:
    with uw.SQLiteStore(tmp_path / "l.db") as store:
        assert not hasattr(store, "grant_namespace")


def test_tables_a_migration_adds_are_readable_by_roles_granted_before(ledger: Ledger) -> None:
    """An upgrade that adds tables (here the calendar and pair totals, made
    again) gives the roles granted before it read access to them."""
    role = ledger.role()
    ledger.owner.grant_namespace(role, "team-a")
    s = ledger.schema
    ledger.owner.close()
    ledger.cluster.sql(
        f"DROP TABLE {s}.usage_hourly_model; DROP TABLE {s}.usage_presence; "
        f"DROP TABLE {s}.usage_hourly_pair; DROP TABLE {s}.usage_daily_pair; "
        f"DELETE FROM {s}.schema_version WHERE version >= 7"
    )
    ledger.owner = uw.PostgresStore(ledger.cluster.dsn(), schema=s, durability="commit")
    owner = ledger.owner
    with ledger.reader(role) as reader:
        assert totals([reader.summary()]) == totals([owner.summary(namespace="team-a")])
        assert totals(reader.aggregate("agent")) == totals(
            owner.aggregate("agent", namespace="team-a")
        )
        assert totals(reader.aggregate("day")) == totals(owner.aggregate("day", namespace="team-a"))
        assert reader.summary(namespace="team-b").events == 0
