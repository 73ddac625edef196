//! Totals per hour and per UTC day × namespace × agent × consumer
//! (`usage_hourly_pair`, `usage_daily_pair`): the grouped rows of
//! `super::grouped` without the model and the action, a few times fewer
//! rows. Summaries, totals per agent, consumer or namespace, the lists of
//! agents and consumers and event counts read them where no filter asks
//! for a model or an action: the whole days of a range from the daily
//! rows, its other whole hours from the hourly ones, the rest from the
//! events (`grouped::source`). Each row is one agent and one consumer, so
//! distinct agents and consumers come from these rows too.
//!
//! The writer adds to both in its hourly statement
//! (`calendar::hourly_upsert_sql`, from the batch's pre-summed hourly rows);
//! recounts (purge edge, reprice) recount them from `usage_rollup`.

use super::calendar::{day_of_sql, summed_totals};
use super::coarse::DAY_OF_TS;
use super::grouped::{self, Level, HOUR_OF_TS};
use crate::error::CoreResult;
use crate::ledger::rollup_plan::{day_of, DAY_US};
use deadpool_postgres::GenericClient;

pub const HOURLY_PAIR: Level = Level {
    table: "usage_hourly_pair",
    time: "hour",
    time_of_ts: HOUR_OF_TS,
    keys: &["namespace", "agent_id", "consumer_id"],
};

pub const DAILY_PAIR: Level = Level {
    table: "usage_daily_pair",
    time: "day",
    time_of_ts: DAY_OF_TS,
    keys: &["namespace", "agent_id", "consumer_id"],
};

/// One table of totals per `$time` × namespace × agent × consumer.
macro_rules! pair_table {
    ($table:literal, $time:literal) => {
        concat!(
            "DROP TABLE IF EXISTS {s}.", $table, ";
CREATE TABLE {s}.", $table, " (
    ", $time, " BIGINT NOT NULL, namespace TEXT NOT NULL, agent_id TEXT NOT NULL, consumer_id TEXT NOT NULL,
    events BIGINT NOT NULL, tokens_in BIGINT NOT NULL, tokens_out BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL, cache_write_tokens BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL, api_calls BIGINT NOT NULL, units BIGINT NOT NULL,
    cost_nanos BIGINT, unpriced_events BIGINT NOT NULL,
    PRIMARY KEY (", $time, ", namespace, agent_id, consumer_id)
);
"
        )
    };
}

/// Both tables, empty (dropped first, so that a schema whose version was
/// wound back is counted afresh); `fill` counts them from `usage_rollup`.
pub const MIGRATION: &str = concat!(
    pair_table!("usage_hourly_pair", "hour"),
    pair_table!("usage_daily_pair", "day")
);

/// `level`'s rows summed from the `usage_rollup`-shaped rows `from` (alias
/// `r`, with an `hour` column), in key order.
fn summed_from(level: &Level, from: &str) -> String {
    let time = match level.time {
        "day" => day_of_sql("r.hour"),
        _ => "r.hour".to_string(),
    };
    format!(
        "SELECT {time}, r.namespace, r.agent_id, r.consumer_id, {} FROM {from} \
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
        summed_totals()
    )
}

/// The writer's additions to both tables from the batch's hourly rows `b`
/// (`grouped::row_columns(&HOURLY)`), as data-modifying `WITH` entries.
pub fn upserts_from_batch(s: &str) -> String {
    [("hourly_pair", &HOURLY_PAIR), ("daily_pair", &DAILY_PAIR)]
        .iter()
        .map(|(name, level)| {
            format!(
                "{name} AS ({})",
                grouped::upsert_select_sql(s, level, &summed_from(level, "b r"))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fills both tables from the hourly grouped totals (in the migration).
pub async fn fill(c: &tokio_postgres::Transaction<'_>, s: &str) -> CoreResult<()> {
    for level in [&HOURLY_PAIR, &DAILY_PAIR] {
        c.batch_execute(&format!(
            "INSERT INTO {s}.{} {}",
            level.table,
            summed_from(level, &format!("{s}.usage_rollup r"))
        ))
        .await?;
    }
    Ok(())
}

/// Recomputes the given hours, and the days holding them, from their
/// recounted `usage_rollup` rows (the caller holds `grouped::lock`).
pub async fn recount_hours(c: &impl GenericClient, s: &str, hours: &[i64]) -> CoreResult<()> {
    let mut days: Vec<i64> = hours.iter().map(|&h| day_of(h)).collect();
    days.sort_unstable();
    days.dedup();
    let hourly_from = format!("{s}.usage_rollup r WHERE r.hour = ANY($1)");
    let daily_from = format!(
        "unnest($1::int8[]) AS d(day) \
         JOIN {s}.usage_rollup r ON r.hour >= d.day AND r.hour < d.day + {DAY_US}"
    );
    for (level, times, from) in [
        (&HOURLY_PAIR, hours, hourly_from),
        (&DAILY_PAIR, &days[..], daily_from),
    ] {
        c.execute(
            &format!(
                "DELETE FROM {s}.{} WHERE {} = ANY($1)",
                level.table, level.time
            ),
            &[&times],
        )
        .await?;
        c.execute(
            &format!(
                "INSERT INTO {s}.{} {}",
                level.table,
                summed_from(level, &from)
            ),
            &[&times],
        )
        .await?;
    }
    Ok(())
}

/// Drops the hours before `edge` and the days before the one it falls in.
pub async fn drop_before(c: &impl GenericClient, s: &str, edge: i64) -> CoreResult<()> {
    for (level, before) in [(&HOURLY_PAIR, edge), (&DAILY_PAIR, day_of(edge))] {
        c.execute(
            &format!("DELETE FROM {s}.{} WHERE {} < $1", level.table, level.time),
            &[&before],
        )
        .await?;
    }
    Ok(())
}
