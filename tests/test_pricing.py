"""Pricing: cost per call in exact nano-USD, cache tokens billed once at
their own rate, tiers, effective dates, model matching, LiteLLM files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import usagewarden as uw

UTC = dt.timezone.utc

PRICES: dict[str, Any] = {
    "claude-sonnet": {"input": 3.0, "output": 15.0, "cache_read": 0.30, "cache_write": 3.75},
    "gemini-pro": {
        "input": 1.25,
        "output": 5.0,
        "tiers": [{"above_input_tokens": 200_000, "input": 2.5, "output": 10.0}],
    },
    "gpt-4o": [
        {"input": 5.0, "output": 15.0},
        {"input": 2.5, "output": 10.0, "effective_from": dt.datetime(2024, 10, 1, tzinfo=UTC)},
    ],
    "llama-*": {"input": 0.1, "output": 0.1},
}


@pytest.fixture
def pricing() -> uw.Pricing:
    return uw.Pricing.from_dict(PRICES)


def test_cache_tokens_are_billed_once_at_their_own_rates(pricing: uw.Pricing) -> None:
    usage = uw.Usage(
        input_tokens=10_000, output_tokens=500, cache_read_tokens=6_000, cache_write_tokens=1_000
    )
    # By hand: 3,000 plain input × $3/M + 6,000 cache reads × $0.30/M
    # + 1,000 cache writes × $3.75/M + 500 output × $15/M
    # = $0.009 + $0.0018 + $0.00375 + $0.0075 = $0.02205
    assert pricing.cost("claude-sonnet", usage) == pytest.approx(0.02205, abs=1e-12)
    tokens = {"tokens_in": 10_000, "tokens_out": 500, "cache_read_tokens": 6_000}
    event = uw.UsageEvent("a", "c", cache_write_tokens=1_000, **tokens)
    assert pricing.cost("claude-sonnet", event) == pricing.cost("claude-sonnet", usage)


def test_a_tier_prices_the_whole_request_once_its_input_passes_the_threshold(
    pricing: uw.Pricing,
) -> None:
    below = uw.Usage(input_tokens=200_000, output_tokens=1_000)
    above = uw.Usage(input_tokens=200_001, output_tokens=1_000)
    assert pricing.cost("gemini-pro", below) == pytest.approx(0.25 + 0.005, abs=1e-12)
    assert pricing.cost("gemini-pro", above) == pytest.approx(0.5000025 + 0.01, abs=1e-12)


def test_a_call_keeps_the_price_of_its_date(pricing: uw.Pricing) -> None:
    million = uw.Usage(input_tokens=1_000_000)
    before = dt.datetime(2024, 9, 30, 23, 59, tzinfo=UTC)
    after = dt.datetime(2024, 10, 1, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert pricing.cost("gpt-4o", million, at=before) == 5.0
    assert pricing.cost("gpt-4o", million, at=after) == 2.5
    assert pricing.cost("gpt-4o", million) == 2.5  # now


def test_models_match_exactly_then_without_provider_then_by_pattern(pricing: uw.Pricing) -> None:
    million = uw.Usage(input_tokens=1_000_000)
    assert pricing.cost("openai/gpt-4o", million) == 2.5
    assert pricing.cost("openai:gpt-4o", million) == 2.5
    assert pricing.cost("llama-3.1-70b", million) == pytest.approx(0.1)
    assert "llama-3" in pricing and "mistral" not in pricing
    assert pricing.models() == ["claude-sonnet", "gemini-pro", "gpt-4o", "llama-*"]
    assert len(pricing) == 4


def test_an_unknown_model_costs_none_never_zero(pricing: uw.Pricing) -> None:
    assert pricing.cost("mystery-model", uw.Usage(input_tokens=5)) is None
    assert pricing.cost("gpt-4o", uw.Usage()) == 0.0


def test_litellm_files_are_read(tmp_path: Path) -> None:
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(
        json.dumps(
            {
                "sample_spec": {"input_cost_per_token": 0, "output_cost_per_token": 0},
                "gpt-4o-mini": {
                    "input_cost_per_token": 1.5e-07,
                    "output_cost_per_token": 6e-07,
                    "cache_read_input_token_cost": 7.5e-08,
                    "litellm_provider": "openai",
                    "mode": "chat",
                },
                "anthropic/claude-3-5-haiku": {
                    "input_cost_per_token": 8e-07,
                    "output_cost_per_token": 4e-06,
                    "cache_creation_input_token_cost": 1e-06,
                    "cache_read_input_token_cost": 8e-08,
                },
                "gemini-1.5-pro": {
                    "input_cost_per_token": 1.25e-06,
                    "output_cost_per_token": 5e-06,
                    "input_cost_per_token_above_128k_tokens": 2.5e-06,
                    "output_cost_per_token_above_128k_tokens": 1e-05,
                },
                "dall-e-3": {"input_cost_per_pixel": 1e-08, "mode": "image_generation"},
            }
        )
    )
    pricing = uw.Pricing.from_litellm_json(path)
    assert pricing.models() == ["anthropic/claude-3-5-haiku", "gemini-1.5-pro", "gpt-4o-mini"]
    usage = uw.Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=500_000)
    # 500k plain × $0.15/M + 500k cached × $0.075/M + 1M output × $0.60/M
    assert pricing.cost("gpt-4o-mini", usage) == pytest.approx(0.075 + 0.0375 + 0.6, abs=1e-12)
    cache_write = uw.Usage(input_tokens=1_000, cache_write_tokens=1_000)
    assert pricing.cost("anthropic/claude-3-5-haiku", cache_write) == pytest.approx(0.001)
    long = uw.Usage(input_tokens=128_001)
    assert pricing.cost("gemini-1.5-pro", long) == pytest.approx(128_001 * 2.5e-06, abs=1e-12)


@pytest.mark.parametrize(
    ("prices", "needle"),
    [
        ({"m": {"input": -1, "output": 1}}, "m.input"),
        ({"m": {"input": float("nan"), "output": 1}}, "prices"),
        ({"m": {"output": 1}}, "m.input: is required"),
        ({"m": {"input": 1, "output": 1, "cached": 1}}, 'unknown field "cached"'),
        ({"m": {"input": 1, "output": 1, "tiers": [{"input": 2}]}}, "tiers[0].above_input_tokens"),
        ({"m": [{"input": 1, "output": 1, "effective_from": "soon"}]}, "m[0].effective_from"),
        ({"": {"input": 1, "output": 1}}, "model"),
    ],
)
def test_bad_prices_are_refused_naming_the_model_and_field(
    prices: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValueError, match="prices|model") as raised:
        uw.Pricing.from_dict(prices)
    assert needle in str(raised.value)


def test_bad_arguments_name_themselves(tmp_path: Path, pricing: uw.Pricing) -> None:
    with pytest.raises(TypeError, match="prices"):
        uw.Pricing.from_dict([("m", 1)])  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="path"):
        uw.Pricing.from_litellm_json(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="path"):
        uw.Pricing.from_litellm_json(tmp_path / "list.json")
    with pytest.raises(TypeError, match="usage"):
        pricing.cost("gpt-4o", {"input_tokens": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at"):
        pricing.cost("gpt-4o", uw.Usage(), at=dt.datetime(2024, 1, 1))


def test_a_store_with_prices_fills_missing_costs_and_keeps_given_ones(
    tmp_path: Path, pricing: uw.Pricing
) -> None:
    store = uw.SQLiteStore(tmp_path / "p.db", durability="commit", pricing=pricing)
    assert store.pricing is pricing
    at = dt.datetime(2025, 1, 1, tzinfo=UTC)

    def event(agent: str, model: str | None, cost: float | None = None) -> uw.UsageEvent:
        return uw.UsageEvent(
            agent, "c", model=model, tokens_in=1_000_000, cost=cost, timestamp=at, request_id=agent
        )

    store.record_batch([event("priced", "gpt-4o"), event("given", "gpt-4o", cost=0.01)])
    store.record(event("unknown", "mystery"))
    store.record(event("no-model", None))
    store.record(event("priced", "gpt-4o"))  # a retry as sent: a duplicate, not a conflict
    costs = {e.agent_id: e.cost for e in store.query()}
    assert costs == {"priced": 2.5, "given": 0.01, "unknown": None, "no-model": None}
    assert store.summary().cost == pytest.approx(2.51)
    assert store.stats().duplicates == 1 and store.stats().conflicts == 0
    store.close()


async def test_reprice_follows_new_prices_but_never_a_given_cost(tmp_path: Path) -> None:
    old = uw.Pricing.from_dict({"gpt-4o": {"input": 5.0, "output": 0.0}})
    new = uw.Pricing.from_dict(
        {"gpt-4o": {"input": 2.5, "output": 0.0}, "mystery": {"input": 1.0, "output": 0.0}}
    )
    store = uw.AsyncSQLiteStore(tmp_path / "r.db", pricing=old)
    million = {"tokens_in": 1_000_000}
    await store.record_batch(
        [
            uw.UsageEvent("a", "c", model="gpt-4o", **million),
            uw.UsageEvent("b", "c", model="gpt-4o", cost=9.0, **million),
            uw.UsageEvent("c", "c", model="mystery", **million),
            uw.UsageEvent("d", "other", model="gpt-4o", **million),
        ]
    )
    assert (await store.summary()).cost == 5.0 + 9.0 + 5.0
    # Only consumer "c": a, and c (now priced); b keeps its given cost.
    assert await store.reprice(new, consumer_id="c") == 2
    costs = {e.agent_id: e.cost for e in await store.query()}
    assert costs == {"a": 2.5, "b": 9.0, "c": 1.0, "d": 5.0}
    assert await store.reprice(new, consumer_id="c") == 0
    assert (await store.summary()).cost == 2.5 + 9.0 + 1.0 + 5.0
    with pytest.raises(TypeError, match="pricing"):
        await store.reprice({"gpt-4o": 1})  # type: ignore[arg-type]
    await store.close()


def test_a_store_refuses_prices_of_the_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="pricing"):
        uw.SQLiteStore(tmp_path / "x.db", pricing={"gpt-4o": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "provider", "usage"),
    [
        ("gpt-4o", "openai", {"input_tokens": 1_000_000, "output_tokens": 1_000_000,
                              "cache_read_tokens": 500_000}),
        ("gemini-1.5-pro", "google", {"input_tokens": 300_000, "output_tokens": 1_000}),
        ("claude-3-5-haiku-latest", "anthropic", {"input_tokens": 20_000, "output_tokens": 500,
                                                  "cache_write_tokens": 10_000}),
    ],
)  # fmt: skip
def test_genai_prices_agree_with_the_package_itself(
    model: str, provider: str, usage: dict[str, int]
) -> None:
    genai_prices = pytest.importorskip("genai_prices")
    pricing = uw.Pricing.from_genai_prices()
    theirs = genai_prices.calc_price(
        genai_prices.Usage(**usage), model_ref=model, provider_id=provider
    ).total_price
    assert pricing.cost(model, uw.Usage(**usage)) == pytest.approx(float(theirs), abs=1e-9)
    assert pricing.cost(f"{provider}/{model}", uw.Usage(**usage)) == pytest.approx(float(theirs))


def test_without_genai_prices_the_error_names_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "genai_prices", None)
    with pytest.raises(ImportError, match="pip install genai-prices"):
        uw.Pricing.from_genai_prices()
