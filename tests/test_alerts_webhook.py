"""WebhookAlerts against a real HTTP server on 127.0.0.1: what is posted, the
retries, the cooldown, and that the caller never waits on the endpoint."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw

UTC = dt.timezone.utc
SECRET_PATH = "/services/T0000/B0000/not-to-be-stored"


class Endpoint:
    """A webhook receiver answering the scripted statuses in turn (then 200)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.hold: threading.Event | None = None
        self.entered = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.entered.set()
                if endpoint.hold is not None:
                    endpoint.hold.wait(30)
                endpoint.received.append(json.loads(body))
                endpoint.paths.append(self.path)
                endpoint.headers.append(dict(self.headers))
                status = endpoint.statuses.pop(0) if endpoint.statuses else 200
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    if e.hold is not None:
        e.hold.set()
    e.stop()


@pytest.fixture
def clock() -> uw.ManualClock:
    return uw.ManualClock(dt.datetime(2026, 1, 20, tzinfo=UTC).timestamp())


@pytest.fixture
def store(tmp_path: Path, clock: uw.ManualClock) -> Iterator[uw.SQLiteStore]:
    with uw.SQLiteStore(tmp_path / "alerts.db", clock=clock) as s:
        yield s


def deliveries(store: uw.SQLiteStore) -> list[dict[str, Any]]:
    store.flush()
    return [e.metadata or {} for e in store.query(action="budget.alert.delivery")]


def alert(budget: str = "monthly", threshold: float = 0.5) -> dict[str, Any]:
    return {
        "budget": budget,
        "scope_value": None,
        "kind": "threshold",
        "threshold": threshold,
        "spent_usd": 5.0,
        "limit_usd": 10.0,
        "period_start": dt.datetime(2026, 1, 1, tzinfo=UTC),
        "at": dt.datetime(2026, 1, 20, tzinfo=UTC),
    }


def test_a_crossed_threshold_is_posted_as_json_and_the_delivery_recorded(
    endpoint: Endpoint, store: uw.SQLiteStore, clock: uw.ManualClock
) -> None:
    hook = uw.WebhookAlerts(endpoint.url, store=store, clock=clock, headers={"X-Token": "t0ken"})
    engine = uw.BudgetEngine(
        [uw.Budget("monthly", 10.0, action="alert")], store, on_alert=hook, clock=clock
    )
    for _ in range(6):
        engine.settle(engine.check(estimated_cost=1.0), 1.0)
    assert hook.flush(10)
    [posted] = endpoint.received
    assert posted["budget"] == "monthly" and posted["kind"] == "threshold"
    assert posted["threshold"] == 0.5 and posted["spent_usd"] == 5.0
    assert posted["limit_usd"] == 10.0
    assert posted["period_start"] == "2026-01-01T00:00:00+00:00"
    assert endpoint.headers[0]["X-Token"] == "t0ken"
    assert endpoint.headers[0]["Content-Type"] == "application/json"
    [recorded] = deliveries(store)
    assert recorded["delivered"] is True and recorded["status"] == 200
    assert recorded["attempt"] == 1
    assert recorded["target"] == endpoint.url.removesuffix(SECRET_PATH)
    hook.close()


def test_slack_format_posts_a_text_message(endpoint: Endpoint) -> None:
    with uw.WebhookAlerts(endpoint.url, format="slack") as hook:
        hook(alert(threshold=0.9))
        assert hook.flush(10)
    [posted] = endpoint.received
    assert list(posted) == ["text"]
    assert "*monthly*" in posted["text"] and "90%" in posted["text"]
    assert "$5.00 of $10.00" in posted["text"]


def test_a_failing_endpoint_is_retried_with_backoff_until_it_answers(
    endpoint: Endpoint, store: uw.SQLiteStore
) -> None:
    endpoint.statuses = [500, 429, 503]
    with uw.WebhookAlerts(endpoint.url, store=store, retries=3, backoff=0.001) as hook:
        hook(alert())
        assert hook.flush(10)
        assert [(a.attempt, a.status, a.delivered) for a in hook.attempts] == [
            (1, 500, False),
            (2, 429, False),
            (3, 503, False),
            (4, 200, True),
        ]
    assert len(endpoint.received) == 4
    assert [(d["attempt"], d["status"], d["error"]) for d in deliveries(store)] == [
        (1, 500, "HTTP 500"),
        (2, 429, "HTTP 429"),
        (3, 503, "HTTP 503"),
        (4, 200, None),
    ]


