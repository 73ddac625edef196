"""``usage_router``: the ledger as an authenticated HTTP API, each caller
confined to its own namespace."""

import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import TypeAdapter, ValidationError

from .._core import UsageEvent, _events_from_json
from ..budgets import BudgetEngine
from ..errors import ConflictError, StoreError
from ..limiter_protocol import Limiter
from ..store_protocol import AsyncMeteringStore
from ._access import (
    Access,
    bad_argument,
    error_responses,
    forbidden_namespace,
    store_unavailable,
)
from ._errors import api_error
from ._export_stream import open_export
from ._requests import UsageRoute, field_errors, parse_json, read_body
from .audit_routes import DEFAULT_MAX_VERIFY_ROWS, audit_routes
from .auth import SCOPE_ADMIN, SCOPE_ALL_NAMESPACES, SCOPE_READ, SCOPE_WRITE, Principal
from .budget_routes import budget_routes
from .models import (
    MAX_BATCH,
    AggregateOut,
    BatchRecorded,
    BudgetList,
    CountList,
    EventIn,
    EventPage,
    ExportFormat,
    GroupBy,
    Purged,
    Recorded,
    StatsOut,
    Timestamp,
    Totals,
    Validation,
    batch_adapter,
    event_adapter,
)
from .rate_limit import rate_limit_headers, refusal_detail

logger = logging.getLogger("usagewarden")

_ANONYMOUS = Principal(
    "anonymous",
    scopes=frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN, SCOPE_ALL_NAMESPACES}),
)
_MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
}
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")
_ANY_JSON: TypeAdapter[Any] = TypeAdapter(Any)
#: Seconds a write waits on a failing store before answering 503.
WRITE_TIMEOUT = 2.0
_RETRY_HINT = (
    "A retry is the same event only with the same content, timestamp included: "
    "send the timestamp along with the request_id"
)


async def _filters(
    namespace: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    agent_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    consumer_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    task_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    model: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    action: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    start: Annotated[
        Timestamp | None, Query(description="Inclusive; ISO 8601 with an offset.")
    ] = None,
    end: Annotated[
        Timestamp | None, Query(description="Inclusive; ISO 8601 with an offset.")
    ] = None,
) -> dict[str, Any]:
    """The ledger filters, from the query string."""
    given = {
        "namespace": namespace,
        "agent_id": agent_id,
        "consumer_id": consumer_id,
        "task_id": task_id,
        "model": model,
        "action": action,
        "start": start,
        "end": end,
    }
    if start is not None and end is not None and start > end:
        raise api_error(
            422,
            "invalid_request",
            "start must not be after end",
            errors=[
                {"loc": ["query", "start"], "msg": "must not be after end", "type": "value_error"}
            ],
        )
    return {name: value for name, value in given.items() if value is not None}


Filters = Annotated[dict[str, Any], Depends(_filters)]


def _confine(access: Access, filters: dict[str, Any]) -> dict[str, Any]:
    """``filters`` limited to the caller's namespace; asking for another is a 403."""
    if access.namespace is None:
        return filters
    asked = filters.get("namespace")
    if asked is not None and asked != access.namespace:
        raise forbidden_namespace(asked)
    return {**filters, "namespace": access.namespace}


def _to_event(item: EventIn, access: Access, where: Sequence[str | int]) -> UsageEvent:
    fields = {name: value for name, value in item.__dict__.items() if value is not None}
    namespace = fields.pop("namespace", None)
    if access.namespace is not None:
        if namespace is not None and namespace != access.namespace:
            raise forbidden_namespace(namespace)
        namespace = access.namespace
    try:
        return UsageEvent(
            fields.pop("agent_id"),
            fields.pop("consumer_id"),
            namespace=namespace or "default",
            **fields,
        )
    except (ValueError, TypeError) as exc:
        raise bad_argument(exc, where) from None


