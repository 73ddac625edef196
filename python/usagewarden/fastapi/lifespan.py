"""Closing the ledger with the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from ..store_protocol import AsyncMeteringStore, MeteringStore


def store_lifespan(
    store: MeteringStore | AsyncMeteringStore,
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan`` that commits what the store has queued and
    closes it when the app shuts down: ``FastAPI(lifespan=store_lifespan(store))``."""
    if not isinstance(store, MeteringStore | AsyncMeteringStore):
        raise TypeError("store: must be a usagewarden store (SQLiteStore, PostgresStore, …)")

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if isinstance(store, AsyncMeteringStore):
                await store.close()
            else:
                await asyncio.to_thread(store.close)

    return lifespan
