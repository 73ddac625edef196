//! Calendar buckets (hour, day, week, month in any IANA zone) read from two
//! small tables rather than from every grouped row of the range:
//!
//! - `usage_hourly_model`: totals per hour × namespace × model, a few rows
//!   an hour (the grouped rows of `super::grouped` are one per agent ×
//!   consumer × model × action, nearly one per event in a busy hour);
//! - `usage_presence`: per UTC day × namespace × model, each agent and each
//!   consumer seen, with a 24-bit mask of the hours of the day it was seen
//!   in. A bucket made of whole hours holds an agent exactly when the mask
//!   of one of the bucket's days meets the bucket's hours of that day, so
//!   distinct agents and consumers per bucket come from one row per agent
//!   (or consumer) and day, in any zone.
//!
//! Both are kept by the writer with the hourly rows (`hourly_upsert_sql`) and
//! recounted from `usage_rollup` with it (`recount_hours`, `drop_before`).
//! The rows are put in their buckets by `crate::ledger::presence_read` (the
//! SQLite store reads its tables of the same shape the same way). The
//! partial hours at the range's edges and the hours a bucket edge cuts
//! (zones off the hour) are read from the events, as `rollup_plan` splits
//! them; reads the tables cannot answer (filters on agent, consumer, action
//! or task, far too many hours, offsets off the quarter-hour) return `None`
//! and are grouped by `super::read::aggregate`.

use super::grouped::{self, Level, HOURLY, HOUR_OF_TS};
use super::read::{refs, totals_at, Param};
use super::writer::{saturate, COUNTERS};
use crate::error::CoreResult;
use crate::ledger::buckets::SLOT_US;
use crate::ledger::filters::Filters;
use crate::ledger::presence_read::PresenceRead;
use crate::ledger::rollup_plan::{day_of, Plan, DAY_US, HOUR_US};
use crate::ledger::sqlite::Aggregate;
use deadpool_postgres::GenericClient;

/// The hour of the day (0–23, UTC) of the time column `t`, as a mask bit.
fn hour_bit(t: &str) -> String {
    format!("(1 << (((({t} % {DAY_US}) + {DAY_US}) % {DAY_US}) / {HOUR_US})::int4)")
}

/// The UTC day of the time column `t`.
pub fn day_of_sql(t: &str) -> String {
    format!("({t} - ((({t} % {DAY_US}) + {DAY_US}) % {DAY_US}))")
}

pub const HOURLY_MODEL: Level = Level {
    table: "usage_hourly_model",
    time: "hour",
    time_of_ts: HOUR_OF_TS,
    keys: &["namespace", "model"],
};

