"""Every adapter path with the real provider SDKs (openai, anthropic,
langchain-openai, pydantic-ai's OpenAIChatModel / AnthropicModel, the Agents
SDK's OpenAIChatCompletionsModel) against the local fake provider: every
ledger row equals what the server reported, or, where the server reported
nothing (a stream without a usage chunk), is the adapter's estimate, marked.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openai")
pytest.importorskip("anthropic")
pytest.importorskip("pydantic_ai")
pytest.importorskip("langchain_openai")
pytest.importorskip("agents")

import usagewarden as uw  # noqa: E402
from agent_helpers import SpyWarden, assert_replay  # noqa: E402
from fake_provider import FakeProvider, Served, provider_fixture  # noqa: E402,F401

warnings.filterwarnings("ignore", category=DeprecationWarning, module="anthropic")

T0 = 1_767_225_600.0
GPT = "gpt-4o"
CLAUDE = "claude-haiku-4-5"
PRICES = {
    GPT: {"input": 2.0, "output": 8.0, "cache_read": 0.5},
    CLAUDE: {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_write": 1.25},
}


@pytest.fixture(autouse=True)
def fresh(provider: FakeProvider) -> None:
    provider.reset()
    provider.cached_tokens = 6
    provider.reasoning_tokens = 2


@pytest.fixture
def clock() -> uw.ManualClock:
    return uw.ManualClock(T0)


@pytest.fixture
def pricing() -> uw.Pricing:
    return uw.Pricing.from_dict(PRICES)


@pytest.fixture
def store(tmp_path: Path, pricing: uw.Pricing) -> Iterator[uw.SQLiteStore]:
    with uw.SQLiteStore(str(tmp_path / "usage.db"), pricing=pricing) as s:
        yield s


def warden_for(store: uw.SQLiteStore, clock: uw.ManualClock, **limits: Any) -> SpyWarden:
    limits = limits or {"requests_per_minute": 1000, "total_tokens_per_minute": 10_000_000}
    limiter = uw.RateLimiter(uw.RateLimits(**limits), clock=clock)
    return SpyWarden(limiter, store, agent_id="test-agent", clock=clock)


def rows(store: uw.SQLiteStore) -> list[uw.UsageEvent]:
    store.flush()
    return store.query()


def counts(event: uw.UsageEvent) -> tuple[Any, ...]:
    return (
        event.model,
        event.tokens_in,
        event.tokens_out,
        event.cache_read_tokens,
        event.cache_write_tokens,
    )


def reported(served: Served) -> tuple[Any, ...]:
    assert served.usage is not None
    u = served.usage
    return (served.model, u.input, u.output, u.cache_read, u.cache_write)


def assert_ledger_matches(store: uw.SQLiteStore, provider: FakeProvider) -> list[uw.UsageEvent]:
    """One ledger row per model answer; those the server reported usage for
    carry exactly that usage, the others are marked estimated."""
    events = rows(store)
    served = provider.completions()
    assert len(events) == len(served) > 0
    measured = sorted(reported(s) for s in served if s.usage is not None)
    exact = sorted(counts(e) for e in events if not (e.metadata or {}).get("estimated"))
    assert exact == measured
    estimated = [e for e in events if (e.metadata or {}).get("estimated")]
    assert len(estimated) == sum(s.usage is None for s in served)
    for event in estimated:
        assert event.tokens_in > 0 and event.tokens_out > 0
    return events


def assert_priced_once(events: list[uw.UsageEvent], pricing: uw.Pricing) -> None:
    """The cost is the configured pricing's, for the usage recorded."""
    for event in events:
        assert event.model is not None
        assert event.cost == pytest.approx(pricing.cost(event.model, event))


# pydantic-ai: OpenAIChatModel and AnthropicModel, through the model wrapper and the capability.


def pydantic_agent(path: str, model: Any, warden: uw.Warden, **kwargs: Any) -> Any:
    from pydantic_ai import Agent
    from usagewarden.integrations.pydantic_ai import RateLimitedModel, UsageWardenCapability

    if path == "model":
        return Agent(RateLimitedModel(model, warden), **kwargs)
    return Agent(model, capabilities=[UsageWardenCapability(warden)], **kwargs)


def openai_chat_model(provider: FakeProvider) -> Any:
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    return OpenAIChatModel(
        GPT, provider=OpenAIProvider(base_url=provider.base_url + "/v1", api_key="sk-test")
    )


def anthropic_model(provider: FakeProvider) -> Any:
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    return AnthropicModel(
        CLAUDE, provider=AnthropicProvider(base_url=provider.base_url, api_key="sk-test")
    )


