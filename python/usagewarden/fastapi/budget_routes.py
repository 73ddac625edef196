"""The usage API's budget routes: budgets kept in the ledger database,
managed at run time under ``{prefix}/budgets/managed``. Every route needs
``usage:admin`` and works on one namespace, the caller's own; running
``BudgetEngine``\\ s on the same ledger pick the changes up on their refresh.

``GET {prefix}/budgets`` (the spend an attached engine has seen, code
budgets included) is the usage router's own and needs only ``usage:read``.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from .._core import Budget, BudgetRecord
from ..errors import ConflictError, StoreError
from ..store_protocol import AsyncMeteringStore
from ._access import Access, bad_argument, error_responses, store_failed
from ._errors import api_error
from ._requests import UsageRoute, parse_json, read_body
from .budget_models import (
    NAME_PATTERN,
    BudgetCreate,
    BudgetDefinition,
    BudgetHistory,
    BudgetOut,
    OneBudgetStatus,
    StatusSummary,
    StoredBudgetList,
    create_adapter,
    definition_adapter,
)

T = TypeVar("T")

#: The most days ``GET …/history`` looks back.
MAX_HISTORY_DAYS = 365

_Name = Annotated[
    str, Path(pattern=NAME_PATTERN, description="The budget's name (letters, digits, _ . : -).")
]
_NamespaceQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=256, description="The caller's own namespace when absent."),
]


def _body_schema(adapter: Any) -> dict[str, Any]:
    schema = adapter.json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _budget(name: str, definition: BudgetDefinition) -> Budget:
    """The ``Budget`` a body defines; its own checks (time zone, thresholds
    in order, ``downgrade_to`` with ``downgrade``) answer 422."""
    fields = definition.model_dump(include=set(BudgetDefinition.model_fields))
    try:
        return Budget(name, fields.pop("limit_usd"), **fields)
    except (ValueError, TypeError) as exc:
        raise bad_argument(exc, ["body"]) from None


def _out(record: BudgetRecord) -> dict[str, Any]:
    return BudgetOut.model_validate(record.to_dict()).model_dump(mode="json")


def _unknown(name: str, namespace: str) -> Exception:
    return api_error(404, "not_found", f"no budget {name!r} in namespace {namespace!r}")


def _alerts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The highest threshold each budget and scope value reached this period."""
    return [
        {
            "budget": row["budget"],
            "scope_value": row["scope_value"],
            "threshold": max(row["thresholds_crossed"]),
            "spent_usd": row["spent_usd"],
            "limit_usd": row["limit_usd"],
        }
        for row in rows
        if row["thresholds_crossed"]
    ]


