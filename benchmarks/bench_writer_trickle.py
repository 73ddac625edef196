"""What the SQLite writer costs per event when events arrive one at a time.

An HTTP app meters one event per request: the writer sees a steady trickle, not bursts.
Each transaction's commit costs about as much as ten inserts, so how many events share a
commit decides the cost per event. Side by side in one run, on a fresh ``SQLiteStore``
(batch durability) each round:

* burst: ``record`` of N events back to back, then ``flush``;
* trickle: ``record`` of N events with a ``time.sleep(pause)`` after each (a few thousand
  events a second), then ``flush``; and the same sleeps without any ``record``, whose CPU
  time is taken off.

Figures are CPU microseconds per event for the whole process (every thread, so the
writer's work counts; another load on the machine stretches CPU time far less than wall
time), medians of the rounds::

    python benchmarks/bench_writer_trickle.py [--events 5000] [--pause-us 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import usagewarden as uw


def cpu_us_per_event(events: int, pause_s: float | None, store_dir: str | None) -> float:
    metadata = {"route": "/items/{item_id}", "method": "GET", "status": 200}
    batch = [uw.UsageEvent("bench", "anonymous", metadata=metadata) for _ in range(events)]
    store = uw.SQLiteStore(os.path.join(store_dir, "trickle.db")) if store_dir else None
    started = time.process_time()
    for event in batch:
        if store is not None:
            store.record(event)
        if pause_s is not None:
            time.sleep(pause_s)
    if store is not None:
        store.flush()
    spent = time.process_time() - started
    if store is not None:
        store.close()
    return spent / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--pause-us", type=float, default=200.0)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    pause = options.pause_us / 1e6
    figures: dict[str, list[float]] = {"burst": [], "trickle": [], "sleeps alone": []}
    for _ in range(options.rounds):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            figures["burst"].append(cpu_us_per_event(options.events, None, a))
            figures["trickle"].append(cpu_us_per_event(options.events, pause, b))
        figures["sleeps alone"].append(cpu_us_per_event(options.events, pause, None))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(
        f"usagewarden {uw.__version__} (debug build: {uw.DEBUG_BUILD}), {os.cpu_count()} CPUs; "
        f"{options.events:,} events, pause {options.pause_us:g} us, {options.rounds} rounds"
    )
    print(f"  burst                        {medians['burst']:7.1f} us CPU/event")
    trickle = medians["trickle"] - medians["sleeps alone"]
    print(f"  trickle (less the sleeps)    {trickle:7.1f} us CPU/event")
    print(f"  trickle / burst              {trickle / medians['burst']:7.2f}x")


if __name__ == "__main__":
    main()
