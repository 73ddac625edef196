//! Totals kept in step with `usage_events` inside the same transactions:
//! per namespace × hour (`usage_hourly`: a summary over a whole ledger, or
//! any range of whole hours, reads a few thousand small rows), and per
//! hour × namespace × agent × consumer × model × action (`usage_rollup`:
//! grouped totals and filters on those columns, read by `super::grouped`).
//!
//! The coarser levels (`super::coarse`: per UTC day × the same keys, and per
//! hour × namespace × model; `super::pairs`: per hour and per UTC day ×
//! namespace × agent × consumer; `super::presence`: the hours each agent
//! and consumer was seen in per UTC day × namespace × model) are kept in
//! the same transactions, all summed per transaction here first.
//!
//! Inserts add to the rows of each new event (one upsert per row touched by
//! a transaction); a purge deletes the hours (and days) it emptied and
//! recounts the one hour (and day) it cut through; a reprice recounts the
//! hours and days it changed.

use super::read::{self, Aggregate};
use crate::error::CoreResult;
use crate::ledger::event::UsageEvent;
use crate::ledger::filters::Filters;
use hashbrown::{Equivalent, HashMap};
use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};
use std::hash::Hash;

pub use crate::ledger::rollup_plan::{day_of, hour_of, DAY_US, HOUR_US};

/// An hour's totals from its events (exact up to 2**53, saturating beyond),
/// in the column order of `usage_hourly` after `namespace, hour`.
macro_rules! hourly_sums {
    () => {
        "COUNT(*), CAST(TOTAL(tokens_in) AS INTEGER), CAST(TOTAL(tokens_out) AS INTEGER), \
         CAST(TOTAL(cache_read_tokens) AS INTEGER), CAST(TOTAL(cache_write_tokens) AS INTEGER), \
         CAST(TOTAL(duration_ms) AS INTEGER), CAST(TOTAL(api_calls) AS INTEGER), \
         CAST(TOTAL(units) AS INTEGER), CAST(SUM(cost_nanos * 1.0) AS INTEGER), \
         COUNT(*) - COUNT(cost_nanos)"
    };
}

/// The table, and its contents for a ledger created before it existed.
pub const MIGRATION: &str = concat!(
    r#"
CREATE TABLE usage_hourly (
    namespace          TEXT    NOT NULL,
    hour               INTEGER NOT NULL,
    events             INTEGER NOT NULL,
    tokens_in          INTEGER NOT NULL,
    tokens_out         INTEGER NOT NULL,
    cache_read_tokens  INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    duration_ms        INTEGER NOT NULL,
    api_calls          INTEGER NOT NULL,
    units              INTEGER NOT NULL,
    cost_nanos         INTEGER,
    unpriced_events    INTEGER NOT NULL,
    PRIMARY KEY (namespace, hour)
) WITHOUT ROWID;
INSERT INTO usage_hourly
SELECT namespace, ts - (((ts % 3600000000) + 3600000000) % 3600000000) AS h, "#,
    hourly_sums!(),
    " FROM usage_events GROUP BY namespace, h;"
);

/// The grouped totals: no model is stored as `''` (a model is never empty),
/// since a key column cannot be NULL.
pub const GROUPED_MIGRATION: &str = r#"
CREATE TABLE usage_rollup (
    hour               INTEGER NOT NULL,
    namespace          TEXT    NOT NULL,
    agent_id           TEXT    NOT NULL,
    consumer_id        TEXT    NOT NULL,
    model              TEXT    NOT NULL,
    action             TEXT    NOT NULL,
    events             INTEGER NOT NULL,
    tokens_in          INTEGER NOT NULL,
    tokens_out         INTEGER NOT NULL,
    cache_read_tokens  INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    duration_ms        INTEGER NOT NULL,
    api_calls          INTEGER NOT NULL,
    units              INTEGER NOT NULL,
    cost_nanos         INTEGER,
    unpriced_events    INTEGER NOT NULL,
    PRIMARY KEY (hour, namespace, agent_id, consumer_id, model, action)
) WITHOUT ROWID;
"#;

const GROUP_KEYS: &str = "hour, namespace, agent_id, consumer_id, model, action";

