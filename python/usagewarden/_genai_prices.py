"""The price table of the ``genai-prices`` package, in the shape
``Pricing.from_dict`` reads (``Pricing.from_genai_prices()`` calls this).

Token prices only (input, output, cache read, cache write, with their input
tiers and start dates); per-request, per-search and media prices are left
out. Each model is reachable by ``provider/id``, by its ``id`` (the first
provider listing it wins) and by the names its match rules accept, where
they are plain names, prefixes or substrings.
"""

from __future__ import annotations

from datetime import datetime, time, timezone
from typing import Any

_FIELDS = {
    "input": "input_mtok",
    "output": "output_mtok",
    "cache_read": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
}


def price_table() -> dict[str, Any]:
    try:
        from genai_prices import data
    except ImportError as exc:
        raise ImportError(
            "Pricing.from_genai_prices() needs the genai-prices package: pip install genai-prices"
        ) from exc
    table: dict[str, Any] = {}
    for provider in data.providers:
        for model in provider.models:
            entries = _entries(model.prices)
            if not entries:
                continue
            for name in [f"{provider.id}/{model.id}", model.id, *_names(model.match)]:
                table.setdefault(name, entries)
    return table


def _names(clause: Any) -> list[str]:
    """Names and ``*`` patterns equivalent to a match rule (others are skipped)."""
    kind = type(clause).__name__
    if kind == "ClauseEquals":
        return [clause.equals]
    if kind == "ClauseStartsWith":
        return [f"{clause.starts_with}*"]
    if kind == "ClauseContains":
        return [f"*{clause.contains}*"]
    if kind == "ClauseOr":
        return [name for part in clause.or_ for name in _names(part)]
    return []


def _entries(prices: Any) -> list[dict[str, Any]]:
    if not isinstance(prices, list):
        entry = _entry(prices)
        return [entry] if entry else []
    entries = []
    for conditional in prices:
        constraint = conditional.constraint
        if constraint is not None and type(constraint).__name__ != "StartDateConstraint":
            continue  # time-of-day prices cannot be expressed here
        entry = _entry(conditional.prices)
        if entry is None:
            continue
        if constraint is not None:
            start = datetime.combine(constraint.start_date, time(), tzinfo=timezone.utc)
            entry["effective_from"] = start.isoformat()
        entries.append(entry)
    return entries


def _entry(price: Any) -> dict[str, Any] | None:
    values: dict[str, Any] = {
        ours: getattr(price, theirs, None) for ours, theirs in _FIELDS.items()
    }
    if values["input"] is None:
        return None
    thresholds = sorted(
        {tier.start for v in values.values() if hasattr(v, "tiers") for tier in v.tiers}
    )
    entry: dict[str, Any] = {
        field: _at(value, 0) for field, value in values.items() if value is not None
    }
    entry.setdefault("output", 0.0)
    if thresholds:
        entry["tiers"] = [
            {"above_input_tokens": start}
            | {field: _at(value, start) for field, value in values.items() if value is not None}
            for start in thresholds
        ]
    return entry


def _at(value: Any, tokens: int) -> float:
    """USD per million tokens once the input passes ``tokens``."""
    if not hasattr(value, "tiers"):
        return float(value)
    price = value.base
    for tier in value.tiers:
        if tier.start <= tokens:
            price = tier.price
    return float(price)
