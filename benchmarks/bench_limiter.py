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
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
Builder = Callable[[int | None, int], Contender]


@dataclass(frozen=True)
class Entry:
    label: str
    build: Builder
    is_async: bool = False


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


def _harness_builder() -> Builder:
    """An op that does nothing: what the shared harness itself costs per call."""

    def build(rpm: int | None, tpm: int) -> Contender:
        def op(key: str) -> bool:
            return True

        return Contender(op)

    return build


HARNESS = Entry("(harness only)", _harness_builder())


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


def _pyrate_builder(*, is_async: bool) -> Builder:
    from pyrate_limiter import (
        AbstractBucket,
        BucketFactory,
        Duration,
        InMemoryBucket,
        Limiter,
        MonotonicClock,
        Rate,
        RateItem,
    )

    class PerKeyFactory(BucketFactory):
        """One InMemoryBucket per key: pyrate's documented per-key routing."""

        def __init__(self, rates: list[Rate]) -> None:
            self.rates = rates
            self.clock = MonotonicClock()
            self.buckets: dict[str, AbstractBucket] = {}

        def wrap_item(self, name: str, weight: int = 1) -> RateItem:
            return RateItem(name, self.clock.now(), weight=weight)

        def get(self, item: RateItem) -> AbstractBucket:
            bucket = self.buckets.get(item.name)
            if bucket is None:
                bucket = self.buckets[item.name] = self.create(InMemoryBucket, self.rates)
            return bucket

    def make(limit: int) -> Limiter:
        return Limiter(PerKeyFactory([Rate(limit, Duration.MINUTE)]))

    # A pyrate bucket counts one weight against all of its rates, so RPM (weight 1) and
    # TPM (weight = tokens) need two limiters, each routing keys to their own buckets.
    def build(rpm: int | None, tpm: int) -> Contender:
        tpm_lim = make(tpm)
        rpm_lim = make(rpm) if rpm is not None else None
        limiters = [lim for lim in (tpm_lim, rpm_lim) if lim is not None]
        op: Op
        if is_async:
            tpm_acq = tpm_lim.try_acquire_async
            rpm_acq = rpm_lim.try_acquire_async if rpm_lim is not None else None

            async def op(key: str) -> object:
                if rpm_acq is not None and not await rpm_acq(key, 1):
                    return False
                return await tpm_acq(key, TOKENS)

        else:
            tpm_try = tpm_lim.try_acquire
            if rpm_lim is None:

                def op(key: str) -> object:
                    return tpm_try(key, TOKENS, blocking=False)

            else:
                rpm_try = rpm_lim.try_acquire

                def op(key: str) -> object:
                    return rpm_try(key, 1, blocking=False) and tpm_try(key, TOKENS, blocking=False)

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
                Entry("limits.aio sliding-window-counter", _limits_aio_builder(), True),
            ],
        ),
        (
            "pyrate-limiter",
            lambda: [
                Entry("pyrate-limiter InMemoryBucket", _pyrate_builder(is_async=False)),
                Entry("pyrate-limiter try_acquire_async", _pyrate_builder(is_async=True), True),
            ],
        ),
        (
            "aiolimiter",
            lambda: [
                Entry("aiolimiter TPM only (1 limiter)", _aiolimiter_builder(with_rpm=False), True),
                Entry("aiolimiter RPM+TPM (2 limiters)", _aiolimiter_builder(with_rpm=True), True),
            ],
        ),
    ]
    for package, make in candidates:
        try:
            entries = make()
        except ImportError as exc:
            notes.append(f"{package} not installed ({exc}); its rows are skipped")
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


def _time_sync(op: Op, chunks: Sequence[Sequence[str]]) -> tuple[list[int], int]:
    """Times each chunk; returns the times and how many calls were denied.

    Results are dropped as they come, as an application would drop them (keeping
    thousands of result objects alive would time the allocator, not the limiter).
    """
    times, denied = [], 0
    for chunk in chunks:
        t0 = time.perf_counter_ns()
        for key in chunk:
            if not op(key):
                denied += 1
        times.append(time.perf_counter_ns() - t0)
    return times, denied


async def _time_async(op: Op, chunks: Sequence[Sequence[str]]) -> tuple[list[int], int]:
    """Times each chunk of awaits (an await that returns is an admission)."""
    times = []
    for chunk in chunks:
        t0 = time.perf_counter_ns()
        for key in chunk:
            await op(key)
        times.append(time.perf_counter_ns() - t0)
    return times, 0


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
                times, sample_denied = loop.run_until_complete(_time_async(contender.op, blocks))
            else:
                if warmup:
                    for key in keys:
                        contender.op(key)
                gc.collect()
                gc.disable()
                start = time.perf_counter()
                times, sample_denied = _time_sync(contender.op, blocks)
            longest = max(longest, time.perf_counter() - start)
        finally:
            gc.enable()
            contender.close()
        if contender.verdict:
            denied += sample_denied
        samples.append(times)
    chunk_ns = [statistics.median(s[i] for s in samples) / size for i in range(chunks)]
    return Result(chunk_ns, denied, longest)


# --------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------


