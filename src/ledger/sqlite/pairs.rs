//! Totals per hour and per UTC day × namespace × agent × consumer
//! (`usage_hourly_pair`, `usage_daily_pair`): the grouped rows of
//! `super::rollup` and `super::coarse` without the model and the action, a
//! few times fewer rows. Summaries, totals per agent, consumer or
//! namespace and the lists of agents and consumers read them where no
//! filter asks for a model, an action or a task (`super::grouped::source`);
//! each row is one agent and one consumer, so distinct agents and
//! consumers come from them too.
//!
//! Kept in the writer's transaction from its pre-summed rows
//! (`rollup::Pending`); recounted (purge edge, reprice) from the recounted
//! hourly groups, hour by hour and day by day with the other levels.

use super::read::Aggregate;
use super::rollup::{self, Levels, PairKey};
use hashbrown::HashMap;
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

/// Both tables, and the presence masks of `super::presence`, empty (dropped
/// first, so that a ledger whose schema version was wound back is counted
/// afresh); `fill` counts them from `usage_rollup`.
pub const MIGRATION: &str = concat!(
    "DROP TABLE IF EXISTS usage_hourly_pair;
CREATE TABLE usage_hourly_pair (
    hour INTEGER NOT NULL, namespace TEXT NOT NULL, agent_id TEXT NOT NULL,
    consumer_id TEXT NOT NULL, ",
    super::coarse::totals_columns!(),
    ",
    PRIMARY KEY (hour, namespace, agent_id, consumer_id)
) WITHOUT ROWID;
DROP TABLE IF EXISTS usage_daily_pair;
CREATE TABLE usage_daily_pair (
    day INTEGER NOT NULL, namespace TEXT NOT NULL, agent_id TEXT NOT NULL,
    consumer_id TEXT NOT NULL, ",
    super::coarse::totals_columns!(),
    ",
    PRIMARY KEY (day, namespace, agent_id, consumer_id)
) WITHOUT ROWID;
DROP TABLE IF EXISTS usage_presence;
CREATE TABLE usage_presence (
    day INTEGER NOT NULL, namespace TEXT NOT NULL, model TEXT NOT NULL,
    kind INTEGER NOT NULL, id TEXT NOT NULL, hours INTEGER NOT NULL,
    PRIMARY KEY (day, namespace, model, kind, id)
) WITHOUT ROWID;
"
);

/// Fills both tables and the presence masks from the hourly groups of a
/// ledger created before them (inside the migration's transaction).
pub(super) fn fill(conn: &Connection) -> rusqlite::Result<()> {
    let levels = Levels {
        days: false,
        models: false,
        pair_hours: true,
        pair_days_and_presence: true,
    };
    super::coarse::fold_hours(conn, i64::MIN, i64::MAX, levels)
}

/// Adds `rows` to `table` (`usage_hourly_pair` or `usage_daily_pair`).
pub(super) fn write(
    conn: &Connection,
    table: &str,
    rows: &mut HashMap<PairKey, Aggregate>,
) -> rusqlite::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let keys = if table == "usage_daily_pair" {
        "day, namespace, agent_id, consumer_id"
    } else {
        "hour, namespace, agent_id, consumer_id"
    };
    let mut stmt = conn.prepare_cached(rollup::upsert_sql(table, keys))?;
    for ((time, namespace, agent, consumer), t) in rows.drain() {
        let keys = [
            Value::Integer(time),
            Value::Text(namespace),
            Value::Text(agent),
            Value::Text(consumer),
        ];
        stmt.execute(params_from_iter(keys.into_iter().chain(rollup::sums(&t))))?;
    }
    Ok(())
}
