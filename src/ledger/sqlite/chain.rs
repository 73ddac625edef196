//! The hash chain on SQLite: each row's position and digest, the head per
//! namespace in `chain_heads` (extended by the one writer, in the insert's
//! transaction, in commit order), and the runs a purge removed in
//! `chain_purges`.

use super::chain_blocks::{self, Spans};
use crate::error::{CoreError, CoreResult};
use crate::ledger::chain::{digest_from_slice, link, Canonical, Digest, GENESIS, PAYLOAD_CAPACITY};
use crate::ledger::chain_source::{stored_digest, ChainSource, PurgedRuns, Rows, Segment};
use crate::ledger::chain_verify::{walk, ChainRow, PurgedRun, Walked};
use crate::ledger::event::UsageEvent;
use hashbrown::HashMap;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::sync::LazyLock;

/// The schema version whose migration adds the chain (`chain_existing` runs with it).
pub const CHAIN_SCHEMA_VERSION: i64 = 4;

pub const MIGRATION: &str = r#"
ALTER TABLE usage_events ADD COLUMN artifact_digest TEXT;
ALTER TABLE usage_events ADD COLUMN chain_position INTEGER;
ALTER TABLE usage_events ADD COLUMN chain_digest BLOB;
CREATE UNIQUE INDEX usage_events_chain ON usage_events (namespace, chain_position);
CREATE TABLE chain_heads (
    namespace TEXT PRIMARY KEY,
    position  INTEGER NOT NULL,
    digest    BLOB    NOT NULL
);
CREATE TABLE chain_purges (
    id             INTEGER PRIMARY KEY,
    namespace      TEXT    NOT NULL,
    first_position INTEGER NOT NULL,
    last_position  INTEGER NOT NULL,
    digest         BLOB    NOT NULL,
    cutoff_us      INTEGER NOT NULL,
    purged_at_us   INTEGER NOT NULL
);
CREATE INDEX chain_purges_namespace ON chain_purges (namespace, first_position);
"#;

/// Columns that rebuild the event as the caller recorded it: a cost the
/// store's pricing filled in (`cost_priced`) reads as `None`.
const CHAINED_COLUMNS: &str = "agent_id, consumer_id, task_id, namespace, action, model, tokens_in, tokens_out, \
     cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, \
     CASE WHEN cost_priced = 1 THEN NULL ELSE cost_nanos END, ts, request_id, source, metadata, artifact_digest, \
     chain_position, chain_digest, id";

fn chained_event(row: &Row<'_>) -> rusqlite::Result<UsageEvent> {
    super::read::event_from_row(row)
}

/// A text column's bytes, read in place.
fn text<'r>(row: &'r Row<'_>, i: usize) -> rusqlite::Result<&'r [u8]> {
    row.get_ref(i)?
        .as_bytes()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e)))
}

fn opt_text<'r>(row: &'r Row<'_>, i: usize) -> rusqlite::Result<Option<&'r [u8]>> {
    row.get_ref(i)?
        .as_bytes_or_null()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e)))
}

fn count(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(i)? as u64)
}

/// The encoded fields of a row selected with `CHAINED_COLUMNS`, borrowed
/// from SQLite's buffers (no event is built).
fn chained_fields<'r>(row: &'r Row<'_>) -> rusqlite::Result<Canonical<'r>> {
    Ok(Canonical {
        agent_id: text(row, 0)?,
        consumer_id: text(row, 1)?,
        task_id: opt_text(row, 2)?,
        namespace: text(row, 3)?,
        action: text(row, 4)?,
        model: opt_text(row, 5)?,
        tokens_in: count(row, 6)?,
        tokens_out: count(row, 7)?,
        cache_read_tokens: count(row, 8)?,
        cache_write_tokens: count(row, 9)?,
        duration_ms: count(row, 10)?,
        api_calls: count(row, 11)?,
        units: count(row, 12)?,
        cost_nanos: row.get::<_, Option<i64>>(13)?.map(|c| c as u64),
        timestamp_us: row.get(14)?,
        request_id: text(row, 15)?,
        source: opt_text(row, 16)?,
        metadata: opt_text(row, 17)?,
        artifact_digest: opt_text(row, 18)?,
    })
}

fn chain_row(row: &Row<'_>) -> rusqlite::Result<ChainRow> {
    let fields = chained_fields(row)?;
    let digest = opt_text(row, 20)?;
    Ok(ChainRow {
        position: row.get(19)?,
        payload: fields.to_vec(),
        digest: digest.and_then(digest_from_slice),
        request_id: String::from_utf8_lossy(fields.request_id).into_owned(),
    })
}

