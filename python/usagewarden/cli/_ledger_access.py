"""Opening the ledger a command names with ``--db``: a path or a URL."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

import click

import usagewarden as uw

#: The environment variable ``--db`` falls back on.
DB_ENV = "USAGEWARDEN_DB"
DEFAULT_DB = "usagewarden.db"

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class CommandError(click.ClickException):
    """A failure the operator can fix, printed as one line."""


def sqlite_path(db: str) -> Path | None:
    """The file of a SQLite ledger (``sqlite:///relative.db``,
    ``sqlite:////absolute.db`` or a plain path), or ``None`` for another URL."""
    if db.startswith(_SQLITE_PREFIX):
        rest = db[len(_SQLITE_PREFIX) :]
        if not rest:
            raise CommandError(f"--db: {db!r} names no file (e.g. sqlite:///usage.db)")
        return Path(rest)
    if db.startswith("sqlite:"):
        raise CommandError(f"--db: {db!r} is not a SQLite URL; write sqlite:///path/to/usage.db")
    if "://" in db:
        return None
    return Path(db)


def is_postgres(db: str) -> bool:
    return db.startswith(_POSTGRES_SCHEMES)


#: libpq parameters whose values are secrets (in a URL's query or a ``key=value`` DSN).
_SECRET_PARAMETERS = ("password", "sslpassword")
#: ``password=value`` or ``password='quoted value'`` in a ``key=value`` DSN.
_DSN_SECRET = re.compile(r"\b((?:ssl)?password)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def _secrets(db: str) -> list[str]:
    """The passwords ``db`` holds, as written and decoded."""
    found: list[str] = []
    if "://" in db:
        parts = urllib.parse.urlsplit(db)
        if parts.password:
            found.append(parts.netloc.rsplit("@", 1)[0].split(":", 1)[1])
            found.append(parts.password)
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if name.lower() in _SECRET_PARAMETERS and value:
                found.append(value)
                found.append(urllib.parse.quote(value, safe=""))
    found.extend(m.group(2).strip("'") for m in _DSN_SECRET.finditer(db))
    # Longest first, so a secret containing another is masked whole.
    return sorted({v for v in found if v}, key=len, reverse=True)


def describe(db: str) -> str:
    """``db`` as it can be shown: a path, or a URL or DSN without its password."""
    if "://" not in db:
        return _DSN_SECRET.sub(lambda m: f"{m.group(1)}=***", db)
    parts = urllib.parse.urlsplit(db)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, host = netloc.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        netloc = f"{user}@{host}" if user else host
    query = "&".join(
        f"{pair.split('=', 1)[0]}=***"
        if pair.split("=", 1)[0].lower() in _SECRET_PARAMETERS
        else pair
        for pair in parts.query.split("&")
        if pair
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _without_password(db: str, error: Exception) -> str:
    """``error``'s message with every password ``db`` holds masked."""
    message = " ".join(str(error).split())
    for secret in _secrets(db):
        message = message.replace(secret, "***")
    return message


def open_ledger(
    db: str, *, asynchronous: bool = False, must_exist: bool = True, **options: Any
) -> Any:
    """The store ``db`` names. A SQLite file that does not exist is an error
    unless ``must_exist`` is false (a typo must not create an empty ledger)."""
    path = sqlite_path(db)
    if path is not None:
        if must_exist and not path.exists():
            raise CommandError(
                f"no ledger at {describe(str(path))!r}: give its path with --db or ${DB_ENV}"
            )
        if path.is_dir():
            raise CommandError(f"--db: {str(path)!r} is a directory, not a ledger file")
        store_class = uw.AsyncSQLiteStore if asynchronous else uw.SQLiteStore
        return store_class(path, **options)
    open_store = getattr(uw, "open_async_store" if asynchronous else "open_store", None)
    if open_store is not None and is_postgres(db):
        try:
            return open_store(db, **options)
        except (uw.UsageWardenError, ValueError, OSError) as exc:
            raise CommandError(
                f"--db: cannot open {describe(db)}: {_without_password(db, exc)}"
            ) from None
    if is_postgres(db):
        raise CommandError(
            f"--db: {describe(db)} needs the PostgreSQL backend, which this installation "
            "of usagewarden does not have"
        )
    raise CommandError(
        f"--db: {describe(db)!r} is neither a path nor a sqlite:/// or postgresql:// URL"
    )
