"""``Warden``: the one object an application holds to limit, meter and
attribute each model call.

A call waits for capacity on its estimate (input tokens + the most output
tokens it may produce) before it starts, so limits hold *before* anything is
billed; ``settle`` then reconciles the limiter with what the provider
reported and records one ledger event.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextvars import ContextVar, Token
from datetime import datetime, timezone
from threading import Lock
from types import TracebackType
from typing import Any

from ._core import (
    ManualClock,
    Pricing,
    Reservation,
    Usage,
    UsageEvent,
)
from .budgets import BudgetCheck, BudgetEngine
from .limiter_protocol import Limiter
from .store_protocol import AsyncMeteringStore, MeteringStore

__all__ = ["Call", "RunMeter", "Warden"]

logger = logging.getLogger("usagewarden")

_current_run: ContextVar[RunMeter | None] = ContextVar("usagewarden_run", default=None)
# The tokens that undo each `with run:` of this context (a task's own, so a
# meter entered by many tasks at once unwinds each of them correctly).
_entered_runs: ContextVar[tuple[Token[RunMeter | None], ...]] = ContextVar(
    "usagewarden_entered_runs", default=()
)


#: Exceptions that end a call the provider has already started billing: the
#: request was sent and abandoned, so at least its input is counted.
_ABANDONED = (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt)

#: Identifier tuples the ledger already accepted (bounded): an agent's calls
#: reuse a handful of names, so each is checked once, not on every call.
_VALIDATED: dict[tuple[Any, ...], None] = {}
_VALIDATED_MAX = 4096


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _fast_count(value: Any, name: str) -> int:
    """``_count`` for the hot path: a plain int is taken at once."""
    if type(value) is int and value >= 0:
        return value
    return _count(value, name)


def _optional_text(value: object, name: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{name} must be a non-empty str or None, got {value!r}")
    return value


class RunMeter:
    """One agent run: its attribution (agent, consumer, task, run id) for
    every call made through it or inside ``with run:``, and the usage those
    calls added up to (``.usage``). Safe to share between tasks and threads."""

    def __init__(
        self,
        warden: Warden,
        *,
        agent_id: str | None = None,
        consumer_id: str | None = None,
        task_id: str | None = None,
        run_id: str | None = None,
    ) -> None:
        self.warden = warden
        #: The agent the run was given, if any: integrations then prefer it to
        #: their framework's agent name.
        self.explicit_agent_id = _optional_text(agent_id, "agent_id")
        self.agent_id = self.explicit_agent_id or warden.agent_id
        self.consumer_id = _optional_text(consumer_id, "consumer_id") or "default"
        self.task_id = _optional_text(task_id, "task_id")
        self.run_id = _optional_text(run_id, "run_id") or str(uuid.uuid4())
        self._lock = Lock()
        self._usage = Usage()
        self._calls = 0
        self._failures = 0

    @property
    def usage(self) -> Usage:
        """Usage of the run's finished calls (requests count every call)."""
        with self._lock:
            return self._usage

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    @property
    def failures(self) -> int:
        with self._lock:
            return self._failures

    def _add(self, usage: Usage, failed: bool) -> None:
        with self._lock:
            self._usage = self._usage + usage
            self._calls += 1
            self._failures += int(failed)

    def call(self, model: str | None = None, **kwargs: Any) -> Call:
        """``warden.call`` attributed to this run."""
        return self.warden.call(model, run=self, **kwargs)

    def call_blocking(self, model: str | None = None, **kwargs: Any) -> Call:
        """``warden.call_blocking`` attributed to this run."""
        return self.warden.call_blocking(model, run=self, **kwargs)

    def __enter__(self) -> RunMeter:
        _entered_runs.set((*_entered_runs.get(), _current_run.set(self)))
        return self

    def __exit__(self, *_exc: object) -> None:
        *outer, token = _entered_runs.get()
        _entered_runs.set(tuple(outer))
        _current_run.reset(token)

    async def __aenter__(self) -> RunMeter:
        return self.__enter__()

    async def __aexit__(self, *_exc: object) -> None:
        self.__exit__()

    def __repr__(self) -> str:
        return (
            f"RunMeter(run_id={self.run_id!r}, agent_id={self.agent_id!r}, "
            f"consumer_id={self.consumer_id!r}, calls={self.calls}, usage={self.usage!r})"
        )


