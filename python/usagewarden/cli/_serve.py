"""``usagewarden serve``: the usage API and the dashboard on uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

import usagewarden as uw

from ._budgets import load_budgets, observe
from ._keys import KEYS_ENV, KEYS_FILE_ENV, load_keys
from ._ledger_access import CommandError, open_ledger
from ._options import db_option, resolve_db

logger = logging.getLogger("usagewarden")

LOOPBACK = "127.0.0.1"
#: How often the budgets' spend is read again from the ledger.
BUDGET_REFRESH_SECONDS = 10.0


def _require_server_packages() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CommandError(
            f"serve needs FastAPI and uvicorn ({exc.name} is missing): "
            "pip install 'usagewarden[dashboard]'"
        ) from None


def build_app(
    store: Any,
    *,
    keys: dict[str, Any],
    budgets: uw.BudgetEngine | None = None,
    requests_per_minute: int | None = None,
) -> Any:
    """The FastAPI app ``serve`` runs: the usage API at ``/usage`` and the
    dashboard at ``/``. Without ``keys`` it serves anyone who can reach it."""
    from fastapi import FastAPI

    from usagewarden.dashboard import mount
    from usagewarden.fastapi import api_key_auth, usage_router

    auth = api_key_auth(keys) if keys else None
    limiter = None
    if requests_per_minute is not None:
        limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=requests_per_minute))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        refresher = None
        if budgets is not None:
            refresher = asyncio.create_task(_refresh_budgets(budgets, store))
        try:
            yield
        finally:
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            await store.close()

    app = FastAPI(title="usagewarden", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.include_router(
        usage_router(
            store,
            auth=auth,
            rate_limiter=limiter,
            budgets=budgets,
            allow_unauthenticated=auth is None,
        )
    )
    mount(
        app,
        store,
        auth=auth,
        path="/",
        include_api=False,
        budgets=budgets,
        limiter=limiter,
        limiter_keys=[principal.id for principal in keys.values()] if keys else ["anonymous"],
        allow_unauthenticated=auth is None,
    )
    return app


async def _refresh_budgets(engine: uw.BudgetEngine, store: Any) -> None:
    """Keeps every budget's spend current: nothing in this process makes
    calls, so the spend is read from the ledger on a schedule."""
    blocking = store.blocking()
    while True:
        try:
            await asyncio.to_thread(observe, engine, blocking)
        except uw.UsageWardenError as exc:
            logger.error("usagewarden: could not read the budgets' spend: %s", exc)
        await asyncio.sleep(BUDGET_REFRESH_SECONDS)


@click.command()
@db_option
@click.option("--host", default=LOOPBACK, show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=KEYS_FILE_ENV,
    help=f"API keys, TOML or JSON (key, namespace, scopes) [env: {KEYS_FILE_ENV}; or the "
    f"document itself in ${KEYS_ENV}].",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help=f"Serve without keys: anyone who can connect reads, writes and purges. Only on "
    f"{LOOPBACK}.",
)
@click.option(
    "--budgets",
    "budgets_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A budgets file (as for `budgets status`): GET /usage/budgets and the dashboard "
    "show them, with the budgets stored in the ledger.",
)
@click.option(
    "--requests-per-minute",
    type=click.IntRange(min=1),
    help="Rate-limit each API key; the dashboard shows the live windows.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@click.pass_context
def serve(
    ctx: click.Context,
    db: str | None,
    host: str,
    port: int,
    keys_file: Path | None,
    allow_unauthenticated: bool,
    budgets_file: Path | None,
    requests_per_minute: int | None,
    log_level: str,
) -> None:
    """The usage API (/usage) and the dashboard (/) on uvicorn.

    \b
    usagewarden serve --db usage.db --keys keys.toml
    usagewarden serve --db usage.db --allow-unauthenticated    # 127.0.0.1 only
    """
    _require_server_packages()
    import uvicorn

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(log_level.upper())

    keys = load_keys(keys_file)
    if not keys and not allow_unauthenticated:
        raise CommandError(
            f"refusing to serve the ledger without API keys: give --keys FILE (or "
            f"${KEYS_FILE_ENV}, or ${KEYS_ENV}), or --allow-unauthenticated to serve it to "
            f"anyone on {LOOPBACK}"
        )
    if not keys and host != LOOPBACK:
        raise CommandError(
            f"--allow-unauthenticated serves only on {LOOPBACK}, not on {host}; give API keys "
            "to listen elsewhere"
        )
    configured = load_budgets(budgets_file) if budgets_file is not None else None
    store = open_ledger(resolve_db(ctx, db), asynchronous=True)
    # Budgets stored in the ledger (managed under /usage/budgets/managed) are
    # shown by GET /usage/budgets with those of the file.
    budgets = uw.BudgetEngine(configured or [], store)
    app = build_app(store, keys=keys, budgets=budgets, requests_per_minute=requests_per_minute)
    who = f"{len(keys)} API key(s)" if keys else "NO authentication"
    click.echo(f"usagewarden: serving on http://{host}:{port}/ with {who}", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
