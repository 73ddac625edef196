"""``usagewarden report``: totals, or totals per group, over a time range."""

from __future__ import annotations

from typing import Any

import click

from ._ledger_access import open_ledger
from ._options import db_option, filter_options, ledger_filters, resolve_db
from ._output import Column, count, emit_record, emit_rows, format_option, text, usd

GROUPS = ("agent", "consumer", "model", "action", "namespace", "hour", "day", "week", "month")
SORTS = ("group", "cost", "events", "tokens")

TOTALS = (
    Column("events", "events", count),
    Column("tokens_in", "tokens in", count),
    Column("tokens_out", "tokens out", count),
    Column("total_tokens", "tokens", count),
    Column("cache_read_tokens", "cache read", count),
    Column("cache_write_tokens", "cache write", count),
    Column("cost", "cost", usd),
    Column("unpriced_events", "unpriced", count),
    Column("unique_agents", "agents", count),
    Column("unique_consumers", "consumers", count),
    Column("api_calls", "API calls", count),
    Column("duration_ms", "duration (ms)", count),
)
_TABLE_TOTALS = {"events", "total_tokens", "tokens_in", "tokens_out", "cost", "unpriced_events"}


def _sort_key(sort: str) -> Any:
    if sort == "cost":
        return lambda row: -(row["cost"] or 0.0)
    if sort == "events":
        return lambda row: -row["events"]
    return lambda row: -row["total_tokens"]


@click.command()
@db_option
@filter_options
@click.option(
    "--group-by",
    type=click.Choice(GROUPS),
    help="Totals per agent, consumer, model, action, namespace, or calendar bucket "
    "(in --tz). Without it: one summary.",
)
@click.option(
    "--sort",
    type=click.Choice(SORTS),
    default="group",
    show_default=True,
    help="Order of the groups (cost, events and tokens: largest first).",
)
@click.option("--top", type=click.IntRange(min=1), help="Only the first N groups.")
@format_option
@click.pass_context
def report(
    ctx: click.Context,
    /,
    db: str | None,
    group_by: str | None,
    sort: str,
    top: int | None,
    output_format: str,
    **params: Any,
) -> None:
    """Usage totals from the ledger, in SQL: one summary, or per group.

    \b
    usagewarden report --since 7d
    usagewarden report --group-by day --tz Europe/Paris --since 2026-11-01
    usagewarden report --group-by agent --sort cost --top 10 --format csv
    """
    filters, tz_name, _ = ledger_filters(params)
    with open_ledger(resolve_db(ctx, db)) as store:
        if group_by is None:
            totals = store.summary(**filters).to_dict()
            totals.pop("group", None)
            emit_record(totals, TOTALS, output_format, title="Usage")
            return
        rows = [row.to_dict() for row in store.aggregate(group_by, tz=tz_name, **filters)]
    if sort != "group":
        rows.sort(key=_sort_key(sort))
    if top is not None:
        rows = rows[:top]
    columns = [Column("group", group_by, text, numeric=False), *TOTALS]
    if output_format == "table":
        columns = [columns[0], *(c for c in TOTALS if c.key in _TABLE_TOTALS)]
    emit_rows(
        rows,
        columns,
        output_format,
        title=f"Usage per {group_by}" + (f" ({tz_name})" if group_by in GROUPS[5:] else ""),
        document={"group_by": group_by, "tz": tz_name},
        rows_key="groups",
    )
