"""Bad input: ValueError/TypeError naming the field, and nothing written."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw
from ledger_helpers import MAX_COUNT, T0, event

COUNTS = [
    "tokens_in",
    "tokens_out",
    "cache_read_tokens",
    "cache_write_tokens",
    "duration_ms",
    "api_calls",
    "units",
]
REQUIRED_IDS = ["agent_id", "consumer_id"]
OPTIONAL_IDS = ["task_id", "namespace", "model", "source", "request_id"]


def build(**fields: Any) -> uw.UsageEvent:
    values: dict[str, Any] = {"agent_id": "agent", "consumer_id": "consumer"}
    values.update(fields)
    return uw.UsageEvent(values.pop("agent_id"), values.pop("consumer_id"), **values)


def cases() -> list[tuple[str, dict[str, Any], type[Exception]]]:
    out: list[tuple[str, dict[str, Any], type[Exception]]] = []
    for field in COUNTS:
        out += [
            (field, {field: -1}, ValueError),
            (field, {field: MAX_COUNT + 1}, ValueError),
            (field, {field: 2**64}, ValueError),
            (field, {field: 1.0}, TypeError),
            (field, {field: True}, TypeError),
            (field, {field: "3"}, TypeError),
        ]
    out += [
        ("cost", {"cost": math.nan}, ValueError),
        ("cost", {"cost": math.inf}, ValueError),
        ("cost", {"cost": -math.inf}, ValueError),
        ("cost", {"cost": -0.01}, ValueError),
        ("cost", {"cost": -1}, ValueError),
        ("cost", {"cost": 1e300}, ValueError),
        ("cost", {"cost": "0.1"}, TypeError),
        ("cost", {"cost": True}, TypeError),
    ]
    for field in REQUIRED_IDS + OPTIONAL_IDS:
        out += [
            (field, {field: ""}, ValueError),
            (field, {field: "x" * 257}, ValueError),
            (field, {field: "é" * 257}, ValueError),
            (field, {field: "a\x00b"}, ValueError),
            (field, {field: 5}, TypeError),
            (field, {field: b"bytes"}, TypeError),
        ]
    for field in REQUIRED_IDS:
        out.append((field, {field: None}, TypeError))
    out += [
        ("action", {"action": ""}, ValueError),
        ("action", {"action": "LLM.request"}, ValueError),
        ("action", {"action": "1st"}, ValueError),
        ("action", {"action": "has space"}, ValueError),
        ("action", {"action": "a" * 65}, ValueError),
        ("action", {"action": "ünicode"}, ValueError),
        ("action", {"action": 3}, TypeError),
        ("timestamp", {"timestamp": dt.datetime(2026, 1, 1)}, ValueError),
        ("timestamp", {"timestamp": "2026-01-01T00:00:00+00:00"}, TypeError),
        ("timestamp", {"timestamp": 1_700_000_000}, TypeError),
        ("timestamp", {"timestamp": dt.date(2026, 1, 1)}, TypeError),
        ("metadata", {"metadata": {"x": {1, 2}}}, TypeError),
        ("metadata", {"metadata": {"x": object()}}, TypeError),
        ("metadata", {"metadata": {"x": b"bytes"}}, TypeError),
        ("metadata", {"metadata": {"x": math.nan}}, ValueError),
        ("metadata", {"metadata": {"x": math.inf}}, ValueError),
        ("metadata", {"metadata": {"x": "nul\x00inside"}}, ValueError),
        ("metadata", {"metadata": {"nul\x00key": 1}}, ValueError),
        ("metadata", {"metadata": [1, 2]}, TypeError),
        ("metadata", {"metadata": "{}"}, TypeError),
    ]
    return out


@pytest.mark.parametrize(
    ("field", "fields", "error"),
    cases(),
    ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(cases())],
)
def test_bad_fields_are_refused_naming_the_field(
    field: str, fields: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        build(**fields)
    assert field in str(info.value), f"{info.value!r} does not name {field}"
    # ValueError for a bad value, TypeError for a bad type; NaN/inf in metadata may be either.
    if field != "metadata":
        assert isinstance(info.value, error), repr(info.value)


def test_a_circular_metadata_structure_is_refused() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises((ValueError, TypeError), match="metadata"):
        build(metadata=loop)


def test_a_naive_timestamp_error_says_how_to_fix_it() -> None:
    with pytest.raises(ValueError) as info:
        build(timestamp=dt.datetime(2026, 1, 1))
    message = str(info.value)
    assert "timestamp" in message
    assert "timezone" in message or "tzinfo" in message
    assert "utc" in message.lower()


def test_metadata_with_the_text_backslash_u0000_is_not_a_nul() -> None:
    """A string holding the six characters ``\\u0000`` (a Windows path, escaped
    JSON in a log line) contains no NUL character and is valid metadata."""
    text = "C:\\u0000\\file"
    assert "\x00" not in text
    assert build(metadata={"path": text}).metadata == {"path": text}
    assert build(metadata={"\\u0000": 1}).metadata == {"\\u0000": 1}


# --- nothing is written -----------------------------------------------------------------


@pytest.fixture
def store(backend):  # type: ignore[no-untyped-def]
    with backend.sync("bad.db", durability="commit") as s:
        s.record(event(0))
        yield s


def assert_unchanged(store: uw.SQLiteStore) -> None:
    store.flush()
    st = store.stats()
    assert st.events == 1
    assert st.inserted == 1
    assert (st.queued, st.write_errors, st.conflicts) == (0, 0, 0)


@pytest.mark.parametrize("bad", ["event", None, {"agent_id": "a"}, 1, [event(1)]])
def test_record_refuses_anything_but_an_event(store: uw.SQLiteStore, bad: Any) -> None:
    with pytest.raises(TypeError, match="event"):
        store.record(bad)
    assert_unchanged(store)


def test_a_batch_with_one_bad_item_writes_nothing(store: uw.SQLiteStore) -> None:
    with pytest.raises(TypeError, match=r"events\[2\]"):
        store.record_batch([event(1), event(2), "event", event(3)])  # type: ignore[list-item]
    assert_unchanged(store)

    def generator():  # type: ignore[no-untyped-def]
        yield event(1)
        yield event(2)
        raise RuntimeError("the caller's generator failed")

    with pytest.raises(RuntimeError):
        store.record_batch(generator())
    assert_unchanged(store)
    with pytest.raises(TypeError, match="events"):
        store.record_batch(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="events"):
        store.record_batch(event(1))  # type: ignore[arg-type]
    assert_unchanged(store)


def test_a_batch_whose_events_failed_to_build_writes_nothing(store: uw.SQLiteStore) -> None:
    built = []
    with pytest.raises(ValueError, match="tokens_in"):
        for i in range(1, 5):
            built.append(event(i, tokens_in=-1 if i == 3 else 1))
    assert_unchanged(store)


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "error", "name"),
    [
        ("query", (), {"agent": "a"}, TypeError, "agent"),
        ("query", (), {"user_id": "a"}, TypeError, "user_id"),
        ("query", (), {"start": T0, "end": T0 - dt.timedelta(microseconds=1)}, ValueError, "start"),
        ("query", (), {"start": dt.datetime(2026, 1, 1)}, ValueError, "start"),
        ("query", (), {"end": dt.datetime(2026, 1, 1)}, ValueError, "end"),
        ("query", (), {"start": "2026-01-01T00:00:00+00:00"}, TypeError, "start"),
        ("query", (), {"agent_id": 5}, TypeError, "agent_id"),
        ("query", (), {"limit": -1}, ValueError, "limit"),
        ("query", (), {"limit": 1.5}, TypeError, "limit"),
        ("query", (), {"offset": -1}, ValueError, "offset"),
        ("query", (), {"offset": 2**63}, ValueError, "offset"),
        ("aggregate", ("year",), {}, ValueError, "group_by"),
        ("aggregate", ("Day",), {}, ValueError, "group_by"),
        ("aggregate", (None,), {}, TypeError, "group_by"),
        ("aggregate", ("day",), {"tz": "Mars/Olympus"}, ValueError, "tz"),
        ("aggregate", ("day",), {"tz": "+05:00"}, ValueError, "tz"),
        ("aggregate", ("day",), {"tz": ""}, ValueError, "tz"),
        ("aggregate", ("day",), {"tz": 5}, TypeError, "tz"),
        ("aggregate", ("agent",), {"model_id": "m"}, TypeError, "model_id"),
        (
            "aggregate",
            ("day",),
            {"start": T0, "end": T0 - dt.timedelta(days=1)},
            ValueError,
            "start",
        ),
        ("summary", (), {"team": "x"}, TypeError, "team"),
        ("summary", (), {"start": T0 + dt.timedelta(1), "end": T0}, ValueError, "start"),
        ("agents", (), {"group": "x"}, TypeError, "group"),
        ("consumers", (), {"start": dt.datetime(2026, 1, 1)}, ValueError, "start"),
    ],
)
def test_bad_read_arguments_name_the_argument(
    store: uw.SQLiteStore,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[Exception],
    name: str,
) -> None:
    with pytest.raises(error, match=name):
        getattr(store, method)(*args, **kwargs)
    assert_unchanged(store)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"durability": "sometimes"}, ValueError, "durability"),
        ({"durability": 1}, TypeError, "durability"),
        ({"retention_seconds": -5}, ValueError, "retention_seconds"),
        ({"retention_seconds": "1h"}, TypeError, "retention_seconds"),
        ({"clock": 5.0}, TypeError, "clock"),
    ],
)
def test_bad_store_arguments_create_no_file(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        uw.SQLiteStore(tmp_path / "never.db", **kwargs)
    with pytest.raises(error, match=name):
        uw.AsyncSQLiteStore(tmp_path / "never.db", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_path_type(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="path"):
        uw.SQLiteStore(42)  # type: ignore[arg-type]
