//! Totals per model for filters on namespace, model and time: the sums of
//! the whole hours from the per-model hours (`usage_hourly_model`, a few
//! rows an hour) and of the partial hours at the edges from the events;
//! each model's distinct agents and consumers from the grouped rows of the
//! range (`grouped::source`: whole days, whole hours, the edges' events),
//! of which only the model, agent and consumer are read.

use super::grouped;
use super::read::{self, Aggregate};
use super::rollup;
use crate::error::CoreResult;
use crate::ledger::event::{MAX_TIMESTAMP_US, MIN_TIMESTAMP_US};
use crate::ledger::filters::Filters;
use crate::ledger::rollup_plan::{self, Plan};
use hashbrown::{HashMap, HashSet};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

/// A model's totals and the agents and consumers seen with it.
#[derive(Default)]
struct Model {
    totals: Aggregate,
    agents: HashSet<String>,
    consumers: HashSet<String>,
}

/// Totals per model (no model first, then by bytes), as the query over the
/// events gives them; `plan` is `grouped::plan_of(filters)`.
pub fn aggregate_by_model(
    conn: &Connection,
    filters: &Filters,
    plan: &Plan,
) -> CoreResult<Vec<Aggregate>> {
    // `''` is how the per-model hours store no model (a model is never empty).
    let mut models: HashMap<String, Model> = HashMap::new();
    let start = filters.start_us.unwrap_or(MIN_TIMESTAMP_US);
    let end = filters.end_us.unwrap_or(MAX_TIMESTAMP_US);
    let (first, past) = rollup_plan::whole_hours(start, end);
    if first < past {
        let mut terms = vec!["hour >= ?".to_string(), "hour < ?".to_string()];
        let mut params = vec![Value::Integer(first), Value::Integer(past)];
        super::calendar::key_terms(filters, &mut terms, &mut params);
        let sql = format!(
            "SELECT model, {}, 0, 0 FROM usage_hourly_model WHERE {} GROUP BY model",
            grouped::TOTALS,
            terms.join(" AND ")
        );
        add_rows(conn, &sql, &params, &mut models)?;
    }
    // The partial hours at either end (or all of a range without a whole
    // hour), from the events.
    let edges = if first < past {
        vec![(start, first - 1), (past, end)]
    } else {
        vec![(start, end)]
    };
    for (a, b) in edges.into_iter().filter(|(a, b)| a <= b) {
        let edge = Filters {
            start_us: Some(a),
            end_us: Some(b),
            ..filters.clone()
        };
        let (clause, params) = edge.where_clause();
        let sql = format!(
            "SELECT COALESCE(model, ''), {} FROM usage_events {clause} GROUP BY 1",
            read::TOTALS_WITHOUT_DISTINCT
        );
        add_rows(conn, &sql, &params, &mut models)?;
    }
    add_agents_and_consumers(conn, filters, plan, &mut models)?;
    let mut out: Vec<(String, Model)> = models
        .into_iter()
        .filter(|(_, m)| m.totals.events > 0)
        .collect();
    // `''` (no model) first, then by bytes (a `str`'s order is its bytes').
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out
        .into_iter()
        .map(|(name, m)| Aggregate {
            group: Some(name).filter(|n| !n.is_empty()),
            unique_agents: m.agents.len() as u64,
            unique_consumers: m.consumers.len() as u64,
            ..m.totals
        })
        .collect())
}

/// Adds to each model the agents and consumers of its grouped rows.
fn add_agents_and_consumers(
    conn: &Connection,
    filters: &Filters,
    plan: &Plan,
    models: &mut HashMap<String, Model>,
) -> rusqlite::Result<()> {
    let (source, params) = grouped::source(filters, plan, grouped::Keys::All);
    let sql = format!("SELECT COALESCE(model, ''), agent_id, consumer_id FROM ({source})");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(params.iter()))?;
    while let Some(row) = rows.next()? {
        let Some(model) = models.get_mut(row.get_ref(0)?.as_str()?) else {
            continue;
        };
        for (set, i) in [(&mut model.agents, 1), (&mut model.consumers, 2)] {
            let value = row.get_ref(i)?.as_str()?;
            if !set.contains(value) {
                set.insert(value.to_owned());
            }
        }
    }
    Ok(())
}

/// Adds rows `(model, totals…, 0, 0)` of `sql` to `models`.
fn add_rows(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    models: &mut HashMap<String, Model>,
) -> CoreResult<()> {
    let rows = read::totals_query(sql, |sql| {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params_from_iter(params.iter()), |row| {
            Ok((
                row.get::<_, String>(0)?,
                read::aggregate_from_row(row, None, 1)?,
            ))
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })?;
    for (name, totals) in rows {
        rollup::add(&mut models.entry(name).or_default().totals, &totals);
    }
    Ok(())
}
