//! Totals coarser than the hourly ones of `super::rollup`, kept in the same
//! transactions: per UTC day × namespace × agent × consumer × model × action
//! (`usage_daily`: grouped totals and distinct counts over days and months
//! read about 24 times fewer rows than per hour), and per hour × namespace ×
//! model (`usage_hourly_model`: calendar buckets of one model, in any zone,
//! read a few rows an hour instead of every group of the hour).
//!
//! A day is recounted from its hourly groups (exact, and recounted first):
//! the sum of saturated sums of non-negative counts is the saturated sum.
//! Its rows per agent × consumer (`super::pairs`) and its presence masks
//! (`super::presence`) are rebuilt from the same groups in the same pass.

use super::read;
use super::rollup::{self, Levels, Pending, DAY_US};
use rusqlite::Connection;

/// The key columns of `usage_daily`, in `rollup::GroupKey` order.
pub const DAY_KEYS: &str = "day, namespace, agent_id, consumer_id, model, action";

/// The tables kept per UTC day, recounted day by day from the hourly groups.
pub const DAILY_TABLES: [&str; 3] = ["usage_daily", "usage_daily_pair", "usage_presence"];

/// The totals every row carries after its key, as in `usage_rollup`.
macro_rules! totals_columns {
    () => {
        "events INTEGER NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, \
         cache_read_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL, \
         duration_ms INTEGER NOT NULL, api_calls INTEGER NOT NULL, units INTEGER NOT NULL, \
         cost_nanos INTEGER, unpriced_events INTEGER NOT NULL"
    };
}
pub(super) use totals_columns;

/// The tables, back-filled by `fill` from the hourly groups. Dropped first,
/// so that a ledger whose schema version was wound back is counted afresh.
pub const MIGRATION: &str = concat!(
    "DROP TABLE IF EXISTS usage_daily;
CREATE TABLE usage_daily (
    day INTEGER NOT NULL, namespace TEXT NOT NULL, agent_id TEXT NOT NULL,
    consumer_id TEXT NOT NULL, model TEXT NOT NULL, action TEXT NOT NULL, ",
    totals_columns!(),
    ",
    PRIMARY KEY (day, namespace, agent_id, consumer_id, model, action)
) WITHOUT ROWID;
DROP TABLE IF EXISTS usage_hourly_model;
CREATE TABLE usage_hourly_model (
    namespace TEXT NOT NULL, model TEXT NOT NULL, hour INTEGER NOT NULL, ",
    totals_columns!(),
    ",
    PRIMARY KEY (namespace, model, hour)
) WITHOUT ROWID;
"
);

/// Fills both tables from `usage_rollup` (inside the migration's transaction).
pub(super) fn fill(conn: &Connection) -> rusqlite::Result<()> {
    let levels = Levels {
        days: true,
        models: true,
        pair_hours: false,
        pair_days_and_presence: false,
    };
    fold_hours(conn, i64::MIN, i64::MAX, levels)
}

/// Recomputes one UTC day's rows (`DAILY_TABLES`) from its hourly groups.
pub(super) fn recount_day(conn: &Connection, day: i64) -> rusqlite::Result<()> {
    for table in DAILY_TABLES {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE day = ?1"))?
            .execute([day])?;
    }
    let levels = Levels {
        days: true,
        models: false,
        pair_hours: false,
        pair_days_and_presence: true,
    };
    fold_hours(conn, day, day.saturating_add(DAY_US), levels)
}

/// Adds the hourly groups of `[first, past)` to the coarser `levels`,
/// written out a day at a time.
pub(super) fn fold_hours(
    conn: &Connection,
    first: i64,
    past: i64,
    levels: Levels,
) -> rusqlite::Result<()> {
    let mut pending = Pending::default();
    let mut stmt = conn.prepare_cached(
        "SELECT hour, namespace, agent_id, consumer_id, model, action, events, tokens_in, \
         tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, \
         cost_nanos, unpriced_events, 0, 0 FROM usage_rollup WHERE hour >= ?1 AND hour < ?2 \
         ORDER BY hour",
    )?;
    let mut rows = stmt.query([first, past])?;
    let mut current = None;
    while let Some(row) = rows.next()? {
        let hour: i64 = row.get(0)?;
        let day = rollup::day_of(hour);
        if current.is_some_and(|c| c != day) {
            pending.write_levels(conn, levels)?;
        }
        current = Some(day);
        let totals = read::aggregate_from_row(row, None, 6)?;
        let (namespace, model): (String, String) = (row.get(1)?, row.get(4)?);
        let (agent, consumer): (String, String) = (row.get(2)?, row.get(3)?);
        if levels.models {
            let key = (namespace.clone(), model.clone(), hour);
            rollup::add(pending.models.entry(key).or_default(), &totals);
        }
        if levels.pair_hours || levels.pair_days_and_presence {
            pending.add_pair((hour, &namespace, &model, &agent, &consumer), &totals);
        }
        if levels.days {
            let key = (day, namespace, agent, consumer, model, row.get(5)?);
            rollup::add(pending.days.entry(key).or_default(), &totals);
        }
    }
    pending.write_levels(conn, levels)
}
