"""Export as CSV, JSON and NDJSON: the content equals query(), to paths and to
text or binary file objects; a failed export to a path leaves no file behind."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw
from ledger_helpers import T0, event, nanos

CSV_COLUMNS = [
    "request_id",
    "namespace",
    "timestamp",
    "agent_id",
    "consumer_id",
    "task_id",
    "action",
    "model",
    "tokens_in",
    "tokens_out",
    "cache_read_tokens",
    "cache_write_tokens",
    "total_tokens",
    "duration_ms",
    "api_calls",
    "units",
    "cost",
    "source",
    "metadata",
    "artifact_digest",
]


def sample() -> list[uw.UsageEvent]:
    awkward = 'comma, "quote", newline\n, CR\r, tab\t, unicode ü€😀'
    return [
        event(
            i,
            task_id=None if i % 2 else f"task-{i}",
            namespace=("default", "other")[i % 2],
            model=None if i % 3 == 0 else ("m,1" if i % 3 == 1 else 'm"2'),
            action=("llm.request", "tool:search")[i % 2],
            cost=None if i % 4 == 0 else (i * 1_000_000_007) / 1e9,
            cache_read_tokens=i,
            cache_write_tokens=2 * i,
            units=3 * i,
            source=None if i % 5 == 0 else awkward,
            metadata=None if i % 2 else {"text": awkward, "n": i, "nested": {"list": [1, None]}},
            agent_id=f"agent,{i % 3}" if i % 7 == 0 else f"agent-{i % 3}",
            timestamp=T0 + dt.timedelta(seconds=i, microseconds=i),
        )
        for i in range(30)
    ]


@pytest.fixture
def store(backend):  # type: ignore[no-untyped-def]
    with backend.sync("export.db") as s:
        s.record_batch(sample())
        yield s


def check_csv_rows(rows: list[dict[str, str]], expected: list[uw.UsageEvent]) -> None:
    assert len(rows) == len(expected)
    for row, e in zip(rows, expected, strict=True):
        assert list(row) == CSV_COLUMNS
        assert row["request_id"] == e.request_id
        assert row["namespace"] == e.namespace
        assert dt.datetime.fromisoformat(row["timestamp"]) == e.timestamp
        assert dt.datetime.fromisoformat(row["timestamp"]).utcoffset() == dt.timedelta(0)
        for text in ("agent_id", "consumer_id", "task_id", "action", "model", "source"):
            assert row[text] == (getattr(e, text) or ""), text
        for number in (
            "tokens_in",
            "tokens_out",
            "cache_read_tokens",
            "cache_write_tokens",
            "total_tokens",
            "duration_ms",
            "api_calls",
            "units",
        ):
            assert int(row[number]) == getattr(e, number), number
        cost = nanos(e)
        if cost is None:
            assert row["cost"] == ""
        else:
            assert Decimal(row["cost"]) == Decimal(cost) / 10**9, "USD as an exact decimal"
        if e.metadata is None:
            assert row["metadata"] == ""
        else:
            assert json.loads(row["metadata"]) == e.metadata


def check_json_objects(objects: list[dict[str, Any]], expected: list[uw.UsageEvent]) -> None:
    assert len(objects) == len(expected)
    for obj, e in zip(objects, expected, strict=True):
        assert obj["total_tokens"] == e.total_tokens
        assert {k: v for k, v in obj.items() if k != "total_tokens"} == e.to_dict()
        assert uw.UsageEvent.from_dict(obj) == e, "an exported object rebuilds the event"


def parse(fmt: str, text: str) -> list[Any]:
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        assert reader.fieldnames == CSV_COLUMNS
        return list(reader)
    if fmt == "json":
        parsed = json.loads(text)
        assert isinstance(parsed, list)
        return parsed
    lines = text.splitlines()
    assert all(line.strip() for line in lines), "one object per line, no blank lines"
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in lines]


def check(fmt: str, text: str, expected: list[uw.UsageEvent]) -> None:
    rows = parse(fmt, text)
    if fmt == "csv":
        check_csv_rows(rows, expected)
    else:
        check_json_objects(rows, expected)


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_export_to_a_path_matches_query(store: uw.SQLiteStore, tmp_path: Path, fmt: str) -> None:
    dest = tmp_path / f"out.{fmt}"
    assert store.export(dest, format=fmt) == 30
    check(fmt, read(dest), store.query())
    assert store.export(str(dest), format=fmt, agent_id="agent-1") == 8, "a str path; overwrites"
    check(fmt, read(dest), store.query(agent_id="agent-1"))


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_export_to_text_and_binary_files(store: uw.SQLiteStore, fmt: str) -> None:
    text = io.StringIO()
    assert store.export(text, format=fmt) == 30
    check(fmt, text.getvalue(), store.query())
    binary = io.BytesIO()
    assert store.export(binary, format=fmt) == 30
    assert binary.getvalue().decode("utf-8") == text.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_export_to_an_open_file(store: uw.SQLiteStore, tmp_path: Path, fmt: str) -> None:
    dest = tmp_path / f"open.{fmt}"
    with dest.open("w", encoding="utf-8", newline="") as f:
        f.write("")  # a file the caller opened and keeps owning
        assert store.export(f, format=fmt, model="m,1") == 10
    check(fmt, read(dest), store.query(model="m,1"))
    with dest.open("wb") as fb:
        assert store.export(fb, format=fmt) == 30
    check(fmt, read(dest), store.query())


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_filters_and_limit(store: uw.SQLiteStore, fmt: str) -> None:
    start, end = sample()[3].timestamp, sample()[20].timestamp
    out = io.StringIO()
    assert store.export(out, format=fmt, limit=5, start=start, end=end, namespace="other") == 5
    check(fmt, out.getvalue(), store.query(limit=5, start=start, end=end, namespace="other"))
    out = io.StringIO()
    assert store.export(out, format=fmt, limit=0) == 0
    check(fmt, out.getvalue(), [])


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_an_empty_export_is_still_well_formed(tmp_path: Path, fmt: str) -> None:
    with uw.SQLiteStore(tmp_path / "empty.db") as s:
        dest = tmp_path / f"empty.{fmt}"
        assert s.export(dest, format=fmt) == 0
        text = read(dest)
        check(fmt, text, [])
        if fmt == "csv":
            assert text.strip() == ",".join(CSV_COLUMNS)


def test_csv_is_the_default_format(store: uw.SQLiteStore) -> None:
    out = io.StringIO()
    store.export(out)
    assert out.getvalue().splitlines()[0] == ",".join(CSV_COLUMNS)


def test_export_sees_queued_events_after_flush(tmp_path: Path) -> None:
    with uw.SQLiteStore(tmp_path / "q.db") as s:
        for e in sample():
            s.record(e)
        s.flush()
        out = io.StringIO()
        assert s.export(out, format="ndjson") == 30
        check("ndjson", out.getvalue(), sample())


def read(path: Path) -> str:
    """The file's text exactly as written (no newline translation)."""
    return path.read_bytes().decode("utf-8")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"format": "xml"}, ValueError, "format"),
        ({"format": "CSV"}, ValueError, "format"),
        ({"format": 1}, TypeError, "format"),
        ({"limit": -1}, ValueError, "limit"),
        ({"agent": "a"}, TypeError, "agent"),
        ({"start": dt.datetime(2026, 1, 1)}, ValueError, "start"),
        (
            {"start": T0, "end": T0 - dt.timedelta(seconds=1)},
            ValueError,
            "start",
        ),
    ],
)
def test_a_refused_export_writes_nothing(
    store: uw.SQLiteStore, tmp_path: Path, kwargs: dict[str, Any], error: type, field: str
) -> None:
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    dest = out_dir / "out.csv"
    with pytest.raises(error, match=field):
        store.export(dest, **kwargs)
    assert leftovers(out_dir) == [], "no file, no partial file"
    # An existing file is left as it was.
    dest.write_text("keep me")
    with pytest.raises(error, match=field):
        store.export(dest, **kwargs)
    assert dest.read_text() == "keep me"
    assert leftovers(out_dir) == ["out.csv"]
    buf = io.StringIO()
    with pytest.raises(error, match=field):
        store.export(buf, **kwargs)
    assert buf.getvalue() == ""


def test_an_export_into_a_missing_directory_fails_cleanly(
    store: uw.SQLiteStore, tmp_path: Path
) -> None:
    before = leftovers(tmp_path)
    with pytest.raises((uw.StoreError, OSError)):
        store.export(tmp_path / "missing" / "out.csv")
    assert leftovers(tmp_path) == before


def test_a_failing_file_object_raises(store: uw.SQLiteStore) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("disk full")

    with pytest.raises((uw.StoreError, OSError), match="disk full"):
        store.export(Broken(), format="json")


def test_a_complete_export_leaves_only_the_file(store: uw.SQLiteStore, tmp_path: Path) -> None:
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    for fmt in ("csv", "json", "ndjson"):
        store.export(out_dir / f"all.{fmt}", format=fmt)
    assert leftovers(out_dir) == ["all.csv", "all.json", "all.ndjson"]


def test_bad_destinations(store: uw.SQLiteStore) -> None:
    with pytest.raises(TypeError, match="dest"):
        store.export(42)
    with pytest.raises(TypeError, match="dest"):
        store.export(None)
