"""The usagewarden exception hierarchy, rooted at :class:`UsageWardenError`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import Limit

__all__ = [
    "BudgetExceeded",
    "ConflictError",
    "RateLimitExceeded",
    "StoreError",
    "UsageWardenError",
]


class UsageWardenError(Exception):
    """Base class of every error raised by usagewarden (bad arguments raise
    ``ValueError``/``TypeError`` instead)."""


class RateLimitExceeded(UsageWardenError):
    """A request did not fit its limits before its deadline, or never can.

    ``retry_after`` is the number of seconds until it would fit (``None`` when
    the request is larger than a limit itself), ``limit`` the limit that
    refused it and ``key`` the key it was refused on.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        limit: Limit | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_rate_limit_exceeded, (str(self), self.retry_after, self.limit, self.key))


def _rebuild_rate_limit_exceeded(
    message: str, retry_after: float | None, limit: Limit | None, key: str | None
) -> RateLimitExceeded:
    return RateLimitExceeded(message, retry_after=retry_after, limit=limit, key=key)


class ConflictError(UsageWardenError):
    """The same request id was recorded again with different content."""


class StoreError(UsageWardenError):
    """The usage store could not complete an operation."""


class BudgetExceeded(UsageWardenError):
    """A budget whose action is ``block`` has no room for the call.

    ``budget`` names it; ``spent``, ``reserved`` and ``limit`` are in USD;
    ``next_reset`` is a UTC datetime (``None`` for total and rolling budgets)."""

    def __init__(
        self,
        message: str,
        *,
        budget: str | None = None,
        spent: float | None = None,
        reserved: float | None = None,
        limit: float | None = None,
        next_reset: Any = None,
    ) -> None:
        super().__init__(message)
        self.budget = budget
        self.spent = spent
        self.reserved = reserved
        self.limit = limit
        self.next_reset = next_reset
