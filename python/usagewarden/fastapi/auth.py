"""Who a request acts for, and API-key authentication."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from fastapi import HTTPException, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ._errors import error_detail

SCOPE_READ = "usage:read"
SCOPE_WRITE = "usage:write"
SCOPE_ADMIN = "usage:admin"
#: Sees across namespaces where a figure is not one namespace's: budgets of
#: other namespaces, global and per-agent budgets, and the store-wide health
#: in ``/stats``. Distinct from ``usage:admin``, which stays within a namespace.
SCOPE_ALL_NAMESPACES = "usage:all-namespaces"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: an id, the one namespace it may see, and its scopes."""

    id: str
    namespace: str = "default"
    scopes: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("id: must be a non-empty str")
        if not isinstance(self.namespace, str) or not self.namespace:
            raise ValueError("namespace: must be a non-empty str")
        object.__setattr__(self, "scopes", frozenset(self.scopes))

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def api_key_auth(keys: Mapping[str, Principal]) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates ``Authorization: Bearer <key>`` or
    ``X-API-Key: <key>`` against ``keys`` and returns the key's ``Principal``.

    Keys are compared in constant time, and every key is compared, so the time
    taken says nothing about which key (or how much of one) matched. A missing
    or unknown key is a 401.
    """
    if not isinstance(keys, Mapping) or not keys:
        raise ValueError("keys: must be a non-empty mapping of API key to Principal")
    table: list[tuple[bytes, Principal]] = []
    for key, principal in keys.items():
        if not isinstance(key, str) or len(key) < 16:
            raise ValueError("keys: every API key must be a str of at least 16 characters")
        if not isinstance(principal, Principal):
            raise TypeError(f"keys: the value for a key must be a Principal, not {principal!r}")
        table.append((key.encode(), principal))
    bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token.")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")
    challenge = {"WWW-Authenticate": "Bearer"}

    async def authenticate(
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
        api_key: str | None = Security(header),  # noqa: B008
    ) -> Principal:
        presented = credentials.credentials if credentials is not None else api_key
        if not presented:
            raise HTTPException(
                401,
                detail=error_detail("unauthenticated", "an API key is required"),
                headers=challenge,
            )
        candidate = presented.encode()
        found: Principal | None = None
        for key, principal in table:
            if hmac.compare_digest(key, candidate):
                found = principal
        if found is None:
            raise HTTPException(
                401,
                detail=error_detail("unauthenticated", "the API key is not valid"),
                headers=challenge,
            )
        return found

    return authenticate
