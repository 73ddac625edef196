"""``WebhookAlerts``: budget alerts delivered to a webhook, off the caller's path.

``BudgetEngine(budgets, store, on_alert=WebhookAlerts(url))`` posts every
alert (generic JSON, or Slack-compatible ``{"text": …}``) from a background
thread: ``on_alert`` only queues, so a slow or dead endpoint never delays the
call that crossed the threshold. An alert for a budget (and scope value)
that was delivered less than ``cooldown`` seconds ago is skipped. A failed
delivery (a connection error, a timeout, 429 or a 5xx) is retried with
exponential backoff; any other answer is final. Every attempt is kept in
``attempts`` and, with ``store=``, recorded in the ledger as a
``budget.alert.delivery`` event. Webhook URLs often carry their secret in the
path (Slack's do): only the scheme, host and port are ever logged or stored.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import urlsplit

from ._core import ManualClock, UsageEvent
from .store_protocol import AsyncMeteringStore, MeteringStore

__all__ = ["DeliveryAttempt", "WebhookAlerts"]

logger = logging.getLogger("usagewarden")

#: Answers worth another attempt: the endpoint may take the alert later.
_RETRIABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
#: The longest wait honoured from a ``Retry-After`` header, in seconds.
_MAX_RETRY_AFTER = 60.0
#: How many attempts ``attempts`` keeps (the ledger keeps them all).
_KEPT_ATTEMPTS = 1000


@dataclass(frozen=True)
class DeliveryAttempt:
    """One try at posting one alert."""

    budget: str
    scope_value: str | None
    kind: str
    attempt: int
    #: The HTTP status, or ``None`` when no answer came.
    status: int | None
    #: ``None`` when the endpoint answered 2xx; else what went wrong.
    error: str | None
    delivered: bool
    at: datetime


def _positive(value: object, name: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not (value >= 0 if zero else value > 0) or math.isinf(value):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return float(value)


def _origin(url: str) -> str:
    """The part of a URL that is safe to log: scheme, host and port."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _slack_text(alert: Mapping[str, Any]) -> str:
    scope = f" ({alert['scope_value']})" if alert.get("scope_value") else ""
    spent, limit = alert.get("spent_usd"), alert.get("limit_usd")
    if alert.get("kind") == "reset":
        return f":arrows_counterclockwise: Budget *{alert['budget']}*{scope}: a new period began."
    threshold = alert.get("threshold") or 0.0
    return (
        f":warning: Budget *{alert['budget']}*{scope} crossed {threshold:.0%}: "
        f"${spent:,.2f} of ${limit:,.2f} spent."
    )


