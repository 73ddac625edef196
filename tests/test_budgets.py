"""Budgets: reserve before, settle after (no overspend beyond what is in
flight), thresholds once per period, calendar resets in a time zone, spend
rebuilt from the ledger, block / downgrade / alert."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import threading
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw

UTC = dt.timezone.utc
JAN_31_NOON = dt.datetime(2026, 1, 31, 12, tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> uw.ManualClock:
    return uw.ManualClock(JAN_31_NOON)


@pytest.fixture(params=["local", "redis"])
def shared(request: pytest.FixtureRequest) -> str | None:
    """Where the engine keeps budgets: in the process, or on a real
    redis-server shared by processes (one suite, both states)."""
    if request.param == "local":
        return None
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def store(tmp_path: Path, clock: uw.ManualClock) -> Any:
    s = uw.SQLiteStore(tmp_path / "b.db", durability="commit", clock=clock)
    yield s
    s.close()


def test_a_hundred_concurrent_calls_cannot_overspend(
    store: uw.SQLiteStore, shared: str | None
) -> None:
    engine = uw.BudgetEngine([uw.Budget("team", 50.0)], store, shared=shared)
    admitted: list[uw.BudgetCheck] = []
    refused: list[uw.BudgetExceeded] = []
    lock = threading.Lock()
    start = threading.Barrier(100)

    def call() -> None:
        start.wait()
        try:
            check = engine.check("gpt-4o", estimated_cost=1.0)
        except uw.BudgetExceeded as exc:
            with lock:
                refused.append(exc)
            return
        with lock:
            admitted.append(check)

    threads = [threading.Thread(target=call) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(admitted), len(refused)) == (50, 50)
    assert all(e.budget == "team" and e.limit == 50.0 for e in refused)
    [status] = engine.status()
    assert (status["spent_usd"], status["reserved_usd"]) == (0.0, 50.0)
    for check in admitted:
        engine.settle(check, 0.8)  # cheaper than estimated: room comes back
    [status] = engine.status()
    assert status["spent_usd"] == pytest.approx(40.0) and status["reserved_usd"] == 0.0
    assert engine.check(estimated_cost=10.0).reservation > 0
    with pytest.raises(uw.BudgetExceeded, match="team"):
        engine.check(estimated_cost=0.01)


def test_each_threshold_fires_once_per_period_and_is_recorded(
    store: uw.SQLiteStore, clock: uw.ManualClock, shared: str | None
) -> None:
    alerts: list[dict[str, Any]] = []
    engine = uw.BudgetEngine(
        [uw.Budget("monthly", 10.0, action="alert")],
        store,
        on_alert=alerts.append,
        clock=clock,
        shared=shared,
    )
    for _ in range(15):
        engine.settle(engine.check(estimated_cost=1.0), 1.0)
    assert [(a["kind"], a["threshold"]) for a in alerts] == [
        ("threshold", 0.5),
        ("threshold", 0.75),
        ("threshold", 0.9),
        ("threshold", 1.0),
    ]
    assert alerts[-1]["spent_usd"] == 10.0 and alerts[-1]["budget"] == "monthly"
    recorded = store.query(action="budget.alert")
    assert [e.metadata["threshold"] for e in recorded if e.metadata] == [0.5, 0.75, 0.9, 1.0]
    # The month ends: a reset alert, and the thresholds fire again.
    clock.advance(12 * 3600)
    engine.settle(engine.check(estimated_cost=6.0), 6.0)
    assert [a["kind"] for a in alerts[4:]] == ["reset", "threshold"]
    assert alerts[4]["period_start"] == dt.datetime(2026, 2, 1, tzinfo=UTC)
    [status] = engine.status()
    assert status["next_reset"] == dt.datetime(2026, 3, 1, tzinfo=UTC)
    assert status["thresholds_crossed"] == [0.5]


def test_a_daily_budget_resets_at_local_midnight_across_a_dst_change(
    tmp_path: Path, shared: str | None
) -> None:
    new_york = dt.timezone(dt.timedelta(hours=-5))
    clock = uw.ManualClock(dt.datetime(2026, 3, 8, 0, 30, tzinfo=new_york).timestamp())
    store = uw.SQLiteStore(tmp_path / "dst.db", clock=clock)
    engine = uw.BudgetEngine(
        [uw.Budget("day", 1.0, period="daily", tz="America/New_York")],
        store,
        clock=clock,
        shared=shared,
    )
    engine.settle(engine.check(estimated_cost=1.0), 1.0)
    with pytest.raises(uw.BudgetExceeded) as refused:
        engine.check(estimated_cost=0.5)
    # 8 March is 23 hours long there: the next midnight is 04:00 UTC, not 05:00.
    assert refused.value.next_reset == dt.datetime(2026, 3, 9, 4, tzinfo=UTC)
    clock.set(dt.datetime(2026, 3, 9, 3, 59, 59, tzinfo=UTC).timestamp())
    with pytest.raises(uw.BudgetExceeded):
        engine.check(estimated_cost=0.5)
    clock.set(dt.datetime(2026, 3, 9, 4, tzinfo=UTC).timestamp())
    assert engine.check(estimated_cost=0.5).estimated_cost == 0.5
    store.close()


def test_spend_survives_a_restart(
    store: uw.SQLiteStore, clock: uw.ManualClock, shared: str | None
) -> None:
    now = dt.datetime.fromtimestamp(clock.now(), UTC)
    store.record_batch(
        [
            uw.UsageEvent("bot", "c", cost=7.0, timestamp=now - dt.timedelta(hours=1)),
            uw.UsageEvent("bot", "c", cost=100.0, timestamp=now - dt.timedelta(days=40)),
            uw.UsageEvent("other", "c", cost=9.0, timestamp=now),
        ]
    )
    budgets = [uw.Budget("per-agent", 10.0, scope="agent", match="bot")]
    engine = uw.BudgetEngine(budgets, store, clock=clock, shared=shared)  # a fresh process
    with pytest.raises(uw.BudgetExceeded) as refused:
        engine.check(agent_id="bot", estimated_cost=3.5)
    assert refused.value.spent == 7.0  # this month only, this agent only
    assert engine.check(agent_id="bot", estimated_cost=3.0).reservation > 0
    assert engine.check(agent_id="other", estimated_cost=50.0).reservation > 0  # not covered


def test_downgrade_returns_the_cheaper_model(store: uw.SQLiteStore, shared: str | None) -> None:
    pricing = uw.Pricing.from_dict(
        {"big": {"input": 10.0, "output": 30.0}, "small": {"input": 0.5, "output": 1.5}}
    )
    engine = uw.BudgetEngine(
        [uw.Budget("cap", 1.0, action="downgrade", downgrade_to="small")],
        store,
        pricing,
        shared=shared,
    )
    first = engine.check("big", input_tokens=50_000, max_output_tokens=10_000)
    assert (first.model, first.downgraded) == ("big", False)
    assert first.estimated_cost == pytest.approx(0.5 + 0.3)
    engine.settle(first, 0.8)
    second = engine.check("big", input_tokens=50_000, max_output_tokens=10_000)
    assert (second.model, second.downgraded) == ("small", True)


async def test_an_async_alert_handler_runs_on_the_loop(store: uw.SQLiteStore) -> None:
    seen: list[str] = []

    async def on_alert(alert: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        seen.append(alert["kind"])

    engine = uw.BudgetEngine([uw.Budget("b", 1.0, thresholds=[1.0])], store, on_alert=on_alert)
    engine.settle(engine.check(estimated_cost=1.0), 1.0)
    for _ in range(10):
        await asyncio.sleep(0)
    assert seen == ["threshold"]


def test_history_gives_daily_spend(store: uw.SQLiteStore, clock: uw.ManualClock) -> None:
    now = dt.datetime.fromtimestamp(clock.now(), UTC)
    store.record_batch(
        [
            uw.UsageEvent("bot", "c", cost=1.0, timestamp=now - dt.timedelta(days=1)),
            uw.UsageEvent("bot", "c", cost=2.0, timestamp=now),
            uw.UsageEvent("bot", "c", cost=4.0, timestamp=now),
        ]
    )
    engine = uw.BudgetEngine([uw.Budget("b", 100.0, period="daily")], store)
    assert engine.history("b", days=3000) == [("2026-01-30", 1.0), ("2026-01-31", 6.0)]
    with pytest.raises(ValueError, match="name"):
        engine.history("missing")


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"limit_usd": -1.0}, ValueError, "limit_usd"),
        ({"limit_usd": math.nan}, ValueError, "limit_usd"),
        ({"scope": "planet"}, ValueError, "scope"),
        ({"period": "hourly"}, ValueError, "period"),
        ({"period": -5}, ValueError, "period"),
        ({"action": "explode"}, ValueError, "action"),
        ({"thresholds": [0.0]}, ValueError, "thresholds"),
        ({"thresholds": [1.2]}, ValueError, "thresholds"),
        ({"thresholds": [0.9, 0.5]}, ValueError, "thresholds"),
        ({"action": "downgrade"}, ValueError, "downgrade_to"),
        ({"tz": "Mars/Base"}, ValueError, "tz"),
        ({"match": "bot"}, ValueError, "match"),
        ({"name": ""}, ValueError, "name"),
    ],
)
def test_bad_budgets_name_the_argument(
    kwargs: dict[str, Any], error: type[Exception], names: str
) -> None:
    args = {"name": "b", "limit_usd": 1.0, **kwargs}
    with pytest.raises(error, match=names):
        uw.Budget(args.pop("name"), args.pop("limit_usd"), **args)


def test_bad_engine_arguments_name_themselves(store: uw.SQLiteStore) -> None:
    with pytest.raises(TypeError, match="budgets"):
        uw.BudgetEngine(["b"], store)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="store"):
        uw.BudgetEngine([], "usage.db")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="budgets"):
        uw.BudgetEngine([uw.Budget("b", 1.0), uw.Budget("b", 2.0)], store)
    with pytest.raises(ValueError, match="refresh_seconds"):
        uw.BudgetEngine([uw.Budget("b", 1.0)], store, refresh_seconds=-1.0)
    with pytest.raises(TypeError, match="pricing"):
        uw.BudgetEngine([uw.Budget("b", 1.0)], store, {"m": 1})  # type: ignore[arg-type]
    engine = uw.BudgetEngine([uw.Budget("b", 1.0)], store)
    with pytest.raises(ValueError, match="estimated_cost"):
        engine.check(estimated_cost=-1.0)
    check = engine.check(estimated_cost=0.5)
    engine.settle(check, 0.5)
    with pytest.raises(ValueError, match="reservation"):
        engine.settle(check, 0.5)


async def test_a_warden_checks_its_budgets_before_the_call(
    store: uw.SQLiteStore, clock: uw.ManualClock
) -> None:
    pricing = uw.Pricing.from_dict(
        {"big": {"input": 10.0, "output": 30.0}, "small": {"input": 1.0, "output": 3.0}}
    )
    budgets = uw.BudgetEngine(
        [
            uw.Budget("cheap-after-1usd", 1.0, action="downgrade", downgrade_to="small"),
            uw.Budget("hard", 2.0),
        ],
        store,
        pricing,
        clock=clock,
    )
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=100), clock=clock)
    warden = uw.Warden(limiter, store, budgets=budgets, clock=clock)
    # $0.50 + $0.30 estimated; the provider reports less.
    async with warden.call("big", input_tokens=50_000, max_output_tokens=10_000) as call:
        call.settle(input_tokens=50_000, output_tokens=5_000)  # priced: $0.65
    async with warden.call("big", input_tokens=50_000, max_output_tokens=10_000) as call:
        assert (call.model, call.downgraded) == ("small", True)
        call.settle(output_tokens=10_000, cost=1.20)  # a cost the caller knows wins
    [cheap, hard] = budgets.status()
    assert hard["spent_usd"] == pytest.approx(0.65 + 1.20) and hard["reserved_usd"] == 0.0
    assert limiter.usage("small").requests == 1  # the limiter key followed the model
    ran = False
    with pytest.raises(uw.BudgetExceeded, match="hard"):
        async with warden.call("big", input_tokens=50_000, max_output_tokens=10_000):
            ran = True
    assert not ran
    assert [e.model for e in store.query(action="llm.request")] == ["big", "small"]
    assert limiter.usage("big").requests == 1 and limiter.usage("small").requests == 1
    with pytest.raises(TypeError, match="budgets"):
        uw.Warden(budgets="b")  # type: ignore[arg-type]


async def test_the_usage_api_shows_budgets_to_their_namespace(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    import httpx
    from fastapi import FastAPI
    from usagewarden.fastapi import (
        SCOPE_ADMIN,
        SCOPE_ALL_NAMESPACES,
        SCOPE_READ,
        Principal,
        api_key_auth,
        usage_router,
    )

    store = uw.AsyncSQLiteStore(tmp_path / "api.db")
    engine = uw.BudgetEngine(
        [
            uw.Budget("org", 100.0),
            uw.Budget("team-a", 10.0, scope="namespace", match="team-a", period="daily"),
            uw.Budget("team-b", 10.0, scope="namespace", match="team-b"),
        ],
        store,
    )
    for namespace in ("team-a", "team-b"):
        engine.settle(engine.check(namespace=namespace, estimated_cost=2.0), 2.5)
    reader, admin, operator = "r" * 20, "a" * 20, "o" * 20
    auth = api_key_auth(
        {
            reader: Principal("dash", "team-a", {SCOPE_READ}),
            admin: Principal("team-admin", "team-a", {SCOPE_READ, SCOPE_ADMIN}),
            operator: Principal("ops", "team-a", {SCOPE_READ, SCOPE_ALL_NAMESPACES}),
        }
    )
    app = FastAPI()
    app.include_router(usage_router(store, auth=auth, budgets=engine))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/usage/budgets")).status_code == 401
        mine = (await client.get("/usage/budgets", headers={"X-API-Key": reader})).json()
        admins = (await client.get("/usage/budgets", headers={"X-API-Key": admin})).json()
        everything = (await client.get("/usage/budgets", headers={"X-API-Key": operator})).json()
    assert [(b["budget"], b["spent_usd"]) for b in mine["budgets"]] == [("team-a", 2.5)]
    assert admins == mine, "usage:admin stays within its namespace"
    assert mine["budgets"][0]["next_reset"] is not None
    assert [b["budget"] for b in everything["budgets"]] == ["org", "team-a", "team-b"]
    assert everything["budgets"][0]["spent_usd"] == 5.0
    await store.close()


def test_processes_sharing_a_ledger_share_the_budget(tmp_path: Path, clock: uw.ManualClock) -> None:
    # Two stores on one file stand for two processes.
    here = uw.SQLiteStore(tmp_path / "shared.db", durability="commit", clock=clock)
    there = uw.SQLiteStore(tmp_path / "shared.db", durability="commit", clock=clock)
    budgets = [uw.Budget("org", 10.0)]
    engine_here = uw.BudgetEngine(budgets, here, clock=clock, refresh_seconds=5.0)
    engine_there = uw.BudgetEngine(budgets, there, clock=clock, refresh_seconds=5.0)
    assert engine_here.check(estimated_cost=1.0).estimated_cost == 1.0  # loads: nothing spent
    now = dt.datetime.fromtimestamp(clock.now(), UTC)
    check = engine_there.check(estimated_cost=8.0)
    engine_there.settle(check, 8.0)
    there.record(uw.UsageEvent("bot", "c", cost=8.0, timestamp=now))
    assert engine_here.check(estimated_cost=1.0).estimated_cost == 1.0  # not read again yet
    clock.advance(5)
    with pytest.raises(uw.BudgetExceeded) as refused:
        engine_here.check(estimated_cost=1.0)
    assert refused.value.spent == 8.0 and refused.value.reserved == 2.0
    here.close()
    there.close()
