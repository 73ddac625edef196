//! Calendar buckets for filters on namespace, model and time only — the
//! dashboard's charts, in any zone — from the totals per hour × namespace ×
//! model (`usage_hourly_model`, a few rows an hour) and the events of the
//! partial hours at each bucket's edges, summed per bucket in one query.
//! Distinct agents and consumers per bucket are counted by probing the
//! `(agent_id, ts)` and `(consumer_id, ts)` indexes once per known value
//! and bucket, in a second query, when the ledger holds few enough values.
//! Anything else (other filters, many buckets or values, a clock change
//! inside a bucket in an unusual place) is left to `read::aggregate`.

use super::read::{refs, Param};
use super::writer::{saturate, COUNTERS};
use crate::error::CoreResult;
use crate::ledger::buckets::{bucket_bounds, label, GroupBy, TimeUnit};
use crate::ledger::event::{MAX_TIMESTAMP_US, MIN_TIMESTAMP_US};
use crate::ledger::filters::Filters;
use crate::ledger::rollup_plan;
use crate::ledger::sqlite::Aggregate;
use chrono_tz::Tz;
use deadpool_postgres::GenericClient;

/// Past this many buckets the grouped read over the totals is cheaper.
const MAX_BUCKETS: usize = 1_000;

/// Most distinct agents (or consumers) probed per bucket.
const PROBE_LIMIT: i64 = 256;

/// `read::aggregate`, through the per-model hours when the filters allow.
pub async fn aggregate(
    c: &impl GenericClient,
    s: &str,
    group_by: GroupBy,
    tz_name: &str,
    filters: &Filters,
) -> CoreResult<Vec<Aggregate>> {
    if let GroupBy::Time(unit) = group_by {
        let tz = crate::ledger::buckets::parse_tz(tz_name)?;
        if let Some(buckets) = by_time(c, s, unit, tz, filters).await? {
            return Ok(buckets);
        }
    }
    super::read::aggregate(c, s, group_by, tz_name, filters).await
}

/// Whether only the namespace, the model and the time are filtered.
fn answers(filters: &Filters) -> bool {
    let kept = Filters {
        namespace: filters.namespace.clone(),
        model: filters.model.clone(),
        start_us: filters.start_us,
        end_us: filters.end_us,
        ..Filters::default()
    };
    kept == *filters && rollup_plan::answers(filters)
}

/// `key = $n` for the namespace and model filters, on `alias`. Written as
/// `(key = $n) IS TRUE` (the same for these NOT NULL columns), no index
/// serves them: a probe then seeks the `(agent_id, ts)` index it is meant
/// for, not the `(model, ts)` one scanned until the agent turns up.
fn key_terms(filters: &Filters, alias: &str, params: &mut Vec<Param>) -> String {
    let mut terms = String::new();
    for (column, value) in [("namespace", &filters.namespace), ("model", &filters.model)] {
        if let Some(v) = value {
            params.push(Box::new(v.clone()));
            terms.push_str(&format!(
                " AND ({alias}.{column} = ${}) IS TRUE",
                params.len()
            ));
        }
    }
    terms
}

/// The buckets from the first to the last matching event, as inclusive UTC
/// ranges clipped to the filters, with their labels; `None` when a bucket's
/// ends carry different labels or there are too many.
fn buckets(
    first: i64,
    last: i64,
    unit: TimeUnit,
    tz: Tz,
    filters: &Filters,
) -> Option<Vec<(i64, i64, String)>> {
    let (lower, upper) = (
        filters.start_us.unwrap_or(MIN_TIMESTAMP_US),
        filters.end_us.unwrap_or(MAX_TIMESTAMP_US),
    );
    let mut out = Vec::new();
    let mut ts = first;
    let mut cursor: Option<i64> = None;
    while ts <= last {
        if out.len() >= MAX_BUCKETS {
            return None;
        }
        let here = label(ts, unit, tz);
        let (start, end) = bucket_bounds(ts, unit, tz).filter(|&(a, b)| a <= ts && ts < b)?;
        // Never reach back into a bucket already counted.
        let start = cursor.map_or(start, |c| start.max(c));
        if label(start, unit, tz) != here || label(end - 1, unit, tz) != here {
            return None;
        }
        out.push((start.max(lower), (end - 1).min(upper), here));
        cursor = Some(end);
        ts = end;
    }
    Some(out)
}