def _events(body: bytes, access: Access, *, many: bool) -> list[UsageEvent]:
    """The events of a request body. Well-formed bodies are read in Rust in one
    step; anything else goes through the models, which name each problem."""
    events = _events_from_json(body, many=many, namespace=access.namespace or "default")
    if events is not None:
        if access.namespace is not None:
            for event in events:
                if event.namespace != access.namespace:
                    raise forbidden_namespace(event.namespace)
        return events
    if many:
        items = parse_json(batch_adapter, body)
        return [_to_event(item, access, ["body", index]) for index, item in enumerate(items)]
    return [_to_event(parse_json(event_adapter, body), access, ["body"])]


def _body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _event_dicts(events: list[UsageEvent]) -> list[dict[str, Any]]:
    return [event.to_dict() for event in events]


def usage_router(
    store: AsyncMeteringStore,
    *,
    auth: Callable[..., Awaitable[Principal]] | Callable[..., Principal] | None,
    prefix: str = "/usage",
    rate_limiter: Limiter | None = None,
    max_page: int = 1000,
    max_export_rows: int = 100_000,
    max_body_bytes: int = 8 * 1024 * 1024,
    max_verify_rows: int = DEFAULT_MAX_VERIFY_ROWS,
    allow_unauthenticated: bool = False,
    tags: Sequence[str] = ("usage",),
    budgets: BudgetEngine | None = None,
) -> APIRouter:
    """The ledger as an HTTP API: ``app.include_router(usage_router(store, auth=…))``.

    ``auth`` is a dependency returning the caller's ``Principal`` (see
    ``api_key_auth``). Reads need ``usage:read``, records ``usage:write``,
    purge, export and verify ``usage:admin``; every read and write is
    confined to the principal's namespace. ``POST /verify`` checks at most
    ``max_verify_rows`` chain positions per request, then says where to
    resume. Mounting without authentication takes
    ``auth=None, allow_unauthenticated=True`` and logs a warning.
    ``rate_limiter`` admits each request under the principal's id.
    Budgets kept in the ledger database are managed under
    ``/budgets/managed`` (``usage:admin``; see ``budget_routes``).
    """
    if not isinstance(store, AsyncMeteringStore):
        raise TypeError(
            "store: must be an async usagewarden store (AsyncSQLiteStore, AsyncPostgresStore)"
        )
    if auth is None and not allow_unauthenticated:
        raise ValueError(
            "auth: is required; pass a dependency such as api_key_auth({...}), or "
            "auth=None with allow_unauthenticated=True to serve the ledger to anyone"
        )
    if auth is not None and not callable(auth):
        raise TypeError("auth: must be a FastAPI dependency returning a Principal")
    if budgets is not None and not isinstance(budgets, BudgetEngine):
        raise TypeError("budgets: must be a usagewarden.BudgetEngine or None")
    if rate_limiter is not None and not isinstance(rate_limiter, Limiter):
        raise TypeError("rate_limiter: must be a usagewarden.Limiter or None")
    for name, value in (
        ("max_page", max_page),
        ("max_export_rows", max_export_rows),
        ("max_body_bytes", max_body_bytes),
        ("max_verify_rows", max_verify_rows),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be a positive int, got {value!r}")
    if not isinstance(prefix, str) or (
        prefix and (not prefix.startswith("/") or prefix.endswith("/"))
    ):
        raise ValueError(f"prefix: must start with '/' and not end with one, got {prefix!r}")

    if auth is None:
        logger.warning(
            "usagewarden: the usage API at %r is mounted WITHOUT authentication; anyone who can "
            "reach it can read, record, purge and export usage",
            prefix or "/",
        )

        async def anonymous() -> Principal:
            return _ANONYMOUS

        authenticate: Callable[..., Any] = anonymous
    else:
        authenticate = auth

    async def checked_principal(
        request: Request, principal: Annotated[Any, Depends(authenticate)]
    ) -> Principal:
        if not isinstance(principal, Principal):
            logger.error(
                "usagewarden: the auth dependency returned %r, not a Principal", type(principal)
            )
            raise api_error(500, "misconfigured", "the server's authentication is misconfigured")
        if rate_limiter is not None:
            decision = rate_limiter.try_acquire(principal.id)
            headers = rate_limit_headers(decision)
            if not decision.allowed:
                raise HTTPException(429, detail=refusal_detail(decision), headers=headers)
            request.state.usagewarden_headers = headers
        return principal

    def requires(scope: str) -> Callable[..., Awaitable[Access]]:
        async def access(principal: Annotated[Principal, Depends(checked_principal)]) -> Access:
            if not principal.has_scope(scope):
                raise api_error(
                    403, "missing_scope", f"the credentials lack the {scope!r} scope", scope=scope
                )
            return Access(principal, None if auth is None else principal.namespace)

        return access

    Reader = Annotated[Access, Depends(requires(SCOPE_READ))]
    Writer = Annotated[Access, Depends(requires(SCOPE_WRITE))]
    Admin = Annotated[Access, Depends(requires(SCOPE_ADMIN))]
    secured = error_responses(401, 403, 422, 429, 503)

    router = APIRouter(prefix=prefix, tags=list(tags), route_class=UsageRoute)

    @router.get("", response_model=EventPage, responses=secured, summary="List events")
    async def list_events(
        access: Reader,
        filters: Filters,
        limit: Annotated[int, Query(ge=1, le=max_page)] = 100,
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
        cursor: Annotated[
            str | None, Query(max_length=128, description="`next_cursor` of the previous page.")
        ] = None,
    ) -> Response:
        """Events in ledger order (oldest first). Follow `next_cursor` for
        deep pages: events recorded meanwhile are neither skipped nor repeated."""
        scoped = _confine(access, filters)
        try:
            events, next_cursor = await store.page(
                limit=limit, offset=offset, cursor=cursor, **scoped
            )
        except (ValueError, TypeError) as exc:
            raise bad_argument(exc, ["query"]) from None
        except StoreError as exc:
            raise store_unavailable(exc) from None
        return JSONResponse({"events": _event_dicts(events), "next_cursor": next_cursor})

    @router.post(
        "",
        status_code=201,
        response_model=Recorded,
        responses={
            200: {"model": Recorded, "description": "Recorded before: nothing changed."},
            **error_responses(400, 401, 403, 409, 413, 422, 429, 503),
        },
        openapi_extra=_body_schema(event_adapter.json_schema()),
        summary="Record one event",
    )
    async def record_event(request: Request, access: Writer) -> Response:
        """Durable before the response: 201 when new, 200 when the same event
        (same `request_id` and content) was recorded before, 409 when the
        `request_id` was used for different content."""
        [event] = _events(await read_body(request, max_body_bytes), access, many=False)
        inserted = await _record(store, [event])
        recorded = {
            "request_id": event.request_id,
            "namespace": event.namespace,
            "created": inserted == 1,
        }
        return JSONResponse(recorded, status_code=201 if inserted else 200)

    @router.post(
        "/batch",
        status_code=201,
        response_model=BatchRecorded,
        responses={
            200: {"model": BatchRecorded, "description": "Every event was recorded before."},
            **error_responses(400, 401, 403, 409, 413, 422, 429, 503),
        },
        openapi_extra=_body_schema(
            {
                "type": "array",
                "items": event_adapter.json_schema(),
                "minItems": 1,
                "maxItems": MAX_BATCH,
            }
        ),
        summary="Record 1 to 1,000 events atomically",
    )
    async def record_batch(request: Request, access: Writer) -> Response:
        """All or nothing: one invalid event (422 naming its index and field),
        one event for another namespace (403) or one conflicting `request_id`
        (409) and nothing is stored."""
        events = _events(await read_body(request, max_body_bytes), access, many=True)
        inserted = await _record(store, events)
        body = {"received": len(events), "inserted": inserted, "duplicates": len(events) - inserted}
        return JSONResponse(body, status_code=201 if inserted else 200)

    @router.post(
        "/validate",
        response_model=Validation,
        responses=error_responses(400, 401, 403, 413, 429),
        openapi_extra=_body_schema(
            {
                "anyOf": [
                    event_adapter.json_schema(),
                    {"type": "array", "items": event_adapter.json_schema()},
                ]
            }
        ),
        summary="Check events without recording them",
    )
    async def validate_events(request: Request, access: Writer) -> Validation:
        """One event or a list: `valid` and every problem found, with its path."""
        body = await read_body(request, max_body_bytes)
        return _validate(body, access)

    @router.post(
        "/purge", response_model=Purged, responses=secured, summary="Delete expired events"
    )
    async def purge(access: Admin) -> Purged:
        """Removes events older than the store's retention; returns how many."""
        try:
            return Purged(purged=await store.purge_expired(timeout=WRITE_TIMEOUT))
        except StoreError as exc:
            raise store_unavailable(exc) from None

    @router.get(
        "/aggregate", response_model=AggregateOut, responses=secured, summary="Totals per group"
    )
    async def aggregate(
        access: Reader,
        filters: Filters,
        group_by: GroupBy,
        tz: Annotated[
            str, Query(max_length=64, description="IANA time zone for calendar groups.")
        ] = "UTC",
    ) -> Response:
        scoped = _confine(access, filters)
        try:
            groups = await store.aggregate(group_by, tz=tz, **scoped)
        except (ValueError, TypeError) as exc:
            raise bad_argument(exc, ["query"]) from None
        except StoreError as exc:
            raise store_unavailable(exc) from None
        return JSONResponse(
            {"group_by": group_by, "tz": tz, "groups": [g.to_dict() for g in groups]}
        )

    @router.get("/summary", response_model=Totals, responses=secured, summary="Totals")
    async def summary(access: Reader, filters: Filters) -> Response:
        scoped = _confine(access, filters)
        try:
            return JSONResponse((await store.summary(**scoped)).to_dict())
        except StoreError as exc:
            raise store_unavailable(exc) from None

    @router.get(
        "/agents",
        response_model=CountList,
        responses=secured,
        summary="Agents and their event counts",
    )
    async def agents(access: Reader, filters: Filters) -> CountList:
        return await _counts(store.agents, _confine(access, filters))

    @router.get(
        "/consumers",
        response_model=CountList,
        responses=secured,
        summary="Consumers and their event counts",
    )
    async def consumers(access: Reader, filters: Filters) -> CountList:
        return await _counts(store.consumers, _confine(access, filters))

    @router.get(
        "/stats", response_model=StatsOut, responses=secured, summary="Ledger size and health"
    )
    async def stats(access: Reader) -> StatsOut:
        """Events of the caller's namespace; the store-wide figures (queue,
        write errors, size) only with the `usage:all-namespaces` scope."""
        scoped: dict[str, Any] = {} if access.namespace is None else {"namespace": access.namespace}
        try:
            totals = await store.summary(**scoped)
            health = await store.stats()
        except StoreError as exc:
            raise store_unavailable(exc) from None
        wide = access.sees_all_namespaces
        return StatsOut.model_validate(
            {
                "namespace": access.namespace,
                "events": totals.events,
                "unique_agents": totals.unique_agents,
                "unique_consumers": totals.unique_consumers,
                "store": {
                    "retention_seconds": health.retention_seconds,
                    "queued": health.queued if wide else None,
                    "write_errors": health.write_errors if wide else None,
                    "size_bytes": health.size_bytes if wide else None,
                },
            }
        )

    @router.get("/budgets", response_model=BudgetList, responses=secured, summary="Budgets")
    async def budget_status(access: Reader) -> BudgetList:
        """Spend, limit and next reset of each budget of the caller's
        namespace. Global, per-agent and other namespaces' budgets (whose
        spend includes other namespaces) need the `usage:all-namespaces` scope."""
        if budgets is None:
            return BudgetList(budgets=[])
        rows = budgets.status()
        if not access.sees_all_namespaces:
            # A stored budget covers only its own namespace's calls.
            rows = [
                row
                for row in rows
                if row["namespace"] == access.namespace
                or (
                    row["namespace"] is None
                    and row["scope"] == "namespace"
                    and row["scope_value"] == access.namespace
                )
            ]
        return BudgetList.model_validate({"budgets": rows})

    @router.get(
        "/export",
        responses={
            200: {
                "description": "The events, oldest first, as a download.",
                "content": {media: {} for media in _MEDIA_TYPES.values()},
            },
            **secured,
        },
        response_class=StreamingResponse,
        summary="Download events",
    )
    async def export(
        access: Admin,
        filters: Filters,
        format: ExportFormat = "csv",
        limit: Annotated[int | None, Query(ge=1, le=max_export_rows)] = None,
    ) -> StreamingResponse:
        """Streamed as it is read; at most `max_export_rows` events (or `limit`)."""
        scoped = _confine(access, filters)
        rows = limit if limit is not None else max_export_rows
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        label = _UNSAFE_FILENAME.sub("_", access.namespace or "all")
        filename = f"usage-{label}-{stamp}.{format}"
        try:
            chunks = await open_export(
                lambda pipe: store.export(pipe, format=format, limit=rows, **scoped)
            )
        except StoreError as exc:
            raise store_unavailable(exc) from None
        return StreamingResponse(
            chunks,
            media_type=_MEDIA_TYPES[format],
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "X-Export-Limit": str(rows),
            },
        )

    router.include_router(
        budget_routes(store, admin=requires(SCOPE_ADMIN), max_body_bytes=max_body_bytes)
    )
    router.include_router(
        audit_routes(
            store,
            reader=requires(SCOPE_READ),
            admin=requires(SCOPE_ADMIN),
            max_verify_rows=max_verify_rows,
            max_body_bytes=max_body_bytes,
        )
    )
    return router


