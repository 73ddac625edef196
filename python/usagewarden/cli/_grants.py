"""``usagewarden grants``: which database roles may read which namespaces of
a PostgreSQL ledger (row-level security, enforced by PostgreSQL itself)."""

from __future__ import annotations

from typing import Any

import click

from ._ledger_access import CommandError, describe, is_postgres, open_ledger
from ._options import db_option, resolve_db
from ._output import Column, emit_rows, format_option, text


def _owner_store(ctx: click.Context, db: str | None) -> Any:
    target = resolve_db(ctx, db)
    if not is_postgres(target):
        raise CommandError(
            f"--db: {describe(target)} is not PostgreSQL; namespace grants are PostgreSQL's "
            "row-level security (give --db postgresql://… as the schema's owner)"
        )
    return open_ledger(target)


@click.group()
def grants() -> None:
    """Which database roles may read which namespaces (PostgreSQL).

    \b
    usagewarden grants add team_a_reader team-a --db postgresql://owner@db/metering
    usagewarden grants list --db postgresql://owner@db/metering
    usagewarden grants remove team_a_reader team-a --db postgresql://owner@db/metering
    """


@grants.command("list")
@db_option
@format_option
@click.pass_context
def list_grants(ctx: click.Context, db: str | None, output_format: str) -> None:
    """Every role and the namespaces it may read."""
    with _owner_store(ctx, db) as store:
        rows = [{"role": role, "namespace": ns} for role, ns in store.namespace_grants()]
    emit_rows(
        rows,
        [
            Column("role", "role", text, numeric=False),
            Column("namespace", "namespace", text, numeric=False),
        ],
        output_format,
        title="Namespace grants",
        rows_key="grants",
        document={},
    )


@grants.command("add")
@click.argument("role")
@click.argument("namespace")
@db_option
@click.pass_context
def add(ctx: click.Context, role: str, namespace: str, db: str | None) -> None:
    """Lets ROLE (an existing database role) read NAMESPACE; the first grant
    turns row-level security on for the schema."""
    with _owner_store(ctx, db) as store:
        store.grant_namespace(role, namespace)
    click.echo(f"{role} may read {namespace}")


@grants.command("remove")
@click.argument("role")
@click.argument("namespace")
@db_option
@click.pass_context
def remove(ctx: click.Context, role: str, namespace: str, db: str | None) -> None:
    """Takes NAMESPACE back from ROLE."""
    with _owner_store(ctx, db) as store:
        removed = store.revoke_namespace(role, namespace)
    if not removed:
        raise CommandError(f"{role} had no grant on {namespace}")
    click.echo(f"{role} may no longer read {namespace}")
