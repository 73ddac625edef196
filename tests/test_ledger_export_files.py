"""Exports to a path: written under a unique temporary name in the same
directory, created exclusively (never through a planted symlink), renamed
into place complete."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import usagewarden as uw


def ledger(path: Path, n: int) -> uw.SQLiteStore:
    store = uw.SQLiteStore(path)
    store.record_batch([uw.UsageEvent("a", "c", request_id=f"e{i}") for i in range(n)])
    return store


def test_concurrent_exports_to_one_path_leave_the_last_complete_file(tmp_path: Path) -> None:
    store = ledger(tmp_path / "x.db", 5_000)
    target = tmp_path / "out" / "usage.ndjson"
    target.parent.mkdir()
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def export(limit: int) -> None:
        try:
            barrier.wait()
            store.export(target, format="ndjson", limit=limit)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=export, args=(1_000 + i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    lines = target.read_text().splitlines()
    assert 1_000 <= len(lines) <= 1_007, "one whole export, not a mix"
    assert [json.loads(line)["request_id"] for line in lines] == [
        f"e{i}" for i in range(len(lines))
    ]
    assert sorted(p.name for p in target.parent.iterdir()) == ["usage.ndjson"]
    store.close()


def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    """Whatever name an attacker guesses for the temporary file (the old one
    was `<path>.<pid>.partial`), the victim it points to is left alone."""
    store = ledger(tmp_path / "x.db", 10)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "usage.csv"
    os.symlink(victim, f"{target}.{os.getpid()}.partial")
    store.export(target)
    assert victim.read_text() == "precious"
    assert target.read_text().startswith("request_id,")
    # A symlink at the destination itself is replaced, not written through.
    link = tmp_path / "link.csv"
    os.symlink(victim, link)
    store.export(link)
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_text().startswith("request_id,")
    store.close()
