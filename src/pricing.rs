//! Model prices and the cost of a call, in integer nano-USD.
//!
//! Prices are per million tokens. Input tokens are counted the way the
//! agent frameworks report them: *including* cache reads and cache writes,
//! which are billed at their own rates and never a second time at the input
//! rate. A tier replaces every rate once a request's input passes its
//! threshold (as long-context prices do). Prices carry the date they take
//! effect, so old calls keep the price they were made at.

use crate::error::{CoreError, CoreResult};
use crate::usage::NANOS_PER_USD;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Nano-USD per million tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rates {
    pub input: u64,
    pub output: u64,
    /// `None`: cached input is billed as plain input.
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    /// The rates apply when a request's input tokens exceed this.
    pub above_input_tokens: u64,
    pub rates: Rates,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    pub rates: Rates,
    /// Ascending thresholds.
    pub tiers: Vec<Tier>,
    /// UTC microseconds; `None`: since always.
    pub effective_from_us: Option<i64>,
}

/// The tokens of one call, as the ledger records them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl From<&crate::ledger::event::UsageEvent> for Tokens {
    fn from(e: &crate::ledger::event::UsageEvent) -> Tokens {
        Tokens {
            input: e.tokens_in,
            output: e.tokens_out,
            cache_read: e.cache_read_tokens,
            cache_write: e.cache_write_tokens,
        }
    }
}

impl Price {
    /// Nano-USD, rounded to the nearest; exact integer arithmetic throughout.
    pub fn cost_nanos(&self, t: &Tokens) -> u64 {
        let rates = self
            .tiers
            .iter()
            .rev()
            .find(|tier| t.input > tier.above_input_tokens)
            .map_or(&self.rates, |tier| &tier.rates);
        let cached = t.cache_read.saturating_add(t.cache_write).min(t.input);
        let cache_read = t.cache_read.min(cached);
        let cache_write = cached - cache_read;
        let plain = t.input - cached;
        let per_million = |n: u64, rate: u64| u128::from(n) * u128::from(rate);
        let total = per_million(plain, rates.input)
            + per_million(cache_read, rates.cache_read.unwrap_or(rates.input))
            + per_million(cache_write, rates.cache_write.unwrap_or(rates.input))
            + per_million(t.output, rates.output);
        let nanos = (total + 500_000) / 1_000_000;
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }
}

/// A model name pattern with `*` wildcards.
#[derive(Clone, Debug)]
struct Pattern {
    text: String,
}

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        let parts: Vec<&str> = self.text.split('*').collect();
        let (first, last) = (parts[0], parts[parts.len() - 1]);
        if !name.starts_with(first) || name.len() < first.len() + last.len() {
            return false;
        }
        let mut rest = &name[first.len()..];
        for middle in &parts[1..parts.len() - 1] {
            match rest.find(middle) {
                Some(i) => rest = &rest[i + middle.len()..],
                None => return false,
            }
        }
        rest.ends_with(last)
    }

    /// More literal characters: a more specific pattern.
    fn specificity(&self) -> usize {
        self.text.len() - self.text.matches('*').count()
    }
}

/// Prices per model: exact names, then names without a provider prefix
/// (`openai/gpt-4o`, `openai:gpt-4o`), then `*` patterns (the most specific
/// that matches).
#[derive(Clone, Debug, Default)]
pub struct Pricing {
    exact: HashMap<String, Vec<Price>>,
    patterns: Vec<(Pattern, Vec<Price>)>,
}