def budget_routes(
    store: AsyncMeteringStore,
    *,
    admin: Callable[..., Awaitable[Access]],
    max_body_bytes: int,
) -> APIRouter:
    """The routes, for ``usage_router`` to include under its prefix."""
    Admin = Annotated[Access, Depends(admin)]
    router = APIRouter(prefix="/budgets/managed", route_class=UsageRoute)
    reads = error_responses(401, 403, 404, 422, 429, 503)
    writes = error_responses(400, 401, 403, 404, 413, 422, 429, 503)

    async def lookup(name: str, namespace: str) -> BudgetRecord:
        try:
            return await store.get_budget(name, namespace=namespace)
        except ValueError:
            raise _unknown(name, namespace) from None
        except StoreError as exc:
            raise store_failed(exc) from None

    async def change(name: str, namespace: str, work: Callable[[], Awaitable[T]]) -> T:
        """Work on an existing budget: unknown (or deleted) is a 404."""
        try:
            return await work()
        except ValueError:
            raise _unknown(name, namespace) from None
        except StoreError as exc:
            raise store_failed(exc) from None

    @router.get("", response_model=StoredBudgetList, responses=reads, summary="Stored budgets")
    async def list_budgets(
        access: Admin, namespace: _NamespaceQuery = None, include_deleted: bool = False
    ) -> JSONResponse:
        """The namespace's stored budgets by name; soft-deleted ones only with
        `include_deleted`."""
        scope = access.one_namespace(namespace)
        try:
            records = await store.budgets(scope, include_deleted=include_deleted)
        except StoreError as exc:
            raise store_failed(exc) from None
        return JSONResponse({"budgets": [_out(r) for r in records]})

    @router.post(
        "",
        status_code=201,
        response_model=BudgetOut,
        responses=error_responses(400, 401, 403, 409, 413, 422, 429, 503),
        openapi_extra=_body_schema(create_adapter),
        summary="Create a budget",
    )
    async def create_budget(
        request: Request, access: Admin, namespace: _NamespaceQuery = None
    ) -> JSONResponse:
        """409 when the namespace has a live budget of that name; a
        soft-deleted one is replaced (its spend counts afresh)."""
        scope = access.one_namespace(namespace)
        asked: BudgetCreate = parse_json(create_adapter, await read_body(request, max_body_bytes))
        budget = _budget(asked.name, asked)
        try:
            record = await store.create_budget(budget, namespace=scope)
        except ConflictError:
            raise api_error(
                409, "conflict", f"a budget {asked.name!r} already exists in namespace {scope!r}"
            ) from None
        except (ValueError, TypeError) as exc:
            raise bad_argument(exc, ["body"]) from None
        except StoreError as exc:
            raise store_failed(exc) from None
        return JSONResponse(_out(record), status_code=201)

    @router.get("/status", response_model=StatusSummary, responses=reads, summary="Budget status")
    async def status_summary(access: Admin, namespace: _NamespaceQuery = None) -> JSONResponse:
        """Spend of every live stored budget over its current period (from
        the ledger; in-flight reservations are not counted), and an alert for
        each budget and scope value past a threshold."""
        scope = access.one_namespace(namespace)
        try:
            rows = await store.budget_status(namespace=scope)
        except StoreError as exc:
            raise store_failed(exc) from None
        summary = StatusSummary.model_validate(
            {"namespace": scope, "budgets": rows, "alerts": _alerts(rows)}
        )
        return JSONResponse(summary.model_dump(mode="json"))

    @router.get("/{name}", response_model=BudgetOut, responses=reads, summary="A stored budget")
    async def get_budget(name: _Name, access: Admin, namespace: _NamespaceQuery = None) -> Any:
        scope = access.one_namespace(namespace)
        return JSONResponse(_out(await lookup(name, scope)))

    @router.put(
        "/{name}",
        response_model=BudgetOut,
        responses=writes,
        openapi_extra=_body_schema(definition_adapter),
        summary="Replace a budget's definition",
    )
    async def update_budget(
        name: _Name, request: Request, access: Admin, namespace: _NamespaceQuery = None
    ) -> JSONResponse:
        """Every field of the definition; omitted ones take their defaults.
        Engines count the budget's spend afresh from the ledger."""
        scope = access.one_namespace(namespace)
        asked = parse_json(definition_adapter, await read_body(request, max_body_bytes))
        budget = _budget(name, asked)
        record = await change(name, scope, lambda: store.update_budget(budget, namespace=scope))
        return JSONResponse(_out(record))

    @router.delete(
        "/{name}", response_model=BudgetOut, responses=reads, summary="Soft-delete a budget"
    )
    async def delete_budget(
        name: _Name, access: Admin, namespace: _NamespaceQuery = None
    ) -> JSONResponse:
        """The row stays, marked deleted (listed with `include_deleted`);
        creating the name again replaces it."""
        scope = access.one_namespace(namespace)
        record = await change(name, scope, lambda: store.delete_budget(name, namespace=scope))
        return JSONResponse(_out(record))

    @router.post(
        "/{name}/reset", response_model=BudgetOut, responses=reads, summary="Reset a budget's spend"
    )
    async def reset_budget(
        name: _Name, access: Admin, namespace: _NamespaceQuery = None
    ) -> JSONResponse:
        """Spend counts from now on, until the period's next reset."""
        scope = access.one_namespace(namespace)
        record = await change(name, scope, lambda: store.reset_budget(name, namespace=scope))
        return JSONResponse(_out(record))

    @router.get(
        "/{name}/status",
        response_model=OneBudgetStatus,
        responses=reads,
        summary="One budget's status",
    )
    async def budget_status(
        name: _Name, access: Admin, namespace: _NamespaceQuery = None
    ) -> JSONResponse:
        """Its definition, its thresholds and its spend per scope value."""
        scope = access.one_namespace(namespace)
        record = await lookup(name, scope)
        rows = await change(name, scope, lambda: store.budget_status(name, namespace=scope))
        out = OneBudgetStatus.model_validate(
            {"budget": _out(record), "thresholds": record.budget.thresholds, "status": rows}
        )
        return JSONResponse(out.model_dump(mode="json"))

    @router.get(
        "/{name}/history",
        response_model=BudgetHistory,
        responses=reads,
        summary="A budget's daily spend",
    )
    async def budget_history(
        name: _Name,
        access: Admin,
        days: Annotated[int, Query(ge=1, le=MAX_HISTORY_DAYS)] = 30,
        namespace: _NamespaceQuery = None,
    ) -> JSONResponse:
        """Spend per day in the budget's time zone over the last `days` days
        (1 to 365); days without spend are left out."""
        scope = access.one_namespace(namespace)
        record = await lookup(name, scope)
        history = await change(
            name, scope, lambda: store.budget_history(name, days=days, namespace=scope)
        )
        out = BudgetHistory.model_validate(
            {
                "budget": name,
                "namespace": scope,
                "tz": record.budget.tz,
                "days": days,
                "history": [{"day": day, "spent_usd": spent} for day, spent in history],
            }
        )
        return JSONResponse(out.model_dump(mode="json"))

    return router
