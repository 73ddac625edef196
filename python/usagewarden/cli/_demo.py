"""``usagewarden demo``: simulated agents sharing one limiter and one ledger."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import click

from .._core import AsyncSQLiteStore, RateLimiter, RateLimits, Usage, UsageEvent

#: Simulated prices, USD per million input / output tokens.
_MODELS = {"small-model": (0.15, 0.60), "large-model": (2.50, 10.00)}


@dataclass
class _CallRecord:
    agent: str
    call: int
    estimate: int
    actual: int
    waited: float


@dataclass
class _DemoReport:
    calls: list[_CallRecord] = field(default_factory=list)

    def waited(self) -> list[_CallRecord]:
        return [c for c in self.calls if c.waited >= 0.001]


@dataclass
class _Demo:
    limiter: RateLimiter
    store: AsyncSQLiteStore
    report: _DemoReport
    started: float


async def _agent(demo: _Demo, name: str, calls: int, rng: random.Random) -> None:
    for n in range(calls):
        model = rng.choice(list(_MODELS))
        prompt = rng.randint(200, 1_200)
        max_output = 400
        asked = time.monotonic()
        # Wait for room on the shared limit and on this agent's own, atomically.
        reservation = await demo.limiter.acquire(
            ("all-agents", name), input_tokens=prompt, output_tokens=max_output
        )
        waited = time.monotonic() - asked
        call_started = time.monotonic()
        await asyncio.sleep(rng.uniform(0.02, 0.08))  # the simulated model call
        output = rng.randint(20, max_output)
        reservation.settle(output_tokens=output)
        input_price, output_price = _MODELS[model]
        await demo.store.record(
            UsageEvent(
                name,
                "demo-customer",
                task_id=f"task-{n % 2}",
                model=model,
                tokens_in=prompt,
                tokens_out=output,
                duration_ms=round((time.monotonic() - call_started) * 1000),
                api_calls=1,
                cost=(prompt * input_price + output * output_price) / 1e6,
                source="usagewarden demo",
            )
        )
        record = _CallRecord(name, n + 1, prompt + max_output, prompt + output, waited)
        demo.report.calls.append(record)
        status = f"waited {waited * 1000:6.0f} ms" if waited >= 0.001 else "admitted at once"
        print(
            f"[{time.monotonic() - demo.started:6.2f}s] {name:<8} call {n + 1:>2}: "
            f"{model:<11} estimate {record.estimate:>5} tok, used {record.actual:>5} tok, {status}"
        )


async def _demo(agents: int, calls: int, seed: int, db: Path) -> _DemoReport:
    shared = RateLimits(requests_per_second=6, total_tokens_per_second=8_000)
    # Each agent also has its own, tighter per-second request limit.
    per_agent = {f"agent-{i}": RateLimits(requests_per_second=2) for i in range(agents)}
    rng = random.Random(seed)
    print(
        f"{agents} agents x {calls} calls sharing one limiter: "
        "6 requests/s and 8,000 tokens/s in all, 2 requests/s per agent;\n"
        f"every call is recorded in the SQLite ledger {db}\n"
    )
    run_started = datetime.now(timezone.utc)
    async with AsyncSQLiteStore(db) as store:
        demo = _Demo(RateLimiter(shared, per_key=per_agent), store, _DemoReport(), time.monotonic())
        await asyncio.gather(
            *(_agent(demo, f"agent-{i}", calls, random.Random(rng.random())) for i in range(agents))
        )
        _print_limiter_summary(
            demo.report, demo.limiter.usage("all-agents"), time.monotonic() - demo.started
        )
        await store.flush()
        await _print_ledger_summary(store, run_started)
    return demo.report


def _print_limiter_summary(report: _DemoReport, in_window: Usage, elapsed: float) -> None:
    waited = report.waited()
    print(f"\n{len(report.calls)} calls admitted in {elapsed:.2f}s")
    print(f"  admitted at once: {len(report.calls) - len(waited)}")
    if waited:
        waits = [c.waited * 1000 for c in waited]
        print(
            f"  waited:           {len(waited)} "
            f"(median {statistics.median(waits):.0f} ms, longest {max(waits):.0f} ms)"
        )
    estimated = sum(c.estimate for c in report.calls)
    used = sum(c.actual for c in report.calls)
    print(
        f"  tokens reserved on estimates: {estimated}, settled to actual usage: {used} "
        f"({estimated - used} refunded)"
    )
    print(
        f"  still in the shared one-second window: {in_window.requests} requests, "
        f"{in_window.total_tokens} tokens"
    )


async def _print_ledger_summary(store: AsyncSQLiteStore, start: datetime) -> None:
    """What the ledger says about this run (SQL aggregation, not Python sums)."""
    stats = await store.stats()
    print(f"\nLedger {store.path}: {stats.events} events in all ({stats.size_bytes:,} bytes)")
    print("  this run, per agent:")
    for row in await store.aggregate("agent", start=start):
        print(
            f"    {row.group:<9} {row.events:>4} calls  {row.total_tokens:>8,} tokens  "
            f"${row.cost or 0:.6f}"
        )
    print("  per model:")
    for row in await store.aggregate("model", start=start):
        print(
            f"    {row.group or '-':<12} {row.events:>4} calls  {row.tokens_in:>8,} in  "
            f"{row.tokens_out:>7,} out  ${row.cost or 0:.6f}"
        )
    total = await store.summary(start=start)
    print(
        f"  total: {total.events} calls, {total.total_tokens:,} tokens, ${total.cost or 0:.6f}, "
        f"{total.unique_agents} agents"
    )


@click.command()
@click.option(
    "--agents", type=click.IntRange(min=1), default=4, show_default=True, help="Number of agents."
)
@click.option(
    "--calls", type=click.IntRange(min=1), default=5, show_default=True, help="Calls per agent."
)
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed.")
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("usagewarden-demo.db"),
    show_default=True,
    help="SQLite ledger file the demo records into.",
)
def demo(agents: int, calls: int, seed: int, db: Path) -> None:
    """Concurrent simulated agents sharing one limiter and one ledger."""
    asyncio.run(_demo(agents, calls, seed, db))
