//! Streaming export of events as CSV, JSON or NDJSON, in constant memory.
//!
//! CSV columns, in order: request_id, namespace, timestamp (ISO 8601, UTC,
//! with offset), agent_id, consumer_id, task_id, action, model, tokens_in,
//! tokens_out, cache_read_tokens, cache_write_tokens, total_tokens,
//! duration_ms, api_calls, units, cost (USD, exact decimal; empty when
//! unknown), source, metadata (JSON), artifact_digest. Empty cells are
//! empty strings.

use super::event::UsageEvent;
use crate::error::{CoreError, CoreResult};
use chrono::DateTime;
use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    Ndjson,
}

impl Format {
    pub fn parse(name: &str) -> CoreResult<Format> {
        match name {
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "ndjson" => Ok(Format::Ndjson),
            other => Err(CoreError::InvalidArgument(
                "format",
                format!("must be one of csv, json, ndjson, got {other:?}"),
            )),
        }
    }
}

pub const CSV_COLUMNS: [&str; 20] = [
    "request_id",
    "namespace",
    "timestamp",
    "agent_id",
    "consumer_id",
    "task_id",
    "action",
    "model",
    "tokens_in",
    "tokens_out",
    "cache_read_tokens",
    "cache_write_tokens",
    "total_tokens",
    "duration_ms",
    "api_calls",
    "units",
    "cost",
    "source",
    "metadata",
    "artifact_digest",
];

/// ISO 8601 in UTC with an explicit offset, microsecond precision.
pub fn iso_utc(ts_us: i64) -> String {
    DateTime::from_timestamp_micros(ts_us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string())
        .unwrap_or_default()
}

/// Nano-USD as an exact decimal string of USD.
pub fn usd_decimal(nanos: u64) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

fn csv_cell(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn csv_row(e: &UsageEvent) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let cells = [
        e.request_id.clone(),
        e.namespace.clone(),
        iso_utc(e.timestamp_us),
        e.agent_id.clone(),
        e.consumer_id.clone(),
        opt(&e.task_id),
        e.action.clone(),
        opt(&e.model),
        e.tokens_in.to_string(),
        e.tokens_out.to_string(),
        e.cache_read_tokens.to_string(),
        e.cache_write_tokens.to_string(),
        e.total_tokens().to_string(),
        e.duration_ms.to_string(),
        e.api_calls.to_string(),
        e.units.to_string(),
        e.cost_nanos.map(usd_decimal).unwrap_or_default(),
        opt(&e.source),
        opt(&e.metadata),
        opt(&e.artifact_digest),
    ];
    let mut line = String::with_capacity(256);
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        csv_cell(&mut line, cell);
    }
    line.push_str("\r\n");
    line
}

/// The event as a JSON object, fields in declaration order.
pub fn event_json(e: &UsageEvent) -> String {
    let s = |v: &str| serde_json::Value::String(v.to_string()).to_string();
    let o = |v: &Option<String>| v.as_deref().map_or("null".to_string(), s);
    let cost = e.cost_nanos.map_or("null".to_string(), |c| {
        serde_json::json!(c as f64 / 1e9).to_string()
    });
    let metadata = e.metadata.clone().unwrap_or_else(|| "null".into());
    format!(
        "{{\"agent_id\":{},\"consumer_id\":{},\"task_id\":{},\"namespace\":{},\"action\":{},\"model\":{},\
         \"tokens_in\":{},\"tokens_out\":{},\"cache_read_tokens\":{},\"cache_write_tokens\":{},\"total_tokens\":{},\
         \"duration_ms\":{},\"api_calls\":{},\"units\":{},\"cost\":{},\"timestamp\":{},\"request_id\":{},\
         \"source\":{},\"metadata\":{},\"artifact_digest\":{}}}",
        s(&e.agent_id),
        s(&e.consumer_id),
        o(&e.task_id),
        s(&e.namespace),
        s(&e.action),
        o(&e.model),
        e.tokens_in,
        e.tokens_out,
        e.cache_read_tokens,
        e.cache_write_tokens,
        e.total_tokens(),
        e.duration_ms,
        e.api_calls,
        e.units,
        cost,
        s(&iso_utc(e.timestamp_us)),
        s(&e.request_id),
        o(&e.source),
        metadata,
        o(&e.artifact_digest),
    )
}

/// Writes events from `rows` to `out`; returns how many were written.
pub fn write_events(
    format: Format,
    rows: impl Iterator<Item = CoreResult<UsageEvent>>,
    out: &mut dyn Write,
) -> CoreResult<u64> {
    let io = |e: std::io::Error| CoreError::Store(format!("export: cannot write: {e}"));
    let mut count = 0u64;
    match format {
        Format::Csv => out
            .write_all(format!("{}\r\n", CSV_COLUMNS.join(",")).as_bytes())
            .map_err(io)?,
        Format::Json => out.write_all(b"[").map_err(io)?,
        Format::Ndjson => {}
    }
    for event in rows {
        let event = event?;
        let chunk = match format {
            Format::Csv => csv_row(&event),
            Format::Json => format!(
                "{}\n{}",
                if count == 0 { "" } else { "," },
                event_json(&event)
            ),
            Format::Ndjson => format!("{}\n", event_json(&event)),
        };
        out.write_all(chunk.as_bytes()).map_err(io)?;
        count += 1;
    }
    if format == Format::Json {
        out.write_all(b"\n]\n").map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::event::tests::event;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut e = event("a,b", 1_700_000_000_000_000, 5);
        e.metadata = Some(r#"{"q":"say \"hi\""}"#.into());
        let row = csv_row(&e);
        assert!(row.contains(r#""a,b""#));
        assert!(row.contains(r#""{""q"":""say \""hi\""""}""#));
        assert!(row.contains("2023-11-14T22:13:20.000000+00:00"));
        assert!(row.contains(",0.000001000,"));
    }

    #[test]
    fn json_and_ndjson_are_valid_json() {
        let events = vec![event("a", 0, 1), event("b", 1, 2)];
        for format in [Format::Json, Format::Ndjson] {
            let mut out = Vec::new();
            let n = write_events(format, events.clone().into_iter().map(Ok), &mut out).unwrap();
            assert_eq!(n, 2);
            let text = String::from_utf8(out).unwrap();
            let parsed: Vec<serde_json::Value> = if format == Format::Json {
                serde_json::from_str(&text).unwrap()
            } else {
                text.lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect()
            };
            assert_eq!(parsed[1]["agent_id"], "b");
            assert_eq!(parsed[0]["total_tokens"], 11);
        }
        let mut out = Vec::new();
        write_events(Format::Json, std::iter::empty(), &mut out).unwrap();
        assert_eq!(
            serde_json::from_slice::<Vec<serde_json::Value>>(&out)
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn exact_usd_decimals() {
        assert_eq!(usd_decimal(1_500_000_001), "1.500000001");
        assert_eq!(usd_decimal(7), "0.000000007");
    }
}
