"""Rate limiting for any route: a dependency, an ASGI middleware and the
standard ``RateLimit-*`` / ``Retry-After`` headers."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._core import Decision, RateLimiter
from ..limiter_protocol import Limiter
from ._errors import error_detail

Key = str | tuple[str, ...]
KeyFunc = Callable[[Request], Key]
#: Keyword arguments for ``RateLimiter.try_acquire`` (``requests``, ``cost``, …).
CostFunc = Callable[[Request], Mapping[str, Any]]


def client_ip(request: Request) -> str:
    """The default rate-limit key: the client's address."""
    return request.client.host if request.client is not None else "unknown"


def _remaining(decision: Decision, dimension: str) -> float:
    left = decision.remaining
    values: dict[str, float] = {
        "requests": left.requests,
        "input_tokens": left.input_tokens,
        "output_tokens": left.output_tokens,
        "total_tokens": min(left.input_tokens, left.output_tokens),
        "cost": left.cost,
    }
    return values[dimension]


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """``RateLimit-Limit``/``-Remaining``/``-Reset`` (and ``X-RateLimit-*``) for
    the limit that binds, plus ``Retry-After`` on a refusal. Reset is in
    seconds: until the request fits when refused, else the limit's window."""
    headers: dict[str, str] = {}
    limit = decision.limit
    if limit is not None:
        if decision.allowed or decision.retry_after is None:
            reset = limit.window
        else:
            reset = decision.retry_after
        values = {
            "Limit": f"{limit.amount:g}" if isinstance(limit.amount, float) else str(limit.amount),
            "Remaining": f"{_remaining(decision, limit.dimension):g}",
            "Reset": str(math.ceil(reset)),
        }
        for name, value in values.items():
            headers[f"RateLimit-{name}"] = value
            headers[f"X-RateLimit-{name}"] = value
    if not decision.allowed and decision.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
    return headers


def refusal_detail(decision: Decision) -> dict[str, Any]:
    limit = decision.limit.name if decision.limit is not None else None
    if decision.retry_after is None:
        return error_detail(
            "rate_limited",
            "the request is larger than a limit and can never fit",
            limit=limit,
            retry_after=None,
        )
    return error_detail(
        "rate_limited", "rate limit exceeded", limit=limit, retry_after=decision.retry_after
    )


def check_limiter(limiter: object, key_func: object) -> None:
    if not isinstance(limiter, Limiter):
        raise TypeError("limiter: must be a usagewarden.Limiter (RateLimiter or RedisRateLimiter)")
    if not callable(key_func):
        raise TypeError("key_func: must be a callable taking the Request")


def rate_limit(
    limiter: RateLimiter, *, key_func: KeyFunc = client_ip, requests: int = 1, **usage: Any
) -> Callable[..., Awaitable[Decision]]:
    """A dependency that admits the request on ``limiter`` or answers 429.

    ``usage`` takes the other ``try_acquire`` keywords (``input_tokens``,
    ``cost``…). Admitted responses carry the ``RateLimit-*`` headers.
    """
    check_limiter(limiter, key_func)
    limiter.check("usagewarden-argument-check", requests=requests, **usage)  # validates now

    async def dependency(request: Request, response: Response) -> Decision:
        decision = limiter.try_acquire(key_func(request), requests=requests, **usage)
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            raise HTTPException(429, detail=refusal_detail(decision), headers=headers)
        response.headers.update(headers)
        return decision

    return dependency


class RateLimitMiddleware:
    """Rate-limits every HTTP request of an app (ASGI middleware).

    ``key_func(request)`` names the key (default: the client address);
    ``cost_func(request)``, when given, returns the ``try_acquire`` keywords
    for the request (default: one request). Refused requests get a 429 with
    ``Retry-After``; every limited response carries the ``RateLimit-*`` headers.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        *,
        key_func: KeyFunc = client_ip,
        cost_func: CostFunc | None = None,
    ) -> None:
        check_limiter(limiter, key_func)
        if cost_func is not None and not callable(cost_func):
            raise TypeError("cost_func: must be a callable taking the Request")
        self.app = app
        self.limiter = limiter
        self.key_func = key_func
        self.cost_func = cost_func

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        usage = dict(self.cost_func(request)) if self.cost_func is not None else {}
        decision = self.limiter.try_acquire(self.key_func(request), **usage)
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            refusal = JSONResponse(
                {"detail": refusal_detail(decision)}, status_code=429, headers=headers
            )
            await refusal(scope, receive, send)
            return
        raw = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers.items()
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *raw]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
