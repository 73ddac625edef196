"""Streams a ledger export into an HTTP response while the store writes it,
so a 100,000-row export is never held in memory or in a temporary file."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

logger = logging.getLogger("usagewarden")

#: Chunks (of 64 KiB) written ahead of what the client has read.
_DEPTH = 8


class ChunkPipe:
    """A binary file object for ``store.export``: the store's worker thread
    writes, the event loop reads. ``write`` blocks once ``_DEPTH`` chunks are
    unread (back-pressure from a slow client) and fails once the reader has
    gone, which stops the export."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._slots = threading.Semaphore(_DEPTH)
        self._reader_gone = False

    def write(self, data: bytes) -> int:
        self._slots.acquire()
        if self._reader_gone:
            raise BrokenPipeError("the client stopped reading the export")
        self._loop.call_soon_threadsafe(self._chunks.put_nowait, bytes(data))
        return len(data)

    def writable(self) -> bool:
        return True

    async def read(self) -> bytes | None:
        """The next chunk, or ``None`` once the writer has finished."""
        chunk = await self._chunks.get()
        if chunk is not None:
            self._slots.release()
        return chunk

    def writer_finished(self) -> None:
        self._chunks.put_nowait(None)

    def reader_gone(self) -> None:
        self._reader_gone = True
        for _ in range(_DEPTH + 1):
            self._slots.release()


async def open_export(start: Callable[[ChunkPipe], Awaitable[int]]) -> AsyncIterator[bytes]:
    """Runs ``start(pipe)`` (the store's export into ``pipe``) until its first
    chunk, so that a store that cannot export at all raises here, before any
    response is sent; then returns the chunks as an iterator. A failure after
    the first byte can only cut the response short; it is logged."""
    pipe = ChunkPipe(asyncio.get_running_loop())
    export = asyncio.ensure_future(start(pipe))
    export.add_done_callback(lambda _: pipe.writer_finished())
    # Retrieves the outcome of an export cut short, so it is never reported
    # as an unhandled task error.
    export.add_done_callback(lambda f: f.cancelled() or f.exception())
    first = await pipe.read()
    if first is None:
        await export  # raises if the export failed before writing anything
    chunks = _chunks(pipe, export, first)
    # An iterator dropped unread must still release the writer.
    weakref.finalize(chunks, pipe.reader_gone)
    return chunks


async def _chunks(
    pipe: ChunkPipe, export: asyncio.Future[int], first: bytes | None
) -> AsyncIterator[bytes]:
    try:
        chunk = first
        while chunk is not None:
            yield chunk
            chunk = await pipe.read()
        await export
    except Exception:
        logger.exception("usagewarden: an export stopped part-way")
        raise
    finally:
        pipe.reader_gone()
