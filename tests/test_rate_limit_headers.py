"""``Decision.rate_limit_headers`` (built in Rust) against the headers'
definition written out in Python, over random limits and decisions."""

from __future__ import annotations

import math

import usagewarden as uw
from hypothesis import given, settings
from hypothesis import strategies as st

QUOTA_UNITS = {
    "requests": None,
    "input_tokens": "tokens",
    "output_tokens": "tokens",
    "total_tokens": "tokens",
    "cost": "usd-micros",
}


def sf_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quota(dimension: str, amount: float) -> int:
    return math.floor(amount * 1_000_000) if dimension == "cost" else math.floor(amount)


def remaining_of(decision: uw.Decision, dimension: str) -> float:
    left = decision.remaining
    return {
        "requests": left.requests,
        "input_tokens": left.input_tokens,
        "output_tokens": left.output_tokens,
        "total_tokens": min(left.input_tokens, left.output_tokens),
        "cost": left.cost,
    }[dimension]


def reference_headers(decision: uw.Decision) -> dict[str, str]:
    """The headers as the README and draft-11 define them."""
    headers: dict[str, str] = {}
    limit = decision.limit
    if limit is not None:
        reset = (
            limit.window
            if decision.allowed or decision.retry_after is None
            else decision.retry_after
        )
        remaining = remaining_of(decision, limit.dimension)
        values = {
            "Limit": f"{limit.amount:g}" if isinstance(limit.amount, float) else str(limit.amount),
            "Remaining": f"{remaining:g}" if isinstance(remaining, float) else str(remaining),
            "Reset": str(math.ceil(reset)),
        }
        for name, value in values.items():
            headers[f"RateLimit-{name}"] = value
            headers[f"X-RateLimit-{name}"] = value
        policy = f"{sf_string(limit.name)};q={quota(limit.dimension, limit.amount)}"
        policy += f";w={math.ceil(limit.window)}"
        unit = QUOTA_UNITS[limit.dimension]
        if unit is not None:
            policy += f";qu={sf_string(unit)}"
        headers["RateLimit-Policy"] = policy
        headers["RateLimit"] = (
            f"{sf_string(limit.name)};r={max(0, quota(limit.dimension, remaining))}"
            f";t={math.ceil(reset)}"
        )
    if not decision.allowed:
        wait = decision.retry_after
        if wait is None:
            wait = limit.window if limit is not None else 1.0
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return headers


DIMENSIONS = ["requests", "input_tokens", "output_tokens", "total_tokens", "cost"]
UNITS = ["second", "minute", "hour", "day"]


@st.composite
def limits(draw: st.DrawFn) -> dict[str, float]:
    chosen = draw(
        st.lists(
            st.tuples(st.sampled_from(DIMENSIONS), st.sampled_from(UNITS)),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    out: dict[str, float] = {}
    for dimension, unit in chosen:
        if dimension == "cost":
            out[f"{dimension}_per_{unit}"] = draw(st.floats(0.000_001, 1e7, allow_nan=False))
        else:
            out[f"{dimension}_per_{unit}"] = draw(st.integers(1, 10**12))
    return out


@settings(max_examples=300, deadline=None)
@given(
    limits(),
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 10**12),
            st.integers(0, 10**12),
            st.floats(0, 1e7, allow_nan=False),
            st.floats(0, 120),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_the_headers_match_their_definition(
    configured: dict[str, float], calls: list[tuple[int, int, int, float, float]]
) -> None:
    clock = uw.ManualClock(1_000.0)
    limiter = uw.RateLimiter(uw.RateLimits(**configured), clock=clock)
    for requests, tokens_in, tokens_out, cost, wait in calls:
        decision = limiter.try_acquire(
            "k", requests=requests, input_tokens=tokens_in, output_tokens=tokens_out, cost=cost
        )
        expected = reference_headers(decision)
        assert decision.rate_limit_headers() == expected
        assert list(decision.rate_limit_headers()) == list(expected), "in the same order"
        assert decision.asgi_rate_limit_headers() == [
            (name.lower().encode(), value.encode()) for name, value in expected.items()
        ]
        clock.advance(wait)


def test_no_limits_no_headers_and_a_refusal_always_says_when() -> None:
    assert uw.RateLimiter(uw.RateLimits()).try_acquire("k").rate_limit_headers() == {}
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=1), clock=uw.ManualClock())
    assert limiter.try_acquire("k").allowed
    refused = limiter.try_acquire("k")
    assert refused.rate_limit_headers()["Retry-After"] == "60"
    never = limiter.try_acquire("other", requests=5)
    assert never.retry_after is None
    assert never.rate_limit_headers()["Retry-After"] == "60", "the window, for one that never fits"
