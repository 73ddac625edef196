"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven
by playwright) against ``usagewarden serve`` on 127.0.0.1, seeded with known
events: what the page shows is checked against what the API answers for the
very requests the page made."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse
from zoneinfo import ZoneInfo

import httpx
import pytest
from operator_helpers import (
    ADMIN_KEY,
    KEYS_TOML,
    OTHER_KEY,
    READ_KEY,
    known_events,
    running_server,
    seed,
)

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
UTC = dt.timezone.utc
BROWSER_ZONE = "Asia/Tokyo"
TIMEOUT_MS = 30_000

BUDGETS_TOML = """
[[budgets]]
name = "team-a weekly"
limit_usd = 4.0
scope = "namespace"
match = "team-a"
period = "weekly"
thresholds = [0.5, 0.8, 1.0]

[[budgets]]
name = "per-agent daily"
limit_usd = 0.25
scope = "agent"
period = "daily"
tz = "Europe/Paris"
"""


def _browser_or_skip() -> Any:
    """playwright's sync API, or a skip (a failure in CI) naming what to install."""
    required = os.environ.get("USAGEWARDEN_REQUIRE_SERVERS") == "1"
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        message = f"{CHROMIUM} is missing: install the Debian package chromium"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "playwright is missing: pip install -e '.[test]'"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("dashboard")
    ledger = directory / "usage.db"
    seed(ledger, known_events(dt.datetime.now(UTC), days=60, per_day=12, scale=25))
    (directory / "keys.toml").write_text(KEYS_TOML)
    (directory / "budgets.toml").write_text(BUDGETS_TOML)
    with running_server(
        "--db",
        str(ledger),
        "--keys",
        str(directory / "keys.toml"),
        "--budgets",
        str(directory / "budgets.toml"),
        "--requests-per-minute",
        "5000",
        log=directory / "serve.log",
    ) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


class Page:
    """A browser tab on the dashboard that records what it asked the API,
    what it wrote on its console, and every request it tried to send
    anywhere but the server (each one refused)."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.origin = urlparse(base)
        self.context = browser.new_context(
            viewport={"width": 1440, "height": 1000}, timezone_id=BROWSER_ZONE, locale="en-GB"
        )
        self.requests: list[str] = []
        self.console: list[str] = []
        self.elsewhere: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        self.page.on("request", lambda request: self.requests.append(request.url))

    def _route(self, route: Any) -> None:
        target = urlparse(route.request.url)
        if (target.hostname, target.port) == (self.origin.hostname, self.origin.port):
            route.continue_()
        else:
            self.elsewhere.append(route.request.url)
            route.abort()

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")

    def sign_in(self, key: str) -> None:
        self.page.goto(self.base + "/")
        self.page.wait_for_selector("body[data-state=signed-out]")
        self.page.fill("#api-key", key)
        self.page.click("#signin-form button[type=submit]")
        self.wait_ready(0)

    def generation(self) -> int:
        return int(self.page.evaluate("Number(document.body.dataset.generation || 0)"))

    def wait_ready(self, after: int) -> None:
        self.page.wait_for_function(
            "n => document.body.dataset.state === 'ready' && "
            "Number(document.body.dataset.generation) > n",
            arg=after,
        )

    def choose(self, select: str, value: str) -> None:
        before = self.generation()
        self.page.select_option(select, value)
        self.wait_ready(before)

    def last_request(
        self, path: str, where: Callable[[dict[str, str]], bool] = lambda _: True, **matching: str
    ) -> tuple[str, dict[str, str]]:
        """The API path and query of the page's latest request to ``path``
        whose query has ``matching`` and satisfies ``where``."""
        for url in reversed(self.requests):
            parsed = urlparse(url)
            query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
            if parsed.path != path or not where(query):
                continue
            if all(query.get(k) == v for k, v in matching.items()):
                return parsed.path, query
        raise AssertionError(f"the page never asked for {path} {matching}")

    def text(self, selector: str) -> str:
        return str(self.page.locator(selector).inner_text()).strip()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Any, server: str) -> Iterator[Page]:
    page = Page(browser, server)
    yield page
    page.close()


def api(base: str, path: str, query: dict[str, str], key: str = ADMIN_KEY) -> Any:
    response = httpx.get(f"{base}{path}?{urlencode(query)}", headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    return response.json()


def money(text: str) -> Decimal:
    return Decimal(text.replace("$", "").replace(",", "").strip())


def same_cents(shown: str, value: float | None) -> None:
    """What the page shows is the API's value to the cent."""
    if value is None:
        assert shown == "—"
        return
    assert abs(money(shown) - Decimal(repr(value))) <= Decimal("0.005"), (shown, value)