def fmt_ns(ns: float) -> str:
    return f"{ns:,.0f}" if ns >= 100 else f"{ns:.1f}"


def fmt_ratio(peer: float, ours: float) -> str:
    return f"{peer / ours:,.1f}x"


def split(results: dict[str, Result]) -> tuple[Result | None, dict[str, Result]]:
    """Our result (if measured) and the peers' results."""
    ours = next((r for label, r in results.items() if label.startswith(OURS)), None)
    return ours, {label: r for label, r in results.items() if not label.startswith(OURS)}


def _notes(res: Result) -> str:
    notes = []
    if res.denied:
        notes.append(f"!! {res.denied} calls denied")
    if res.max_sample_s > 60:
        notes.append(f"!! a sample took {res.max_sample_s:.0f} s (> 1 minute window)")
    return "  " + "; ".join(notes) if notes else ""


def print_table(title: str, results: dict[str, Result], skipped_ours: str | None) -> None:
    """One row per limiter: ns/call (per chunk when there are several) and peer/ours."""
    print(f"\n{title}")
    ours, _ = split(results)
    chunks = len(next(iter(results.values())).chunk_ns)
    width = max(len(label) for label in results) + 2
    if chunks == 1:
        head = f"{'ns/call':>10}{'peer/ours':>11}"
    else:
        head = "".join(f"{f'#{i + 1}':>10}" for i in range(chunks))
        head += f"{'max/min':>9}{f'#{chunks} peer/ours':>16}"
    print(f"  {'limiter':<{width}}{head}")
    for label, res in results.items():
        ratio = (
            "" if ours is None or res is ours else fmt_ratio(res.chunk_ns[-1], ours.chunk_ns[-1])
        )
        if chunks == 1:
            cells = f"{fmt_ns(res.ns):>10}{ratio:>11}"
        else:
            cells = "".join(f"{fmt_ns(ns):>10}" for ns in res.chunk_ns)
            cells += f"{max(res.chunk_ns) / min(res.chunk_ns):>9.2f}{ratio:>16}"
        print(f"  {label:<{width}}{cells}{_notes(res)}")
    if skipped_ours:
        print(f"  ({OURS} rows skipped: {skipped_ours})")


@dataclass
class Summary:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def check(self, target: str, value: str | None, ok: bool | None) -> None:
        """Print the verdict for one target under the current table, and keep it."""
        verdict = "SKIP" if ok is None else ("PASS" if ok else "MISS")
        value = value or "not measured"
        self.rows.append((verdict, target, value))
        print(f"  target {target}: {value}  -> {verdict}")

    def print(self) -> None:
        print("\nSummary")
        width = max(len(target) for _, target, _ in self.rows) + 2
        for verdict, target, value in self.rows:
            print(f"  {verdict:<5} {target:<{width}}{value}")


def check_try_targets(
    summary: Summary, case: str, results: dict[str, Result], harness: Result
) -> None:
    """The latency target is judged on a direct call from Python: ours minus the
    harness's own per-call cost (the wrapper every contender is called through)."""
    ours, peers = split(results)
    latency = f"{case} try_acquire <= {TARGET_TRY_NS:.0f} ns (direct call)"
    speedup = f"{case} >= {TARGET_SPEEDUP:.0f}x fastest peer"
    if ours is None:
        summary.check(latency, None, None)
        summary.check(speedup, None, None)
        return
    direct = ours.ns - harness.ns
    summary.check(
        latency,
        f"{fmt_ns(direct)} ns ({fmt_ns(ours.ns)} through the harness, which costs "
        f"{fmt_ns(harness.ns)})",
        direct <= TARGET_TRY_NS and not ours.denied,
    )
    if not peers:
        summary.check(speedup, "no peer measured", None)
        return
    fastest = min(peers, key=lambda label: peers[label].ns)
    ratio = peers[fastest].ns / ours.ns
    summary.check(
        speedup,
        f"{ratio:,.1f}x (fastest: {fastest}, {fmt_ns(peers[fastest].ns)} ns)",
        ratio >= TARGET_SPEEDUP,
    )


# --------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------


def load_ours() -> tuple[Any, str | None]:
    try:
        with warnings.catch_warnings():
            # A debug build warns on import; the header reports the build type instead.
            warnings.simplefilter("ignore", RuntimeWarning)
            import usagewarden as uw

        uw.RateLimiter, uw.RateLimits  # noqa: B018 - the API this script needs
    except (ImportError, AttributeError) as exc:
        return None, f"usagewarden is not importable ({type(exc).__name__}: {exc})"
    return uw, None


def describe_ours(uw: Any) -> str:
    """Version, build type and which compiled module was loaded (and when it was built)."""
    debug = getattr(uw, "DEBUG_BUILD", None)
    build = "build type unknown" if debug is None else "release build"
    if debug:
        build = "!! DEBUG build: figures are meaningless"
    path = getattr(getattr(uw, "_core", uw), "__file__", None) or "?"
    built = "?"
    if os.path.exists(path):
        built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(path)))
    return f"usagewarden {getattr(uw, '__version__', '?')} ({build}): {path}, built {built}"