/// The tables kept per hour, recounted hour by hour from the events.
const HOURLY_TABLES: [&str; 4] = [
    "usage_hourly",
    "usage_rollup",
    "usage_hourly_model",
    "usage_hourly_pair",
];

/// `build_upsert_sql`, built once per table and keys: the writer prepares
/// these statements in every transaction, and formatting them cost more
/// than the cache lookup that finds them prepared.
pub(super) fn upsert_sql(table: &str, keys: &str) -> &'static str {
    static BUILT: Mutex<Vec<(String, String, &'static str)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock();
    if let Some((_, _, sql)) = built.iter().find(|(t, k, _)| t == table && k == keys) {
        return sql;
    }
    // At most one string per table of totals, kept for the process's life.
    let sql: &'static str = Box::leak(build_upsert_sql(table, keys).into_boxed_str());
    built.push((table.to_string(), keys.to_string(), sql));
    sql
}

/// Adds to a row, saturating at 2**63 - 1 (one event may count that much).
fn build_upsert_sql(table: &str, keys: &str) -> String {
    let add = |c: &str| {
        format!(
            "CASE WHEN COALESCE({c}, 0) > 9223372036854775807 - excluded.{c} \
             THEN 9223372036854775807 ELSE COALESCE({c}, 0) + excluded.{c} END"
        )
    };
    let sums: Vec<String> = [
        "events",
        "tokens_in",
        "tokens_out",
        "cache_read_tokens",
        "cache_write_tokens",
        "duration_ms",
        "api_calls",
        "units",
        "unpriced_events",
    ]
    .iter()
    .map(|c| format!("{c} = {}", add(c)))
    .collect();
    let key_count = keys.split(',').count();
    let placeholders: Vec<String> = (1..=key_count + 10).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO {table} ({keys}, events, tokens_in, tokens_out, cache_read_tokens, \
         cache_write_tokens, duration_ms, api_calls, units, cost_nanos, unpriced_events) \
         VALUES ({}) ON CONFLICT ({keys}) DO UPDATE SET {}, \
         cost_nanos = CASE WHEN excluded.cost_nanos IS NULL THEN cost_nanos ELSE {} END",
        placeholders.join(", "),
        sums.join(", "),
        add("cost_nanos")
    )
}

/// A row of `usage_rollup` (or `usage_daily`): hour (day), namespace,
/// agent, consumer, model (`''` for none) and action.
pub(super) type GroupKey = (i64, String, String, String, String, String);

/// A row of `usage_hourly_pair` (or `usage_daily_pair`): hour (day),
/// namespace, agent and consumer.
pub(super) type PairKey = (i64, String, String, String);

/// A totals key borrowed from an event: its row is found without
/// allocating, and the key is copied only when the row is new (the writer
/// adds every event to four tables of totals).
trait KeyRef<K>: Hash + Equivalent<K> {
    fn owned(&self) -> K;
}

/// `(namespace, hour)`, hashed as the owned key is.
#[derive(Hash)]
struct HourRef<'a>((&'a str, i64));

impl Equivalent<(String, i64)> for HourRef<'_> {
    fn equivalent(&self, key: &(String, i64)) -> bool {
        self.0 .0 == key.0 && self.0 .1 == key.1
    }
}

impl KeyRef<(String, i64)> for HourRef<'_> {
    fn owned(&self) -> (String, i64) {
        (self.0 .0.to_owned(), self.0 .1)
    }
}

/// `(namespace, model, hour)`.
#[derive(Hash)]
struct ModelRef<'a>((&'a str, &'a str, i64));

impl Equivalent<(String, String, i64)> for ModelRef<'_> {
    fn equivalent(&self, key: &(String, String, i64)) -> bool {
        let (namespace, model, hour) = self.0;
        namespace == key.0 && model == key.1 && hour == key.2
    }
}

impl KeyRef<(String, String, i64)> for ModelRef<'_> {
    fn owned(&self) -> (String, String, i64) {
        let (namespace, model, hour) = self.0;
        (namespace.to_owned(), model.to_owned(), hour)
    }
}

/// A `GroupKey`, borrowed.
#[derive(Hash)]
struct GroupRef<'a>((i64, &'a str, &'a str, &'a str, &'a str, &'a str));

