"""The awaitable of an async call whose result is known when it is made."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


async def completed(value: T) -> T:
    """Returns ``value`` on the first step of its ``await``, without yielding to
    the loop. A native coroutine is the cheapest awaitable to create and to
    finish, and ``create_task``, ``gather`` and ``wait_for`` take it as any other."""
    return value
