//! Reads answered by the grouped totals (`usage_daily` and `usage_rollup`,
//! kept by `super::coarse` and `super::rollup`): the whole UTC days of a
//! range come from the daily rows, its other whole hours from the hourly
//! rows, the partial hours at the edges from the events, both in one shape and summed
//! by one query, so that totals and distinct counts are those of the events.

use super::read::{self, Aggregate};
use super::rollup;
use crate::error::CoreResult;
use crate::ledger::buckets::GroupBy;
use crate::ledger::event::{MAX_TIMESTAMP_US, MIN_TIMESTAMP_US};
use crate::ledger::filters::Filters;
use crate::ledger::presence_read::By;
pub(super) use crate::ledger::rollup_plan::Keys;
use crate::ledger::rollup_plan::{self, Plan};
use hashbrown::{HashMap, HashSet};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

/// The counted columns, after the key columns, in both parts of `source`.
const COUNTED: &str = "tokens_in, tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, \
     api_calls, units, cost_nanos";

/// Sums over `source` rows (as `read`'s totals over events), then the
/// distinct counts.
pub(super) const TOTALS: &str = "COALESCE(SUM(events), 0), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), \
     COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0), COALESCE(SUM(duration_ms), 0), \
     COALESCE(SUM(api_calls), 0), COALESCE(SUM(units), 0), SUM(cost_nanos), COALESCE(SUM(unpriced_events), 0)";

/// The plan of `filters`' range, if the grouped totals answer the filters.
pub(super) fn plan_of(filters: &Filters) -> Option<Plan> {
    if !rollup_plan::answers(filters) {
        return None;
    }
    let start = filters.start_us.unwrap_or(MIN_TIMESTAMP_US);
    let end = filters.end_us.unwrap_or(MAX_TIMESTAMP_US);
    Some(rollup_plan::plan_with_days(start, end))
}

/// `key = ?` for each filtered key column (every filter but time and task).
fn key_terms(filters: &Filters, params: &mut Vec<Value>) -> Vec<String> {
    let keys = Filters {
        task_id: None,
        start_us: None,
        end_us: None,
        ..filters.clone()
    };
    let (clause, values) = keys.where_clause();
    params.extend(values);
    clause
        .strip_prefix("WHERE ")
        .map(|terms| vec![terms.to_string()])
        .unwrap_or_default()
}

/// Rows of one shape — `ts, namespace, agent_id, consumer_id, model,
/// action, events, …counted, unpriced_events` — from the totals of the
/// planned hours and from the events of the rest.
pub(super) fn source(filters: &Filters, plan: &Plan, keys: Keys) -> (String, Vec<Value>) {
    let mut params = Vec::new();
    let mut parts = Vec::new();
    let mut part = |table: &str,
                    time: &str,
                    ranges: &[(i64, i64)],
                    upper: &str,
                    columns: &str,
                    params: &mut Vec<Value>| {
        // One part per range: ranges joined by OR make SQLite gather the
        // rows' keys in a set first (a multi-index OR), twice the cost.
        for &(a, b) in ranges {
            let mut terms = key_terms(filters, params);
            params.push(Value::Integer(a));
            params.push(Value::Integer(b));
            terms.push(format!("{time} >= ? AND {time} {upper} ?"));
            parts.push(format!(
                "SELECT {columns} FROM {table} WHERE {}",
                terms.join(" AND ")
            ));
        }
    };
    let pairs = keys.reads_pairs(filters);
    let (daily, hourly, model_action) = if pairs {
        (
            "usage_daily_pair",
            "usage_hourly_pair",
            "NULL AS model, NULL AS action",
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
             events AS events, {COUNTED}, unpriced_events AS unpriced_events"
        );
        part(table, time, ranges, "<", &columns, &mut params);
    }
    part(
        "usage_events",
        "ts",
        &plan.events,
        "<=",
        &format!(
            "ts, namespace, agent_id, consumer_id, model, action, 1 AS events, {COUNTED}, \
             cost_nanos IS NULL AS unpriced_events"
        ),
        &mut params,
    );
    (parts.join(" UNION ALL "), params)
}

/// Totals of `filters` without the distinct counts: from the hourly totals
/// for filters on namespace and time, from the grouped totals for other
/// filters they keep, else from the events.
pub fn totals_without_distinct(conn: &Connection, filters: &Filters) -> CoreResult<Aggregate> {
    if let Some(totals) = rollup::totals(conn, filters)? {
        return Ok(totals);
    }
    match plan_of(filters) {
        Some(plan) => summed(conn, filters, &plan, "0, 0"),
        None => read::summary_without_distinct(conn, filters),
    }
}