MODELS = {"openai": openai_chat_model, "anthropic": anthropic_model}


@pytest.mark.parametrize("path", ["model", "capability"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_pydantic_ai_run_stream_and_tools(
    path: str,
    kind: str,
    provider: FakeProvider,
    store: uw.SQLiteStore,
    clock: uw.ManualClock,
    pricing: uw.Pricing,
) -> None:
    provider.cache_write_tokens = 4
    warden = warden_for(store, clock)
    agent = pydantic_agent(path, MODELS[kind](provider), warden, name="helper")

    @agent.tool_plain
    def weather(city: str) -> str:
        return f"sunny in {city}"

    result = await agent.run("What is the weather?")  # a tool call, then the answer
    assert "forty-two" in result.output
    plain = pydantic_agent(path, MODELS[kind](provider), warden)
    async with plain.run_stream("Say something") as stream:
        assert "forty-two" in await stream.get_output()
    events = assert_ledger_matches(store, provider)
    assert len(events) == 3
    assert sum(s.tool_call for s in provider.completions()) == 1
    assert_priced_once(events, pricing)
    assert {e.agent_id for e in events} == {"helper", "plain"}  # pydantic-ai names agents
    # pydantic-ai computes a price of its own; the ledger's is the configured table's,
    # filled by the store and so re-priceable.
    cheaper = uw.Pricing.from_dict({m: {"input": 0.01, "output": 0.01} for m in PRICES})
    assert store.reprice(cheaper) == len(events)
    for event in rows(store):
        assert event.cost == pytest.approx(cheaper.cost(event.model or "", event))


async def test_pydantic_ai_anthropic_count_tokens_is_under_the_limits(
    provider: FakeProvider, store: uw.SQLiteStore, clock: uw.ManualClock
) -> None:
    warden = warden_for(store, clock)
    agent = pydantic_agent("model", anthropic_model(provider), warden)
    await agent.run("hello")
    await agent.run("hello again")
    counted = provider.requests("/v1/messages/count_tokens")
    answered = provider.requests("/v1/messages")
    assert len(counted) == len(answered) == 2  # pydantic-ai counts before each request
    assert warden.limiter is not None
    assert warden.limiter.usage(CLAUDE).requests == len(provider.requests()) == 4
    assert_ledger_matches(store, provider)


@pytest.mark.parametrize("path", ["model", "capability"])
async def test_pydantic_ai_concurrent_runs(
    path: str, provider: FakeProvider, store: uw.SQLiteStore, clock: uw.ManualClock
) -> None:
    warden = warden_for(store, clock)
    agent = pydantic_agent(path, openai_chat_model(provider), warden)
    meters = [warden.run(consumer_id=f"customer-{i}") for i in range(8)]

    async def one(meter: uw.RunMeter, i: int) -> None:
        with meter:
            await agent.run("question " + "x" * i)

    await asyncio.gather(*(one(m, i) for i, m in enumerate(meters)))
    events = assert_ledger_matches(store, provider)
    by_consumer = {e.consumer_id: e for e in events}
    for meter in meters:
        event = by_consumer[meter.consumer_id]
        assert (event.metadata or {})["run_id"] == meter.run_id
        assert meter.usage.total_tokens == event.total_tokens


async def test_pydantic_ai_stream_abandoned_keeps_its_input(
    provider: FakeProvider, store: uw.SQLiteStore, clock: uw.ManualClock
) -> None:
    warden = warden_for(store, clock)
    agent = pydantic_agent("model", openai_chat_model(provider), warden)
    async with agent.run_stream("Say something long") as stream:
        async for _ in stream.stream_text(delta=True, debounce_by=None):
            break
    [event] = rows(store)
    assert event.tokens_in > 0
    assert (event.metadata or {}).get("estimated") is True
    assert warden.limiter is not None
    assert warden.limiter.usage(GPT).input_tokens == event.tokens_in


# LangChain: ChatOpenAI with the rate limiter and the callback handler, and with the middleware.


def chat_openai(provider: FakeProvider, **kwargs: Any) -> Any:
    import httpx2
    from langchain_openai import ChatOpenAI

    # Clients of its own: langchain-openai caches one per base_url, whose pooled
    # connections belong to the event loop of the test that made it first.
    return ChatOpenAI(
        model=GPT,
        base_url=provider.base_url + "/v1",
        api_key="sk-test",  # type: ignore[arg-type]
        http_client=httpx2.Client(),
        http_async_client=httpx2.AsyncClient(),
        **kwargs,
    )


async def test_langchain_rate_limiter_and_handler_invoke_and_stream(
    provider: FakeProvider, store: uw.SQLiteStore, clock: uw.ManualClock
) -> None:
    from usagewarden.integrations.langchain import (
        UsageWardenCallbackHandler,
        UsageWardenRateLimiter,
    )

    warden = warden_for(store, clock)
    rate_limiter = UsageWardenRateLimiter(warden, key=GPT, tokens_per_request=500)
    handler = UsageWardenCallbackHandler(warden, rate_limiter=rate_limiter)
    model = chat_openai(provider, rate_limiter=rate_limiter, callbacks=[handler])
    await model.ainvoke("hello")
    async for _ in model.astream("stream to me"):  # custom base_url: no usage chunk
        pass
    with_usage = chat_openai(
        provider, rate_limiter=rate_limiter, callbacks=[handler], stream_usage=True
    )
    async for _ in with_usage.astream("stream with usage"):
        pass
    await asyncio.gather(*(model.ainvoke(f"concurrent {i}") for i in range(5)))
    events = assert_ledger_matches(store, provider)
    assert sum(bool((e.metadata or {}).get("estimated")) for e in events) == 1
    # The limiter counts what the provider reported, not the fixed 500 per request.
    assert warden.limiter is not None
    used = warden.limiter.usage(GPT)
    assert used.requests == len(events)
    assert used.total_tokens == sum(e.total_tokens for e in events)


async def test_langchain_rate_limiter_timeout_is_not_a_call(
    provider: FakeProvider, store: uw.SQLiteStore, clock: uw.ManualClock
) -> None:
    from usagewarden.integrations.langchain import (
        UsageWardenCallbackHandler,
        UsageWardenRateLimiter,
    )

    warden = warden_for(store, clock, requests_per_minute=3)
    rate_limiter = UsageWardenRateLimiter(warden, key=GPT, timeout=0)
    handler = UsageWardenCallbackHandler(warden, rate_limiter=rate_limiter)
    model = chat_openai(provider, rate_limiter=rate_limiter, callbacks=[handler])
    outcomes = await asyncio.gather(
        *(model.ainvoke(f"q{i}") for i in range(10)), return_exceptions=True
    )
    assert sum(isinstance(o, uw.RateLimitExceeded) for o in outcomes) == 7
    assert len(provider.completions()) == 3
    events = assert_ledger_matches(store, provider)
    assert len(events) == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_langchain_middleware_agent_with_tools(
    stream: bool, provider: FakeProvider, store: uw.SQLiteStore, clock: uw.ManualClock
) -> None:
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from usagewarden.integrations.langchain import UsageWardenMiddleware

    @tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    warden = warden_for(store, clock)
    agent = create_agent(
        chat_openai(provider),
        [weather],
        name="weather-agent",
        middleware=[UsageWardenMiddleware(warden, max_output_tokens=256)],
    )
    question = {"messages": [{"role": "user", "content": "weather?"}]}
    if stream:
        async for _ in agent.astream(question, stream_mode="messages"):
            pass
    else:
        await agent.ainvoke(question)
    events = assert_ledger_matches(store, provider)
    assert len(events) == 2  # the tool call, then the answer
    # Streams report their usage: the middleware turned ChatOpenAI's stream_usage on.
    assert not any((e.metadata or {}).get("estimated") for e in events)
    assert {e.agent_id for e in events} == {"weather-agent"}
    assert warden.limiter is not None
    assert warden.limiter.usage(GPT).total_tokens == sum(e.total_tokens for e in events)


# OpenAI Agents SDK: OpenAIChatCompletionsModel with the run hooks.


def agents_model(provider: FakeProvider) -> Any:
    from agents import OpenAIChatCompletionsModel
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=provider.base_url + "/v1", api_key="sk-test")
    return OpenAIChatCompletionsModel(model=GPT, openai_client=client)


@pytest.mark.parametrize("include_usage", [None, True])
async def test_agents_sdk_run_streamed_and_tools(
    include_usage: bool | None,
    provider: FakeProvider,
    store: uw.SQLiteStore,
    clock: uw.ManualClock,
    pricing: uw.Pricing,
) -> None:
    from agents import Agent, ModelSettings, Runner, function_tool, set_tracing_disabled
    from usagewarden.integrations.openai_agents import UsageWardenHooks

    set_tracing_disabled(True)

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    warden = warden_for(store, clock)
    hooks = UsageWardenHooks(warden, max_output_tokens=256)
    agent = Agent(
        name="planner",
        model=agents_model(provider),
        tools=[weather],
        model_settings=ModelSettings(include_usage=include_usage),
    )
    async with hooks.guard():
        result = await Runner.run(agent, "weather?", hooks=hooks)
        assert "forty-two" in result.final_output
        streamed = Runner.run_streamed(agent, "stream it", hooks=hooks)
        async for _ in streamed.stream_events():
            pass
    events = assert_ledger_matches(store, provider)
    assert len(events) == 4
    estimated = [e for e in events if (e.metadata or {}).get("estimated")]
    # Without include_usage the SDK asks a non-OpenAI server for no stream usage.
    assert len(estimated) == (0 if include_usage else 2)
    assert {e.agent_id for e in events} == {"planner"}
    assert_priced_once(events, pricing)


async def test_agents_sdk_concurrent_runs(
    provider: FakeProvider, store: uw.SQLiteStore, clock: uw.ManualClock
) -> None:
    from agents import Agent, Runner, set_tracing_disabled
    from usagewarden.integrations.openai_agents import UsageWardenHooks

    set_tracing_disabled(True)
    warden = warden_for(store, clock, requests_per_minute=4, total_tokens_per_minute=100_000)
    hooks = UsageWardenHooks(warden, max_output_tokens=64)
    agent = Agent(name="solo", model=agents_model(provider))
    tasks = [asyncio.create_task(Runner.run(agent, f"q{i}", hooks=hooks)) for i in range(6)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not all(t.done() for t in tasks):
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
        if len(provider.completions()) == 4 and not all(t.done() for t in tasks):
            clock.advance(60.0)  # the limit binds: the last two wait for the window
    for task in tasks:
        task.result()
    assert_ledger_matches(store, provider)
    assert len(warden.admitted()) == 6
    assert_replay(warden.admitted(), requests=4, total_tokens=100_000)


# The Warden never blocks the loop on a committing store.


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_recording_with_commit_durability_yields_the_loop(
    kind: str, tmp_path: Path, clock: uw.ManualClock
) -> None:
    path = str(tmp_path / "commit.db")
    store: Any = (
        uw.SQLiteStore(path, durability="commit")
        if kind == "sync"
        else uw.AsyncSQLiteStore(path, durability="commit")
    )
    warden = uw.Warden(None, store, clock=clock)
    loop = asyncio.get_running_loop()
    ticks = 0
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        last = loop.time()
        while not stop.is_set():
            await asyncio.sleep(0)
            now = loop.time()
            gaps.append(now - last)
            last = now
            ticks += 1

    running = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    calls = 20
    for i in range(calls):
        before = ticks
        async with warden.call(GPT, input_tokens=10, max_output_tokens=10) as call:
            call.settle(input_tokens=i, output_tokens=1)
        # The commit waited on the disk while the loop ran the ticker.
        assert ticks > before
    stop.set()
    await running
    sync_view = store if kind == "sync" else store.blocking()
    assert len(sync_view.query()) == calls  # each was committed before the call returned
    gaps.sort()
    print(
        f"loop lag while committing ({kind}): p50 {gaps[len(gaps) // 2] * 1e3:.3f} ms, "
        f"max {gaps[-1] * 1e3:.3f} ms over {len(gaps)} iterations"
    )
    store.close()


def test_langchain_sync_invoke(
    provider: FakeProvider, store: uw.SQLiteStore, clock: uw.ManualClock
) -> None:
    from usagewarden.integrations.langchain import UsageWardenCallbackHandler

    warden = warden_for(store, clock)
    model = chat_openai(provider, callbacks=[UsageWardenCallbackHandler(warden)])
    model.invoke("hello")
    for _ in model.stream("stream"):
        pass
    assert_ledger_matches(store, provider)


async def test_a_stream_without_usage_keeps_its_estimate_and_warns_once(
    provider: FakeProvider,
    store: uw.SQLiteStore,
    clock: uw.ManualClock,
    pricing: uw.Pricing,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from usagewarden.integrations import _shared

    _shared._warned.discard("pydantic-ai")
    provider.stream_usage = False  # a server that ignores stream_options.include_usage
    warden = warden_for(store, clock)
    agent = pydantic_agent("model", openai_chat_model(provider), warden)
    with caplog.at_level("WARNING", logger="usagewarden"):
        for _ in range(2):
            async with agent.run_stream("Say something") as stream:
                await stream.get_output()
    events = assert_ledger_matches(store, provider)
    assert all((e.metadata or {}).get("estimated") for e in events)
    assert_priced_once(events, pricing)  # priced from the estimate, not 0.0
    assert all(e.cost is not None and e.cost > 0 for e in events)
    hints = [r for r in caplog.records if "reported no token usage" in r.getMessage()]
    assert len(hints) == 1
    assert warden.limiter is not None
    assert warden.limiter.usage(GPT).total_tokens == sum(e.total_tokens for e in events) > 0
