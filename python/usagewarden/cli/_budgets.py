"""Budgets from a TOML file, and ``usagewarden budgets status``.

A budgets file lists ``[[budgets]]`` tables whose keys are the arguments of
``usagewarden.Budget``::

    [[budgets]]
    name = "org"
    limit_usd = 500.0            # monthly, global, block by default

    [[budgets]]
    name = "per-agent"
    limit_usd = 20.0
    scope = "agent"
    period = "daily"
    tz = "Europe/Paris"
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

import usagewarden as uw

from ._budget_admin import STORED_BUDGET_COMMANDS
from ._ledger_access import CommandError, open_ledger
from ._options import db_option, resolve_db
from ._output import Column, emit_rows, format_option, short_moment, text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_BUDGET_KEYS = {
    "name",
    "limit_usd",
    "scope",
    "match",
    "period",
    "tz",
    "thresholds",
    "action",
    "downgrade_to",
    "soft",
}
#: Which argument of a call carries each scope's value.
_CALL_ARGUMENT = {
    "namespace": "namespace",
    "agent": "agent_id",
    "consumer": "consumer_id",
    "model": "model",
    "workflow": "task_id",
}


def load_budgets(path: Path) -> list[uw.Budget]:
    """The budgets of a TOML file; an error names the file, the budget and the key."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CommandError(f"{path}: is not valid TOML ({exc})") from None
    entries = document.get("budgets")
    unknown_top = set(document) - {"budgets"}
    if unknown_top:
        raise CommandError(f"{path}: unknown table(s) {sorted(unknown_top)}; expected [[budgets]]")
    if not isinstance(entries, list) or not entries:
        raise CommandError(f"{path}: holds no [[budgets]] table")
    budgets = []
    for position, entry in enumerate(entries, start=1):
        label = f"{path}: budget {entry.get('name', f'#{position}')!r}"
        unknown = set(entry) - _BUDGET_KEYS
        if unknown:
            raise CommandError(
                f"{label}: unknown key(s) {sorted(unknown)}; known: {sorted(_BUDGET_KEYS)}"
            )
        if "name" not in entry or "limit_usd" not in entry:
            raise CommandError(f"{label}: needs a name and a limit_usd")
        arguments = dict(entry)
        try:
            budgets.append(
                uw.Budget(arguments.pop("name"), arguments.pop("limit_usd"), **arguments)
            )
        except (ValueError, TypeError) as exc:
            raise CommandError(f"{label}: {exc}") from None
    return budgets


def _scope_values(budget: uw.Budget, store: Any) -> list[str]:
    """The values a budget has a spend for: its ``match``, or every value the
    ledger holds for its scope (workflows cannot be listed); a stored
    budget's within its namespace."""
    if budget.match is not None:
        return [budget.match]
    within = {"namespace": budget.namespace} if budget.namespace is not None else {}
    if budget.scope == "namespace" and budget.namespace is not None:
        return [budget.namespace]
    if budget.scope == "agent":
        return [name for name, _ in store.agents(**within)]
    if budget.scope == "consumer":
        return [name for name, _ in store.consumers(**within)]
    if budget.scope in ("namespace", "model"):
        rows = store.aggregate(budget.scope, **within)
        return [row.group for row in rows if row.group is not None]
    return []


def _first(values: list[str]) -> str | None:
    return values[0] if values else None


