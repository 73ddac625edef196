"""``usagewarden export``: events to a file or to stdout, with a progress
bar on stderr when it is a terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ._ledger_access import open_ledger
from ._options import db_option, filter_options, ledger_filters, resolve_db
from ._output import stderr_console

EXPORT_FORMATS = ("csv", "json", "ndjson")


class _CountingWriter:
    """Passes bytes on to ``out`` and advances ``progress`` by the rows seen:
    one per line (JSON puts each object of its array on a line of its own)."""

    def __init__(self, out: IO[bytes], progress: Progress, task: Any, output_format: str) -> None:
        self._out = out
        self._progress = progress
        self._task = task
        self._marker = b"\n" if output_format != "json" else b"\n{"
        self._header_pending = output_format == "csv"

    def write(self, data: bytes) -> int:
        self._out.write(data)
        rows = data.count(self._marker)
        if self._header_pending and rows:
            rows -= 1
            self._header_pending = False
        if rows:
            self._progress.advance(self._task, rows)
        return len(data)


def _format_of(output: str | None, given: str | None) -> str:
    if given is not None:
        return given
    if output not in (None, "-"):
        suffix = Path(output).suffix.lstrip(".").lower()
        if suffix in EXPORT_FORMATS:
            return suffix
    return "csv"


@contextlib.contextmanager
def _replaced_when_done(path: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``path``, renamed to it once complete."""
    directory = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@click.command()
@click.argument("output", required=False, metavar="[FILE|-]")
@db_option
@filter_options
@click.option(
    "--format",
    "output_format",
    type=click.Choice(EXPORT_FORMATS),
    help="CSV, one JSON array, or one JSON object per line [default: from FILE's "
    "extension, else csv].",
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many events.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A progress bar on stderr [default: when stderr is a terminal].",
)
@click.pass_context
def export(
    ctx: click.Context,
    /,
    output: str | None,
    db: str | None,
    output_format: str | None,
    limit: int | None,
    progress: bool | None,
    **params: Any,
) -> None:
    """Events, oldest first, to FILE (written whole or not at all) or stdout.

    \b
    usagewarden export usage.csv --since 2026-11-01 --until 2026-11-30
    usagewarden export --format ndjson --agent support-bot | jq .cost
    """
    filters, _, _ = ledger_filters(params)
    chosen = _format_of(output, output_format)
    to_stdout = output in (None, "-")
    show_progress = sys.stderr.isatty() if progress is None else progress
    with open_ledger(resolve_db(ctx, db)) as store:
        if not show_progress:
            written = store.export(
                sys.stdout.buffer if to_stdout else output, format=chosen, limit=limit, **filters
            )
        else:
            total = store.summary(**filters).events
            if limit is not None:
                total = min(total, limit)
            written = _export_with_progress(store, output, chosen, limit, filters, total)
    if not to_stdout:
        stderr_console().print(f"{written:,} events written to {output} ({chosen})")


def _export_with_progress(
    store: Any,
    output: str | None,
    output_format: str,
    limit: int | None,
    filters: dict[str, Any],
    total: int,
) -> int:
    columns = (
        TextColumn("exporting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr_console(), transient=True) as bar:
        task = bar.add_task("export", total=total)
        with (
            contextlib.nullcontext(sys.stdout.buffer)
            if output in (None, "-")
            else _replaced_when_done(Path(str(output)))
        ) as out:
            writer = _CountingWriter(out, bar, task, output_format)
            written: int = store.export(writer, format=output_format, limit=limit, **filters)
            out.flush()
        return written
