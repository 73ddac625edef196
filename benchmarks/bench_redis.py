"""Benchmark usagewarden's RedisRateLimiter against pure-Python Redis limiters, in one run.

One throwaway ``redis-server`` (127.0.0.1, a free port, no persistence) serves every
contender. Figures are microseconds per call, the median of several samples, each sample
a tight loop of calls timed with ``time.perf_counter_ns`` (the garbage collector paused).
``peer/ours`` > 1 means usagewarden is faster.

Contenders, each admitting one request with an RPM limit and a TPM limit (200 tokens):

* ``PING``: one PING over the RedisRateLimiter's own connection, called from Python the
  same way as ``try_acquire`` (the round-trip floor).
* ``usagewarden``: ``RedisRateLimiter.try_acquire`` (one FCALL of its Redis Function checks
  and records both).
* ``limits`` moving window and sliding-window counter on its Redis storage (redis-py):
  an RPM ``hit`` and a TPM ``hit`` of cost 200.
* ``throttled-py`` sliding window on its Redis store (redis-py): an RPM ``limit`` and a
  TPM ``limit`` of cost 200.

Inside Redis: the server's own time per call (``INFO commandstats``) of a PING, of a
trivial Redis Function (``return 1``) and of the limiter's function for one ``try_acquire``:
what the script costs over the round trip.

Cases: 1 key; 10,000 keys in turn; ``await acquire`` (ours: admitted at once); the window
filling at 2,000,000 TPM (200 tokens a call, 9,000 calls within a minute, per block of
1,000 calls); 4 processes in parallel on one key (aggregate admissions per second).

Lease mode (``lease=uw.Lease(fraction=1e-6, seconds=1)`` on the same huge limits: a slice
holds 1,000 requests, so one round trip in 1,000 calls takes the next): ``try_acquire``
RPM + TPM amortised per call beside exact mode and the in-process ``RateLimiter``; and
4 processes in parallel on one key, lease mode against exact mode (admissions per second).

Run from the repository root, after ``pip install -e '.[bench]'`` and a release build
(``maturin develop --release``)::

    python benchmarks/bench_redis.py            # a few minutes
    python benchmarks/bench_redis.py --quick
    python benchmarks/bench_redis.py --lease    # only the lease-mode cases
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

TOKENS = 200
HUGE_RPM = 1_000_000_000
HUGE_TPM = 10**15
FILL_TPM = 2_000_000
N_KEYS = 10_000
TARGET_PING_RATIO = 1.3
TARGET_SPEEDUP = 4.0
LEASE_FRACTION = 1e-6
TARGET_LEASE_US = 1.0
TARGET_LEASE_PARALLEL = 10.0

Op = Callable[[str], Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (Debian: apt-get install -y redis-server)")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit("redis-server did not start")
        time.sleep(0.01)
    return server, f"redis://127.0.0.1:{port}/0"


class RawRedis:
    """A plain socket to the server, for server-side statistics (no Python Redis client)."""

    def __init__(self, url: str) -> None:
        host, port = url.split("//")[1].split("/")[0].split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.reader = self.sock.makefile("rb")

    def command(self, *args: str) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self.read()

    def read(self) -> Any:
        line = self.reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.reader.read(size + 2)[:-2]
        if kind == b"-":
            raise RuntimeError(rest.decode())
        return rest

    def usec_per_call(self, command: str) -> float:
        stats = self.command("INFO", "commandstats").decode()
        for line in stats.splitlines():
            if line.startswith(f"cmdstat_{command}:"):
                return float(line.split("usec_per_call=")[1].split(",")[0])
        return float("nan")


def server_side(url: str, calls: int, samples: int) -> dict[str, float]:
    """Microseconds inside Redis per call (INFO commandstats; medians of samples)."""
    raw = RawRedis(url)
    raw.command("FUNCTION", "LOAD", "REPLACE",
                "#!lua name=bench_trivial\nredis.register_function('bench_trivial', "
                "function() return 1 end)")  # fmt: skip
    op = ours(url, HUGE_RPM, HUGE_TPM, f"server{time.perf_counter_ns()}")
    op("k")
    figures: dict[str, list[float]] = {"PING": [], "trivial function": [], "usagewarden": []}
    for _ in range(samples):
        for name, command, run in (
            ("PING", "ping", lambda: raw.command("PING")),
            ("trivial function", "fcall", lambda: raw.command("FCALL", "bench_trivial", "0")),
            ("usagewarden", "fcall", lambda: op("k")),
        ):
            raw.command("CONFIG", "RESETSTAT")
            for _ in range(calls):
                run()
            figures[name].append(raw.usec_per_call(command))
    return {name: statistics.median(v) for name, v in figures.items()}


# ----------------------------------------------------------------------------------------
# Contenders: a factory builds a fresh limiter and returns one call for one key.
# ----------------------------------------------------------------------------------------


def ours(url: str, rpm: int, tpm: int, prefix: str) -> Op:
    import usagewarden as uw

    limiter = uw.RedisRateLimiter(
        uw.RateLimits(requests_per_minute=rpm, total_tokens_per_minute=tpm), url, prefix=prefix
    )
    return lambda key: limiter.try_acquire(key, input_tokens=TOKENS)


def ours_leased(url: str, rpm: int, tpm: int, prefix: str) -> Op:
    import usagewarden as uw

    limiter = uw.RedisRateLimiter(
        uw.RateLimits(requests_per_minute=rpm, total_tokens_per_minute=tpm),
        url,
        prefix=prefix,
        lease=uw.Lease(fraction=LEASE_FRACTION, seconds=1.0),
    )
    return lambda key: limiter.try_acquire(key, input_tokens=TOKENS)


def in_process(url: str, rpm: int, tpm: int, prefix: str) -> Op:
    import usagewarden as uw

    limiter = uw.RateLimiter(uw.RateLimits(requests_per_minute=rpm, total_tokens_per_minute=tpm))
    return lambda key: limiter.try_acquire(key, input_tokens=TOKENS)


LEASE_CONTENDERS: dict[str, Callable[[str, int, int, str], Op]] = {
    "usagewarden": ours,
    "usagewarden lease": ours_leased,
    "in-process RateLimiter": in_process,
}


def ping(url: str, rpm: int, tpm: int, prefix: str) -> Op:
    import usagewarden as uw

    limiter = uw.RedisRateLimiter(uw.RateLimits(requests_per_minute=rpm), url, prefix=prefix)
    return lambda key: limiter._ping()


def limits_peer(strategy: str) -> Callable[[str, int, int, str], Op]:
    def make(url: str, rpm: int, tpm: int, prefix: str) -> Op:
        import limits
        import limits.storage

        storage = limits.storage.storage_from_string(url, key_prefix=prefix)
        limiter = getattr(limits.strategies, strategy)(storage)
        per_minute = limits.RateLimitItemPerMinute(rpm)
        tokens = limits.RateLimitItemPerMinute(tpm)

        def call(key: str) -> bool:
            return limiter.hit(per_minute, key) and limiter.hit(tokens, key, cost=TOKENS)

        return call

    return make


def throttled_peer(url: str, rpm: int, tpm: int, prefix: str) -> Op:
    from throttled import RedisStore, Throttled, per_min

    store = RedisStore(server=url)
    requests = Throttled(using="sliding_window", quota=per_min(rpm), store=store,
                         key_prefix=prefix + "r")  # fmt: skip
    tokens = Throttled(using="sliding_window", quota=per_min(tpm), store=store,
                       key_prefix=prefix + "t")  # fmt: skip

    def call(key: str) -> bool:
        return not requests.limit(key).limited and not tokens.limit(key, cost=TOKENS).limited

    return call


CONTENDERS: dict[str, Callable[[str, int, int, str], Op]] = {
    "PING (floor)": ping,
    "usagewarden": ours,
    "limits moving window": limits_peer("MovingWindowRateLimiter"),
    "limits sliding counter": limits_peer("SlidingWindowCounterRateLimiter"),
    "throttled-py sliding": throttled_peer,
}


def timed_both(op: Op, keys: list[str], calls: int) -> tuple[float, float]:
    """Microseconds per call over one tight loop: wall time, and the CPU time of the
    whole process (every thread, so work handed to the client's background thread
    counts; another load on a shared machine stretches it far less than wall time)."""
    gc.disable()
    try:
        start, cpu = time.perf_counter_ns(), time.process_time_ns()
        n = len(keys)
        for i in range(calls):
            op(keys[i % n])
        per_call = 1_000 * calls
        return (
            (time.perf_counter_ns() - start) / per_call,
            (time.process_time_ns() - cpu) / per_call,
        )
    finally:
        gc.enable()


def timed(op: Op, keys: list[str], calls: int) -> float:
    """Wall-clock microseconds per call over one tight loop."""
    return timed_both(op, keys, calls)[0]


def median_us_both(make: Callable[[str, int, int, str], Op], url: str, keys: list[str],
                   calls: int, samples: int) -> tuple[float, float]:  # fmt: skip
    """Medians of wall and of CPU microseconds per call, each sample a fresh limiter."""
    walls, cpus = [], []
    for s in range(samples):
        op = make(url, HUGE_RPM, HUGE_TPM, f"bench{s}x{time.perf_counter_ns()}")
        for key in keys[: min(len(keys), 100)]:
            op(key)  # connect and warm up
        wall, cpu = timed_both(op, keys, calls)
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


def median_us(make: Callable[[str, int, int, str], Op], url: str, keys: list[str], calls: int,
              samples: int) -> float:  # fmt: skip
    return median_us_both(make, url, keys, calls, samples)[0]


def report(title: str, figures: dict[str, float]) -> None:
    print(f"\n{title}")
    base = figures.get("usagewarden")
    for name, us in figures.items():
        ratio = f"{us / base:6.2f}x ours" if base else ""
        print(f"  {name:<26} {us:9.1f} us/call  {ratio}")


def fill_case(url: str, contenders: dict[str, Callable[..., Op]], calls: int) -> None:
    print(f"\nThe window filling at {FILL_TPM:,} TPM ({TOKENS} tokens a call, "
          f"us/call per block of 1,000 calls)")  # fmt: skip
    for name, make in contenders.items():
        if name.startswith("PING") or "moving" in name:
            continue  # the moving window stores one member per token: 1.8M members
        op = make(url, HUGE_RPM, FILL_TPM, f"fill{time.perf_counter_ns()}")
        blocks = []
        for _ in range(calls // 1_000):
            blocks.append(timed(op, ["filling"], 1_000))
        flat = max(blocks) / min(blocks)
        shown = " ".join(f"{b:6.1f}" for b in blocks)
        print(f"  {name:<26} {shown}   slowest/fastest {flat:4.2f}")


async def acquire_case(url: str, calls: int, samples: int) -> float:
    import usagewarden as uw

    results = []
    for s in range(samples):
        limiter = uw.RedisRateLimiter(
            uw.RateLimits(requests_per_minute=HUGE_RPM, total_tokens_per_minute=HUGE_TPM),
            url,
            prefix=f"acq{s}:{time.perf_counter_ns()}",
        )
        for _ in range(100):
            await limiter.acquire("k", input_tokens=TOKENS)
        start = time.perf_counter_ns()
        for _ in range(calls):
            await limiter.acquire("k", input_tokens=TOKENS)
        results.append((time.perf_counter_ns() - start) / calls / 1_000)
    return statistics.median(results)


def parallel_worker(args: tuple[str, str, float]) -> int:
    name, url, seconds = args
    warnings.simplefilter("ignore")
    op = CONTENDERS[name](url, HUGE_RPM, HUGE_TPM, "parallel")
    op("shared")
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            op("shared")
        done += 100
    return done


def lease_parallel_worker(args: tuple[str, str, float]) -> tuple[int, float]:
    """Admissions in `seconds`, and the CPU seconds this process used."""
    name, url, seconds = args
    warnings.simplefilter("ignore")
    op = LEASE_CONTENDERS[name](url, HUGE_RPM, HUGE_TPM, "leaseparallel")
    op("shared")
    admitted = 0
    cpu = time.process_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            if op("shared"):
                admitted += 1
    return admitted, time.process_time() - cpu


def lease_parallel_case(url: str, seconds: float) -> dict[str, tuple[float, float]]:
    """Aggregate admissions per second, and the share of a core each process had."""
    rates = {}
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        for name in ("usagewarden", "usagewarden lease"):
            results = pool.map(lease_parallel_worker, [(name, url, seconds)] * 4)
            cpu = sum(c for _, c in results) / 4 / seconds
            rates[name] = (sum(a for a, _ in results) / seconds, cpu)
    return rates


def parallel_case(url: str, seconds: float) -> dict[str, float]:
    rates = {}
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        for name in CONTENDERS:
            counts = pool.map(parallel_worker, [(name, url, seconds)] * 4)
            rates[name] = sum(counts) / seconds
    return rates


def lease_cases(url: str, calls: int, samples: int, seconds: float) -> None:
    lease_calls = calls * 100
    both = {n: median_us_both(m, url, ["k"], calls if n == "usagewarden" else lease_calls,
                              samples)
            for n, m in LEASE_CONTENDERS.items()}  # fmt: skip
    lease = {n: wall for n, (wall, _) in both.items()}
    report(f"Lease mode: try_acquire, RPM + TPM, 1 key, amortised over {lease_calls:,} "
           f"calls (a slice of 1,000 requests; exact mode: {calls:,} calls)",
           lease)  # fmt: skip
    print("  CPU time of the process (all threads), us/call: " + ", ".join(
        f"{name} {cpu:.2f}" for name, (_, cpu) in both.items()))  # fmt: skip
    leased = lease_parallel_case(url, seconds)
    print(f"\n4 processes in parallel on one key, {seconds:g} s each: lease mode vs exact "
          "(admissions/s, all; CPU: each process's share of a core)")  # fmt: skip
    for name, (rate, cpu) in leased.items():
        print(f"  {name:<26} {rate:12,.0f}/s  CPU {cpu:4.0%}")
    lease_us, lease_cpu_us = both["usagewarden lease"]
    lease_speedup = leased["usagewarden lease"][0] / leased["usagewarden"][0]
    print(f"\nTargets: lease <= {TARGET_LEASE_US:g} us/call: {lease_us:.2f} us wall, "
          f"{lease_cpu_us:.2f} us CPU ({'met' if lease_us <= TARGET_LEASE_US else 'missed'} "
          f"in wall time); 4 processes "
          f">= {TARGET_LEASE_PARALLEL:g}x exact: {lease_speedup:.1f}x "
          f"({'met' if lease_speedup >= TARGET_LEASE_PARALLEL else 'missed'})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and samples")
    parser.add_argument("--lease", action="store_true", help="only the lease-mode cases")
    options = parser.parse_args()
    calls, samples, fill, seconds = (
        (500, 3, 3_000, 2.0) if options.quick else (3_000, 5, 9_000, 5.0)
    )
    warnings.simplefilter("ignore")
    import usagewarden as uw

    python = sys.version.split()[0]
    print(f"usagewarden {uw.__version__} (debug build: {uw.DEBUG_BUILD}), Python {python}, "
          f"{os.cpu_count()} CPUs; {calls} calls x {samples} samples")  # fmt: skip
    with tempfile.TemporaryDirectory() as directory:
        server, url = start_redis(directory)
        try:
            print(f"redis-server at {url}")
            if options.lease:
                lease_cases(url, calls, samples, seconds)
                return
            one = {n: median_us(m, url, ["k"], calls, samples) for n, m in CONTENDERS.items()}
            report("try_acquire, RPM + TPM, 1 key", one)
            inside = server_side(url, calls, samples)
            print("\nInside Redis (us per call, INFO commandstats): " + ", ".join(
                f"{name} {us:.1f}" for name, us in inside.items()))  # fmt: skip
            keys = [f"key{i}" for i in range(N_KEYS)]
            many = {n: median_us(m, url, keys, N_KEYS, max(1, samples // 2))
                    for n, m in CONTENDERS.items()}  # fmt: skip
            report(f"try_acquire, RPM + TPM, {N_KEYS:,} keys in turn", many)
            acquire = asyncio.run(acquire_case(url, calls, samples))
            print(f"\nawait acquire (admitted), usagewarden: {acquire:.1f} us/call "
                  f"({acquire / one['PING (floor)']:.2f}x PING)")  # fmt: skip
            fill_case(url, CONTENDERS, fill)
            rates = parallel_case(url, seconds)
            print(f"\n4 processes in parallel on one key, {seconds:g} s each (admissions/s, all)")
            for name, rate in rates.items():
                print(f"  {name:<26} {rate:10,.0f}/s  {rates['usagewarden'] / rate:5.2f}x ours")
            lease_cases(url, calls, samples, seconds)
            peers = [v for k, v in one.items() if not k.startswith(("PING", "usagewarden"))]
            ping_ratio = one["usagewarden"] / one["PING (floor)"]
            speedup = min(peers) / one["usagewarden"]
            print(f"\nTargets: exact <= {TARGET_PING_RATIO}x PING: {ping_ratio:.2f}x "
                  f"({'met' if ping_ratio <= TARGET_PING_RATIO else 'missed'}); "
                  f">= {TARGET_SPEEDUP}x the fastest peer: {speedup:.2f}x "
                  f"({'met' if speedup >= TARGET_SPEEDUP else 'missed'})")  # fmt: skip
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
