//! Totals per UTC day × namespace × agent × consumer × model × action
//! (`usage_daily`), kept with the hourly ones of `super::grouped` in the
//! same writer statement: summaries, grouped totals and distinct counts
//! over days and months read about 24 times fewer rows than per hour.
//!
//! A day is recounted from its hourly rows once those are recounted (the
//! caller holds `grouped::lock`): exact sums (numeric), saturated at
//! 2**63 - 1 like every total, which is the saturated sum of the events.

use super::grouped::Level;
use crate::error::CoreResult;
use crate::ledger::rollup_plan::{day_of, DAY_US};
use deadpool_postgres::GenericClient;

/// The day (UTC µs) an event's timestamp falls in, in SQL.
pub const DAY_OF_TS: &str = "(ts - (((ts % 86400000000) + 86400000000) % 86400000000))";

pub const DAILY: Level = Level {
    table: "usage_daily",
    time: "day",
    time_of_ts: DAY_OF_TS,
    keys: &["namespace", "agent_id", "consumer_id", "model", "action"],
};

/// The totals every row carries after its key, as in `usage_rollup`.
macro_rules! totals_columns {
    () => {
        "events BIGINT NOT NULL, tokens_in BIGINT NOT NULL, tokens_out BIGINT NOT NULL, \
         cache_read_tokens BIGINT NOT NULL, cache_write_tokens BIGINT NOT NULL, \
         duration_ms BIGINT NOT NULL, api_calls BIGINT NOT NULL, units BIGINT NOT NULL, \
         cost_nanos BIGINT, unpriced_events BIGINT NOT NULL"
    };
}

/// The hourly rows' totals summed, exact and saturating (NULL costs stay NULL).
macro_rules! summed_totals {
    () => {
        "(CASE WHEN SUM(events) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(events) END)::int8, \
         (CASE WHEN SUM(tokens_in) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(tokens_in) END)::int8, \
         (CASE WHEN SUM(tokens_out) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(tokens_out) END)::int8, \
         (CASE WHEN SUM(cache_read_tokens) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(cache_read_tokens) END)::int8, \
         (CASE WHEN SUM(cache_write_tokens) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(cache_write_tokens) END)::int8, \
         (CASE WHEN SUM(duration_ms) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(duration_ms) END)::int8, \
         (CASE WHEN SUM(api_calls) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(api_calls) END)::int8, \
         (CASE WHEN SUM(units) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(units) END)::int8, \
         (CASE WHEN SUM(cost_nanos) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(cost_nanos) END)::int8, \
         (CASE WHEN SUM(unpriced_events) > 9223372036854775807 THEN 9223372036854775807 ELSE SUM(unpriced_events) END)::int8"
    };
}

/// The table, back-filled from the hourly rows (dropped first, so that a
/// schema whose version was wound back is counted afresh).
pub const MIGRATION: &str = concat!(
    "DROP TABLE IF EXISTS {s}.usage_daily;
CREATE TABLE {s}.usage_daily (
    day BIGINT NOT NULL, namespace TEXT NOT NULL, agent_id TEXT NOT NULL,
    consumer_id TEXT NOT NULL, model TEXT NOT NULL, action TEXT NOT NULL, ",
    totals_columns!(),
    ",
    PRIMARY KEY (day, namespace, agent_id, consumer_id, model, action)
);
INSERT INTO {s}.usage_daily
SELECT hour - (((hour % 86400000000) + 86400000000) % 86400000000) AS day,
       namespace, agent_id, consumer_id, model, action, ",
    summed_totals!(),
    "
FROM {s}.usage_rollup GROUP BY 1, 2, 3, 4, 5, 6;
"
);

/// Drops the days before the one `edge` falls in.
pub async fn drop_days_before(c: &impl GenericClient, s: &str, edge: i64) -> CoreResult<()> {
    c.execute(
        &format!("DELETE FROM {s}.usage_daily WHERE day < $1"),
        &[&day_of(edge)],
    )
    .await?;
    Ok(())
}

/// Recomputes the days holding `hours` from their (recounted) hourly rows.
pub async fn recount_days_of(c: &impl GenericClient, s: &str, hours: &[i64]) -> CoreResult<()> {
    let mut days: Vec<i64> = hours.iter().map(|&h| day_of(h)).collect();
    days.sort_unstable();
    days.dedup();
    if days.is_empty() {
        return Ok(());
    }
    c.execute(
        &format!("DELETE FROM {s}.usage_daily WHERE day = ANY($1)"),
        &[&days],
    )
    .await?;
    c.execute(
        &format!(
            "INSERT INTO {s}.usage_daily \
             SELECT d.day, r.namespace, r.agent_id, r.consumer_id, r.model, r.action, {} \
             FROM unnest($1::int8[]) AS d(day) \
             JOIN {s}.usage_rollup r ON r.hour >= d.day AND r.hour < d.day + {DAY_US} \
             GROUP BY 1, 2, 3, 4, 5, 6",
            summed_totals!()
        ),
        &[&days],
    )
    .await?;
    Ok(())
}
