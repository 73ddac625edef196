"""Times on the command line: ISO dates and times, ``now``, and durations
back from now such as ``7d`` or ``12h``."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def zone(name: str) -> tzinfo:
    """The IANA zone ``name`` (``UTC`` included)."""
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(
            f"{name!r} is not an IANA time zone (e.g. UTC, Europe/Paris)", param_hint="--tz"
        ) from None


def duration(text: str) -> timedelta | None:
    """``7d``, ``12h``, ``30m``, ``90s``, ``2w`` as a timedelta; ``None`` if
    ``text`` is not a duration."""
    match = _DURATION.match(text)
    if match is None:
        return None
    return timedelta(seconds=float(match.group(1)) * _SECONDS[match.group(2)])


def point_in_time(
    text: str, tz: tzinfo, *, option: str, end_of_day: bool = False, now: datetime | None = None
) -> datetime:
    """An aware datetime from ``text``: ``now``, a duration before now, an ISO
    date (its first instant in ``tz``, or its last with ``end_of_day``), or an
    ISO date and time (in ``tz`` unless it has an offset)."""
    current = now or datetime.now(timezone.utc)
    if text.strip().lower() == "now":
        return current
    back = duration(text)
    if back is not None:
        return current - back
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        pass
    else:
        if end_of_day:
            following = datetime.combine(day + timedelta(days=1), time(), tz)
            return following - timedelta(microseconds=1)
        return datetime.combine(day, time(), tz)
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a date, a date and time (ISO 8601) nor a duration "
            "such as 7d, 12h or 30m",
            param_hint=option,
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)
