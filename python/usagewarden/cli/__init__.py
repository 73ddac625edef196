"""The ``usagewarden`` command line (also ``python -m usagewarden``).

Every failure is one line on stderr and a non-zero exit code: 2 for a
command used wrongly, 1 for anything else. ``USAGEWARDEN_DEBUG=1`` shows
the traceback of an unexpected error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from .._core import __version__
from ..errors import UsageWardenError
from ._budgets import budgets
from ._demo import demo
from ._export import export
from ._grants import grants
from ._ledger_access import DB_ENV
from ._maintenance import migrate, purge, stats
from ._report import report
from ._serve import serve

__all__ = ["cli", "main"]


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", "-V", prog_name="usagewarden")
@click.option(
    "--db",
    metavar="PATH|URL",
    envvar=DB_ENV,
    help=f"The ledger for every command: a SQLite file, sqlite:///path or postgresql://… "
    f"[env: {DB_ENV}]",
)
@click.pass_context
def cli(ctx: click.Context, db: str | None) -> None:
    """Rate limits, usage metering and budgets for AI agents: the ledger from
    the command line, and the usage API with its dashboard.

    \b
    usagewarden report --db usage.db --since 7d --group-by model
    usagewarden serve --db usage.db --keys keys.toml
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


for command in (report, export, purge, stats, budgets, grants, serve, migrate, demo):
    cli.add_command(command)


def _fail(message: str, code: int) -> int:
    click.echo(f"usagewarden: error: {message}", err=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    try:
        returned = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="usagewarden",
            standalone_mode=False,
        )
    except click.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        return _fail(f"{exc.format_message()}{hint}", exc.exit_code)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return _fail("aborted", 130)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader of stdout went away (`usagewarden export | head`).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (UsageWardenError, ValueError, TypeError, OSError) as exc:
        if os.environ.get("USAGEWARDEN_DEBUG"):
            raise
        return _fail(_one_line(exc), 1)
    except Exception as exc:
        if os.environ.get("USAGEWARDEN_DEBUG"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {_one_line(exc)}", 1)
    return returned if isinstance(returned, int) else 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text