async fn by_time(
    c: &impl GenericClient,
    s: &str,
    unit: TimeUnit,
    tz: Tz,
    filters: &Filters,
) -> CoreResult<Option<Vec<Aggregate>>> {
    if !answers(filters) {
        return Ok(None);
    }
    let mut params: Vec<Param> = Vec::new();
    let clause = super::read::where_clause(filters, &mut params);
    let row = c
        .query_one(
            &format!("SELECT MIN(ts), MAX(ts) FROM {s}.usage_events {clause}"),
            &refs(&params),
        )
        .await?;
    let (Some(first), Some(last)) = (row.get::<_, Option<i64>>(0), row.get(1)) else {
        return Ok(Some(Vec::new()));
    };
    let Some(buckets) = buckets(first, last, unit, tz, filters) else {
        return Ok(None);
    };
    let (agents, consumers) = (
        known_values(c, s, "agent_id", filters).await?,
        known_values(c, s, "consumer_id", filters).await?,
    );
    let (Some(agents), Some(consumers)) = (agents, consumers) else {
        return Ok(None);
    };
    let mut totals = totals(c, s, filters, &buckets).await?;
    count_distinct(c, s, filters, &buckets, &agents, &consumers, &mut totals).await?;
    Ok(Some(totals))
}

/// A bucket's index and a `[lo, hi)` range of its hours, or `[lo, hi]` of its events.
type Piece = (i32, i64, i64);

