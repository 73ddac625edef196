"""Rate limiting for any route: a dependency, an ASGI middleware and the
standard ``RateLimit-*`` / ``Retry-After`` headers."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, get_args

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._core import Decision
from ..limiter_protocol import Limiter
from ._errors import error_detail

Key = str | tuple[str, ...]
#: Which rate-limit headers a response carries: ``"all"`` (the default),
#: ``"draft"`` (``RateLimit-Policy`` and ``RateLimit``), ``"legacy"``
#: (``RateLimit-Limit``/``-Remaining``/``-Reset`` and ``X-RateLimit-*``) or
#: ``"none"``; every set sends ``Retry-After`` on a refusal.
HeaderSet = Literal["all", "draft", "legacy", "none"]
_HEADER_SETS: tuple[str, ...] = get_args(HeaderSet)
KeyFunc = Callable[[Request], Key]
#: Keyword arguments for ``RateLimiter.try_acquire`` (``requests``, ``cost``, …).
CostFunc = Callable[[Request], Mapping[str, Any]]


def client_ip(request: Request) -> str:
    """The default rate-limit key: the client's address."""
    return request.client.host if request.client is not None else "unknown"


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
_RATE_LIMIT_HEADER_BYTES = frozenset(name.encode("latin-1") for name in RATE_LIMIT_HEADER_NAMES)


def check_header_set(headers: object) -> HeaderSet:
    if headers not in _HEADER_SETS:
        choices = ", ".join(repr(name) for name in _HEADER_SETS)
        raise ValueError(f"headers: must be one of {choices}, got {headers!r}")
    return headers  # type: ignore[return-value]


def rate_limit_headers(decision: Decision, headers: HeaderSet = "all") -> dict[str, str]:
    """The headers for the limit that binds: the draft-11 structured fields
    ``RateLimit-Policy: "<limit>";q=<quota>;w=<window>[;qu="tokens"]`` and
    ``RateLimit: "<limit>";r=<remaining>;t=<reset>``, the legacy
    ``RateLimit-Limit``/``-Remaining``/``-Reset`` (and ``X-RateLimit-*``), and
    ``Retry-After`` on every refusal. Reset is in seconds: until the request
    fits when refused, else the limit's window. A request that can never fit
    gets the window as its ``Retry-After``. ``headers`` picks a set (see
    ``HeaderSet``). (``Decision.rate_limit_headers``.)"""
    return decision.rate_limit_headers(check_header_set(headers))


def _structured_parameter(value: bytes, name: bytes) -> float:
    """A numeric parameter of a draft-11 field (``"<limit>";q=10;w=60``)."""
    for part in value.split(b";")[1:]:
        key, _, number = part.strip().partition(b"=")
        if key == name:
            return float(number)
    raise KeyError(name)


def _pressure(headers: Mapping[bytes, bytes]) -> float:
    """How close a limit is to refusing: remaining / limit (lower binds more),
    from whichever set of headers the response carries."""
    try:
        if b"ratelimit-limit" in headers:
            limit = float(headers[b"ratelimit-limit"])
            remaining = float(headers[b"ratelimit-remaining"])
        else:
            limit = _structured_parameter(headers[b"ratelimit-policy"], b"q")
            remaining = _structured_parameter(headers[b"ratelimit"], b"r")
        return remaining / limit if limit > 0 else 0.0
    except (KeyError, ValueError):
        return math.inf


def _merge_rate_limit_headers(
    existing: Iterable[tuple[bytes, bytes]], status: int, ours: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """One set of rate-limit headers on a response: the middleware's unless
    the app's own (a ``rate_limit`` dependency) bind more: a refusal of the
    app's, or less remaining of its limit."""
    existing = list(existing)
    theirs = {
        name.lower(): value for name, value in existing if name.lower() in _RATE_LIMIT_HEADER_BYTES
    }
    if not theirs:
        existing += ours
        return existing
    if status == 429 or _pressure(theirs) <= _pressure(dict(ours)):
        return existing
    kept = [(n, v) for n, v in existing if n.lower() not in _RATE_LIMIT_HEADER_BYTES]
    return [*kept, *ours]


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
    limiter: Limiter,
    *,
    key_func: KeyFunc = client_ip,
    requests: int = 1,
    headers: HeaderSet = "all",
    **usage: Any,
) -> Callable[..., Awaitable[Decision]]:
    """A dependency that admits the request on ``limiter`` or answers 429.

    ``usage`` takes the other ``try_acquire`` keywords (``input_tokens``,
    ``cost``…). Responses carry the rate-limit headers of ``headers`` (see
    ``HeaderSet``).
    """
    check_limiter(limiter, key_func)
    which = check_header_set(headers)
    limiter.check("usagewarden-argument-check", requests=requests, **usage)  # validates now

    async def dependency(request: Request, response: Response) -> Decision:
        decision = limiter.try_acquire(key_func(request), requests=requests, **usage)
        headers = decision.rate_limit_headers(which)
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
    ``headers`` picks which (see ``HeaderSet``): each costs the server a few
    microseconds per response, so an API whose clients read one style can
    send that one alone.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: Limiter,
        *,
        key_func: KeyFunc = client_ip,
        cost_func: CostFunc | None = None,
        headers: HeaderSet = "all",
    ) -> None:
        check_limiter(limiter, key_func)
        if cost_func is not None and not callable(cost_func):
            raise TypeError("cost_func: must be a callable taking the Request")
        self.headers = check_header_set(headers)
        self.app = app
        self.limiter = limiter
        self.key_func = key_func
        self.cost_func = cost_func

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.key_func is client_ip and self.cost_func is None:
            # The default key, read from the scope without building a Request.
            client = scope.get("client")
            host = client[0] if client else None
            decision = self.limiter.try_acquire(host if host is not None else "unknown")
        else:
            request = Request(scope)
            usage = dict(self.cost_func(request)) if self.cost_func is not None else {}
            decision = self.limiter.try_acquire(self.key_func(request), **usage)
        if not decision.allowed:
            refusal = JSONResponse(
                {"detail": refusal_detail(decision)},
                status_code=429,
                headers=decision.rate_limit_headers(self.headers),
            )
            await refusal(scope, receive, send)
            return
        ours = decision.asgi_rate_limit_headers(self.headers)
        if not ours:
            await self.app(scope, receive, send)
            return

        def send_with_headers(message: Message) -> Awaitable[None]:
            # Hands back the server's own awaitable: no coroutine of ours per message.
            if message["type"] == "http.response.start":
                merged = _merge_rate_limit_headers(
                    message.get("headers") or (), message["status"], ours
                )
                message = {**message, "headers": merged}
            return send(message)

        await self.app(scope, receive, send_with_headers)