impl Pricing {
    /// Adds a model's prices (several, with different effective dates).
    pub fn insert(&mut self, model: &str, mut prices: Vec<Price>) -> CoreResult<()> {
        if model.is_empty() {
            return Err(CoreError::InvalidArgument(
                "model",
                "must not be empty".into(),
            ));
        }
        prices.sort_by_key(|p| p.effective_from_us.unwrap_or(i64::MIN));
        if model.contains('*') {
            self.patterns.retain(|(p, _)| p.text != model);
            self.patterns.push((
                Pattern {
                    text: model.to_string(),
                },
                prices,
            ));
            self.patterns
                .sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
        } else {
            self.exact.insert(model.to_string(), prices);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every model name and pattern, sorted.
    pub fn models(&self) -> Vec<String> {
        let mut names: Vec<String> = self.exact.keys().cloned().collect();
        names.extend(self.patterns.iter().map(|(p, _)| p.text.clone()));
        names.sort();
        names
    }

    fn prices(&self, model: &str) -> Option<&[Price]> {
        if let Some(p) = self.exact.get(model) {
            return Some(p);
        }
        if let Some(i) = model.find(['/', ':']) {
            if let Some(p) = self.exact.get(&model[i + 1..]) {
                return Some(p);
            }
        }
        self.patterns
            .iter()
            .find(|(pattern, _)| pattern.matches(model))
            .map(|(_, p)| p.as_slice())
    }

    /// The price in effect for `model` at `at_us`, if any.
    pub fn price(&self, model: &str, at_us: i64) -> Option<&Price> {
        self.prices(model)?
            .iter()
            .rev()
            .find(|p| p.effective_from_us.is_none_or(|from| from <= at_us))
    }

    /// `None` for a model without a price (never a silent zero).
    pub fn cost_nanos(&self, model: &str, tokens: &Tokens, at_us: i64) -> Option<u64> {
        Some(self.price(model, at_us)?.cost_nanos(tokens))
    }

    /// From `{model: {"input": usd_per_million, "output": …, "cache_read": …,
    /// "cache_write": …, "tiers": [{"above_input_tokens": n, "input": …}],
    /// "effective_from": "2025-01-01T00:00:00Z"}}`, or a list of such objects
    /// per model for prices that changed.
    pub fn from_json_object(data: &Map<String, Value>) -> CoreResult<Pricing> {
        let mut pricing = Pricing::default();
        for (model, spec) in data {
            let entries: Vec<&Value> = match spec {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            let mut prices = Vec::with_capacity(entries.len());
            for (i, entry) in entries.iter().enumerate() {
                let at = if spec.is_array() {
                    format!("{model}[{i}]")
                } else {
                    model.clone()
                };
                prices.push(price_from(entry, &at)?);
            }
            pricing.insert(model, prices)?;
        }
        Ok(pricing)
    }

    /// From LiteLLM's `model_prices_and_context_window.json`: per-token USD
    /// in `input_cost_per_token`, `output_cost_per_token`,
    /// `cache_read_input_token_cost`, `cache_creation_input_token_cost`, and
    /// `*_above_<N>k_tokens` tiers. Entries without token prices (images,
    /// audio, the `sample_spec`) are skipped.
    pub fn from_litellm(data: &Map<String, Value>) -> CoreResult<Pricing> {
        let mut pricing = Pricing::default();
        for (model, spec) in data {
            let Some(fields) = spec.as_object() else {
                continue;
            };
            if model == "sample_spec" {
                continue;
            }
            let per_token = |name: &str| -> CoreResult<Option<u64>> {
                match fields.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => {
                        usd_per_million(v.as_f64().map(|usd| usd * 1e6), &format!("{model}.{name}"))
                            .map(Some)
                    }
                }
            };
            let (Some(input), Some(output)) = (
                per_token("input_cost_per_token")?,
                per_token("output_cost_per_token")?,
            ) else {
                continue;
            };
            let cache_read = per_token("cache_read_input_token_cost")?;
            let cache_write = per_token("cache_creation_input_token_cost")?;
            let mut tiers = Vec::new();
            for key in fields.keys() {
                let Some(threshold) = key
                    .strip_prefix("input_cost_per_token_above_")
                    .and_then(|rest| rest.strip_suffix("k_tokens"))
                    .and_then(|k| k.parse::<u64>().ok())
                else {
                    continue;
                };
                let above = |field: &str| per_token(&format!("{field}_above_{threshold}k_tokens"));
                tiers.push(Tier {
                    above_input_tokens: threshold * 1_000,
                    rates: Rates {
                        input: above("input_cost_per_token")?.unwrap_or(input),
                        output: above("output_cost_per_token")?.unwrap_or(output),
                        cache_read: above("cache_read_input_token_cost")?.or(cache_read),
                        cache_write: above("cache_creation_input_token_cost")?.or(cache_write),
                    },
                });
            }
            tiers.sort_by_key(|t| t.above_input_tokens);
            pricing.insert(
                model,
                vec![Price {
                    rates: Rates {
                        input,
                        output,
                        cache_read,
                        cache_write,
                    },
                    tiers,
                    effective_from_us: None,
                }],
            )?;
        }
        Ok(pricing)
    }
}

fn usd_per_million(value: Option<f64>, at: &str) -> CoreResult<u64> {
    match value {
        Some(usd) if usd.is_finite() && usd >= 0.0 && usd * NANOS_PER_USD < 9.2e18 => {
            Ok((usd * NANOS_PER_USD).round() as u64)
        }
        _ => Err(CoreError::InvalidArgument(
            "prices",
            format!("{at}: must be a finite number of USD >= 0"),
        )),
    }
}

fn rates_from(fields: &Map<String, Value>, at: &str, base: Option<&Rates>) -> CoreResult<Rates> {
    let rate = |name: &str| -> CoreResult<Option<u64>> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => usd_per_million(v.as_f64(), &format!("{at}.{name}")).map(Some),
        }
    };
    let required = |name: &str, fallback: Option<u64>| -> CoreResult<u64> {
        rate(name)?.or(fallback).ok_or_else(|| {
            CoreError::InvalidArgument("prices", format!("{at}.{name}: is required"))
        })
    };
    Ok(Rates {
        input: required("input", base.map(|b| b.input))?,
        output: required("output", base.map(|b| b.output))?,
        cache_read: rate("cache_read")?.or(base.and_then(|b| b.cache_read)),
        cache_write: rate("cache_write")?.or(base.and_then(|b| b.cache_write)),
    })
}

