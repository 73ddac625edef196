"""Writing rows as a table for people, or as CSV or JSON for programs."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "csv", "json")

format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="A table to read, or CSV or JSON for programs.",
)


@dataclass(frozen=True)
class Column:
    """A field of the rows: its key, its heading and how a table shows it."""

    key: str
    heading: str
    show: Callable[[Any], str] = str
    numeric: bool = True


def usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.6f}"


def count(value: int) -> str:
    return f"{value:,}"


def moment(value: datetime | None) -> str:
    return "—" if value is None else value.isoformat()


def short_moment(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M %Z").strip()


def text(value: str | None) -> str:
    return "—" if value is None else value


def plain(value: Any) -> Any:
    """A value as JSON carries it."""
    return value.isoformat() if isinstance(value, datetime) else value


def cell(value: Any) -> Any:
    """A value as a CSV cell: lists as space-separated items."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " ".join(str(item) for item in value)
    return plain(value)


def stdout_console() -> Console:
    # Piped into a file or a pager, a table is as wide as its content.
    width = None if sys.stdout.isatty() else 240
    return Console(highlight=False, soft_wrap=False, width=width)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def emit_rows(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    output_format: str,
    *,
    title: str | None = None,
    document: Mapping[str, Any] | None = None,
    rows_key: str = "rows",
) -> None:
    """``rows`` on stdout. JSON is ``document`` with the rows under
    ``rows_key`` when given, else the list of rows; CSV has every column."""
    if output_format == "json":
        items = [{key: plain(value) for key, value in row.items()} for row in rows]
        body: Any = {**document, rows_key: items} if document is not None else items
        click.echo(json.dumps(body, indent=2))
    elif output_format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([c.key for c in columns])
        for row in rows:
            writer.writerow([cell(row[c.key]) for c in columns])
    else:
        table = Table(title=title, title_justify="left", header_style="bold")
        for column in columns:
            table.add_column(column.heading, justify="right" if column.numeric else "left")
        for row in rows:
            table.add_row(*(column.show(row[column.key]) for column in columns))
        stdout_console().print(table)


def emit_record(
    record: Mapping[str, Any],
    labels: Sequence[Column],
    output_format: str,
    *,
    title: str | None = None,
) -> None:
    """One record: a two-column table of fields, one CSV row, or a JSON object."""
    if output_format == "json":
        click.echo(json.dumps({key: plain(value) for key, value in record.items()}, indent=2))
    elif output_format == "csv":
        emit_rows([record], labels, "csv")
    else:
        table = Table(title=title, title_justify="left", show_header=False)
        table.add_column(style="bold")
        table.add_column(justify="right")
        for label in labels:
            table.add_row(label.heading, label.show(record[label.key]))
        stdout_console().print(table)
