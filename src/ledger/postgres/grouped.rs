//! Totals per hour × namespace × agent × consumer × model × action
//! (`usage_rollup`, and per UTC day in `super::coarse`), added to in each
//! writer transaction, and the rows that reads sum: the totals of a range's
//! whole days and hours and the events of the rest (partial hours at the
//! edges, hours a bucket edge cuts) in one shape.
//!
//! Hosts write at once: each adds with `INSERT … ON CONFLICT DO UPDATE`, in
//! key order, so two transactions lock shared rows in the same order and
//! never deadlock. A recount (purge edge, reprice) takes the table in SHARE
//! ROW EXCLUSIVE mode first: writers wait until it commits, and every event
//! committed before it is in what it counts.

use super::read::{where_clause, Param};
use super::writer::{saturate, COUNTERS};
use crate::error::CoreResult;
use crate::ledger::filters::Filters;
pub use crate::ledger::rollup_plan::Keys;
use crate::ledger::rollup_plan::{Plan, HOUR_US};
use deadpool_postgres::GenericClient;

/// `model` is `''` for events without one (a model is never empty), since a
/// key column cannot be NULL. Filled from the events by `fill`.
pub const MIGRATION: &str = r#"
CREATE TABLE {s}.usage_rollup (
    hour               BIGINT NOT NULL,
    namespace          TEXT   NOT NULL,
    agent_id           TEXT   NOT NULL,
    consumer_id        TEXT   NOT NULL,
    model              TEXT   NOT NULL,
    action             TEXT   NOT NULL,
    events             BIGINT NOT NULL,
    tokens_in          BIGINT NOT NULL,
    tokens_out         BIGINT NOT NULL,
    cache_read_tokens  BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    duration_ms        BIGINT NOT NULL,
    api_calls          BIGINT NOT NULL,
    units              BIGINT NOT NULL,
    cost_nanos         BIGINT,
    unpriced_events    BIGINT NOT NULL,
    PRIMARY KEY (hour, namespace, agent_id, consumer_id, model, action)
);
DROP TABLE IF EXISTS {s}.usage_hourly;
"#;

/// The hour (UTC µs) an event's timestamp falls in, in SQL.
pub const HOUR_OF_TS: &str = "(ts - (((ts % 3600000000) + 3600000000) % 3600000000))";

/// A table of grouped totals: its name, its time column, that column
/// computed from an event's `ts`, and the key columns after it (`model`
/// among them is `''` for none).
pub struct Level {
    pub table: &'static str,
    pub time: &'static str,
    pub time_of_ts: &'static str,
    pub keys: &'static [&'static str],
}

pub const HOURLY: Level = Level {
    table: "usage_rollup",
    time: "hour",
    time_of_ts: HOUR_OF_TS,
    keys: &["namespace", "agent_id", "consumer_id", "model", "action"],
};

/// The key columns of the events' rows, then their totals (exact, saturating).
fn grouped_select(from: &str) -> String {
    grouped_select_at(from, &HOURLY)
}

/// `grouped_select` with the rows keyed as `level`'s, in key order.
fn grouped_select_at(from: &str, level: &Level) -> String {
    let mut sums = vec!["COUNT(*)::int8".to_string()];
    sums.extend(COUNTERS.iter().map(|c| saturate(&format!("SUM({c})"))));
    sums.push(saturate("SUM(cost_nanos)"));
    sums.push("(COUNT(*) - COUNT(cost_nanos))::int8".into());
    let keys: Vec<String> = level
        .keys
        .iter()
        .map(|&k| match k {
            "model" => "COALESCE(model, '') AS model".to_string(),
            other => other.to_string(),
        })
        .collect();
    let positions: Vec<String> = (1..=level.keys.len() + 1).map(|i| i.to_string()).collect();
    format!(
        "SELECT {time_of_ts} AS time, {keys}, {sums} FROM {from} GROUP BY {p} ORDER BY {p}",
        time_of_ts = level.time_of_ts,
        keys = keys.join(", "),
        sums = sums.join(", "),
        p = positions.join(", "),
    )
}

