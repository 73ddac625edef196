"""``usagewarden purge``, ``stats`` and ``migrate``: looking after the ledger."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import click

from ._ledger_access import CommandError, describe, open_ledger, sqlite_path
from ._options import db_option, resolve_db
from ._output import (
    Column,
    count,
    emit_record,
    emit_rows,
    format_option,
    moment,
    stdout_console,
    text,
    usd,
)
from ._times import duration


def _retention(text_value: str) -> timedelta:
    retention = duration(text_value)
    if retention is None or retention.total_seconds() <= 0:
        raise click.BadParameter(
            f"{text_value!r} is not a positive duration such as 90d, 12h or 2w",
            param_hint="--older-than",
        )
    return retention


@click.command()
@db_option
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    help="Delete events older than this, e.g. 90d (every namespace: retention is a "
    "ledger-wide policy).",
)
@click.option("--yes", is_flag=True, help="Delete them; without it, only show what would go.")
@format_option
@click.pass_context
def purge(
    ctx: click.Context, db: str | None, older_than: str, yes: bool, output_format: str
) -> None:
    """Shows the events older than --older-than, per namespace; deletes them with --yes.

    \b
    usagewarden purge --older-than 90d          # what would be deleted
    usagewarden purge --older-than 90d --yes    # delete it
    """
    retention = _retention(older_than)
    target = resolve_db(ctx, db)
    cutoff = datetime.now(timezone.utc) - retention
    # An event exactly at the cutoff stays, as in the store's own purge.
    before = {"end": cutoff - timedelta(microseconds=1)}
    with open_ledger(target) as store:
        rows = [row.to_dict() for row in store.aggregate("namespace", **before)]
    expired = sum(row["events"] for row in rows)
    if not yes:
        emit_rows(
            rows,
            [
                Column("group", "namespace", text, numeric=False),
                Column("events", "events", count),
                Column("cost", "cost (USD)", usd),
            ],
            output_format,
            title=f"Events before {cutoff.isoformat(timespec='seconds')}",
            document={"cutoff": cutoff.isoformat(), "events": expired, "deleted": 0},
            rows_key="namespaces",
        )
        if output_format == "table":
            note = "nothing to delete" if expired == 0 else "run again with --yes to delete them"
            stdout_console().print(f"{expired:,} events would be deleted; {note}.")
        return
    # The store deletes what is older than now - retention_seconds.
    with open_ledger(target, retention_seconds=retention.total_seconds()) as store:
        deleted = store.purge_expired()
    if output_format == "table":
        stdout_console().print(f"deleted {deleted:,} events older than {older_than}")
    else:
        emit_record(
            {"cutoff": cutoff.isoformat(), "deleted": deleted},
            [Column("cutoff", "cutoff", str), Column("deleted", "deleted", count)],
            output_format,
        )


_STATS = (
    Column("events", "events", count),
    Column("oldest", "oldest", moment),
    Column("newest", "newest", moment),
    Column("cost", "cost (USD)", usd),
    Column("unique_agents", "agents", count),
    Column("unique_consumers", "consumers", count),
    Column("size_bytes", "size (bytes)", count),
    Column("retention_seconds", "retention (s)", lambda v: "—" if v is None else f"{v:,.0f}"),
)


@click.command()
@db_option
@format_option
@click.pass_context
def stats(ctx: click.Context, db: str | None, output_format: str) -> None:
    """What the ledger holds: events, time span, size and totals."""
    with open_ledger(resolve_db(ctx, db)) as store:
        health: dict[str, Any] = store.stats().to_dict()
        totals = store.summary()
    record = {
        **health,
        "cost": totals.cost,
        "unique_agents": totals.unique_agents,
        "unique_consumers": totals.unique_consumers,
    }
    emit_record(record, _STATS, output_format, title=describe(resolve_db(ctx, db)))


@click.command()
@db_option
@click.pass_context
def migrate(ctx: click.Context, db: str | None) -> None:
    """Brings the ledger's schema up to date (creating the ledger if needed)."""
    target = resolve_db(ctx, db)
    path = sqlite_path(target)
    if path is None:
        store = open_ledger(target, must_exist=False)
        try:
            migrate_schema = getattr(store, "migrate", None)
            if migrate_schema is not None:
                migrate_schema()
        finally:
            store.close()
        click.echo(f"{describe(target)}: the schema is up to date")
        return
    if path.exists() and not path.is_file():
        raise CommandError(f"--db: {str(path)!r} is not a file")
    existed = path.exists()
    with open_ledger(target, must_exist=False) as store:
        events = store.stats().events
    state = f"holds {events:,} events" if existed else "was created"
    click.echo(
        f"{path}: the schema is up to date and the ledger {state}. "
        "(A SQLite ledger migrates itself whenever it is opened; this command is only "
        "needed for PostgreSQL.)"
    )