class Call:
    """One model call, from ``async with warden.call(...)`` (or ``with
    warden.call_blocking(...)``). Call ``settle`` with what the provider
    reported before the block ends."""

    # One is made per model call: no per-instance dict.
    __slots__ = (
        "_blocking",
        "_cost",
        "_entered",
        "_estimated",
        "_finished",
        "_input_estimate",
        "_metadata",
        "_output_estimate",
        "_request_id",
        "_settled",
        "_source",
        "_started",
        "_started_at",
        "_timeout",
        "action",
        "agent_id",
        "budget_check",
        "consumer_id",
        "downgraded",
        "key",
        "model",
        "reservation",
        "run",
        "task_id",
        "waited",
        "warden",
    )

    def __init__(
        self,
        warden: Warden,
        *,
        blocking: bool,
        model: str | None,
        key: Any,
        agent_id: str,
        consumer_id: str,
        task_id: str | None,
        run: RunMeter | None,
        action: str,
        input_tokens: int,
        max_output_tokens: int,
        timeout: float | None,
        metadata: dict[str, Any] | None,
        request_id: str | None = None,
        source: str | None = None,
    ) -> None:
        self.warden = warden
        self.model = model
        self.key = key
        self.agent_id = agent_id
        self.consumer_id = consumer_id
        self.task_id = task_id
        self.run = run
        self.action = action
        self._input_estimate = input_tokens
        self._output_estimate = max_output_tokens
        self.reservation: Reservation | None = None
        #: Seconds spent waiting for capacity.
        self.waited = 0.0
        self._blocking = blocking
        self._timeout = timeout
        self._metadata = metadata
        self._settled: Usage | None = None
        self._cost: float | None = None
        self._estimated = False
        self._request_id = request_id
        self._source = source or "usagewarden.warden"
        #: The budgets' reservation, while the call runs.
        self.budget_check: BudgetCheck | None = None
        #: A budget sent the call to a cheaper model (now ``self.model``).
        self.downgraded = False
        self._started = 0.0
        self._started_at: float | None = None
        self._entered = False
        self._finished = False

    @property
    def estimate(self) -> Usage:
        """What the call is counted as until it settles: one request, the
        input tokens and the output cap."""
        return Usage(
            requests=1, input_tokens=self._input_estimate, output_tokens=self._output_estimate
        )

    @property
    def settled(self) -> bool:
        return self._settled is not None

    @property
    def usage(self) -> Usage | None:
        """The settled usage, ``None`` before ``settle``."""
        return self._settled

    def settle(
        self,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cost: float | None = None,
        *,
        estimated: bool = False,
    ) -> Usage:
        """Replaces the estimate with the measured usage (a token count left
        out keeps its estimate); returns what the call is counted as.

        ``cost`` is a price the caller knows for certain (an invoice line);
        left out, the call is priced once from the warden's ``pricing``.
        ``estimated=True`` says the provider reported no usage: the counts
        are the adapter's estimate and the event is marked ``estimated``."""
        if self._started_at is None:
            raise RuntimeError("settle: the call has not started (use it with `async with`)")
        if self._settled is not None:
            raise ValueError("settle: the call is already settled")
        if cost is not None and (
            isinstance(cost, bool) or not isinstance(cost, int | float) or not cost >= 0
        ):
            raise ValueError(f"cost must be a finite number >= 0 or None, got {cost!r}")
        # Usage checks each count (an int >= 0) and names the one that is not.
        # Positional: no dict of keywords built and parsed on the hot path.
        self._settled = Usage(
            1,
            self._input_estimate if input_tokens is None else input_tokens,
            self._output_estimate if output_tokens is None else output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            cost or 0.0,
        )
        self._cost = cost
        self._estimated = bool(estimated)
        return self._settled

    # Shared by both ways in and out.

    def _enter(self) -> float:
        if self._entered:
            raise RuntimeError("the call was already used; make a new one with warden.call()")
        self._entered = True
        return self.warden._clock_now()

    def begin_unlimited(self) -> Call:
        """Starts the call without waiting on the limiter: for usage observed
        after the fact (the call already happened elsewhere)."""
        return self._begin(None, self._enter())

    def _begin(self, reservation: Reservation | None, asked_at: float) -> Call:
        """The call starts: its event carries the moment the limiter admitted
        it (``Reservation.at``), so the ledger replays exactly against the limits."""
        self.reservation = reservation
        admitted = reservation.at if reservation is not None else asked_at
        self.waited = max(0.0, admitted - asked_at)
        self._started = self.warden._now()
        self._started_at = admitted
        return self

    def _check_budgets(self) -> None:
        """Reserves the estimated cost on the warden's budgets (raising
        ``BudgetExceeded``, or switching to the model a budget downgrades to)."""
        budgets = self.warden.budgets
        if budgets is None:
            return
        check = budgets.check(
            self.model,
            agent_id=self.agent_id,
            consumer_id=self.consumer_id,
            namespace=self.warden.namespace,
            task_id=self.task_id,
            input_tokens=self._input_estimate,
            max_output_tokens=self._output_estimate,
        )
        self.budget_check = check
        if check.downgraded:
            if self.key == self.model:
                self.key = check.model  # the limiter key followed the model
            self.model = check.model
            self.downgraded = True

    def _release_budgets(self, cost: float = 0.0) -> None:
        check, self.budget_check = self.budget_check, None
        if check is None or self.warden.budgets is None:
            return
        try:
            self.warden.budgets.settle(check, cost)
        except Exception:  # the call happened; accounting must not fail it
            logger.exception("usagewarden: could not settle a call's budget reservation")

    def _price(self, usage: Usage) -> float | None:
        """The call's one cost: the caller's, else the warden's pricing at
        the moment the call was admitted; None when the model has no price."""
        if self._cost is not None:
            return self._cost
        pricing = self.warden.pricing
        if pricing is None or self.model is None or self._started_at is None:
            return None
        return pricing.cost(
            self.model, usage, datetime.fromtimestamp(self._started_at, tz=timezone.utc)
        )

    def _finish(self, exc: BaseException | None) -> UsageEvent | None:
        if self._finished:
            raise RuntimeError("the call has already finished")
        self._finished = True
        duration_ms = max(0, round((self.warden._now() - self._started) * 1000))
        metadata = dict(self._metadata) if self._metadata else {}
        if self.run is not None:
            metadata["run_id"] = self.run.run_id
        if self.waited >= 0.001:  # not the clocks' microsecond apart
            metadata["waited_ms"] = round(self.waited * 1000)
        if exc is not None:
            metadata["error"] = type(exc).__name__
            if self._settled is None:
                self._settle_failed(exc)
        elif self._settled is None:
            logger.warning(
                "usagewarden: a call to %r ended without settle(); its estimate is counted",
                self.model,
            )
            self._estimated = True
            self._settled = self.estimate
        if self._estimated:
            metadata["estimated"] = True
        usage = self._settled
        assert usage is not None and self._started_at is not None
        cost = self._price(usage)
        if self.reservation is not None and not self.reservation.cancelled:
            self.reservation.settle(
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_read_tokens,
                usage.cache_write_tokens,
                cost,
            )
        self._release_budgets(cost or 0.0)
        if self.run is not None:
            self.run._add(_with_cost(usage, cost), failed=exc is not None)
        if self.warden.store is None:
            return None
        if self._cost is None and self.warden._store_prices:
            cost = None  # the store fills it from the same Pricing, marked re-priceable
        try:
            return UsageEvent._of_call(
                self.agent_id,
                self.consumer_id,
                self.task_id,
                self.warden.namespace,
                self.action,
                self.model,
                usage,
                duration_ms,
                cost,
                round(self._started_at * 1_000_000),
                self._request_id,
                self._source,
                metadata or None,
            )
        except (TypeError, ValueError):  # metadata the ledger cannot hold
            logger.exception("usagewarden: could not build the usage event of a call")
            return None

    def _settle_failed(self, exc: BaseException) -> None:
        """A call that raised before ``settle``. The request stays counted.
        One abandoned mid-way (cancelled, a stream closed early) was sent, so
        the provider bills at least its input: the input estimate is kept,
        marked estimated. Any other error was answered without a bill."""
        tokens = self._input_estimate if isinstance(exc, _ABANDONED) else 0
        self._settled = Usage(requests=1, input_tokens=tokens)
        self._estimated = tokens > 0

    async def finish(self, error: BaseException | None = None) -> None:
        """Ends a call started by hand (``begin_unlimited()`` or ``async with``
        entered through ``__aenter__``): settles, records, frees the budget
        reservation. ``error`` is what made the call fail, if it did."""
        event = self._finish(error)
        if event is not None:
            await self.warden._record(event)

    def finish_blocking(self, error: BaseException | None = None) -> None:
        """``finish`` for threads."""
        event = self._finish(error)
        if event is not None:
            self.warden._record_blocking(event)

    # async with

    async def __aenter__(self) -> Call:
        if self._blocking:
            raise TypeError("call_blocking() is used with `with`; use call() with `async with`")
        asked_at = self._enter()
        self._check_budgets()
        limiter = self.warden.limiter
        if limiter is None:
            return self._begin(None, asked_at)
        try:
            reservation = await limiter.acquire(
                self.key,
                requests=1,
                input_tokens=self._input_estimate,
                output_tokens=self._output_estimate,
                timeout=self._timeout,
            )
        except BaseException:
            self._release_budgets()
            raise
        return self._begin(reservation, asked_at)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        event = self._finish(exc)
        if event is not None:
            await self.warden._record(event)

    # with

    def __enter__(self) -> Call:
        if not self._blocking:
            raise TypeError("call() is used with `async with`; use call_blocking() with `with`")
        asked_at = self._enter()
        self._check_budgets()
        limiter = self.warden.limiter
        if limiter is None:
            return self._begin(None, asked_at)
        try:
            reservation = limiter.acquire_blocking(
                self.key,
                requests=1,
                input_tokens=self._input_estimate,
                output_tokens=self._output_estimate,
                timeout=self._timeout,
            )
        except BaseException:
            self._release_budgets()
            raise
        return self._begin(reservation, asked_at)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish_blocking(exc)

    def __repr__(self) -> str:
        return (
            f"Call(model={self.model!r}, key={self.key!r}, estimate={self.estimate!r}, "
            f"usage={self._settled!r})"
        )


