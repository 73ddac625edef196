//! Repricing stored events after a price change.

use super::rollup;
use crate::error::CoreResult;
use crate::ledger::filters::Filters;
use crate::pricing::{Pricing, Tokens};
use rusqlite::{params, params_from_iter, Connection};

/// `SqliteStore::reprice` on the write connection, in one transaction.
pub fn reprice(conn: &mut Connection, pricing: &Pricing, filters: &Filters) -> CoreResult<usize> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (clause, params) = filters.where_clause();
    let joiner = if clause.is_empty() { "WHERE" } else { "AND" };
    let sql = format!(
        "SELECT id, model, tokens_in, tokens_out, cache_read_tokens, cache_write_tokens, ts, cost_nanos \
         FROM usage_events {clause} {joiner} model IS NOT NULL AND (cost_nanos IS NULL OR cost_priced = 1)"
    );
    let mut changes = Vec::new();
    {
        let mut stmt = tx.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            let model: String = row.get(1)?;
            let tokens = Tokens {
                input: row.get::<_, i64>(2)? as u64,
                output: row.get::<_, i64>(3)? as u64,
                cache_read: row.get::<_, i64>(4)? as u64,
                cache_write: row.get::<_, i64>(5)? as u64,
            };
            let ts: i64 = row.get(6)?;
            let old = row.get::<_, Option<i64>>(7)?.map(|c| c as u64);
            if let Some(new) = pricing.cost_nanos(&model, &tokens, ts) {
                if old != Some(new) {
                    changes.push((row.get::<_, i64>(0)?, new, ts));
                }
            }
        }
    }
    let mut hours = hashbrown::HashSet::new();
    {
        let mut update = tx.prepare_cached(
            "UPDATE usage_events SET cost_nanos = ?1, cost_priced = 1 WHERE id = ?2",
        )?;
        for (id, cost, ts) in &changes {
            update.execute(params![(*cost).min(i64::MAX as u64) as i64, id])?;
            hours.insert(rollup::hour_of(*ts));
        }
    }
    rollup::recount_hours(&tx, hours)?;
    tx.commit()?;
    Ok(changes.len())
}
