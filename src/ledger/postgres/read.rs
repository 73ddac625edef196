//! Reads, aggregates and maintenance in SQL on pooled connections; every
//! value is a bound parameter.

use super::calendar;
use super::grouped::{self, Keys};
use super::writer::{saturate, COUNTERS};
use crate::error::CoreResult;
use crate::ledger::buckets::{parse_tz, GroupBy, TimeUnit};
use crate::ledger::cursor::Cursor;
use crate::ledger::event::UsageEvent;
use crate::ledger::event::{MAX_TIMESTAMP_US, MIN_TIMESTAMP_US};
use crate::ledger::filters::Filters;
use crate::ledger::page_end::{self, PageRead};
use crate::ledger::rollup_plan::{self, Plan};
use crate::ledger::sqlite::Aggregate;
use crate::pricing::{Pricing, Tokens};
use chrono::{Datelike, FixedOffset, NaiveDateTime, TimeZone};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

pub type Param = Box<dyn ToSql + Sync + Send>;

pub fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// `WHERE …` (or empty) with `$n` placeholders from `$first`, and the values.
pub fn where_clause(filters: &Filters, params: &mut Vec<Param>) -> String {
    let mut terms = Vec::new();
    for (column, value) in [
        ("namespace", &filters.namespace),
        ("agent_id", &filters.agent_id),
        ("consumer_id", &filters.consumer_id),
        ("task_id", &filters.task_id),
        ("model", &filters.model),
        ("action", &filters.action),
    ] {
        if let Some(v) = value {
            params.push(Box::new(v.clone()));
            terms.push(format!("{column} = ${}", params.len()));
        }
    }
    if let Some(start) = filters.start_us {
        params.push(Box::new(start));
        terms.push(format!("ts >= ${}", params.len()));
    }
    if let Some(end) = filters.end_us {
        params.push(Box::new(end));
        terms.push(format!("ts <= ${}", params.len()));
    }
    if terms.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", terms.join(" AND "))
    }
}

pub const EVENT_COLUMNS: &str = "agent_id, consumer_id, task_id, namespace, action, model, tokens_in, tokens_out, \
     cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, cost_nanos, ts, request_id, source, metadata, artifact_digest";

pub fn event_from_row(row: &Row) -> UsageEvent {
    let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
    UsageEvent {
        agent_id: row.get(0),
        consumer_id: row.get(1),
        task_id: row.get(2),
        namespace: row.get(3),
        action: row.get(4),
        model: row.get(5),
        tokens_in: n(6),
        tokens_out: n(7),
        cache_read_tokens: n(8),
        cache_write_tokens: n(9),
        duration_ms: n(10),
        api_calls: n(11),
        units: n(12),
        cost_nanos: row.get::<_, Option<i64>>(13).map(|c| c.max(0) as u64),
        timestamp_us: row.get(14),
        request_id: row.get(15),
        source: row.get(16),
        metadata: row.get(17),
        artifact_digest: row.get(18),
    }
}

pub async fn query(
    c: &impl GenericClient,
    s: &str,
    filters: &Filters,
    limit: Option<u64>,
    offset: u64,
) -> CoreResult<Vec<UsageEvent>> {
    let mut params = Vec::new();
    let clause = where_clause(filters, &mut params);
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM {s}.usage_events {clause} ORDER BY ts, id");
    if let Some(limit) = limit {
        params.push(Box::new(limit.min(i64::MAX as u64) as i64));
        sql.push_str(&format!(" LIMIT ${}", params.len()));
    }
    if offset > 0 {
        params.push(Box::new(offset.min(i64::MAX as u64) as i64));
        sql.push_str(&format!(" OFFSET ${}", params.len()));
    }
    let rows = c.query(&sql, &refs(&params)).await?;
    Ok(rows.iter().map(event_from_row).collect())
}