class Warden:
    """Limits, meters and attributes model calls.

    ``limiter`` (optional) is waited on before each call; ``store``
    (optional) receives one ``UsageEvent`` per call; ``clock`` (a
    ``ManualClock`` in tests) times calls and stamps events. A storage
    failure is logged and never fails the call.
    """

    def __init__(
        self,
        limiter: Limiter | None = None,
        store: MeteringStore | AsyncMeteringStore | None = None,
        *,
        agent_id: str = "agent",
        namespace: str = "default",
        clock: ManualClock | None = None,
        budgets: BudgetEngine | None = None,
        pricing: Pricing | None = None,
    ) -> None:
        if pricing is not None and not isinstance(pricing, Pricing):
            raise TypeError("pricing: must be a usagewarden.Pricing or None")
        if budgets is not None and not isinstance(budgets, BudgetEngine):
            raise TypeError("budgets: must be a usagewarden.BudgetEngine or None")
        if limiter is not None and not isinstance(limiter, Limiter):
            raise TypeError(
                "limiter: must be a usagewarden limiter (RateLimiter, RedisRateLimiter) or None"
            )
        if store is not None and not isinstance(store, MeteringStore | AsyncMeteringStore):
            raise TypeError(
                "store: must be a usagewarden store (SQLiteStore, PostgresStore) or None"
            )
        if clock is not None and not isinstance(clock, ManualClock):
            raise TypeError("clock: must be a usagewarden.ManualClock or None")
        UsageEvent(agent_id, "default", namespace=namespace)  # names the bad argument
        if clock is None and limiter is not None:
            clock = limiter.clock  # one timeline for admissions, waits and events
        self.limiter = limiter
        self.store = store
        self._async_store = store if isinstance(store, AsyncMeteringStore) else None
        # Threads record through the same ledger's sync view.
        self._sync_store = store.blocking() if isinstance(store, AsyncMeteringStore) else store
        # A sync store that commits before returning waits on the disk: off the loop.
        self._sync_store_waits = (
            self._async_store is None and store is not None and store.durability == "commit"
        )
        store_pricing = getattr(store, "pricing", None)
        budget_pricing = budgets.pricing if budgets is not None else None
        #: The one price table calls are priced from (given, else the budgets',
        #: else the store's): budgets and the event share the one cost.
        self.pricing: Pricing | None = pricing or budget_pricing or store_pricing
        if budget_pricing is not None and store_pricing not in (None, budget_pricing):
            logger.warning(
                "usagewarden: the budgets and the store have different pricing; "
                "calls are priced from the budgets' and recorded with that cost"
            )
        # The store prices an event recorded without a cost from this same
        # table (marking it re-priceable), so the Warden leaves it to the store.
        self._store_prices = store_pricing is not None and store_pricing is self.pricing
        self.agent_id = agent_id
        self.namespace = namespace
        self.clock = clock
        self.budgets = budgets

    def run(
        self,
        *,
        agent_id: str | None = None,
        consumer_id: str | None = None,
        task_id: str | None = None,
        run_id: str | None = None,
    ) -> RunMeter:
        """A meter for one agent run (a fresh ``run_id`` unless given)."""
        return RunMeter(
            self, agent_id=agent_id, consumer_id=consumer_id, task_id=task_id, run_id=run_id
        )

    def call(
        self,
        model: str | None = None,
        *,
        key: Any = None,
        agent_id: str | None = None,
        consumer_id: str | None = None,
        task_id: str | None = None,
        input_tokens: int = 0,
        max_output_tokens: int = 0,
        action: str = "llm.request",
        timeout: float | None = None,
        run: RunMeter | None = None,
        metadata: dict[str, Any] | None = None,
        request_id: str | None = None,
        source: str | None = None,
    ) -> Call:
        """``async with warden.call(model=…, input_tokens=…, max_output_tokens=…) as call:``
        waits for capacity, runs the block, then records the call. The
        limiter key defaults to the model name (``"default"`` without one);
        attribution not given comes from ``run`` or the enclosing ``with run:``.
        ``request_id`` (the ledger's idempotency key) and ``source`` name the
        event for integrations that have an id of their own for the call."""
        return self._call(
            False,
            model,
            key,
            agent_id,
            consumer_id,
            task_id,
            input_tokens,
            max_output_tokens,
            action,
            timeout,
            run,
            metadata,
            request_id,
            source,
        )

    def call_blocking(
        self,
        model: str | None = None,
        *,
        key: Any = None,
        agent_id: str | None = None,
        consumer_id: str | None = None,
        task_id: str | None = None,
        input_tokens: int = 0,
        max_output_tokens: int = 0,
        action: str = "llm.request",
        timeout: float | None = None,
        run: RunMeter | None = None,
        metadata: dict[str, Any] | None = None,
        request_id: str | None = None,
        source: str | None = None,
    ) -> Call:
        """``call`` for threads: ``with warden.call_blocking(...) as call:``."""
        return self._call(
            True,
            model,
            key,
            agent_id,
            consumer_id,
            task_id,
            input_tokens,
            max_output_tokens,
            action,
            timeout,
            run,
            metadata,
            request_id,
            source,
        )

    def _call(
        self,
        blocking: bool,
        model: str | None,
        key: Any,
        agent_id: str | None,
        consumer_id: str | None,
        task_id: str | None,
        input_tokens: int,
        max_output_tokens: int,
        action: str,
        timeout: float | None,
        run: RunMeter | None,
        metadata: dict[str, Any] | None,
        request_id: str | None,
        source: str | None,
    ) -> Call:
        if run is None:
            run = _current_run.get()
        elif not isinstance(run, RunMeter):
            raise TypeError("run: must be a RunMeter from warden.run(), or None")
        if key is None:
            key = model or "default"
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict or None, not {type(metadata).__name__}")
        # `is None`, not `or`: an empty name stays and is refused by the check below.
        if agent_id is None:
            agent_id = run.agent_id if run else self.agent_id
        if consumer_id is None:
            consumer_id = run.consumer_id if run else "default"
        if task_id is None and run is not None:
            task_id = run.task_id
        names = (agent_id, consumer_id, task_id, model, action, request_id, source)
        if names not in _VALIDATED:
            _validate_names(names)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
        ):
            raise ValueError(f"timeout must be a number >= 0 or None, got {timeout!r}")
        return Call(
            self,
            blocking=blocking,
            model=model,
            key=key,
            agent_id=agent_id,
            consumer_id=consumer_id,
            task_id=task_id,
            run=run,
            action=action,
            input_tokens=_fast_count(input_tokens, "input_tokens"),
            max_output_tokens=_fast_count(max_output_tokens, "max_output_tokens"),
            timeout=timeout,
            metadata=metadata,
            request_id=request_id,
            source=source,
        )

    def _now(self) -> float:
        """For durations."""
        return self.clock.now() if self.clock is not None else time.perf_counter()

    def _clock_now(self) -> float:
        """Seconds since the Unix epoch on the limiter's timeline (its system
        clock is anchored to Unix time)."""
        return self.clock.now() if self.clock is not None else time.time()

    async def _record(self, event: UsageEvent) -> None:
        """Records without blocking the loop: an async store's awaitable, a
        queueing sync store directly, a committing sync store in a thread."""
        try:
            if self._async_store is not None:
                await self._async_store.record(event)
            elif self._sync_store_waits:
                await asyncio.to_thread(self._sync_store.record, event)  # type: ignore[union-attr]
            elif self._sync_store is not None:
                self._sync_store.record(event)
        except Exception:  # the call already happened; metering must not fail it
            logger.exception("usagewarden: could not record a call's usage")

    def _record_blocking(self, event: UsageEvent) -> None:
        try:
            if self._sync_store is not None:
                self._sync_store.record(event)
        except Exception:
            logger.exception("usagewarden: could not record a call's usage")

    def __repr__(self) -> str:
        return (
            f"Warden(agent_id={self.agent_id!r}, namespace={self.namespace!r}, "
            f"limiter={self.limiter!r}, store={self.store!r})"
        )


def _with_cost(usage: Usage, cost: float | None) -> Usage:
    if cost is None or cost == usage.cost:
        return usage
    return Usage(
        requests=usage.requests,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost=cost,
    )


def _validate_names(names: tuple[Any, ...]) -> None:
    """The ledger's own checks (length, NUL…) on a call's identifiers, before
    the call rather than after it; each distinct set is checked once."""
    agent_id, consumer_id, task_id, model, action, request_id, source = names
    for value, name in (
        (model, "model"),
        (agent_id, "agent_id"),
        (consumer_id, "consumer_id"),
        (task_id, "task_id"),
        (request_id, "request_id"),
        (source, "source"),
    ):
        _optional_text(value, name)
    if not isinstance(action, str):
        raise TypeError(f"action must be a str, not {type(action).__name__}")
    UsageEvent(
        agent_id,
        consumer_id,
        task_id=task_id,
        model=model,
        action=action,
        request_id=request_id,
        source=source,
    )
    if request_id is None:  # an idempotency key is per call: not worth remembering
        if len(_VALIDATED) >= _VALIDATED_MAX:
            _VALIDATED.clear()
        _VALIDATED[names] = None