impl Equivalent<GroupKey> for GroupRef<'_> {
    fn equivalent(&self, key: &GroupKey) -> bool {
        let (time, namespace, agent, consumer, model, action) = self.0;
        time == key.0
            && namespace == key.1
            && agent == key.2
            && consumer == key.3
            && model == key.4
            && action == key.5
    }
}

impl KeyRef<GroupKey> for GroupRef<'_> {
    fn owned(&self) -> GroupKey {
        let (time, namespace, agent, consumer, model, action) = self.0;
        (
            time,
            namespace.to_owned(),
            agent.to_owned(),
            consumer.to_owned(),
            model.to_owned(),
            action.to_owned(),
        )
    }
}

/// Adds `one` to the row of `key`.
fn add_at<K: Hash + Eq>(map: &mut HashMap<K, Aggregate>, key: impl KeyRef<K>, one: &Aggregate) {
    match map.get_mut(&key) {
        Some(totals) => add(totals, one),
        None => {
            map.insert(key.owned(), one.clone());
        }
    }
}

/// What one transaction adds, per (namespace, hour), per group and hour,
/// per group and day, per (namespace, model, hour), per agent × consumer
/// and hour or day, and the hours each agent and consumer was seen in.
#[derive(Default)]
pub struct Pending {
    hours: HashMap<(String, i64), Aggregate>,
    groups: HashMap<GroupKey, Aggregate>,
    pub(super) days: HashMap<GroupKey, Aggregate>,
    pub(super) models: HashMap<(String, String, i64), Aggregate>,
    pub(super) pair_hours: HashMap<PairKey, Aggregate>,
    pub(super) pair_days: HashMap<PairKey, Aggregate>,
    pub(super) presence: super::presence::Masks,
}

impl Pending {
    /// Adds an inserted event, with the cost it was stored with.
    pub fn add(&mut self, e: &UsageEvent, cost_nanos: Option<u64>) {
        let hour = hour_of(e.timestamp_us);
        let one = Aggregate {
            events: 1,
            tokens_in: e.tokens_in,
            tokens_out: e.tokens_out,
            cache_read_tokens: e.cache_read_tokens,
            cache_write_tokens: e.cache_write_tokens,
            duration_ms: e.duration_ms,
            api_calls: e.api_calls,
            units: e.units,
            cost_nanos,
            unpriced_events: u64::from(cost_nanos.is_none()),
            ..Aggregate::default()
        };
        let (namespace, model) = (e.namespace.as_str(), e.model.as_deref().unwrap_or(""));
        let group = |time| {
            let (agent, consumer) = (e.agent_id.as_str(), e.consumer_id.as_str());
            GroupRef((time, namespace, agent, consumer, model, e.action.as_str()))
        };
        add_at(&mut self.hours, HourRef((namespace, hour)), &one);
        add_at(&mut self.models, ModelRef((namespace, model, hour)), &one);
        add_at(&mut self.days, group(day_of(hour)), &one);
        add_at(&mut self.groups, group(hour), &one);
    }

    /// Adds one hourly group (`model` is `''` for none) to its rows per
    /// agent × consumer, hour and day, and to the day's presence masks.
    pub(super) fn add_pair(&mut self, group: PairGroup<'_>, totals: &Aggregate) {
        add_pair(
            &mut self.pair_hours,
            &mut self.pair_days,
            &mut self.presence,
            group,
            totals,
        );
    }

    /// Adds the rows per agent × consumer and the presence masks of the
    /// hourly groups gathered (once per group, not per event).
    fn add_pairs_of_groups(&mut self) {
        let Pending {
            groups,
            pair_hours,
            pair_days,
            presence,
            ..
        } = self;
        for ((hour, namespace, agent, consumer, model, _), t) in groups.iter() {
            let group = (
                *hour,
                namespace.as_str(),
                model.as_str(),
                agent.as_str(),
                consumer.as_str(),
            );
            add_pair(pair_hours, pair_days, presence, group, t);
        }
    }

