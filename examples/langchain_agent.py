"""A LangChain agent whose model calls wait for capacity and are metered.

Runs offline by default, with a scripted chat model that reports token usage:

    python examples/langchain_agent.py

With a real provider (needs its LangChain package and API key), for example:

    python examples/langchain_agent.py --model openai:gpt-4o-mini

Three users ask at once; each run makes two model calls (one asks for the
tool, one answers). The warden holds every call until it fits the limits and
records it in a SQLite ledger; the script prints what was recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import warnings
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool

warnings.filterwarnings("ignore", message="usagewarden was built in debug mode")

import usagewarden as uw  # noqa: E402
from usagewarden.integrations.langchain import UsageWardenMiddleware  # noqa: E402


class ScriptedChatModel(GenericFakeChatModel):
    """Offline stand-in for a provider: asks for the weather tool once, then
    answers, and reports usage the way real chat models do."""

    messages: Any = iter(())
    model_name: str = "scripted-gpt"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        text = sum(len(str(m.content)) for m in messages)
        city = str(next(m.content for m in messages if isinstance(m, HumanMessage)))
        tool_result = next((m for m in messages if isinstance(m, ToolMessage)), None)
        if tool_result is None:
            reply = AIMessage(
                "", tool_calls=[{"name": "weather", "args": {"city": city}, "id": f"w-{city}"}]
            )
        else:
            reply = AIMessage(f"In {city}: {tool_result.content}.")
        reply.usage_metadata = {
            "input_tokens": text // 4,
            "output_tokens": 12,
            "total_tokens": text // 4 + 12,
            "input_token_details": {"cache_read": text // 8},
        }
        return ChatResult(generations=[ChatGeneration(message=reply)])


@tool
def weather(city: str) -> str:
    """Today's weather in a city."""
    return "sunny, 21 °C"


async def main(model: BaseChatModel | str, db: str) -> None:
    # Offline, time is simulated, so the demo shows waits without taking minutes.
    clock = uw.ManualClock(time.time()) if isinstance(model, ScriptedChatModel) else None
    limiter = uw.RateLimiter(
        uw.RateLimits(requests_per_minute=4, total_tokens_per_minute=20_000), clock=clock
    )
    store = uw.SQLiteStore(db)
    warden = uw.Warden(limiter, store, agent_id="weather-agent", clock=clock)
    agent = create_agent(
        model,
        tools=[weather],
        system_prompt="Answer weather questions with the weather tool.",
        middleware=[UsageWardenMiddleware(warden, max_output_tokens=400)],
    )

    async def ask(user: str, city: str) -> str:
        async with warden.run(consumer_id=user):
            result = await agent.ainvoke({"messages": [HumanMessage(city)]})
        return str(result["messages"][-1].content)

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
            f"  {e.consumer_id:6} {e.model}: {e.tokens_in} in ({e.cache_read_tokens} cached), "
            f"{e.tokens_out} out, waited {waited / 1000:.0f}s{simulated}"
        )
    for row in store.aggregate("consumer"):
        print(f"{row.group}: {row.events} calls, {row.total_tokens} tokens")
    store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a real model as provider:name (default: offline)")
    parser.add_argument("--db", help="keep the ledger in this file (default: a temporary one)")
    args = parser.parse_args()
    chosen: BaseChatModel | str = args.model or ScriptedChatModel()
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(main(chosen, args.db or os.path.join(scratch, "usage.db")))
