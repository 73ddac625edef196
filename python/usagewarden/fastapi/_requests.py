"""Reading request bodies within a size limit, and turning every validation
failure into the documented error shape."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect

from ._errors import api_error, error_detail

T = TypeVar("T")

#: "Client closed request": the status given to a request whose client hung up.
CLIENT_CLOSED_REQUEST = 499


def field_errors(errors: Iterable[Any], prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """Only ``loc``, ``msg`` and ``type``: the offending input is never echoed."""
    return [
        {
            "loc": [*prefix, *(part if isinstance(part, int) else str(part) for part in e["loc"])],
            "msg": str(e["msg"]),
            "type": str(e["type"]),
        }
        for e in errors
    ]


def invalid(errors: list[dict[str, Any]], message: str = "the request is not valid") -> Response:
    body = {"detail": error_detail("invalid_request", message, errors=errors)}
    return JSONResponse(body, status_code=422)


class UsageRoute(APIRoute):
    """Answers FastAPI's own parameter validation errors in the router's
    error shape (``code`` ``invalid_request`` with field paths), whatever
    exception handlers the host app has."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except RequestValidationError as exc:
                response = invalid(field_errors(exc.errors()))
            except ClientDisconnect:
                # The client hung up mid-body: nothing is recorded and nobody
                # is left to answer; 499 is what the metering sees.
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            # Rate-limit headers set by the router's dependencies.
            for name, value in getattr(request.state, "usagewarden_headers", {}).items():
                response.headers.setdefault(name, value)
            return response

        return handle


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed
    ``max_bytes``: from ``Content-Length`` before reading, else while reading."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise api_error(400, "malformed_request", "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> Exception:
    return api_error(
        413, "body_too_large", f"the body is larger than {max_bytes} bytes", max_bytes=max_bytes
    )


def parse_json(adapter: TypeAdapter[T], body: bytes) -> T:
    """Validates ``body`` as JSON: malformed JSON is a 400, a document of
    the wrong shape a 422 naming each field (``["body", index, field]``)."""
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise api_error(400, "malformed_json", "the body is not valid JSON") from None
        raise api_error(
            422,
            "invalid_request",
            "the body is not valid",
            errors=field_errors(errors, ("body",)),
        ) from None


_ARGUMENT = re.compile(r"^([a-z_]+)(?::| must| is)")


def argument_of(error: Exception) -> str | None:
    """The argument a usagewarden ``ValueError``/``TypeError`` names first."""
    match = _ARGUMENT.match(str(error))
    return match.group(1) if match else None
