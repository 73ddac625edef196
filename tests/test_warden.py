"""Warden: calls wait for capacity on their estimate, settle to what was
measured, and leave one attributed ledger event each."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw
from conftest import eventually, is_queued

T0 = 1_767_225_600.0


@pytest.fixture
def clock() -> uw.ManualClock:
    return uw.ManualClock(T0)


@pytest.fixture
def store(tmp_path: Path, clock: uw.ManualClock) -> Any:
    s = uw.SQLiteStore(tmp_path / "w.db", durability="commit", clock=clock)
    yield s
    s.close()


def make_warden(clock: uw.ManualClock, store: Any, **limits: Any) -> uw.Warden:
    limits = limits or {"requests_per_minute": 10, "total_tokens_per_minute": 1_000}
    limiter = uw.RateLimiter(uw.RateLimits(**limits), clock=clock)
    return uw.Warden(limiter, store, agent_id="bot", clock=clock)


async def test_a_call_reserves_its_estimate_before_the_body_and_settles_after(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store)
    assert warden.limiter is not None
    async with warden.call("gpt-x", input_tokens=100, max_output_tokens=300) as call:
        inside = warden.limiter.usage("gpt-x")
        clock.advance(2.5)
        settled = call.settle(input_tokens=90, output_tokens=40, cache_read_tokens=10, cost=0.02)
    assert (inside.requests, inside.input_tokens, inside.output_tokens) == (1, 100, 300)
    after = warden.limiter.usage("gpt-x")
    assert (after.requests, after.input_tokens, after.output_tokens) == (1, 90, 40)
    assert settled == uw.Usage(
        requests=1, input_tokens=90, output_tokens=40, cache_read_tokens=10, cost=0.02
    )
    [event] = store.query()
    assert (event.agent_id, event.consumer_id, event.model) == ("bot", "default", "gpt-x")
    assert (event.tokens_in, event.tokens_out, event.cache_read_tokens) == (90, 40, 10)
    assert event.duration_ms == 2500 and event.api_calls == 1 and event.cost == 0.02
    assert event.timestamp.timestamp() == T0
    assert event.source == "usagewarden.warden"


async def test_a_failed_call_refunds_tokens_keeps_the_request_and_records_the_failure(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store)
    assert warden.limiter is not None
    with pytest.raises(TimeoutError):
        async with warden.call("gpt-x", input_tokens=100, max_output_tokens=300):
            raise TimeoutError("provider timed out")
    used = warden.limiter.usage("gpt-x")
    assert (used.requests, used.input_tokens, used.output_tokens) == (1, 0, 0)
    [event] = store.query()
    assert event.metadata == {"error": "TimeoutError"}
    assert (event.tokens_in, event.tokens_out, event.cost) == (0, 0, None)


async def test_a_failure_after_settle_keeps_the_settled_usage(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store)
    with pytest.raises(KeyError):
        async with warden.call("m", input_tokens=10, max_output_tokens=10) as call:
            call.settle(input_tokens=7, output_tokens=3)
            raise KeyError("parsing the answer failed")
    [event] = store.query()
    assert (event.tokens_in, event.tokens_out) == (7, 3)
    assert event.metadata == {"error": "KeyError"}


async def test_an_unsettled_call_counts_its_estimate_and_says_so(
    clock: uw.ManualClock, store: uw.SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    warden = make_warden(clock, store)
    with caplog.at_level(logging.WARNING, logger="usagewarden"):
        async with warden.call("m", input_tokens=10, max_output_tokens=20):
            pass
    [event] = store.query()
    assert (event.tokens_in, event.tokens_out) == (10, 20)
    assert event.metadata == {"estimated": True}
    assert "without settle" in caplog.text


async def test_a_call_that_does_not_fit_waits_for_the_window_and_says_how_long(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=1)
    async with warden.call("m") as first:
        first.settle(input_tokens=1, output_tokens=1)

    async def second() -> uw.Call:
        async with warden.call("m") as call:
            call.settle(input_tokens=1, output_tokens=1)
        return call

    task = asyncio.ensure_future(second())
    assert warden.limiter is not None
    await eventually(lambda: is_queued(warden.limiter, "m"))  # type: ignore[arg-type]
    assert not task.done()
    clock.advance(60)
    call = await asyncio.wait_for(task, 5)
    assert call.waited == 60
    assert [e.metadata for e in store.query()] == [None, {"waited_ms": 60_000}]


async def test_a_timeout_raises_and_records_nothing(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=1)
    async with warden.call("m") as call:
        call.settle(input_tokens=0, output_tokens=0)
    with pytest.raises(uw.RateLimitExceeded):
        async with warden.call("m", timeout=0):
            raise AssertionError("the body must not run")
    assert len(store.query()) == 1


async def test_the_key_defaults_to_the_model_and_can_be_given(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store)
    assert warden.limiter is not None
    async with warden.call("a", input_tokens=1) as call:
        call.settle()
    async with warden.call("b", key="shared", input_tokens=2) as call:
        call.settle()
    async with warden.call(input_tokens=3) as call:
        call.settle()
    assert warden.limiter.usage("a").input_tokens == 1
    assert warden.limiter.usage("shared").input_tokens == 2
    assert warden.limiter.usage("default").input_tokens == 3


async def test_a_run_attributes_every_call_inside_it_and_adds_up_its_usage(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store)
    run = warden.run(agent_id="planner", consumer_id="alice", task_id="t-1")
    async with run, warden.call("m", input_tokens=5) as call:
        call.settle(output_tokens=2, cost=0.5)
    async with run.call("m", input_tokens=4) as call:  # handed around, not entered
        call.settle(output_tokens=1, cost=0.25)
    async with warden.call("m", input_tokens=1) as call:  # outside the run
        call.settle(output_tokens=1)
    assert run.usage == uw.Usage(requests=2, input_tokens=9, output_tokens=3, cost=0.75)
    assert run.calls == 2 and run.failures == 0
    events = store.query()
    assert [(e.agent_id, e.consumer_id, e.task_id) for e in events] == [
        ("planner", "alice", "t-1"),
        ("planner", "alice", "t-1"),
        ("bot", "default", None),
    ]
    assert [(e.metadata or {}).get("run_id") for e in events] == [run.run_id, run.run_id, None]


async def test_concurrent_runs_keep_their_own_attribution(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=1_000)

    async def one_run(i: int) -> uw.RunMeter:
        async with warden.run(consumer_id=f"user-{i}") as run:
            for _ in range(3):
                await asyncio.sleep(0)  # interleave with the other runs
                async with warden.call("m", input_tokens=i) as call:
                    call.settle(output_tokens=1)
        return run

    runs = await asyncio.gather(*(one_run(i) for i in range(20)))
    by_run: dict[str, set[str]] = {}
    for event in store.query():
        assert event.metadata is not None
        by_run.setdefault(event.metadata["run_id"], set()).add(event.consumer_id)
    assert {run.run_id: {run.consumer_id} for run in runs} == by_run
    assert all(run.usage.input_tokens == 3 * i for i, run in enumerate(runs))


async def test_explicit_attribution_wins_over_the_run(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store)
    async with warden.run(consumer_id="alice"):  # noqa: SIM117 - the call is made inside the run
        async with warden.call("m", consumer_id="bob", task_id="x", agent_id="critic") as call:
            call.settle()
    [event] = store.query()
    assert (event.agent_id, event.consumer_id, event.task_id) == ("critic", "bob", "x")


def test_call_blocking_waits_in_a_thread_and_records(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=1)
    with warden.call_blocking("m", input_tokens=3) as call:
        call.settle(output_tokens=1)
    done = threading.Event()

    def second() -> None:
        with warden.call_blocking("m", input_tokens=3) as call:
            call.settle(output_tokens=2)
        done.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not done.wait(0.2)
    clock.advance(60)
    thread.join(5)
    assert done.is_set()
    assert [e.tokens_out for e in store.query()] == [1, 2]


async def test_an_async_store_is_recorded_to_from_threads_too(
    clock: uw.ManualClock, tmp_path: Path
) -> None:
    store = uw.AsyncSQLiteStore(tmp_path / "a.db", clock=clock)
    warden = make_warden(clock, store)

    def in_thread() -> None:
        with warden.call_blocking("m", input_tokens=3) as call:
            call.settle(output_tokens=1)

    await asyncio.to_thread(in_thread)
    async with warden.call("m", input_tokens=2) as call:
        call.settle(output_tokens=1)
    await store.flush()
    assert sorted(e.tokens_in for e in await store.query()) == [2, 3]
    await store.close()


async def test_a_store_failure_never_fails_the_call(
    clock: uw.ManualClock, store: uw.SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    warden = make_warden(clock, store)
    store.close()
    with caplog.at_level(logging.ERROR, logger="usagewarden"):
        async with warden.call("m", input_tokens=1) as call:
            call.settle(output_tokens=1)
        with warden.call_blocking("m", input_tokens=1) as call:
            call.settle(output_tokens=1)
    assert caplog.text.count("could not record") == 2


async def test_a_warden_without_limiter_or_store_still_meters_runs() -> None:
    warden = uw.Warden()
    async with warden.run() as run, warden.call("m", input_tokens=3) as call:
        call.settle(output_tokens=4)
    assert run.usage == uw.Usage(requests=1, input_tokens=3, output_tokens=4)


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"input_tokens": -1}, ValueError, "input_tokens"),
        ({"max_output_tokens": 1.5}, TypeError, "max_output_tokens"),
        ({"model": ""}, ValueError, "model"),
        ({"consumer_id": 3}, ValueError, "consumer_id"),
        ({"run": "run-1"}, TypeError, "run"),
        ({"action": "Not An Action"}, ValueError, "action"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"metadata": [1]}, TypeError, "metadata"),
    ],
)
def test_bad_call_arguments_name_themselves(
    kwargs: dict[str, Any], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=names):
        uw.Warden().call(**kwargs)


def test_bad_warden_arguments_name_themselves() -> None:
    with pytest.raises(TypeError, match="limiter"):
        uw.Warden(limiter="limiter")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store"):
        uw.Warden(store="usage.db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock"):
        uw.Warden(clock=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="agent_id"):
        uw.Warden(agent_id="")
    with pytest.raises(ValueError, match="namespace"):
        uw.Warden(namespace="")


async def test_settle_misuse_is_refused(clock: uw.ManualClock, store: uw.SQLiteStore) -> None:
    warden = make_warden(clock, store)
    with pytest.raises(RuntimeError, match="not started"):
        warden.call("m").settle()
    async with warden.call("m") as call:
        call.settle(input_tokens=1)
        with pytest.raises(ValueError, match="already settled"):
            call.settle(input_tokens=2)
    async with warden.call("m") as call:
        with pytest.raises(ValueError, match="output_tokens"):
            call.settle(output_tokens=-1)
        with pytest.raises(ValueError, match="cost"):
            call.settle(cost=float("nan"))
        call.settle()
    with pytest.raises(TypeError, match="async with"), warden.call("m"):
        pass
    with pytest.raises(TypeError, match="with"):
        async with warden.call_blocking("m"):
            pass


async def test_one_meter_entered_by_many_tasks_at_once_unwinds_each(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=1_000)
    run = warden.run(consumer_id="shared")
    entered = asyncio.Event()
    inside = 0

    async def worker() -> None:
        nonlocal inside
        async with run:
            inside += 1
            if inside == 10:
                entered.set()
            await entered.wait()  # every task is inside at once
            async with warden.call("m") as call:
                call.settle(input_tokens=1, output_tokens=0)

    await asyncio.gather(*(worker() for _ in range(10)))
    assert run.calls == 10
    async with warden.call("m") as call:  # outside: no run is current any more
        call.settle(input_tokens=1, output_tokens=0)
    assert [e.consumer_id for e in store.query()] == ["shared"] * 10 + ["default"]


async def test_events_carry_the_start_of_the_call_without_a_manual_clock(
    tmp_path: Path,
) -> None:
    import datetime as dt

    store = uw.SQLiteStore(tmp_path / "s.db", durability="commit")
    warden = uw.Warden(store=store)
    before = dt.datetime.now(dt.timezone.utc)
    async with warden.call("m") as call:
        await asyncio.sleep(0.05)  # a call that takes a moment (not a wait for a result)
        started_by = dt.datetime.now(dt.timezone.utc)
        call.settle()
    [event] = store.query()
    assert before <= event.timestamp < started_by
    store.close()


async def test_a_call_is_used_once(clock: uw.ManualClock, store: uw.SQLiteStore) -> None:
    warden = make_warden(clock, store)
    call = warden.call("m")
    async with call:
        call.settle()
    with pytest.raises(RuntimeError, match="already used"):
        async with call:
            pass
    assert len(store.query()) == 1


def test_ids_the_ledger_would_refuse_are_refused_before_the_call() -> None:
    warden = uw.Warden()
    with pytest.raises(ValueError, match="model"):
        warden.call("m" * 300)
    with pytest.raises(ValueError, match="agent_id"):
        warden.call("m", agent_id="a" * 300)
    with pytest.raises(ValueError, match="consumer_id"):
        warden.call("m", consumer_id="nul\0")


async def test_the_event_carries_the_limiters_admission_time_not_the_tasks_resumption(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=1)
    async with warden.call("m") as call:
        call.settle()

    async def second() -> uw.Call:
        async with warden.call("m") as call:
            clock.advance(7)  # the body runs after the admission
            call.settle()
        return call

    task = asyncio.ensure_future(second())
    assert warden.limiter is not None
    await eventually(lambda: is_queued(warden.limiter, "m"))  # type: ignore[arg-type]
    clock.advance(60)
    late_call = await asyncio.wait_for(task, 5)
    assert late_call.reservation is not None
    admitted = late_call.reservation.at
    first, late = store.query()
    assert late.timestamp.timestamp() == admitted >= first.timestamp.timestamp() + 60
    assert late.metadata == {"waited_ms": round((admitted - T0) * 1000)}
    assert late.duration_ms == 7_000


def test_the_warden_takes_the_limiters_clock(clock: uw.ManualClock) -> None:
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=1), clock=clock)
    assert uw.Warden(limiter).clock is clock


PRICES = {"gpt-4o": {"input": 2.0, "output": 8.0}}


@pytest.mark.parametrize("store_has_pricing", [True, False])
async def test_one_cost_per_call_shared_by_budgets_limiter_run_and_event(
    tmp_path: Path, clock: uw.ManualClock, store_has_pricing: bool
) -> None:
    pricing = uw.Pricing.from_dict(PRICES)
    store = uw.SQLiteStore(
        str(tmp_path / "priced.db"), clock=clock, pricing=pricing if store_has_pricing else None
    )
    budgets = uw.BudgetEngine([uw.Budget("team", 100.0)], store, pricing, clock=clock)
    limiter = uw.RateLimiter(uw.RateLimits(cost_per_day=100.0), clock=clock)
    warden = uw.Warden(limiter, store, clock=clock, budgets=budgets)
    assert warden.pricing is pricing
    with warden.run() as run:
        async with warden.call("gpt-4o", input_tokens=1000, max_output_tokens=1000) as call:
            call.settle(input_tokens=1200, output_tokens=300)
    expected = pricing.cost("gpt-4o", uw.Usage(input_tokens=1200, output_tokens=300))
    assert expected is not None and expected > 0
    store.flush()
    [event] = store.query()
    assert event.cost == pytest.approx(expected)
    [status] = budgets.status()
    assert (status["spent_usd"], status["reserved_usd"]) == (pytest.approx(expected), 0.0)
    assert limiter.usage("gpt-4o").cost == pytest.approx(expected)
    assert run.usage.cost == pytest.approx(expected)
    # Filled by the store from the same table, the cost stays re-priceable.
    cheaper = uw.Pricing.from_dict({"gpt-4o": {"input": 1.0, "output": 1.0}})
    assert store.reprice(cheaper) == (1 if store_has_pricing else 0)
    store.close()


async def test_an_unknown_price_is_none_never_zero(tmp_path: Path, clock: uw.ManualClock) -> None:
    pricing = uw.Pricing.from_dict(PRICES)
    store = uw.SQLiteStore(str(tmp_path / "unpriced.db"), clock=clock)
    warden = uw.Warden(None, store, clock=clock, pricing=pricing)
    async with warden.call("a-model-with-no-price") as call:
        call.settle(input_tokens=10, output_tokens=10)
    store.flush()
    [event] = store.query()
    assert event.cost is None
    store.close()


async def test_a_warden_on_either_limiter_admits_settles_and_records(
    make_limiter: Any, clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    """Any ``uw.Limiter`` serves the Warden: in-process and on a real redis-server."""
    limiter = make_limiter(requests_per_minute=2, total_tokens_per_minute=1_000)
    warden = uw.Warden(limiter, store, agent_id="bot", clock=clock)
    async with warden.call("gpt-x", input_tokens=100, max_output_tokens=300) as call:
        inside = limiter.usage("gpt-x")
        clock.advance(1.5)
        call.settle(input_tokens=90, output_tokens=40)
    assert (inside.requests, inside.input_tokens, inside.output_tokens) == (1, 100, 300)
    if hasattr(limiter, "flush"):
        limiter.flush()
    after = limiter.usage("gpt-x")
    assert (after.requests, after.input_tokens, after.output_tokens) == (1, 90, 40)
    async with warden.call("gpt-x", input_tokens=10, max_output_tokens=10) as second:
        second.settle(input_tokens=10, output_tokens=10)
    # The window holds two requests: a third waits for the first to leave it.
    with pytest.raises(uw.RateLimitExceeded):
        async with warden.call("gpt-x", input_tokens=10, max_output_tokens=10, timeout=0):
            pass
    events = store.query()
    assert [(e.tokens_in, e.tokens_out) for e in events] == [(90, 40), (10, 10)]
    assert {(e.agent_id, e.model, e.api_calls) for e in events} == {("bot", "gpt-x", 1)}