/// The columns the totals rows are summed into, saturating like every total.
pub fn summed_totals() -> String {
    ["events"]
        .into_iter()
        .chain(COUNTERS)
        .chain(["cost_nanos", "unpriced_events"])
        .map(|c| saturate(&format!("SUM({c})")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Presence rows `(day, namespace, model, kind, id, hours)` of the
/// `usage_rollup` rows `from` selects (`kind` 0 for an agent, 1 for a consumer).
fn presence_of_rollup(from: &str) -> String {
    format!(
        "SELECT {day}, r.namespace, r.model, k.kind, \
                CASE k.kind WHEN 0 THEN r.agent_id ELSE r.consumer_id END, \
                bit_or({bit})::int4 \
         FROM {from} CROSS JOIN (VALUES (0::int2), (1::int2)) AS k(kind) \
         GROUP BY 1, 2, 3, 4, 5",
        day = day_of_sql("r.hour"),
        bit = hour_bit("r.hour"),
    )
}

/// Both tables, filled from `usage_rollup` (dropped first, so that a schema
/// whose version was wound back is counted afresh). `kind` is 0 for an
/// agent, 1 for a consumer; bit `n` of `hours` is the day's hour `n` (UTC).
pub const MIGRATION: &str = r#"
DROP TABLE IF EXISTS {s}.usage_hourly_model;
CREATE TABLE {s}.usage_hourly_model (
    hour BIGINT NOT NULL, namespace TEXT NOT NULL, model TEXT NOT NULL,
    events BIGINT NOT NULL, tokens_in BIGINT NOT NULL, tokens_out BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL, cache_write_tokens BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL, api_calls BIGINT NOT NULL, units BIGINT NOT NULL,
    cost_nanos BIGINT, unpriced_events BIGINT NOT NULL,
    PRIMARY KEY (hour, namespace, model)
);
INSERT INTO {s}.usage_hourly_model
SELECT hour, namespace, model,
       (CASE WHEN SUM(events) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(events) END)::int8,
       (CASE WHEN SUM(tokens_in) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(tokens_in) END)::int8,
       (CASE WHEN SUM(tokens_out) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(tokens_out) END)::int8,
       (CASE WHEN SUM(cache_read_tokens) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(cache_read_tokens) END)::int8,
       (CASE WHEN SUM(cache_write_tokens) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(cache_write_tokens) END)::int8,
       (CASE WHEN SUM(duration_ms) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(duration_ms) END)::int8,
       (CASE WHEN SUM(api_calls) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(api_calls) END)::int8,
       (CASE WHEN SUM(units) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(units) END)::int8,
       (CASE WHEN SUM(cost_nanos) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(cost_nanos) END)::int8,
       (CASE WHEN SUM(unpriced_events) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(unpriced_events) END)::int8
FROM {s}.usage_rollup GROUP BY 1, 2, 3;
DROP TABLE IF EXISTS {s}.usage_presence;
CREATE TABLE {s}.usage_presence (
    day BIGINT NOT NULL, namespace TEXT NOT NULL, model TEXT NOT NULL,
    kind SMALLINT NOT NULL, id TEXT NOT NULL, hours INTEGER NOT NULL,
    PRIMARY KEY (day, namespace, model, kind, id)
);
INSERT INTO {s}.usage_presence
SELECT r.hour - (((r.hour % 86400000000) + 86400000000) % 86400000000), r.namespace, r.model,
       k.kind, CASE k.kind WHEN 0 THEN r.agent_id ELSE r.consumer_id END,
       bit_or(1 << ((((r.hour % 86400000000) + 86400000000) % 86400000000) / 3600000000)::int4)::int4
FROM {s}.usage_rollup r CROSS JOIN (VALUES (0::int2), (1::int2)) AS k(kind)
GROUP BY 1, 2, 3, 4, 5;
"#;

/// The writer's statement for a batch's hourly rows (the parameters of
/// `grouped::upsert_rows_sql` for `HOURLY`): adds them to `usage_rollup`
/// and, summed from the same rows, to both calendar tables, each in key
/// order so that concurrent writers lock shared rows in one order; and to
/// the tables of `super::pairs`.
pub fn hourly_upsert_sql(s: &str) -> String {
    let models = format!(
        "SELECT hour, namespace, model, {} FROM b GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        summed_totals()
    );
    format!(
        "WITH b AS (SELECT * FROM {rows} AS b({columns})), \
         hourly_model AS ({models}), \
         presence AS ( \
             INSERT INTO {s}.usage_presence AS p {presence} ORDER BY 1, 2, 3, 4, 5 \
             ON CONFLICT (day, namespace, model, kind, id) DO UPDATE SET hours = p.hours | excluded.hours \
         ), {pairs} {rollup}",
        rows = grouped::unnest_rows(&HOURLY),
        pairs = super::pairs::upserts_from_batch(s),
        columns = grouped::row_columns(&HOURLY).join(", "),
        models = grouped::upsert_select_sql(s, &HOURLY_MODEL, &models),
        presence = presence_of_rollup("b r"),
        rollup = grouped::upsert_select_sql(s, &HOURLY, "SELECT * FROM b ORDER BY 1, 2, 3, 4, 5, 6"),
    )
}

/// Recomputes the given hours (and the days holding them) from their
/// recounted `usage_rollup` rows (the caller holds `grouped::lock`).
pub async fn recount_hours(c: &impl GenericClient, s: &str, hours: &[i64]) -> CoreResult<()> {
    c.execute(
        &format!("DELETE FROM {s}.usage_hourly_model WHERE hour = ANY($1)"),
        &[&hours],
    )
    .await?;
    c.execute(
        &format!(
            "INSERT INTO {s}.usage_hourly_model \
             SELECT hour, namespace, model, {} FROM {s}.usage_rollup WHERE hour = ANY($1) \
             GROUP BY 1, 2, 3",
            summed_totals()
        ),
        &[&hours],
    )
    .await?;
    let mut days: Vec<i64> = hours.iter().map(|&h| day_of(h)).collect();
    days.sort_unstable();
    days.dedup();
    c.execute(
        &format!("DELETE FROM {s}.usage_presence WHERE day = ANY($1)"),
        &[&days],
    )
    .await?;
    let from = format!(
        "unnest($1::int8[]) AS d(day) \
         JOIN {s}.usage_rollup r ON r.hour >= d.day AND r.hour < d.day + {DAY_US}"
    );
    c.execute(
        &format!(
            "INSERT INTO {s}.usage_presence {}",
            presence_of_rollup(&from)
        ),
        &[&days],
    )
    .await?;
    Ok(())
}

/// Drops the hours before `edge` and the days before the one it falls in.
pub async fn drop_before(c: &impl GenericClient, s: &str, edge: i64) -> CoreResult<()> {
    c.execute(
        &format!("DELETE FROM {s}.usage_hourly_model WHERE hour < $1"),
        &[&edge],
    )
    .await?;
    c.execute(
        &format!("DELETE FROM {s}.usage_presence WHERE day < $1"),
        &[&day_of(edge)],
    )
    .await?;
    Ok(())
}

pub use crate::ledger::presence_read::{answers, By};

/// `namespace = $n AND model = $m` for the filters kept (possibly none),
/// with `alias.` before each column.
fn key_terms(filters: &Filters, params: &mut Vec<Param>) -> Vec<String> {
    let mut terms = Vec::new();
    for (column, value) in [("namespace", &filters.namespace), ("model", &filters.model)] {
        if let Some(v) = value {
            params.push(Box::new(v.clone()));
            terms.push(format!("{column} = ${}", params.len()));
        }
    }
    terms
}

/// `(t >= $a AND t <op> $b) OR …` over `ranges`.
pub fn spans(time: &str, upper: &str, ranges: &[(i64, i64)], params: &mut Vec<Param>) -> String {
    let spans: Vec<String> = ranges
        .iter()
        .map(|&(a, b)| {
            params.push(Box::new(a));
            params.push(Box::new(b));
            format!(
                "({time} >= ${} AND {time} {upper} ${})",
                params.len() - 1,
                params.len()
            )
        })
        .collect();
    format!("({})", spans.join(" OR "))
}

/// Totals per calendar bucket of `plan` (split with these buckets), oldest
/// first, or per model (`plan` split as for UTC hours), or `None` when the
/// tables cannot answer.
pub async fn aggregate(
    c: &impl GenericClient,
    s: &str,
    by: By,
    filters: &Filters,
    plan: &Plan,
) -> CoreResult<Option<Vec<Aggregate>>> {
    if !answers(filters) {
        return Ok(None);
    }
    let Some(mut presence) = PresenceRead::new(by, plan) else {
        return Ok(None);
    };
    let sums = summed_totals();

    let mut params: Vec<Param> = Vec::new();
    let mut terms = key_terms(filters, &mut params);
    terms.push(spans("hour", "<", &plan.hours, &mut params));
    let sql = format!(
        "SELECT {}, {sums} FROM {s}.usage_hourly_model WHERE {} GROUP BY 1",
        presence.hourly_key(),
        terms.join(" AND ")
    );
    for row in c.query(&sql, &refs(&params)).await? {
        match by {
            By::Bucket(..) => presence.add_hour(row.get(0), &totals_at(&row, 1)),
            By::Model => presence.add_model(row.get(0), &totals_at(&row, 1)),
        }
    }

    let (first_day, past_day) = presence.day_range;
    let mut params: Vec<Param> = vec![Box::new(first_day), Box::new(past_day)];
    let mut terms = key_terms(filters, &mut params);
    terms.push("day >= $1 AND day < $2".into());
    let sql = format!(
        "SELECT day, kind, id, hours, model FROM {s}.usage_presence WHERE {}",
        terms.join(" AND ")
    );
    for row in c.query(&sql, &refs(&params)).await? {
        let (kind, hours): (i16, i32) = (row.get(1), row.get(3));
        presence.add_presence(row.get(0), kind == 0, row.get(2), hours as u32, row.get(4));
    }

    if !plan.events.is_empty() {
        let mut params: Vec<Param> = Vec::new();
        let mut terms = key_terms(filters, &mut params);
        terms.push(spans("ts", "<=", &plan.events, &mut params));
        let mut partial = vec!["COUNT(*)::int8".to_string()];
        partial.extend(COUNTERS.iter().map(|c| saturate(&format!("SUM({c})"))));
        partial.push(saturate("SUM(cost_nanos)"));
        partial.push("(COUNT(*) - COUNT(cost_nanos))::int8".into());
        let key = presence.event_key(&format!(
            "ts - (((ts % {SLOT_US}) + {SLOT_US}) % {SLOT_US})"
        ));
        let sql = format!(
            "SELECT {key}, agent_id, consumer_id, MIN(ts), {} \
             FROM {s}.usage_events WHERE {} GROUP BY 1, 2, 3",
            partial.join(", "),
            terms.join(" AND ")
        );
        for row in c.query(&sql, &refs(&params)).await? {
            let model = match by {
                By::Model => Some(row.get::<_, &str>(0)),
                By::Bucket(..) => None,
            };
            presence.add_events(
                model,
                row.get(3),
                &totals_at(&row, 4),
                row.get(1),
                row.get(2),
            );
        }
    }
    Ok(Some(presence.finish()))
}
