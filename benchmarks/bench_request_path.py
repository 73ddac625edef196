"""Benchmark the request path: what usagewarden adds to an async app's requests.

1. Calls, in-process, side by side (each a median over several rounds of many calls,
   printed in microseconds per call, with its ratio to the sync twin):
   ``store.record(event)`` on ``SQLiteStore`` and ``await store.record(event)`` on
   ``AsyncSQLiteStore`` (batch durability, a prebuilt event, the writer committing
   behind); ``with warden.call_blocking(...)`` and ``async with warden.call(...)`` with a
   settle and the record; and two floors for scale: ``await asyncio.sleep(0)`` (one loop
   round trip) and ``await asyncio.to_thread(lambda: None)`` (one thread hop).
2. Five FastAPI apps with one route (``GET /items/{item_id}``): bare, with
   ``RateLimitMiddleware``, with ``RateLimitMiddleware`` and ``MeteringMiddleware`` (an
   ``AsyncSQLiteStore`` in a temporary directory), the same with the middleware sending
   the draft-11 headers alone (``headers="draft"``: two headers instead of eight), and
   with slowapi's ``SlowAPIMiddleware`` (the usual pick) for comparison. Each runs on a
   fresh uvicorn server (its defaults: uvloop and httptools with ``uvicorn[standard]``;
   access log off) in a process of its own on a free port of 127.0.0.1, and is loaded by
   ``wrk`` (Debian's ``wrk`` package) in another process, after a warm-up run:
   requests/s, latency p50 and p99 (wrk's own ``--latency`` figures), each the median of
   the rounds, with ratios to the bare app.
   The limits never refuse: every request pays the check, none is turned away.

Run it from the repository root, with a release build of the extension::

    pip install -e '.[fastapi,bench]' && maturin develop --release
    apt-get install -y wrk
    python benchmarks/bench_request_path.py            # about 3 minutes
    python benchmarks/bench_request_path.py --quick    # about 40 seconds

On a machine with few cores, wrk, the server and the store's writer share them; the
header says how many there are.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

APPS = ("bare", "ratelimit", "ratelimit+metering", "draft+metering", "slowapi")


# ---------------------------------------------------------------- the apps


def build_app(kind: str, db_dir: str) -> Any:
    import usagewarden as uw
    from fastapi import FastAPI
    from usagewarden.fastapi import MeteringMiddleware, RateLimitMiddleware

    app = FastAPI()
    if kind == "slowapi":
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.middleware import SlowAPIMiddleware
        from slowapi.util import get_remote_address

        limiter = Limiter(key_func=get_remote_address, default_limits=["100000000/minute"])
        app.state.limiter = limiter
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
        app.add_middleware(SlowAPIMiddleware)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    if kind.endswith("+metering"):
        store = uw.AsyncSQLiteStore(Path(db_dir) / "metering.db")
        app.add_middleware(MeteringMiddleware, store=store, agent_id="bench")
    if kind.startswith(("ratelimit", "draft")):
        limits = uw.RateLimits(requests_per_minute=100_000_000)
        headers = "draft" if kind.startswith("draft") else "all"
        app.add_middleware(RateLimitMiddleware, limiter=uw.RateLimiter(limits), headers=headers)
    return app


def serve(kind: str, port: int, db_dir: str) -> None:
    import uvicorn

    uvicorn.run(
        build_app(kind, db_dir), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server on port {port} did not start")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"not a wrk latency: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, seconds: float, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if errors is not None:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx responses")
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": p50, "p99": p99, "requests": count}


def server_cpu_seconds(pid: int) -> float:
    """The CPU time of every thread of process `pid` (Linux /proc), so far: what a
    request costs the server, whatever else shares the machine's cores."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_app(kind: str, seconds: float, rounds: int, connections: int) -> dict[str, float]:
    results = []
    for _ in range(rounds):
        port = free_port()
        with tempfile.TemporaryDirectory() as db_dir:
            server = subprocess.Popen(
                [sys.executable, "-W", "ignore", __file__, "--serve", kind, str(port), db_dir]
            )
            try:
                wait_listening(port)
                url = f"http://127.0.0.1:{port}/items/7"
                run_wrk(url, 1, connections)  # warm-up
                cpu_before = server_cpu_seconds(server.pid)
                result = run_wrk(url, seconds, connections)
                cpu = server_cpu_seconds(server.pid) - cpu_before
                result["cpu_us"] = cpu / result["requests"] * 1e6
                results.append(result)
            finally:
                server.terminate()
                server.wait(30)
    keys = ("rps", "p50", "p99", "cpu_us")
    return {key: statistics.median(r[key] for r in results) for key in keys}


# ---------------------------------------------------------------- the calls


def now() -> tuple[float, float]:
    """Wall time and this thread's CPU time: on a shared machine the CPU time is the
    steadier figure (other processes' work is not counted in it)."""
    return time.perf_counter(), time.thread_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = now()
    return wall - start[0], cpu - start[1]


def per_call_us(
    fn: Callable[[int], tuple[float, float]], n: int, rounds: int, before: Callable[[], None]
) -> tuple[float, float]:
    """Medians over `rounds` of the wall and CPU seconds `fn(n)` reports for n calls, per
    call, in µs.

    `before` runs untimed ahead of each round: it flushes the stores, so that every
    round measures the call (queueing the event) rather than the writer's commit rate
    once the bounded queue has filled."""
    walls, cpus = [], []
    for _ in range(rounds):
        before()
        wall, cpu = fn(n)
        walls.append(wall / n * 1e6)
        cpus.append(cpu / n * 1e6)
    return statistics.median(walls), statistics.median(cpus)


