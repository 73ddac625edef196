//! Events straight from a JSON request body, without a round trip through
//! Python objects. Deliberately strict: anything unusual (unknown or repeated
//! fields, nulls where a value is required, leap seconds, more than
//! microsecond precision…) is declined with `None`, and the caller falls back
//! to its full validator, which explains the problem field by field. So this
//! path never accepts what the full validator would refuse.

use super::event::{canonical_metadata, new_request_id, UsageEvent, DEFAULT_ACTION};
use crate::usage::usd_to_nanos;
use chrono::{DateTime, Timelike};
use serde::Deserialize;

/// Most events one batch takes.
pub const MAX_BATCH: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventJson {
    agent_id: String,
    consumer_id: String,
    task_id: Option<String>,
    namespace: Option<String>,
    #[serde(default = "default_action")]
    action: String,
    model: Option<String>,
    #[serde(default)]
    tokens_in: u64,
    #[serde(default)]
    tokens_out: u64,
    #[serde(default)]
    cache_read_tokens: u64,
    #[serde(default)]
    cache_write_tokens: u64,
    #[serde(default)]
    duration_ms: u64,
    #[serde(default)]
    api_calls: u64,
    #[serde(default)]
    units: u64,
    cost: Option<f64>,
    timestamp: Option<String>,
    request_id: Option<String>,
    source: Option<String>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    artifact_digest: Option<String>,
}

fn default_action() -> String {
    DEFAULT_ACTION.into()
}

/// One event (a JSON object) or, with `many`, 1 to `MAX_BATCH` of them (an
/// array). Events without a namespace get `namespace`; without a timestamp,
/// `now_us`. `None` when anything is unusual or invalid.
pub fn events_from_json(
    body: &[u8],
    many: bool,
    namespace: &str,
    now_us: i64,
) -> Option<Vec<UsageEvent>> {
    let raw: Vec<EventJson> = if many {
        serde_json::from_slice(body).ok()?
    } else {
        vec![serde_json::from_slice(body).ok()?]
    };
    if raw.is_empty() || raw.len() > MAX_BATCH {
        return None;
    }
    raw.into_iter()
        .map(|e| convert(e, namespace, now_us))
        .collect()
}

fn convert(e: EventJson, namespace: &str, now_us: i64) -> Option<UsageEvent> {
    let timestamp_us = match e.timestamp {
        Some(text) => timestamp_us(&text)?,
        None => now_us,
    };
    let cost_nanos = match e.cost {
        Some(usd) => Some(usd_to_nanos(usd)?),
        None => None,
    };
    let metadata = match e.metadata {
        Some(map) => Some(canonical_metadata(&serde_json::Value::Object(map).to_string()).ok()?),
        None => None,
    };
    let event = UsageEvent {
        agent_id: e.agent_id,
        consumer_id: e.consumer_id,
        task_id: e.task_id,
        namespace: e.namespace.unwrap_or_else(|| namespace.to_string()),
        action: e.action,
        model: e.model,
        tokens_in: e.tokens_in,
        tokens_out: e.tokens_out,
        cache_read_tokens: e.cache_read_tokens,
        cache_write_tokens: e.cache_write_tokens,
        duration_ms: e.duration_ms,
        api_calls: e.api_calls,
        units: e.units,
        cost_nanos,
        timestamp_us,
        request_id: e.request_id.unwrap_or_else(new_request_id),
        source: e.source,
        metadata,
        artifact_digest: e.artifact_digest,
    };
    event.validate().ok()?;
    Some(event)
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff](Z|±HH:MM)` only: the common form that every
/// ISO 8601 parser reads the same way.
fn timestamp_us(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[10] != b'T' {
        return None;
    }
    if let Some(dot) = text.find('.') {
        let digits = text[dot + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        if digits == 0 || digits > 6 {
            return None;
        }
    }
    let parsed = DateTime::parse_from_rfc3339(text).ok()?;
    if parsed.nanosecond() >= 1_000_000_000 {
        return None; // a leap second
    }
    Some(parsed.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600_000_000;

    #[test]
    fn reads_a_batch_with_defaults() {
        let body = br#"[{"agent_id":"a","consumer_id":"c","tokens_in":5,"cost":0.25,
            "timestamp":"2026-01-01T01:00:00.5+01:00","metadata":{"b":1,"a":{"api_key":"s"}}},
            {"agent_id":"b","consumer_id":"c","namespace":"other","request_id":"r"}]"#;
        let events = events_from_json(body, true, "team", NOW).unwrap();
        assert_eq!(events.len(), 2);
        let first = &events[0];
        assert_eq!((first.namespace.as_str(), first.tokens_in), ("team", 5));
        assert_eq!(first.cost_nanos, Some(250_000_000));
        assert_eq!(first.timestamp_us, NOW + 500_000);
        assert_eq!(first.action, DEFAULT_ACTION);
        let metadata = first.metadata.as_deref().unwrap();
        assert!(metadata.starts_with(r#"{"a":"#) && !metadata.contains("\"s\""));
        assert_eq!(events[1].namespace, "other");
        assert_eq!(events[1].request_id, "r");
        assert_eq!(events[1].timestamp_us, NOW);
        let one = events_from_json(br#"{"agent_id":"a","consumer_id":"c"}"#, false, "n", NOW);
        assert_eq!(one.unwrap().len(), 1);
    }

    #[test]
    fn declines_anything_unusual() {
        let ok = r#""agent_id":"a","consumer_id":"c""#;
        for extra in [
            r#","extra":1"#,
            r#","agent_id":"again""#,
            r#","action":null"#,
            r#","action":"Not An Action""#,
            r#","tokens_in":-1"#,
            r#","tokens_in":1.0"#,
            r#","tokens_in":true"#,
            r#","tokens_in":null"#,
            r#","tokens_in":9223372036854775808"#,
            r#","cost":-1"#,
            r#","task_id":"""#,
            r#","timestamp":"2026-01-01T00:00:00""#,
            r#","timestamp":"2026-01-01 00:00:00Z""#,
            r#","timestamp":"2026-01-01T00:00:00.1234567Z""#,
            r#","timestamp":"2016-12-31T23:59:60Z""#,
            r#","metadata":[1]"#,
        ] {
            let body = format!("{{{ok}{extra}}}");
            assert!(
                events_from_json(body.as_bytes(), false, "n", NOW).is_none(),
                "{body}"
            );
        }
        assert!(events_from_json(b"[]", true, "n", NOW).is_none());
        assert!(events_from_json(b"{bad", false, "n", NOW).is_none());
        let too_many = format!("[{}]", vec![format!("{{{ok}}}"); MAX_BATCH + 1].join(","));
        assert!(events_from_json(too_many.as_bytes(), true, "n", NOW).is_none());
    }
}
