"""Rate limiting any FastAPI route: the middleware and the dependency."""

from __future__ import annotations

import pytest

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import usagewarden as uw  # noqa: E402
from fastapi import Depends, FastAPI, Request  # noqa: E402
from usagewarden.fastapi import RateLimitMiddleware, rate_limit  # noqa: E402
from usagewarden.fastapi.rate_limit import RATE_LIMIT_HEADER_NAMES  # noqa: E402

LIMIT_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


def by_tenant(request: Request) -> str:
    return request.headers.get("x-tenant", "anonymous")


async def hit(app: FastAPI, path: str = "/", tenant: str = "t1") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers={"x-tenant": tenant})


def app_with_middleware(limiter: uw.RateLimiter, **kwargs: object) -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def index() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(RateLimitMiddleware, limiter=limiter, key_func=by_tenant, **kwargs)
    return app


async def test_middleware_admits_then_refuses_with_retry_after() -> None:
    clock = uw.ManualClock()
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=2), clock=clock)
    app = app_with_middleware(limiter)
    first = await hit(app)
    assert first.status_code == 200
    assert [first.headers[h] for h in LIMIT_HEADERS] == ["2", "1", "60"]
    assert first.headers["x-ratelimit-remaining"] == "1"
    clock.advance(15)
    second = await hit(app)
    assert second.headers["ratelimit-remaining"] == "0"
    third = await hit(app)
    assert third.status_code == 429
    # The first request leaves the window at t=60; now is t=15.
    assert third.headers["retry-after"] == "45"
    assert third.headers["ratelimit-reset"] == "45"
    assert third.json()["detail"] == {
        "code": "rate_limited",
        "message": "rate limit exceeded",
        "limit": "requests_per_minute",
        "retry_after": 45.0,
    }
    assert (await hit(app, tenant="t2")).status_code == 200, "keys are separate"
    clock.advance(45)
    assert (await hit(app)).status_code == 200
    assert limiter.usage("t1").requests == 2


async def test_cost_func_charges_what_each_request_costs() -> None:
    limiter = uw.RateLimiter(uw.RateLimits(cost_per_minute=1.0), clock=uw.ManualClock())

    def cost(request: Request) -> dict[str, float]:
        return {"requests": 1, "cost": 0.4}

    app = app_with_middleware(limiter, cost_func=cost)
    assert [(await hit(app)).status_code for _ in range(3)] == [200, 200, 429]
    assert limiter.usage("t1").cost == pytest.approx(0.8)


async def test_a_request_that_can_never_fit_says_so_and_still_carries_retry_after() -> None:
    """Every 429 carries Retry-After (here the limit's window); the body says
    that waiting will not help."""
    limiter = uw.RateLimiter(uw.RateLimits(cost_per_minute=1.0), clock=uw.ManualClock())
    app = app_with_middleware(limiter, cost_func=lambda request: {"cost": 2.0})
    response = await hit(app)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "60"
    assert "never fit" in response.json()["detail"]["message"]
    assert response.json()["detail"]["retry_after"] is None


async def test_the_dependency_limits_one_route_only() -> None:
    clock = uw.ManualClock()
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_second=1), clock=clock)
    app = FastAPI()

    @app.get("/limited", dependencies=[Depends(rate_limit(limiter, key_func=by_tenant))])
    async def limited() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/free")
    async def free() -> dict[str, str]:
        return {"ok": "yes"}

    ok = await hit(app, "/limited")
    assert ok.status_code == 200
    assert ok.headers["ratelimit-limit"] == "1"
    refused = await hit(app, "/limited")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["detail"]["code"] == "rate_limited"
    assert (await hit(app, "/free")).status_code == 200
    assert "ratelimit-limit" not in (await hit(app, "/free")).headers
    clock.advance(1)
    assert (await hit(app, "/limited")).status_code == 200


