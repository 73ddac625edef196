"""A dashboard of the ledger for any FastAPI app: spend and tokens over
time by model, top agents, consumers and models, budgets, live rate-limiter
windows and the events themselves.

``mount(app, store, auth=...)`` adds the usage API (unless the app already
has one) and the page. The page holds no secret and reads only through the
authenticated API: the person opening it enters an API key, which stays in
the browser tab. Charts use the plotly.js bundle of the ``plotly`` package
(``pip install 'usagewarden[dashboard]'``), served by the app itself: the
page loads nothing from any other origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

try:
    import fastapi
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "usagewarden.dashboard needs FastAPI; install it with: pip install 'usagewarden[dashboard]'"
    ) from exc

from ..budgets import BudgetEngine
from ..fastapi import Principal, usage_router
from ..limiter_protocol import Limiter
from ._api import dashboard_api_router, key_state
from ._assets import CONTENT_SECURITY_POLICY, assets_router, plotly_bundle

__all__ = ["CONTENT_SECURITY_POLICY", "key_state", "mount", "plotly_bundle"]


def _checked_path(name: str, value: str, *, root_allowed: bool) -> None:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{name}: must be a str starting with '/', got {value!r}")
    if value != "/" and value.endswith("/"):
        raise ValueError(f"{name}: must not end with '/', got {value!r}")
    if value == "/" and not root_allowed:
        raise ValueError(f"{name}: must not be '/'")


def mount(
    app: fastapi.FastAPI,
    store: Any,
    *,
    auth: Callable[..., Awaitable[Principal]] | Callable[..., Principal] | None,
    path: str = "/dashboard",
    api_prefix: str = "/usage",
    include_api: bool = True,
    budgets: BudgetEngine | None = None,
    limiter: Limiter | None = None,
    limiter_keys: Iterable[str] = (),
    allow_unauthenticated: bool = False,
    title: str = "usagewarden",
) -> None:
    """Serves the dashboard at ``path`` of ``app``.

    ``auth`` is the usage API's authentication (``api_key_auth({...})``);
    the page asks for a key and sends it with every request. With
    ``include_api`` (the default) the usage API for ``store`` is added at
    ``api_prefix``, with ``budgets`` behind ``GET {api_prefix}/budgets``;
    pass ``include_api=False`` when the app already includes
    ``usage_router`` there (and the same ``budgets``). ``limiter`` is shown
    live (``GET {api_prefix}/limiter``): the windows of ``limiter_keys``
    and of its ``per_key`` keys.
    """
    if not isinstance(app, fastapi.FastAPI):
        raise TypeError("app: must be a fastapi.FastAPI")
    _checked_path("path", path, root_allowed=True)
    _checked_path("api_prefix", api_prefix, root_allowed=False)
    if limiter is not None and not isinstance(limiter, Limiter):
        raise TypeError(
            "limiter: must be a usagewarden limiter (RateLimiter, RedisRateLimiter) or None"
        )
    if isinstance(limiter_keys, str):
        raise TypeError("limiter_keys: must be an iterable of keys, not one str")
    if auth is None and not allow_unauthenticated:
        raise ValueError(
            "auth: is required; pass the usage API's dependency, such as api_key_auth({...}), "
            "or auth=None with allow_unauthenticated=True"
        )
    if include_api:
        app.include_router(
            usage_router(
                store,
                auth=auth,
                prefix=api_prefix,
                budgets=budgets,
                allow_unauthenticated=allow_unauthenticated,
            )
        )
    app.include_router(
        dashboard_api_router(
            auth=auth,
            prefix=api_prefix,
            limiter=limiter,
            limiter_keys=limiter_keys,
            budgets=budgets,
        )
    )
    app.include_router(assets_router(path, api_prefix, title, authenticated=auth is not None))
