"""UsageEvent: defaults, immutability, conversions and the to_dict/from_dict round trip."""

from __future__ import annotations

import copy
import datetime as dt
import json
import pickle
import time
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import usagewarden as uw
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_helpers import MAX_COUNT, T0, UTC, event


def test_defaults() -> None:
    before = dt.datetime.now(UTC)
    e = uw.UsageEvent("agent", "consumer")
    after = dt.datetime.now(UTC)
    assert e.agent_id == "agent"
    assert e.consumer_id == "consumer"
    assert e.task_id is None
    assert e.namespace == "default"
    assert e.action == "llm.request"
    assert e.model is None
    for field in (
        "tokens_in",
        "tokens_out",
        "cache_read_tokens",
        "cache_write_tokens",
        "duration_ms",
        "api_calls",
        "units",
        "total_tokens",
    ):
        assert getattr(e, field) == 0, field
    assert e.cost is None, "an unknown cost is None, never a silent zero"
    assert e.source is None
    assert e.metadata is None
    assert e.timestamp.utcoffset() == dt.timedelta(0)
    assert (
        before - dt.timedelta(milliseconds=1) <= e.timestamp <= after + dt.timedelta(milliseconds=1)
    )


def test_every_field_is_kept() -> None:
    e = uw.UsageEvent(
        "agent",
        "consumer",
        task_id="task-1",
        namespace="tenant-a",
        action="tool:search",
        model="claude-sonnet",
        tokens_in=1,
        tokens_out=2,
        cache_read_tokens=3,
        cache_write_tokens=4,
        duration_ms=5,
        api_calls=6,
        units=7,
        cost=0.25,
        timestamp=T0,
        request_id="rid-1",
        source="unit-test",
        metadata={"b": [1, 2], "a": {"nested": True}},
    )
    assert (e.task_id, e.namespace, e.action, e.model) == (
        "task-1",
        "tenant-a",
        "tool:search",
        "claude-sonnet",
    )
    assert (e.tokens_in, e.tokens_out, e.cache_read_tokens, e.cache_write_tokens) == (1, 2, 3, 4)
    assert (e.duration_ms, e.api_calls, e.units) == (5, 6, 7)
    assert e.total_tokens == 3
    assert e.cost == 0.25
    assert e.timestamp == T0
    assert e.request_id == "rid-1"
    assert e.source == "unit-test"
    assert e.metadata == {"a": {"nested": True}, "b": [1, 2]}


def test_ids_and_counts_at_their_limits_are_accepted() -> None:
    e = uw.UsageEvent(
        "é" * 256,  # 256 characters (512 bytes): the limit counts characters
        "c" * 256,
        task_id="t" * 256,
        namespace="n" * 256,
        model="m" * 256,
        source="s" * 256,
        request_id="r" * 256,
        action="a" + "b" * 63,
        tokens_in=MAX_COUNT,
        units=MAX_COUNT,
    )
    assert len(e.agent_id) == 256
    assert e.tokens_in == MAX_COUNT
    assert len(e.action) == 64


@pytest.mark.parametrize("action", ["llm.request", "tool:search", "a", "memory.recall-v2", "x_1"])
def test_actions_following_the_pattern_are_accepted(action: str) -> None:
    assert uw.UsageEvent("a", "c", action=action).action == action


def test_events_are_immutable() -> None:
    e = event(1)
    for field in ("agent_id", "tokens_in", "cost", "metadata", "timestamp", "request_id"):
        with pytest.raises(AttributeError):
            setattr(e, field, None)
    meta = {"k": [1]}
    e = uw.UsageEvent("a", "c", metadata=meta)
    meta["k"].append(2)
    meta["new"] = 1
    assert e.metadata == {"k": [1]}, "the event keeps its own copy of the metadata"
    e.metadata["k"].append(3)  # type: ignore[index]
    assert e.metadata == {"k": [1]}, "reading metadata hands out a copy"


def test_default_request_id_is_a_uuid7_and_time_ordered() -> None:
    generated = [uw.UsageEvent("a", "c").request_id for _ in range(2000)]
    assert len(set(generated)) == len(generated)
    for rid in generated[:50]:
        u = uuid.UUID(rid)
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
        assert str(u) == rid, "canonical lower-case hyphenated form"
    ms = uuid.UUID(generated[0]).int >> 80
    assert abs(ms / 1000 - time.time()) < 60, "the UUIDv7 carries the current Unix time in ms"
    timestamps = [uuid.UUID(r).int >> 80 for r in generated]
    assert timestamps == sorted(timestamps)