/// Events after `(ts, id)` in ledger order, with their ids (for paging and export).
pub async fn after(
    c: &impl GenericClient,
    s: &str,
    filters: &Filters,
    after: Option<(i64, i64)>,
    limit: u64,
    offset: u64,
) -> CoreResult<Vec<(UsageEvent, i64)>> {
    let mut params = Vec::new();
    let clause = where_clause(filters, &mut params);
    let mut sql = format!("SELECT {EVENT_COLUMNS}, id FROM {s}.usage_events {clause}");
    if let Some((ts, id)) = after {
        params.push(Box::new(ts));
        params.push(Box::new(id));
        sql.push_str(if clause.is_empty() { " WHERE" } else { " AND" });
        sql.push_str(&format!(
            " (ts, id) > (${}, ${})",
            params.len() - 1,
            params.len()
        ));
    }
    sql.push_str(" ORDER BY ts, id");
    paged_rows(c, sql, params, limit, offset).await
}

/// `sql` with `LIMIT limit OFFSET offset` bound, as (event, id) rows.
async fn paged_rows(
    c: &impl GenericClient,
    mut sql: String,
    mut params: Vec<Param>,
    limit: u64,
    offset: u64,
) -> CoreResult<Vec<(UsageEvent, i64)>> {
    params.push(Box::new(limit.min(i64::MAX as u64) as i64));
    params.push(Box::new(offset.min(i64::MAX as u64) as i64));
    sql.push_str(&format!(
        " LIMIT ${} OFFSET ${}",
        params.len() - 1,
        params.len()
    ));
    let rows = c.query(&sql, &refs(&params)).await?;
    Ok(rows
        .iter()
        .map(|r| (event_from_row(r), r.get::<_, i64>(19)))
        .collect())
}

pub async fn page(
    c: &impl GenericClient,
    s: &str,
    filters: &Filters,
    cursor: Option<Cursor>,
    limit: u64,
    offset: u64,
) -> CoreResult<(Vec<UsageEvent>, Option<Cursor>)> {
    let after_cursor = cursor.map(|c| (c.ts_us, c.id));
    let mut rows = after(c, s, filters, after_cursor, limit.saturating_add(1), offset).await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok(with_next(rows, more, filters))
}

/// A page with a large offset, from whichever end of the matching events is
/// nearer (`page_end`); run it in one snapshot, so the count holds for the read.
pub async fn page_from_nearer_end(
    c: &impl GenericClient,
    s: &str,
    filters: &Filters,
    limit: u64,
    offset: u64,
) -> CoreResult<(Vec<UsageEvent>, Option<Cursor>)> {
    match page_end::choose(count(c, s, filters).await?, offset, limit) {
        PageRead::Empty => Ok((Vec::new(), None)),
        PageRead::FromStart => page(c, s, filters, None, limit, offset).await,
        PageRead::FromEnd { skip, take, more } => {
            let mut params = Vec::new();
            let clause = where_clause(filters, &mut params);
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, id FROM {s}.usage_events {clause} ORDER BY ts DESC, id DESC"
            );
            let mut rows = paged_rows(c, sql, params, take, skip).await?;
            rows.reverse();
            Ok(with_next(rows, more, filters))
        }
    }
}

/// The page's events and, when `more`, the cursor after its last one.
fn with_next(
    rows: Vec<(UsageEvent, i64)>,
    more: bool,
    filters: &Filters,
) -> (Vec<UsageEvent>, Option<Cursor>) {
    let next = match rows.last() {
        Some((event, id)) if more => Some(Cursor::after(event.timestamp_us, *id, filters)),
        _ => None,
    };
    (rows.into_iter().map(|(e, _)| e).collect(), next)
}