fn head(conn: &Connection, namespace: &str) -> rusqlite::Result<Option<(i64, Vec<u8>)>> {
    conn.prepare_cached("SELECT position, digest FROM chain_heads WHERE namespace = ?1")?
        .query_row([namespace], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// A namespace's head as a transaction moves it, and where its new rows went.
struct Head {
    position: i64,
    digest: Digest,
    moved: bool,
    spans: Spans,
}

/// The heads a transaction extends, read once per namespace and written back by `write`.
pub struct Heads {
    heads: HashMap<String, Head>,
    /// The payload being chained, reused from one event to the next.
    payload: Vec<u8>,
}

impl Default for Heads {
    fn default() -> Self {
        Heads {
            heads: HashMap::new(),
            payload: Vec::with_capacity(PAYLOAD_CAPACITY),
        }
    }
}

impl Heads {
    /// The position and digest `e` takes if it is inserted.
    pub fn next(&mut self, conn: &Connection, e: &UsageEvent) -> rusqlite::Result<(i64, Digest)> {
        let (position, previous) = match self.heads.get(e.namespace.as_str()) {
            Some(head) => (head.position, head.digest),
            None => {
                let (position, digest) = match head(conn, &e.namespace)? {
                    Some((position, bytes)) => {
                        (position, digest_from_slice(&bytes).unwrap_or(GENESIS))
                    }
                    None => (0, GENESIS),
                };
                self.heads.insert(
                    e.namespace.clone(),
                    Head {
                        position,
                        digest,
                        moved: false,
                        spans: Spans::default(),
                    },
                );
                (position, digest)
            }
        };
        self.payload.clear();
        Canonical::of(e).write(&mut self.payload);
        Ok((position + 1, link(&previous, &self.payload)))
    }

    /// `e` was inserted as row `id`, at `position` with `digest`.
    pub fn advance(&mut self, namespace: &str, position: i64, digest: Digest, id: i64) {
        if let Some(head) = self.heads.get_mut(namespace) {
            head.position = position;
            head.digest = digest;
            head.moved = true;
            head.spans.push(position, id);
        }
    }

    /// Writes the moved heads and the blocks their rows went to; call before committing.
    pub fn write(&self, conn: &Connection) -> rusqlite::Result<()> {
        self.write_heads(conn, true)
    }

    /// `blocks`: `false` only before the block table exists (its migration fills it).
    fn write_heads(&self, conn: &Connection, blocks: bool) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO chain_heads (namespace, position, digest) VALUES (?1, ?2, ?3) \
             ON CONFLICT (namespace) DO UPDATE SET position = excluded.position, digest = excluded.digest",
        )?;
        for (namespace, head) in &self.heads {
            if head.moved {
                stmt.execute(params![namespace, head.position, &head.digest[..]])?;
                if blocks {
                    head.spans.write(conn, namespace)?;
                }
            }
        }
        Ok(())
    }
}

/// Chains the rows of a ledger written before the chain existed, per
/// namespace in `(ts, id)` order (run once, by the migration).
pub fn chain_existing(conn: &Connection) -> rusqlite::Result<()> {
    let mut heads = Heads::default();
    let mut update = conn
        .prepare("UPDATE usage_events SET chain_position = ?1, chain_digest = ?2 WHERE id = ?3")?;
    let mut select = conn.prepare(&format!(
        "SELECT {CHAINED_COLUMNS} FROM usage_events ORDER BY namespace, ts, id"
    ))?;
    let mut rows = select.query([])?;
    while let Some(row) = rows.next()? {
        let event = chained_event(row)?;
        let id: i64 = row.get(21)?;
        let (position, digest) = heads.next(conn, &event)?;
        update.execute(params![position, &digest[..], id])?;
        heads.advance(&event.namespace, position, digest, id);
    }
    heads.write_heads(conn, false)
}