def number(text: str) -> int:
    return int(text.replace(",", "").strip())


def chart(tab: Page, node: str) -> list[dict[str, Any]]:
    traces: list[dict[str, Any]] = tab.page.evaluate(
        f"""document.getElementById({node!r}).data.map(t => ({{
            name: t.name, labels: Array.from(t.customdata), y: Array.from(t.y)}}))"""
    )
    return traces


def check_charts(tab: Page) -> None:
    """Each model's bars are the API's buckets for that model; every bucket's
    stack adds up to the API's total for it (spend to the nano-USD, tokens exactly)."""
    _, total_query = tab.last_request(
        "/usage/aggregate",
        lambda q: q.get("group_by") in ("hour", "day", "week") and "model" not in q,
    )
    bucket = total_query["group_by"]
    totals = {g["group"]: g for g in api(tab.base, "/usage/aggregate", total_query)["groups"]}
    for node, field in (("chart-spend", "cost"), ("chart-tokens", "total_tokens")):
        traces = chart(tab, node)
        assert traces, node
        for trace in traces:
            assert trace["labels"] == list(totals), (node, trace["name"])
            if trace["name"] in ("other", "all"):
                continue
            per_model = api(tab.base, "/usage/aggregate", {**total_query, "model": trace["name"]})
            by_label = {g["group"]: g[field] or 0 for g in per_model["groups"]}
            assert trace["y"] == [by_label.get(label, 0) for label in trace["labels"]]
        for i, label in enumerate(totals):
            stacked = sum(trace["y"][i] for trace in traces)
            assert stacked == pytest.approx(totals[label][field] or 0, abs=1e-9), (label, bucket)


def check_top_list(tab: Page, node: str, query: dict[str, str]) -> None:
    groups = {g["group"] or "": g for g in api(tab.base, "/usage/aggregate", query)["groups"]}
    items = tab.page.locator(f"#{node} li")
    assert items.count() == min(len(groups), 8)
    shown_costs = []
    for i in range(items.count()):
        item = items.nth(i)
        group = groups[item.get_attribute("data-group")]
        same_cents(item.locator("[data-field=cost]").inner_text(), group["cost"])
        assert (
            number(item.locator("[data-field=total_tokens]").inner_text()) == group["total_tokens"]
        )
        assert number(item.locator("[data-field=events]").inner_text()) == group["events"]
        shown_costs.append(group["cost"] or 0)
    assert shown_costs == sorted(shown_costs, reverse=True)


def check_events(tab: Page, page: dict[str, Any], zone: str) -> None:
    rows = tab.page.locator("#events-table tbody tr")
    assert rows.count() == len(page["events"])
    for i, event in enumerate(page["events"]):
        row = rows.nth(i)
        assert row.get_attribute("data-request-id") == event["request_id"]
        same_cents(row.locator("[data-field=cost]").inner_text(), event["cost"])
        at = dt.datetime.fromisoformat(event["timestamp"]).astimezone(ZoneInfo(zone))
        assert row.locator("td").first.inner_text() == at.strftime("%d %b %Y, %H:%M:%S")


