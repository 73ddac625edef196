"""``BudgetEngine``: spending limits that reserve the estimated cost before
a call and settle the actual cost after it, so concurrent calls cannot
overspend beyond what is in flight.

The accounting runs in Rust under one lock (a check takes a few
microseconds); this module turns its answers into Python: the estimate from
the prices, ``BudgetExceeded``, the model to downgrade to, and alerts, which
go to ``on_alert`` (a function or a coroutine function) and into the ledger.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ._core import (
    Budget,
    ManualClock,
    Pricing,
    RedisRateLimiter,
    Usage,
    UsageEvent,
    _BudgetCore,
)
from .errors import BudgetExceeded, StoreError
from .store_protocol import AsyncMeteringStore, MeteringStore

__all__ = ["BudgetCheck", "BudgetEngine"]

logger = logging.getLogger("usagewarden")

#: ``on_alert`` receives a dict: budget, scope_value, kind ("threshold" or
#: "reset"), threshold, spent_usd, limit_usd, period_start, at.
AlertCallback = Callable[[dict[str, Any]], Any]


def _utc(us: int | None) -> datetime | None:
    if us is None:
        return None
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)


@dataclass(frozen=True)
class BudgetCheck:
    """A call admitted by every budget covering it: settle it with the actual
    cost. ``model`` is the one to call (``downgraded`` when a budget chose a
    cheaper one)."""

    reservation: int
    model: str | None
    downgraded: bool
    estimated_cost: float


class BudgetEngine:
    """Enforces ``budgets`` over the spend recorded in ``store``.

    ``check`` reserves a call's estimated cost (from ``estimated_cost``, or
    from ``pricing`` and the call's token estimate) on every budget that
    covers it, or raises ``BudgetExceeded`` reserving nothing; ``settle``
    replaces the estimate with the actual cost. Each threshold fires once per
    budget and period; a new period fires a "reset" alert. Spend already in
    the ledger for the current period counts from the first call that needs
    it, so it survives a restart; it is read again every ``refresh_seconds``
    (``None``: never), so processes sharing the ledger file share the budget
    (what other processes have in flight is not seen, only what they recorded).

    Budgets kept in the ledger database (``store.create_budget``, the usage
    API's ``/budgets/managed`` routes, ``usagewarden budgets create``) are
    enforced too, unless ``stored=False``: they are read at the first call and
    again every ``refresh_seconds``, so budgets created, updated, deleted or
    reset there take effect without a restart. A stored budget covers only
    the calls of its namespace, and there it overrides a budget given in code
    under the same name; in other namespaces the code budget still holds. An
    update or a reset counts the budget's spend afresh from the ledger (from
    the reset time on, after a reset).

    With ``shared=`` (a ``RedisRateLimiter``, or a Redis URL), every budget's
    settled spend and in-flight estimates of the current period live in
    Redis, checked and reserved in one atomic script over every budget of a
    call, so processes and hosts see each other's calls in flight. Spend is
    seeded from the ledger when Redis has none for the period (first use, a
    restart or an eviction; two processes seeding never count it twice) and
    still read again every ``refresh_seconds``. A reservation that is never
    settled (its process died) is released 10 minutes after it was made.
    While Redis is unreachable, calls fail with ``StoreError`` naming Redis, or,
    with a limiter made with ``on_unavailable="local"``, the budgets are kept
    in the process (as without ``shared=``) with a warning. Alerts fire once
    per budget and period across all the processes sharing it.
    """

    def __init__(
        self,
        budgets: Sequence[Budget],
        store: MeteringStore | AsyncMeteringStore,
        pricing: Pricing | None = None,
        *,
        on_alert: AlertCallback | None = None,
        clock: ManualClock | None = None,
        refresh_seconds: float | None = 5.0,
        stored: bool = True,
        shared: RedisRateLimiter | str | None = None,
    ) -> None:
        if pricing is not None and not isinstance(pricing, Pricing):
            raise TypeError("pricing: must be a usagewarden.Pricing or None")
        if on_alert is not None and not callable(on_alert):
            raise TypeError("on_alert: must be a callable taking the alert dict")
        self.budgets = list(budgets)
        if not isinstance(stored, bool):
            raise TypeError("stored: must be a bool")
        self._core = _BudgetCore(self.budgets, store, clock, refresh_seconds, stored, shared)
        self.shared = shared
        self.store = store
        # Alerts and history are read and written from sync code.
        self._sync_store = store.blocking() if isinstance(store, AsyncMeteringStore) else store
        self.pricing = pricing
        self.on_alert = on_alert
        self._by_name = {b.name: b for b in self.budgets}
        self._tasks: set[asyncio.Task[Any]] = set()

    def check(
        self,
        model: str | None = None,
        *,
        agent_id: str = "agent",
        consumer_id: str = "default",
        namespace: str = "default",
        task_id: str | None = None,
        estimated_cost: float | None = None,
        input_tokens: int = 0,
        max_output_tokens: int = 0,
    ) -> BudgetCheck:
        if estimated_cost is None:
            estimated_cost = 0.0
            if self.pricing is not None and model is not None:
                usage = Usage(input_tokens=input_tokens, output_tokens=max_output_tokens)
                estimated_cost = self.pricing.cost(model, usage) or 0.0
        reservation, outcome, alerts = self._core.check(
            model, agent_id, consumer_id, namespace, task_id, estimated_cost
        )
        self._dispatch(alerts)
        if reservation is None:
            refusal: dict[str, Any] = outcome
            who = f" for {refusal['scope_value']!r}" if refusal["scope_value"] else ""
            raise BudgetExceeded(
                f"budget {refusal['budget']!r}{who} has no room: "
                f"{refusal['spent_usd']:.6f} USD spent and {refusal['reserved_usd']:.6f} in "
                f"flight of {refusal['limit_usd']:.6f}; this call needs {estimated_cost:.6f}",
                budget=refusal["budget"],
                spent=refusal["spent_usd"],
                reserved=refusal["reserved_usd"],
                limit=refusal["limit_usd"],
                next_reset=_utc(refusal["next_reset_us"]),
            )
        downgrade: str | None = outcome
        return BudgetCheck(
            reservation=reservation,
            model=downgrade or model,
            downgraded=downgrade is not None,
            estimated_cost=estimated_cost,
        )

    def settle(self, check: BudgetCheck, cost: float) -> None:
        """Replaces the call's estimate with its actual cost (USD)."""
        if not isinstance(check, BudgetCheck):
            raise TypeError("check: must be the BudgetCheck that check() returned")
        try:
            alerts = self._core.settle(check.reservation, cost)
        except StoreError:
            # The call happened: its cost reaches the shared state through the
            # ledger at the next refresh, and its estimate is released at its deadline.
            logger.warning("usagewarden: could not settle a budget reservation", exc_info=True)
            return
        self._dispatch(alerts)

    def cancel(self, check: BudgetCheck) -> None:
        """Releases a call that did not happen."""
        self.settle(check, 0.0)

    def enforced(self) -> list[Budget]:
        """Every budget enforced now: those given in code, then the stored
        ones (each with its ``namespace``), read again when the refresh is due."""
        return self._core.enforced()

    def status(self) -> list[dict[str, Any]]:
        """Per budget and scope value seen so far: spend, limit, percent,
        period start, next reset and the thresholds crossed; ``namespace`` is
        a stored budget's namespace (``None`` for a budget given in code)."""
        rows = self._core.status()
        for row in rows:
            row["period_start"] = _utc(row.pop("period_start_us"))
            row["next_reset"] = _utc(row.pop("next_reset_us"))
        return rows

    def history(
        self, name: str, days: int = 30, *, namespace: str | None = None
    ) -> list[tuple[str, float]]:
        """Daily spend of budget ``name`` over the last ``days`` days, in its
        time zone: a budget given in code, or with ``namespace`` the one stored
        in that namespace (``store.budget_history``, 1 to 365 days)."""
        if namespace is not None:
            return self._sync_store.budget_history(name, days=days, namespace=namespace)
        budget = self._by_name.get(name)
        if budget is None:
            raise ValueError(f"name: no budget is named {name!r}")
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValueError(f"days: must be a positive int, got {days!r}")
        filters: dict[str, Any] = {"start": datetime.now(timezone.utc) - timedelta(days=days)}
        column = {
            "namespace": "namespace",
            "agent": "agent_id",
            "consumer": "consumer_id",
            "model": "model",
            "workflow": "task_id",
        }.get(budget.scope)
        if column is not None and budget.match is not None:
            filters[column] = budget.match
        return [
            (row.group or "", row.cost or 0.0)
            for row in self._sync_store.aggregate("day", tz=budget.tz, **filters)
        ]

    def _dispatch(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            alert["period_start"] = _utc(alert.pop("period_start_us"))
            alert["at"] = _utc(alert.pop("at_us"))
            self._record(alert)
            if self.on_alert is None:
                continue
            try:
                result = self.on_alert(alert)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._finished)
            except Exception:  # an alert handler must not fail the call
                logger.exception("usagewarden: a budget alert handler failed")

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("usagewarden: a budget alert handler failed: %r", task.exception())

    def _record(self, alert: dict[str, Any]) -> None:
        try:
            metadata = {
                "kind": alert["kind"],
                "threshold": alert["threshold"],
                "scope_value": alert["scope_value"],
                "spent_usd": alert["spent_usd"],
                "limit_usd": alert["limit_usd"],
            }
            self._sync_store.record(
                UsageEvent(
                    "usagewarden",
                    alert["budget"],
                    namespace=alert["namespace"] or "default",
                    action="budget.alert",
                    timestamp=alert["at"],
                    source="usagewarden.budgets",
                    metadata=metadata,
                )
            )
        except Exception:
            logger.exception("usagewarden: could not record a budget alert")
