"""API keys for ``usagewarden serve``, from a TOML or JSON file or an
environment variable. Error messages name a key by its id or position,
never by the key itself.

The document is either a list of keys::

    [[keys]]
    id = "dashboard"                 # who the key acts for (logs and limits show this)
    key = "…at least 16 characters…" # or key_env = "DASHBOARD_KEY"
    namespace = "team-a"
    scopes = ["usage:read"]

or a table from each key to its principal (``id`` optional)::

    {"…key…": {"namespace": "team-a", "scopes": ["usage:read", "usage:admin"]}}
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._ledger_access import CommandError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: A file of keys, as ``--keys`` takes.
KEYS_FILE_ENV = "USAGEWARDEN_KEYS_FILE"
#: The document itself (JSON), for deployments that pass secrets in the environment.
KEYS_ENV = "USAGEWARDEN_API_KEYS"

_SCOPES = ("usage:read", "usage:write", "usage:admin", "usage:all-namespaces")
_ENTRY_KEYS = {"id", "key", "key_env", "namespace", "scopes"}


def _parse(text: str, origin: str, *, toml_first: bool) -> Any:
    parsers: list[Any] = [tomllib.loads, json.loads]
    if not toml_first:
        parsers.reverse()
    for parse in parsers:
        try:
            return parse(text)
        except (ValueError, tomllib.TOMLDecodeError):
            continue
    raise CommandError(f"{origin}: is neither valid JSON nor valid TOML")


def _entries(document: Any, origin: str) -> list[dict[str, Any]]:
    if isinstance(document, Mapping) and set(document) == {"keys"}:
        listed = document["keys"]
        if not isinstance(listed, list) or not all(isinstance(e, Mapping) for e in listed):
            raise CommandError(f"{origin}: 'keys' must be a list of tables")
        return [dict(e) for e in listed]
    if isinstance(document, Mapping):
        entries: list[dict[str, Any]] = []
        for key, principal in document.items():
            if not isinstance(principal, Mapping):
                raise CommandError(
                    f"{origin}: key #{len(entries) + 1} must map to a table with its "
                    "namespace and scopes"
                )
            entries.append({**principal, "key": key})
        return entries
    raise CommandError(f"{origin}: must hold a 'keys' list or a table of key to principal")


def _principal(entry: dict[str, Any], position: int, origin: str) -> tuple[str, Any]:
    from usagewarden.fastapi import Principal

    name = entry.get("id") or f"key-{position}"
    label = f"{origin}: key {name!r}"
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise CommandError(f"{label}: unknown field(s) {sorted(unknown)}")
    if "key_env" in entry:
        if "key" in entry:
            raise CommandError(f"{label}: give key or key_env, not both")
        secret = os.environ.get(str(entry["key_env"]))
        if not secret:
            raise CommandError(f"{label}: ${entry['key_env']} is not set")
    else:
        secret = entry.get("key")
    if not isinstance(secret, str) or len(secret) < 16:
        raise CommandError(f"{label}: the key must be a string of at least 16 characters")
    scopes = entry.get("scopes", ["usage:read"])
    if not isinstance(scopes, list) or not scopes or any(s not in _SCOPES for s in scopes):
        raise CommandError(f"{label}: scopes must be a non-empty list of {', '.join(_SCOPES)}")
    namespace = entry.get("namespace", "default")
    if not isinstance(namespace, str) or not namespace:
        raise CommandError(f"{label}: namespace must be a non-empty string")
    return secret, Principal(str(name), namespace, frozenset(scopes))


def load_keys(path: Path | None) -> dict[str, Any]:
    """Key → ``Principal`` from ``path``, else from ``$USAGEWARDEN_API_KEYS``;
    empty when neither is given."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        origin = str(path)
        document = _parse(text, origin, toml_first=path.suffix.lower() != ".json")
    elif os.environ.get(KEYS_ENV):
        origin = f"${KEYS_ENV}"
        document = _parse(os.environ[KEYS_ENV], origin, toml_first=False)
    else:
        return {}
    keys: dict[str, Any] = {}
    ids: set[str] = set()
    for position, entry in enumerate(_entries(document, origin), start=1):
        secret, principal = _principal(entry, position, origin)
        if secret in keys:
            raise CommandError(f"{origin}: key {principal.id!r} repeats another key")
        if principal.id in ids:
            raise CommandError(f"{origin}: two keys have the id {principal.id!r}")
        ids.add(principal.id)
        keys[secret] = principal
    if not keys:
        raise CommandError(f"{origin}: holds no key")
    return keys
