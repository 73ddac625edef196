"""Who may see which namespace, and the errors every usage API route shares:
a refused namespace, a store that failed or cannot do something, a bad argument."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException

from ._errors import api_error
from ._requests import argument_of
from .auth import SCOPE_ALL_NAMESPACES, Principal
from .models import ErrorResponse

logger = logging.getLogger("usagewarden")

#: What a 503 tells the client to wait before retrying, in seconds.
RETRY_AFTER_SECONDS = 5
#: How a store says that it lacks an operation (``StoreError``'s message).
_NOT_SUPPORTED = "is not supported by this backend"


@dataclass(frozen=True)
class Access:
    """A caller and the namespace it is confined to (``None``: every
    namespace, only when the router was mounted without authentication)."""

    principal: Principal
    namespace: str | None

    @property
    def sees_all_namespaces(self) -> bool:
        return self.namespace is None or self.principal.has_scope(SCOPE_ALL_NAMESPACES)

    def one_namespace(self, asked: str | None) -> str:
        """The one namespace a request works on: the caller's own (``asked``
        may only repeat it), or ``asked`` (else ``"default"``) when unconfined."""
        if self.namespace is None:
            return asked or "default"
        if asked is not None and asked != self.namespace:
            raise forbidden_namespace(asked)
        return self.namespace


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


def forbidden_namespace(namespace: str) -> HTTPException:
    return api_error(
        403, "forbidden_namespace", f"the credentials do not give access to namespace {namespace!r}"
    )


def store_unavailable(exc: Exception) -> HTTPException:
    logger.error("usagewarden: the usage store failed: %s", exc)
    return api_error(
        503,
        "store_unavailable",
        "the usage store is unavailable; retry later",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def store_failed(exc: Exception) -> HTTPException:
    """A ``StoreError`` as a response: 501 when the store's backend lacks the
    operation (retrying will not help), else 503."""
    if _NOT_SUPPORTED in str(exc):
        return api_error(
            501,
            "not_supported",
            f"the usage store cannot answer this request: {exc}",
        )
    return store_unavailable(exc)


def bad_argument(exc: Exception, where: Sequence[str | int]) -> HTTPException:
    name = argument_of(exc)
    loc = [*where, name] if name else list(where)
    return api_error(
        422,
        "invalid_request",
        str(exc),
        errors=[{"loc": loc, "msg": str(exc), "type": "value_error"}],
    )
