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
//! The partial hours at the range's edges and the hours a bucket edge cuts
//! (zones off the hour) are read from the events, as `rollup_plan` splits
//! them; reads the tables cannot answer (filters on agent, consumer, action
//! or task, far too many hours, offsets off the quarter-hour) return `None`
//! and are grouped by `super::read::aggregate`.

use super::grouped::{self, Level, HOURLY, HOUR_OF_TS};
use super::read::{refs, totals_at, Param};
use super::writer::{saturate, COUNTERS};
use crate::error::CoreResult;
use crate::ledger::buckets::{label, slot_is_uniform, TimeUnit, SLOT_US};
use crate::ledger::filters::Filters;
use crate::ledger::rollup_plan::{day_of, Plan, DAY_US, HOUR_US, MAX_SCANNED_HOURS};
use crate::ledger::sqlite::{add_totals, Aggregate};
use chrono_tz::Tz;
use deadpool_postgres::GenericClient;
use hashbrown::{HashMap, HashSet};

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

/// Whether the tables keep every filter of `filters` (namespace, model, time).
pub fn answers(filters: &Filters) -> bool {
    let kept = Filters {
        namespace: filters.namespace.clone(),
        model: filters.model.clone(),
        start_us: filters.start_us,
        end_us: filters.end_us,
        ..Filters::default()
    };
    kept == *filters && crate::ledger::rollup_plan::answers(filters)
}

/// One bucket being summed: its label, first instant seen, totals and ids.
struct Bucket {
    label: String,
    first: i64,
    totals: Aggregate,
    agents: HashSet<String>,
    consumers: HashSet<String>,
}

/// The buckets of a plan, found by label.
#[derive(Default)]
struct Buckets {
    all: Vec<Bucket>,
    by_label: HashMap<String, usize>,
}

impl Buckets {
    fn of(&mut self, label: String, at: i64) -> usize {
        let i = match self.by_label.get(label.as_str()) {
            Some(&i) => i,
            None => {
                self.by_label.insert(label.clone(), self.all.len());
                self.all.push(Bucket {
                    label,
                    first: at,
                    totals: Aggregate::default(),
                    agents: HashSet::new(),
                    consumers: HashSet::new(),
                });
                self.all.len() - 1
            }
        };
        self.all[i].first = self.all[i].first.min(at);
        i
    }
}

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

/// What the totals are grouped by.
#[derive(Clone, Copy)]
pub enum By {
    /// Calendar buckets of this unit in this zone.
    Bucket(TimeUnit, Tz),
    /// The model (no model first, then by bytes).
    Model,
}

