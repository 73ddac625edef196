"""Budgets kept in the ledger database, on every store: create, update,
soft-delete, reset, list and get; their status and history read from the
ledger; persistence across a reopen; and running engines picking changes up
on their refresh (a ManualClock moves time, nothing sleeps)."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import usagewarden as uw
from ledger_helpers import LedgerBackend

#: 2026-03-10T12:00:00Z, as the stores' ManualClock reads it (seconds).
NOON = datetime(2026, 3, 10, 12, tzinfo=timezone.utc)


def clock_at(when: datetime = NOON) -> uw.ManualClock:
    return uw.ManualClock(start=when.timestamp())


def spend(store: uw.MeteringStore, usd: float, at: datetime, **fields: Any) -> None:
    fields.setdefault("namespace", "team-a")
    agent = fields.pop("agent_id", "bot")
    store.record(uw.UsageEvent(agent, "alice", cost=usd, timestamp=at, **fields))
    store.flush()


def test_create_get_update_list_and_persist(backend: LedgerBackend) -> None:
    clock = clock_at()
    with backend.sync(clock=clock) as store:
        made = store.create_budget(
            uw.Budget("monthly", 10.0, period="daily", thresholds=[0.5, 1.0]), namespace="team-a"
        )
        assert (made.namespace, made.name, made.created_at, made.deleted_at) == (
            "team-a",
            "monthly",
            NOON,
            None,
        )
        assert made.budget.limit_usd == 10.0 and made.budget.namespace == "team-a"
        clock.advance(60)
        updated = store.update_budget(
            uw.Budget("monthly", 25.5, scope="agent", match="bot", period=3600.0),
            namespace="team-a",
        )
        assert updated.created_at == NOON and updated.updated_at == NOON + timedelta(seconds=60)
        store.create_budget(uw.Budget("other-ns", 1.0), namespace="team-b")
        assert [r.name for r in store.budgets("team-a")] == ["monthly"]
        assert [(r.namespace, r.name) for r in store.budgets()] == [
            ("team-a", "monthly"),
            ("team-b", "other-ns"),
        ]
    # Reopened: the same rows, the definition read back exactly.
    with backend.sync() as again:
        got = again.get_budget("monthly", namespace="team-a")
        assert got == updated
        assert got.to_dict() == {
            "name": "monthly",
            "namespace": "team-a",
            "limit_usd": 25.5,
            "scope": "agent",
            "match": "bot",
            "period": 3600.0,
            "tz": "UTC",
            "thresholds": [0.5, 0.75, 0.9, 1.0],
            "action": "block",
            "downgrade_to": None,
            "soft": False,
            "created_at": NOON,
            "updated_at": NOON + timedelta(seconds=60),
            "deleted_at": None,
            "reset_at": None,
        }


def test_duplicates_conflict_and_a_deleted_budget_can_be_created_again(
    backend: LedgerBackend,
) -> None:
    clock = clock_at()
    with backend.sync(clock=clock) as store:
        store.create_budget(uw.Budget("b", 1.0), namespace="team-a")
        with pytest.raises(uw.ConflictError, match="already exists"):
            store.create_budget(uw.Budget("b", 2.0), namespace="team-a")
        # The same name in another namespace is another budget.
        store.create_budget(uw.Budget("b", 3.0), namespace="team-b")
        clock.advance(5)
        gone = store.delete_budget("b", namespace="team-a")
        assert gone.deleted_at == NOON + timedelta(seconds=5)
        assert [r.namespace for r in store.budgets()] == ["team-b"]
        assert [r.deleted_at is not None for r in store.budgets(include_deleted=True)] == [
            True,
            False,
        ]
        for call in (store.get_budget, store.delete_budget, store.reset_budget):
            with pytest.raises(ValueError, match="^name: no budget 'b'|^name: no budget \"b\""):
                call("b", namespace="team-a")
        with pytest.raises(ValueError, match="^name: no budget"):
            store.update_budget(uw.Budget("b", 9.0), namespace="team-a")
        clock.advance(5)
        back = store.create_budget(uw.Budget("b", 4.0), namespace="team-a")
        assert (back.budget.limit_usd, back.deleted_at, back.created_at) == (
            4.0,
            None,
            NOON + timedelta(seconds=10),
        )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.create_budget("not a budget"), "budget must be a usagewarden.Budget"),
        (lambda s: s.create_budget(uw.Budget("has space", 1.0)), "^name: may hold only"),
        (lambda s: s.create_budget(uw.Budget("x" * 129, 1.0)), "^name: must be 1 to 128"),
        (lambda s: s.create_budget(uw.Budget("b", 1.0), namespace=""), "^namespace:"),
        (lambda s: s.get_budget(3), "name must be a str"),
        (lambda s: s.budget_history("b", days=0), "^days: must be an int from 1 to 365"),
        (lambda s: s.budget_history("b", days=366), "^days:"),
        (lambda s: s.budget_history("b", days=True), "^days:"),
    ],
)
def test_bad_input_names_the_argument_and_writes_nothing(
    backend: LedgerBackend, call: Any, message: str
) -> None:
    with backend.sync() as store:
        with pytest.raises((ValueError, TypeError), match=message):
            call(store)
        assert store.budgets(include_deleted=True) == []


def test_a_definition_the_engine_would_refuse_is_refused_before_sql() -> None:
    with pytest.raises(ValueError, match="^thresholds: at most 64"):
        uw.Budget("b", 1.0, thresholds=[i / 100 for i in range(1, 66)])


def test_status_and_history_read_the_ledger_and_a_reset_counts_from_then(
    backend: LedgerBackend,
) -> None:
    clock = clock_at()
    with backend.sync(clock=clock) as store:
        store.create_budget(
            uw.Budget("daily", 10.0, period="daily", thresholds=[0.25, 0.5]), namespace="team-a"
        )
        store.create_budget(uw.Budget("per-agent", 5.0, scope="agent"), namespace="team-a")
        spend(store, 3.0, NOON - timedelta(hours=1))
        spend(store, 1.0, NOON - timedelta(days=1))  # yesterday: not in today's period
        spend(store, 7.0, NOON - timedelta(hours=1), namespace="team-b")  # another namespace
        spend(store, 2.0, NOON - timedelta(hours=2), agent_id="other-bot")
        rows = {(r["budget"], r["scope_value"]): r for r in store.budget_status(namespace="team-a")}
        assert set(rows) == {("daily", ""), ("per-agent", "bot"), ("per-agent", "other-bot")}
        daily = rows[("daily", "")]
        assert daily["spent_usd"] == pytest.approx(5.0)
        assert daily["thresholds_crossed"] == [0.25, 0.5]
        assert daily["period_start"] == datetime(2026, 3, 10, tzinfo=timezone.utc)
        assert daily["next_reset"] == datetime(2026, 3, 11, tzinfo=timezone.utc)
        assert rows[("per-agent", "bot")]["spent_usd"] == pytest.approx(4.0)  # the whole month
        assert store.budget_history("daily", days=3, namespace="team-a") == [
            ("2026-03-09", pytest.approx(1.0)),
            ("2026-03-10", pytest.approx(5.0)),
        ]
        clock.advance(1)
        reset = store.reset_budget("daily", namespace="team-a")
        assert reset.reset_at == NOON + timedelta(seconds=1)
        spend(store, 0.5, NOON + timedelta(seconds=2))
        clock.advance(2)
        [after] = store.budget_status("daily", namespace="team-a")
        assert after["spent_usd"] == pytest.approx(0.5)
        assert after["period_start"] == NOON + timedelta(seconds=1)
        assert after["thresholds_crossed"] == []


def test_the_async_store_has_the_same_methods(backend: LedgerBackend) -> None:
    async def main() -> list[str]:
        store = backend.async_(clock=clock_at())
        try:
            await store.create_budget(uw.Budget("b", 1.0), namespace="team-a")
            with pytest.raises(uw.ConflictError):
                await store.create_budget(uw.Budget("b", 1.0), namespace="team-a")
            await store.update_budget(uw.Budget("b", 2.0), namespace="team-a")
            await store.reset_budget("b", namespace="team-a")
            assert (await store.get_budget("b", namespace="team-a")).budget.limit_usd == 2.0
            assert await store.budget_history("b", namespace="team-a") == []
            assert [r["budget"] for r in await store.budget_status(namespace="team-a")] == ["b"]
            await store.delete_budget("b", namespace="team-a")
            listed = await store.budgets(include_deleted=True)
            assert listed == store.blocking().budgets(include_deleted=True)
            return [r.name for r in listed]
        finally:
            await store.close()

    assert asyncio.run(main()) == ["b"]


def test_running_engines_pick_up_changes_on_their_refresh(backend: LedgerBackend) -> None:
    clock = clock_at()
    with backend.sync(clock=clock) as store, backend.sync(clock=clock) as admin:
        code = uw.Budget("cap", 100.0, period="daily")
        engine = uw.BudgetEngine([code], store, clock=clock, refresh_seconds=10)
        call = {"namespace": "team-a", "estimated_cost": 2.0}
        engine.settle(engine.check(**call), 0.0)
        # Another process (another store object) stores a smaller "cap" for team-a.
        admin.create_budget(uw.Budget("cap", 1.0, period="daily"), namespace="team-a")
        engine.settle(engine.check(**call), 0.0)  # not before the refresh
        clock.advance(10)
        with pytest.raises(uw.BudgetExceeded) as refused:
            engine.check(**call)
        assert refused.value.limit == 1.0
        # Other namespaces keep the code budget.
        engine.settle(engine.check(namespace="team-b", estimated_cost=2.0), 0.0)
        assert [(b.name, b.namespace) for b in engine.enforced()] == [
            ("cap", None),
            ("cap", "team-a"),
        ]
        # Raised, then spent up in the ledger, then reset.
        admin.update_budget(uw.Budget("cap", 3.0, period="daily"), namespace="team-a")
        spend(store, 2.5, NOON + timedelta(seconds=5))
        clock.advance(10)
        with pytest.raises(uw.BudgetExceeded):
            engine.check(**call)
        admin.reset_budget("cap", namespace="team-a")
        clock.advance(10)
        engine.settle(engine.check(**call), 2.0)
        [row] = [r for r in engine.status() if r["namespace"] == "team-a"]
        assert row["spent_usd"] == pytest.approx(2.0)
        assert engine.history("cap", 2, namespace="team-a") == [("2026-03-10", 2.5)]
        with pytest.raises(ValueError, match="^name: no budget is named 'cap-b'"):
            engine.history("cap-b")
        assert row["period_start"] == NOON + timedelta(seconds=20)
        # Deleted: the code budget is back in team-a.
        admin.delete_budget("cap", namespace="team-a")
        clock.advance(10)
        engine.settle(engine.check(namespace="team-a", estimated_cost=50.0), 0.0)
        assert [b.namespace for b in engine.enforced()] == [None]


def test_an_engine_can_ignore_stored_budgets(backend: LedgerBackend) -> None:
    with backend.sync(clock=clock_at()) as store:
        store.create_budget(uw.Budget("tiny", 0.0), namespace="default")
        ignoring = uw.BudgetEngine([], store, stored=False)
        ignoring.settle(ignoring.check(estimated_cost=1.0), 0.0)
        enforcing = uw.BudgetEngine([], store)
        with pytest.raises(uw.BudgetExceeded, match="'tiny'"):
            enforcing.check(estimated_cost=1.0)


def test_alerts_of_a_stored_budget_are_recorded_in_its_namespace(backend: LedgerBackend) -> None:
    clock = clock_at()
    with backend.sync(clock=clock) as store:
        store.create_budget(
            uw.Budget("b", 10.0, thresholds=[0.5], action="alert"), namespace="team-a"
        )
        seen: list[dict[str, Any]] = []
        engine = uw.BudgetEngine([], store, clock=clock, on_alert=seen.append)
        engine.settle(engine.check(namespace="team-a", estimated_cost=6.0), 6.0)
        assert [(a["budget"], a["namespace"], a["threshold"]) for a in seen] == [
            ("b", "team-a", 0.5)
        ]
        store.flush()
        [event] = store.query(action="budget.alert")
        assert (event.namespace, event.consumer_id) == ("team-a", "b")


def test_racing_creates_of_one_name_store_exactly_one(backend: LedgerBackend) -> None:
    """Eight stores (as eight hosts would) create the same budget at once:
    one wins, the others get ConflictError, and the row is the winner's."""
    stores = [backend.sync() for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    outcomes: list[Any] = [None] * len(stores)

    def create(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = stores[i].create_budget(uw.Budget("race", float(i)), namespace="team-a")
        except uw.ConflictError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        won = [o for o in outcomes if isinstance(o, uw.BudgetRecord)]
        assert len(won) == 1, outcomes
        assert all(isinstance(o, uw.ConflictError) for o in outcomes if o not in won)
        assert stores[0].get_budget("race", namespace="team-a") == won[0]
    finally:
        for store in stores:
            store.close()
