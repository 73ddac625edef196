"""A throwaway redis-server for the test session: a free port on 127.0.0.1,
no persistence, its files in a temporary directory.

``redis_tls_server`` serves TLS only (its plain port is off), with the
server certificate of ``tls_certs``.

When ``redis-server`` is not on PATH the tests that need it are skipped
(naming the Debian package to install), or fail when
``USAGEWARDEN_REQUIRE_SERVERS=1`` (as in CI).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from usagewarden import StoreError

if TYPE_CHECKING:
    from tls_certs import TlsFiles

PACKAGE_HINT = "redis-server is not installed (Debian: apt-get install -y redis-server)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher) is free too: Redis
    refuses a cluster node on a port above 55535."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def until_served_again(limiter: Any, key: str = "k", timeout: float = 20.0) -> None:
    """Retries ``try_acquire(key)`` on a limiter whose server restarted
    until it is admitted again (the limiter reconnects by itself)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            # The restarted server has neither the data nor the script.
            assert limiter.try_acquire(key).allowed
            return
        except StoreError:
            assert time.monotonic() < deadline, "the limiter never reconnected"
            time.sleep(0.2)


def connect(port: int, timeout: float, ca: Path | None = None) -> socket.socket:
    """A socket to the server on ``port``; over TLS, verified with ``ca``."""
    plain = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if ca is None:
        return plain
    return ssl.create_default_context(cafile=str(ca)).wrap_socket(
        plain, server_hostname="127.0.0.1"
    )


def ping(port: int, ca: Path | None = None) -> bool:
    try:
        with connect(port, 0.2, ca) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``restart()`` keeps its port. With ``tls``
    it serves TLS only, on ``port``, and ``url`` is a ``rediss://`` URL."""

    #: A class default too, for a node made with ``__new__`` and a port alone.
    tls: TlsFiles | None = None

    def __init__(self, directory: Path, tls: TlsFiles | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("USAGEWARDEN_REQUIRE_SERVERS") == "1":
                pytest.fail(PACKAGE_HINT + " and USAGEWARDEN_REQUIRE_SERVERS=1")
            pytest.skip(PACKAGE_HINT)
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        scheme = "redis" if tls is None else "rediss"
        self.url = f"{scheme}://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def ca(self) -> Path | None:
        return None if self.tls is None else self.tls.ca

    def _listen(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        # Also on 127.0.0.2, an address the certificate does not name.
        return [
            "--bind", "127.0.0.1 127.0.0.2",
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert),
            "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind", "127.0.0.1",
                *self._listen(),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not ping(self.port, self.ca):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def command(self, *args: str) -> bytes:
        """One command over a plain socket (the tests use no Python Redis client)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with connect(self.port, 5, self.ca) as s:
            s.sendall(b"".join(parts))
            reply = b""
            while (
                not reply.endswith(b"\r\n") or reply.startswith(b"$") and reply.count(b"\r\n") < 2
            ):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply

    def flush(self) -> None:
        assert self.command("FLUSHALL").startswith(b"+OK")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The server's URL, emptied for this test."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_tls_server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-tls"), tls_files)
    yield server
    server.stop()