/// The index of a bucket whose rows are found by their model.
const BY_MODEL: usize = usize::MAX;

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
    let (unit, tz) = match by {
        By::Bucket(unit, tz) => (unit, tz),
        By::Model => (TimeUnit::Hour, Tz::UTC),
    };
    let whole: i64 = plan.hours.iter().map(|&(a, b)| (b - a) / HOUR_US).sum();
    if !answers(filters) || plan.hours.is_empty() || whole > MAX_SCANNED_HOURS {
        return Ok(None);
    }
    // The slots read from the events: each checked below, so a read whose
    // event spans hold too many of them (an unbounded range) is left to the
    // general grouping rather than checked slot by slot.
    let slots: i64 = plan
        .events
        .iter()
        .map(|&(a, b)| (b - (a - a.rem_euclid(SLOT_US))) / SLOT_US + 1)
        .fold(0i64, i64::saturating_add);
    if slots > MAX_SCANNED_HOURS * (HOUR_US / SLOT_US) {
        return Ok(None);
    }
    let uniform = plan.events.iter().all(|&(a, b)| {
        let first = a - a.rem_euclid(SLOT_US);
        (first..=b)
            .step_by(SLOT_US as usize)
            .all(|slot| slot_is_uniform(slot, tz))
    });
    if !uniform {
        return Ok(None);
    }
    let mut buckets = Buckets::default();
    // Each whole hour lies in one bucket: per UTC day, the buckets' hour masks.
    let mut days: HashMap<i64, Vec<(usize, u32)>> = HashMap::new();
    let mut bucket_of_hour: HashMap<i64, usize> = HashMap::new();
    for &(a, b) in &plan.hours {
        for h in (a..b).step_by(HOUR_US as usize) {
            let i = match by {
                By::Bucket(..) => buckets.of(label(h, unit, tz), h),
                By::Model => BY_MODEL,
            };
            bucket_of_hour.insert(h, i);
            let bit = 1u32 << ((h - day_of(h)) / HOUR_US);
            let masks = days.entry(day_of(h)).or_default();
            match masks.iter_mut().find(|(j, _)| *j == i) {
                Some((_, mask)) => *mask |= bit,
                None => masks.push((i, bit)),
            }
        }
    }
    let sums = summed_totals();

    let mut params: Vec<Param> = Vec::new();
    let mut terms = key_terms(filters, &mut params);
    terms.push(spans("hour", "<", &plan.hours, &mut params));
    let key = match by {
        By::Bucket(..) => "hour",
        By::Model => "model",
    };
    let sql = format!(
        "SELECT {key}, {sums} FROM {s}.usage_hourly_model WHERE {} GROUP BY 1",
        terms.join(" AND ")
    );
    for row in c.query(&sql, &refs(&params)).await? {
        let i = match by {
            By::Bucket(..) => bucket_of_hour.get(&row.get::<_, i64>(0)).copied(),
            By::Model => Some(buckets.of(row.get(0), 0)),
        };
        if let Some(i) = i {
            add_totals(&mut buckets.all[i].totals, &totals_at(&row, 1));
        }
    }

    let (first_day, past_day) = (
        day_of(plan.hours[0].0),
        day_of(plan.hours[plan.hours.len() - 1].1 - 1) + DAY_US,
    );
    let mut params: Vec<Param> = vec![Box::new(first_day), Box::new(past_day)];
    let mut terms = key_terms(filters, &mut params);
    terms.push("day >= $1 AND day < $2".into());
    let sql = format!(
        "SELECT day, kind, id, hours, model FROM {s}.usage_presence WHERE {}",
        terms.join(" AND ")
    );
    for row in c.query(&sql, &refs(&params)).await? {
        let Some(masks) = days.get(&row.get::<_, i64>(0)) else {
            continue;
        };
        let (kind, id, hours): (i16, &str, i32) = (row.get(1), row.get(2), row.get(3));
        for &(i, mask) in masks {
            if hours as u32 & mask != 0 {
                let i = match i {
                    BY_MODEL => buckets.of(row.get(4), 0),
                    i => i,
                };
                let bucket = &mut buckets.all[i];
                let set = if kind == 0 {
                    &mut bucket.agents
                } else {
                    &mut bucket.consumers
                };
                if !set.contains(id) {
                    set.insert(id.to_owned());
                }
            }
        }
    }

    if !plan.events.is_empty() {
        let mut params: Vec<Param> = Vec::new();
        let mut terms = key_terms(filters, &mut params);
        terms.push(spans("ts", "<=", &plan.events, &mut params));
        let mut partial = vec!["COUNT(*)::int8".to_string()];
        partial.extend(COUNTERS.iter().map(|c| saturate(&format!("SUM({c})"))));
        partial.push(saturate("SUM(cost_nanos)"));
        partial.push("(COUNT(*) - COUNT(cost_nanos))::int8".into());
        let key = match by {
            By::Bucket(..) => format!("ts - (((ts % {SLOT_US}) + {SLOT_US}) % {SLOT_US})"),
            By::Model => "COALESCE(model, '')".into(),
        };
        let sql = format!(
            "SELECT {key}, agent_id, consumer_id, MIN(ts), {} \
             FROM {s}.usage_events WHERE {} GROUP BY 1, 2, 3",
            partial.join(", "),
            terms.join(" AND ")
        );
        for row in c.query(&sql, &refs(&params)).await? {
            let first: i64 = row.get(3);
            let i = match by {
                By::Bucket(..) => buckets.of(label(first, unit, tz), first),
                By::Model => buckets.of(row.get(0), 0),
            };
            let bucket = &mut buckets.all[i];
            add_totals(&mut bucket.totals, &totals_at(&row, 4));
            let (agent, consumer): (&str, &str) = (row.get(1), row.get(2));
            if !bucket.agents.contains(agent) {
                bucket.agents.insert(agent.to_owned());
            }
            if !bucket.consumers.contains(consumer) {
                bucket.consumers.insert(consumer.to_owned());
            }
        }
    }

    let mut out: Vec<Bucket> = buckets
        .all
        .into_iter()
        .filter(|b| b.totals.events > 0)
        .collect();
    match by {
        By::Bucket(..) => out.sort_by_key(|b| b.first),
        // A model is never empty: `''` is how the tables store none.
        By::Model => out.sort_by(|a, b| a.label.cmp(&b.label)),
    }
    Ok(Some(
        out.into_iter()
            .map(|b| Aggregate {
                group: Some(b.label).filter(|l| !matches!(by, By::Model) || !l.is_empty()),
                unique_agents: b.agents.len() as u64,
                unique_consumers: b.consumers.len() as u64,
                ..b.totals
            })
            .collect(),
    ))
}
