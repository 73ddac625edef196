"""What the ledger's hash chain costs, side by side in one run.

1. Insert throughput through the writer's own ``Inserter`` (10,000-event
   transactions, the store's schema and pragmas) with the chain and without
   it (no digest, no position, no head, no chain index), alternating runs
   into fresh files; medians and the ratio.
2. ``verify`` of a whole ledger of 1,000,000 chained events (4 namespaces).

Both run ``benchmarks/audit_raw.rs``, built once with
``cargo build --release --example audit_raw`` (what ``cargo run --release
--example audit_raw -- ...`` runs)::

    python benchmarks/bench_audit.py [--events 200000] [--runs 5] [--verify-events 1000000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def build() -> Path:
    if shutil.which("cargo") is None:
        sys.exit("cargo is not on PATH")
    done = subprocess.run(
        ["cargo", "build", "--release", "--example", "audit_raw", "--message-format=json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit("cargo build failed:\n" + done.stderr[-2_000:])
    for line in done.stdout.splitlines():
        message = json.loads(line)
        if message.get("target", {}).get("name") == "audit_raw" and message.get("executable"):
            return Path(message["executable"])
    sys.exit("cargo build did not report the audit_raw executable")


def run(exe: Path, *args: object) -> dict[str, Any]:
    done = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"audit_raw {' '.join(map(str, args))}: {done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--verify-events", type=int, default=1_000_000)
    args = parser.parse_args()
    exe = build()
    rates: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for chained in (False, True) if i % 2 == 0 else (True, False):
                path = Path(tmp) / f"insert-{i}-{chained}.db"
                report = run(
                    exe, "insert", path, args.events, "--chain", "on" if chained else "off"
                )
                rates[chained].append(report["rate"])
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"insert, {args.events:,} events x {args.runs} runs each (medians):")
        print(f"  chain off  {off:>12,.0f} events/s")
        print(f"  chain on   {on:>12,.0f} events/s")
        print(f"  on / off   {on / off:>12.3f}  (cost {100 * (1 - on / off):.1f} %)")
        samples = []
        for i in range(3):
            report = run(exe, "verify", Path(tmp) / f"verify-{i}.db", args.verify_events)
            samples.append(report["seconds"])
        median = statistics.median(samples)
        print(f"verify, {args.verify_events:,} events (median of 3): {median:.3f} s")


if __name__ == "__main__":
    main()