/// How many events match `filters`, from the grouped totals where they answer.
async fn count(c: &impl GenericClient, s: &str, filters: &Filters) -> CoreResult<u64> {
    let mut params = Vec::new();
    let plan = plan_of(c, s, filters, None).await?;
    let source = grouped::source(s, filters, &plan, Keys::Pairs, &mut params);
    let sql = format!("SELECT COALESCE(SUM(events), 0)::int8 FROM ({source}) src");
    let row = c.query_one(&sql, &refs(&params)).await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The totals of `grouped::source` rows, exact (numeric) and saturating at
/// 2**63 - 1, then the distinct agents and consumers.
fn totals() -> String {
    let mut cols = vec!["COALESCE(SUM(events), 0)::int8".to_string()];
    cols.extend(
        COUNTERS
            .iter()
            .map(|c| saturate(&format!("COALESCE(SUM({c}), 0)"))),
    );
    cols.push(saturate("SUM(cost_nanos)"));
    cols.push("COALESCE(SUM(unpriced_events), 0)::int8".into());
    cols.push("COUNT(DISTINCT agent_id)::int8".into());
    cols.push("COUNT(DISTINCT consumer_id)::int8".into());
    cols.join(", ")
}

/// How `filters`' range is read: its whole hours from the grouped totals
/// (those a bucket edge of `buckets` cuts excepted), the rest from the
/// events; only from the events for filters the totals do not keep.
async fn plan_of(
    c: &impl GenericClient,
    s: &str,
    filters: &Filters,
    buckets: Option<(TimeUnit, chrono_tz::Tz)>,
) -> CoreResult<Plan> {
    let mut start = filters.start_us.unwrap_or(MIN_TIMESTAMP_US);
    let mut end = filters.end_us.unwrap_or(MAX_TIMESTAMP_US);
    let all_events = |start, end| Plan {
        events: vec![(start, end)],
        ..Plan::default()
    };
    if !rollup_plan::answers(filters) {
        return Ok(all_events(start, end));
    }
    let Some((unit, tz)) = buckets else {
        return Ok(rollup_plan::plan_with_days(start, end));
    };
    // Cut hours are looked for only where the matching events are.
    let mut params = Vec::new();
    let clause = where_clause(filters, &mut params);
    let row = c
        .query_one(
            &format!("SELECT MIN(ts), MAX(ts) FROM {s}.usage_events {clause}"),
            &refs(&params),
        )
        .await?;
    match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
        // Narrowed to the hours holding them, not to the events themselves:
        // no matching event lies between an hour's start and the oldest, so
        // whole hours stay whole and are read from the totals.
        (Some(oldest), Some(newest)) => {
            start = start.max(rollup_plan::hour_of(oldest));
            end = end.min(rollup_plan::hour_of(newest) + rollup_plan::HOUR_US - 1);
        }
        _ => return Ok(Plan::default()),
    }
    let (first, past) = rollup_plan::whole_hours(start, end);
    let planned = if (past - first) / rollup_plan::HOUR_US <= rollup_plan::MAX_SCANNED_HOURS {
        rollup_plan::plan(start, end, buckets)
    } else {
        // A long, sparse range: check only the hours that hold totals.
        let mut params: Vec<Param> = vec![Box::new(first), Box::new(past)];
        let mut sql =
            format!("SELECT DISTINCT hour FROM {s}.usage_rollup WHERE hour >= $1 AND hour < $2");
        if let Some(ns) = &filters.namespace {
            params.push(Box::new(ns.clone()));
            sql.push_str(" AND namespace = $3");
        }
        sql.push_str(" ORDER BY hour");
        let hours: Vec<i64> = c
            .query(&sql, &refs(&params))
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        rollup_plan::plan_among(start, end, unit, tz, &hours)
    };
    Ok(planned.unwrap_or_else(|| all_events(start, end)))
}

fn aggregate_from_row(row: &Row, group: Option<String>, at: usize) -> Aggregate {
    let n = |i: usize| row.get::<_, i64>(at + i).max(0) as u64;
    Aggregate {
        group,
        unique_agents: n(10),
        unique_consumers: n(11),
        ..totals_at(row, at)
    }
}