def check_equivalence(entries: Sequence[Entry]) -> list[str]:
    """Each sync limiter set to 3 RPM, or to 5 calls' worth of TPM, must deny the next call."""
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


def run_in_loop(
    entries: Sequence[Entry], measure_one: Callable[[Entry, asyncio.AbstractEventLoop], Result]
) -> dict[str, Result]:
    """Measure every async contender inside one event loop, then shut the loop down."""
    loop = asyncio.new_event_loop()
    try:
        return {entry.label: measure_one(entry, loop) for entry in entries}
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0.05))
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (fewer calls/samples)")
    parser.add_argument("--repeats", type=int, help="samples per figure; the median is reported")
    args = parser.parse_args(argv)

    repeats = args.repeats or (5 if args.quick else 9)
    calls = 1_000 if args.quick else 5_000  # per sample, cases 1 and 3
    fill_calls, fill_chunks = 9_000, 9
    fill_repeats = args.repeats or (3 if args.quick else 5)

    uw, skipped_ours = load_ours()
    sync_entries, async_entries, notes = collect_entries(uw)

    print("usagewarden rate limiter benchmark" + (" (--quick)" if args.quick else ""))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"  Python {platform.python_version()} ({platform.python_implementation()}) "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load}"
    )
    if uw is None:
        print(f"  !! {skipped_ours}: its rows and the targets are skipped")
    else:
        print(f"  {describe_ours(uw)}")
    for note in notes:
        print(f"  !! {note}")
    print(
        f"  median of {repeats} samples ({fill_repeats} in case 4), fresh limiters per sample, "
        f"{TOKENS} tokens per call; peer/ours > 1 means usagewarden is faster"
    )
    problems = check_equivalence(sync_entries)
    print(
        f"  config check (3 RPM, or {5 * TOKENS:,} TPM, denies the 4th / 6th call): "
        + ("OK" if not problems else "FAILED: " + "; ".join(problems))
    )

    one_key = ["key-00000"]
    many_keys = [f"key-{i:05d}" for i in range(N_KEYS)]
    both = (HUGE_RPM, HUGE_TPM)
    summary = Summary()

    harness = measure(HARNESS, both, one_key, calls, repeats)
    results = {e.label: measure(e, both, one_key, calls, repeats) for e in sync_entries}
    print_table(
        f"[1] try_acquire, RPM {HUGE_RPM:,} + TPM {HUGE_TPM:,} (all admitted), one key\n"
        f"    {calls:,} calls per sample; a sample ends with {calls * TOKENS:,} tokens "
        "in the window",
        results,
        skipped_ours,
    )
    print(f"  (the harness alone: {fmt_ns(harness.ns)} ns per call)")
    check_try_targets(summary, "[1]", results, harness)

    harness = measure(HARNESS, both, many_keys, N_KEYS, repeats)
    results = {e.label: measure(e, both, many_keys, N_KEYS, repeats) for e in sync_entries}
    print_table(
        f"[2] try_acquire, same limits, cycling through {N_KEYS:,} keys\n"
        f"    {N_KEYS:,} calls per sample (one per key) after one untimed call per key",
        results,
        skipped_ours,
    )
    print(f"  (the harness alone: {fmt_ns(harness.ns)} ns per call)")
    check_try_targets(summary, "[2]", results, harness)

    results = run_in_loop(
        async_entries, lambda e, loop: measure(e, both, one_key, calls, repeats, loop=loop)
    )
    print_table(
        "[3] await acquire when admitted, same limits, one key, one asyncio event loop\n"
        f"    {calls:,} awaits per sample",
        results,
        skipped_ours,
    )
    ours, _ = split(results)
    target = f"[3] await acquire <= {TARGET_ACQUIRE_NS / 1000:.0f} us"
    if ours is None:
        summary.check(target, None, None)
    else:
        summary.check(target, f"{fmt_ns(ours.ns)} ns", ours.ns <= TARGET_ACQUIRE_NS)

    per_chunk = fill_calls // fill_chunks
    results = {
        e.label: measure(
            e, (None, SPEC_TPM), one_key, fill_calls, fill_repeats, chunks=fill_chunks, warmup=False
        )
        for e in sync_entries
    }
    print_table(
        f"[4] try_acquire, TPM {SPEC_TPM:,}/minute only, {fill_calls:,} calls on one key "
        "within a minute\n"
        f"    ns/call per block of {per_chunk:,} calls; block #i ends with "
        f"{per_chunk * TOKENS:,} x i tokens in the window (#{fill_chunks}: "
        f"{fill_calls * TOKENS:,})",
        results,
        skipped_ours,
    )
    ours, _ = split(results)
    target = f"[4] flat per-call cost, slowest/fastest block <= {TARGET_FLAT}"
    if ours is None:
        summary.check(target, None, None)
    else:
        lo, hi = min(ours.chunk_ns), max(ours.chunk_ns)
        ok = hi / lo <= TARGET_FLAT and not ours.denied
        summary.check(target, f"{hi / lo:.2f} ({fmt_ns(lo)}..{fmt_ns(hi)} ns)", ok)

    summary.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
