"""What the dashboard reads beyond the usage API, behind the same
authentication: ``GET {api_prefix}/me`` (who the key acts for and its one
namespace, so the page need not list namespaces), ``GET {api_prefix}/limiter``
(the live windows of a rate limiter's keys) and
``GET {api_prefix}/budgets/settings`` (each budget's thresholds, period and
action, which the spend in ``GET /budgets`` lacks)."""

from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from .._core import Budget
from ..budgets import BudgetEngine
from ..fastapi import SCOPE_ADMIN, SCOPE_ALL_NAMESPACES, SCOPE_READ, Principal
from ..fastapi._errors import api_error
from ..limiter_protocol import Limiter

_ANONYMOUS = Principal(
    "anonymous", scopes=frozenset({SCOPE_READ, SCOPE_ADMIN, SCOPE_ALL_NAMESPACES})
)


def key_state(limiter: Limiter, key: str) -> dict[str, Any]:
    """Each limit of ``key``: what its window holds and what is left."""
    limits = limiter.per_key.get(key, limiter.limits)
    rows = []
    for limit in limits.limits:
        used = getattr(limiter.usage(key, window_seconds=limit.window), limit.dimension)
        rows.append(
            {
                "name": limit.name,
                "dimension": limit.dimension,
                "unit": limit.unit,
                "window_seconds": limit.window,
                "amount": limit.amount,
                "used": used,
                "remaining": max(limit.amount - used, 0),
            }
        )
    return {"key": key, "limits": rows}


def _budget_visible(budget: Budget, principal: Principal) -> bool:
    """The rule of ``GET /budgets``: without ``usage:all-namespaces``, only the
    budgets of the principal's own namespace (a stored budget's namespace is
    its own)."""
    if principal.has_scope(SCOPE_ALL_NAMESPACES):
        return True
    if budget.namespace is not None:
        return budget.namespace == principal.namespace
    return budget.scope == "namespace" and budget.match in (None, principal.namespace)


def dashboard_api_router(
    *,
    auth: Callable[..., Awaitable[Principal]] | Callable[..., Principal] | None,
    prefix: str,
    limiter: Limiter | None = None,
    limiter_keys: Iterable[str] = (),
    budgets: BudgetEngine | None = None,
) -> APIRouter:
    """The limiter's windows of ``limiter_keys`` and its ``per_key`` keys (a
    principal with ``usage:all-namespaces`` sees every key, any other only
    the key named after its own id, as ``usage_router`` limits it), and the
    settings of the ``budgets`` that ``GET /budgets`` shows the principal."""
    listed = sorted({*limiter_keys, *(limiter.per_key if limiter is not None else ())})

    async def anonymous() -> Principal:
        return _ANONYMOUS

    authenticate: Callable[..., Any] = auth if auth is not None else anonymous

    async def reader(principal: Annotated[Any, Depends(authenticate)]) -> Principal:
        if not isinstance(principal, Principal) or not principal.has_scope(SCOPE_READ):
            raise api_error(403, "missing_scope", f"the credentials lack the {SCOPE_READ!r} scope")
        return principal

    Reader = Annotated[Principal, Depends(reader)]
    router = APIRouter(prefix=prefix, tags=["dashboard"])

    @router.get("/me", summary="Who the credentials act for")
    async def me(principal: Reader) -> JSONResponse:
        """The principal's id, namespace (``null``: every namespace, when the
        API is served without authentication) and scopes."""
        return JSONResponse(
            {
                "id": principal.id,
                "namespace": principal.namespace if auth is not None else None,
                "scopes": sorted(principal.scopes),
            }
        )

    @router.get("/limiter", summary="Live rate-limiter windows")
    async def limiter_state(principal: Reader) -> JSONResponse:
        if limiter is None:
            return JSONResponse({"attached": False, "keys": []})
        everyone = principal.has_scope(SCOPE_ALL_NAMESPACES)
        visible = [key for key in listed if everyone or key == principal.id]
        return JSONResponse({"attached": True, "keys": [key_state(limiter, k) for k in visible]})

    @router.get("/budgets/settings", summary="Budget settings")
    async def budget_settings(principal: Reader) -> JSONResponse:
        rows = [
            {
                "budget": b.name,
                "namespace": b.namespace,
                "scope": b.scope,
                "match": b.match,
                "limit_usd": b.limit_usd,
                "period": b.period,
                "tz": b.tz,
                "thresholds": b.thresholds,
                "action": b.action,
                "downgrade_to": b.downgrade_to,
                "soft": b.soft,
            }
            for b in (budgets.enforced() if budgets is not None else [])
            if _budget_visible(b, principal)
        ]
        return JSONResponse({"budgets": rows})

    return router