/// The columns of `level`'s rows, in `batch_totals::Columns::params` order:
/// the time, the keys, events, the counters, cost, unpriced events.
pub fn row_columns(level: &Level) -> Vec<&'static str> {
    [level.time]
        .into_iter()
        .chain(level.keys.iter().copied())
        .chain(["events"])
        .chain(COUNTERS)
        .chain(["cost_nanos", "unpriced_events"])
        .collect()
}

/// The pre-summed rows of `level` sent as parameters (one array per column
/// of `row_columns`), as a relation.
pub fn unnest_rows(level: &Level) -> String {
    let arrays: Vec<String> = (0..row_columns(level).len())
        .map(|i| {
            let ty = if (1..=level.keys.len()).contains(&i) {
                "text"
            } else {
                "int8"
            };
            format!("${}::{ty}[]", i + 1)
        })
        .collect();
    format!("unnest({})", arrays.join(", "))
}

/// `INSERT` into the table of `level` of the rows `select` yields (in
/// `row_columns` order), adding to existing rows.
pub fn upsert_select_sql(s: &str, level: &Level, select: &str) -> String {
    let add = |c: &str| {
        format!(
            "{c} = LEAST(COALESCE(r.{c}, 0)::numeric + COALESCE(excluded.{c}, 0), 9223372036854775807)::int8"
        )
    };
    let updates: Vec<String> = ["events"]
        .into_iter()
        .chain(COUNTERS)
        .chain(["unpriced_events"])
        .map(add)
        .collect();
    format!(
        "INSERT INTO {s}.{table} AS r ({columns}) {select} \
         ON CONFLICT ({time}, {keys}) DO UPDATE SET {updates}, \
         cost_nanos = CASE WHEN r.cost_nanos IS NULL AND excluded.cost_nanos IS NULL THEN NULL \
             ELSE LEAST(COALESCE(r.cost_nanos, 0)::numeric + COALESCE(excluded.cost_nanos, 0), 9223372036854775807)::int8 END",
        table = level.table,
        columns = row_columns(level).join(", "),
        time = level.time,
        keys = level.keys.join(", "),
        updates = updates.join(", "),
    )
}

/// `INSERT` of pre-summed rows (`batch_totals::Columns::params`) into the
/// table of `level`, in key order, adding to existing rows.
pub fn upsert_rows_sql(s: &str, level: &Level) -> String {
    let order: Vec<String> = (1..=level.keys.len() + 1).map(|i| i.to_string()).collect();
    let select = format!(
        "SELECT * FROM {} ORDER BY {}",
        unnest_rows(level),
        order.join(", ")
    );
    upsert_select_sql(s, level, &select)
}

/// Fills the table from the events of a ledger created before it existed.
pub async fn fill(c: &tokio_postgres::Transaction<'_>, s: &str) -> CoreResult<()> {
    c.batch_execute(&format!(
        "INSERT INTO {s}.usage_rollup {}",
        grouped_select(&format!("{s}.usage_events"))
    ))
    .await?;
    Ok(())
}

/// Keeps writers out of the table until the caller's transaction ends.
pub async fn lock(c: &impl GenericClient, s: &str) -> CoreResult<()> {
    c.batch_execute(&format!(
        "LOCK TABLE {s}.usage_rollup IN SHARE ROW EXCLUSIVE MODE"
    ))
    .await?;
    Ok(())
}

/// Recomputes the given hours from their events (the caller holds `lock`).
pub async fn recount_hours(c: &impl GenericClient, s: &str, hours: &[i64]) -> CoreResult<()> {
    if hours.is_empty() {
        return Ok(());
    }
    let from = format!(
        "(SELECT e.* FROM unnest($1::int8[]) AS h(start) \
          JOIN {s}.usage_events e ON e.ts >= h.start AND e.ts < h.start + {HOUR_US}) AS e"
    );
    c.execute(
        &format!("DELETE FROM {s}.usage_rollup WHERE hour = ANY($1)"),
        &[&hours],
    )
    .await?;
    c.execute(
        &format!("INSERT INTO {s}.usage_rollup {}", grouped_select(&from)),
        &[&hours],
    )
    .await?;
    super::coarse::recount_days_of(c, s, hours).await?;
    super::pairs::recount_hours(c, s, hours).await?;
    super::calendar::recount_hours(c, s, hours).await
}