/// Each bucket holding events, with its totals (no distinct counts yet).
/// `OFFSET 0` keeps each piece a range scan of its own (here and in the
/// probes): joined as a whole, the planner would scan every event once per
/// piece, or hash a bucket's events to probe them.
async fn totals(
    c: &impl GenericClient,
    s: &str,
    filters: &Filters,
    buckets: &[(i64, i64, String)],
) -> CoreResult<Vec<Aggregate>> {
    let (mut hours, mut events): (Vec<Piece>, Vec<Piece>) = (Vec::new(), Vec::new());
    for (i, (start, end, _)) in buckets.iter().enumerate() {
        let Some(plan) = rollup_plan::plan(*start, *end, None) else {
            continue;
        };
        hours.extend(plan.hours.iter().map(|&(a, b)| (i as i32, a, b)));
        events.extend(plan.events.iter().map(|&(a, b)| (i as i32, a, b)));
    }
    let columns = |v: &[Piece]| -> [Param; 3] {
        [
            Box::new(v.iter().map(|p| p.0).collect::<Vec<i32>>()),
            Box::new(v.iter().map(|p| p.1).collect::<Vec<i64>>()),
            Box::new(v.iter().map(|p| p.2).collect::<Vec<i64>>()),
        ]
    };
    let mut params: Vec<Param> = Vec::new();
    params.extend(columns(&hours));
    let hour_keys = key_terms(filters, "m", &mut params);
    params.extend(columns(&events));
    let n = params.len();
    let event_keys = key_terms(filters, "e", &mut params);
    let counters = |alias: &str| -> String {
        COUNTERS
            .iter()
            .map(|c| format!("{alias}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut sums = vec!["SUM(events)::int8".to_string()];
    sums.extend(COUNTERS.iter().map(|c| saturate(&format!("SUM({c})"))));
    sums.push(saturate("SUM(cost_nanos)"));
    sums.push("SUM(unpriced_events)::int8".into());
    let sql = format!(
        "SELECT i, {sums} FROM ( \
           SELECT p.i, m.events, {hour_counters}, m.cost_nanos, m.unpriced_events \
           FROM unnest($1::int4[], $2::int8[], $3::int8[]) AS p(i, lo, hi) \
           CROSS JOIN LATERAL (SELECT * FROM {s}.usage_hourly_model m \
               WHERE m.hour >= p.lo AND m.hour < p.hi{hour_keys} OFFSET 0) m \
           UNION ALL \
           SELECT p.i, 1::int8, {event_counters}, e.cost_nanos, (e.cost_nanos IS NULL)::int4::int8 \
           FROM unnest(${a}::int4[], ${b}::int8[], ${n}::int8[]) AS p(i, lo, hi) \
           CROSS JOIN LATERAL (SELECT * FROM {s}.usage_events e \
               WHERE e.ts >= p.lo AND e.ts <= p.hi{event_keys} OFFSET 0) e \
         ) x GROUP BY i HAVING SUM(events) > 0 ORDER BY i",
        sums = sums.join(", "),
        hour_counters = counters("m"),
        event_counters = counters("e"),
        a = n - 2,
        b = n - 1,
    );
    let rows = c.query(&sql, &refs(&params)).await?;
    let n = |r: &tokio_postgres::Row, i: usize| r.get::<_, i64>(i).max(0) as u64;
    Ok(rows
        .iter()
        .map(|r| Aggregate {
            group: Some(buckets[r.get::<_, i32>(0) as usize].2.clone()),
            events: n(r, 1),
            tokens_in: n(r, 2),
            tokens_out: n(r, 3),
            cache_read_tokens: n(r, 4),
            cache_write_tokens: n(r, 5),
            duration_ms: n(r, 6),
            api_calls: n(r, 7),
            units: n(r, 8),
            cost_nanos: r.get::<_, Option<i64>>(9).map(|c| c.max(0) as u64),
            unpriced_events: n(r, 10),
            // Bucket index, until the distinct counts replace it.
            unique_agents: r.get::<_, i32>(0) as u64,
            unique_consumers: 0,
        })
        .collect())
}

/// Every value of `column` among the namespace's events (whatever the
/// other filters), by skipping from one to the next in its index; `None`
/// past `PROBE_LIMIT`.
async fn known_values(
    c: &impl GenericClient,
    s: &str,
    column: &str,
    filters: &Filters,
) -> CoreResult<Option<Vec<String>>> {
    let mut params: Vec<Param> = Vec::new();
    let keys = Filters {
        namespace: filters.namespace.clone(),
        ..Filters::default()
    };
    let ns = key_terms(&keys, "e", &mut params);
    params.push(Box::new(PROBE_LIMIT + 1));
    let limit = params.len();
    let sql = format!(
        "WITH RECURSIVE v(x) AS ( \
           SELECT (SELECT MIN(e.{column}) FROM {s}.usage_events e WHERE TRUE{ns}) \
           UNION ALL \
           SELECT (SELECT MIN(e.{column}) FROM {s}.usage_events e WHERE e.{column} > v.x{ns}) \
           FROM v WHERE v.x IS NOT NULL \
         ) SELECT x FROM v WHERE x IS NOT NULL LIMIT ${limit}"
    );
    let values: Vec<String> = c
        .query(&sql, &refs(&params))
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((values.len() as i64 <= PROBE_LIMIT).then_some(values))
}

/// Fills each bucket's distinct agents and consumers by index probes.
async fn count_distinct(
    c: &impl GenericClient,
    s: &str,
    filters: &Filters,
    buckets: &[(i64, i64, String)],
    agents: &[String],
    consumers: &[String],
    totals: &mut [Aggregate],
) -> CoreResult<()> {
    if totals.is_empty() {
        return Ok(());
    }
    let held: Vec<usize> = totals.iter().map(|t| t.unique_agents as usize).collect();
    let mut params: Vec<Param> = vec![
        Box::new(held.iter().map(|&i| buckets[i].0).collect::<Vec<i64>>()),
        Box::new(held.iter().map(|&i| buckets[i].1).collect::<Vec<i64>>()),
        Box::new(agents.to_vec()),
        Box::new(consumers.to_vec()),
    ];
    let keys = key_terms(filters, "e", &mut params);
    let probe = |column: &str, values: usize| {
        format!(
            "(SELECT COUNT(*) FROM unnest(${values}::text[]) AS v(x) WHERE EXISTS ( \
               SELECT 1 FROM {s}.usage_events e \
               WHERE e.{column} = v.x AND e.ts >= p.lo AND e.ts <= p.hi{keys} OFFSET 0))::int8"
        )
    };
    let sql = format!(
        "SELECT {}, {} FROM unnest($1::int8[], $2::int8[]) WITH ORDINALITY AS p(lo, hi, n) ORDER BY p.n",
        probe("agent_id", 3),
        probe("consumer_id", 4),
    );
    let rows = c.query(&sql, &refs(&params)).await?;
    for (t, r) in totals.iter_mut().zip(&rows) {
        t.unique_agents = r.get::<_, i64>(0) as u64;
        t.unique_consumers = r.get::<_, i64>(1) as u64;
    }
    Ok(())
}
