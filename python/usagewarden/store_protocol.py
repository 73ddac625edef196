"""The store protocols: what the Warden, the budgets, the FastAPI middleware
and router need from a ledger, whichever backend holds it.

``open_store(url)`` / ``open_async_store(url)`` open a store by URL:
``sqlite:///relative.db``, ``sqlite:////absolute/path.db`` or
``postgresql://user@host:port/dbname`` (any libpq URL), so one program
moves from a file to a shared database by changing a string.

Every store satisfies one of them: ``SQLiteStore`` and ``PostgresStore`` are
``MeteringStore``; ``AsyncSQLiteStore`` and ``AsyncPostgresStore`` are
``AsyncMeteringStore`` (the same methods as coroutines, plus ``blocking()``
for the sync view of the same ledger). Code that takes a store checks
``isinstance(store, MeteringStore | AsyncMeteringStore)``, never a concrete
class.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from ._core import (
    Aggregate,
    AsyncPostgresStore,
    AsyncSQLiteStore,
    Budget,
    BudgetRecord,
    Checkpoint,
    PostgresStore,
    Receipt,
    SQLiteStore,
    StoreStats,
    UsageEvent,
    VerifyReport,
)

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

    from ._core import Pricing, _Dest, _Filters, _Format, _GroupBy

__all__ = ["AsyncMeteringStore", "MeteringStore", "open_async_store", "open_store"]


@runtime_checkable
class MeteringStore(Protocol):
    """A usage ledger with blocking methods."""

    @property
    def durability(self) -> Literal["batch", "commit"]: ...
    @property
    def retention_seconds(self) -> float | None: ...
    @property
    def closed(self) -> bool: ...
    def record(self, event: UsageEvent) -> str: ...
    def record_nowait(self, event: UsageEvent) -> bool: ...
    def record_batch(
        self, events: Iterable[UsageEvent], *, timeout: float | None = None
    ) -> int: ...
    def query(
        self, *, limit: int | None = None, offset: int | None = None, **filters: Unpack[_Filters]
    ) -> list[UsageEvent]: ...
    def page(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        cursor: str | None = None,
        **filters: Unpack[_Filters],
    ) -> tuple[list[UsageEvent], str | None]: ...
    def aggregate(
        self, group_by: _GroupBy, *, tz: str = "UTC", **filters: Unpack[_Filters]
    ) -> list[Aggregate]: ...
    def summary(self, **filters: Unpack[_Filters]) -> Aggregate: ...
    def agents(self, **filters: Unpack[_Filters]) -> list[tuple[str, int]]: ...
    def consumers(self, **filters: Unpack[_Filters]) -> list[tuple[str, int]]: ...
    def stats(self) -> StoreStats: ...
    def purge_expired(self, *, timeout: float | None = None) -> int: ...
    def reprice(self, pricing: Pricing, **filters: Unpack[_Filters]) -> int: ...
    def export(
        self,
        dest: _Dest,
        *,
        format: _Format = "csv",
        limit: int | None = None,
        **filters: Unpack[_Filters],
    ) -> int: ...
    def flush(self, *, timeout: float | None = None) -> None: ...
    def close(self, *, timeout: float | None = None) -> None: ...
    def verify(
        self,
        namespace: str | None = None,
        *,
        start: int | None = None,
        end: int | None = None,
        checkpoints: Iterable[Checkpoint | dict[str, Any]] | None = None,
    ) -> VerifyReport: ...
    def receipt(self, request_id: str, *, namespace: str = "default") -> Receipt: ...
    def checkpoint(self, namespace: str = "default") -> Checkpoint: ...
    def create_budget(self, budget: Budget, *, namespace: str = "default") -> BudgetRecord: ...
    def update_budget(self, budget: Budget, *, namespace: str = "default") -> BudgetRecord: ...
    def delete_budget(self, name: str, *, namespace: str = "default") -> BudgetRecord: ...
    def reset_budget(self, name: str, *, namespace: str = "default") -> BudgetRecord: ...
    def get_budget(self, name: str, *, namespace: str = "default") -> BudgetRecord: ...
    def budgets(
        self, namespace: str | None = None, *, include_deleted: bool = False
    ) -> list[BudgetRecord]: ...
    def budget_status(
        self, name: str | None = None, *, namespace: str = "default"
    ) -> list[dict[str, Any]]: ...
    def budget_history(
        self, name: str, *, days: int = 30, namespace: str = "default"
    ) -> list[tuple[str, float]]: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *_args: object) -> bool: ...


@runtime_checkable
class AsyncMeteringStore(Protocol):
    """A usage ledger whose methods are coroutines."""

    @property
    def durability(self) -> Literal["batch", "commit"]: ...
    @property
    def retention_seconds(self) -> float | None: ...
    @property
    def closed(self) -> bool: ...
    def blocking(self) -> MeteringStore: ...
    async def record(self, event: UsageEvent) -> str: ...
    def record_nowait(self, event: UsageEvent) -> bool: ...
    async def record_batch(
        self, events: Iterable[UsageEvent], *, timeout: float | None = None
    ) -> int: ...
    async def query(
        self, *, limit: int | None = None, offset: int | None = None, **filters: Unpack[_Filters]
    ) -> list[UsageEvent]: ...
    async def page(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        cursor: str | None = None,
        **filters: Unpack[_Filters],
    ) -> tuple[list[UsageEvent], str | None]: ...
    async def aggregate(
        self, group_by: _GroupBy, *, tz: str = "UTC", **filters: Unpack[_Filters]
    ) -> list[Aggregate]: ...
    async def summary(self, **filters: Unpack[_Filters]) -> Aggregate: ...
    async def agents(self, **filters: Unpack[_Filters]) -> list[tuple[str, int]]: ...
    async def consumers(self, **filters: Unpack[_Filters]) -> list[tuple[str, int]]: ...
    async def stats(self) -> StoreStats: ...
    async def purge_expired(self, *, timeout: float | None = None) -> int: ...
    async def reprice(self, pricing: Pricing, **filters: Unpack[_Filters]) -> int: ...
    async def export(
        self,
        dest: _Dest,
        *,
        format: _Format = "csv",
        limit: int | None = None,
        **filters: Unpack[_Filters],
    ) -> int: ...
    async def flush(self, *, timeout: float | None = None) -> None: ...
    async def close(self, *, timeout: float | None = None) -> None: ...
    async def verify(
        self,
        namespace: str | None = None,
        *,
        start: int | None = None,
        end: int | None = None,
        checkpoints: Iterable[Checkpoint | dict[str, Any]] | None = None,
    ) -> VerifyReport: ...
    async def receipt(self, request_id: str, *, namespace: str = "default") -> Receipt: ...
    async def checkpoint(self, namespace: str = "default") -> Checkpoint: ...
    async def create_budget(
        self, budget: Budget, *, namespace: str = "default"
    ) -> BudgetRecord: ...
    async def update_budget(
        self, budget: Budget, *, namespace: str = "default"
    ) -> BudgetRecord: ...
    async def delete_budget(self, name: str, *, namespace: str = "default") -> BudgetRecord: ...
    async def reset_budget(self, name: str, *, namespace: str = "default") -> BudgetRecord: ...
    async def get_budget(self, name: str, *, namespace: str = "default") -> BudgetRecord: ...
    async def budgets(
        self, namespace: str | None = None, *, include_deleted: bool = False
    ) -> list[BudgetRecord]: ...
    async def budget_status(
        self, name: str | None = None, *, namespace: str = "default"
    ) -> list[dict[str, Any]]: ...
    async def budget_history(
        self, name: str, *, days: int = 30, namespace: str = "default"
    ) -> list[tuple[str, float]]: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *_args: object) -> bool: ...


_POSTGRES_SCHEMES = ("postgresql", "postgres")


def _sqlite_path(url: str) -> str:
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ValueError(
            f"url: a SQLite URL is sqlite:///relative.db or sqlite:////abs.db, got {url!r}"
        )
    return unquote(rest[1:])


def _scheme(url: object) -> str:
    if not isinstance(url, str):
        raise TypeError(f"url: must be a str, got {type(url).__name__}")
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("sqlite", *_POSTGRES_SCHEMES):
        raise ValueError(
            f"url: must start with sqlite:/// or postgresql://, got {url.split(':', 1)[0]!r}"
        )
    return scheme


def open_store(url: str, **options: Any) -> MeteringStore:
    """A store for ``url`` (``sqlite:///…`` or ``postgresql://…``); ``options``
    go to its constructor (``durability``, ``retention_seconds``, ``schema``, …)."""
    if _scheme(url) == "sqlite":
        return SQLiteStore(_sqlite_path(url), **options)
    return PostgresStore(url, **options)


def open_async_store(url: str, **options: Any) -> AsyncMeteringStore:
    """``open_store`` for asyncio: an ``AsyncSQLiteStore`` or ``AsyncPostgresStore``."""
    if _scheme(url) == "sqlite":
        return AsyncSQLiteStore(_sqlite_path(url), **options)
    return AsyncPostgresStore(url, **options)