@pytest.mark.parametrize(
    "tz",
    [
        dt.timezone(dt.timedelta(hours=-5)),
        dt.timezone(dt.timedelta(hours=5, minutes=45)),
        ZoneInfo("America/New_York"),
        ZoneInfo("Australia/Lord_Howe"),
    ],
)
def test_timestamps_are_converted_to_utc_with_microseconds(tz: dt.tzinfo) -> None:
    local = dt.datetime(2026, 3, 8, 1, 30, 15, 123456, tzinfo=tz)
    e = uw.UsageEvent("a", "c", timestamp=local)
    assert e.timestamp == local, "the same instant"
    assert e.timestamp.utcoffset() == dt.timedelta(0), "returned in UTC"
    assert e.timestamp.microsecond == 123456


def test_ambiguous_local_times_follow_fold() -> None:
    ny = ZoneInfo("America/New_York")
    first = uw.UsageEvent("a", "c", timestamp=dt.datetime(2026, 11, 1, 1, 30, tzinfo=ny, fold=0))
    second = uw.UsageEvent("a", "c", timestamp=dt.datetime(2026, 11, 1, 1, 30, tzinfo=ny, fold=1))
    assert first.timestamp == dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert second.timestamp == dt.datetime(2026, 11, 1, 6, 30, tzinfo=UTC)


def test_far_timestamps_round_trip() -> None:
    for ts in (
        dt.datetime(1, 1, 1, tzinfo=UTC),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        assert uw.UsageEvent("a", "c", timestamp=ts).timestamp == ts


@pytest.mark.parametrize(
    ("usd", "expected"),
    [(0, 0.0), (3, 3.0), (0.1, 0.1), (1.5e-9, 2e-9), (1e-10, 0.0), (123.456789012, 123.456789012)],
)
def test_cost_is_kept_to_the_nano_dollar(usd: float, expected: float) -> None:
    assert uw.UsageEvent("a", "c", cost=usd).cost == expected


def test_to_dict_is_json_ready_and_round_trips() -> None:
    e = event(
        7,
        task_id="t",
        namespace="ns",
        action="tool:call",
        cache_read_tokens=3,
        cache_write_tokens=4,
        units=9,
        source="src",
        metadata={"z": 1, "a": ["x", None, 1.5], "nested": {"ok": True}},
    )
    d = e.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["timestamp"] == "2026-02-14T12:00:07.000000+00:00"
    assert d["cost"] == e.cost
    assert d["metadata"] == e.metadata
    assert set(d) == {
        "agent_id",
        "consumer_id",
        "task_id",
        "namespace",
        "action",
        "model",
        "tokens_in",
        "tokens_out",
        "cache_read_tokens",
        "cache_write_tokens",
        "duration_ms",
        "api_calls",
        "units",
        "cost",
        "timestamp",
        "request_id",
        "source",
        "metadata",
        "artifact_digest",
    }
    back = uw.UsageEvent.from_dict(d)
    assert back == e
    assert back.to_dict() == d
    assert uw.UsageEvent.from_dict(json.loads(json.dumps(d))) == e


def test_from_dict_accepts_datetimes_and_derived_fields() -> None:
    e = event(1)
    d = e.to_dict()
    d["timestamp"] = e.timestamp.astimezone(ZoneInfo("Asia/Tokyo"))
    d["total_tokens"] = e.total_tokens
    assert uw.UsageEvent.from_dict(d) == e


def test_from_dict_refuses_unknown_fields_and_missing_ids() -> None:
    with pytest.raises(ValueError, match="colour"):
        uw.UsageEvent.from_dict({"agent_id": "a", "consumer_id": "c", "colour": "red"})
    with pytest.raises(ValueError, match="consumer_id"):
        uw.UsageEvent.from_dict({"agent_id": "a"})
    with pytest.raises(ValueError, match="timestamp"):
        uw.UsageEvent.from_dict({"agent_id": "a", "consumer_id": "c", "timestamp": "2026-01-01"})


def test_equality_hash_pickle_and_copy() -> None:
    a = event(1, metadata={"x": 1, "y": 2})
    b = event(1, metadata={"y": 2, "x": 1})
    assert a == b, "metadata key order is not content"
    assert hash(a) == hash(b)
    assert a != event(1, tokens_in=1)
    assert a != event(1, request_id="other")
    assert a != "not an event"
    assert len({a, b, event(2)}) == 2
    for clone in (pickle.loads(pickle.dumps(a)), copy.copy(a), copy.deepcopy(a)):
        assert clone == a
        assert clone.to_dict() == a.to_dict()
    assert "agent-1" in repr(a)


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
)
_JSON_KEYS = (
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
    | st.integers(-1000, 1000)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False, allow_infinity=False)
)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4).filter(lambda k: "\x00" not in k), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_JSON_KEYS, _JSON_VALUES, max_size=6))
def test_metadata_is_stored_as_its_json_text_would_be(metadata: dict[Any, Any]) -> None:
    """A dict given to ``UsageEvent`` is stored exactly as the same metadata
    sent as JSON text to the usage API is (keys converted as ``json.dumps``
    converts them, sorted, secrets redacted)."""
    try:
        text = json.dumps({"agent_id": "a", "consumer_id": "c", "metadata": metadata})
    except (TypeError, ValueError):
        return  # keys json.dumps cannot write together
    from_text = uw._core._events_from_json(text.encode(), many=False, namespace="default")
    assert from_text is not None
    stored = uw.UsageEvent("a", "c", metadata=metadata).metadata
    assert stored == from_text[0].metadata


