"""What the ledger's hash chain costs, side by side in one run, on both stores.

1. SQLite: insert throughput through the writer's own ``Inserter``
   (10,000-event transactions, the store's schema and pragmas) with the
   chain and without it (no digest, no position, no head, no chain blocks),
   alternating runs into fresh files. Medians of wall time, and of the
   process's CPU time (which another load on a shared machine stretches far
   less), and their ratios.
2. PostgreSQL (when its binaries are installed; a throwaway cluster):
   ``PostgresStore.record`` one event at a time, batch durability, until all
   are committed, with the chain and without it (no positions, digests,
   head locks, chain index), alternating runs into fresh schemas. Wall time,
   and the CPU time of the client and the whole cluster together (the
   server shares the machine's cores with the client, so wall time moves
   with whatever else runs).
4. ``verify`` of a whole SQLite ledger of 1,000,000 chained events
   (4 namespaces).

They run ``benchmarks/audit_raw.rs`` and ``benchmarks/pg_chain_raw.rs``,
built once with ``cargo build --release --example ...``::

    python benchmarks/bench_audit.py [--events 200000] [--pg-events 50000] [--runs 5] \
        [--verify-events 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def build(example: str) -> Path:
    if shutil.which("cargo") is None:
        sys.exit("cargo is not on PATH")
    done = subprocess.run(
        ["cargo", "build", "--release", "--example", example, "--message-format=json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit("cargo build failed:\n" + done.stderr[-2_000:])
    for line in done.stdout.splitlines():
        message = json.loads(line)
        if message.get("target", {}).get("name") == example and message.get("executable"):
            return Path(message["executable"])
    sys.exit(f"cargo build did not report the {example} executable")


def run(exe: Path, *args: object) -> dict[str, Any]:
    done = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{exe.name} {' '.join(map(str, args))}: {done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def run_on_fresh_file(exe: Path, db: Path, mode: str, events: int, chained: bool) -> dict[str, Any]:
    """One SQLite run into `db`, which is removed afterwards. The page cache
    is written out before the run, so that no earlier run's write-back falls
    inside this one's timing."""
    os.sync()
    try:
        return run(exe, mode, db, events, "--chain", "on" if chained else "off")
    finally:
        for leftover in db.parent.glob(db.name + "*"):
            leftover.unlink()


def side_by_side(
    measure: Callable[[bool, int], dict[str, Any]], runs: int, keys: tuple[str, ...]
) -> dict[tuple[bool, str], float]:
    """Medians of `keys` over `runs` alternating runs with the chain off and on."""
    samples: dict[tuple[bool, str], list[float]] = {}
    for i in range(runs):
        for chained in (False, True) if i % 2 == 0 else (True, False):
            report = measure(chained, i)
            for key in keys:
                samples.setdefault((chained, key), []).append(report[key])
    return {k: statistics.median(v) for k, v in samples.items()}


def print_costs(title: str, medians: dict[tuple[bool, str], float], unit: str) -> None:
    print(title)
    for key, label in (("rate", "wall"), ("cpu_rate", "CPU")):
        if (False, key) not in medians:
            continue
        off, on = medians[(False, key)], medians[(True, key)]
        print(
            f"  {label:<5} chain off {off:>10,.0f}  on {on:>10,.0f} {unit}"
            f"  on/off {on / off:.3f}  (cost {100 * (1 - on / off):.1f} %)"
        )


def cluster_cpu_seconds(data_dir: Path) -> float:
    """CPU seconds the cluster has used: the postmaster's, its children's
    that have exited (each backend of a closed connection) and its live
    children's (background writer, WAL writer, checkpointer), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])

    def stat(pid: int | str) -> list[str]:
        # The fields after the command name, which may hold spaces.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    own = stat(postmaster)
    ticks = sum(int(f) for f in own[11:15])  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat(entry.name)
        except OSError:  # it exited meanwhile
            continue
        if int(fields[1]) == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / tick


def postgres_costs(exe: Path, events: int, runs: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from postgres_cluster import _bin_dir, _start_cluster
    except ImportError as e:  # pytest is in the test extra
        print(f"PostgreSQL: skipped ({e})")
        return
    if _bin_dir() is None:
        print("PostgreSQL: skipped (install the postgresql package)")
        return
    clusters = _start_cluster()
    cluster = next(clusters)

    def measure(chained: bool, _: int) -> dict[str, Any]:
        os.sync()
        server_before = cluster_cpu_seconds(cluster.data)
        report = run(exe, cluster.dsn(), events, "--chain", "on" if chained else "off")
        time.sleep(0.5)  # the closed connections' backends exit
        # The server's share includes opening and dropping the run's schema.
        cpu = report["cpu_seconds"] + cluster_cpu_seconds(cluster.data) - server_before
        return {**report, "cpu_rate": events / cpu}

    try:
        medians = side_by_side(measure, runs, ("rate", "cpu_rate"))
        print_costs(
            f"PostgreSQL PostgresStore.record, {events:,} events x {runs} runs each (medians):",
            medians,
            "events/s",
        )
    finally:
        for _ in clusters:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--pg-events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--verify-events", type=int, default=1_000_000)
    args = parser.parse_args()
    exe = build("audit_raw")
    with tempfile.TemporaryDirectory() as tmp:
        for mode, what in (("insert", "SQLite insert"), ("record", "SQLite SqliteStore.record")):
            medians = side_by_side(
                lambda chained, i, mode=mode: run_on_fresh_file(
                    exe, Path(tmp) / f"{mode}-{i}-{chained}.db", mode, args.events, chained
                ),
                args.runs,
                ("rate", "cpu_rate"),
            )
            print_costs(
                f"{what}, {args.events:,} events x {args.runs} runs each (medians):",
                medians,
                "events/s",
            )
        postgres_costs(build("pg_chain_raw"), args.pg_events, args.runs)
        samples = []
        for i in range(3):
            os.sync()
            report = run(exe, "verify", Path(tmp) / f"verify-{i}.db", args.verify_events)
            samples.append((report["seconds"], report["cpu_seconds"]))
        wall = statistics.median(s for s, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(
            f"SQLite verify, {args.verify_events:,} events (median of 3):"
            f" {wall:.3f} s wall, {cpu:.3f} s CPU"
        )


if __name__ == "__main__":
    main()