def observe(engine: uw.BudgetEngine, store: Any) -> set[tuple[str, str]]:
    """Reads every budget's spend from the ledger into ``engine``, so its
    ``status()`` covers each budget and scope value, not only those that a
    call has touched; returns the (budget, value) pairs it read. Each read is
    a check of zero cost released at once: it reserves nothing, and spend
    first read from the ledger fires no alert. The other fields of each check
    hold values the ledger has, so no budget gains a value that is not there."""
    agents = [name for name, _ in store.agents()]
    consumers = [name for name, _ in store.consumers()]
    namespaces = [row.group for row in store.aggregate("namespace") if row.group is not None]
    present = {
        "agent_id": _first(agents),
        "consumer_id": _first(consumers),
        "namespace": _first(namespaces),
    }
    defaults = {name: value for name, value in present.items() if value is not None}
    calls: list[dict[str, Any]] = []
    read: set[tuple[str, str]] = set()
    for budget in engine.enforced():
        # A stored budget covers only its namespace's calls.
        own = {"namespace": budget.namespace} if budget.namespace is not None else {}
        if budget.scope == "global":
            calls.append(own)
            read.add((budget.name, ""))
            continue
        argument = _CALL_ARGUMENT[budget.scope]
        for value in _scope_values(budget, store):
            calls.append({**own, argument: value})
            read.add((budget.name, value))
    for call in calls:
        arguments = {**defaults, **call}
        model = arguments.pop("model", None)
        try:
            check = engine.check(model, estimated_cost=0.0, **arguments)
        except uw.BudgetExceeded:
            continue
        engine.cancel(check)
    return read


def status_rows(
    engine: uw.BudgetEngine, only: set[tuple[str, str]] | None = None
) -> list[dict[str, Any]]:
    """``engine.status()`` with each budget's settings; only the (budget,
    value) pairs in ``only`` when given."""
    by_name = {(budget.namespace, budget.name): budget for budget in engine.enforced()}
    rows = []
    for row in engine.status():
        if only is not None and (row["budget"], row["scope_value"]) not in only:
            continue
        budget = by_name.get((row["namespace"], row["budget"]))
        if budget is None:  # deleted since
            continue
        rows.append(
            {
                **row,
                "scope": budget.scope,
                "period": budget.period,
                "action": budget.action,
                "thresholds": budget.thresholds,
            }
        )
    return rows


def _money(value: float) -> str:
    return f"${value:,.2f}" if value >= 100 else f"${value:,.4f}"


def _percent(value: float) -> str:
    return f"{value:.1f}%"


def _thresholds(crossed: list[float]) -> str:
    return " ".join(f"{t:.0%}" for t in crossed) or "—"


_BRIEF = [
    Column("budget", "budget", text, numeric=False),
    Column("scope_value", "value", lambda v: v or "—", numeric=False),
    Column("spent_usd", "spent", _money),
    Column("limit_usd", "limit", _money),
    Column("percent", "used", _percent),
    Column("next_reset", "next reset", short_moment, numeric=False),
    Column("thresholds_crossed", "crossed", _thresholds, numeric=False),
]


@click.group()
def budgets() -> None:
    """Budgets: those of a TOML file checked against the ledger (status), and
    those stored in the ledger (list, create, update, delete, reset)."""


@budgets.command("status")
@db_option
@click.option(
    "--config",
    "config",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The budgets file ([[budgets]] tables with usagewarden.Budget's arguments).",
)
@format_option
@click.pass_context
def status(ctx: click.Context, db: str | None, config: Path, output_format: str) -> None:
    """Spend of each budget in its current period, its limit and next reset."""
    configured = load_budgets(config)
    with open_ledger(resolve_db(ctx, db)) as store:
        # The file's budgets only: `budgets list` shows the stored ones.
        engine = uw.BudgetEngine(configured, store, refresh_seconds=None, stored=False)
        rows = status_rows(engine, observe(engine, store))
    emit_rows(
        rows,
        [
            *(
                _BRIEF
                if output_format == "table"
                else [
                    *_BRIEF[:1],
                    Column("scope", "scope", text),
                    *_BRIEF[1:],
                    Column("period", "period", text),
                ]
            ),
        ],
        output_format,
        title="Budgets",
        document={"config": str(config), "budget_count": len(configured)},
        rows_key="budgets",
    )


for _command in STORED_BUDGET_COMMANDS:
    budgets.add_command(_command)