def test_bad_arguments_are_refused_when_the_app_is_built() -> None:
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_second=1))
    with pytest.raises(TypeError, match="limiter"):
        rate_limit("not a limiter")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key_func"):
        rate_limit(limiter, key_func="ip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input_tokens"):
        rate_limit(limiter, input_tokens=-1)
    with pytest.raises(TypeError, match="cost_func"):
        RateLimitMiddleware(FastAPI(), limiter, cost_func=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="headers: must be one of 'all', 'draft'"):
        RateLimitMiddleware(FastAPI(), limiter, headers="minimal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="headers"):
        rate_limit(limiter, headers="ALL")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="which: must be 'all', 'draft', 'legacy' or 'none'"):
        limiter.try_acquire("k").rate_limit_headers("x")  # type: ignore[arg-type]


LEGACY_NAMES = {
    f"{prefix}ratelimit-{field}"
    for prefix in ("", "x-")
    for field in ("limit", "remaining", "reset")
}
DRAFT_NAMES = {"ratelimit-policy", "ratelimit"}
RATE_LIMIT_NAMES = {
    "all": LEGACY_NAMES | DRAFT_NAMES,
    "draft": DRAFT_NAMES,
    "legacy": LEGACY_NAMES,
    "none": set(),
}


def rate_limit_names(response: httpx.Response) -> set[str]:
    return {name for name in response.headers if "ratelimit" in name}


@pytest.mark.parametrize("headers", ["all", "draft", "legacy", "none"])
async def test_the_middleware_sends_the_header_set_asked_for(headers: str) -> None:
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=1), clock=uw.ManualClock())
    app = app_with_middleware(limiter, headers=headers)
    admitted = await hit(app)
    assert admitted.status_code == 200
    assert rate_limit_names(admitted) == RATE_LIMIT_NAMES[headers]
    assert "retry-after" not in admitted.headers
    refused = await hit(app)
    assert refused.status_code == 429
    assert rate_limit_names(refused) == RATE_LIMIT_NAMES[headers]
    assert refused.headers["retry-after"] == "60", "every set sends Retry-After on a refusal"
    if headers == "draft":
        assert admitted.headers["ratelimit"] == '"requests_per_minute";r=0;t=60'
    assert RATE_LIMIT_NAMES["all"] == RATE_LIMIT_HEADER_NAMES, "the names merging looks for"


async def test_the_dependency_sends_the_header_set_asked_for() -> None:
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_second=1), clock=uw.ManualClock())
    app = FastAPI()
    dependency = rate_limit(limiter, key_func=by_tenant, headers="draft")

    @app.get("/", dependencies=[Depends(dependency)])
    async def index() -> dict[str, str]:
        return {"ok": "yes"}

    assert rate_limit_names(await hit(app)) == RATE_LIMIT_NAMES["draft"]
    refused = await hit(app)
    assert refused.status_code == 429
    assert rate_limit_names(refused) == RATE_LIMIT_NAMES["draft"]
    assert refused.headers["retry-after"] == "1"


@pytest.mark.parametrize("route_binds", [True, False])
async def test_draft_headers_alone_still_name_the_limit_that_binds(route_binds: bool) -> None:
    """With only the structured fields, the middleware and a route's
    dependency still send one set: that of the limit with less left."""
    clock = uw.ManualClock()
    wide = uw.RateLimiter(uw.RateLimits(requests_per_minute=100), clock=clock)
    narrow = uw.RateLimiter(uw.RateLimits(requests_per_second=2), clock=clock)
    route_limiter, app_limiter = (narrow, wide) if route_binds else (wide, narrow)
    app = FastAPI()
    dependency = rate_limit(route_limiter, key_func=by_tenant, headers="draft")

    @app.get("/", dependencies=[Depends(dependency)])
    async def index() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(
        RateLimitMiddleware, limiter=app_limiter, key_func=by_tenant, headers="draft"
    )
    response = await hit(app)
    assert response.status_code == 200
    assert response.headers.get_list("ratelimit") == ['"requests_per_second";r=1;t=1']
    assert response.headers.get_list("ratelimit-policy") == ['"requests_per_second";q=2;w=1']
