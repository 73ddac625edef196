"""usagewarden.integrations.langchain with real LangChain (v1) and offline fake models.

Every wait is on a ``ManualClock``: a call that must wait is shown waiting,
then released by advancing the clock; nothing sleeps for time to pass.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain.agents")

import agent_helpers  # noqa: E402
import usagewarden as uw  # noqa: E402
from agent_helpers import SpyWarden, assert_replay, recorded  # noqa: E402
from conftest import GRACE, Worker, eventually, is_queued, spin, wait_until  # noqa: E402
from langchain.agents import create_agent  # noqa: E402
from langchain_core.callbacks import CallbackManagerForLLMRun  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from pydantic import Field  # noqa: E402
from usagewarden.integrations.langchain import (  # noqa: E402
    UsageWardenCallbackHandler,
    UsageWardenMiddleware,
    UsageWardenRateLimiter,
    estimate_tokens,
)

ROOT = Path(__file__).resolve().parent.parent
#: 2026-01-01T00:00:00Z: events get realistic timestamps from the manual clock.
T0 = 1_767_225_600.0
MODEL = "fake-gpt"


class UsageFakeChatModel(GenericFakeChatModel):
    """GenericFakeChatModel that answers from a script and reports usage.

    Input tokens are the message text's characters / 4 (never above the
    middleware's estimate), output tokens ``output_tokens``. With
    ``use_tool`` the first answer calls ``lookup``, the second is final.
    ``on_call`` runs at the start of each call: the tests use it to look at
    the limiter while the call is in flight, or to fail it.
    """

    messages: Iterator[AIMessage | str] = Field(default_factory=lambda: iter(()))
    model_name: str = MODEL
    output_tokens: int = 5
    cache_read: int = 0
    cache_creation: int = 0
    use_tool: bool = False
    report_usage: bool = True
    max_tokens: int | None = None
    on_call: Callable[[list[BaseMessage]], None] | None = None
    calls: int = 0

    def bind_tools(self, tools: Any, **kwargs: Any) -> UsageFakeChatModel:
        return self  # the script decides when to call the tool

    def _reply(self, messages: list[BaseMessage]) -> ChatResult:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(messages)
        chars = sum(len(m.content) for m in messages if isinstance(m.content, str))
        question = next(m.content for m in messages if isinstance(m, HumanMessage))
        if self.use_tool and not any(isinstance(m, ToolMessage) for m in messages):
            message = AIMessage(
                content="",
                tool_calls=[{"name": "lookup", "args": {"q": question}, "id": f"call-{question}"}],
            )
        else:
            message = AIMessage(content=f"answer to {question}")
        if self.report_usage:
            message.usage_metadata = {
                "input_tokens": chars // 4,
                "output_tokens": self.output_tokens,
                "total_tokens": chars // 4 + self.output_tokens,
                "input_token_details": {
                    "cache_read": self.cache_read,
                    "cache_creation": self.cache_creation,
                },
            }
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._reply(messages)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._reply(messages)


@tool
def lookup(q: str) -> str:
    """Looks a question up."""
    return f"facts about {q}"


@pytest.fixture
def clock() -> uw.ManualClock:
    return uw.ManualClock(T0)


@pytest.fixture
def store(tmp_path: Path, clock: uw.ManualClock) -> Iterator[uw.SQLiteStore]:
    store = uw.SQLiteStore(tmp_path / "usage.db", durability="commit", clock=clock)
    yield store
    store.close()


class RecordingLimiter:
    """Stands in for the RateLimiter inside a UsageWardenRateLimiter and keeps
    the reservations it admits (the adapter itself drops them)."""

    def __init__(self, limiter: uw.RateLimiter) -> None:
        self.limiter = limiter
        self.admitted: list[uw.Reservation] = []

    def try_acquire(self, *args: Any, **kwargs: Any) -> uw.Decision:
        decision = self.limiter.try_acquire(*args, **kwargs)
        if decision.reservation is not None:
            self.admitted.append(decision.reservation)
        return decision

    def acquire_blocking(self, *args: Any, **kwargs: Any) -> uw.Reservation:
        reservation = self.limiter.acquire_blocking(*args, **kwargs)
        self.admitted.append(reservation)
        return reservation

    async def acquire(self, *args: Any, **kwargs: Any) -> uw.Reservation:
        reservation = await self.limiter.acquire(*args, **kwargs)
        self.admitted.append(reservation)
        return reservation


def make_warden(
    clock: uw.ManualClock, store: uw.SQLiteStore | None = None, **limits: Any
) -> SpyWarden:
    return agent_helpers.make_warden(clock, store, "lc-agent", **limits)


async def drive(
    clock: uw.ManualClock, limiter: uw.RateLimiter, tasks: list[asyncio.Task[Any]]
) -> None:
    await agent_helpers.drive(clock, limiter, tasks, MODEL)


# --- import hygiene -----------------------------------------------------------


# --- UsageWardenRateLimiter ----------------------------------------------------


def test_rate_limiter_non_blocking_answers_at_once(clock: uw.ManualClock) -> None:
    warden = make_warden(clock, requests_per_minute=2)
    limiter = UsageWardenRateLimiter(warden, key="chat")
    assert limiter.acquire(blocking=False) is True
    assert limiter.acquire(blocking=False) is True
    assert limiter.acquire(blocking=False) is False  # full: refused, not counted
    assert warden.limiter is not None
    assert warden.limiter.usage("chat").requests == 2
    clock.advance(60)
    assert limiter.acquire(blocking=False) is True


async def test_rate_limiter_async_non_blocking_answers_at_once(clock: uw.ManualClock) -> None:
    limiter = UsageWardenRateLimiter(
        uw.RateLimiter(uw.RateLimits(requests_per_minute=1), clock=clock)
    )
    assert await limiter.aacquire(blocking=False) is True
    assert await limiter.aacquire(blocking=False) is False
    clock.advance(60)
    assert await limiter.aacquire(blocking=False) is True


def test_rate_limiter_blocking_waits_in_its_thread(clock: uw.ManualClock) -> None:
    core = uw.RateLimiter(uw.RateLimits(requests_per_minute=1), clock=clock)
    limiter = UsageWardenRateLimiter(core)
    assert limiter.acquire() is True
    worker = Worker(limiter.acquire)
    worker.start()
    wait_until(lambda: is_queued(core))
    assert worker.is_alive()  # waiting, not refused
    clock.advance(60)
    assert worker.outcome() is True
    assert core.usage().requests == 1  # the first one left the window


async def test_rate_limiter_async_blocking_waits_for_capacity(clock: uw.ManualClock) -> None:
    core = uw.RateLimiter(uw.RateLimits(requests_per_minute=1), clock=clock)
    limiter = UsageWardenRateLimiter(core)
    assert await limiter.aacquire() is True
    waiter = asyncio.create_task(limiter.aacquire())
    await spin()
    assert not waiter.done() and is_queued(core)
    clock.advance(60)
    assert await asyncio.wait_for(waiter, GRACE) is True


def test_rate_limiter_tokens_per_request_timeout_and_oversize(clock: uw.ManualClock) -> None:
    core = uw.RateLimiter(uw.RateLimits(total_tokens_per_minute=1_000), clock=clock)
    limiter = UsageWardenRateLimiter(core, key="k", tokens_per_request=600, timeout=0)
    assert limiter.acquire() is True
    assert core.usage("k") == uw.Usage(requests=1, input_tokens=600)
    with pytest.raises(uw.RateLimitExceeded):
        limiter.acquire()  # 1,200 > 1,000 and no time to wait
    too_big = UsageWardenRateLimiter(core, key="k", tokens_per_request=1_001)
    with pytest.raises(uw.RateLimitExceeded):
        too_big.acquire()  # can never fit: raised at once instead of waiting forever
    assert too_big.acquire(blocking=False) is False


def test_rate_limiter_rejects_what_it_cannot_use(clock: uw.ManualClock) -> None:
    with pytest.raises(TypeError, match="no limiter"):
        UsageWardenRateLimiter(uw.Warden())
    with pytest.raises(TypeError):
        UsageWardenRateLimiter("not a limiter")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        UsageWardenRateLimiter(make_warden(clock, requests_per_minute=1), tokens_per_request=-1)


async def test_rate_limiter_holds_a_chat_model_before_its_call(clock: uw.ManualClock) -> None:
    core = uw.RateLimiter(uw.RateLimits(requests_per_minute=1), clock=clock)
    model = UsageFakeChatModel(rate_limiter=UsageWardenRateLimiter(core))
    await model.ainvoke("first")
    second = asyncio.create_task(model.ainvoke("second"))
    await eventually(lambda: is_queued(core))
    await spin()
    assert model.calls == 1 and not second.done()  # held before the model call
    clock.advance(60)
    await asyncio.wait_for(second, GRACE)
    assert model.calls == 2


def test_rate_limiter_holds_a_sync_chat_model_before_its_call(clock: uw.ManualClock) -> None:
    core = uw.RateLimiter(uw.RateLimits(requests_per_minute=1), clock=clock)
    model = UsageFakeChatModel(rate_limiter=UsageWardenRateLimiter(core))
    model.invoke("first")
    worker = Worker(lambda: model.invoke("second"))
    worker.start()
    wait_until(lambda: is_queued(core))
    assert model.calls == 1
    clock.advance(60)
    worker.outcome()
    assert model.calls == 2


# --- UsageWardenCallbackHandler --------------------------------------------------


def test_callback_handler_records_one_event_per_call_sync(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store)
    handler = UsageWardenCallbackHandler(warden, consumer_id="acme", agent_id="support")
    model = UsageFakeChatModel(
        cache_read=3, cache_creation=2, on_call=lambda _messages: clock.advance(1.5)
    )
    run_id = uuid.uuid4()
    model.invoke("x" * 40, config={"callbacks": [handler], "run_id": run_id})
    [event] = recorded(store)
    assert (event.agent_id, event.consumer_id, event.model) == ("support", "acme", MODEL)
    assert (event.tokens_in, event.tokens_out) == (10, 5)
    assert (event.cache_read_tokens, event.cache_write_tokens) == (3, 2)
    assert event.duration_ms == 1500 and event.api_calls == 1
    assert event.timestamp == dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    assert event.metadata == {"langchain_run_id": str(run_id)}
    assert event.request_id == str(run_id)
    assert event.source == "usagewarden.langchain"


async def test_callback_handler_records_async_calls_with_the_run(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store)
    handler = UsageWardenCallbackHandler(warden)
    model = UsageFakeChatModel(output_tokens=7)
    async with warden.run(agent_id="researcher", consumer_id="tenant-1", run_id="r-1") as run:
        await model.ainvoke("y" * 20, config={"callbacks": [handler]})
        await model.ainvoke("y" * 20, config={"callbacks": [handler]})
    events = recorded(store)
    assert len(events) == 2
    for event in events:
        assert (event.agent_id, event.consumer_id) == ("researcher", "tenant-1")
        assert event.metadata is not None and event.metadata["run_id"] == "r-1"
        assert (event.tokens_in, event.tokens_out) == (5, 7)
    assert run.calls == 2 and run.usage == uw.Usage(requests=2, input_tokens=10, output_tokens=14)


def test_callback_handler_works_sync_and_async_with_an_async_store(
    clock: uw.ManualClock, tmp_path: Path
) -> None:
    """One handler for both: LangChain awaits it on the running loop in async
    code and runs it to completion on a private loop in sync code; either
    way it records into an AsyncSQLiteStore, attributed to the run."""
    store = uw.AsyncSQLiteStore(tmp_path / "async.db", durability="commit")
    warden = uw.Warden(None, store, clock=clock)
    handler = UsageWardenCallbackHandler(warden)
    model = UsageFakeChatModel()
    with warden.run(consumer_id="sync-user", run_id="sync-run") as run:
        model.invoke("sync call", config={"callbacks": [handler]})
    assert run.calls == 1

    async def in_async_code() -> list[uw.UsageEvent]:
        async with warden.run(consumer_id="async-user", run_id="async-run"):
            await model.ainvoke("async call", config={"callbacks": [handler]})
        await store.flush()
        events = await store.query()
        await store.close()
        return events

    events = asyncio.run(in_async_code())
    assert sorted((e.consumer_id, e.metadata and e.metadata["run_id"]) for e in events) == [
        ("async-user", "async-run"),
        ("sync-user", "sync-run"),
    ]


async def test_callback_handler_records_a_failed_call(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store)
    handler = UsageWardenCallbackHandler(warden)

    def fail(_messages: list[BaseMessage]) -> None:
        clock.advance(0.25)
        raise ConnectionError("provider down")

    model = UsageFakeChatModel(on_call=fail)
    async with warden.run(consumer_id="c") as run:
        with pytest.raises(ConnectionError):
            await model.ainvoke("hello", config={"callbacks": [handler]})
    [event] = recorded(store)
    assert event.metadata is not None and event.metadata["error"] == "ConnectionError"
    assert (event.tokens_in, event.tokens_out, event.api_calls) == (0, 0, 1)
    assert event.duration_ms == 250 and event.model == MODEL
    assert run.failures == 1 and run.usage == uw.Usage(requests=1)


def test_callback_handler_falls_back_to_llm_output_token_usage(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    class LegacyModel(UsageFakeChatModel):
        def _generate(self, messages: list[BaseMessage], *args: Any, **kw: Any) -> ChatResult:
            return ChatResult(
                generations=[ChatGeneration(message=AIMessage(content="ok"))],
                llm_output={
                    "model_name": "legacy-1",
                    "token_usage": {
                        "prompt_tokens": 11,
                        "completion_tokens": 4,
                        "prompt_tokens_details": {"cached_tokens": 6},
                    },
                },
            )

    warden = make_warden(clock, store)
    LegacyModel(model_name="").invoke(
        "hi", config={"callbacks": [UsageWardenCallbackHandler(warden)]}
    )
    [event] = recorded(store)
    assert (event.tokens_in, event.tokens_out, event.cache_read_tokens) == (11, 4, 6)
    assert event.model == "legacy-1"  # named by the response when the request named none


def test_callback_handler_keeps_an_estimate_for_calls_without_reported_usage(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    # Not free: the input and the output it produced, by the chars/4 heuristic, marked.
    warden = make_warden(clock, store)
    answer = UsageFakeChatModel(report_usage=False).invoke(
        "hi there", config={"callbacks": [UsageWardenCallbackHandler(warden)]}
    )
    [event] = recorded(store)
    assert event.tokens_in == estimate_tokens([HumanMessage("hi there")])
    assert event.tokens_out == math.ceil(len(str(answer.content)) / 4) > 0
    assert event.metadata is not None and event.metadata["estimated"] is True


async def test_rate_limiter_and_callback_handler_across_concurrent_runs(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    """The pairing for plain chat models: the limiter holds each request,
    the handler records it; 20 runs at once."""
    warden = make_warden(clock, store, requests_per_minute=6)
    assert warden.limiter is not None
    handler = UsageWardenCallbackHandler(warden)
    rate_limiter = UsageWardenRateLimiter(warden, key=MODEL)
    recorder = RecordingLimiter(warden.limiter)
    rate_limiter.limiter = recorder  # type: ignore[assignment]
    in_flight: list[uw.Usage] = []
    model = UsageFakeChatModel(
        rate_limiter=rate_limiter,
        on_call=lambda _m: in_flight.append(recorder.limiter.usage(MODEL)),
    )

    async def one(i: int) -> None:
        async with warden.run(agent_id=f"agent-{i % 3}", consumer_id=f"c-{i}", run_id=f"r-{i}"):
            await model.ainvoke(f"question {i}", config={"callbacks": [handler]})

    await drive(clock, warden.limiter, [asyncio.create_task(one(i)) for i in range(20)])
    events = recorded(store)
    assert sorted(e.metadata["run_id"] for e in events if e.metadata) == sorted(
        f"r-{i}" for i in range(20)
    )
    for event in events:
        assert event.metadata is not None
        i = int(event.metadata["run_id"].removeprefix("r-"))
        assert (event.agent_id, event.consumer_id) == (f"agent-{i % 3}", f"c-{i}")
        assert (event.model, event.tokens_out) == (MODEL, 5)
    assert len(recorder.admitted) == 20
    assert_replay(recorder.admitted, requests=6, total_tokens=10**9)
    assert all(1 <= usage.requests <= 6 for usage in in_flight)
    times = [r.at for r in recorder.admitted]
    assert max(times) - min(times) >= 180  # 20 requests at 6 a minute: the limit did bind


# --- UsageWardenMiddleware -------------------------------------------------------


def test_estimate_is_characters_over_four_rounded_up() -> None:
    messages = [HumanMessage("a" * 9), AIMessage("", tool_calls=[])]
    assert estimate_tokens(messages) == 3
    image = HumanMessage(
        content=[
            {"type": "text", "text": "b" * 8},
            {"type": "image", "base64": "c" * 10_000, "mime_type": "image/png"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "d" * 999}},
        ]
    )
    # The block types count as text (a small overestimate); inline images do not.
    assert estimate_tokens([image]) == 9  # ceil((4 + 8 + 5 + 9 + len("image_url")) / 4)
    assert estimate_tokens([], system_message=HumanMessage("e" * 4)) == 1


async def test_middleware_reserves_before_the_call_and_settles_after(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=100, total_tokens_per_minute=10_000)
    limiter = warden.limiter
    assert limiter is not None
    seen: list[uw.Usage] = []
    model = UsageFakeChatModel(
        cache_read=4, cache_creation=1, on_call=lambda _m: seen.append(limiter.usage(MODEL))
    )
    agent = create_agent(
        model,
        system_prompt="s" * 8,
        middleware=[UsageWardenMiddleware(warden, max_output_tokens=200)],
    )
    question = HumanMessage("q" * 40)
    await agent.ainvoke({"messages": [question]})
    # In flight, the limiter already held the estimate: (8 + 40) / 4 in, 200 out.
    assert seen == [uw.Usage(requests=1, input_tokens=12, output_tokens=200)]
    # After it, the measured usage (the fake reports the 48 characters / 4 and 5 out).
    assert limiter.usage(MODEL) == uw.Usage(
        requests=1, input_tokens=12, output_tokens=5, cache_read_tokens=4, cache_write_tokens=1
    )
    [event] = recorded(store)
    assert (event.model, event.tokens_in, event.tokens_out) == (MODEL, 12, 5)
    assert (event.cache_read_tokens, event.cache_write_tokens) == (4, 1)
    assert event.metadata == {"integration": "langchain"}


async def test_middleware_holds_the_model_until_capacity(clock: uw.ManualClock) -> None:
    warden = make_warden(clock, requests_per_minute=1)
    assert warden.limiter is not None
    model = UsageFakeChatModel()
    agent = create_agent(model, middleware=[UsageWardenMiddleware(warden, max_output_tokens=10)])
    await agent.ainvoke({"messages": [HumanMessage("first")]})
    second = asyncio.create_task(agent.ainvoke({"messages": [HumanMessage("second")]}))
    limiter = warden.limiter
    await eventually(lambda: is_queued(limiter, MODEL))
    await spin()
    assert model.calls == 1 and not second.done()  # held before the model call
    clock.advance(60)
    await asyncio.wait_for(second, GRACE)
    assert model.calls == 2


async def test_middleware_uses_the_lower_output_cap_of_the_call(clock: uw.ManualClock) -> None:
    warden = make_warden(clock, requests_per_minute=100)
    limiter = warden.limiter
    assert limiter is not None
    seen: list[uw.Usage] = []
    model = UsageFakeChatModel(max_tokens=64, on_call=lambda _m: seen.append(limiter.usage(MODEL)))
    agent = create_agent(model, middleware=[UsageWardenMiddleware(warden, max_output_tokens=500)])
    await agent.ainvoke({"messages": [HumanMessage("abcd")]})
    assert seen[0].output_tokens == 64


async def test_middleware_refunds_and_records_a_failed_call(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    warden = make_warden(clock, store, requests_per_minute=10, total_tokens_per_minute=10_000)
    assert warden.limiter is not None

    def fail(_messages: list[BaseMessage]) -> None:
        raise TimeoutError("provider timed out")

    agent = create_agent(
        UsageFakeChatModel(on_call=fail),
        middleware=[UsageWardenMiddleware(warden, max_output_tokens=300)],
    )
    async with warden.run(agent_id="a", consumer_id="c", run_id="failing") as run:
        with pytest.raises(TimeoutError):
            await agent.ainvoke({"messages": [HumanMessage("hello there")]})
    # The request stays counted; its tokens were never billed.
    assert warden.limiter.usage(MODEL) == uw.Usage(requests=1)
    [event] = recorded(store)
    assert event.metadata is not None
    assert event.metadata["error"] == "TimeoutError" and event.metadata["run_id"] == "failing"
    assert event.total_tokens == 0 and event.api_calls == 1
    assert run.failures == 1


def test_middleware_sync_agent_waits_in_its_thread(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    """``agent.invoke``: the wait is ``call_blocking`` in the caller's thread
    (with a sync SQLiteStore, which records from any thread)."""
    warden = make_warden(clock, store, requests_per_minute=1)
    assert warden.limiter is not None
    model = UsageFakeChatModel(use_tool=True)
    agent = create_agent(
        model, tools=[lookup], middleware=[UsageWardenMiddleware(warden, max_output_tokens=10)]
    )

    def run() -> Any:
        with warden.run(agent_id="sync-agent", consumer_id="c", run_id="sync-run"):
            return agent.invoke({"messages": [HumanMessage("sync question")]})

    worker = Worker(run)
    worker.start()
    wait_until(lambda: model.calls == 1 and is_queued(warden.limiter, MODEL))
    clock.advance(60)  # the tool ran; the second model call waits for the next minute
    result = worker.outcome()
    assert result["messages"][-1].content == "answer to sync question"
    events = recorded(store)
    assert [e.metadata["run_id"] for e in events if e.metadata] == ["sync-run"] * 2
    assert {e.agent_id for e in events} == {"sync-agent"}
    assert events[1].timestamp - events[0].timestamp == dt.timedelta(seconds=60)


async def test_middleware_twenty_concurrent_runs_stay_within_limits(
    clock: uw.ManualClock, store: uw.SQLiteStore
) -> None:
    rpm, tpm = 8, 900
    warden = make_warden(clock, store, requests_per_minute=rpm, total_tokens_per_minute=tpm)
    limiter = warden.limiter
    assert limiter is not None
    in_flight: list[uw.Usage] = []
    model = UsageFakeChatModel(
        use_tool=True, cache_read=1, on_call=lambda _m: in_flight.append(limiter.usage(MODEL))
    )
    agent = create_agent(
        model,
        tools=[lookup],
        system_prompt="You answer questions.",
        middleware=[UsageWardenMiddleware(warden, max_output_tokens=40)],
    )

    async def one(i: int) -> str:
        async with warden.run(
            agent_id=f"agent-{i % 4}", consumer_id=f"consumer-{i % 5}", run_id=f"run-{i}"
        ):
            result = await agent.ainvoke({"messages": [HumanMessage(f"question {i}")]})
        return str(result["messages"][-1].content)

    tasks = [asyncio.create_task(one(i)) for i in range(20)]
    await drive(clock, limiter, tasks)
    assert [t.result() for t in tasks] == [f"answer to question {i}" for i in range(20)]

    events = recorded(store)
    assert len(events) == 40 and model.calls == 40  # two model calls per run, each once
    by_run: dict[str, list[uw.UsageEvent]] = {}
    for event in events:
        assert event.metadata is not None
        by_run.setdefault(event.metadata["run_id"], []).append(event)
    assert sorted(by_run) == sorted(f"run-{i}" for i in range(20))
    for run_id, run_events in by_run.items():
        i = int(run_id.removeprefix("run-"))
        assert len(run_events) == 2
        for event in run_events:
            assert (event.agent_id, event.consumer_id) == (f"agent-{i % 4}", f"consumer-{i % 5}")
            assert event.model == MODEL and event.cache_read_tokens == 1
            assert event.tokens_out == 5 and event.tokens_in > 0
    assert len(warden.calls) == 40
    assert_replay(warden.admitted(), requests=rpm, total_tokens=tpm)
    for call in warden.calls:  # each reservation was settled to its call's reported usage
        assert call.reservation is not None and call.usage is not None
        assert call.reservation.usage == call.usage
    # Every call found its own reservation already in the window, within the limits.
    assert len(in_flight) == 40
    for usage in in_flight:
        assert 1 <= usage.requests <= rpm and usage.total_tokens <= tpm
    assert any(e.metadata and e.metadata.get("waited_ms") for e in events)  # limits did bind
