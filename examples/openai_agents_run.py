"""OpenAI Agents SDK runs whose model calls wait for capacity and are metered.

Runs offline by default, with a scripted model that reports token usage:

    python examples/openai_agents_run.py

With a real model (needs OPENAI_API_KEY):

    python examples/openai_agents_run.py --model gpt-4o-mini

Three users ask at once; each run makes two model calls (one asks for the
tool, one answers). ``UsageWardenHooks`` holds every call until it fits the
limits and records it in a SQLite ledger; the script prints what was recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

from agents import (
    Agent,
    ModelResponse,
    ModelSettings,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.models.interface import Model, ModelTracing
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from openai.types.responses.response_usage import InputTokensDetails

warnings.filterwarnings("ignore", message="usagewarden was built in debug mode")

import usagewarden as uw  # noqa: E402
from usagewarden.integrations.openai_agents import UsageWardenHooks  # noqa: E402


class ScriptedModel(Model):
    """Offline stand-in for a provider: asks for the weather tool once, then
    answers, and reports usage the way the Responses API does."""

    model = "scripted-gpt"

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[Any],
        model_settings: ModelSettings,
        tools: list[Any],
        output_schema: Any,
        handoffs: list[Any],
        tracing: ModelTracing,
        **kwargs: Any,
    ) -> ModelResponse:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else input
        city = next(str(i["content"]) for i in items if i.get("role") == "user")
        result = next((i for i in items if i.get("type") == "function_call_output"), None)
        output: list[Any]
        if result is None:
            output = [
                ResponseFunctionToolCall(
                    type="function_call",
                    call_id=f"w-{city}",
                    name="weather",
                    arguments=json.dumps({"city": city}),
                )
            ]
        else:
            text = ResponseOutputText(
                type="output_text", text=f"In {city}: {result['output']}.", annotations=[]
            )
            output = [
                ResponseOutputMessage(
                    type="message", id=f"m-{city}", role="assistant", status="completed",
                    content=[text],
                )
            ]  # fmt: skip
        chars = len(system_instructions or "") + len(json.dumps(items))
        usage = Usage(
            requests=1,
            input_tokens=chars // 5,
            output_tokens=12,
            total_tokens=chars // 5 + 12,
            input_tokens_details=InputTokensDetails.model_validate(
                {"cached_tokens": chars // 10, "cache_write_tokens": 0}
            ),
        )
        return ModelResponse(output=output, usage=usage, response_id=None)

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("the offline demo does not stream")
        yield


@function_tool
def weather(city: str) -> str:
    """Today's weather in a city."""
    return "sunny, 21 °C"


async def main(model: Model | str, db: str) -> None:
    offline = isinstance(model, ScriptedModel)
    # Offline, time is simulated, so the demo shows waits without taking minutes.
    clock = uw.ManualClock(time.time()) if offline else None
    limiter = uw.RateLimiter(
        uw.RateLimits(requests_per_minute=4, total_tokens_per_minute=20_000), clock=clock
    )
    store = uw.SQLiteStore(db)
    warden = uw.Warden(limiter, store, clock=clock)
    hooks = UsageWardenHooks(warden, max_output_tokens=400)
    agent = Agent(
        name="weather-agent",
        instructions="Answer weather questions with the weather tool.",
        model=model,
        tools=[weather],
    )

    async def ask(user: str, city: str) -> str:
        # The guard closes a call the SDK never ended (a failed model call) as failed.
        async with warden.run(consumer_id=user), hooks.guard():
            result = await Runner.run(agent, city, hooks=hooks)
        return str(result.final_output)

    asks = [("alice", "Paris"), ("bob", "Lima"), ("carol", "Oslo")]
    tasks = [asyncio.create_task(ask(user, city)) for user, city in asks]
    while clock is not None and not all(task.done() for task in tasks):
        # The fifth call of the minute has to wait: move the simulated time on.
        await asyncio.wait(tasks, timeout=0.01)
        clock.advance(1.0)
    for (user, _), answer in zip(asks, await asyncio.gather(*tasks), strict=True):
        print(f"{user}: {answer}")

    store.flush()
    events = store.query()
    print(f"calls recorded: {len(events)}")
    for e in events:
        waited = (e.metadata or {}).get("waited_ms", 0)
        simulated = " (simulated time)" if clock is not None else ""
        print(
            f"  {e.consumer_id:6} {e.agent_id} {e.model}: {e.tokens_in} in "
            f"({e.cache_read_tokens} cached), {e.tokens_out} out, waited {waited / 1000:.0f}s{simulated}"
        )
    for row in store.aggregate("consumer"):
        print(f"{row.group}: {row.events} calls, {row.total_tokens} tokens")
    store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a real OpenAI model name (default: offline)")
    parser.add_argument("--db", help="keep the ledger in this file (default: a temporary one)")
    args = parser.parse_args()
    if not args.model:
        set_tracing_disabled(True)  # offline: no traces to upload
    chosen: Model | str = args.model or ScriptedModel()
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(main(chosen, args.db or os.path.join(scratch, "usage.db")))
