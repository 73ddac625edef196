"""The usage API's audit routes: an event's receipt, the chain head, and
verification of the hash chain in bounded, resumable steps. Each works on
one namespace, the caller's own, and only through the store protocol."""

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.convertors import PathConvertor, register_url_convertor

from ..errors import StoreError
from ..store_protocol import AsyncMeteringStore
from ._access import Access, bad_argument, error_responses, store_failed
from ._errors import api_error
from ._requests import UsageRoute, parse_json, read_body
from .models import CheckpointOut, ReceiptOut, VerifyIn, VerifyOut, verify_adapter

logger = logging.getLogger("usagewarden")

#: Positions one ``POST /verify`` checks when the router is given no other bound.
DEFAULT_MAX_VERIFY_ROWS = 200_000

_NamespaceQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=256, description="The caller's own namespace when absent."),
]
_RequestId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=256,
        pattern=r"^[^\x00]+$",
        description="The event's `request_id` (percent-encode `/` and other reserved characters).",
    ),
]


class _RequestIdConvertor(PathConvertor):
    """The rest of the path, line breaks included (``:path`` stops at one, and
    a request id may hold any character but NUL, which the route refuses)."""

    regex = r"(?s:.*)"


register_url_convertor("usagewarden_request_id", _RequestIdConvertor())


def _invalid(loc: list[str | int], message: str) -> Exception:
    return api_error(
        422,
        "invalid_request",
        f"{loc[-1]}: {message}",
        errors=[{"loc": loc, "msg": message, "type": "value_error"}],
    )


def _verify_schema(max_rows: int) -> dict[str, Any]:
    """The body's schema, self-contained (the checkpoint model inlined) and
    with the router's bound on ``max_rows``."""
    schema = verify_adapter.json_schema()
    definitions = schema.pop("$defs")
    checkpoints = schema["properties"]["checkpoints"]
    checkpoints["items"] = definitions[checkpoints["items"]["$ref"].rsplit("/", 1)[-1]]
    schema["properties"]["max_rows"]["anyOf"][0]["maximum"] = max_rows
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": schema}}}}


def audit_routes(
    store: AsyncMeteringStore,
    *,
    reader: Callable[..., Awaitable[Access]],
    admin: Callable[..., Awaitable[Access]],
    max_verify_rows: int,
    max_body_bytes: int,
) -> APIRouter:
    """The routes, for ``usage_router`` to include under its prefix."""
    Reader = Annotated[Access, Depends(reader)]
    Admin = Annotated[Access, Depends(admin)]
    router = APIRouter(route_class=UsageRoute)

    @router.get(
        "/receipts/{request_id:usagewarden_request_id}",
        response_model=ReceiptOut,
        responses=error_responses(401, 403, 404, 422, 429, 501, 503),
        summary="An event's receipt, to verify offline",
    )
    async def receipt(
        access: Reader, request_id: _RequestId, namespace: _NamespaceQuery = None
    ) -> Response:
        """The event's canonical payload and its place in the namespace's hash
        chain. Anyone can check it with a standard library alone:
        `hashlib.sha256(bytes.fromhex(previous) + payload.encode("utf-8")).hexdigest()`
        equals `digest`, and `previous` is the `digest` of the receipt at
        `position - 1` (64 zeros at position 1). The payload's encoding is
        described in the README's "Auditing" section, so it can be rebuilt from
        the event itself. 404 when the namespace has no event `request_id`."""
        scope = access.one_namespace(namespace)
        try:
            found = await store.receipt(request_id, namespace=scope)
        except ValueError:
            raise api_error(
                404, "not_found", f"no event {request_id!r} in namespace {scope!r}"
            ) from None
        except StoreError as exc:
            raise store_failed(exc) from None
        return JSONResponse({"request_id": request_id, **found.to_dict()})

    @router.get(
        "/checkpoint",
        response_model=CheckpointOut,
        responses=error_responses(401, 403, 422, 429, 501, 503),
        summary="The head of the namespace's hash chain",
    )
    async def checkpoint(access: Reader, namespace: _NamespaceQuery = None) -> Response:
        """Position, digest and time of the chain's head: anchor it elsewhere
        (a log, a ticket, a public ledger), then pass it to `POST /verify`
        later to prove that nothing up to it was rewritten since."""
        try:
            head = await store.checkpoint(access.one_namespace(namespace))
        except StoreError as exc:
            raise store_failed(exc) from None
        return JSONResponse(head.to_dict())

    @router.post(
        "/verify",
        response_model=VerifyOut,
        responses=error_responses(400, 401, 403, 413, 422, 429, 501, 503),
        openapi_extra=_verify_schema(max_verify_rows),
        summary="Verify the namespace's hash chain, a bounded range at a time",
    )
    async def verify(request: Request, access: Admin) -> Response:
        """Recomputes every digest from `start` to `end` and names the first
        altered, missing, inserted or reordered row. One request checks at
        most `max_rows` positions: when the range goes further, `next_start`
        says where the next request resumes (null when done, or when a
        problem was found). Anchored `checkpoints` prove that nothing up to
        them was rewritten; pass the same ones to every request of a walk."""
        body = await read_body(request, max_body_bytes)
        asked: VerifyIn = parse_json(verify_adapter, body if body.strip() else b"{}")
        namespace = access.one_namespace(asked.namespace)
        max_rows = asked.max_rows or max_verify_rows
        if max_rows > max_verify_rows:
            raise _invalid(["body", "max_rows"], f"must be at most {max_verify_rows}")
        first = asked.start or 1
        if asked.end is not None and asked.end < first:
            raise _invalid(["body", "end"], f"must not be before start ({first})")
        anchors = []
        for index, anchor in enumerate(asked.checkpoints):
            if anchor.namespace not in (None, namespace):
                where: list[str | int] = ["body", "checkpoints", index, "namespace"]
                raise _invalid(where, f"must be the verified namespace {namespace!r}")
            anchors.append({**anchor.model_dump(), "namespace": namespace})
        try:
            head = await store.checkpoint(namespace)
            if first > 1 and first > head.position:
                raise _invalid(
                    ["body", "start"], f"is past the chain head (position {head.position})"
                )
            last = head.position if asked.end is None else min(asked.end, head.position)
            bounded = first + max_rows - 1 < last
            end = first + max_rows - 1 if bounded else asked.end
            report = await store.verify(namespace, start=asked.start, end=end, checkpoints=anchors)
        except (ValueError, TypeError) as exc:
            raise bad_argument(exc, ["body"]) from None
        except StoreError as exc:
            raise store_failed(exc) from None
        problem = report.problem
        if problem is not None:
            logger.warning(
                "usagewarden: the hash chain of namespace %r fails verification at position "
                "%d (%s, request %r): %s",
                problem.namespace,
                problem.position,
                problem.kind,
                problem.request_id,
                problem.message,
            )
        reached = next((c for c in report.checkpoints if c.namespace == namespace), None)
        body_out = {
            "ok": report.ok,
            "namespace": namespace,
            "start": first,
            "rows": report.rows,
            "problem": None
            if problem is None
            else {
                "kind": problem.kind,
                "namespace": problem.namespace,
                "position": problem.position,
                "request_id": problem.request_id,
                "message": problem.message,
            },
            "checkpoint": None if reached is None else reached.to_dict(),
            "next_start": first + max_rows if bounded and report.ok else None,
        }
        return JSONResponse(body_out)

    return router
