"""Options that several commands share: the ledger (``--db``) and the
ledger filters with a time range."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any, TypeVar

import click

from ._ledger_access import DB_ENV, DEFAULT_DB
from ._times import point_in_time, zone

F = TypeVar("F", bound=Callable[..., Any])

_FILTERS = (
    ("--namespace", "namespace", "Only this namespace."),
    ("--agent", "agent_id", "Only this agent."),
    ("--consumer", "consumer_id", "Only this consumer."),
    ("--task", "task_id", "Only this task (workflow)."),
    ("--model", "model", "Only this model."),
    ("--action", "action", "Only this action, e.g. llm.request."),
)


def db_option(func: F) -> F:
    """``--db`` on a command; the group's ``--db`` and ``$USAGEWARDEN_DB``
    are the fallbacks."""
    return click.option(
        "--db",
        "db",
        metavar="PATH|URL",
        default=None,
        help=f"The ledger: a SQLite file, sqlite:///path or postgresql://… "
        f"[default: ${DB_ENV}, else ./{DEFAULT_DB}]",
    )(func)


def resolve_db(ctx: click.Context, db: str | None) -> str:
    """The command's ``--db``, else the group's (which reads the environment)."""
    if db:
        return db
    root = ctx.find_root()
    given = root.params.get("db") if root is not None else None
    return str(given) if given else DEFAULT_DB


def tz_option(func: F) -> F:
    return click.option(
        "--tz",
        default="UTC",
        show_default=True,
        help="IANA time zone of calendar groups, of dates without an offset, and of times shown.",
    )(func)


def filter_options(func: F) -> F:
    """The ledger filters, ``--since``/``--until`` and ``--tz``."""
    func = tz_option(func)
    func = click.option(
        "--until",
        metavar="WHEN",
        help="Up to (inclusive): a date (its whole day), an ISO date and time, or a "
        "duration ago such as 1h.",
    )(func)
    func = click.option(
        "--since",
        metavar="WHEN",
        help="From (inclusive): a date, an ISO date and time, or a duration ago such as 7d, "
        "12h or 30m.",
    )(func)
    for flag, name, text in reversed(_FILTERS):
        func = click.option(flag, name, metavar="ID", help=text)(func)
    return func


def ledger_filters(
    params: dict[str, Any], *, now: datetime | None = None
) -> tuple[dict[str, Any], str, tzinfo]:
    """The store filters the options ask for, and the zone given with ``--tz``
    (its name and the zone). Takes the filter parameters out of ``params``."""
    tz_name = params.pop("tz")
    tz = zone(tz_name)
    filters: dict[str, Any] = {}
    for _, name, _ in _FILTERS:
        value = params.pop(name)
        if value is not None:
            filters[name] = value
    since, until = params.pop("since"), params.pop("until")
    if since is not None:
        filters["start"] = point_in_time(since, tz, option="--since", now=now)
    if until is not None:
        filters["end"] = point_in_time(until, tz, option="--until", end_of_day=True, now=now)
    if "start" in filters and "end" in filters and filters["start"] > filters["end"]:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    return filters, tz_name, tz