def bench_calls(n: int, rounds: int) -> list[tuple[str, float, float, str]]:
    import usagewarden as uw

    limits = uw.RateLimits(requests_per_minute=10**12, total_tokens_per_minute=10**15)
    tmp = Path(tempfile.mkdtemp(prefix="uw-bench-path-"))
    sync_store = uw.SQLiteStore(tmp / "sync.db")
    async_store = uw.AsyncSQLiteStore(tmp / "async.db")
    event = uw.UsageEvent("bench", "consumer", model="gpt-4o", tokens_in=100, tokens_out=20)
    sync_warden = uw.Warden(uw.RateLimiter(limits), uw.SQLiteStore(tmp / "ws.db"), agent_id="b")
    async_warden = uw.Warden(
        uw.RateLimiter(limits), uw.AsyncSQLiteStore(tmp / "wa.db"), agent_id="b"
    )

    def sync_record(k: int) -> tuple[float, float]:
        record = sync_store.record
        t = now()
        for _ in range(k):
            record(event)
        return since(t)

    def async_record(k: int) -> tuple[float, float]:
        record = async_store.record

        async def main() -> tuple[float, float]:
            t = now()
            for _ in range(k):
                await record(event)
            return since(t)

        return asyncio.run(main())

    def call_blocking(k: int) -> tuple[float, float]:
        t = now()
        for _ in range(k):
            with sync_warden.call_blocking("gpt-4o", input_tokens=100, max_output_tokens=50) as c:
                c.settle(output_tokens=20, cost=0.0001)
        return since(t)

    def on_loop(body: Callable[[], Awaitable[Any]]) -> Callable[[int], tuple[float, float]]:
        def timed(k: int) -> tuple[float, float]:
            async def main() -> tuple[float, float]:
                t = now()
                for _ in range(k):
                    await body()
                return since(t)

            return asyncio.run(main())

        return timed

    async def warden_call() -> None:
        async with async_warden.call("gpt-4o", input_tokens=100, max_output_tokens=50) as c:
            c.settle(output_tokens=20, cost=0.0001)

    rows: list[tuple[str, Callable[[int], tuple[float, float]], int]] = [
        ("store.record (SQLiteStore)", sync_record, n),
        ("await store.record (AsyncSQLiteStore)", async_record, n),
        ("with warden.call_blocking + settle + record", call_blocking, n // 4),
        ("async with warden.call + settle + record", on_loop(warden_call), n // 4),
        ("await asyncio.sleep(0)  (floor: loop round trip)", on_loop(lambda: asyncio.sleep(0)), n),
        (
            "await asyncio.to_thread(lambda: None)  (floor: thread hop)",
            on_loop(lambda: asyncio.to_thread(lambda: None)),
            n // 20,
        ),
    ]
    stores = [sync_store, async_store.blocking(), sync_warden.store, async_warden.store.blocking()]

    def flush_all() -> None:
        for store in stores:
            store.flush()  # type: ignore[attr-defined]

    measured = [(name, *per_call_us(fn, k, rounds, flush_all)) for name, fn, k in rows]
    sync_store.flush()
    sync_store.close()
    async_store.blocking().close()
    shutil.rmtree(tmp, ignore_errors=True)
    twins = {1: 0, 3: 2}
    out = []
    for i, (name, wall, cpu) in enumerate(measured):
        ratio = ""
        if i in twins:
            _, twin_wall, twin_cpu = measured[twins[i]]
            ratio = f"{wall / twin_wall:.1f}x / {cpu / twin_cpu:.1f}x the sync twin"
        out.append((name, wall, cpu, ratio))
    return out


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, one round")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    import usagewarden
    import uvicorn

    seconds, rounds = (3.0, 1) if args.quick else (8.0, 3)
    n = 20_000 if args.quick else 100_000
    print(
        f"usagewarden {usagewarden.__version__}, Python {sys.version.split()[0]}, "
        f"uvicorn {uvicorn.__version__}, {os.cpu_count()} cores; "
        f"wrk -t1 -c{args.connections} -d{seconds:g}s, median of {rounds} round(s)\n"
    )
    print(f"{'call':<62}{'wall us':>10}{'CPU us':>9}")
    for name, wall, cpu, ratio in bench_calls(n, 3 if args.quick else 5):
        print(f"{name:<62}{wall:>10.2f}{cpu:>9.2f}  {ratio}")
    print()
    results = {kind: bench_app(kind, seconds, rounds, args.connections) for kind in APPS}
    bare = results["bare"]
    header = f"{'app':<22}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'server CPU us/req':>19}"
    print(f"{header}   vs bare")
    for kind, r in results.items():
        print(
            f"{kind:<22}{r['rps']:>12,.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['cpu_us']:>19.1f}   "
            f"{r['rps'] / bare['rps']:.2f}x requests/s, p99 {r['p99'] - bare['p99']:+.2f} ms, "
            f"CPU per request {r['cpu_us'] / bare['cpu_us']:.2f}x"
        )
    metered, slow = results["ratelimit+metering"]["rps"], results["slowapi"]["rps"]
    print(f"\nrate limiting + metering vs slowapi: {metered / slow:.2f}x requests/s")


if __name__ == "__main__":
    main()