async def _record(store: AsyncMeteringStore, events: list[UsageEvent]) -> int:
    try:
        return await store.record_batch(events, timeout=WRITE_TIMEOUT)
    except ConflictError as exc:
        if len(events) == 1:
            message = (
                f"request_id {events[0].request_id!r} was recorded before with different "
                "content; nothing was stored"
            )
        else:
            message = str(exc)
        raise api_error(409, "conflict", f"{message}. {_RETRY_HINT}") from None
    except StoreError as exc:
        raise store_unavailable(exc) from None


async def _counts(
    method: Callable[..., Awaitable[list[tuple[str, int]]]], filters: dict[str, Any]
) -> CountList:
    try:
        rows = await method(**filters)
    except StoreError as exc:
        raise store_unavailable(exc) from None
    return CountList.model_validate({"items": [{"id": name, "events": n} for name, n in rows]})


def _validate(body: bytes, access: Access) -> Validation:
    try:
        document = _ANY_JSON.validate_json(body)
    except ValidationError:
        raise api_error(400, "malformed_json", "the body is not valid JSON") from None
    many = isinstance(document, list)
    items = document if many else [document]
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where: list[str | int] = ["body", index] if many else ["body"]
        try:
            # Re-read as JSON: strict validation takes times as strings only there.
            event = event_adapter.validate_json(json.dumps(item))
        except ValidationError as exc:
            errors.extend(field_errors(exc.errors(include_input=False, include_url=False), where))
            continue
        try:
            _to_event(event, access, where)
        except HTTPException as exc:
            detail: dict[str, Any] = exc.detail if isinstance(exc.detail, dict) else {}
            errors.extend(
                detail.get("errors")
                or [
                    {
                        "loc": [*where, "namespace"],
                        "msg": detail.get("message", ""),
                        "type": detail.get("code", ""),
                    }
                ]
            )
    if many and not 1 <= len(items) <= MAX_BATCH:
        errors.append(
            {
                "loc": ["body"],
                "msg": f"a batch holds 1 to {MAX_BATCH} events",
                "type": "too_long" if items else "too_short",
            }
        )
    return Validation.model_validate({"valid": not errors, "errors": errors})