def test_the_dashboard_shows_what_the_api_answers(tab: Page) -> None:
    tab.sign_in(ADMIN_KEY)
    assert tab.page.input_value("#tz") == BROWSER_ZONE
    assert tab.page.input_value("#namespace") == "team-a"
    _, query = tab.last_request("/usage/summary")
    assert query["namespace"] == "team-a"
    summary = api(tab.base, "/usage/summary", query)
    assert summary["events"] > 0
    same_cents(tab.text("#kpi-cost"), summary["cost"])
    assert number(tab.text("#kpi-events")) == summary["events"]
    assert number(tab.text("#kpi-tokens")) == summary["total_tokens"]
    assert number(tab.text("#kpi-agents")) == summary["unique_agents"]

    check_charts(tab)
    for node, group_by in (("top-agents", "agent"), ("top-consumers", "consumer")):
        check_top_list(tab, node, {**query, "group_by": group_by})
    check_top_list(tab, "top-models", {**query, "group_by": "model"})

    budgets = api(tab.base, "/usage/budgets", {})["budgets"]
    shown = tab.page.locator("#budgets .budget")
    assert shown.count() == len(budgets) >= 2
    for i, budget in enumerate(budgets):
        item = shown.nth(i)
        assert item.get_attribute("data-budget") == budget["budget"]
        assert item.get_attribute("data-scope-value") == budget["scope_value"]
        same_cents(item.locator("[data-field=spent_usd]").inner_text(), budget["spent_usd"])
        same_cents(item.locator("[data-field=limit_usd]").inner_text(), budget["limit_usd"])
        reset = dt.datetime.fromisoformat(budget["next_reset"]).astimezone(ZoneInfo(BROWSER_ZONE))
        assert item.locator("[data-field=next_reset]").inner_text() == (
            f"resets {reset.strftime('%d %b %Y, %H:%M')}"
        )
    # The thresholds of each budget are drawn, the crossed ones marked.
    assert tab.page.locator("#budgets .budget").first.locator(".tick").count() == 3

    limiter = api(tab.base, "/usage/limiter", {})
    keys = tab.page.locator("#limiter .key-block")
    assert [keys.nth(i).get_attribute("data-key") for i in range(keys.count())] == [
        k["key"] for k in limiter["keys"]
    ]
    operator = tab.page.locator("#limiter [data-key=operator] [data-field=used]")
    assert number(operator.inner_text()) > 0  # this tab's own requests

    _, events_query = tab.last_request("/usage", limit="25")
    check_events(tab, api(tab.base, "/usage", events_query), BROWSER_ZONE)

    SCREENSHOT.parent.mkdir(exist_ok=True)
    tab.page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert tab.console == []
    assert tab.elsewhere == []


def test_range_and_zone_change_what_is_shown(tab: Page) -> None:
    tab.sign_in(ADMIN_KEY)
    _, week = tab.last_request("/usage/summary")
    tab.choose("#range", "2592000")
    _, month = tab.last_request("/usage/summary")
    assert month["start"] < week["start"]
    monthly = api(tab.base, "/usage/summary", month)
    assert number(tab.text("#kpi-events")) == monthly["events"]
    assert monthly["events"] > api(tab.base, "/usage/summary", week)["events"]
    same_cents(tab.text("#kpi-cost"), monthly["cost"])

    tokyo = chart(tab, "chart-spend")
    tab.choose("#tz", "America/New_York")
    _, days = tab.last_request("/usage/aggregate", group_by="day", tz="America/New_York")
    assert days["start"] == tab.last_request("/usage/summary")[1]["start"]
    check_charts(tab)
    new_york = chart(tab, "chart-spend")
    assert [t["y"] for t in new_york] != [t["y"] for t in tokyo]
    _, events_query = tab.last_request("/usage", limit="25")
    check_events(tab, api(tab.base, "/usage", events_query), "America/New_York")

    tab.choose("#range", "86400")
    _, hours = tab.last_request("/usage/aggregate", group_by="hour")
    assert hours["tz"] == "America/New_York"
    check_charts(tab)
    assert tab.console == []
    assert tab.elsewhere == []


