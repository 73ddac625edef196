//! Reads: queries, aggregates and statistics on read-only connections that
//! never wait for the writer (WAL gives each read a consistent snapshot).

use crate::error::CoreResult;
use crate::ledger::buckets::{parse_tz, GroupBy};
use crate::ledger::cursor::Cursor;
use crate::ledger::event::UsageEvent;
use crate::ledger::filters::Filters;
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, Row};

pub const EVENT_COLUMNS: &str = "agent_id, consumer_id, task_id, namespace, action, model, tokens_in, tokens_out, \
     cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, cost_nanos, ts, request_id, source, metadata, artifact_digest";

pub fn event_from_row(row: &Row<'_>) -> rusqlite::Result<UsageEvent> {
    Ok(UsageEvent {
        agent_id: row.get(0)?,
        consumer_id: row.get(1)?,
        task_id: row.get(2)?,
        namespace: row.get(3)?,
        action: row.get(4)?,
        model: row.get(5)?,
        tokens_in: row.get::<_, i64>(6)? as u64,
        tokens_out: row.get::<_, i64>(7)? as u64,
        cache_read_tokens: row.get::<_, i64>(8)? as u64,
        cache_write_tokens: row.get::<_, i64>(9)? as u64,
        duration_ms: row.get::<_, i64>(10)? as u64,
        api_calls: row.get::<_, i64>(11)? as u64,
        units: row.get::<_, i64>(12)? as u64,
        cost_nanos: row.get::<_, Option<i64>>(13)?.map(|c| c as u64),
        timestamp_us: row.get(14)?,
        request_id: row.get(15)?,
        source: row.get(16)?,
        metadata: row.get(17)?,
        artifact_digest: row.get(18)?,
    })
}

/// `SELECT … WHERE … ORDER BY ts, id [LIMIT ? OFFSET ?]` and its parameters.
pub fn select_events(filters: &Filters, limit: Option<u64>, offset: u64) -> (String, Vec<Value>) {
    let (clause, mut params) = filters.where_clause();
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM usage_events {clause} ORDER BY ts, id");
    if limit.is_some() || offset > 0 {
        // LIMIT -1 is SQLite's "no limit", needed to give an OFFSET alone.
        sql.push_str(" LIMIT ? OFFSET ?");
        params.push(Value::Integer(
            limit.map_or(-1, |l| l.min(i64::MAX as u64) as i64),
        ));
        params.push(Value::Integer(offset.min(i64::MAX as u64) as i64));
    }
    (sql, params)
}

/// One page in ledger order starting `offset` events after `after`, and the cursor of the
/// page that follows (`None` on the last page). Reads `limit + 1` rows so a
/// full last page does not promise an empty one.
pub fn page(
    conn: &Connection,
    filters: &Filters,
    after: Option<Cursor>,
    limit: u64,
    offset: u64,
) -> CoreResult<(Vec<UsageEvent>, Option<Cursor>)> {
    let (clause, mut params) = filters.where_clause();
    let mut sql = format!("SELECT {EVENT_COLUMNS}, id FROM usage_events {clause}");
    if let Some(after) = after {
        sql.push_str(if clause.is_empty() { " WHERE" } else { " AND" });
        sql.push_str(" (ts, id) > (?, ?)");
        params.push(Value::Integer(after.ts_us));
        params.push(Value::Integer(after.id));
    }
    sql.push_str(" ORDER BY ts, id LIMIT ? OFFSET ?");
    params.push(bound(limit.saturating_add(1)));
    params.push(bound(offset));
    let mut rows = paged_rows(conn, &sql, params)?;
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok(with_next(rows, more, filters))
}

/// The page that `skip` events newest first end, of `take` events, in
/// ledger order (`page_end::PageRead::FromEnd`).
pub fn page_from_end(
    conn: &Connection,
    filters: &Filters,
    skip: u64,
    take: u64,
    more: bool,
) -> CoreResult<(Vec<UsageEvent>, Option<Cursor>)> {
    let (clause, mut params) = filters.where_clause();
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, id FROM usage_events {clause} \
         ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?"
    );
    params.push(bound(take));
    params.push(bound(skip));
    let mut rows = paged_rows(conn, &sql, params)?;
    rows.reverse();
    Ok(with_next(rows, more, filters))
}

