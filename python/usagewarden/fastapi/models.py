"""Request and response bodies of the usage API, as they appear in its
OpenAPI schema. Every time is ISO 8601 with a UTC offset."""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
)

#: Most events one ``POST /batch`` takes.
MAX_BATCH = 1000

_Id = Annotated[str, Field(min_length=1, max_length=256)]
# `lt=2**63` rather than `le=2**63 - 1`: the OpenAPI schema carries bounds as
# floats, and 2**63 is one that a float holds exactly.
_Count = Annotated[int, Field(ge=0, lt=2**63)]
#: Lowercase hex, an even number of 32 to 128 digits.
_ArtifactDigest = Annotated[str, Field(pattern=r"^(?:[0-9a-f]{2}){16,64}$")]
_NUMERIC = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _explicit_time(value: Any) -> Any:
    """A time is an ISO 8601 string with an offset, or a JSON number of
    seconds since the Unix epoch (UTC). A numeric *string* is refused: its
    unit (seconds? milliseconds?) would be a guess."""
    if isinstance(value, bool):
        raise ValueError("must be an ISO 8601 string with an offset, or a number of Unix seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number of Unix seconds")
        try:
            return datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ValueError("is out of range (years 1 to 9999)") from None
    if isinstance(value, str) and _NUMERIC.fullmatch(value):
        raise ValueError(
            "a numeric string is ambiguous: send ISO 8601 with an offset "
            "(2026-01-31T12:00:00Z), or a JSON number of Unix seconds"
        )
    return value


#: ISO 8601 with an offset, or a JSON number of Unix seconds.
#: (Strict models take times as strings only from JSON itself; after the
#: check above the value is a `str` or `datetime`, which lax parsing reads.)
Timestamp = Annotated[AwareDatetime, Strict(False), BeforeValidator(_explicit_time)]


class EventIn(BaseModel):
    """One event to record. ``namespace`` defaults to the caller's; a
    ``request_id`` makes retries idempotent (one is generated when absent)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    agent_id: _Id
    consumer_id: _Id
    task_id: _Id | None = None
    namespace: _Id | None = None
    action: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$")] = "llm.request"
    model: _Id | None = None
    tokens_in: _Count = 0
    tokens_out: _Count = 0
    cache_read_tokens: _Count = 0
    cache_write_tokens: _Count = 0
    duration_ms: _Count = 0
    api_calls: _Count = 0
    units: _Count = 0
    cost: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        None, description="USD; null when unknown (never a silent zero)."
    )
    timestamp: Timestamp | None = Field(
        None,
        description="When it happened: ISO 8601 with an offset, or a JSON number of "
        "seconds since the Unix epoch; defaults to now. Numeric strings are refused.",
    )
    request_id: _Id | None = None
    source: _Id | None = None
    metadata: dict[str, Any] | None = Field(
        None, description="Free-form JSON object; values under secret-like keys are redacted."
    )
    artifact_digest: _ArtifactDigest | None = Field(
        None, description="Digest of what the action produced; covered by the hash chain."
    )


EventBatch = Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH)]
event_adapter: TypeAdapter[EventIn] = TypeAdapter(EventIn)
batch_adapter: TypeAdapter[list[EventIn]] = TypeAdapter(EventBatch)


class EventOut(BaseModel):
    agent_id: str
    consumer_id: str
    task_id: str | None
    namespace: str
    action: str
    model: str | None
    tokens_in: int
    tokens_out: int
    cache_read_tokens: int
    cache_write_tokens: int
    duration_ms: int
    api_calls: int
    units: int
    cost: float | None
    timestamp: AwareDatetime
    request_id: str
    source: str | None
    metadata: dict[str, Any] | None
    artifact_digest: str | None = None


class EventPage(BaseModel):
    events: list[EventOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor`, with the same filters, for the next page; null on the last."
    )


class Totals(BaseModel):
    group: str | None
    events: int
    tokens_in: int
    tokens_out: int
    total_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    duration_ms: int
    api_calls: int
    units: int
    cost: float | None = Field(description="Sum of known costs; null when none is known.")
    unpriced_events: int
    unique_agents: int
    unique_consumers: int


class AggregateOut(BaseModel):
    group_by: str
    tz: str
    groups: list[Totals]


class Count(BaseModel):
    id: str
    events: int


class CountList(BaseModel):
    items: list[Count]


class StoreHealth(BaseModel):
    """The store's figures. ``queued``, ``write_errors`` and ``size_bytes``
    cover every namespace: null unless the principal has the
    ``usage:all-namespaces`` scope."""

    retention_seconds: float | None
    queued: int | None
    write_errors: int | None
    size_bytes: int | None


class StatsOut(BaseModel):
    namespace: str | None = Field(description="The namespace counted; null for all.")
    events: int
    unique_agents: int
    unique_consumers: int
    store: StoreHealth


class Recorded(BaseModel):
    request_id: str
    namespace: str
    created: bool = Field(description="False when the same event was recorded before.")


class BatchRecorded(BaseModel):
    received: int
    inserted: int
    duplicates: int


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='Where, e.g. ["body", 3, "tokens_in"].')
    msg: str
    type: str


class Validation(BaseModel):
    valid: bool
    errors: list[FieldError]


class BudgetStatus(BaseModel):
    budget: str
    namespace: str | None = Field(
        None, description="A stored budget's namespace; null for a budget given in code."
    )
    scope: str
    scope_value: str = Field(description="The scope's value; empty for a global budget.")
    spent_usd: float
    reserved_usd: float = Field(description="Estimates of calls in flight.")
    limit_usd: float
    percent: float
    period_start: AwareDatetime | None
    next_reset: AwareDatetime | None
    thresholds_crossed: list[float]


class BudgetList(BaseModel):
    budgets: list[BudgetStatus]


class Purged(BaseModel):
    purged: int


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable, machine-readable, e.g. `forbidden_namespace`.")
    message: str
    errors: list[FieldError] | None = None


class ErrorResponse(BaseModel):
    """The shape of every error this API returns."""

    detail: ErrorDetail


ExportFormat = Literal["csv", "json", "ndjson"]
GroupBy = Literal[
    "agent", "consumer", "model", "action", "namespace", "hour", "day", "week", "month"
]


# --- auditing ---------------------------------------------------------------

#: Most anchored checkpoints one ``POST /verify`` takes.
MAX_CHECKPOINTS = 1000
_Digest = Annotated[
    str, Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256, 64 lowercase hex digits.")
]
_Position = Annotated[int, Field(ge=1, lt=2**63)]


class CheckpointOut(BaseModel):
    """A namespace's hash chain at one position: anchor it elsewhere."""

    namespace: str
    position: int = Field(description="Events chained up to here (0 before the first).")
    digest: str = Field(description="The chain's SHA-256 digest at `position`, lowercase hex.")
    time: AwareDatetime = Field(description="When it was taken (the store's clock).")