/// Totals from one row's columns `at..at + 10` (events, counters, cost, unpriced).
pub fn totals_at(row: &Row, at: usize) -> Aggregate {
    let n = |i: usize| row.get::<_, i64>(at + i).max(0) as u64;
    Aggregate {
        events: n(0),
        tokens_in: n(1),
        tokens_out: n(2),
        cache_read_tokens: n(3),
        cache_write_tokens: n(4),
        duration_ms: n(5),
        api_calls: n(6),
        units: n(7),
        cost_nanos: row.get::<_, Option<i64>>(at + 8).map(|c| c.max(0) as u64),
        unpriced_events: n(9),
        ..Aggregate::default()
    }
}

/// The instant `column` (UTC µs) as local time in the zone bound at `$tz`.
fn local(column: &str, tz: usize) -> String {
    format!("((TIMESTAMPTZ 'epoch' + {column} * INTERVAL '1 microsecond') AT TIME ZONE ${tz})")
}

/// Memory for one grouped read's hash tables, on the reader's session.
const GROUPING_WORK_MEM: &str = "SET work_mem = '64MB'";

/// The 15-minute UTC slot (µs) an event falls in. Today's offsets are whole
/// quarter-hours and change on such boundaries, so a slot lies in one local
/// bucket; a slot that does not (an old local mean time, a change at 00:01)
/// is seen by its two ends' buckets, and the read is then made per event.
const SLOT_OF_TS: &str = "(ts - (((ts % 900000000) + 900000000) % 900000000))";
/// The last microsecond of the slot starting at `part`.
const SLOT_END: &str = "(part + 899999999)";

/// A calendar bucket's key columns for the instant `at`: its local start,
/// and its UTC offset in seconds for hours (two hours of a fall-back share
/// a local start) or 0.
fn bucket_keys(unit: TimeUnit, at: &str) -> (String, String) {
    let local = local(at, 1);
    let offset = match unit {
        TimeUnit::Hour => format!(
            "EXTRACT(EPOCH FROM {local} - ((TIMESTAMPTZ 'epoch' + {at} * INTERVAL '1 microsecond') AT TIME ZONE 'UTC'))::int4"
        ),
        _ => "0".into(),
    };
    (format!("date_trunc('{}', {local})", unit.name()), offset)
}

/// A bucket's label from its local start (and, for hours, its UTC offset),
/// formatted exactly as the SQLite store formats it.
fn bucket_label(unit: TimeUnit, start: NaiveDateTime, offset_s: i32) -> String {
    match unit {
        TimeUnit::Hour => FixedOffset::east_opt(offset_s)
            .and_then(|o| o.from_local_datetime(&start).single())
            .map_or_else(
                || "invalid".into(),
                |t| t.format("%Y-%m-%dT%H:00%:z").to_string(),
            ),
        TimeUnit::Day => start.format("%Y-%m-%d").to_string(),
        TimeUnit::Week => {
            let week = start.date().iso_week();
            format!("{}-W{:02}", week.year(), week.week())
        }
        TimeUnit::Month => start.format("%Y-%m").to_string(),
    }
}

