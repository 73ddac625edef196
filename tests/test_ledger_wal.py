"""WAL hygiene: the write-ahead log is checkpointed and emptied on close, does
not keep what a long reader made it grow, and a full disk can still checkpoint
thanks to the reserve kept beside the database."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import usagewarden as uw
from fault_helpers import fill, small_disk_at


def wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk_at(tmp_path) as disk:
        yield disk


def test_close_after_200_000_events_leaves_an_empty_wal(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    store = uw.SQLiteStore(path)
    for i in range(200_000):
        store.record(uw.UsageEvent("agent", "consumer", request_id=f"r{i}", tokens_in=i))
    store.flush()
    assert store.stats().events == 200_000
    store.close()
    assert wal_size(path) == 0
    with uw.SQLiteStore(path) as reopened:
        assert reopened.stats().events == 200_000


class StalledFile:
    """A file object whose first write waits until released: an export that
    holds its read transaction open while events keep coming."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.chunks: list[str] = []

    def write(self, chunk: str) -> int:
        self.started.set()
        assert self.release.wait(60)
        self.chunks.append(chunk)
        return len(chunk)


def test_a_stalled_export_does_not_leave_a_grown_wal(tmp_path: Path) -> None:
    path = tmp_path / "stalled.db"
    store = uw.SQLiteStore(path)
    store.record_batch([uw.UsageEvent("a", "c", request_id=f"old{i}") for i in range(20_000)])
    sink = StalledFile()
    exporter = threading.Thread(target=store.export, args=(sink,), kwargs={"format": "ndjson"})
    exporter.start()
    assert sink.started.wait(30)
    for start in range(0, 60_000, 1_000):
        store.record_batch(
            [uw.UsageEvent("a", "c", request_id=f"new{i}") for i in range(start, start + 1_000)]
        )
    grown = wal_size(path)
    assert grown > 1 << 20, "the reader kept the log from being reset"
    sink.release.set()
    exporter.join(60)
    store.close()
    assert wal_size(path) == 0


@pytest.mark.slow
def test_the_demo_run_twice_leaves_no_growing_wal(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    sizes = []
    for _ in range(2):
        subprocess.run(
            [
                sys.executable,
                "-W",
                "ignore",
                "-c",
                "import sys; from usagewarden.cli import main; sys.exit(main())",
                "demo",
                "--db",
                str(db),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        sizes.append(wal_size(db))
    assert sizes == [0, 0]


def test_a_full_disk_still_checkpoints_from_the_reserve(small_disk: Path) -> None:
    """The disk fills up while the log holds committed pages: the writer frees
    its reserve, checkpoints, and the events that fit are committed without the
    operator freeing anything."""
    path = small_disk / "reserve.db"
    reserve = Path(f"{path}-reserve")
    store = uw.SQLiteStore(path)
    store.record(uw.UsageEvent("a", "c", request_id="first"))
    store.flush()
    assert reserve.stat().st_size >= 1 << 20
    fill(small_disk)
    for i in range(200):
        store.record(uw.UsageEvent("a", "c", request_id=f"r{i}"))
    store.flush(timeout=30)
    assert store.stats().events == 201
    assert not reserve.exists(), "the reserve was spent on the checkpoint"
    store.close()
