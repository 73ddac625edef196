"""Benchmark usagewarden's RateLimiter against pure-Python rate limiters, in one run.

Peers: ``limits`` (moving window and sliding-window counter, in-memory storage, sync and
asyncio), ``pyrate-limiter`` (``InMemoryBucket``, sync and ``try_acquire_async``) and
``aiolimiter`` (``AsyncLimiter``). Every figure is nanoseconds per call, the median over
several samples; each sample uses a freshly built limiter and times a tight loop of calls
with ``time.perf_counter_ns`` (the garbage collector is paused while timing, as ``timeit``
does). ``peer/ours`` > 1 means usagewarden is faster.

Cases:

1. ``try_acquire`` with RPM+TPM limits on one key (limits large enough to admit everything).
2. The same, cycling through 10,000 keys.
3. ``await acquire`` when admitted, inside one asyncio event loop.
4. TPM 2,000,000/minute, 200 tokens per call, 9,000 calls within one minute on one key:
   ns/call for each block of 1,000 calls while the window fills to 1.8M tokens.

Run it from the repository root, after building the extension into the environment::

    pip install -e '.[bench]'          # or: pip install limits pyrate-limiter aiolimiter
    python benchmarks/bench_limiter.py            # full run, a few minutes
    python benchmarks/bench_limiter.py --quick    # short run

If ``usagewarden`` cannot be imported, its rows are skipped (and said so) and the peers
are still measured. A missing peer package is skipped the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

TOKENS = 200  # tokens per call, as input tokens (ours) / cost (limits) / weight (pyrate)
HUGE_RPM = 1_000_000_000
HUGE_TPM = 10**15
SPEC_TPM = 2_000_000  # case 4
N_KEYS = 10_000
OURS = "usagewarden"

TARGET_TRY_NS = 300.0
TARGET_SPEEDUP = 30.0
TARGET_ACQUIRE_NS = 2_000.0
TARGET_FLAT = 1.5  # slowest / fastest chunk in case 4


# --------------------------------------------------------------------------------------
# Contenders: one factory per limiter, building a fresh limiter with the given limits.
# --------------------------------------------------------------------------------------

Op = Callable[[str], Any]  # one logical call for one key; returns a verdict or awaitable


@dataclass
class Contender:
    op: Op
    close: Callable[[], None] = lambda: None
    # False when the API has no admitted/denied verdict (it only ever waits).
    verdict: bool = True


# (requests_per_minute or None, tokens_per_minute) -> Contender
Builder = Callable[[Optional[int], int], Contender]


@dataclass(frozen=True)
class Entry:
    label: str
    build: Builder
    is_async: bool = False

    @property
    def ours(self) -> bool:
        return self.label.startswith(OURS)


def _ours_builder(uw: Any, *, is_async: bool) -> Builder:
    def build(rpm: int | None, tpm: int) -> Contender:
        kwargs = {"total_tokens_per_minute": tpm}
        if rpm is not None:
            kwargs["requests_per_minute"] = rpm
        limiter = uw.RateLimiter(uw.RateLimits(**kwargs))
        call = limiter.acquire if is_async else limiter.try_acquire

        def op(key: str) -> Any:
            return call(key, input_tokens=TOKENS)

        # ``await acquire`` returns a Reservation, not a verdict.
        return Contender(op, verdict=not is_async)

    return build


def _limits_builder(strategy: str) -> Builder:
    from limits import RateLimitItemPerMinute
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

    cls = MovingWindowRateLimiter if strategy == "moving" else SlidingWindowCounterRateLimiter

    def build(rpm: int | None, tpm: int) -> Contender:
        storage = MemoryStorage()
        hit = cls(storage).hit
        tpm_item = RateLimitItemPerMinute(tpm, namespace="tpm")
        if rpm is None:

            def op(key: str) -> bool:
                return hit(tpm_item, key, cost=TOKENS)

        else:
            rpm_item = RateLimitItemPerMinute(rpm, namespace="rpm")

            def op(key: str) -> bool:
                return hit(rpm_item, key) and hit(tpm_item, key, cost=TOKENS)

        return Contender(op, close=lambda: storage.timer.cancel())

    return build


def _limits_aio_builder() -> Builder:
    from limits import RateLimitItemPerMinute
    from limits.aio.storage import MemoryStorage
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

    def build(rpm: int | None, tpm: int) -> Contender:
        storage = MemoryStorage()
        hit = SlidingWindowCounterRateLimiter(storage).hit
        tpm_item = RateLimitItemPerMinute(tpm, namespace="tpm")
        rpm_item = RateLimitItemPerMinute(rpm or HUGE_RPM, namespace="rpm")

        async def op(key: str) -> bool:
            return await hit(rpm_item, key) and await hit(tpm_item, key, cost=TOKENS)

        def close() -> None:
            if storage.timer is not None:
                storage.timer.cancel()

        return Contender(op, close=close)

    return build


def _pyrate_limiter(rate_limit: int) -> Any:
    """A pyrate Limiter with one InMemoryBucket per key (its documented per-key routing)."""
    from pyrate_limiter import (
        BucketFactory,
        Duration,
        InMemoryBucket,
        Limiter,
        MonotonicClock,
        Rate,
        RateItem,
    )

    class PerKeyFactory(BucketFactory):
        def __init__(self, rates: list[Rate]) -> None:
            self.rates = rates
            self.clock = MonotonicClock()
            self.buckets: dict[str, InMemoryBucket] = {}

        def wrap_item(self, name: str, weight: int = 1) -> RateItem:
            return RateItem(name, self.clock.now(), weight=weight)

        def get(self, item: RateItem) -> InMemoryBucket:
            bucket = self.buckets.get(item.name)
            if bucket is None:
                bucket = self.buckets[item.name] = self.create(InMemoryBucket, self.rates)
            return bucket

    return Limiter(PerKeyFactory([Rate(rate_limit, Duration.MINUTE)]))


def _pyrate_builder(*, is_async: bool) -> Builder:
    # A pyrate bucket counts one weight against all of its rates, so RPM (weight 1) and
    # TPM (weight = tokens) need two limiters, each routing keys to their own buckets.
    def build(rpm: int | None, tpm: int) -> Contender:
        tpm_lim = _pyrate_limiter(tpm)
        rpm_lim = _pyrate_limiter(rpm) if rpm is not None else None
        limiters = [lim for lim in (tpm_lim, rpm_lim) if lim is not None]
        op: Op
        if is_async:
            tpm_acq = tpm_lim.try_acquire_async
            rpm_acq = rpm_lim.try_acquire_async if rpm_lim is not None else None

            async def op(key: str) -> bool:
                if rpm_acq is not None and not await rpm_acq(key, 1):
                    return False
                return bool(await tpm_acq(key, TOKENS))

        else:
            tpm_try = tpm_lim.try_acquire
            if rpm_lim is None:

                def op(key: str) -> bool:
                    return tpm_try(key, TOKENS, blocking=False)

            else:
                rpm_try = rpm_lim.try_acquire

                def op(key: str) -> bool:
                    return rpm_try(key, 1, blocking=False) and tpm_try(
                        key, TOKENS, blocking=False
                    )

        def close() -> None:
            for lim in limiters:
                lim.close()

        return Contender(op, close=close)

    return build


def _aiolimiter_builder(*, with_rpm: bool) -> Builder:
    from aiolimiter import AsyncLimiter

    # A leaky bucket with no keys: the key is ignored.
    def build(rpm: int | None, tpm: int) -> Contender:
        tpm_acq = AsyncLimiter(tpm, 60).acquire
        if not with_rpm:

            def op(key: str) -> Awaitable[None]:
                return tpm_acq(TOKENS)

            return Contender(op, verdict=False)

        rpm_acq = AsyncLimiter(rpm or HUGE_RPM, 60).acquire

        async def op2(key: str) -> None:
            await rpm_acq(1)
            await tpm_acq(TOKENS)

        return Contender(op2, verdict=False)

    return build


def collect_entries(uw: Any) -> tuple[list[Entry], list[Entry], list[str]]:
    """The sync and async contenders that are importable, and notes on the missing ones."""
    sync: list[Entry] = []
    aio: list[Entry] = []
    notes: list[str] = []
    if uw is not None:
        sync.append(Entry(f"{OURS} try_acquire", _ours_builder(uw, is_async=False)))
        aio.append(Entry(f"{OURS} await acquire", _ours_builder(uw, is_async=True), True))

    candidates: list[tuple[str, Callable[[], list[Entry]]]] = [
        (
            "limits",
            lambda: [
                Entry("limits moving-window", _limits_builder("moving")),
                Entry("limits sliding-window-counter", _limits_builder("counter")),
            ],
        ),
        (
            "pyrate-limiter",
            lambda: [Entry("pyrate-limiter InMemoryBucket", _pyrate_builder(is_async=False))],
        ),
        (
            "aiolimiter",
            lambda: [
                Entry("aiolimiter TPM only (1 limiter)", _aiolimiter_builder(with_rpm=False), True),
                Entry("aiolimiter RPM+TPM (2 limiters)", _aiolimiter_builder(with_rpm=True), True),
            ],
        ),
        (
            "pyrate-limiter",
            lambda: [
                Entry("pyrate-limiter try_acquire_async", _pyrate_builder(is_async=True), True)
            ],
        ),
        (
            "limits",
            lambda: [Entry("limits.aio sliding-window-counter", _limits_aio_builder(), True)],
        ),
    ]
    for package, make in candidates:
        try:
            entries = make()
        except ImportError as exc:
            note = f"{package} not installed ({exc}); its rows are skipped"
            if note not in notes:
                notes.append(note)
            continue
        for entry in entries:
            (aio if entry.is_async else sync).append(entry)
    return sync, aio, notes


# --------------------------------------------------------------------------------------
# The timing harness (shared by every case).
# --------------------------------------------------------------------------------------


@dataclass
class Result:
    chunk_ns: list[float]  # median ns/call per chunk over the samples
    denied: int = 0
    max_sample_s: float = 0.0  # longest sample, wall clock

    @property
    def ns(self) -> float:
        """ns/call over all chunks."""
        return statistics.fmean(self.chunk_ns)


def _time_sync(op: Op, chunks: Sequence[Sequence[str]]) -> tuple[list[int], list[list[Any]]]:
    times, results = [], []
    for chunk in chunks:
        t0 = time.perf_counter_ns()
        out = [op(key) for key in chunk]
        times.append(time.perf_counter_ns() - t0)
        results.append(out)
    return times, results


async def _time_async(
    op: Op, chunks: Sequence[Sequence[str]]
) -> tuple[list[int], list[list[Any]]]:
    times, results = [], []
    for chunk in chunks:
        t0 = time.perf_counter_ns()
        out = [await op(key) for key in chunk]
        times.append(time.perf_counter_ns() - t0)
        results.append(out)
    return times, results


async def _warm_async(op: Op, keys: Sequence[str]) -> None:
    for key in keys:
        await op(key)


def measure(
    entry: Entry,
    limits: tuple[int | None, int],
    keys: Sequence[str],
    calls: int,
    repeats: int,
    *,
    chunks: int = 1,
    warmup: bool = True,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Result:
    """Time ``calls`` calls cycling through ``keys``, split into ``chunks`` equal blocks.

    Each of ``repeats`` samples builds a fresh limiter, optionally touches every key once
    (untimed, so per-key state exists), then times the blocks back to back. Async
    contenders run inside ``loop``; the timing happens within the loop, so only the
    awaits are measured.
    """
    seq = [keys[i % len(keys)] for i in range(calls)]
    size = calls // chunks
    blocks = [seq[i * size : (i + 1) * size] for i in range(chunks)]
    samples: list[list[int]] = []
    denied = 0
    longest = 0.0
    for _ in range(repeats):
        contender = entry.build(*limits)
        try:
            if entry.is_async:
                assert loop is not None
                if warmup:
                    loop.run_until_complete(_warm_async(contender.op, keys))
                gc.collect()
                gc.disable()
                start = time.perf_counter()
                times, results = loop.run_until_complete(_time_async(contender.op, blocks))
            else:
                if warmup:
                    for key in keys:
                        contender.op(key)
                gc.collect()
                gc.disable()
                start = time.perf_counter()
                times, results = _time_sync(contender.op, blocks)
            longest = max(longest, time.perf_counter() - start)
        finally:
            gc.enable()
            contender.close()
        if contender.verdict:
            denied += sum(1 for block in results for ok in block if not ok)
        samples.append(times)
        del results
    chunk_ns = [statistics.median(s[i] for s in samples) / size for i in range(chunks)]
    return Result(chunk_ns, denied, longest)


# --------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------


def fmt_ns(ns: float) -> str:
    return f"{ns:,.0f}" if ns >= 100 else f"{ns:.1f}"


def fmt_ratio(peer: float, ours: float | None) -> str:
    return "-" if ours is None else f"{peer / ours:,.1f}x"


def print_case(title: str, results: dict[str, Result], skipped_ours: str | None) -> None:
    print(f"\n{title}")
    ours = next((r.ns for label, r in results.items() if label.startswith(OURS)), None)
    width = max(len(label) for label in results) + 2
    print(f"  {'limiter':<{width}}{'ns/call':>12}{'peer/ours':>12}")
    for label, res in results.items():
        ratio = "" if label.startswith(OURS) else fmt_ratio(res.ns, ours)
        note = f"  !! {res.denied} calls denied" if res.denied else ""
        print(f"  {label:<{width}}{fmt_ns(res.ns):>12}{ratio:>12}{note}")
    if skipped_ours:
        print(f"  ({OURS}: skipped - {skipped_ours})")


def print_fill_case(title: str, results: dict[str, Result], skipped_ours: str | None) -> None:
    print(f"\n{title}")
    chunks = len(next(iter(results.values())).chunk_ns)
    width = max(len(label) for label in results) + 2
    head = "".join(f"{f'#{i + 1}':>9}" for i in range(chunks))
    print(f"  {'limiter':<{width}}{head}{'max/min':>9}{'#9/ours':>9}")
    ours = next((r for label, r in results.items() if label.startswith(OURS)), None)
    for label, res in results.items():
        cells = "".join(f"{fmt_ns(ns):>9}" for ns in res.chunk_ns)
        flat = max(res.chunk_ns) / min(res.chunk_ns)
        last = "" if res is ours else fmt_ratio(res.chunk_ns[-1], ours and ours.chunk_ns[-1])
        notes = []
        if res.denied:
            notes.append(f"!! {res.denied} calls denied")
        if res.max_sample_s > 60:
            notes.append(f"!! a sample took {res.max_sample_s:.0f} s > 1 min")
        print(f"  {label:<{width}}{cells}{flat:>9.2f}{last:>9}  {'; '.join(notes)}".rstrip())
    if skipped_ours:
        print(f"  ({OURS}: skipped - {skipped_ours})")


@dataclass
class Summary:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, target: str, value: str, ok: bool | None) -> None:
        verdict = "SKIP" if ok is None else ("PASS" if ok else "MISS")
        self.rows.append((verdict, target, value))

    def print(self) -> None:
        print("\nSummary")
        width = max(len(t) for _, t, _ in self.rows) + 2
        for verdict, target, value in self.rows:
            print(f"  {verdict:<5} {target:<{width}}{value}")


def try_targets(summary: Summary, case: str, results: dict[str, Result]) -> None:
    ours = next((r.ns for label, r in results.items() if label.startswith(OURS)), None)
    peers = {label: r.ns for label, r in results.items() if not label.startswith(OURS)}
    if ours is None:
        summary.add(f"{case}: try_acquire <= {TARGET_TRY_NS:.0f} ns", "not measured", None)
        summary.add(f"{case}: >= {TARGET_SPEEDUP:.0f}x fastest peer", "not measured", None)
        return
    summary.add(
        f"{case}: try_acquire <= {TARGET_TRY_NS:.0f} ns", f"{ours:.0f} ns", ours <= TARGET_TRY_NS
    )
    if not peers:
        summary.add(f"{case}: >= {TARGET_SPEEDUP:.0f}x fastest peer", "no peers", None)
        return
    fastest = min(peers, key=peers.__getitem__)
    speedup = peers[fastest] / ours
    summary.add(
        f"{case}: >= {TARGET_SPEEDUP:.0f}x fastest peer",
        f"{speedup:.1f}x ({fastest}, {peers[fastest]:,.0f} ns)",
        speedup >= TARGET_SPEEDUP,
    )


# --------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------


def load_ours() -> tuple[Any, str | None]:
    try:
        import usagewarden as uw

        uw.RateLimiter, uw.RateLimits  # noqa: B018 - the API this script needs
    except (ImportError, AttributeError) as exc:
        return None, f"usagewarden is not importable here ({type(exc).__name__}: {exc})"
    return uw, None


def check_equivalence(entries: Sequence[Entry]) -> list[str]:
    """Each sync limiter, set to 3 RPM or 1,000 TPM, must deny the 4th or 6th call."""
    problems = []
    for entry in entries:
        for limits, admitted in (((3, HUGE_TPM), 3), ((None, 5 * TOKENS), 5)):
            contender = entry.build(*limits)
            try:
                got = [bool(contender.op("check")) for _ in range(admitted + 1)]
            finally:
                contender.close()
            if got != [True] * admitted + [False]:
                problems.append(f"{entry.label} with {limits}: admitted pattern {got}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (fewer calls/samples)")
    parser.add_argument("--repeats", type=int, help="samples per figure (median is reported)")
    args = parser.parse_args(argv)

    repeats = args.repeats or (5 if args.quick else 7)
    calls = 1_000 if args.quick else 5_000  # cases 1 and 3 (case 2: one pass over the keys)
    fill_calls, fill_chunks = 9_000, 9
    fill_repeats = args.repeats or (1 if args.quick else 5)

    uw, skipped_ours = load_ours()
    sync_entries, async_entries, notes = collect_entries(uw)

    print("usagewarden rate limiter benchmark" + (" (--quick)" if args.quick else ""))
    print(
        f"  Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"load avg {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if uw is not None:
        version = getattr(uw, "__version__", "?")
        debug = getattr(getattr(uw, "_core", None), "DEBUG_BUILD", None)
        build = {True: "DEBUG build - figures are not meaningful", False: "release build"}
        print(f"  usagewarden {version} ({build.get(debug, 'build type unknown')})")
    else:
        print(f"  !! {skipped_ours}: skipping its rows and the targets")
    for note in notes:
        print(f"  !! {note}")
    print(
        f"  median of {repeats} samples (case 4: {fill_repeats}), fresh limiter per sample, "
        f"{TOKENS} tokens per call; peer/ours > 1 means usagewarden is faster"
    )

    problems = check_equivalence(sync_entries)
    verdict = "OK" if not problems else "FAILED: " + "; ".join(problems)
    print(f"  config check (3 RPM / {5 * TOKENS} TPM deny the 4th / 6th call): {verdict}")

    one_key = ["key-00000"]
    many_keys = [f"key-{i:05d}" for i in range(N_KEYS)]
    both = (HUGE_RPM, HUGE_TPM)
    summary = Summary()

    results = {e.label: measure(e, both, one_key, calls, repeats) for e in sync_entries}
    print_case(
        f"[1] try_acquire, RPM {HUGE_RPM:,} + TPM {HUGE_TPM:,}, one key "
        f"({calls:,} calls/sample; the window then holds up to {calls * TOKENS:,} tokens)",
        results,
        skipped_ours,
    )
    try_targets(summary, "[1] one key", results)

    results = {e.label: measure(e, both, many_keys, N_KEYS, repeats) for e in sync_entries}
    print_case(
        f"[2] try_acquire, same limits, cycling through {N_KEYS:,} keys "
        f"({N_KEYS:,} calls/sample after one untimed call per key)",
        results,
        skipped_ours,
    )
    try_targets(summary, f"[2] {N_KEYS:,} keys", results)

    loop = asyncio.new_event_loop()
    try:
        results = {
            e.label: measure(e, both, one_key, calls, repeats, loop=loop) for e in async_entries
        }
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0.05))
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    print_case(
        f"[3] await acquire when admitted, RPM+TPM, one key, one asyncio loop "
        f"({calls:,} awaits/sample)",
        results,
        skipped_ours,
    )
    ours = next((r.ns for label, r in results.items() if label.startswith(OURS)), None)
    summary.add(
        f"[3] await acquire <= {TARGET_ACQUIRE_NS / 1000:.0f} us",
        "not measured" if ours is None else f"{ours:,.0f} ns",
        None if ours is None else ours <= TARGET_ACQUIRE_NS,
    )

    per_chunk = fill_calls // fill_chunks
    fill = (None, SPEC_TPM)
    results = {
        e.label: measure(
            e, fill, one_key, fill_calls, fill_repeats, chunks=fill_chunks, warmup=False
        )
        for e in sync_entries
    }
    print_fill_case(
        f"[4] TPM {SPEC_TPM:,}/minute, {TOKENS} tokens/call, {fill_calls:,} calls on one key "
        f"within a minute:\n    ns/call per block of {per_chunk:,} calls; block #i ends with "
        f"{per_chunk * TOKENS:,} x i tokens in the window (#9: {fill_calls * TOKENS:,})",
        results,
        skipped_ours,
    )
    ours_fill = next((r for label, r in results.items() if label.startswith(OURS)), None)
    if ours_fill is None:
        summary.add(f"[4] flat per-call cost (max/min <= {TARGET_FLAT})", "not measured", None)
    else:
        flat = max(ours_fill.chunk_ns) / min(ours_fill.chunk_ns)
        summary.add(
            f"[4] flat per-call cost (max/min <= {TARGET_FLAT})",
            f"{flat:.2f} ({fmt_ns(min(ours_fill.chunk_ns))}..{fmt_ns(max(ours_fill.chunk_ns))}"
            " ns)",
            flat <= TARGET_FLAT and not ours_fill.denied,
        )

    summary.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