    /// Forgets what was gathered for the levels not in `levels` (those
    /// recounted elsewhere, or whose tables a migration has yet to create).
    fn keep(&mut self, levels: Levels) {
        if !levels.days {
            self.days.clear();
        }
        if !levels.models {
            self.models.clear();
        }
        if !levels.pair_hours {
            self.pair_hours.clear();
        }
        if !levels.pair_days_and_presence {
            self.pair_days.clear();
            self.presence.clear();
        }
    }

    /// Adds what was gathered to the tables (inside the caller's transaction).
    pub fn write(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.write_levels(conn, Levels::ALL)
    }

    /// `write`, with the levels beside the hourly groups (and the hourly
    /// totals) limited to `levels`.
    pub(super) fn write_levels(
        &mut self,
        conn: &Connection,
        levels: Levels,
    ) -> rusqlite::Result<()> {
        if levels.pair_hours || levels.pair_days_and_presence {
            self.add_pairs_of_groups();
        }
        self.keep(levels);
        if !self.hours.is_empty() {
            let mut stmt = conn.prepare_cached(upsert_sql("usage_hourly", "namespace, hour"))?;
            for ((namespace, hour), t) in self.hours.drain() {
                let keys = [Value::Text(namespace), Value::Integer(hour)];
                stmt.execute(params_from_iter(keys.into_iter().chain(sums(&t))))?;
            }
        }
        if !self.models.is_empty() {
            let mut stmt =
                conn.prepare_cached(upsert_sql("usage_hourly_model", "namespace, model, hour"))?;
            for ((namespace, model, hour), t) in self.models.drain() {
                let keys = [
                    Value::Text(namespace),
                    Value::Text(model),
                    Value::Integer(hour),
                ];
                stmt.execute(params_from_iter(keys.into_iter().chain(sums(&t))))?;
            }
        }
        write_groups(conn, "usage_rollup", GROUP_KEYS, &mut self.groups)?;
        write_groups(conn, "usage_daily", super::coarse::DAY_KEYS, &mut self.days)?;
        super::pairs::write(conn, "usage_hourly_pair", &mut self.pair_hours)?;
        super::pairs::write(conn, "usage_daily_pair", &mut self.pair_days)?;
        self.presence.write(conn)
    }
}

/// One hourly group as the pair rows and presence masks see it: hour,
/// namespace, model (`''` for none), agent and consumer.
pub(super) type PairGroup<'a> = (i64, &'a str, &'a str, &'a str, &'a str);

fn add_pair(
    pair_hours: &mut HashMap<PairKey, Aggregate>,
    pair_days: &mut HashMap<PairKey, Aggregate>,
    presence: &mut super::presence::Masks,
    (hour, namespace, model, agent, consumer): PairGroup<'_>,
    totals: &Aggregate,
) {
    presence.see(hour, namespace, model, agent, consumer);
    for (table, time) in [(pair_hours, hour), (pair_days, day_of(hour))] {
        let key = (
            time,
            namespace.to_owned(),
            agent.to_owned(),
            consumer.to_owned(),
        );
        add(table.entry(key).or_default(), totals);
    }
}

/// Which levels a recount or a back-fill writes, beside the hourly groups.
#[derive(Clone, Copy)]
pub(super) struct Levels {
    pub days: bool,
    pub models: bool,
    pub pair_hours: bool,
    pub pair_days_and_presence: bool,
}

impl Levels {
    const ALL: Levels = Levels {
        days: true,
        models: true,
        pair_hours: true,
        pair_days_and_presence: true,
    };
    /// The hourly groups alone (what `fill_grouped` back-fills).
    const NONE: Levels = Levels {
        days: false,
        models: false,
        pair_hours: false,
        pair_days_and_presence: false,
    };
}

/// Adds `groups` to `table` (keyed by `keys`, in `GroupKey` order).
fn write_groups(
    conn: &Connection,
    table: &str,
    keys: &str,
    groups: &mut HashMap<GroupKey, Aggregate>,
) -> rusqlite::Result<()> {
    if groups.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(upsert_sql(table, keys))?;
    for ((time, namespace, agent, consumer, model, action), t) in groups.drain() {
        let keys = [
            Value::Integer(time),
            Value::Text(namespace),
            Value::Text(agent),
            Value::Text(consumer),
            Value::Text(model),
            Value::Text(action),
        ];
        stmt.execute(params_from_iter(keys.into_iter().chain(sums(&t))))?;
    }
    Ok(())
}

