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


#: The draft-11 quota unit of each dimension (``requests`` is the default).
_QUOTA_UNITS = {
    "requests": None,
    "input_tokens": "tokens",
    "output_tokens": "tokens",
    "total_tokens": "tokens",
    "cost": "usd-micros",
}
#: Every rate-limit header this module writes, lower-case.
RATE_LIMIT_HEADER_NAMES = frozenset(
    {
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
    }
)


def _sf_string(value: str) -> str:
    """An RFC 8941 structured-field String."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quota(dimension: str, amount: float) -> int:
    """Draft-11 quotas are integers: cost is given in millionths of a USD."""
    return math.floor(amount * 1_000_000) if dimension == "cost" else math.floor(amount)


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """The headers for the limit that binds: the draft-11 structured fields
    ``RateLimit-Policy: "<limit>";q=<quota>;w=<window>[;qu="tokens"]`` and
    ``RateLimit: "<limit>";r=<remaining>;t=<reset>``, the legacy
    ``RateLimit-Limit``/``-Remaining``/``-Reset`` (and ``X-RateLimit-*``), and
    ``Retry-After`` on every refusal. Reset is in seconds: until the request
    fits when refused, else the limit's window. A request that can never fit
    gets the window as its ``Retry-After``."""
    headers: dict[str, str] = {}
    limit = decision.limit
    if limit is not None:
        if decision.allowed or decision.retry_after is None:
            reset = limit.window
        else:
            reset = decision.retry_after
        remaining = _remaining(decision, limit.dimension)
        values = {
            "Limit": f"{limit.amount:g}" if isinstance(limit.amount, float) else str(limit.amount),
            "Remaining": f"{remaining:g}",
            "Reset": str(math.ceil(reset)),
        }
        for name, value in values.items():
            headers[f"RateLimit-{name}"] = value
            headers[f"X-RateLimit-{name}"] = value
        policy = f"{_sf_string(limit.name)};q={_quota(limit.dimension, limit.amount)}"
        policy += f";w={math.ceil(limit.window)}"
        unit = _QUOTA_UNITS.get(limit.dimension)
        if unit is not None:
            policy += f";qu={_sf_string(unit)}"
        headers["RateLimit-Policy"] = policy
        headers["RateLimit"] = (
            f"{_sf_string(limit.name)};r={max(0, _quota(limit.dimension, remaining))}"
            f";t={math.ceil(reset)}"
        )
    if not decision.allowed:
        wait = decision.retry_after
        if wait is None:
            wait = limit.window if limit is not None else 1.0
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return headers


def _pressure(headers: Mapping[str, str]) -> float:
    """How close a limit is to refusing: remaining / limit (lower binds more)."""
    try:
        limit = float(headers["ratelimit-limit"])
        return float(headers["ratelimit-remaining"]) / limit if limit > 0 else 0.0
    except (KeyError, ValueError):
        return math.inf


def _merge_rate_limit_headers(
    existing: list[tuple[bytes, bytes]], status: int, ours: dict[str, str], refused: bool
) -> list[tuple[bytes, bytes]]:
    """One set of rate-limit headers on a response: the middleware's unless
    the app's own (a ``rate_limit`` dependency) bind more: a refusal of the
    app's, or less remaining of its limit."""
    theirs = {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in existing
        if name.decode("latin-1").lower() in RATE_LIMIT_HEADER_NAMES
    }
    raw = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in ours.items()]
    if not theirs:
        return [*existing, *raw]
    lowered = {n.lower(): v for n, v in ours.items()}
    theirs_bind = status == 429 or (not refused and _pressure(theirs) <= _pressure(lowered))
    if theirs_bind:
        return existing
    kept = [
        (n, v) for n, v in existing if n.decode("latin-1").lower() not in RATE_LIMIT_HEADER_NAMES
    ]
    return [*kept, *raw]


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
    ``Retry-After``; every limited response carries one set of rate-limit
    headers: when a route's ``rate_limit`` dependency also applies, those of
    the limit that binds (the refusing one, else the one with less left).
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

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                merged = _merge_rate_limit_headers(
                    list(message.get("headers", [])), message["status"], headers, refused=False
                )
                message = {**message, "headers": merged}
            await send(message)

        await self.app(scope, receive, send_with_headers)
