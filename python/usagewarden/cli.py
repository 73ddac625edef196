"""The ``usagewarden`` command line."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ._core import RateLimiter, RateLimits, Usage


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


async def _agent(
    name: str,
    limiter: RateLimiter,
    calls: int,
    rng: random.Random,
    report: _DemoReport,
    started: float,
) -> None:
    for n in range(calls):
        prompt = rng.randint(200, 1_200)
        max_output = 400
        asked = time.monotonic()
        reservation = await limiter.acquire(
            ("all-agents", name), input_tokens=prompt, output_tokens=max_output
        )
        waited = time.monotonic() - asked
        await asyncio.sleep(rng.uniform(0.02, 0.08))  # the simulated model call
        output = rng.randint(20, max_output)
        reservation.settle(output_tokens=output)
        record = _CallRecord(name, n + 1, prompt + max_output, prompt + output, waited)
        report.calls.append(record)
        status = f"waited {waited * 1000:6.0f} ms" if waited >= 0.001 else "admitted at once"
        print(
            f"[{time.monotonic() - started:6.2f}s] {name:<8} call {n + 1:>2}: "
            f"estimate {record.estimate:>5} tok, used {record.actual:>5} tok, {status}"
        )


async def _demo(agents: int, calls: int, seed: int) -> _DemoReport:
    shared = RateLimits(requests_per_second=6, total_tokens_per_second=8_000)
    # Each agent also has its own, tighter per-second request limit.
    per_agent = {f"agent-{i}": RateLimits(requests_per_second=2) for i in range(agents)}
    limiter = RateLimiter(shared, per_key=per_agent)
    rng = random.Random(seed)
    report = _DemoReport()
    started = time.monotonic()
    print(
        f"{agents} agents x {calls} calls sharing one limiter: "
        "6 requests/s and 8,000 tokens/s in all, 2 requests/s per agent\n"
    )
    await asyncio.gather(
        *(
            _agent(f"agent-{i}", limiter, calls, random.Random(rng.random()), report, started)
            for i in range(agents)
        )
    )
    _print_summary(report, limiter.usage("all-agents"), time.monotonic() - started)
    return report


def _print_summary(report: _DemoReport, in_window: Usage, elapsed: float) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="usagewarden", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="concurrent simulated agents sharing one rate limiter")
    demo.add_argument("--agents", type=int, default=4, help="number of agents (default 4)")
    demo.add_argument("--calls", type=int, default=5, help="calls per agent (default 5)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.agents < 1 or args.calls < 1:
            parser.error("--agents and --calls must be at least 1")
        asyncio.run(_demo(args.agents, args.calls, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
