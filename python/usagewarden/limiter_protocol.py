"""The limiter contract: what ``RateLimiter`` (in-process) and
``RedisRateLimiter`` (shared through Redis) both provide.

Code that takes a limiter (the FastAPI middleware and router, the Warden,
the framework adapters) accepts any object satisfying :class:`Limiter`, never
one concrete class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._core import AcquireCoroutine, Decision, ManualClock, RateLimits, Reservation, Usage

    _Key = str | tuple[str, ...]


@runtime_checkable
class Limiter(Protocol):
    """Sliding-window limits per key, checked and recorded atomically."""

    @property
    def limits(self) -> RateLimits: ...
    @property
    def per_key(self) -> dict[str, RateLimits]: ...
    @property
    def clock(self) -> ManualClock | None: ...

    def try_acquire(
        self,
        key: _Key = "default",
        *,
        requests: int = 1,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cost: float = 0.0,
    ) -> Decision: ...

    def check(
        self,
        key: _Key = "default",
        *,
        requests: int = 1,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cost: float = 0.0,
    ) -> Decision: ...

    def acquire(
        self,
        key: _Key = "default",
        *,
        requests: int = 1,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cost: float = 0.0,
        timeout: float | None = None,
    ) -> AcquireCoroutine[Reservation]: ...

    def acquire_blocking(
        self,
        key: _Key = "default",
        *,
        requests: int = 1,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cost: float = 0.0,
        timeout: float | None = None,
    ) -> Reservation: ...

    def usage(self, key: _Key = "default", window_seconds: float | None = None) -> Usage: ...

    def remaining(self, key: _Key = "default") -> Usage: ...

    def reset(self, key: _Key | None = None) -> None: ...

    def pause(self, key: _Key, seconds: float) -> None: ...

    def observe(
        self,
        key: _Key,
        *,
        remaining_requests: int | None = None,
        remaining_tokens: int | None = None,
        remaining_input_tokens: int | None = None,
        remaining_output_tokens: int | None = None,
        reset_requests: float | None = None,
        reset_tokens: float | None = None,
        reset_input_tokens: float | None = None,
        reset_output_tokens: float | None = None,
    ) -> None: ...


__all__ = ["Limiter"]
