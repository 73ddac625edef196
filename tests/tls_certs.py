"""Throwaway certificates for the TLS tests, made with the ``openssl`` CLI:
a CA, a server certificate it signs for ``localhost`` and ``127.0.0.1``, and
a second CA that signs nothing here (the wrong CA).

Without ``openssl`` the tests that need them skip (naming the Debian package),
or fail when ``USAGEWARDEN_REQUIRE_SERVERS=1`` (as in CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_HINT = "openssl is not installed (Debian: apt-get install -y openssl)"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    other_ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        if os.environ.get("USAGEWARDEN_REQUIRE_SERVERS") == "1":
            pytest.fail(PACKAGE_HINT + " and USAGEWARDEN_REQUIRE_SERVERS=1")
        pytest.skip(PACKAGE_HINT)
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


# P-256 keys: quick to make, and every TLS stack here takes them.
_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", *_NEW_KEY, "-days", "2", "-subj", f"/CN=usagewarden test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", f"{name}.key", "-out", f"{name}.pem",
        cwd=directory,
    )  # fmt: skip


def make_tls_files(directory: Path) -> TlsFiles:
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", *_NEW_KEY, "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
        cwd=directory,
    )  # fmt: skip
    return TlsFiles(
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
    )


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))