/// Before a purge deletes events older than `cutoff_us`: records each run
/// of consecutive positions it removes, with the digest at its end, so that
/// the chain stays verifiable from there. Returns, per namespace, the last
/// position it removes (for `chain_blocks::forget_emptied`).
pub fn record_purges(
    conn: &Connection,
    cutoff_us: i64,
    now_us: i64,
) -> CoreResult<Vec<(String, i64)>> {
    let mut select = conn.prepare_cached(
        "SELECT namespace, chain_position, chain_digest FROM usage_events \
         WHERE ts < ?1 AND chain_position IS NOT NULL ORDER BY namespace, chain_position",
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO chain_purges (namespace, first_position, last_position, digest, cutoff_us, purged_at_us) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut runs = PurgedRuns::default();
    let mut rows = select.query([cutoff_us])?;
    while let Some(row) = rows.next()? {
        let namespace: String = row.get(0)?;
        let digest: Vec<u8> = row.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default();
        // A digest that is not 32 bytes (tampered) leaves a boundary verify rejects.
        let digest = digest_from_slice(&digest).unwrap_or(GENESIS);
        runs.push(&namespace, row.get(1)?, digest);
    }
    let mut last_removed: Vec<(String, i64)> = Vec::new();
    for (ns, run) in runs.finish() {
        insert.execute(params![
            ns,
            run.first,
            run.last,
            &run.digest[..],
            cutoff_us,
            now_us
        ])?;
        match last_removed.last_mut() {
            // Runs come by namespace, then position.
            Some((last_ns, last)) if *last_ns == ns => *last = run.last,
            _ => last_removed.push((ns, run.last)),
        }
    }
    Ok(last_removed)
}

/// Rows of positions `?2..=?3` of namespace `?1`, in position order, found
/// without the blocks (a scan: only for a ledger the blocks misdescribe).
fn by_position_sql() -> String {
    format!(
        "SELECT {CHAINED_COLUMNS} FROM usage_events \
         WHERE namespace = ?1 AND chain_position >= ?2 AND chain_position <= ?3 ORDER BY chain_position, id"
    )
}

/// The chain as one SQLite read transaction sees it.
///
/// Rows are found through `chain_blocks` while a namespace holds exactly the
/// rows its head and purges account for (every row then sits in the block
/// of its position). A walk that finds a problem is walked again reading by
/// position, so that the report is the same however the rows were found.
pub struct SqliteChain<'c> {
    conn: &'c Connection,
    /// Per namespace: whether its row count is what its head and purges account for.
    accounted: HashMap<String, bool>,
    /// For the parts of a parallel walk: the coordinating snapshot checked the counts.
    counts_checked: bool,
}

impl<'c> SqliteChain<'c> {
    pub fn new(conn: &'c Connection) -> Self {
        SqliteChain {
            conn,
            accounted: HashMap::new(),
            counts_checked: false,
        }
    }

    fn accounted(&mut self, namespace: &str) -> CoreResult<bool> {
        if self.counts_checked {
            return Ok(true);
        }
        if let Some(accounted) = self.accounted.get(namespace) {
            return Ok(*accounted);
        }
        let rows: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM usage_events WHERE namespace = ?1")?
            .query_row([namespace], |r| r.get(0))?;
        let purged: i64 = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(last_position - first_position + 1), 0) FROM chain_purges WHERE namespace = ?1",
            )?
            .query_row([namespace], |r| r.get(0))?;
        let head = head(self.conn, namespace)?.map_or(0, |(position, _)| position);
        let accounted = rows == head - purged;
        self.accounted.insert(namespace.to_string(), accounted);
        Ok(accounted)
    }

    fn queried_digest(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> CoreResult<Option<Digest>> {
        let stored: Option<Vec<u8>> = self
            .conn
            .prepare_cached(sql)?
            .query_row(params, |r| r.get(0))
            .optional()?;
        stored
            .map(|b| stored_digest(&b, "a stored digest"))
            .transpose()
    }

    fn visit_rows(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        visit: &mut dyn FnMut(&mut Rows<'_>) -> CoreResult<Walked>,
    ) -> CoreResult<Walked> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt
            .query_map(params, chain_row)?
            .map(|r| r.map_err(CoreError::from));
        visit(&mut rows)
    }
}

