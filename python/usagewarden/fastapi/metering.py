"""Request metering: one ledger event per HTTP request."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._core import UsageEvent
from ..store_protocol import AsyncMeteringStore, MeteringStore
from ._requests import CLIENT_CLOSED_REQUEST

logger = logging.getLogger("usagewarden")

#: Returns the consumer a request is metered to (e.g. a tenant from a header).
ConsumerFunc = Callable[[Request], str]

#: How many (route, method, status) event prototypes a middleware keeps.
MAX_SHAPES = 1024


class MeteringMiddleware:
    """Records one ledger event per HTTP request, after the response is sent.

    The event holds the route *template* (``/items/{item_id}``, never the raw
    path), the method, the status and the duration; headers, query strings and
    bodies are never stored. A client that hangs up before the response is
    metered with status 499 and ends quietly.

    Recording is a synchronous enqueue on the store's queue (no task, no
    thread per request); the store's writer does the I/O. A full queue is not
    waited on: the event is counted in ``dropped`` and logged. A storage
    failure is counted in ``failed`` and logged, never turned into a
    different response.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: MeteringStore | AsyncMeteringStore,
        *,
        agent_id: str,
        consumer_func: ConsumerFunc | None = None,
        action: str = "http.request",
        namespace: str = "default",
    ) -> None:
        if not isinstance(store, MeteringStore | AsyncMeteringStore):
            raise TypeError("store: must be a usagewarden store (SQLiteStore, PostgresStore, …)")
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
        #: Requests not metered because the store's queue was full.
        self.dropped = 0
        #: Requests not metered because the store failed (closed, stopped).
        self.failed = 0
        self._prototypes: dict[tuple[str, Any, int], UsageEvent] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        completed = False
        disconnected = False

        async def receive_and_watch() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        def send_and_watch(message: Message) -> Awaitable[None]:
            # Hands back the server's own awaitable: no coroutine of ours per message.
            nonlocal status, completed
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body" and not message.get("more_body"):
                completed = True
            return send(message)

        try:
            await self.app(scope, receive_and_watch, send_and_watch)
        except ClientDisconnect:
            # Nobody is left to answer, and the traceback would say nothing.
            disconnected = True
        finally:
            if disconnected and not completed:
                status = CLIENT_CLOSED_REQUEST
            self._record(scope, status, round((time.perf_counter() - started) * 1000))

    def _record(self, scope: Scope, status: int, duration_ms: int) -> None:
        try:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            consumer = "anonymous"
            if self.consumer_func is not None:
                consumer = self.consumer_func(Request(scope)) or "anonymous"
            shape = (template, scope.get("method"), status)
            prototype = self._prototypes.get(shape)
            if prototype is None:
                prototype = self._prototype(shape)
            queued = self.store.record_nowait(prototype._stamped(consumer, duration_ms))
        except Exception:  # metering must never affect the request it meters
            self.failed += 1
            logger.exception("usagewarden: could not meter a request")
            return
        if not queued:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "usagewarden: the store's queue is full; %d requests not metered so far",
                    self.dropped,
                )

    def _prototype(self, shape: tuple[str, Any, int]) -> UsageEvent:
        """The event of one (route, method, status), its metadata converted
        and redacted once. Kept for at most ``MAX_SHAPES`` shapes: the method
        comes from the client, so the shapes are not bounded by the app."""
        template, method, status = shape
        prototype = UsageEvent(
            self.agent_id,
            "anonymous",
            namespace=self.namespace,
            action=self.action,
            api_calls=1,
            source="usagewarden.fastapi",
            metadata={"route": template, "method": method, "status": status},
        )
        if len(self._prototypes) < MAX_SHAPES:
            self._prototypes[shape] = prototype
        return prototype

    async def drain(self) -> None:
        """Kept for compatibility: events are queued before the request
        ends, so there is nothing left to wait for (``store.flush()``
        commits them)."""