/// Totals per group, oldest bucket first for calendar buckets (in the
/// zone given, DST-correct), other groups by key in byte order, no value
/// first (as SQLite orders them).
///
/// One pass over the events folds them into partial totals per (15-minute
/// slot or group key, agent, consumer); the groups, and their distinct
/// agents and consumers, are then counted from those far fewer rows, so the
/// time-zone arithmetic and the distinct counts never touch every event.
pub async fn aggregate(
    c: &impl GenericClient,
    s: &str,
    group_by: GroupBy,
    tz: &str,
    filters: &Filters,
) -> CoreResult<Vec<Aggregate>> {
    let mut params: Vec<Param> = Vec::new();
    // The partial totals' key, the group key columns `k0, k1` computed from
    // it, how groups are ordered, and for calendar buckets whether any slot's
    // two ends fall in different buckets.
    let (part, keys, order, straddles) = match group_by {
        GroupBy::Time(unit) => {
            params.push(Box::new(tz.to_string()));
            let (start, offset) = bucket_keys(unit, "part");
            let (end, end_offset) = bucket_keys(unit, SLOT_END);
            (
                SLOT_OF_TS.to_string(),
                format!("{start} AS k0, {offset} AS k1"),
                "MIN(first_ts)",
                Some(format!(
                    "bool_or({start} <> {end} OR {offset} <> {end_offset})"
                )),
            )
        }
        _ => (
            group_by.sql().to_string(),
            "part AS k0, 0 AS k1".to_string(),
            "part COLLATE \"C\" NULLS FIRST",
            None,
        ),
    };
    let buckets = match group_by {
        GroupBy::Time(unit) => Some((unit, parse_tz(tz)?)),
        _ => None,
    };
    // Calendar buckets, and models, from the per-model hours and the
    // presence masks where those answer.
    let by = match (group_by, buckets) {
        (_, Some((unit, tz))) => Some(calendar::By::Bucket(unit, tz)),
        (GroupBy::Model, _) if calendar::answers(filters) => Some(calendar::By::Model),
        _ => None,
    };
    let mut plan = None;
    if let Some(by) = by {
        // Models over the hours of the range as UTC hourly buckets split them.
        let split = buckets.or(Some((TimeUnit::Hour, chrono_tz::Tz::UTC)));
        let planned = plan_of(c, s, filters, split).await?;
        if let Some(found) = calendar::aggregate(c, s, by, filters, &planned).await? {
            return Ok(found);
        }
        plan = buckets.map(|_| planned);
    }
    let plan = match plan {
        Some(plan) => plan,
        None => plan_of(c, s, filters, buckets).await?,
    };
    let kept = match group_by {
        GroupBy::Model | GroupBy::Action => Keys::All,
        _ => Keys::Pairs,
    };
    let source = grouped::source(s, filters, &plan, kept, &mut params);
    let partial_sums: Vec<String> = COUNTERS
        .iter()
        .map(|c| format!("SUM({c}) AS {c}"))
        .collect();
    let mut sums = vec!["SUM(events)::int8".to_string()];
    sums.extend(
        COUNTERS
            .iter()
            .map(|c| saturate(&format!("COALESCE(SUM({c}), 0)"))),
    );
    sums.push(saturate("SUM(cost_nanos)"));
    sums.push("(SUM(events) - SUM(priced))::int8".into());
    // Rows are folded per (slot or key, agent, consumer) first, but for
    // calendar buckets over pre-aggregated hours, which are folded per hour
    // already: those are grouped as they are (in half the time).
    let fold = plan.hours.is_empty() || !matches!(group_by, GroupBy::Time(_));
    let partial = |part: &str| {
        if fold {
            format!(
                "SELECT {part} AS part, agent_id, consumer_id, MIN(ts) AS first_ts, \
                        SUM(events) AS events, {partial_sums}, \
                        SUM(cost_nanos) AS cost_nanos, SUM(events - unpriced_events) AS priced \
                 FROM ({source}) src GROUP BY 1, 2, 3",
                partial_sums = partial_sums.join(", "),
            )
        } else {
            format!(
                "SELECT ts AS part, agent_id, consumer_id, ts AS first_ts, events, {counters}, \
                        cost_nanos, events - unpriced_events AS priced FROM ({source}) src",
                counters = COUNTERS.join(", "),
            )
        }
    };
    // Only slots folded into calendar buckets can straddle an edge (last column).
    let slot_check = straddles.filter(|_| fold);
    let grouped = |part: &str, check: Option<&str>| {
        format!(
            "SELECT {keys}, MIN(first_ts), {sums}, \
                    COUNT(DISTINCT agent_id)::int8, COUNT(DISTINCT consumer_id)::int8, \
                    {check} \
             FROM ({partial}) p GROUP BY 1, 2 ORDER BY {order}",
            sums = sums.join(", "),
            check = check.unwrap_or("false"),
            partial = partial(part),
        )
    };
    // The partial totals are hashed in memory: at the default 4 MB they
    // would spill to disk for a ledger of a few hundred thousand events.
    c.batch_execute(GROUPING_WORK_MEM).await?;
    let mut rows = c
        .query(&grouped(&part, slot_check.as_deref()), &refs(&params))
        .await?;
    if slot_check.is_some()
        && rows
            .iter()
            .any(|r| r.get::<_, Option<bool>>(15) == Some(true))
    {
        // A slot straddles a bucket edge: per event instead.
        rows = c.query(&grouped("ts", None), &refs(&params)).await?;
    }
    Ok(match group_by {
        GroupBy::Time(unit) => rows
            .iter()
            .map(|r| {
                let label = bucket_label(unit, r.get(0), r.get(1));
                aggregate_from_row(r, Some(label), 3)
            })
            .collect(),
        _ => rows
            .iter()
            .map(|r| aggregate_from_row(r, r.get(0), 3))
            .collect(),
    })
}

