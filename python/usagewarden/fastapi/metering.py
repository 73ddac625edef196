"""Request metering: one ledger event per HTTP request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._core import UsageEvent
from ..store_protocol import AsyncMeteringStore, MeteringStore

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
        self._async_store = store if isinstance(store, AsyncMeteringStore) else None
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
            if self._async_store is not None:
                await self._async_store.record(event)
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