def test_retries_stop_at_the_limit_and_a_client_error_is_final(endpoint: Endpoint) -> None:
    endpoint.statuses = [500, 500, 500, 400]
    with uw.WebhookAlerts(endpoint.url, retries=2, backoff=0.001) as hook:
        hook(alert("a"))  # 500, 500, 500: given up after 1 + 2 attempts
        hook(alert("b"))  # 400: not retried
        assert hook.flush(10)
        assert [(a.budget, a.status, a.delivered) for a in hook.attempts] == [
            ("a", 500, False),
            ("a", 500, False),
            ("a", 500, False),
            ("b", 400, False),
        ]


def test_an_endpoint_that_is_down_is_recorded_as_not_delivered(store: uw.SQLiteStore) -> None:
    with uw.WebhookAlerts(free_port_url(), store=store, retries=1, backoff=0.001) as hook:
        hook(alert())
        assert hook.flush(10)
    recorded = deliveries(store)
    assert [(d["attempt"], d["status"], d["delivered"]) for d in recorded] == [
        (1, None, False),
        (2, None, False),
    ]
    assert all(d["error"] for d in recorded)


def test_the_cooldown_skips_a_budgets_later_alerts_until_it_passes(
    endpoint: Endpoint, clock: uw.ManualClock
) -> None:
    with uw.WebhookAlerts(endpoint.url, cooldown=600, clock=clock) as hook:
        hook(alert("monthly", 0.5))
        hook(alert("monthly", 0.75))  # within the cooldown: skipped
        hook(alert("daily", 0.5))  # another budget: sent
        assert hook.flush(10)
        clock.advance(601)
        hook(alert("monthly", 0.9))
        assert hook.flush(10)
    assert [(p["budget"], p["threshold"]) for p in endpoint.received] == [
        ("monthly", 0.5),
        ("daily", 0.5),
        ("monthly", 0.9),
    ]
    assert hook.skipped == 1


def test_the_caller_never_waits_on_the_endpoint(endpoint: Endpoint) -> None:
    endpoint.hold = threading.Event()
    hook = uw.WebhookAlerts(endpoint.url)
    hook(alert())  # returns while the endpoint holds the request
    assert endpoint.entered.wait(10), "the delivery thread posted the alert"
    assert len(hook.attempts) == 0 and not hook.flush(0.05)
    endpoint.hold.set()
    assert hook.flush(10)
    assert [a.delivered for a in hook.attempts] == [True]
    hook.close()


def test_no_secret_of_the_url_or_headers_is_stored(
    endpoint: Endpoint, store: uw.SQLiteStore, tmp_path: Path
) -> None:
    with uw.WebhookAlerts(
        endpoint.url, store=store, headers={"Authorization": "Bearer hush-hush"}
    ) as hook:
        hook(alert())
        assert hook.flush(10)
    assert endpoint.paths == [SECRET_PATH]
    store.flush()  # the delivery is queued on the store (batch durability): committed before export
    out = tmp_path / "out.ndjson"
    store.export(str(out), format="ndjson")
    exported = out.read_text()
    assert "budget.alert.delivery" in exported
    assert "not-to-be-stored" not in exported and "hush-hush" not in exported
    assert "not-to-be-stored" not in repr(hook)


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"url": "ftp://example.org/hook"}, ValueError, "url"),
        ({"url": "http:///no-host"}, ValueError, "url"),
        ({"url": 42}, TypeError, "url"),
        ({"format": "xml"}, ValueError, "format"),
        ({"cooldown": -1}, ValueError, "cooldown"),
        ({"cooldown": float("nan")}, TypeError, "cooldown"),
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": 1.5}, ValueError, "retries"),
        ({"backoff": 0}, ValueError, "backoff"),
        ({"timeout": float("inf")}, ValueError, "timeout"),
        ({"headers": {"X": 1}}, TypeError, "headers"),
        ({"store": "alerts.db"}, TypeError, "store"),
        ({"clock": 5}, TypeError, "clock"),
        ({"max_queued": 0}, ValueError, "max_queued"),
    ],
)
def test_bad_arguments_are_refused_by_name(
    kwargs: dict[str, Any], error: type[Exception], argument: str
) -> None:
    kwargs = {"url": "http://127.0.0.1:9/hook", **kwargs}
    with pytest.raises(error, match=argument):
        uw.WebhookAlerts(**kwargs)


# Helpers.


def free_port_url() -> str:
    """A URL on a port that was free a moment ago: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"