/// After deleting every event before `cutoff_us`: drops the hours (and
/// days) now empty and recounts the hour (and day) the cutoff falls in.
pub async fn after_purge(c: &impl GenericClient, s: &str, cutoff_us: i64) -> CoreResult<()> {
    let edge = cutoff_us - cutoff_us.rem_euclid(HOUR_US);
    c.execute(
        &format!("DELETE FROM {s}.usage_rollup WHERE hour < $1"),
        &[&edge],
    )
    .await?;
    super::coarse::drop_days_before(c, s, edge).await?;
    super::calendar::drop_before(c, s, edge).await?;
    super::pairs::drop_before(c, s, edge).await?;
    recount_hours(c, s, &[edge]).await
}

/// Rows of one shape — `ts, namespace, agent_id, consumer_id, model, action,
/// events, …counters, cost_nanos, unpriced_events` — from the totals of the
/// planned hours and from the events of the rest, with `$n` placeholders
/// appended to `params`. A filter on the task reads only events (the plan
/// then has no hours).
pub fn source(
    s: &str,
    filters: &Filters,
    plan: &Plan,
    keys: Keys,
    params: &mut Vec<Param>,
) -> String {
    let counters = COUNTERS.join(", ");
    let mut parts = Vec::new();
    let mut part = |table: &str,
                    time: &str,
                    upper: &str,
                    ranges: &[(i64, i64)],
                    columns: String,
                    with_task: bool,
                    params: &mut Vec<Param>| {
        if ranges.is_empty() {
            return;
        }
        let keys = Filters {
            task_id: if with_task {
                filters.task_id.clone()
            } else {
                None
            },
            start_us: None,
            end_us: None,
            ..filters.clone()
        };
        let clause = where_clause(&keys, params);
        let mut terms: Vec<String> = clause
            .strip_prefix("WHERE ")
            .map(|t| vec![t.to_string()])
            .unwrap_or_default();
        terms.push(super::calendar::spans(time, upper, ranges, params));
        parts.push(format!(
            "SELECT {columns} FROM {s}.{table} WHERE {}",
            terms.join(" AND ")
        ));
    };
    let pairs = keys.reads_pairs(filters);
    let (daily, hourly, model_action) = if pairs {
        (
            super::pairs::DAILY_PAIR.table,
            super::pairs::HOURLY_PAIR.table,
            "NULL::text AS model, NULL::text AS action",
        )
    } else {
        (
            "usage_daily",
            "usage_rollup",
            "NULLIF(model, '') AS model, action",
        )
    };
    for (table, time, ranges) in [(daily, "day", &plan.days), (hourly, "hour", &plan.hours)] {
        let columns = format!(
            "{time} AS ts, namespace, agent_id, consumer_id, {model_action}, \
             events, {counters}, cost_nanos, unpriced_events"
        );
        part(table, time, "<", ranges, columns, false, params);
    }
    part(
        "usage_events",
        "ts",
        "<=",
        &plan.events,
        format!(
            "ts, namespace, agent_id, consumer_id, model, action, 1::int8 AS events, {counters}, \
             cost_nanos, (cost_nanos IS NULL)::int4::int8 AS unpriced_events"
        ),
        true,
        params,
    );
    if parts.is_empty() {
        // Nothing to read: no rows, of the right shape.
        parts.push(format!(
            "SELECT ts, namespace, agent_id, consumer_id, model, action, 1::int8 AS events, \
             {counters}, cost_nanos, 0::int8 AS unpriced_events FROM {s}.usage_events WHERE FALSE"
        ));
    }
    parts.join(" UNION ALL ")
}
