"""A FastAPI service with usagewarden: API keys, rate limits, request metering
and the usage API.

Run it with ``pip install 'usagewarden[fastapi]' uvicorn`` and
``python examples/fastapi_app.py``, then try::

    curl -H 'X-API-Key: demo-key-for-local-use-only' http://127.0.0.1:8000/search?q=usage
    curl -H 'X-API-Key: demo-key-for-local-use-only' http://127.0.0.1:8000/usage/summary
    curl -H 'X-API-Key: admin-key-for-local-use-only' \
         'http://127.0.0.1:8000/usage/export?format=ndjson'

Every response carries RateLimit-* headers; the 11th search within a minute
gets a 429 with Retry-After; every request is recorded in ./example-usage.db
and can be read back through /usage (the OpenAPI docs are at /docs).
"""

from __future__ import annotations

import os

import usagewarden as uw
from fastapi import Depends, FastAPI, Request
from usagewarden.fastapi import (
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    MeteringMiddleware,
    Principal,
    RateLimitMiddleware,
    api_key_auth,
    rate_limit,
    store_lifespan,
    usage_router,
)

API_KEY = os.environ.get("USAGEWARDEN_EXAMPLE_KEY", "demo-key-for-local-use-only")
ADMIN_KEY = os.environ.get("USAGEWARDEN_EXAMPLE_ADMIN_KEY", "admin-key-for-local-use-only")


def tenant(request: Request) -> str:
    """The rate-limit and metering key: the tenant header, else the client address."""
    return request.headers.get("x-tenant") or (request.client.host if request.client else "-")


def create_app(db_path: str = "example-usage.db") -> FastAPI:
    store = uw.AsyncSQLiteStore(db_path)
    # Every client: 120 requests a minute in all; searches: 10 a minute each.
    app_limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=120))
    search_limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=10, cost_per_minute=0.05))
    auth = api_key_auth(
        {
            API_KEY: Principal("demo", "default", frozenset({SCOPE_READ})),
            ADMIN_KEY: Principal(
                "ops", "default", frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN})
            ),
        }
    )

    app = FastAPI(title="usagewarden example", lifespan=store_lifespan(store))
    app.state.store = store

    @app.get(
        "/search", dependencies=[Depends(rate_limit(search_limiter, key_func=tenant, cost=0.004))]
    )
    async def search(q: str, principal: Principal = Depends(auth)) -> dict[str, object]:  # noqa: B008
        return {"query": q, "results": [], "for": principal.id}

    @app.get("/me")
    async def me(principal: Principal = Depends(auth)) -> dict[str, object]:  # noqa: B008
        return {"id": principal.id, "namespace": principal.namespace}

    # The ledger as an API: reads for the demo key, everything for the admin key,
    # each confined to its key's namespace.
    app.include_router(usage_router(store, auth=auth))

    app.add_middleware(RateLimitMiddleware, limiter=app_limiter, key_func=tenant)
    app.add_middleware(
        MeteringMiddleware, store=store, agent_id="example-api", consumer_func=tenant
    )
    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