/// Totals with distinct agents and consumers counted over the same rows.
pub fn summary(conn: &Connection, filters: &Filters) -> CoreResult<Aggregate> {
    match plan_of(filters) {
        Some(plan) => summed(
            conn,
            filters,
            &plan,
            "COUNT(DISTINCT agent_id), COUNT(DISTINCT consumer_id)",
        ),
        None => read::summary(conn, filters),
    }
}

fn summed(
    conn: &Connection,
    filters: &Filters,
    plan: &Plan,
    distinct: &str,
) -> CoreResult<Aggregate> {
    let (source, params) = source(filters, plan, Keys::Pairs);
    let sql = format!("SELECT {TOTALS}, {distinct} FROM ({source})");
    read::totals_query(&sql, |sql| {
        conn.prepare_cached(sql)?
            .query_row(params_from_iter(params.iter()), |row| {
                read::aggregate_from_row(row, Some("all".into()), 0)
            })
    })
}

/// Totals per agent, consumer, model, action or namespace (keys in byte
/// order, no value first, as the query over the events orders them).
pub fn aggregate_by_key(
    conn: &Connection,
    group_by: GroupBy,
    tz: &str,
    filters: &Filters,
) -> CoreResult<Vec<Aggregate>> {
    let Some(plan) = plan_of(filters).filter(|_| !matches!(group_by, GroupBy::Time(_))) else {
        return read::aggregate_rows(conn, group_by, tz, filters);
    };
    if group_by == GroupBy::Model && crate::ledger::presence_read::answers(filters) {
        if let Some(found) = super::calendar::aggregate(conn, By::Model, filters)? {
            return Ok(found);
        }
        return super::models::aggregate_by_model(conn, filters, &plan);
    }
    Ok(grouped_in_rust(conn, group_by.sql(), filters, &plan)?)
}

/// Sums `source` rows per `key` column here rather than in SQL: the rows
/// come in the tables' order, and grouping and counting distinct values in
/// one hash pass costs a fraction of SQLite's sort per `GROUP BY` and
/// `COUNT(DISTINCT …)`. Sums saturate at 2**63 - 1 as every total does.
fn grouped_in_rust(
    conn: &Connection,
    key: &str,
    filters: &Filters,
    plan: &Plan,
) -> rusqlite::Result<Vec<Aggregate>> {
    struct Group {
        totals: Aggregate,
        agents: HashSet<String>,
        consumers: HashSet<String>,
    }
    let keys = match key {
        "model" | "action" => Keys::All,
        _ => Keys::Pairs,
    };
    let (source, params) = source(filters, plan, keys);
    let sql = format!(
        "SELECT {key}, agent_id, consumer_id, events, {COUNTED}, unpriced_events, 0, 0 \
         FROM ({source})"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(params.iter()))?;
    let mut groups: HashMap<String, Group> = HashMap::new();
    let mut no_value: Option<Group> = None;
    let new_group = |value: Option<&str>| Group {
        totals: Aggregate {
            group: value.map(str::to_owned),
            ..Aggregate::default()
        },
        agents: HashSet::new(),
        consumers: HashSet::new(),
    };
    while let Some(row) = rows.next()? {
        let part = read::aggregate_from_row(row, None, 3)?;
        // Looked up by `&str`: a key is allocated once per group, not per row.
        let group = match row.get_ref(0)?.as_str_or_null()? {
            None => no_value.get_or_insert_with(|| new_group(None)),
            Some(value) => groups
                .entry_ref(value)
                .or_insert_with(|| new_group(Some(value))),
        };
        rollup::add(&mut group.totals, &part);
        for (set, i) in [(&mut group.agents, 1), (&mut group.consumers, 2)] {
            let value = row.get_ref(i)?.as_str()?;
            if !set.contains(value) {
                set.insert(value.to_owned());
            }
        }
    }
    let mut out: Vec<Aggregate> = no_value
        .into_iter()
        .chain(groups.into_values())
        .map(|g| Aggregate {
            unique_agents: g.agents.len() as u64,
            unique_consumers: g.consumers.len() as u64,
            ..g.totals
        })
        .collect();
    // `None` first, then by bytes (a `str`'s order is its bytes' order).
    out.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(out)
}

/// Distinct agents or consumers with their event counts.
pub fn distinct(
    conn: &Connection,
    column: &str,
    filters: &Filters,
) -> CoreResult<Vec<(String, u64)>> {
    let column = match column {
        "agent_id" | "consumer_id" => column,
        _ => return Ok(Vec::new()),
    };
    let Some(plan) = plan_of(filters) else {
        return read::distinct(conn, column, filters);
    };
    Ok(grouped_in_rust(conn, column, filters, &plan)?
        .into_iter()
        .filter_map(|g| Some((g.group?, g.events)))
        .collect())
}