/// A row's totals, in the tables' column order after the key.
pub(super) fn sums(t: &Aggregate) -> [Value; 10] {
    let n = |v: u64| Value::Integer(v.min(i64::MAX as u64) as i64);
    [
        n(t.events),
        n(t.tokens_in),
        n(t.tokens_out),
        n(t.cache_read_tokens),
        n(t.cache_write_tokens),
        n(t.duration_ms),
        n(t.api_calls),
        n(t.units),
        t.cost_nanos.map_or(Value::Null, n),
        n(t.unpriced_events),
    ]
}

/// After deleting every event before `cutoff_us`: drops the hours and days
/// that are now empty and recounts the hour and day the cutoff falls in.
pub fn after_purge(conn: &Connection, cutoff_us: i64) -> rusqlite::Result<()> {
    let hour = hour_of(cutoff_us);
    for table in HOURLY_TABLES {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE hour < ?1"))?
            .execute([hour])?;
    }
    for table in super::coarse::DAILY_TABLES {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE day < ?1"))?
            .execute([day_of(hour)])?;
    }
    recount_hours(conn, [hour])
}

/// Recomputes the totals of the given hours from their events, with the
/// writer's exact saturating sums, then the days holding them from the
/// recounted hours.
pub(super) fn recount_hours(
    conn: &Connection,
    hours: impl IntoIterator<Item = i64>,
) -> rusqlite::Result<()> {
    let mut days = hashbrown::HashSet::new();
    for hour in hours {
        for table in HOURLY_TABLES {
            conn.prepare_cached(&format!("DELETE FROM {table} WHERE hour = ?1"))?
                .execute([hour])?;
        }
        let mut pending = Pending::default();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM usage_events WHERE ts >= ?1 AND ts < ?2",
            read::EVENT_COLUMNS
        ))?;
        let mut rows = stmt.query([hour, hour + HOUR_US])?;
        while let Some(row) = rows.next()? {
            let e = read::event_from_row(row)?;
            pending.add(&e, e.cost_nanos);
        }
        // The days are recounted below, once per day.
        let levels = Levels {
            days: false,
            models: true,
            pair_hours: true,
            pair_days_and_presence: false,
        };
        pending.write_levels(conn, levels)?;
        days.insert(day_of(hour));
    }
    for day in days {
        super::coarse::recount_day(conn, day)?;
    }
    Ok(())
}

/// Fills `usage_rollup` from the events of a ledger created before it
/// existed, an hour at a time.
pub(super) fn fill_grouped(conn: &Connection) -> rusqlite::Result<()> {
    let mut pending = Pending::default();
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM usage_events ORDER BY ts",
        read::EVENT_COLUMNS
    ))?;
    let mut rows = stmt.query([])?;
    let mut current = None;
    while let Some(row) = rows.next()? {
        let e = read::event_from_row(row)?;
        let hour = hour_of(e.timestamp_us);
        if current.is_some_and(|c| c != hour) {
            // The other levels are filled by their own migrations.
            pending.hours.clear();
            pending.write_levels(conn, Levels::NONE)?;
        }
        current = Some(hour);
        pending.add(&e, e.cost_nanos);
    }
    pending.hours.clear();
    pending.write_levels(conn, Levels::NONE)
}

/// Totals (without distinct counts) for filters on namespace, model and
/// time only (from `usage_hourly`, or `usage_hourly_model` for a model), or
/// `None` when other filters call for the grouped totals or the events.
pub fn totals(conn: &Connection, filters: &Filters) -> CoreResult<Option<Aggregate>> {
    // The per-model hours (and `usage_hourly`) keep namespace, model and time.
    if !crate::ledger::presence_read::answers(filters) {
        return Ok(None);
    }
    // Whole hours from the table, the partial hours at either end from the events.
    let first = filters
        .start_us
        .map(|s| hour_of(s.saturating_add(HOUR_US - 1)));
    let past = filters.end_us.map(|e| hour_of(e.saturating_add(1)));
    if let (Some(first), Some(past)) = (first, past) {
        if past <= first {
            return Ok(None); // less than an hour: the events are few
        }
    }
    let mut total = whole_hours(conn, filters, first, past)?;
    if let (Some(start), Some(first)) = (filters.start_us, first) {
        if start < first {
            let mut head = filters.clone();
            head.end_us = Some(first - 1);
            add(&mut total, &read::summary_without_distinct(conn, &head)?);
        }
    }
    if let (Some(end), Some(past)) = (filters.end_us, past) {
        if past <= end {
            let mut tail = filters.clone();
            tail.start_us = Some(past);
            add(&mut total, &read::summary_without_distinct(conn, &tail)?);
        }
    }
    Ok(Some(total))
}

