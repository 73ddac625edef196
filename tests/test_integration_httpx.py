"""usagewarden.integrations.httpx: the provider's rate-limit headers parsed
(table-driven), and the hooks on real SDK clients against the local fake
provider: every HTTP attempt counted, 429s pause the key, remaining quotas
tighten the limiter."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
httpx2 = pytest.importorskip("httpx2")  # what the anthropic SDK is built on
openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

import usagewarden as uw  # noqa: E402
from fake_provider import FakeProvider, provider_fixture  # noqa: E402,F401
from usagewarden.integrations.httpx import (  # noqa: E402
    ProviderLimits,
    ProviderSync,
    parse_duration,
    parse_rate_limit_headers,
)

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("17", 17.0),
        ("0.25", 0.25),
        ("2m", 120.0),
        ("", None),
        ("soon", None),
        ("5x", None),
        ("s5", None),
        ("-3", None),
        ("1m junk", None),
    ],
)
def test_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


CASES: list[tuple[str, dict[str, str], int, ProviderLimits]] = [
    (
        "openai",
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-tokens": "2s",
        },
        200,
        ProviderLimits(
            remaining_requests=499, reset_requests=0.12, remaining_tokens=29000, reset_tokens=2.0
        ),
    ),
    (
        "openai 429 with retry-after",
        {
            "retry-after": "2",
            "x-ratelimit-remaining-requests": "0",
            "X-RateLimit-Reset-Requests": "6m0s",
        },
        429,
        ProviderLimits(pause=2.0, remaining_requests=0, reset_requests=360.0),
    ),
    (
        "429 without retry-after pauses until the exhausted reset",
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.5s"},
        429,
        ProviderLimits(pause=1.5, remaining_tokens=0, reset_tokens=1.5),
    ),
    (
        "retry-after-ms wins",
        {"retry-after-ms": "250", "retry-after": "1"},
        429,
        ProviderLimits(pause=0.25),
    ),
    (
        "retry-after as an HTTP date",
        {"retry-after": "Thu, 01 Jan 2026 00:00:30 GMT"},
        503,
        ProviderLimits(pause=30.0),
    ),
    (
        "retry-after on a 200 is no pause",
        {"retry-after": "5"},
        200,
        ProviderLimits(),
    ),
    (
        "anthropic",
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:06Z",
            "anthropic-ratelimit-tokens-remaining": "79000",
            "anthropic-ratelimit-tokens-reset": "2026-01-01T00:01:00Z",
            "anthropic-ratelimit-input-tokens-remaining": "39000",
            "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:30+00:00",
            "anthropic-ratelimit-output-tokens-remaining": "7000",
            "anthropic-ratelimit-output-tokens-reset": "2026-01-01T00:00:10Z",
        },
        200,
        ProviderLimits(
            remaining_requests=49,
            reset_requests=6.0,
            remaining_tokens=79000,
            reset_tokens=60.0,
            remaining_input_tokens=39000,
            reset_input_tokens=30.0,
            remaining_output_tokens=7000,
            reset_output_tokens=10.0,
        ),
    ),
    (
        "anthropic reset in the past is now",
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2025-12-31T23:59:00Z",
            "retry-after": "3",
        },
        429,
        ProviderLimits(pause=3.0, remaining_requests=0, reset_requests=0.0),
    ),
    (
        "ietf draft 11",
        {
            "RateLimit-Policy": '"burst";q=100;w=60, "daily";q=1000;w=86400',
            "RateLimit": '"burst";r=40;t=30, "daily";r=10;t=3600',
        },
        200,
        ProviderLimits(remaining_requests=10, reset_requests=3600.0),
    ),
    (
        "ietf draft 11 token policy",
        {
            "RateLimit-Policy": '"tpm";q=90000;w=60;qu="tokens", "bytes";q=1;qu="content-bytes"',
            "RateLimit": '"tpm";r=500;t=12, "bytes";r=0;t=1',
        },
        200,
        ProviderLimits(remaining_tokens=500, reset_tokens=12.0),
    ),
    (
        "ietf older drafts",
        {"RateLimit-Limit": "100", "RateLimit-Remaining": "7", "RateLimit-Reset": "9"},
        200,
        ProviderLimits(remaining_requests=7, reset_requests=9.0),
    ),
    (
        "garbage is ignored",
        {"x-ratelimit-remaining-requests": "lots", "anthropic-ratelimit-tokens-remaining": "-1"},
        200,
        ProviderLimits(),
    ),
    ("nothing", {}, 200, ProviderLimits()),
]


@pytest.mark.parametrize(
    ("headers", "status", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rate_limit_headers(headers: dict[str, str], status: int, expected: ProviderLimits) -> None:
    assert parse_rate_limit_headers(headers, status, now=NOW) == expected
    assert parse_rate_limit_headers(httpx.Headers(headers), status, now=NOW) == expected
    assert parse_rate_limit_headers(httpx2.Headers(headers), status, now=NOW) == expected


def test_observed_leaves_out_what_was_not_said() -> None:
    seen = ProviderLimits(pause=2.0, remaining_tokens=5, reset_tokens=None)
    assert seen.observed() == {"remaining_tokens": 5}


def test_bad_arguments_are_named() -> None:
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=5))
    with pytest.raises(TypeError, match="limiter"):
        ProviderSync(object())
    with pytest.raises(ValueError, match="count"):
        ProviderSync(limiter, count="some")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        ProviderSync(limiter, key="model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="client"):
        ProviderSync(limiter).install(object())


# Against the fake provider, with the real SDKs.


@pytest.fixture(autouse=True)
def fresh(provider: FakeProvider) -> None:
    provider.reset()


def openai_client(provider: FakeProvider, sync: ProviderSync, **options: Any) -> Any:
    http = httpx.AsyncClient(event_hooks=sync.async_hooks())
    return openai.AsyncOpenAI(
        base_url=provider.base_url + "/v1", api_key="sk-test", http_client=http, **options
    )


HELLO = [{"role": "user", "content": "hello"}]


async def test_every_retry_of_the_sdk_counts_as_a_request(provider: FakeProvider) -> None:
    clock = uw.ManualClock(NOW)
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=100), clock=clock)
    sync = ProviderSync(limiter, count="all")
    client = openai_client(provider, sync, max_retries=2)
    provider.fail_next(3, retry_after="0")
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    served = provider.requests()
    assert len(served) == 3 == sync.attempts
    assert limiter.usage("gpt-4o").requests == len(served)


async def test_only_retries_count_when_a_warden_call_reserved_the_first_attempt(
    provider: FakeProvider,
) -> None:
    clock = uw.ManualClock(NOW)
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=100), clock=clock)
    warden = uw.Warden(limiter, clock=clock)
    sync = ProviderSync(limiter)
    client = openai_client(provider, sync, max_retries=2)
    provider.fail_next(2, retry_after="0")
    async with warden.call("gpt-4o", input_tokens=5, max_output_tokens=50) as call:
        answer = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert answer.usage is not None
        call.settle(
            input_tokens=answer.usage.prompt_tokens, output_tokens=answer.usage.completion_tokens
        )
    assert len(provider.requests()) == 3
    assert limiter.usage("gpt-4o").requests == 3  # one by the call, two retries by the hook


async def test_a_429_pauses_the_key_for_its_retry_after(provider: FakeProvider) -> None:
    clock = uw.ManualClock(NOW)
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=100), clock=clock)
    client = openai_client(provider, ProviderSync(limiter), max_retries=0)
    provider.fail_next(1, retry_after="2")
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    decision = limiter.try_acquire("gpt-4o")
    assert not decision.allowed
    assert decision.retry_after == pytest.approx(2.0)
    waiter = asyncio.create_task(limiter.acquire("gpt-4o"))
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.advance(2.0)
    await asyncio.wait_for(waiter, 5)
    assert limiter.try_acquire("other-model").allowed  # only the key that was told


async def test_the_providers_remaining_quota_tightens_the_limiter(provider: FakeProvider) -> None:
    clock = uw.ManualClock(NOW)
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=100), clock=clock)
    client = openai_client(provider, ProviderSync(limiter))
    # Another app of the same organisation used the quota: two requests left for 30 s.
    provider.rate_limit_headers = {
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "30s",
    }
    await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    allowed = [limiter.try_acquire("gpt-4o").allowed for _ in range(4)]
    assert allowed == [True, True, False, False]
    clock.advance(30.0)
    assert limiter.try_acquire("gpt-4o").allowed


async def test_anthropic_count_tokens_is_counted(provider: FakeProvider) -> None:
    clock = uw.ManualClock(NOW)
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=100), clock=clock)
    sync = ProviderSync(limiter)
    client = anthropic.AsyncAnthropic(
        base_url=provider.base_url,
        api_key="sk-test",
        http_client=httpx2.AsyncClient(event_hooks=sync.async_hooks()),
    )
    counted = await client.messages.count_tokens(model="claude-haiku-4-5", messages=HELLO)
    assert counted.input_tokens > 0
    assert limiter.usage("claude-haiku-4-5").requests == 1
    assert [s.path for s in provider.requests()] == ["/v1/messages/count_tokens"]


async def test_install_on_an_existing_sdk_client_once(provider: FakeProvider) -> None:
    clock = uw.ManualClock(NOW)
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=100), clock=clock)
    sync = ProviderSync(limiter, count="all")
    client = openai.AsyncOpenAI(base_url=provider.base_url + "/v1", api_key="sk-test")
    assert sync.install(sync.install(client)) is client
    await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert sync.attempts == 1
    assert limiter.usage("gpt-4o").requests == 1


def test_the_sync_client_hooks(provider: FakeProvider) -> None:
    clock = uw.ManualClock(NOW)
    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=100), clock=clock)
    sync = ProviderSync(limiter, count="all")
    client = openai.OpenAI(
        base_url=provider.base_url + "/v1",
        api_key="sk-test",
        max_retries=1,
        http_client=httpx.Client(event_hooks=sync.hooks()),
    )
    provider.fail_next(1, retry_after="0")
    client.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
    assert limiter.usage("gpt-4o").requests == 2 == len(provider.requests())