pub async fn summary(c: &impl GenericClient, s: &str, filters: &Filters) -> CoreResult<Aggregate> {
    let mut params = Vec::new();
    let plan = plan_of(c, s, filters, None).await?;
    let source = grouped::source(s, filters, &plan, Keys::Pairs, &mut params);
    // Folded per (agent, consumer) first: the distinct counts then sort a
    // few rows, not every pre-aggregated one.
    let folded: Vec<String> = ["events"]
        .into_iter()
        .chain(COUNTERS)
        .chain(["cost_nanos", "unpriced_events"])
        .map(|c| format!("SUM({c}) AS {c}"))
        .collect();
    let sql = format!(
        "SELECT {} FROM (SELECT agent_id, consumer_id, {} FROM ({source}) src GROUP BY 1, 2) p",
        totals(),
        folded.join(", ")
    );
    let row = c.query_one(&sql, &refs(&params)).await?;
    Ok(aggregate_from_row(&row, Some("all".into()), 0))
}

pub async fn distinct(
    c: &impl GenericClient,
    s: &str,
    column: &str,
    filters: &Filters,
) -> CoreResult<Vec<(String, u64)>> {
    let column = match column {
        "agent_id" | "consumer_id" => column,
        _ => return Ok(Vec::new()),
    };
    let mut params = Vec::new();
    let plan = plan_of(c, s, filters, None).await?;
    let source = grouped::source(s, filters, &plan, Keys::Pairs, &mut params);
    let sql = format!(
        "SELECT {column}, SUM(events)::int8 FROM ({source}) src GROUP BY 1 ORDER BY {column} COLLATE \"C\""
    );
    let rows = c.query(&sql, &refs(&params)).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect())
}

/// Count, oldest and newest timestamp, and the bytes the ledger's tables take.
pub async fn extent(
    c: &impl GenericClient,
    s: &str,
    schema: &str,
) -> CoreResult<(u64, Option<i64>, Option<i64>, u64)> {
    let row = c
        .query_one(
            &format!("SELECT COUNT(*)::int8, MIN(ts), MAX(ts) FROM {s}.usage_events"),
            &[],
        )
        .await?;
    let size = c
        .query_one(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
            &[&schema],
        )
        .await?;
    Ok((
        row.get::<_, i64>(0) as u64,
        row.get(1),
        row.get(2),
        size.get::<_, i64>(0) as u64,
    ))
}