fn bound(n: u64) -> Value {
    Value::Integer(n.min(i64::MAX as u64) as i64)
}

fn paged_rows(
    conn: &Connection,
    sql: &str,
    params: Vec<Value>,
) -> CoreResult<Vec<(UsageEvent, i64)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params_from_iter(params), |row| {
            Ok((event_from_row(row)?, row.get::<_, i64>(19)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
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
    (rows.into_iter().map(|(event, _)| event).collect(), next)
}

pub fn query(
    conn: &Connection,
    filters: &Filters,
    limit: Option<u64>,
    offset: u64,
) -> CoreResult<Vec<UsageEvent>> {
    let (sql, params) = select_events(filters, limit, offset);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(params), event_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Totals over a group of events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aggregate {
    /// The group's key; `None` for events with no value (e.g. no model).
    pub group: Option<String>,
    pub events: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub duration_ms: u64,
    pub api_calls: u64,
    pub units: u64,
    /// Sum of known costs; `None` when no event in the group has one.
    pub cost_nanos: Option<u64>,
    /// Events in the group whose cost is unknown.
    pub unpriced_events: u64,
    pub unique_agents: u64,
    pub unique_consumers: u64,
}

impl Aggregate {
    pub fn total_tokens(&self) -> u64 {
        self.tokens_in.saturating_add(self.tokens_out)
    }
}

/// Exact integer sums (SQLite raises an error rather than wrap on overflow).
const TOTALS: &str = "COUNT(*), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), \
     COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0), COALESCE(SUM(duration_ms), 0), \
     COALESCE(SUM(api_calls), 0), COALESCE(SUM(units), 0), SUM(cost_nanos), COUNT(*) - COUNT(cost_nanos), \
     COUNT(DISTINCT agent_id), COUNT(DISTINCT consumer_id)";

/// `TOTALS` with constant zeros in place of the distinct counts.
pub(super) const TOTALS_WITHOUT_DISTINCT: &str = "COUNT(*), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), \
     COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0), COALESCE(SUM(duration_ms), 0), \
     COALESCE(SUM(api_calls), 0), COALESCE(SUM(units), 0), SUM(cost_nanos), COUNT(*) - COUNT(cost_nanos), 0, 0";

pub(super) fn aggregate_from_row(
    row: &Row<'_>,
    group: Option<String>,
    offset: usize,
) -> rusqlite::Result<Aggregate> {
    // Integers, or (from `saturating`) floats past what an integer holds:
    // totals saturate at 2**63 - 1, the most one event may count.
    let value = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(match row.get::<_, Value>(offset + i)? {
            Value::Integer(v) => Some(v.max(0) as u64),
            Value::Real(v) => Some((v.max(0.0) as u64).min(i64::MAX as u64)),
            _ => None,
        })
    };
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(value(i)?.unwrap_or(0)) };
    Ok(Aggregate {
        group,
        events: n(0)?,
        tokens_in: n(1)?,
        tokens_out: n(2)?,
        cache_read_tokens: n(3)?,
        cache_write_tokens: n(4)?,
        duration_ms: n(5)?,
        api_calls: n(6)?,
        units: n(7)?,
        cost_nanos: value(8)?,
        unpriced_events: n(9)?,
        unique_agents: n(10)?,
        unique_consumers: n(11)?,
    })
}

/// Runs a totals query; if its exact integer sums overflow (each event may
/// count up to 2**63 - 1), runs it again summing in floating point, so the
/// totals saturate instead of the query failing for good.
pub(super) fn totals_query<T>(
    sql: &str,
    mut run: impl FnMut(&str) -> rusqlite::Result<T>,
) -> CoreResult<T> {
    match run(sql) {
        Err(e) if e.to_string().contains("integer overflow") => Ok(run(&saturating(sql))?),
        other => Ok(other?),
    }
}

fn saturating(sql: &str) -> String {
    sql.replace(
        "SUM(cost_nanos)",
        "CASE WHEN COUNT(cost_nanos) = 0 THEN NULL ELSE TOTAL(cost_nanos) END",
    )
    .replace("SUM(", "TOTAL(")
}

/// Totals per group, computed by SQLite: calendar buckets as one range query
/// each (see `timeline`), other groups with `GROUP BY` over the grouped
/// totals and the events of the partial hours (see `grouped`).
pub fn aggregate(
    conn: &Connection,
    group_by: GroupBy,
    tz: &str,
    filters: &Filters,
) -> CoreResult<Vec<Aggregate>> {
    match group_by {
        GroupBy::Time(unit) => {
            super::timeline::aggregate_by_time(conn, unit, tz, parse_tz(tz)?, filters)
        }
        _ => super::grouped::aggregate_by_key(conn, group_by, tz, filters),
    }
}

/// Totals per group with one `GROUP BY` over the matching rows.
pub fn aggregate_rows(
    conn: &Connection,
    group_by: GroupBy,
    tz: &str,
    filters: &Filters,
) -> CoreResult<Vec<Aggregate>> {
    let (clause, filter_params) = filters.where_clause();
    let mut params: Vec<Value> = Vec::new();
    if let GroupBy::Time(unit) = group_by {
        params.push(Value::Text(unit.name().into()));
        params.push(Value::Text(tz.into()));
    }
    params.extend(filter_params);
    // Time buckets come oldest first (a label's text does not sort by time
    // when a zone falls back); other groups by key.
    let order = match group_by {
        GroupBy::Time(_) => "MIN(ts)",
        _ => "grp",
    };
    let sql = format!(
        "SELECT {expr} AS grp, {TOTALS} FROM usage_events {clause} GROUP BY grp ORDER BY {order}",
        expr = group_by.sql()
    );
    totals_query(&sql, |sql| {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params_from_iter(params.iter()), |row| {
            aggregate_from_row(row, row.get::<_, Option<String>>(0)?, 1)
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })
}

pub fn summary(conn: &Connection, filters: &Filters) -> CoreResult<Aggregate> {
    summary_with(conn, filters, TOTALS)
}

/// Like `summary`, but leaves `unique_agents` and `unique_consumers` at 0
/// (counting distinct values is a third of a large scan's cost).
pub fn summary_without_distinct(conn: &Connection, filters: &Filters) -> CoreResult<Aggregate> {
    summary_with(conn, filters, TOTALS_WITHOUT_DISTINCT)
}

fn summary_with(conn: &Connection, filters: &Filters, totals: &str) -> CoreResult<Aggregate> {
    let (clause, params) = filters.where_clause();
    let sql = format!("SELECT {totals} FROM usage_events {clause}");
    totals_query(&sql, |sql| {
        conn.prepare_cached(sql)?
            .query_row(params_from_iter(params.iter()), |row| {
                aggregate_from_row(row, Some("all".into()), 0)
            })
    })
}

/// Count, oldest and newest timestamp.
pub fn extent(conn: &Connection) -> CoreResult<(u64, Option<i64>, Option<i64>)> {
    Ok(conn.query_row(
        "SELECT COUNT(*), MIN(ts), MAX(ts) FROM usage_events",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)),
    )?)
}

/// Distinct values of one id column, with event counts.
pub fn distinct(
    conn: &Connection,
    column: &str,
    filters: &Filters,
) -> CoreResult<Vec<(String, u64)>> {
    let column = match column {
        "agent_id" | "consumer_id" => column,
        _ => return Ok(Vec::new()),
    };
    let (clause, params) = filters.where_clause();
    let sql = format!(
        "SELECT {column}, COUNT(*) FROM usage_events {clause} GROUP BY {column} ORDER BY {column}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(params), |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
