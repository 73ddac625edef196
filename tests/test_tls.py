"""TLS to both shared engines, on real servers that speak it: a PostgreSQL
cluster with ``ssl=on`` and a redis-server whose only port is TLS, both with
a throwaway CA's certificate for ``localhost`` and ``127.0.0.1``
(``tls_certs``).

PostgreSQL honours libpq's ``sslmode`` and ``sslrootcert``; Redis takes
``rediss://`` URLs, a CA file in ``ssl_ca_certs`` and the ``#insecure``
fragment.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw
from ledger_helpers import event, ids
from postgres_cluster import PostgresCluster
from redis_server import RedisServer, until_served_again
from test_cli import failure, ok
from tls_certs import TlsFiles

# --- PostgreSQL ---------------------------------------------------------------------------------


def pg_url(cluster: PostgresCluster, query: str, password: str = "") -> str:
    """The cluster's URL with ``query`` (``sslmode=…&…``) and, for the
    tests of what errors show, a password (the test cluster trusts all)."""
    credentials = f"postgres:{password}" if password else "postgres"
    return f"postgresql://{credentials}@127.0.0.1:{cluster.port}/postgres?{query}"


def encrypted(cluster: PostgresCluster, application: str) -> list[bool]:
    """Whether each open connection named ``application`` is encrypted
    (``pg_stat_ssl``, as the server sees it)."""
    rows = cluster.sql(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        f"WHERE a.application_name = '{application}'"
    )
    return [row == "t" for row in rows.split()]


def store_on(url: str) -> uw.PostgresStore:
    return uw.PostgresStore(url, schema=f"t_{uuid.uuid4().hex[:16]}")


def test_verify_full_with_the_right_ca_connects_encrypted(
    postgres_tls_cluster: PostgresCluster, tls_files: TlsFiles
) -> None:
    application = f"tls_{uuid.uuid4().hex[:8]}"
    url = pg_url(
        postgres_tls_cluster,
        f"sslmode=verify-full&sslrootcert={tls_files.ca}&application_name={application}",
    )
    with store_on(url) as store:
        store.record(event(0))
        store.flush()
        assert ids(store.query()) == ["req-0"]
        # The writer's connection and the reader's pooled one.
        seen = encrypted(postgres_tls_cluster, application)
        assert len(seen) >= 2 and all(seen), seen


def test_the_async_store_and_open_store_take_the_same_tls_options(
    postgres_tls_cluster: PostgresCluster, tls_files: TlsFiles
) -> None:
    url = pg_url(postgres_tls_cluster, f"sslmode=verify-full&sslrootcert={tls_files.ca}")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with uw.open_store(url, schema=schema) as store:
        store.record(event(1))
        store.flush()
    again = uw.open_async_store(url, schema=schema)
    assert isinstance(again, uw.AsyncPostgresStore)
    assert ids(again.blocking().query()) == ["req-1"]
    again.blocking().close()


@pytest.mark.parametrize(
    ("sslmode", "is_encrypted"), [("disable", False), ("prefer", True), ("require", True)]
)
def test_sslmode_decides_whether_the_session_is_encrypted(
    postgres_tls_cluster: PostgresCluster, sslmode: str, is_encrypted: bool
) -> None:
    """``prefer`` (the default) and ``require`` encrypt with no CA given, as
    in libpq; ``disable`` does not."""
    application = f"tls_{uuid.uuid4().hex[:8]}"
    url = pg_url(postgres_tls_cluster, f"sslmode={sslmode}&application_name={application}")
    with store_on(url) as store:
        store.query()
        seen = encrypted(postgres_tls_cluster, application)
        assert seen and all(s == is_encrypted for s in seen), seen


def test_key_value_dsns_take_sslmode_and_sslrootcert_too(
    postgres_tls_cluster: PostgresCluster, tls_files: TlsFiles
) -> None:
    application = f"tls_{uuid.uuid4().hex[:8]}"
    dsn = (
        f"host=localhost hostaddr=127.0.0.1 port={postgres_tls_cluster.port} user=postgres "
        f"dbname=postgres sslmode=verify-full sslrootcert='{tls_files.ca}' "
        f"application_name={application}"
    )
    with store_on(dsn) as store:
        store.query()
        assert all(encrypted(postgres_tls_cluster, application))


@pytest.mark.parametrize("sslmode", ["verify-full", "verify-ca"])
def test_a_wrong_ca_is_refused_without_showing_the_password(
    postgres_tls_cluster: PostgresCluster, tls_files: TlsFiles, sslmode: str
) -> None:
    url = pg_url(
        postgres_tls_cluster,
        f"sslmode={sslmode}&sslrootcert={tls_files.other_ca}",
        password="s3cret-pw",
    )
    with pytest.raises(uw.StoreError, match="TLS") as refused:
        store_on(url)
    message = str(refused.value)
    assert "certificate" in message and "UnknownIssuer" in message, message
    assert "s3cret-pw" not in message


def test_the_system_trust_store_does_not_know_a_private_ca(
    postgres_tls_cluster: PostgresCluster,
) -> None:
    url = pg_url(postgres_tls_cluster, "sslmode=verify-full&sslrootcert=system")
    with pytest.raises(uw.StoreError, match="UnknownIssuer"):
        store_on(url)


def test_verify_full_checks_the_host_name_and_verify_ca_does_not(
    postgres_tls_cluster: PostgresCluster, tls_files: TlsFiles
) -> None:
    """The server's certificate names localhost and 127.0.0.1; connecting to
    127.0.0.1 under another name (``hostaddr``) fails only the name check."""

    def dsn(sslmode: str) -> str:
        return (
            f"host=db.example.invalid hostaddr=127.0.0.1 port={postgres_tls_cluster.port} "
            f"user=postgres password=s3cret-pw dbname=postgres sslmode={sslmode} "
            f"sslrootcert={tls_files.ca}"
        )

    with pytest.raises(uw.StoreError, match="TLS") as refused:
        store_on(dsn("verify-full"))
    assert 'certificate not valid for name "db.example.invalid"' in str(refused.value)
    assert "s3cret-pw" not in str(refused.value)
    with store_on(dsn("verify-ca")) as store:
        assert store.query() == []


def test_a_unix_socket_is_never_tls_whatever_the_sslmode(
    postgres_tls_cluster: PostgresCluster,
) -> None:
    """As libpq: the server offers no TLS on its socket, and none is needed."""
    application = f"tls_{uuid.uuid4().hex[:8]}"
    dsn = (
        f"host={postgres_tls_cluster.socket_dir} port={postgres_tls_cluster.port} "
        f"user=postgres dbname=postgres sslmode=require application_name={application}"
    )
    with store_on(dsn) as store:
        store.query()
        seen = encrypted(postgres_tls_cluster, application)
        assert seen and not any(seen), seen


def test_require_on_a_server_without_tls_fails(postgres_cluster: PostgresCluster) -> None:
    with pytest.raises(uw.StoreError, match="TLS"):
        store_on(pg_url(postgres_cluster, "sslmode=require"))
    # prefer, the default, falls back to a plain session as libpq does.
    with store_on(pg_url(postgres_cluster, "sslmode=prefer")) as store:
        assert store.query() == []


@pytest.mark.parametrize(
    ("query", "argument"),
    [
        ("sslmode=verify_full", "sslmode"),
        ("sslmode=allow", "sslmode"),
        ("sslmode=", "sslmode"),
        ("sslmode=verify-full", "sslrootcert"),
        ("sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem", "sslrootcert"),
    ],
)
def test_bad_tls_options_are_value_errors_naming_them(query: str, argument: str) -> None:
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:1/postgres?{query}"
    for opened in (uw.PostgresStore, uw.AsyncPostgresStore, uw.open_store):
        with pytest.raises(ValueError, match=f"^{argument}: ") as refused:
            opened(url)
        assert "s3cret-pw" not in str(refused.value)


def test_a_file_without_a_certificate_is_a_value_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    url = f"postgresql://postgres@127.0.0.1:1/postgres?sslmode=verify-full&sslrootcert={empty}"
    with pytest.raises(ValueError, match="sslrootcert: .*no PEM certificate"):
        uw.PostgresStore(url)


def test_the_cli_db_option_takes_a_tls_url(
    postgres_tls_cluster: PostgresCluster, tls_files: TlsFiles
) -> None:
    database = postgres_tls_cluster.new_schema()
    postgres_tls_cluster.sql(f"CREATE DATABASE {database}")
    url = (
        f"postgresql://postgres@127.0.0.1:{postgres_tls_cluster.port}/{database}"
        f"?sslmode=verify-full&sslrootcert={tls_files.ca}"
    )
    assert json.loads(ok("grants", "list", "--db", url, "--format", "json")) == {"grants": []}
    line = failure("grants", "list", "--db", url.replace("verify-full", "verify-fully"))
    assert "sslmode" in line


# --- Redis --------------------------------------------------------------------------------------


def rediss_url(server: RedisServer, ca: Path | None) -> str:
    return server.url if ca is None else f"{server.url}?ssl_ca_certs={ca}"


@pytest.fixture
def tls_server(redis_tls_server: RedisServer) -> RedisServer:
    """The TLS-only server, emptied for this test."""
    redis_tls_server.flush()
    return redis_tls_server


def limiter_on(url: str, clock: uw.ManualClock, **options: Any) -> uw.RedisRateLimiter:
    limits = uw.RateLimits(requests_per_minute=5)
    return uw.RedisRateLimiter(limits, url, clock=clock, **options)


def test_a_limiter_over_rediss_admits_exactly_its_limit(
    tls_server: RedisServer, tls_files: TlsFiles, clock: uw.ManualClock
) -> None:
    url = rediss_url(tls_server, tls_files.ca)
    first, second = limiter_on(url, clock), limiter_on(url, clock)
    admitted = [limiter.try_acquire("k").allowed for limiter in [first, second] * 4]
    assert admitted == [True] * 5 + [False] * 3
    # The state is the server's: both limiters read the same five requests.
    assert first.usage("k").requests == second.usage("k").requests == 5
    assert first.health()["ok"]
    first.close()
    second.close()


def test_the_server_has_no_plain_port(tls_server: RedisServer, clock: uw.ManualClock) -> None:
    plain = tls_server.url.replace("rediss://", "redis://")
    with pytest.raises(uw.StoreError, match="Redis at redis://127.0.0.1"):
        limiter_on(plain, clock, timeout=0.5)


@pytest.mark.parametrize("trusted", ["other_ca", "system"])
def test_a_server_whose_ca_is_not_trusted_is_refused(
    tls_server: RedisServer, tls_files: TlsFiles, clock: uw.ManualClock, trusted: str
) -> None:
    """With the wrong CA file, or with none (the OS trust store), the
    handshake fails and says why."""
    ca = tls_files.other_ca if trusted == "other_ca" else None
    url = rediss_url(tls_server, ca).replace("rediss://", "rediss://:s3cret-pw@")
    with pytest.raises(uw.StoreError, match="UnknownIssuer") as refused:
        limiter_on(url, clock, timeout=0.5)
    assert "certificate" in str(refused.value)
    assert "s3cret-pw" not in str(refused.value)


def test_a_server_reached_by_a_name_its_certificate_lacks_is_refused(
    tls_server: RedisServer, tls_files: TlsFiles, clock: uw.ManualClock
) -> None:
    """The certificate names 127.0.0.1 and localhost; the same server on
    127.0.0.2 fails the name check, and ``#insecure`` alone lets it through."""
    url = rediss_url(tls_server, tls_files.ca).replace("127.0.0.1", "127.0.0.2")
    with pytest.raises(uw.StoreError, match="certificate not valid for name"):
        limiter_on(url, clock, timeout=0.5)
    limiter = limiter_on(f"{tls_server.url.replace('127.0.0.1', '127.0.0.2')}#insecure", clock)
    assert limiter.try_acquire("k").allowed
    limiter.close()