fn whole_hours(
    conn: &Connection,
    filters: &Filters,
    first: Option<i64>,
    past: Option<i64>,
) -> CoreResult<Aggregate> {
    let mut terms = Vec::new();
    let mut values = Vec::new();
    if let Some(ns) = &filters.namespace {
        terms.push("namespace = ?");
        values.push(Value::Text(ns.clone()));
    }
    let table = match &filters.model {
        Some(model) => {
            terms.push("model = ?");
            values.push(Value::Text(model.clone()));
            "usage_hourly_model"
        }
        None => "usage_hourly",
    };
    if let Some(first) = first {
        terms.push("hour >= ?");
        values.push(Value::Integer(first));
    }
    if let Some(past) = past {
        terms.push("hour < ?");
        values.push(Value::Integer(past));
    }
    let clause = if terms.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", terms.join(" AND "))
    };
    let sql = format!(
        "SELECT COALESCE(SUM(events), 0), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), \
         COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0), \
         COALESCE(SUM(duration_ms), 0), COALESCE(SUM(api_calls), 0), COALESCE(SUM(units), 0), \
         SUM(cost_nanos), COALESCE(SUM(unpriced_events), 0), 0, 0 FROM {table} {clause}"
    );
    read::totals_query(&sql, |sql| {
        conn.prepare_cached(sql)?
            .query_row(params_from_iter(values.iter()), |row| {
                read::aggregate_from_row(row, Some("all".into()), 0)
            })
    })
}

/// Adds `part` to `total`, saturating at 2**63 - 1 like the totals queries.
pub fn add(total: &mut Aggregate, part: &Aggregate) {
    let most = i64::MAX as u64;
    for (t, p) in [
        (&mut total.events, part.events),
        (&mut total.tokens_in, part.tokens_in),
        (&mut total.tokens_out, part.tokens_out),
        (&mut total.cache_read_tokens, part.cache_read_tokens),
        (&mut total.cache_write_tokens, part.cache_write_tokens),
        (&mut total.duration_ms, part.duration_ms),
        (&mut total.api_calls, part.api_calls),
        (&mut total.units, part.units),
        (&mut total.unpriced_events, part.unpriced_events),
    ] {
        *t = t.saturating_add(p).min(most);
    }
    total.cost_nanos = match (total.cost_nanos, part.cost_nanos) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0)).min(most)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::event::tests::event;

    /// Keys looked up borrowed hash as the owned keys do: one row per key.
    #[test]
    fn events_of_one_group_add_to_one_row_of_each_table() {
        let mut pending = Pending::default();
        let mut e = event("agent", 10 * 1_000_000, 5);
        e.model = Some("m".into());
        for _ in 0..3 {
            pending.add(&e, Some(7));
        }
        e.agent_id = "other".into();
        pending.add(&e, None);
        assert_eq!(pending.hours.len(), 1);
        assert_eq!(pending.models.len(), 1);
        assert_eq!(pending.groups.len(), 2);
        assert_eq!(pending.days.len(), 2);
        let hour = &pending.hours[&("default".to_string(), 0)];
        assert_eq!(
            (hour.events, hour.tokens_in, hour.cost_nanos),
            (4, 20, Some(21))
        );
        assert_eq!(hour.unpriced_events, 1);
        let group = (
            0,
            "default".into(),
            "agent".into(),
            e.consumer_id.clone(),
            "m".into(),
            e.action.clone(),
        );
        assert_eq!(pending.groups[&group].events, 3);
    }
}