impl ChainSource for SqliteChain<'_> {
    fn namespaces(&mut self) -> CoreResult<Vec<String>> {
        Ok(self
            .conn
            .prepare(
                "SELECT namespace FROM chain_heads UNION SELECT DISTINCT namespace FROM usage_events",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn head(&mut self, namespace: &str) -> CoreResult<Option<(i64, Digest)>> {
        match head(self.conn, namespace)? {
            Some((position, bytes)) => {
                Ok(Some((position, stored_digest(&bytes, "the chain head")?)))
            }
            None => Ok(None),
        }
    }

    fn purged_runs(&mut self, namespace: &str) -> CoreResult<Vec<PurgedRun>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT first_position, last_position, digest FROM chain_purges WHERE namespace = ?1 ORDER BY first_position",
        )?;
        let rows = stmt.query_map([namespace], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut runs = Vec::new();
        for row in rows {
            let (first, last, digest) = row?;
            runs.push(PurgedRun {
                first,
                last,
                digest: stored_digest(&digest, "a purge boundary")?,
            });
        }
        Ok(runs)
    }

    fn digest_at(&mut self, namespace: &str, position: i64) -> CoreResult<Option<Digest>> {
        const IN_BLOCK: &str = "SELECT chain_digest FROM \
                 (SELECT first_id AS lo, last_id AS hi FROM chain_blocks WHERE namespace = ?1 AND block = ?3) \
             JOIN usage_events NOT INDEXED ON id BETWEEN lo AND hi \
             WHERE namespace = ?1 AND chain_position = ?2 LIMIT 1";
        const AT_PURGE: &str = "SELECT digest FROM chain_purges \
             WHERE namespace = ?1 AND last_position = ?2 LIMIT 1";
        const ANYWHERE: &str = "SELECT chain_digest FROM usage_events \
             WHERE namespace = ?1 AND chain_position = ?2 LIMIT 1";
        if self.accounted(namespace)? {
            let block = chain_blocks::block_of(position);
            if let Some(digest) =
                self.queried_digest(IN_BLOCK, params![namespace, position, block])?
            {
                return Ok(Some(digest));
            }
        }
        match self.queried_digest(AT_PURGE, params![namespace, position])? {
            Some(digest) => Ok(Some(digest)),
            None => self.queried_digest(ANYWHERE, params![namespace, position]),
        }
    }

    fn with_rows(
        &mut self,
        namespace: &str,
        start: i64,
        end: i64,
        visit: &mut dyn FnMut(&mut Rows<'_>) -> CoreResult<Walked>,
    ) -> CoreResult<Walked> {
        static THROUGH_BLOCKS: LazyLock<String> =
            LazyLock::new(|| chain_blocks::rows_sql(CHAINED_COLUMNS));
        static BY_POSITION: LazyLock<String> = LazyLock::new(by_position_sql);
        let blocks = chain_blocks::blocks_of(start, end);
        if self.accounted(namespace)? && chain_blocks::ordered(self.conn, namespace, blocks)? {
            let walked = self.visit_rows(
                &THROUGH_BLOCKS,
                params![namespace, start, end, blocks.0, blocks.1],
                visit,
            )?;
            if walked.problem.is_none() {
                return Ok(walked);
            }
        }
        self.visit_rows(&BY_POSITION, params![namespace, start, end], visit)
    }

    fn row(&mut self, namespace: &str, request_id: &str) -> CoreResult<Option<ChainRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {CHAINED_COLUMNS} FROM usage_events WHERE namespace = ?1 AND request_id = ?2"
            ))?
            .query_row(params![namespace, request_id], chain_row)
            .optional()?)
    }

    fn unchained(&mut self, namespace: &str) -> CoreResult<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT request_id FROM usage_events WHERE namespace = ?1 AND chain_position IS NULL LIMIT 1",
            )?
            .query_row([namespace], |r| r.get(0))
            .optional()?)
    }

    fn beyond(&mut self, namespace: &str, head: i64) -> CoreResult<bool> {
        // A row past the head that a missing row makes up for in the count is
        // caught by the walk, which then finds the missing one.
        if self.accounted(namespace)? {
            return Ok(false);
        }
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM usage_events WHERE namespace = ?1 AND chain_position > ?2 LIMIT 1",
            )?
            .query_row(params![namespace, head], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

/// Walks `segments` in one read snapshot of `conn`, in order.
pub fn walk_segments(
    conn: &Connection,
    segments: Vec<Segment<'_>>,
    now_us: i64,
) -> CoreResult<Vec<Walked>> {
    let tx = conn.unchecked_transaction()?;
    let mut src = SqliteChain {
        counts_checked: true,
        ..SqliteChain::new(&tx)
    };
    let mut walked = Vec::with_capacity(segments.len());
    for segment in segments {
        let namespace = segment.chain.namespace;
        walked.push(
            src.with_rows(namespace, segment.start, segment.end, &mut |rows| {
                walk(segment.chain.clone(), rows, now_us)
            })?,
        );
    }
    Ok(walked)
}
