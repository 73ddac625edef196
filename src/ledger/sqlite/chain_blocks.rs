//! Where a namespace's chain positions sit in the table, without an index
//! entry per event: for each block of `BLOCK` consecutive positions, the
//! range of row ids holding them.
//!
//! The one writer assigns ids in commit order, which is also chain order,
//! so a block's rows are the rows of its namespace and positions within its
//! id range, and reading that range by id hands them over in position
//! order. The writer updates one block row per transaction and namespace
//! (where an index on `(namespace, chain_position)` took one B-tree entry per
//! event). Blocks only say where to look: the digests are what is trusted,
//! and `SqliteChain` falls back to reading by position whenever the blocks
//! and the rows disagree.

use rusqlite::{params, Connection, OptionalExtension};

/// Positions per block: small enough that a block's id range is cheap to
/// scan when namespaces interleave (a receipt reads one block), large
/// enough that a batch touches few block rows.
pub const BLOCK: i64 = 256;

/// The block that holds `position` (≥ 1).
pub fn block_of(position: i64) -> i64 {
    (position - 1).div_euclid(BLOCK)
}

/// Replaces the `(namespace, chain_position)` index with the block table; a
/// partial index keeps the rows the writer never chained (none, in an
/// intact ledger) found at once.
pub const MIGRATION: &str = r#"
CREATE TABLE IF NOT EXISTS chain_blocks (
    namespace TEXT    NOT NULL,
    block     INTEGER NOT NULL,
    first_id  INTEGER NOT NULL,
    last_id   INTEGER NOT NULL,
    -- 0 when some row's id is below an earlier position's (a ledger chained
    -- before the blocks existed, in timestamp order): read by position then.
    ordered   INTEGER NOT NULL,
    PRIMARY KEY (namespace, block)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_events_unchained ON usage_events (namespace) WHERE chain_position IS NULL;
"#;

/// Builds the blocks of the rows chained so far (while the old index still
/// orders them), then drops that index; run by the migration (again, from
/// the rows, when a ledger's schema version was wound back).
pub fn fill(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM chain_blocks", [])?;
    conn.execute(
        "INSERT INTO chain_blocks (namespace, block, first_id, last_id, ordered) \
         SELECT namespace, block, MIN(id), MAX(id), MIN(ascends) FROM ( \
             SELECT namespace, (chain_position - 1) / ?1 AS block, id, \
                    COALESCE(id > LAG(id) OVER (PARTITION BY namespace, (chain_position - 1) / ?1 \
                                                ORDER BY chain_position), 1) AS ascends \
             FROM usage_events WHERE chain_position >= 1) \
         GROUP BY namespace, block",
        [BLOCK],
    )?;
    conn.execute_batch("DROP INDEX IF EXISTS usage_events_chain")
}

/// The id ranges one transaction's new rows of a namespace took, by block.
#[derive(Default)]
pub struct Spans(Vec<(i64, i64, i64)>);

impl Spans {
    /// Row `id` took `position`.
    pub fn push(&mut self, position: i64, id: i64) {
        let block = block_of(position);
        match self.0.last_mut() {
            Some((b, _, last)) if *b == block => *last = id,
            _ => self.0.push((block, id, id)),
        }
    }

    /// Widens the stored blocks to the new rows; call before committing.
    pub fn write(&self, conn: &Connection, namespace: &str) -> rusqlite::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO chain_blocks (namespace, block, first_id, last_id, ordered) VALUES (?1, ?2, ?3, ?4, 1) \
             ON CONFLICT (namespace, block) DO UPDATE SET \
                 ordered = ordered AND excluded.first_id >= last_id, \
                 first_id = MIN(first_id, excluded.first_id), \
                 last_id = MAX(last_id, excluded.last_id)",
        )?;
        for (block, first, last) in &self.0 {
            stmt.execute(params![namespace, block, first, last])?;
        }
        Ok(())
    }
}

/// After a purge removed positions up to `through` of `namespace`: forgets
/// the blocks up to there that no longer hold a row, so that the table
/// shrinks with the ledger (a block some row outlived stays).
pub fn forget_emptied(conn: &Connection, namespace: &str, through: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM chain_blocks AS b WHERE b.namespace = ?1 AND b.block <= ?2 AND NOT EXISTS ( \
             SELECT 1 FROM usage_events NOT INDEXED \
             WHERE id BETWEEN b.first_id AND b.last_id AND namespace = ?1 \
               AND chain_position BETWEEN b.block * ?3 + 1 AND (b.block + 1) * ?3)",
    )?
    .execute(params![namespace, block_of(through), BLOCK])?;
    Ok(())
}

/// The first and last blocks holding positions `start..=end`.
pub fn blocks_of(start: i64, end: i64) -> (i64, i64) {
    (block_of(start.max(1)), block_of(end))
}

/// Whether every block `first..=last` of `namespace` reads in position order by id.
pub fn ordered(
    conn: &Connection,
    namespace: &str,
    (first, last): (i64, i64),
) -> rusqlite::Result<bool> {
    let unordered: Option<i64> = conn
        .prepare_cached(
            "SELECT 1 FROM chain_blocks WHERE namespace = ?1 AND block BETWEEN ?2 AND ?3 AND NOT ordered LIMIT 1",
        )?
        .query_row(params![namespace, first, last], |r| r.get(0))
        .optional()?;
    Ok(unordered.is_none())
}

/// Selects `columns` of the rows at positions `?2..=?3` of namespace `?1`
/// (in blocks `?4..=?5`, `blocks_of` them), block by block, each block's id range read by id (`NOT INDEXED`: by the
/// row id, which no index can beat for a range of it).
pub fn rows_sql(columns: &str) -> String {
    format!(
        "SELECT {columns} FROM \
             (SELECT block AS blk, first_id AS lo, last_id AS hi FROM chain_blocks \
              WHERE namespace = ?1 AND block BETWEEN ?4 AND ?5) \
         JOIN usage_events NOT INDEXED ON id BETWEEN lo AND hi \
         WHERE namespace = ?1 AND chain_position BETWEEN ?2 AND ?3 \
         ORDER BY blk, id"
    )
}
