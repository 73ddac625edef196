//! Totals per calendar bucket: from the per-model hours and the presence
//! masks where those answer (`super::calendar`), else as one index range
//! query per bucket.
//!
//! Grouping a whole table by a computed label makes SQLite evaluate a
//! function per row and sort every row; instead the bucket boundaries are
//! computed in Rust (in the IANA zone, so DST is respected) and each bucket
//! is summed over its `ts` range: its whole hours from the pre-aggregated
//! totals, the hours its edges cut (zones off the hour) from the events. Empty stretches are skipped by asking for
//! the next event's time, so the cost follows the buckets that hold events.
//! A bucket whose instants do not all carry its label (a clock change inside
//! it in an unusual place, such as a fall-back across midnight) is grouped
//! row by row with the `uw_bucket` function.
//!
//! Distinct agents and consumers per bucket are counted by probing the
//! `(agent_id, ts)` and `(consumer_id, ts)` indexes once per known value,
//! when the ledger holds few enough values for that to beat counting them
//! in the scan (`COUNT(DISTINCT …)` costs about a third of a large scan).

use super::grouped;
use super::read::{self, Aggregate};
use crate::error::CoreResult;
use crate::ledger::buckets::{bucket_bounds, label, uniform_between, GroupBy, TimeUnit};
use crate::ledger::filters::Filters;
use crate::ledger::presence_read::By;
use chrono_tz::Tz;
use rusqlite::{params_from_iter, Connection};

/// The time of the first matching event at or after `from`.
fn next_event(conn: &Connection, filters: &Filters, from: Option<i64>) -> CoreResult<Option<i64>> {
    let mut f = filters.clone();
    if let Some(from) = from {
        f.start_us = Some(f.start_us.map_or(from, |s| s.max(from)));
    }
    let (clause, params) = f.where_clause();
    let sql = format!("SELECT MIN(ts) FROM usage_events {clause}");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params_from_iter(params), |r| r.get(0))?)
}

/// Buckets summed one range query at a time; past this many the rest are
/// grouped in one pass, so a sparse range (events in thousands of distinct
/// hours) costs one scan instead of several queries per bucket.
const RANGE_QUERY_BUCKETS: usize = 256;

/// Most distinct values for which per-bucket index probes are used.
const PROBE_LIMIT: usize = 256;

/// Every distinct value of an indexed id column (whole ledger), by seeking
/// from one value to the next in its index; `None` past `PROBE_LIMIT`.
fn distinct_values(conn: &Connection, column: &str) -> CoreResult<Option<Vec<String>>> {
    let next =
        format!("SELECT {column} FROM usage_events WHERE {column} > ?1 ORDER BY {column} LIMIT 1");
    let mut stmt = conn.prepare_cached(&next)?;
    let mut values: Vec<String> = Vec::new();
    let mut last = String::new();
    loop {
        let found: Option<String> =
            stmt.query_row([&last], |r| r.get(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    other => Err(other),
                })?;
        let Some(value) = found else {
            return Ok(Some(values));
        };
        if values.len() == PROBE_LIMIT {
            return Ok(None);
        }
        last.clone_from(&value);
        values.push(value);
    }
}

/// How many of `values` occur in `column` among the events `range` selects.
fn count_present(
    conn: &Connection,
    column: &str,
    values: &[String],
    range: &Filters,
) -> CoreResult<u64> {
    let (clause, mut params) = range.where_clause();
    // Seek the (column, ts) index: one probe per value, whatever else filters.
    let index = match column {
        "agent_id" => "usage_events_agent",
        _ => "usage_events_consumer",
    };
    let sql = format!(
        "SELECT EXISTS(SELECT 1 FROM usage_events INDEXED BY {index} {clause} {joiner} {column} = ?)",
        joiner = if clause.is_empty() { "WHERE" } else { "AND" }
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    params.push(rusqlite::types::Value::Null);
    let last = params.len() - 1;
    let mut present = 0;
    for value in values {
        params[last] = rusqlite::types::Value::Text(value.clone());
        let exists: bool = stmt.query_row(params_from_iter(params.iter()), |r| r.get(0))?;
        present += u64::from(exists);
    }
    Ok(present)
}

/// Distinct agents and consumers among the events `filters` select: by
/// index probes when the ledger holds few values, else by counting in a scan.
pub fn distinct_counts(conn: &Connection, filters: &Filters) -> CoreResult<(u64, u64)> {
    if let (Some(agents), Some(consumers)) = (
        distinct_values(conn, "agent_id")?,
        distinct_values(conn, "consumer_id")?,
    ) {
        return Ok((
            count_present(conn, "agent_id", &agents, filters)?,
            count_present(conn, "consumer_id", &consumers, filters)?,
        ));
    }
    let (clause, params) = filters.where_clause();
    let sql = format!(
        "SELECT COUNT(DISTINCT agent_id), COUNT(DISTINCT consumer_id) FROM usage_events {clause}"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params_from_iter(params), |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?)
}

pub fn aggregate_by_time(
    conn: &Connection,
    unit: TimeUnit,
    tz_name: &str,
    tz: Tz,
    filters: &Filters,
) -> CoreResult<Vec<Aggregate>> {
    if let Some(found) = super::calendar::aggregate(conn, By::Bucket(unit, tz), filters)? {
        return Ok(found);
    }
    let mut out = Vec::new();
    let mut cursor = None;
    let probes = match (
        distinct_values(conn, "agent_id")?,
        distinct_values(conn, "consumer_id")?,
    ) {
        (Some(agents), Some(consumers)) => Some((agents, consumers)),
        _ => None,
    };
    while let Some(ts) = next_event(conn, filters, cursor)? {
        if out.len() >= RANGE_QUERY_BUCKETS {
            let mut rest = filters.clone();
            rest.start_us = Some(rest.start_us.map_or(ts, |s| s.max(ts)));
            out.extend(read::aggregate_rows(
                conn,
                GroupBy::Time(unit),
                tz_name,
                &rest,
            )?);
            break;
        }
        let here = label(ts, unit, tz);
        let (start, end) = match bucket_bounds(ts, unit, tz) {
            Some((start, end)) if start <= ts && ts < end => (start, end),
            _ => (ts, ts + 1),
        };
        // Never reach back into a bucket already counted (a clock change can
        // make a bucket start before the previous one ended).
        let start = cursor.map_or(start, |c: i64| start.max(c));
        let mut range = filters.clone();
        range.start_us = Some(range.start_us.map_or(start, |s| s.max(start)));
        range.end_us = Some(range.end_us.map_or(end - 1, |e| e.min(end - 1)));
        if label(start, unit, tz) == here
            && label(end - 1, unit, tz) == here
            && uniform_between(start, end, unit, tz, &here)
        {
            let mut totals = match &probes {
                Some((agents, consumers)) => {
                    let mut totals = grouped::totals_without_distinct(conn, &range)?;
                    totals.unique_agents = count_present(conn, "agent_id", agents, &range)?;
                    totals.unique_consumers =
                        count_present(conn, "consumer_id", consumers, &range)?;
                    totals
                }
                None => grouped::summary(conn, &range)?,
            };
            totals.group = Some(here);
            out.push(totals);
        } else {
            out.extend(read::aggregate_rows(
                conn,
                GroupBy::Time(unit),
                tz_name,
                &range,
            )?);
        }
        if filters.end_us.is_some_and(|e| end > e) {
            break;
        }
        cursor = Some(end);
    }
    Ok(out)
}
