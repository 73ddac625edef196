//! Calendar buckets and totals per model read from the per-model hours
//! (`usage_hourly_model`, kept by `super::coarse`) and the presence masks
//! (`usage_presence`, `super::presence`), as `presence_read` sums them: the
//! whole hours of the range from the tables, a few rows an hour, and the
//! partial hours at the edges and the hours a bucket edge cuts from the
//! events. Reads the tables cannot answer (filters on agent, consumer,
//! action or task, too many hours, offsets off the quarter-hour) return
//! `None` and are left to `super::timeline` and `super::models`.

use super::grouped;
use super::presence::AGENT;
use super::read::{self, Aggregate};
use crate::error::CoreResult;
use crate::ledger::buckets::{TimeUnit, SLOT_US};
use crate::ledger::event::{MAX_TIMESTAMP_US, MIN_TIMESTAMP_US};
use crate::ledger::filters::Filters;
use crate::ledger::presence_read::{answers, By, PresenceRead};
use crate::ledger::rollup_plan::{self, Plan, HOUR_US, MAX_SCANNED_HOURS};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

/// Totals per calendar bucket (oldest first) or per model (no model first,
/// then by bytes) of the events `filters` select, or `None` when the
/// tables cannot answer.
pub fn aggregate(
    conn: &Connection,
    by: By,
    filters: &Filters,
) -> CoreResult<Option<Vec<Aggregate>>> {
    if !answers(filters) {
        return Ok(None);
    }
    let Some(plan) = plan_of(conn, by, filters)? else {
        return Ok(None);
    };
    let Some(mut presence) = PresenceRead::new(by, &plan) else {
        return Ok(None);
    };
    let key = presence.hourly_key();
    for &(first, past) in &plan.hours {
        let mut params = vec![Value::Integer(first), Value::Integer(past)];
        let mut terms = vec!["hour >= ?".to_string(), "hour < ?".to_string()];
        key_terms(filters, &mut terms, &mut params);
        let sql = format!(
            "SELECT {key}, {}, 0, 0 FROM usage_hourly_model WHERE {} GROUP BY 1",
            grouped::TOTALS,
            terms.join(" AND ")
        );
        // Collected first: a query summed again past 2**63 (`totals_query`)
        // must not add its first rows twice.
        let rows = read::totals_query(&sql, |sql| {
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params_from_iter(params.iter()), |row| {
                Ok((
                    row.get::<_, Value>(0)?,
                    read::aggregate_from_row(row, None, 1)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        for (key, totals) in rows {
            match (by, key) {
                (By::Bucket(..), Value::Integer(hour)) => presence.add_hour(hour, &totals),
                (By::Model, Value::Text(model)) => presence.add_model(&model, &totals),
                _ => {}
            }
        }
    }

    let (first_day, past_day) = presence.day_range;
    let mut params = vec![Value::Integer(first_day), Value::Integer(past_day)];
    let mut terms = vec!["day >= ?".to_string(), "day < ?".to_string()];
    key_terms(filters, &mut terms, &mut params);
    let sql = format!(
        "SELECT day, kind, id, hours, model FROM usage_presence WHERE {}",
        terms.join(" AND ")
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(params.iter()))?;
    while let Some(row) = rows.next()? {
        presence.add_presence(
            row.get(0)?,
            row.get::<_, i64>(1)? == AGENT,
            row.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?,
            row.get::<_, i64>(3)? as u32,
            row.get_ref(4)?.as_str().map_err(rusqlite::Error::from)?,
        );
    }

    let slot = format!("ts - (((ts % {SLOT_US}) + {SLOT_US}) % {SLOT_US})");
    let key = presence.event_key(&slot);
    for &(start, end) in &plan.events {
        let span = Filters {
            start_us: Some(start),
            end_us: Some(end),
            ..filters.clone()
        };
        let (clause, params) = span.where_clause();
        let sql = format!(
            "SELECT {key}, agent_id, consumer_id, MIN(ts), {} FROM usage_events {clause} \
             GROUP BY 1, 2, 3",
            read::TOTALS_WITHOUT_DISTINCT
        );
        let rows = read::totals_query(&sql, |sql| {
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params_from_iter(params.iter()), |row| {
                Ok(EventGroup {
                    model: match by {
                        By::Model => Some(row.get(0)?),
                        By::Bucket(..) => None,
                    },
                    agent: row.get(1)?,
                    consumer: row.get(2)?,
                    first: row.get(3)?,
                    totals: read::aggregate_from_row(row, None, 4)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        for g in rows {
            presence.add_events(
                g.model.as_deref(),
                g.first,
                &g.totals,
                &g.agent,
                &g.consumer,
            );
        }
    }
    Ok(Some(presence.finish()))
}

/// The events of one slot (or model), agent and consumer.
struct EventGroup {
    model: Option<String>,
    agent: String,
    consumer: String,
    first: i64,
    totals: Aggregate,
}

/// `namespace = ?` and `model = ?` for the filters kept (possibly none).
pub(super) fn key_terms(filters: &Filters, terms: &mut Vec<String>, params: &mut Vec<Value>) {
    for (column, value) in [("namespace", &filters.namespace), ("model", &filters.model)] {
        if let Some(v) = value {
            terms.push(format!("{column} = ?"));
            params.push(Value::Text(v.clone()));
        }
    }
}

/// The range split with the buckets of `by` (as UTC hours for models); an
/// unbounded end is first narrowed to the hour of the oldest (newest)
/// matching event, so that whole hours stay whole. `None` when there are
/// no such events, or too many hours or pieces.
fn plan_of(conn: &Connection, by: By, filters: &Filters) -> CoreResult<Option<Plan>> {
    let mut start = filters.start_us.unwrap_or(MIN_TIMESTAMP_US);
    let mut end = filters.end_us.unwrap_or(MAX_TIMESTAMP_US);
    let (clause, params) = filters.where_clause();
    for (bound, edge, unbounded) in [
        ("MIN", &mut start, filters.start_us.is_none()),
        ("MAX", &mut end, filters.end_us.is_none()),
    ] {
        if !unbounded {
            continue;
        }
        let found: Option<i64> = conn
            .prepare_cached(&format!("SELECT {bound}(ts) FROM usage_events {clause}"))?
            .query_row(params_from_iter(params.iter()), |r| r.get(0))?;
        let Some(found) = found else {
            return Ok(None);
        };
        *edge = match bound {
            "MIN" => rollup_plan::hour_of(found),
            _ => rollup_plan::hour_of(found) + HOUR_US - 1,
        };
    }
    let (first, past) = rollup_plan::whole_hours(start, end);
    if (past - first) / HOUR_US > MAX_SCANNED_HOURS {
        return Ok(None);
    }
    let buckets = match by {
        By::Bucket(unit, tz) => Some((unit, tz)),
        By::Model => Some((TimeUnit::Hour, chrono_tz::Tz::UTC)),
    };
    Ok(rollup_plan::plan(start, end, buckets))
}