def test_events_page_with_the_cursor(tab: Page) -> None:
    tab.sign_in(ADMIN_KEY)
    tab.choose("#range", "2592000")
    _, first_query = tab.last_request("/usage", limit="25")
    first = api(tab.base, "/usage", first_query)
    assert first["next_cursor"]
    check_events(tab, first, BROWSER_ZONE)

    def click(button: str) -> None:
        shown = tab.page.evaluate("Number(document.body.dataset.eventPages)")
        tab.page.click(button)
        tab.page.wait_for_function("n => Number(document.body.dataset.eventPages) > n", arg=shown)

    click("#events-next")
    _, second_query = tab.last_request("/usage", limit="25")
    assert second_query["cursor"] == first["next_cursor"]
    second = api(tab.base, "/usage", second_query)
    check_events(tab, second, BROWSER_ZONE)
    assert {e["request_id"] for e in second["events"]}.isdisjoint(
        e["request_id"] for e in first["events"]
    )
    assert tab.text("#events-range").startswith("26–50 of ")

    click("#events-prev")
    check_events(tab, first, BROWSER_ZONE)

    click("#events-latest")
    _, latest_query = tab.last_request("/usage", limit="25")
    latest = api(tab.base, "/usage", latest_query)
    total = api(tab.base, "/usage/summary", tab.last_request("/usage/summary")[1])["events"]
    assert int(latest_query["offset"]) == total - 25
    assert latest["next_cursor"] is None
    check_events(tab, latest, BROWSER_ZONE)
    assert tab.page.is_disabled("#events-next")
    assert tab.console == []
    assert tab.elsewhere == []


def test_a_key_sees_only_its_namespace(tab: Page) -> None:
    tab.sign_in(OTHER_KEY)
    options = tab.page.locator("#namespace option")
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == ["team-b"]
    _, query = tab.last_request("/usage/summary")
    summary = api(tab.base, "/usage/summary", query, key=OTHER_KEY)
    assert number(tab.text("#kpi-events")) == summary["events"] > 0
    same_cents(tab.text("#kpi-cost"), summary["cost"])
    # No budget of team-a, and only this key's own limiter window.
    assert tab.page.locator("#budgets .budget").count() == 0
    keys = tab.page.locator("#limiter .key-block")
    assert [keys.nth(i).get_attribute("data-key") for i in range(keys.count())] == ["outsider"]
    assert tab.console == []


def test_a_wrong_key_is_refused_and_no_key_is_kept_in_the_page(tab: Page) -> None:
    tab.page.goto(tab.base + "/")
    tab.page.wait_for_selector("body[data-state=signed-out]")
    tab.page.fill("#api-key", "not-a-valid-key-at-all")
    tab.page.click("#signin-form button[type=submit]")
    tab.page.wait_for_function("() => document.getElementById('signin-error').textContent !== ''")
    assert "not valid" in tab.text("#signin-error")
    assert tab.page.evaluate("sessionStorage.length") == 0
    tab.sign_in(ADMIN_KEY)
    html = tab.page.content()
    assert ADMIN_KEY not in html
    assert tab.page.evaluate("sessionStorage.getItem('usagewarden.api-key')") == ADMIN_KEY
    tab.page.click("#signout")
    tab.page.wait_for_selector("body[data-state=signed-out]")
    assert tab.page.evaluate("sessionStorage.length") == 0
    assert tab.elsewhere == []