const PRICE_FIELDS: [&str; 6] = [
    "input",
    "output",
    "cache_read",
    "cache_write",
    "tiers",
    "effective_from",
];
const TIER_FIELDS: [&str; 5] = [
    "above_input_tokens",
    "input",
    "output",
    "cache_read",
    "cache_write",
];

fn object<'v>(value: &'v Value, at: &str, allowed: &[&str]) -> CoreResult<&'v Map<String, Value>> {
    let fields = value.as_object().ok_or_else(|| {
        CoreError::InvalidArgument("prices", format!("{at}: must be an object of prices"))
    })?;
    if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(CoreError::InvalidArgument(
            "prices",
            format!(
                "{at}: unknown field {unknown:?}; valid fields are {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(fields)
}

fn price_from(value: &Value, at: &str) -> CoreResult<Price> {
    let fields = object(value, at, &PRICE_FIELDS)?;
    let rates = rates_from(fields, at, None)?;
    let mut tiers = Vec::new();
    if let Some(list) = fields.get("tiers").filter(|v| !v.is_null()) {
        let items = list.as_array().ok_or_else(|| {
            CoreError::InvalidArgument("prices", format!("{at}.tiers: must be a list"))
        })?;
        for (i, item) in items.iter().enumerate() {
            let tier_at = format!("{at}.tiers[{i}]");
            let tier = object(item, &tier_at, &TIER_FIELDS)?;
            let above = tier
                .get("above_input_tokens")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    CoreError::InvalidArgument(
                        "prices",
                        format!("{tier_at}.above_input_tokens: must be an int >= 0"),
                    )
                })?;
            tiers.push(Tier {
                above_input_tokens: above,
                rates: rates_from(tier, &tier_at, Some(&rates))?,
            });
        }
    }
    tiers.sort_by_key(|t| t.above_input_tokens);
    let effective_from_us = match fields.get("effective_from") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|_| {
                    CoreError::InvalidArgument(
                        "prices",
                        format!("{at}.effective_from: must be an ISO 8601 time with an offset"),
                    )
                })?
                .timestamp_micros(),
        ),
        Some(_) => {
            return Err(CoreError::InvalidArgument(
                "prices",
                format!("{at}.effective_from: must be an ISO 8601 time with an offset"),
            ))
        }
    };
    Ok(Price {
        rates,
        tiers,
        effective_from_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pricing(value: Value) -> Pricing {
        Pricing::from_json_object(value.as_object().unwrap()).unwrap()
    }

    #[test]
    fn cached_tokens_are_billed_once_at_their_own_rate() {
        let p = pricing(
            json!({"m": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75}}),
        );
        // 10,000 input of which 6,000 cache reads and 1,000 cache writes; 500 output.
        let t = Tokens {
            input: 10_000,
            output: 500,
            cache_read: 6_000,
            cache_write: 1_000,
        };
        // 3,000 × 3 + 6,000 × 0.3 + 1,000 × 3.75 + 500 × 15 = 9,000 + 1,800 + 3,750 + 7,500 µUSD
        assert_eq!(p.cost_nanos("m", &t, 0), Some(22_050_000));
        assert_eq!(p.cost_nanos("unknown", &t, 0), None);
    }

    #[test]
    fn tiers_effective_dates_and_matching() {
        let p = pricing(json!({
            "gemini-pro": {"input": 1.25, "output": 5.0,
                           "tiers": [{"above_input_tokens": 128000, "input": 2.5, "output": 10.0}]},
            "gpt-4o": [{"input": 5.0, "output": 15.0},
                       {"input": 2.5, "output": 10.0, "effective_from": "2024-10-01T00:00:00Z"}],
            "claude-*": {"input": 3.0, "output": 15.0},
            "claude-3-haiku*": {"input": 0.25, "output": 1.25},
        }));
        let small = Tokens {
            input: 1_000_000,
            ..Tokens::default()
        };
        assert_eq!(
            p.cost_nanos(
                "gemini-pro",
                &Tokens {
                    input: 100_000,
                    ..small
                },
                0
            ),
            Some(125_000_000)
        );
        assert_eq!(p.cost_nanos("gemini-pro", &small, 0), Some(2_500_000_000));
        let october = 1_727_740_800_000_000;
        assert_eq!(
            p.cost_nanos("gpt-4o", &small, october - 1),
            Some(5_000_000_000)
        );
        assert_eq!(p.cost_nanos("gpt-4o", &small, october), Some(2_500_000_000));
        assert_eq!(
            p.cost_nanos("openai/gpt-4o", &small, october),
            Some(2_500_000_000)
        );
        assert_eq!(
            p.cost_nanos("openai:gpt-4o", &small, october),
            Some(2_500_000_000)
        );
        assert_eq!(
            p.cost_nanos("claude-3-haiku-20240307", &small, 0),
            Some(250_000_000)
        );
        assert_eq!(
            p.cost_nanos("claude-sonnet-4", &small, 0),
            Some(3_000_000_000)
        );
        assert_eq!(p.cost_nanos("gpt-4o-mini", &small, 0), None);
    }

    #[test]
    fn bad_prices_name_the_model_and_field() {
        for (spec, needle) in [
            (json!({"m": {"input": -1, "output": 1}}), "m.input"),
            (json!({"m": {"output": 1}}), "m.input: is required"),
            (
                json!({"m": {"input": 1, "output": 1, "oops": 1}}),
                "unknown field \"oops\"",
            ),
            (
                json!({"m": {"input": 1, "output": 1, "tiers": [{"input": 2}]}}),
                "m.tiers[0].above_input_tokens",
            ),
            (
                json!({"m": [{"input": 1, "output": 1, "effective_from": "yesterday"}]}),
                "m[0].effective_from",
            ),
            (json!({"m": 3}), "m: must be an object"),
        ] {
            let err = Pricing::from_json_object(spec.as_object().unwrap()).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn reads_litellm_fields() {
        let data = json!({
            "sample_spec": {"input_cost_per_token": 0},
            "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                       "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai"},
            "gemini/gemini-1.5-pro": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 5e-06,
                       "input_cost_per_token_above_128k_tokens": 2.5e-06,
                       "output_cost_per_token_above_128k_tokens": 1e-05},
            "dall-e-3": {"input_cost_per_pixel": 1e-08},
        });
        let p = Pricing::from_litellm(data.as_object().unwrap()).unwrap();
        assert_eq!(p.models(), ["gemini/gemini-1.5-pro", "gpt-4o"]);
        let m = Tokens {
            input: 1_000_000,
            cache_read: 1_000_000,
            ..Tokens::default()
        };
        assert_eq!(p.cost_nanos("gpt-4o", &m, 0), Some(1_250_000_000));
        let long = Tokens {
            input: 200_000,
            output: 1_000,
            ..Tokens::default()
        };
        assert_eq!(
            p.cost_nanos("gemini/gemini-1.5-pro", &long, 0),
            Some(510_000_000)
        );
    }
}
