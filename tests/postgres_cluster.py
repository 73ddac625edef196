"""A throwaway PostgreSQL cluster for the tests: ``initdb`` and ``pg_ctl``
from Debian's ``/usr/lib/postgresql/*/bin`` on a random free loopback port,
with its data and socket in a temporary directory.

initdb refuses to run as root, so when the tests run as root the cluster is
created and started as the ``postgres`` user on a directory chowned to it.
Without the binaries the tests skip, naming the Debian package to install;
with ``USAGEWARDEN_REQUIRE_SERVERS=1`` (as CI sets) that is a failure.

``postgres_tls_cluster`` is the same cluster with ``ssl=on`` and the test
server certificate of ``tls_certs``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tls_certs import TlsFiles

PACKAGE_HINT = "PostgreSQL binaries not found: install the Debian package `postgresql`"


def _bin_dir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        path = Path(candidate)
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresCluster:
    """A running cluster; ``dsn()`` connects to its ``postgres`` database."""

    bin_dir: Path
    root: Path
    port: int
    _as_user: list[str] = field(default_factory=list)
    #: Extra ``-c name=value`` server settings.
    settings: str = ""

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def psql_command(self, dbname: str = "postgres") -> list[str]:
        """psql on this cluster, quiet and unaligned, stopping at an error."""
        return [
            *self._as_user,
            str(self.bin_dir / "psql"),
            "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-d", dbname,
        ]  # fmt: skip

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Runs one statement with psql (for test setup and inspection only)."""
        done = subprocess.run(
            [*self.psql_command(dbname), "-c", statement],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return done.stdout.strip()

    def start(self) -> None:
        self.run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            f"-c max_connections=200 {self.settings}",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def new_schema(self) -> str:
        """A schema name no other test uses (each test gets its own ledger)."""
        return f"t_{uuid.uuid4().hex[:16]}"


def _serve_tls(cluster: PostgresCluster, tls: TlsFiles) -> None:
    """Copies the server's certificate and key into the cluster (the key
    owned by the cluster's user, mode 0600, as PostgreSQL demands) and
    turns ``ssl`` on."""
    directory = cluster.root / "tls"
    directory.mkdir()
    for source in (tls.cert, tls.key):
        target = directory / source.name
        shutil.copyfile(source, target)
        target.chmod(0o600)
        if cluster._as_user:
            shutil.chown(target, "postgres", "postgres")
    if cluster._as_user:
        shutil.chown(directory, "postgres", "postgres")
    cluster.settings = (
        f"-c ssl=on -c ssl_cert_file={directory / tls.cert.name} "
        f"-c ssl_key_file={directory / tls.key.name}"
    )


def _start_cluster(tls: TlsFiles | None = None) -> Iterator[PostgresCluster]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        if os.environ.get("USAGEWARDEN_REQUIRE_SERVERS") == "1":
            pytest.fail(PACKAGE_HINT + " (USAGEWARDEN_REQUIRE_SERVERS=1)")
        pytest.skip(PACKAGE_HINT)
    root = Path(tempfile.mkdtemp(prefix="uw-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses root: the cluster belongs to the postgres user.
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    cluster = PostgresCluster(bin_dir, root, _free_port(), as_user)
    for sub in ("data", "sock"):
        (root / sub).mkdir()
        if as_user:
            shutil.chown(root / sub, "postgres", "postgres")
    cluster.run(
        "initdb",
        "-D",
        str(cluster.data),
        "-U",
        "postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
        "--no-sync",
    )
    if tls is not None:
        _serve_tls(cluster, tls)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    yield from _start_cluster()


@pytest.fixture(scope="session")
def postgres_tls_cluster(tls_files: TlsFiles) -> Iterator[PostgresCluster]:
    yield from _start_cluster(tls_files)
