"""A pydantic-ai agent whose model requests wait for shared rate limits and
are metered per user, then a summary from the ledger.

Runs offline as is (pydantic-ai's TestModel, no API key):

    pip install 'usagewarden[pydantic-ai]'
    python examples/pydantic_ai_agent.py            # the ledger in a temporary file
    python examples/pydantic_ai_agent.py --db usage.db

To use a real model, give the agent a model name instead of ``TestModel()``,
with the provider's key in the environment (e.g. OPENAI_API_KEY):

    model = RateLimitedModel("openai:gpt-4o", warden)
    # or: Agent("openai:gpt-4o", capabilities=[UsageWardenCapability(warden)])

and set the limits to your account's tier.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from dataclasses import dataclass

import usagewarden as uw
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel
from usagewarden.integrations.pydantic_ai import RateLimitedModel


@dataclass
class User:
    """The agent's deps; ``consumer_id`` is who each request is billed to."""

    consumer_id: str


async def main(db: str) -> None:
    limiter = uw.RateLimiter(
        uw.RateLimits(requests_per_minute=500, total_tokens_per_minute=200_000)
    )
    async with uw.AsyncSQLiteStore(db) as store:
        warden = uw.Warden(limiter, store, agent_id="weather-bot")
        # Every request of this model waits for capacity, then records its usage.
        model = RateLimitedModel(TestModel(), warden)
        agent = Agent(model, deps_type=User, name="weather-bot", model_settings={"max_tokens": 500})

        @agent.tool_plain
        def forecast(city: str) -> str:
            """Tomorrow's forecast for a city."""
            return f"sunny in {city}"

        users = ["alice", "bob", "carol"]
        results = await asyncio.gather(
            *(agent.run(f"Weather in Paris for {u}?", deps=User(u)) for u in users)
        )
        for user, result in zip(users, results, strict=True):
            print(f"{user}: {result.output} (run {result.run_id})")

        await store.flush()
        print(f"\nrecorded in {db}:")
        for event in await store.query():
            print(
                f"  {event.consumer_id:<6} {event.model:<5} in={event.tokens_in:<4} "
                f"out={event.tokens_out:<4} run={(event.metadata or {}).get('run_id')}"
            )
        for row in await store.aggregate("consumer"):
            print(f"  total for {row.group}: {row.events} requests, {row.total_tokens} tokens")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="keep the ledger in this file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(main(args.db or os.path.join(scratch, "usage.db")))