def test_insecure_skips_verification_only_when_the_url_says_so(
    tls_server: RedisServer, clock: uw.ManualClock
) -> None:
    limiter = limiter_on(f"{tls_server.url}#insecure", clock)
    assert limiter.try_acquire("k").allowed
    limiter.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:1/0?ssl_ca_certs={ca}", "needs a rediss:// URL"),
        ("rediss://127.0.0.1:1/0?ssl_ca_certs=/nonexistent/ca.pem", "cannot read"),
    ],
)
def test_bad_ca_options_are_value_errors_naming_the_url(
    tls_files: TlsFiles, url: str, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^url: .*{message}"):
        uw.RedisRateLimiter(uw.RateLimits(requests_per_minute=5), url.format(ca=tls_files.ca))


def test_shared_budgets_over_rediss(
    tmp_path: Path, tls_server: RedisServer, tls_files: TlsFiles, clock: uw.ManualClock
) -> None:
    url = rediss_url(tls_server, tls_files.ca)

    def host(name: str) -> uw.BudgetEngine:
        store = uw.SQLiteStore(tmp_path / f"{name}.db", durability="commit", clock=clock)
        return uw.BudgetEngine([uw.Budget("org", 10.0)], store, clock=clock, shared=url)

    here, there = host("here"), host("there")
    here.check(estimated_cost=8.0)
    with pytest.raises(uw.BudgetExceeded) as refused:
        there.check(estimated_cost=3.0)
    assert refused.value.reserved == 8.0
    with pytest.raises(ValueError, match="shared"):
        uw.BudgetEngine(
            [uw.Budget("org", 10.0)],
            uw.SQLiteStore(tmp_path / "bad.db", clock=clock),
            clock=clock,
            shared=url.replace("rediss://", "redis://"),
        )


@pytest.mark.slow
def test_a_restarted_tls_server_is_reconnected_to(
    tls_server: RedisServer, tls_files: TlsFiles, clock: uw.ManualClock
) -> None:
    limiter = limiter_on(rediss_url(tls_server, tls_files.ca), clock, timeout=0.5)
    assert limiter.try_acquire("k").allowed
    tls_server.restart()
    until_served_again(limiter)
    assert limiter.health()["ok"]
    assert limiter.usage("k").requests == 1
    limiter.close()