def test_budgets_are_created_edited_reset_and_deleted_in_the_page(tab: Page) -> None:
    tab.sign_in(ADMIN_KEY)
    tab.page.wait_for_selector("#managed:not([hidden])")
    stored = "/usage/budgets/managed"

    def managed() -> int:
        return int(tab.page.evaluate("Number(document.body.dataset.managed || 0)"))

    def submit_and_wait(selector: str, counter: str = "managed") -> None:
        shown = tab.page.evaluate(f"Number(document.body.dataset.{counter} || 0)")
        tab.page.click(selector)
        tab.page.wait_for_function(
            f"n => Number(document.body.dataset.{counter} || 0) > n", arg=shown
        )

    def item() -> Any:
        return tab.page.locator('#managed-list .budget[data-budget="browser-daily"]')

    assert managed() >= 1
    tab.page.fill("#bf-name", "browser-daily")
    tab.page.fill("#bf-limit", "2.5")
    tab.page.select_option("#bf-period", "daily")
    tab.page.fill("#bf-thresholds", "0.5, 1")
    submit_and_wait("#bf-submit")
    record = api(tab.base, f"{stored}/browser-daily", {})
    assert (record["namespace"], record["limit_usd"], record["period"]) == ("team-a", 2.5, "daily")
    assert (record["thresholds"], record["tz"]) == ([0.5, 1.0], BROWSER_ZONE)
    # The page shows the API's figures for it.
    [row] = [
        r
        for r in api(tab.base, f"{stored}/status", {})["budgets"]
        if r["budget"] == "browser-daily"
    ]
    same_cents(item().locator("[data-field=spent_usd]").inner_text(), row["spent_usd"])
    same_cents(item().locator("[data-field=limit_usd]").inner_text(), row["limit_usd"])
    reset = dt.datetime.fromisoformat(row["next_reset"]).astimezone(ZoneInfo(BROWSER_ZONE))
    assert item().locator("[data-field=next_reset]").inner_text() == (
        f"resets {reset.strftime('%d %b %Y, %H:%M')}"
    )
    assert item().locator(".tick").count() == 2

    # The form is empty again; a second budget of the name is refused with the API's message
    # (Chromium logs the refused request; nothing else may reach the console).
    assert tab.console == []
    assert tab.page.input_value("#bf-name") == ""
    tab.page.fill("#bf-name", "browser-daily")
    tab.page.fill("#bf-limit", "1")
    submit_and_wait("#bf-submit", "budgetError")
    assert "already exists" in tab.text("#bf-error")

    item().locator("[data-action=edit]").click()
    assert tab.page.input_value("#bf-name") == "browser-daily"
    assert tab.page.input_value("#bf-limit") == "2.5"
    tab.page.fill("#bf-limit", "7")
    submit_and_wait("#bf-submit")
    assert api(tab.base, f"{stored}/browser-daily", {})["limit_usd"] == 7.0
    same_cents(item().locator("[data-field=limit_usd]").inner_text(), 7.0)

    submit_and_wait('#managed-list .budget[data-budget="browser-daily"] [data-action=reset]')
    assert api(tab.base, f"{stored}/browser-daily", {})["reset_at"] is not None

    submit_and_wait('#managed-list .budget[data-budget="browser-daily"] [data-action=delete]')
    gone = httpx.get(f"{tab.base}{stored}/browser-daily", headers={"X-API-Key": ADMIN_KEY})
    assert gone.status_code == 404
    assert item().count() == 0
    listed = api(tab.base, stored, {"include_deleted": "true"})["budgets"]
    assert [b["deleted_at"] is not None for b in listed if b["name"] == "browser-daily"] == [True]
    assert tab.console == [
        "error: Failed to load resource: the server responded with a status of 409 (Conflict)"
    ]
    assert tab.elsewhere == []


def test_a_key_without_admin_sees_no_budget_editor(tab: Page) -> None:
    tab.sign_in(READ_KEY)
    assert tab.page.locator("#managed").is_hidden()
    assert not any("/budgets/managed" in url for url in tab.requests)
    assert tab.console == []


def test_editing_in_the_page_keeps_what_the_form_does_not_offer(tab: Page) -> None:
    """A rolling, soft budget made through the API keeps its window and its
    softness when its limit is changed in the page."""
    stored = "/usage/budgets/managed"
    body = {"name": "api-rolling", "limit_usd": 1.0, "period": 3600, "soft": True, "tz": "UTC"}
    made = httpx.post(f"{tab.base}{stored}", json=body, headers={"X-API-Key": ADMIN_KEY})
    assert made.status_code == 201, made.text
    try:
        tab.sign_in(ADMIN_KEY)
        item = tab.page.locator('#managed-list .budget[data-budget="api-rolling"]')
        item.locator("[data-action=edit]").click()
        assert tab.page.input_value("#bf-period") == "3600"
        assert tab.page.is_checked("#bf-soft")
        tab.page.fill("#bf-limit", "3")
        shown = tab.page.evaluate("Number(document.body.dataset.managed || 0)")
        tab.page.click("#bf-submit")
        tab.page.wait_for_function("n => Number(document.body.dataset.managed || 0) > n", arg=shown)
        record = api(tab.base, f"{stored}/api-rolling", {})
        assert (record["limit_usd"], record["period"], record["soft"]) == (3.0, 3600.0, True)
        assert tab.console == []
        assert tab.elsewhere == []
    finally:
        httpx.delete(f"{tab.base}{stored}/api-rolling", headers={"X-API-Key": ADMIN_KEY})