/// `reprice` inside the caller's transaction.
pub async fn reprice(
    c: &impl GenericClient,
    s: &str,
    pricing: &Pricing,
    filters: &Filters,
) -> CoreResult<usize> {
    // Before reading: what the recount below sees is what writers committed.
    grouped::lock(c, s).await?;
    let mut params = Vec::new();
    let clause = where_clause(filters, &mut params);
    let joiner = if clause.is_empty() { "WHERE" } else { "AND" };
    let sql = format!(
        "SELECT id, ts, model, tokens_in, tokens_out, cache_read_tokens, cache_write_tokens, cost_nanos \
         FROM {s}.usage_events {clause} {joiner} model IS NOT NULL AND (cost_nanos IS NULL OR cost_priced) FOR UPDATE"
    );
    let rows = c.query(&sql, &refs(&params)).await?;
    let (mut ids, mut tss, mut costs) = (Vec::new(), Vec::new(), Vec::new());
    let mut hours = hashbrown::HashSet::new();
    for row in rows {
        let model: String = row.get(2);
        let tokens = Tokens {
            input: row.get::<_, i64>(3) as u64,
            output: row.get::<_, i64>(4) as u64,
            cache_read: row.get::<_, i64>(5) as u64,
            cache_write: row.get::<_, i64>(6) as u64,
        };
        let ts: i64 = row.get(1);
        let old = row.get::<_, Option<i64>>(7).map(|c| c as u64);
        if let Some(new) = pricing.cost_nanos(&model, &tokens, ts) {
            if old != Some(new) {
                ids.push(row.get::<_, i64>(0));
                tss.push(ts);
                costs.push(new.min(i64::MAX as u64) as i64);
                hours.insert(ts - ts.rem_euclid(3_600_000_000));
            }
        }
    }
    if ids.is_empty() {
        return Ok(0);
    }
    c.execute(
        &format!(
            "UPDATE {s}.usage_events e SET cost_nanos = u.cost, cost_priced = TRUE \
             FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS u(id, ts, cost) \
             WHERE e.id = u.id AND e.ts = u.ts"
        ),
        &[&ids, &tss, &costs],
    )
    .await?;
    grouped::recount_hours(c, s, &hours.into_iter().collect::<Vec<_>>()).await?;
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_a_bound_parameter() {
        let f = Filters {
            agent_id: Some("a'; DROP TABLE usage_events; --".into()),
            start_us: Some(1),
            end_us: Some(2),
            ..Filters::default()
        };
        let mut params = Vec::new();
        assert_eq!(
            where_clause(&f, &mut params),
            "WHERE agent_id = $1 AND ts >= $2 AND ts <= $3"
        );
        assert_eq!(params.len(), 3);
    }

    #[test]
    fn labels_match_the_sqlite_store() {
        use crate::ledger::buckets::{label, parse_tz};
        // A fall-back hour in New York, a +05:45 day, an ISO week across a year.
        for (ts, unit, zone) in [
            (
                1_793_512_800_000_000_i64,
                TimeUnit::Hour,
                "America/New_York",
            ),
            (1_793_516_400_000_000, TimeUnit::Hour, "America/New_York"),
            (1_771_070_400_000_000, TimeUnit::Day, "Asia/Kathmandu"),
            (1_767_139_200_000_000, TimeUnit::Week, "Pacific/Chatham"),
            (1_000_000, TimeUnit::Hour, "Africa/Monrovia"),
        ] {
            let tz = parse_tz(zone).unwrap();
            let local = chrono::DateTime::from_timestamp_micros(ts)
                .unwrap()
                .with_timezone(&tz);
            let offset = chrono::Offset::fix(local.offset()).local_minus_utc();
            let naive = local.naive_local();
            let start = match unit {
                TimeUnit::Hour => naive
                    .date()
                    .and_hms_opt(chrono::Timelike::hour(&naive), 0, 0)
                    .unwrap(),
                TimeUnit::Week => {
                    let d = naive.date();
                    (d - chrono::Days::new(u64::from(d.weekday().num_days_from_monday())))
                        .and_hms_opt(0, 0, 0)
                        .unwrap()
                }
                _ => naive.date().and_hms_opt(0, 0, 0).unwrap(),
            };
            assert_eq!(bucket_label(unit, start, offset), label(ts, unit, tz));
        }
    }
}