class ReceiptOut(BaseModel):
    """One event's place in its namespace's chain: `digest` is
    `sha256(bytes.fromhex(previous) + payload.encode("utf-8"))`."""

    request_id: str
    namespace: str
    position: int = Field(description="The event's position in the chain (1 for the first).")
    payload: str = Field(description="The event's canonical encoding (UTF-8 JSON).")
    previous: str = Field(description="The chain's digest before the event; 64 zeros at 1.")
    digest: str = Field(description="The chain's digest after the event, lowercase hex.")


class CheckpointIn(BaseModel):
    """A checkpoint anchored earlier (as `GET /checkpoint` returned it)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    namespace: _Id | None = Field(None, description="The verified namespace when absent.")
    position: Annotated[int, Field(ge=0, lt=2**63)]
    digest: _Digest
    time: Timestamp | None = None


class VerifyIn(BaseModel):
    """What to verify; every field is optional (an empty body is `{}`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    namespace: _Id | None = Field(None, description="The caller's namespace when absent.")
    start: _Position | None = Field(None, description="First position to check; 1 when absent.")
    end: _Position | None = Field(
        None, description="Last position to check (inclusive); the chain head when absent."
    )
    max_rows: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Most positions this request checks; the server's bound when absent."
    )
    checkpoints: Annotated[list[CheckpointIn], Field(max_length=MAX_CHECKPOINTS)] = Field(
        default_factory=list,
        description="Anchored checkpoints: the chain must still pass through each one in range.",
    )


class VerifyProblemOut(BaseModel):
    kind: Literal["altered", "missing", "inserted", "reordered"]
    namespace: str
    position: int = Field(description="The chain position concerned.")
    request_id: str | None = Field(description="The row concerned; null for events that are gone.")
    message: str


class VerifyOut(BaseModel):
    ok: bool = Field(description="Whether every position checked is intact.")
    namespace: str
    start: int = Field(description="The first position checked.")
    rows: int = Field(description="Rows whose digest was recomputed and matched.")
    problem: VerifyProblemOut | None = Field(description="The first problem found.")
    checkpoint: CheckpointOut | None = Field(
        description="Where the verified chain ends: anchor it, or pass it among the next "
        "request's `checkpoints` to tie the requests of a walk together."
    )
    next_start: int | None = Field(
        description="`start` for the next request when the range was not finished; null "
        "when it was, or when a problem was found."
    )


verify_adapter: TypeAdapter[VerifyIn] = TypeAdapter(VerifyIn)
