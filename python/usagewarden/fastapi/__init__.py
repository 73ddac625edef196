"""FastAPI integration: the usage API router, API-key authentication, rate
limiting for any route, request metering and a lifespan that closes the store.

Install with ``pip install 'usagewarden[fastapi]'``. ``import usagewarden``
never imports FastAPI; this package does.

Error responses have one shape, ``{"detail": {"code": ..., "message": ...}}``
(plus fields such as ``errors`` or ``retry_after`` where they apply), whether
they come from the router, a dependency or a middleware.
"""

try:
    import fastapi  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "usagewarden.fastapi needs FastAPI; install it with: pip install 'usagewarden[fastapi]'"
    ) from exc

from .auth import (
    SCOPE_ADMIN,
    SCOPE_ALL_NAMESPACES,
    SCOPE_READ,
    SCOPE_WRITE,
    Principal,
    api_key_auth,
)
from .lifespan import store_lifespan
from .metering import MeteringMiddleware
from .rate_limit import (
    HeaderSet,
    RateLimitMiddleware,
    client_ip,
    rate_limit,
    rate_limit_headers,
)
from .router import usage_router

__all__ = [
    "SCOPE_ADMIN",
    "SCOPE_ALL_NAMESPACES",
    "SCOPE_READ",
    "SCOPE_WRITE",
    "HeaderSet",
    "MeteringMiddleware",
    "Principal",
    "RateLimitMiddleware",
    "api_key_auth",
    "client_ip",
    "rate_limit",
    "rate_limit_headers",
    "store_lifespan",
    "usage_router",
]
