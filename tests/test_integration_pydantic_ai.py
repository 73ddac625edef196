"""usagewarden.integrations.pydantic_ai: real pydantic-ai agents on offline
models (TestModel, FunctionModel) wait for the warden's limits before each
model request, and every request leaves exactly one attributed ledger event.

Time is a ManualClock the tests advance; no test sleeps to make time pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

import usagewarden as uw  # noqa: E402
from conftest import GRACE, eventually, is_queued  # noqa: E402
from pydantic_ai import Agent, RunContext  # noqa: E402
from pydantic_ai.capabilities import AbstractCapability  # noqa: E402
from pydantic_ai.exceptions import SkipModelRequest, UserError  # noqa: E402
from pydantic_ai.messages import (  # noqa: E402
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
)
from pydantic_ai.models import (  # noqa: E402
    Model,
    ModelRequestContext,
    ModelRequestParameters,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel  # noqa: E402
from pydantic_ai.models.test import TestModel  # noqa: E402
from pydantic_ai.models.wrapper import WrapperModel  # noqa: E402
from pydantic_ai.settings import ModelSettings  # noqa: E402
from pydantic_ai.tools import ToolDefinition  # noqa: E402
from pydantic_ai.usage import RequestUsage, RunUsage  # noqa: E402
from usagewarden.integrations.pydantic_ai import (  # noqa: E402
    CHARS_PER_TOKEN,
    DEFAULT_MAX_TOKENS,
    RateLimitedModel,
    UsageWardenCapability,
    estimate_input_tokens,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PATHS = ("model", "capability")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clock() -> uw.ManualClock:
    return uw.ManualClock(T0)


@pytest.fixture
async def store(tmp_path: Path, clock: uw.ManualClock) -> AsyncIterator[uw.AsyncSQLiteStore]:
    s = uw.AsyncSQLiteStore(tmp_path / "usage.db", durability="commit", clock=clock)
    yield s
    await s.close()


def make_warden(clock: uw.ManualClock, store: uw.AsyncSQLiteStore, **limits: Any) -> uw.Warden:
    limits = limits or {"requests_per_minute": 1_000, "total_tokens_per_minute": 1_000_000}
    limiter = uw.RateLimiter(uw.RateLimits(**limits), clock=clock)
    return uw.Warden(limiter, store, agent_id="bot", clock=clock)


def limiter_of(warden: uw.Warden) -> uw.RateLimiter:
    assert warden.limiter is not None
    return warden.limiter


def make_agent(path: str, model: Model, warden: uw.Warden, **options: Any) -> Agent[Any, str]:
    """The same agent, limited through the model wrapper or the capability."""
    limit = {k: options.pop(k) for k in ("consumer_id", "timeout", "count_tokens") if k in options}
    if path == "model":
        return Agent(RateLimitedModel(model, warden, **limit), **options)
    return Agent(model, capabilities=[UsageWardenCapability(warden, **limit)], **options)


@dataclass
class Tenant:
    """Deps as an application has them: attribution rides along as attributes."""

    consumer_id: str
    task_id: str | None = None


class ProviderDown(Exception):
    """What a provider SDK raises when the call fails."""


def text_model(name: str, *, calls: list[Any], probe: Callable[[], Any]) -> FunctionModel:
    """A FunctionModel that notes ``probe()`` (the limiter's state) each time
    it is actually invoked, then answers with a fixed, reported usage."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(probe())
        return ModelResponse(
            parts=[TextPart("ok")], usage=RequestUsage(input_tokens=11, output_tokens=3)
        )

    return FunctionModel(answer, model_name=name)


class Snapshotting(WrapperModel):
    """Notes the limiter's usage of the current window whenever a request
    reaches the real model, i.e. after the limiter admitted it."""

    def __init__(self, wrapped: Model, limiter: uw.RateLimiter, seen: list[uw.Usage]) -> None:
        super().__init__(wrapped)
        self.limiter = limiter
        self.seen = seen

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        self.seen.append(self.limiter.usage(self.wrapped.model_name))
        for _ in range(3):  # in flight for a while, as over a network
            await asyncio.sleep(0)
        return await super().request(messages, model_settings, model_request_parameters)


async def drive(
    clock: uw.ManualClock,
    limiter: uw.RateLimiter,
    key: str,
    task: asyncio.Future[Any],
    progress: Callable[[], int],
    step: float = 5.0,
) -> int:
    """Advance the clock by ``step`` each time every unfinished run is stuck
    waiting on the limiter (nothing moved for a few loop turns and a waiter
    is queued). Returns how many times it had to. Real time only lets the
    loop and the limiter's wake-ups run; it never makes a window pass."""
    advances = 0
    deadline = time.monotonic() + 60
    while not task.done():
        last, quiet = -1, 0
        while quiet < 10 and not task.done():
            await asyncio.sleep(0.001)
            now = progress()
            quiet = quiet + 1 if now == last and is_queued(limiter, key) else 0
            last = now
            assert time.monotonic() < deadline, "the runs stopped making progress"
        if not task.done():
            clock.advance(step)
            advances += 1
    return advances


def assert_windows_within(events: list[uw.UsageEvent], rpm: int, tpm: int) -> None:
    """Replays the ledger: in every 60 s window (t - 60, t] ending at an
    event, the requests and tokens admitted stay within the limits."""
    stamps = sorted((e.timestamp.timestamp(), e.total_tokens) for e in events)
    for end, _ in stamps:
        window = [tokens for t, tokens in stamps if end - 60 < t <= end]
        assert len(window) <= rpm, (end - T0, len(window))
        assert sum(window) <= tpm, (end - T0, sum(window))


def responses(result: Any) -> list[ModelResponse]:
    return [m for m in result.all_messages() if isinstance(m, ModelResponse)]


# (a) + (f): many concurrent runs share one warden


@pytest.mark.parametrize("path", PATHS)
async def test_concurrent_runs_stay_within_every_window_and_are_each_recorded_once(
    path: str, clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    # A request reserves ~220-420 tokens (estimate + max_tokens) and settles to
    # ~60: the token limit caps how many are in flight, the request limit how
    # many start per minute.
    rpm, tpm = 6, 1_000
    warden = make_warden(clock, store, requests_per_minute=rpm, total_tokens_per_minute=tpm)
    limiter = limiter_of(warden)
    seen: list[uw.Usage] = []
    agents = []
    for name in ("researcher", "writer"):
        model = Snapshotting(TestModel(), limiter, seen)
        agent = make_agent(path, model, warden, name=name, model_settings={"max_tokens": 100})

        @agent.tool_plain
        def lookup(topic: str) -> str:
            """Looks a topic up (so each run makes two model requests)."""
            return f"notes on {topic}"

        agents.append(agent)

    finished: list[int] = []

    async def one_run(i: int) -> Any:
        result = await agents[i % 2].run(f"question {i}", deps=Tenant(f"user-{i}"))
        finished.append(i)
        return result

    runs = asyncio.ensure_future(asyncio.gather(*(one_run(i) for i in range(20))))
    advances = await drive(clock, limiter, "test", runs, lambda: len(seen) + len(finished))
    results = await runs

    events = await store.query()
    assert advances > 0 and clock.now() - T0 > 120  # the limits made runs wait
    assert any((e.metadata or {}).get("waited_ms", 0) > 0 for e in events)
    # The limiter never held more than the limits, reservations in flight included.
    assert len(seen) == 40
    assert all(u.requests <= rpm and u.total_tokens <= tpm for u in seen)
    assert_windows_within(events, rpm, tpm)
    # Every request once, attributed to its own run.
    assert len(events) == sum(len(responses(r)) for r in results) == 40
    for i, result in enumerate(results):
        mine = [e for e in events if (e.metadata or {}).get("run_id") == result.run_id]
        assert {(e.agent_id, e.consumer_id, e.model) for e in mine} == {
            (("researcher", "writer")[i % 2], f"user-{i}", "test")
        }
        reported = sorted((r.usage.input_tokens, r.usage.output_tokens) for r in responses(result))
        assert sorted((e.tokens_in, e.tokens_out) for e in mine) == reported
        assert len(mine) == 2


# (b): capacity is reserved before the model runs; a call that cannot fit waits


@pytest.mark.parametrize("path", PATHS)
async def test_the_estimate_is_reserved_before_the_model_function_runs(
    path: str, clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    warden = make_warden(clock, store)
    limiter = limiter_of(warden)
    calls: list[uw.Usage] = []
    model = text_model("fn", calls=calls, probe=lambda: limiter.usage("fn"))
    agent = make_agent(path, model, warden, model_settings={"max_tokens": 200})

    result = await agent.run("hello")

    [inside] = calls
    assert inside.requests == 1 and inside.output_tokens == 200  # max_tokens, reserved
    # The prompt's estimate (FunctionModel cannot count tokens); the request as
    # kept in the history is stamped by the run afterwards, hence approx.
    sent = result.all_messages()[:1]
    assert inside.input_tokens == pytest.approx(estimate_input_tokens(sent), rel=0.1)
    after = limiter.usage("fn")
    assert (after.requests, after.input_tokens, after.output_tokens) == (1, 11, 3)


@pytest.mark.parametrize("path", PATHS)
async def test_a_request_that_cannot_fit_waits_before_the_model_function_runs(
    path: str, clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=1)
    limiter = limiter_of(warden)
    calls: list[float] = []
    agent = make_agent(path, text_model("fn", calls=calls, probe=clock.now), warden)

    await agent.run("first")
    second = asyncio.ensure_future(agent.run("second"))
    await eventually(lambda: is_queued(limiter, "fn"))
    assert calls == [T0] and not second.done()  # waiting, and the model not yet called
    assert len(await store.query()) == 1

    clock.advance(60)
    await asyncio.wait_for(second, GRACE)
    assert calls == [T0, T0 + 60]
    first_event, second_event = await store.query()
    assert (second_event.metadata or {})["waited_ms"] == 60_000
    assert "waited_ms" not in (first_event.metadata or {})


@pytest.mark.parametrize("path", PATHS)
async def test_a_request_that_times_out_waiting_never_reaches_the_model(
    path: str, clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=1)
    calls: list[float] = []
    model = text_model("fn", calls=calls, probe=clock.now)
    await make_agent(path, model, warden).run("fills the window")

    impatient = make_agent(path, model, warden, timeout=0)
    with pytest.raises(uw.RateLimitExceeded):
        await impatient.run("does not fit")
    assert calls == [T0]
    assert len(await store.query()) == 1  # a timed-out wait records nothing
    assert limiter_of(warden).usage("fn").requests == 1


class CountingModel(FunctionModel):
    """A FunctionModel whose provider can count a request's tokens."""

    def __init__(self, counted: int | Exception, *, calls: list[Any], probe: Any) -> None:
        inner = text_model("counting", calls=calls, probe=probe)
        assert inner.function is not None
        super().__init__(inner.function, model_name="counting")
        self.counted = counted

    async def count_tokens(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> RequestUsage:
        if isinstance(self.counted, Exception):
            raise self.counted
        return RequestUsage(input_tokens=self.counted)


@pytest.mark.parametrize("path", PATHS)
async def test_the_models_own_token_count_is_reserved_when_it_has_one(
    path: str, clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    warden = make_warden(clock, store)
    limiter = limiter_of(warden)
    calls: list[uw.Usage] = []
    probe = lambda: limiter.usage("counting")  # noqa: E731
    cases: list[tuple[int | Exception, bool]] = [
        (777, True),  # the provider counts
        (777, False),  # counting turned off
        (UserError("no counting here"), True),  # the provider cannot count
    ]
    for counted, count_tokens in cases:
        model = CountingModel(counted, calls=calls, probe=probe)
        await make_agent(path, model, warden, count_tokens=count_tokens).run("hi")
        limiter.reset()  # each snapshot then shows that request's reservation alone

    by_count, skipped, failed = calls
    assert by_count.input_tokens == 777
    # Without a usable count the heuristic is reserved: the same for both.
    assert skipped.input_tokens == failed.input_tokens != 777
    # No max_tokens in the settings: the default output reservation.
    assert by_count.output_tokens == DEFAULT_MAX_TOKENS


def test_the_heuristic_is_the_serialized_size_over_four() -> None:
    messages: list[ModelMessage] = [
        ModelRequest.user_text_prompt("What is the capital of France? " * 10),
        ModelResponse(parts=[TextPart("Paris.")]),
    ]
    chars = len(ModelMessagesTypeAdapter.dump_json(messages))
    assert estimate_input_tokens(messages) == math.ceil(chars / CHARS_PER_TOKEN)
    assert CHARS_PER_TOKEN == 4
    assert estimate_input_tokens([]) == 1  # "[]"
    with_tools = ModelRequestParameters(
        function_tools=[
            ToolDefinition(
                name="lookup",
                description="Looks a topic up",
                parameters_json_schema={"type": "object", "properties": {"q": {"type": "string"}}},
            )
        ]
    )
    assert estimate_input_tokens(messages, with_tools) > estimate_input_tokens(messages)


# (c): streaming settles when the stream ends


def chunks(words: int, *, gate: asyncio.Event | None = None) -> Any:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        for i in range(words):
            yield f"w{i} "
            if gate is not None:
                await gate.wait()

    return stream


@pytest.mark.parametrize("path", PATHS)
async def test_a_streamed_run_settles_at_the_end_with_the_streamed_usage(
    path: str, clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    warden = make_warden(clock, store)
    limiter = limiter_of(warden)
    model = FunctionModel(stream_function=chunks(8), model_name="streamer")
    agent = make_agent(path, model, warden, model_settings={"max_tokens": 300})

    during: list[tuple[uw.Usage, int]] = []
    async with agent.run_stream("tell me", deps=Tenant("dana")) as stream:
        async for _ in stream.stream_text(delta=True, debounce_by=None):
            during.append((limiter.usage("streamer"), len(await store.query())))
        usage = stream.usage
        run_id = stream.run_id

    # While streaming: the estimate held, nothing recorded yet.
    assert during and all(u.output_tokens == 300 and n == 0 for u, n in during)
    [event] = await store.query()
    assert (event.tokens_in, event.tokens_out) == (usage.input_tokens, usage.output_tokens)
    assert event.tokens_out == 8  # one token per streamed word
    assert (event.consumer_id, event.model) == ("dana", "streamer")
    assert event.metadata == {"run_id": run_id}
    settled = limiter.usage("streamer")
    assert (settled.input_tokens, settled.output_tokens) == (event.tokens_in, event.tokens_out)


@pytest.mark.parametrize("path", PATHS)
async def test_a_run_driven_with_iter_settles_each_streamed_request(
    path: str, clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    warden = make_warden(clock, store)
    agent = make_agent(path, FunctionModel(stream_function=chunks(5), model_name="s"), warden)
    async with agent.iter("go") as run:
        async for node in run:
            if Agent.is_model_request_node(node):
                async with node.stream(run.ctx) as events:
                    async for _ in events:
                        pass
    assert run.result is not None
    [event] = await store.query()
    assert (event.tokens_in, event.tokens_out) == (
        run.usage.input_tokens,
        run.usage.output_tokens,
    )
    assert event.metadata == {"run_id": run.result.run_id}


async def test_a_stream_abandoned_early_keeps_its_input_estimate_on_the_model_path(
    clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    # The request was sent: the provider bills its input even if nobody reads the answer.
    warden = make_warden(clock, store)
    gate = asyncio.Event()  # never set: the stream would go on forever
    model = FunctionModel(stream_function=chunks(5, gate=gate), model_name="s")
    agent = make_agent("model", model, warden)
    async with agent.run_stream("go") as stream:
        async for _ in stream.stream_text(delta=True, debounce_by=None):
            break
    [event] = await store.query()
    assert event.tokens_in > 0 and event.tokens_out == 0  # the input estimate
    assert (event.metadata or {})["error"] == "GeneratorExit"
    assert (event.metadata or {})["estimated"] is True
    used = limiter_of(warden).usage("s")
    assert (used.requests, used.total_tokens) == (1, event.tokens_in)


async def test_a_stream_abandoned_early_settles_what_was_streamed_on_the_capability_path(
    clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    # The capability sees the step end normally with the partial response.
    warden = make_warden(clock, store)
    gate = asyncio.Event()
    model = FunctionModel(stream_function=chunks(5, gate=gate), model_name="s")
    agent = make_agent("capability", model, warden)
    async with agent.run_stream("go") as stream:
        async for _ in stream.stream_text(delta=True, debounce_by=None):
            break
    [event] = await store.query()
    assert event.tokens_out == 1 and "error" not in (event.metadata or {})


# (d): a failing model call refunds and records the failure


@pytest.mark.parametrize("path", PATHS)
async def test_a_failing_model_call_refunds_its_tokens_and_records_the_error_type(
    path: str, clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    warden = make_warden(clock, store)

    def down(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise ProviderDown("503")

    agent = make_agent(path, FunctionModel(down, model_name="flaky"), warden)
    with pytest.raises(ProviderDown):
        await agent.run("hello", deps=Tenant("erin"), run_id="run-failing")
    [event] = await store.query()
    assert event.metadata == {"error": "ProviderDown", "run_id": "run-failing"}
    assert (event.tokens_in, event.tokens_out, event.consumer_id) == (0, 0, "erin")
    used = limiter_of(warden).usage("flaky")
    assert (used.requests, used.total_tokens) == (1, 0)  # the request counts, tokens refunded


@pytest.mark.parametrize("path", PATHS)
async def test_a_stream_failing_midway_refunds_and_records_the_error_type(
    path: str, clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    warden = make_warden(clock, store)

    async def breaks(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "partial "
        raise ProviderDown("connection reset")

    agent = make_agent(path, FunctionModel(stream_function=breaks, model_name="s"), warden)
    with pytest.raises(ProviderDown):
        async with agent.run_stream("go") as stream:
            await stream.get_output()
    [event] = await store.query()
    # The capability's step is cancelled by the consumer task the error surfaces in:
    # a request abandoned mid-way keeps its input estimate; a provider error bills nothing.
    expected = "ProviderDown" if path == "model" else "CancelledError"
    assert (event.metadata or {})["error"] == expected
    assert event.tokens_out == 0
    assert (event.tokens_in == 0) == (path == "model")
    assert limiter_of(warden).usage("s").total_tokens == event.tokens_in


# (e): RunContext is built as pydantic-ai builds it, nothing added


def test_run_context_has_nothing_of_usagewarden() -> None:
    names = {f.name for f in dataclasses.fields(RunContext)}
    assert not {n for n in names if "warden" in n.lower() or "usage_meter" in n.lower()}


async def test_a_bare_run_context_as_pydantic_ai_tests_build_it_is_enough(
    clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    warden = make_warden(clock, store)
    capability = UsageWardenCapability(warden, consumer_id="fallback")
    model = TestModel()
    bare = RunContext(deps=None, model=model, usage=RunUsage())
    with_deps = RunContext(deps=Tenant("frank", "t-7"), model=model, usage=RunUsage(), run_id="r-1")
    request = ModelRequestContext(
        model=model,
        messages=[ModelRequest.user_text_prompt("hi")],
        model_settings=None,
        model_request_parameters=ModelRequestParameters(),
    )

    async def handler(ctx: ModelRequestContext) -> ModelResponse:
        return ModelResponse(
            parts=[TextPart("x")], usage=RequestUsage(input_tokens=5, output_tokens=2)
        )

    for ctx in (bare, with_deps):
        await capability.wrap_model_request(ctx, request_context=request, handler=handler)

    first, second = await store.query()
    assert (first.agent_id, first.consumer_id, first.task_id, first.model) == (
        "bot",
        "fallback",
        None,
        "test",
    )
    assert first.metadata is None and (first.tokens_in, first.tokens_out) == (5, 2)
    assert (second.consumer_id, second.task_id, second.metadata) == (
        "frank",
        "t-7",
        {"run_id": "r-1"},
    )


async def test_a_direct_model_request_outside_any_run_is_limited_and_recorded(
    clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    warden = make_warden(clock, store)
    model = RateLimitedModel(TestModel(), warden, consumer_id="script", key="shared")
    response = await model.request(
        [ModelRequest.user_text_prompt("hi")], None, ModelRequestParameters()
    )
    [event] = await store.query()
    assert (event.consumer_id, event.model, event.metadata) == ("script", "test", None)
    assert event.tokens_in == response.usage.input_tokens
    assert limiter_of(warden).usage("shared").requests == 1  # the key given, not the model


# Attribution through usagewarden's own RunMeter


@pytest.mark.parametrize("path", PATHS)
async def test_a_run_meter_as_deps_or_around_the_run_attributes_its_requests(
    path: str, clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    warden = make_warden(clock, store)
    agent = make_agent(path, TestModel(), warden, name="helper", consumer_id="ignored")
    meter = warden.run(agent_id="support", consumer_id="gina", task_id="ticket-1")
    as_deps = await agent.run("hi", deps=meter)
    around = warden.run(consumer_id="hank")
    with around:
        await agent.run("hi")
        await agent.run("hi", deps=Tenant("ivy"))  # explicit deps attributes win

    by_deps, by_block, by_both = await store.query()
    assert (by_deps.agent_id, by_deps.consumer_id, by_deps.task_id) == (
        "support",
        "gina",
        "ticket-1",
    )
    assert by_deps.metadata == {"run_id": meter.run_id, "pydantic_ai_run_id": as_deps.run_id}
    # A run given no agent leaves the naming to the pydantic-ai agent.
    assert (by_block.agent_id, by_block.consumer_id) == ("helper", "hank")
    assert (by_block.metadata or {})["run_id"] == around.run_id
    assert (by_both.consumer_id, (by_both.metadata or {})["run_id"]) == ("ivy", around.run_id)
    assert around.calls == 2
    assert meter.calls == 1 and meter.usage.input_tokens == by_deps.tokens_in


# (f): the two paths compose with other capabilities


async def test_a_step_an_inner_hook_skips_gives_its_reservation_back(
    clock: uw.ManualClock, store: uw.AsyncSQLiteStore
) -> None:
    @dataclass
    class Cached(AbstractCapability[Any]):
        async def before_model_request(
            self, ctx: RunContext[Any], request_context: ModelRequestContext
        ) -> ModelRequestContext:
            raise SkipModelRequest(ModelResponse(parts=[TextPart("from cache")]))

    warden = make_warden(clock, store)
    calls: list[float] = []
    agent = Agent(
        text_model("fn", calls=calls, probe=clock.now),
        capabilities=[UsageWardenCapability(warden), Cached()],
    )
    result = await agent.run("hi")
    assert result.output == "from cache" and calls == []
    assert await store.query() == []
    assert limiter_of(warden).usage("fn").requests == 0


def test_bad_arguments_name_themselves(clock: uw.ManualClock) -> None:
    warden = uw.Warden(clock=clock)
    with pytest.raises(TypeError, match="warden"):
        RateLimitedModel(TestModel(), object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="warden"):
        UsageWardenCapability(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        RateLimitedModel(TestModel(), warden, timeout=-1)
    with pytest.raises(ValueError, match="default_max_tokens"):
        UsageWardenCapability(warden, default_max_tokens=-1)
    with pytest.raises(ValueError, match="consumer_id"):
        UsageWardenCapability(warden, consumer_id="")


async def test_a_warden_without_limiter_or_store_still_meters_the_run() -> None:
    warden = uw.Warden()
    agent = Agent(RateLimitedModel(TestModel(), warden))
    with warden.run() as meter:
        result = await agent.run("hi")
    assert meter.calls == 1
    assert meter.usage.input_tokens == result.usage.input_tokens


# (g): importing usagewarden does not import pydantic-ai


def run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
