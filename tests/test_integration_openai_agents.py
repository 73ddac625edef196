"""usagewarden.integrations.openai_agents with the real Agents SDK and an
offline fake ``Model``.

Every wait is on a ``ManualClock``: a call that must wait is shown waiting,
then released by advancing the clock; nothing sleeps for time to pass.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("agents")

import agent_helpers  # noqa: E402
import usagewarden as uw  # noqa: E402
from agent_helpers import SpyWarden, assert_replay, recorded  # noqa: E402
from agents import (  # noqa: E402
    Agent,
    ModelResponse,
    ModelSettings,
    RunConfig,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.models.interface import Model  # noqa: E402
from agents.usage import Usage as AgentsUsage  # noqa: E402
from conftest import GRACE, eventually, is_queued, spin  # noqa: E402
from openai.types.responses import (  # noqa: E402
    Response,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails  # noqa: E402
from usagewarden.integrations.openai_agents import (  # noqa: E402
    CallAbandoned,
    UsageWardenHooks,
    estimate_tokens,
)

ROOT = Path(__file__).resolve().parent.parent
#: 2026-01-01T00:00:00Z: events get realistic timestamps from the manual clock.
T0 = 1_767_225_600.0
MODEL = "fake-gpt"
NO_TRACING = RunConfig(tracing_disabled=True)


def question_of(items: str | list[Any]) -> str:
    if isinstance(items, str):
        return items
    return next(str(i["content"]) for i in items if isinstance(i, dict) and i.get("role") == "user")


def content_chars(system: str | None, items: str | list[Any]) -> int:
    """The characters of the prompt's text: a subset of what the hooks'
    estimate counts, so reported input tokens never exceed the estimate."""
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    chars = len(system or "")
    for item in items:
        if isinstance(item, dict):
            for field in ("content", "output", "arguments"):
                if isinstance(item.get(field), str):
                    chars += len(item[field])
    return chars


class FakeModel(Model):
    """An offline ``Model``: answers from a script and reports usage the way
    the Responses API does.

    With tools, the first answer calls the first tool (with the question as
    ``q``, or ``fan_out`` calls at once), the next one answers. Output tokens
    are ``output_tokens(question, turn)``, so every call's usage is its own.
    ``before`` runs at the start of each call: tests use it to look at the
    limiter while the call is in flight, to hold it, or to fail it.
    """

    def __init__(
        self,
        name: str = MODEL,
        *,
        output_tokens: Callable[[str, int], int] = lambda _q, _turn: 5,
        cached: int = 0,
        cache_write: int = 0,
        fan_out: list[str] | None = None,
        before: Callable[[str | None, str | list[Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.model = name
        self.output_tokens = output_tokens
        self.cached = cached
        self.cache_write = cache_write
        self.fan_out = fan_out
        self.before = before
        self.calls = 0

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[Any],
        model_settings: ModelSettings,
        tools: list[Any],
        output_schema: Any,
        handoffs: list[Any],
        tracing: Any,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: Any = None,
    ) -> ModelResponse:
        self.calls += 1
        n = self.calls
        if self.before is not None:
            await self.before(system_instructions, input)
        question = question_of(input)
        answered = not isinstance(input, str) and any(
            isinstance(i, dict) and i.get("type") == "function_call_output" for i in input
        )
        output: list[Any]
        if tools and not answered:
            output = [
                ResponseFunctionToolCall(
                    type="function_call",
                    id=f"fc-{n}-{k}",
                    call_id=f"call-{n}-{k}",
                    name=tools[0].name,
                    arguments=json.dumps({"q": q} if tools[0].name == "lookup" else {"input": q}),
                    status="completed",
                )
                for k, q in enumerate(self.fan_out or [question])
            ]
        else:
            output = [
                ResponseOutputMessage(
                    type="message",
                    id=f"msg-{n}",
                    role="assistant",
                    status="completed",
                    content=[
                        ResponseOutputText(
                            type="output_text", text=f"answer to {question}", annotations=[]
                        )
                    ],
                )
            ]
        input_tokens = content_chars(system_instructions, input) // 4
        output_tokens = self.output_tokens(question, 0 if not answered else 1)
        usage = AgentsUsage(
            requests=1,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
            input_tokens_details=InputTokensDetails(
                cached_tokens=self.cached, cache_write_tokens=self.cache_write
            ),
        )
        return ModelResponse(output=output, usage=usage, response_id=f"resp-{n}")

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[Any],
        model_settings: ModelSettings,
        tools: list[Any],
        output_schema: Any,
        handoffs: list[Any],
        tracing: Any,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: Any = None,
    ) -> AsyncIterator[Any]:
        done = await self.get_response(
            system_instructions, input, model_settings, tools, output_schema, handoffs, tracing
        )
        u = done.usage
        yield ResponseCompletedEvent(
            type="response.completed",
            sequence_number=0,
            response=Response(
                id=done.response_id or "resp",
                created_at=0,
                model=self.model,
                object="response",
                output=done.output,
                parallel_tool_calls=True,
                tool_choice="auto",
                tools=[],
                usage=ResponseUsage(
                    input_tokens=u.input_tokens,
                    input_tokens_details=u.input_tokens_details,
                    output_tokens=u.output_tokens,
                    output_tokens_details={"reasoning_tokens": 0},
                    total_tokens=u.total_tokens,
                ),
            ),
        )


@function_tool
def lookup(q: str) -> str:
    """Looks a question up."""
    return f"facts about {q}"


@pytest.fixture(autouse=True)
def no_trace_export() -> Iterator[None]:
    set_tracing_disabled(True)  # offline: no trace upload to attempt
    yield
    set_tracing_disabled(False)


@pytest.fixture
def clock() -> uw.ManualClock:
    return uw.ManualClock(T0)


@pytest.fixture
def store(tmp_path: Path, clock: uw.ManualClock) -> Iterator[uw.SQLiteStore]:
    store = uw.SQLiteStore(tmp_path / "usage.db", durability="commit", clock=clock)
    yield store
    store.close()


def make_warden(
    clock: uw.ManualClock, store: uw.SQLiteStore | None = None, **limits: Any
) -> SpyWarden:
    return agent_helpers.make_warden(clock, store, "warden-agent", **limits)


async def drive(
    clock: uw.ManualClock, limiter: uw.RateLimiter, tasks: list[asyncio.Task[Any]]
) -> None:
    await agent_helpers.drive(clock, limiter, tasks, MODEL)


# --- import hygiene -----------------------------------------------------------


# --- one call -------------------------------------------------------------------


def test_estimate_is_characters_over_four_rounded_up() -> None:
    assert estimate_tokens(None, []) == 0
    assert estimate_tokens("s" * 8, [{"role": "user", "content": "q" * 5}]) == 5  # 17 / 4
    image = {
        "role": "user",
        "content": [{"type": "input_image", "image_url": "data:image/png;base64," + "x" * 999}],
    }
    assert estimate_tokens(None, [image]) == 4  # "user" + "input_image": the image is skipped


async def test_the_reservation_is_held_before_the_call_and_settled_after(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=100, total_tokens_per_minute=10_000)
    limiter = warden.limiter
    assert limiter is not None
    seen: list[uw.Usage] = []

    async def look(_system: str | None, _input: Any) -> None:
        seen.append(limiter.usage(MODEL))
        clock.advance(2.5)

    model = FakeModel(cached=6, cache_write=2, before=look)
    agent = Agent(name="helper", instructions="i" * 12, model=model)
    hooks = UsageWardenHooks(warden, max_output_tokens=300)
    result = await Runner.run(agent, "q" * 20, hooks=hooks, run_config=NO_TRACING)
    assert result.final_output == "answer to " + "q" * 20
    # In flight, the limiter already held the estimate: the 12 + 20 characters
    # of text plus the item's role ("user") / 4, and 300 output tokens.
    assert seen == [uw.Usage(requests=1, input_tokens=9, output_tokens=300)]
    # After it, what the model reported (32 characters / 4 in, 5 out, cache details).
    assert limiter.usage(MODEL) == uw.Usage(
        requests=1, input_tokens=8, output_tokens=5, cache_read_tokens=6, cache_write_tokens=2
    )
    [event] = recorded(store)
    assert (event.agent_id, event.consumer_id, event.model) == ("helper", "default", MODEL)
    assert (event.tokens_in, event.tokens_out) == (8, 5)
    assert (event.cache_read_tokens, event.cache_write_tokens) == (6, 2)
    assert event.duration_ms == 2500
    assert event.metadata == {"integration": "openai-agents", "response_id": "resp-1"}
    assert hooks.open_calls == 0


async def test_the_agents_own_max_tokens_caps_the_reservation(clock: uw.ManualClock) -> None:
    warden = make_warden(clock, requests_per_minute=100)
    limiter = warden.limiter
    assert limiter is not None
    seen: list[uw.Usage] = []

    async def look(_system: str | None, _input: Any) -> None:
        seen.append(limiter.usage(MODEL))

    agent = Agent(
        name="capped", model=FakeModel(before=look), model_settings=ModelSettings(max_tokens=64)
    )
    await Runner.run(
        agent, "hi", hooks=UsageWardenHooks(warden, max_output_tokens=500), run_config=NO_TRACING
    )
    assert seen[0].output_tokens == 64


async def test_a_call_waits_for_capacity_before_the_model_is_called(
    clock: uw.ManualClock,
) -> None:
    warden = make_warden(clock, requests_per_minute=1)
    limiter = warden.limiter
    assert limiter is not None
    model = FakeModel()
    agent = Agent(name="a", model=model)
    hooks = UsageWardenHooks(warden, max_output_tokens=10)
    await Runner.run(agent, "first", hooks=hooks, run_config=NO_TRACING)
    second = asyncio.create_task(Runner.run(agent, "second", hooks=hooks, run_config=NO_TRACING))
    await eventually(lambda: is_queued(limiter, MODEL))
    await spin()
    assert model.calls == 1 and not second.done()  # held in on_llm_start, before the model
    clock.advance(60)
    assert (await asyncio.wait_for(second, GRACE)).final_output == "answer to second"
    assert model.calls == 2


async def test_a_failed_model_call_is_refunded_and_recorded(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=10, total_tokens_per_minute=10_000)
    limiter = warden.limiter
    assert limiter is not None

    async def fail(_system: str | None, _input: Any) -> None:
        raise ConnectionError("provider down")

    agent = Agent(name="flaky", model=FakeModel(before=fail))
    hooks = UsageWardenHooks(warden, max_output_tokens=300)
    async with warden.run(consumer_id="c", run_id="failing") as run:
        with pytest.raises(ConnectionError):
            async with hooks.guard():
                await Runner.run(agent, "hello", hooks=hooks, run_config=NO_TRACING)
    assert hooks.open_calls == 0
    # The request stays counted; its tokens were never billed.
    assert limiter.usage(MODEL) == uw.Usage(requests=1)
    [event] = recorded(store)
    assert event.metadata is not None
    assert event.metadata["error"] == "ConnectionError" and event.metadata["run_id"] == "failing"
    assert (event.agent_id, event.total_tokens, event.api_calls) == ("flaky", 0, 1)
    assert run.failures == 1 and run.usage == uw.Usage(requests=1)


async def test_without_a_guard_a_failed_call_is_closed_once_its_run_is_gone(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=10, total_tokens_per_minute=10_000)
    limiter = warden.limiter
    assert limiter is not None

    async def fail(_system: str | None, _input: Any) -> None:
        raise ConnectionError("provider down")

    agent = Agent(name="flaky", model=FakeModel(before=fail))
    hooks = UsageWardenHooks(warden, max_output_tokens=300)

    async def run() -> str:
        try:
            await Runner.run(agent, "hello", hooks=hooks, run_config=NO_TRACING)
        except ConnectionError as exc:  # dropped here, with the frames that held the run
            return type(exc).__name__
        return "no error"

    assert await run() == "ConnectionError"
    assert hooks.open_calls == 1  # the SDK told the hooks nothing
    await spin()  # the loop's pending callbacks let go of the failed run's tasks
    gc.collect()  # and with them its context
    assert await hooks.close_abandoned() == 1
    assert hooks.open_calls == 0
    assert limiter.usage(MODEL) == uw.Usage(requests=1)
    [event] = recorded(store)
    assert event.metadata is not None and event.metadata["error"] == CallAbandoned.__name__


async def test_a_guard_leaves_other_runs_calls_open(clock: uw.ManualClock) -> None:
    warden = make_warden(clock, requests_per_minute=10)
    gate = asyncio.Event()

    async def hold(_system: str | None, _input: Any) -> None:
        await gate.wait()

    agent = Agent(name="slow", model=FakeModel(before=hold))
    hooks = UsageWardenHooks(warden, max_output_tokens=10)
    outside = asyncio.create_task(Runner.run(agent, "outside", hooks=hooks, run_config=NO_TRACING))
    await eventually(lambda: hooks.open_calls == 1)

    async def cancelled_run() -> None:
        async with hooks.guard():
            await Runner.run(agent, "inside", hooks=hooks, run_config=NO_TRACING)

    inside = asyncio.create_task(cancelled_run())
    await eventually(lambda: hooks.open_calls == 2)
    inside.cancel()
    with pytest.raises(asyncio.CancelledError):
        await inside
    assert hooks.open_calls == 1  # the guard closed its own call only
    gate.set()
    assert (await asyncio.wait_for(outside, GRACE)).final_output == "answer to outside"
    assert hooks.open_calls == 0


async def test_streamed_runs_are_limited_and_recorded_too(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=10)
    agent = Agent(name="streamer", model=FakeModel(cached=3), tools=[lookup])
    hooks = UsageWardenHooks(warden, max_output_tokens=50)
    async with warden.run(consumer_id="viewer", run_id="stream-1"), hooks.guard():
        result = Runner.run_streamed(agent, "weather", hooks=hooks, run_config=NO_TRACING)
        async for _ in result.stream_events():
            pass
    assert result.final_output == "answer to weather"
    events = recorded(store)
    assert len(events) == 2
    for event in events:
        assert (event.agent_id, event.consumer_id, event.model) == ("streamer", "viewer", MODEL)
        assert event.cache_read_tokens == 3 and event.metadata is not None
        assert event.metadata["run_id"] == "stream-1"


# --- many at once ----------------------------------------------------------------


async def test_twenty_concurrent_runs_stay_within_limits_and_never_mix_calls(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    rpm, tpm = 8, 1_200
    warden = make_warden(clock, store, requests_per_minute=rpm, total_tokens_per_minute=tpm)
    limiter = warden.limiter
    assert limiter is not None
    in_flight: list[uw.Usage] = []

    async def look(_system: str | None, _input: Any) -> None:
        in_flight.append(limiter.usage(MODEL))

    def output_tokens(question: str, turn: int) -> int:
        return 10 + int(question.split()[-1]) + 30 * turn  # each call's own count

    model = FakeModel(output_tokens=output_tokens, cached=2, before=look)
    # Four agents, each shared by five concurrent runs; one hooks object for all.
    agents = [
        Agent(name=f"agent-{k}", instructions="You answer.", model=model, tools=[lookup])
        for k in range(4)
    ]
    hooks = UsageWardenHooks(warden, max_output_tokens=60)

    async def one(i: int) -> str:
        async with warden.run(consumer_id=f"consumer-{i % 5}", run_id=f"run-{i}"), hooks.guard():
            result = await Runner.run(
                agents[i % 4], f"question {i}", hooks=hooks, run_config=NO_TRACING
            )
        return str(result.final_output)

    tasks = [asyncio.create_task(one(i)) for i in range(20)]
    await drive(clock, limiter, tasks)
    assert [t.result() for t in tasks] == [f"answer to question {i}" for i in range(20)]
    assert hooks.open_calls == 0

    events = recorded(store)
    assert len(events) == 40 and model.calls == 40  # two model calls per run, each once
    by_run: dict[str, list[uw.UsageEvent]] = {}
    for event in events:
        assert event.metadata is not None
        by_run.setdefault(event.metadata["run_id"], []).append(event)
    assert sorted(by_run) == sorted(f"run-{i}" for i in range(20))
    for run_id, run_events in by_run.items():
        i = int(run_id.removeprefix("run-"))
        for event in run_events:
            assert (event.agent_id, event.consumer_id) == (f"agent-{i % 4}", f"consumer-{i % 5}")
            assert event.model == MODEL and event.cache_read_tokens == 2
        # Each run's events carry that run's own usage, not another call's.
        assert sorted(e.tokens_out for e in run_events) == [10 + i, 40 + i]
    assert len(warden.calls) == 40
    assert_replay(warden.admitted(), requests=rpm, total_tokens=tpm)
    for call in warden.calls:  # each reservation was settled to its own call's usage
        assert call.reservation is not None and call.reservation.usage == call.usage
    assert len(in_flight) == 40
    for usage in in_flight:  # every call found its reservation already in the window
        assert 1 <= usage.requests <= rpm and usage.total_tokens <= tpm
    assert any(e.metadata and e.metadata.get("waited_ms") for e in events)  # limits did bind


async def test_parallel_agent_tool_runs_of_one_agent_keep_their_own_calls(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    """Two runs of the same sub-agent in flight at once (parallel agent-as-tool
    calls), ending in the reverse of the order they started: each end
    settles its own call (its own usage and duration)."""
    warden = make_warden(clock, store, requests_per_minute=100)
    hooks = UsageWardenHooks(warden, max_output_tokens=100)
    started: list[str] = []
    gates = {"alpha": asyncio.Event(), "beta": asyncio.Event()}

    async def hold(_system: str | None, items: Any) -> None:
        question = question_of(items)
        started.append(question)
        await gates[question].wait()

    researcher = Agent(
        name="researcher",
        model=FakeModel(output_tokens=lambda q, _t: {"alpha": 11, "beta": 22}[q], before=hold),
    )
    lead = Agent(
        name="lead",
        model=FakeModel(fan_out=["alpha", "beta"]),
        tools=[researcher.as_tool("research", "Researches a topic.", hooks=hooks)],
    )
    run = asyncio.create_task(Runner.run(lead, "plan", hooks=hooks, run_config=NO_TRACING))
    await eventually(lambda: len(started) == 2)
    first, second = started
    clock.advance(2)
    gates[second].set()  # the later one ends first
    await eventually(lambda: hooks.open_calls == 1)
    clock.advance(3)
    gates[first].set()
    await asyncio.wait_for(run, GRACE)

    researched = {e.tokens_out: e for e in recorded(store) if e.agent_id == "researcher"}
    tokens = {"alpha": 11, "beta": 22}
    assert researched[tokens[second]].duration_ms == 2000
    assert researched[tokens[first]].duration_ms == 5000
    assert hooks.open_calls == 0