class WebhookAlerts:
    """An ``on_alert`` handler that posts each alert to ``url``.

    ``format``: ``"json"`` (the alert as a JSON object, datetimes in ISO 8601)
    or ``"slack"`` (a Slack incoming-webhook message). ``cooldown``: seconds
    during which a budget's later alerts are skipped once one was delivered
    (``0``: none skipped). ``retries``: attempts after the first, waiting
    ``backoff`` seconds, then twice that, and so on (a ``Retry-After`` header
    is honoured up to a minute). ``timeout``: seconds per attempt.
    ``headers``: sent with every post (for instance an authorization
    header; they are never logged or stored). ``store``: the ledger that
    records every attempt. ``clock``: a ``ManualClock`` for the cooldown.
    """

    def __init__(
        self,
        url: str,
        *,
        format: Literal["json", "slack"] = "json",
        cooldown: float = 300.0,
        retries: int = 3,
        backoff: float = 1.0,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        store: MeteringStore | AsyncMeteringStore | None = None,
        clock: ManualClock | None = None,
        max_queued: int = 1000,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// URL with a host, got {url!r}")
        if format not in ("json", "slack"):
            raise ValueError(f"format must be 'json' or 'slack', got {format!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 1:
            raise ValueError(f"max_queued must be an int >= 1, got {max_queued!r}")
        if headers is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in dict(headers).items()
        ):
            raise TypeError("headers must map str to str")
        if store is not None and not isinstance(store, MeteringStore | AsyncMeteringStore):
            raise TypeError("store must be a usagewarden store or None")
        if clock is not None and not isinstance(clock, ManualClock):
            raise TypeError("clock must be a usagewarden.ManualClock or None")
        self.url = url
        self.format = format
        self.cooldown = _positive(cooldown, "cooldown", zero=True)
        self.retries = retries
        self.backoff = _positive(backoff, "backoff")
        self.timeout = _positive(timeout, "timeout")
        self.target = _origin(url)
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": "usagewarden-alerts",
            **(dict(headers) if headers else {}),
        }
        self._store = store.blocking() if isinstance(store, AsyncMeteringStore) else store
        self._clock = clock
        #: Recent attempts, oldest first.
        self.attempts: deque[DeliveryAttempt] = deque(maxlen=_KEPT_ATTEMPTS)
        #: Alerts skipped by the cooldown, and dropped because the queue was full.
        self.skipped = 0
        self.dropped = 0
        self._last_delivered: dict[tuple[str, str | None], float] = {}
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(max_queued)
        self._idle = threading.Condition()
        self._pending = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usagewarden-alerts", daemon=True)
        self._thread.start()

    def __call__(self, alert: dict[str, Any]) -> None:
        """Queues the alert and returns at once."""
        if self._closing.is_set():
            logger.warning("usagewarden: an alert came after WebhookAlerts.close(); not sent")
            return
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(dict(alert))
        except queue.Full:
            self._done()
            self.dropped += 1
            logger.error(
                "usagewarden: the alert queue is full; an alert to %s was dropped", self.target
            )

    def flush(self, timeout: float = 30.0) -> bool:
        """Waits until every queued alert is delivered or given up; False on timeout."""
        deadline = time.monotonic() + _positive(timeout, "timeout")
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Delivers what is queued (for up to ``timeout`` seconds), then stops."""
        self.flush(timeout)
        self._closing.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def __enter__(self) -> WebhookAlerts:
        return self

    def __exit__(self, *_args: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WebhookAlerts({self.target!r}, format={self.format!r})"

    # The delivery thread.

    def _now(self) -> float:
        return self._clock.now() if self._clock is not None else time.monotonic()

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _run(self) -> None:
        while (alert := self._queue.get()) is not None:
            try:
                self._deliver(alert)
            except Exception:  # the thread must outlive one bad alert
                logger.exception("usagewarden: could not deliver an alert to %s", self.target)
            finally:
                self._done()

    def _deliver(self, alert: dict[str, Any]) -> None:
        key = (str(alert.get("budget")), alert.get("scope_value"))
        last = self._last_delivered.get(key)
        if last is not None and self._now() - last < self.cooldown:
            self.skipped += 1
            return
        body = self._body(alert)
        for attempt in range(1, self.retries + 2):
            status, error, wait = self._post(body)
            delivered = error is None
            self._note(alert, attempt, status, error, delivered)
            if delivered:
                self._last_delivered[key] = self._now()
                return
            if wait is None or attempt > self.retries:
                logger.warning(
                    "usagewarden: alert for budget %r not delivered to %s after %d attempt(s): %s",
                    key[0],
                    self.target,
                    attempt,
                    error,
                )
                return
            pause = max(wait, self.backoff * 2 ** (attempt - 1))
            if self._closing.wait(min(pause, _MAX_RETRY_AFTER)):
                return

    def _body(self, alert: Mapping[str, Any]) -> bytes:
        if self.format == "slack":
            payload: dict[str, Any] = {"text": _slack_text(alert)}
        else:
            payload = {k: _plain(v) for k, v in alert.items()}
        return json.dumps(payload).encode()

    def _post(self, body: bytes) -> tuple[int | None, str | None, float | None]:
        """(status, error or None, seconds to wait before retrying or None: final)."""
        request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return answer.status, None, None
        except urllib.error.HTTPError as e:
            error = f"HTTP {e.code}"
            if e.code not in _RETRIABLE:
                return e.code, error, None
            return e.code, error, _retry_after(e.headers.get("Retry-After"))
        except (OSError, ValueError) as e:  # refused, reset, timed out, a bad answer
            return None, type(e).__name__, 0.0

    def _note(
        self,
        alert: Mapping[str, Any],
        attempt: int,
        status: int | None,
        error: str | None,
        delivered: bool,
    ) -> None:
        at = datetime.now(timezone.utc)
        record = DeliveryAttempt(
            budget=str(alert.get("budget")),
            scope_value=alert.get("scope_value"),
            kind=str(alert.get("kind")),
            attempt=attempt,
            status=status,
            error=error,
            delivered=delivered,
            at=at,
        )
        self.attempts.append(record)
        if self._store is None:
            return
        try:
            self._store.record(
                UsageEvent(
                    "usagewarden",
                    record.budget,
                    action="budget.alert.delivery",
                    timestamp=at,
                    source="usagewarden.alerts",
                    metadata={
                        "kind": record.kind,
                        "scope_value": record.scope_value,
                        "target": self.target,
                        "attempt": attempt,
                        "status": status,
                        "error": error,
                        "delivered": delivered,
                    },
                )
            )
        except Exception:
            logger.exception("usagewarden: could not record an alert delivery")


def _retry_after(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER)
    except ValueError:
        return 0.0  # an HTTP date: fall back on the backoff
