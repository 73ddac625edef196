"""``usagewarden budgets list|create|update|delete|reset``: the budgets kept
in the ledger database (``--db``), which running ``BudgetEngine``\\ s and
``usagewarden serve`` pick up on their refresh."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

import usagewarden as uw

from ._ledger_access import CommandError, open_ledger
from ._options import db_option, resolve_db
from ._output import Column, emit_rows, format_option, short_moment, text

_PERIODS = ("daily", "weekly", "monthly", "total")
_SCOPES = ("global", "namespace", "agent", "consumer", "model", "workflow")
_ACTIONS = ("alert", "block", "downgrade")

_COLUMNS = [
    Column("namespace", "namespace", text, numeric=False),
    Column("name", "name", text, numeric=False),
    Column("limit_usd", "limit", lambda v: f"${v:,.2f}"),
    Column("period", "period", str, numeric=False),
    Column("scope", "scope", text, numeric=False),
    Column("match", "match", text, numeric=False),
    Column("action", "action", text, numeric=False),
    Column("thresholds", "thresholds", lambda ts: " ".join(f"{t:.0%}" for t in ts) or "—"),
    Column("updated_at", "updated", short_moment, numeric=False),
    Column("reset_at", "reset", short_moment, numeric=False),
    Column("deleted_at", "deleted", short_moment, numeric=False),
]

namespace_option = click.option(
    "--namespace",
    default="default",
    show_default=True,
    help="The namespace the budget belongs to (it covers only that namespace's calls).",
)


def _period(value: str) -> str | float:
    """A calendar period's name, or a rolling window in seconds."""
    if value in _PERIODS:
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(
            f"must be one of {', '.join(_PERIODS)} or a number of seconds, got {value!r}",
            param_hint="--period",
        ) from None


def _thresholds(value: str) -> list[float]:
    try:
        return [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            f"must be comma-separated fractions, got {value!r}", param_hint="--thresholds"
        ) from None


def definition_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a budget's definition: ``usagewarden.Budget``'s arguments."""
    options = [
        click.option("--limit-usd", type=float, required=True, help="The limit in USD."),
        click.option(
            "--period",
            default="monthly",
            show_default=True,
            help="daily, weekly, monthly, total, or a rolling window in seconds.",
        ),
        click.option("--scope", type=click.Choice(_SCOPES), default="global", show_default=True),
        click.option("--match", default=None, help="Which value of the scope (default: each)."),
        click.option("--tz", default="UTC", show_default=True, help="The calendar's IANA zone."),
        click.option(
            "--thresholds",
            default="0.5,0.75,0.9,1",
            show_default=True,
            help="Alert thresholds, fractions of the limit.",
        ),
        click.option("--action", type=click.Choice(_ACTIONS), default="block", show_default=True),
        click.option("--downgrade-to", default=None, help="The model of action downgrade."),
        click.option("--soft", is_flag=True, help="Admit a call while spend is below the limit."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _budget(name: str, limit_usd: float, **fields: Any) -> uw.Budget:
    fields["period"] = _period(fields["period"])
    fields["thresholds"] = _thresholds(fields["thresholds"])
    try:
        return uw.Budget(name, limit_usd, **fields)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"budget {name!r}: {exc}") from None


def _show(records: list[uw.BudgetRecord], output_format: str, title: str) -> None:
    emit_rows(
        [record.to_dict() for record in records],
        _COLUMNS,
        output_format,
        title=title,
        document={},
        rows_key="budgets",
    )


def _change(ctx: click.Context, db: str | None, work: Callable[[Any], uw.BudgetRecord]) -> Any:
    """Runs ``work`` on the ledger; a conflict or an unknown budget is one line."""
    with open_ledger(resolve_db(ctx, db)) as store:
        try:
            return work(store)
        except uw.ConflictError as exc:
            raise CommandError(str(exc)) from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None


@click.command("list")
@db_option
@click.option("--namespace", default=None, help="Only this namespace's budgets (default: all).")
@click.option("--include-deleted", is_flag=True, help="Soft-deleted budgets too.")
@format_option
@click.pass_context
def list_budgets(
    ctx: click.Context,
    db: str | None,
    namespace: str | None,
    include_deleted: bool,
    output_format: str,
) -> None:
    """The budgets stored in the ledger."""
    with open_ledger(resolve_db(ctx, db)) as store:
        records = store.budgets(namespace, include_deleted=include_deleted)
    _show(records, output_format, "Stored budgets")


def _defining(verb: str, method: str, title: str, doc: str) -> click.Command:
    """``create`` or ``update``: a budget NAME from the definition options."""

    @click.pass_context
    def command(
        ctx: click.Context,
        /,
        db: str | None,
        name: str,
        namespace: str,
        output_format: str,
        limit_usd: float,
        **fields: Any,
    ) -> None:
        budget = _budget(name, limit_usd, **fields)
        record = _change(ctx, db, lambda store: getattr(store, method)(budget, namespace=namespace))
        _show([record], output_format, title)

    command.__doc__ = doc
    for decorate in (format_option, definition_options, namespace_option, click.argument("name")):
        command = decorate(command)
    return click.command(verb)(db_option(command))


def _marking(verb: str, method: str, title: str, doc: str) -> click.Command:
    """``delete`` or ``reset``: a change of budget NAME without a definition."""

    @click.pass_context
    def command(
        ctx: click.Context, /, db: str | None, name: str, namespace: str, output_format: str
    ) -> None:
        record = _change(ctx, db, lambda store: getattr(store, method)(name, namespace=namespace))
        _show([record], output_format, title)

    command.__doc__ = doc
    for decorate in (format_option, namespace_option, click.argument("name")):
        command = decorate(command)
    return click.command(verb)(db_option(command))


create = _defining(
    "create",
    "create_budget",
    "Created",
    "Stores a new budget NAME (a deleted one of the name is replaced).",
)
update = _defining(
    "update",
    "update_budget",
    "Updated",
    "Replaces the definition of budget NAME (omitted options take their defaults).",
)
delete = _marking(
    "delete",
    "delete_budget",
    "Deleted",
    "Soft-deletes budget NAME (listed with --include-deleted).",
)
reset = _marking(
    "reset", "reset_budget", "Reset", "Resets budget NAME's spend: it counts from now on."
)


STORED_BUDGET_COMMANDS = (list_budgets, create, update, delete, reset)
