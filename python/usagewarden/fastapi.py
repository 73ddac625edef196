"""FastAPI integration: API-key authentication and rate limiting for any route.

Install with ``pip install 'usagewarden[fastapi]'``. ``import usagewarden``
never imports FastAPI; this module does.

Error responses have one shape, ``{"detail": {"code": ..., "message": ...}}``
(plus fields such as ``retry_after`` where they apply), whether they come
from a dependency or from the middleware.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

try:
    from fastapi import HTTPException, Request, Response, Security
    from fastapi.responses import JSONResponse
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "usagewarden.fastapi needs FastAPI; install it with: pip install 'usagewarden[fastapi]'"
    ) from exc

from ._core import AsyncSQLiteStore, Decision, RateLimiter, SQLiteStore, UsageEvent

__all__ = [
    "SCOPE_ADMIN",
    "SCOPE_READ",
    "SCOPE_WRITE",
    "MeteringMiddleware",
    "Principal",
    "RateLimitMiddleware",
    "api_key_auth",
    "client_ip",
    "store_lifespan",
    "rate_limit",
    "rate_limit_headers",
]

SCOPE_READ = "usage:read"
SCOPE_WRITE = "usage:write"
SCOPE_ADMIN = "usage:admin"

Key = str | tuple[str, ...]
KeyFunc = Callable[[Request], Key]
#: Keyword arguments for ``RateLimiter.try_acquire`` (``requests``, ``cost``, …).
CostFunc = Callable[[Request], Mapping[str, Any]]


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


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


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
                401, detail=_error("unauthenticated", "an API key is required"), headers=challenge
            )
        candidate = presented.encode()
        found: Principal | None = None
        for key, principal in table:
            if hmac.compare_digest(key, candidate):
                found = principal
        if found is None:
            raise HTTPException(
                401, detail=_error("unauthenticated", "the API key is not valid"), headers=challenge
            )
        return found

    return authenticate


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


def _refusal(decision: Decision) -> dict[str, Any]:
    limit = decision.limit.name if decision.limit is not None else None
    if decision.retry_after is None:
        return _error(
            "rate_limited",
            "the request is larger than a limit and can never fit",
            limit=limit,
            retry_after=None,
        )
    return _error(
        "rate_limited", "rate limit exceeded", limit=limit, retry_after=decision.retry_after
    )


def _check_limiter(limiter: object, key_func: object) -> None:
    if not isinstance(limiter, RateLimiter):
        raise TypeError("limiter: must be a usagewarden.RateLimiter")
    if not callable(key_func):
        raise TypeError("key_func: must be a callable taking the Request")


def rate_limit(
    limiter: RateLimiter, *, key_func: KeyFunc = client_ip, requests: int = 1, **usage: Any
) -> Callable[..., Awaitable[Decision]]:
    """A dependency that admits the request on ``limiter`` or answers 429.

    ``usage`` takes the other ``try_acquire`` keywords (``input_tokens``,
    ``cost``…). Admitted responses carry the ``RateLimit-*`` headers.
    """
    _check_limiter(limiter, key_func)
    limiter.check("usagewarden-argument-check", requests=requests, **usage)  # validates now

    async def dependency(request: Request, response: Response) -> Decision:
        decision = limiter.try_acquire(key_func(request), requests=requests, **usage)
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            raise HTTPException(429, detail=_refusal(decision), headers=headers)
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
        _check_limiter(limiter, key_func)
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
            refusal = JSONResponse({"detail": _refusal(decision)}, status_code=429, headers=headers)
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


logger = logging.getLogger("usagewarden")

#: Returns the consumer a request is metered to (e.g. a tenant from a header).
ConsumerFunc = Callable[[Request], str]


class MeteringMiddleware:
    """Records one ledger event per HTTP request, after the response is sent.

    The event holds the route *template* (``/items/{item_id}``, never the raw
    path), the method, the status and the duration; headers, query strings and
    bodies are never stored. Recording runs in the background and a storage
    failure is logged, never turned into a different response.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: SQLiteStore | AsyncSQLiteStore,
        *,
        agent_id: str,
        consumer_func: ConsumerFunc | None = None,
        action: str = "http.request",
        namespace: str = "default",
    ) -> None:
        if not isinstance(store, SQLiteStore | AsyncSQLiteStore):
            raise TypeError("store: must be a usagewarden.SQLiteStore or AsyncSQLiteStore")
        if consumer_func is not None and not callable(consumer_func):
            raise TypeError("consumer_func: must be a callable taking the Request")
        # Validates agent_id, action and namespace now, not on the first request.
        UsageEvent(agent_id, "anonymous", action=action, namespace=namespace)
        self.app = app
        self.store = store
        self.agent_id = agent_id
        self.consumer_func = consumer_func
        self.action = action
        self.namespace = namespace
        self._pending: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._draining_on_shutdown(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000)
            task = asyncio.get_running_loop().create_task(self._record(scope, status, duration_ms))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _record(self, scope: Scope, status: int, duration_ms: int) -> None:
        try:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            consumer = "anonymous"
            if self.consumer_func is not None:
                consumer = self.consumer_func(Request(scope)) or "anonymous"
            event = UsageEvent(
                self.agent_id,
                consumer,
                namespace=self.namespace,
                action=self.action,
                duration_ms=duration_ms,
                api_calls=1,
                source="usagewarden.fastapi",
                metadata={"route": template, "method": scope.get("method"), "status": status},
            )
            if isinstance(self.store, AsyncSQLiteStore):
                await self.store.record(event)
            else:
                await asyncio.to_thread(self.store.record, event)
        except Exception:  # metering must never affect the request it meters
            logger.exception("usagewarden: could not meter a request")

    def _draining_on_shutdown(self, receive: Receive) -> Receive:
        """Lets events still being recorded finish before the app's own
        shutdown runs (which may close the store)."""

        async def receive_and_drain() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.drain()
            return message

        return receive_and_drain

    async def drain(self) -> None:
        """Waits for events still being recorded (for tests and shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


def store_lifespan(
    store: SQLiteStore | AsyncSQLiteStore,
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan`` that commits what the store has queued and
    closes it when the app shuts down: ``FastAPI(lifespan=store_lifespan(store))``."""
    if not isinstance(store, SQLiteStore | AsyncSQLiteStore):
        raise TypeError("store: must be a usagewarden.SQLiteStore or AsyncSQLiteStore")

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if isinstance(store, AsyncSQLiteStore):
                await store.close()
            else:
                await asyncio.to_thread(store.close)

    return lifespan