def _of_call(**changes: Any) -> uw.UsageEvent:
    fields: dict[str, Any] = {
        "agent_id": "a",
        "consumer_id": "c",
        "task_id": "t",
        "namespace": "ns",
        "action": "llm.request",
        "model": "gpt-4o",
        "usage": uw.Usage(1, 90, 40, 5, 3, 0.0),
        "duration_ms": 12,
        "cost": 0.25,
        "timestamp_us": 1_764_000_000_123_456,
        "request_id": "r-1",
        "source": "usagewarden.warden",
        "metadata": {"run_id": "x"},
    }
    fields.update(changes)
    return uw.UsageEvent._of_call(*fields.values())


def test_the_warden_constructor_makes_the_event_the_keyword_one_does() -> None:
    made = _of_call()
    assert made == uw.UsageEvent(
        "a",
        "c",
        task_id="t",
        namespace="ns",
        action="llm.request",
        model="gpt-4o",
        tokens_in=90,
        tokens_out=40,
        cache_read_tokens=5,
        cache_write_tokens=3,
        duration_ms=12,
        api_calls=1,
        cost=0.25,
        timestamp_us=1_764_000_000_123_456,
        request_id="r-1",
        source="usagewarden.warden",
        metadata={"run_id": "x"},
    )
    fresh = _of_call(request_id=None, cost=None, metadata=None, task_id=None)
    assert uuid.UUID(fresh.request_id).version == 7
    assert fresh.cost is None and fresh.metadata is None and fresh.task_id is None


@pytest.mark.parametrize(
    ("changes", "error", "named"),
    [
        ({"agent_id": ""}, ValueError, "agent_id"),
        ({"namespace": "x" * 300}, ValueError, "namespace"),
        ({"action": "Not An Action"}, ValueError, "action"),
        ({"model": 3}, TypeError, "model"),
        ({"duration_ms": -1}, ValueError, "duration_ms"),
        ({"cost": -0.5}, ValueError, "cost"),
        ({"timestamp_us": 2**63}, ValueError, "timestamp_us"),
        ({"metadata": {"k": object()}}, TypeError, "metadata"),
        ({"usage": (1, 2)}, TypeError, "usage"),
    ],
)
def test_the_warden_constructor_checks_like_the_keyword_one(
    changes: dict[str, Any], error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=named):
        _of_call(**changes)


def test_a_stamped_event_is_the_prototype_with_a_new_id_time_consumer_and_duration() -> None:
    prototype = uw.UsageEvent(
        "api",
        "anonymous",
        namespace="ns",
        action="http.request",
        api_calls=1,
        source="usagewarden.fastapi",
        metadata={"route": "/items/{item_id}", "method": "GET", "status": 200},
        timestamp_us=1_764_000_000_000_000,
    )
    before = time.time()
    first, second = prototype._stamped("acme", 12), prototype._stamped("beta", 0)
    after = time.time()
    assert len({prototype.request_id, first.request_id, second.request_id}) == 3
    assert (first.consumer_id, first.duration_ms) == ("acme", 12)
    assert (second.consumer_id, second.duration_ms) == ("beta", 0)
    assert before - 0.001 <= first.timestamp.timestamp() <= after + 0.001
    rest = {
        k: v
        for k, v in prototype.to_dict().items()
        if k not in ("request_id", "timestamp", "consumer_id", "duration_ms")
    }
    assert {k: v for k, v in first.to_dict().items() if k in rest} == rest


@pytest.mark.parametrize(
    ("consumer", "duration", "error", "named"),
    [
        ("", 1, ValueError, "consumer_id"),
        (3, 1, TypeError, "consumer_id"),
        ("c", -1, ValueError, "duration_ms"),
        ("c", "5", TypeError, "duration_ms"),
    ],
)
def test_a_stamped_event_checks_what_it_is_given(
    consumer: Any, duration: Any, error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=named):
        uw.UsageEvent("api", "anonymous")._stamped(consumer, duration)
