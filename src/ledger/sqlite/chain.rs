//! The hash chain on SQLite: each row's position and digest, the head per
//! namespace in `chain_heads` (extended by the one writer, in the insert's
//! transaction, in commit order), and the runs a purge removed in
//! `chain_purges`.

use crate::error::{CoreError, CoreResult};
use crate::ledger::chain::{digest_from_slice, link, Canonical, Digest, GENESIS, PAYLOAD_CAPACITY};
use crate::ledger::chain_source::{stored_digest, ChainSource, PurgedRuns, Rows, Segment};
use crate::ledger::chain_verify::{walk, ChainRow, PurgedRun, Walked};
use crate::ledger::event::UsageEvent;
use hashbrown::HashMap;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

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

/// The heads a transaction extends, read once per namespace and written back by `write`.
pub struct Heads {
    heads: HashMap<String, (i64, Digest, bool)>,
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
            Some((position, digest, _)) => (*position, *digest),
            None => {
                let (position, digest) = match head(conn, &e.namespace)? {
                    Some((position, bytes)) => {
                        (position, digest_from_slice(&bytes).unwrap_or(GENESIS))
                    }
                    None => (0, GENESIS),
                };
                self.heads
                    .insert(e.namespace.clone(), (position, digest, false));
                (position, digest)
            }
        };
        self.payload.clear();
        Canonical::of(e).write(&mut self.payload);
        Ok((position + 1, link(&previous, &self.payload)))
    }

    /// `e` was inserted at `position` with `digest`.
    pub fn advance(&mut self, namespace: &str, position: i64, digest: Digest) {
        if let Some(head) = self.heads.get_mut(namespace) {
            *head = (position, digest, true);
        }
    }

    /// Writes the moved heads; call before committing.
    pub fn write(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO chain_heads (namespace, position, digest) VALUES (?1, ?2, ?3) \
             ON CONFLICT (namespace) DO UPDATE SET position = excluded.position, digest = excluded.digest",
        )?;
        for (namespace, (position, digest, moved)) in &self.heads {
            if *moved {
                stmt.execute(params![namespace, position, &digest[..]])?;
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
        heads.advance(&event.namespace, position, digest);
    }
    heads.write(conn)
}

/// Before a purge deletes events older than `cutoff_us`: records each run
/// of consecutive positions it removes, with the digest at its end, so that
/// the chain stays verifiable from there.
pub fn record_purges(conn: &Connection, cutoff_us: i64, now_us: i64) -> CoreResult<()> {
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
    for (ns, run) in runs.finish() {
        insert.execute(params![
            ns,
            run.first,
            run.last,
            &run.digest[..],
            cutoff_us,
            now_us
        ])?;
    }
    Ok(())
}

/// The chain as one SQLite read transaction sees it.
pub struct SqliteChain<'c>(pub &'c Connection);

impl ChainSource for SqliteChain<'_> {
    fn namespaces(&mut self) -> CoreResult<Vec<String>> {
        Ok(self
            .0
            .prepare(
                "SELECT namespace FROM chain_heads UNION SELECT DISTINCT namespace FROM usage_events",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn head(&mut self, namespace: &str) -> CoreResult<Option<(i64, Digest)>> {
        match head(self.0, namespace)? {
            Some((position, bytes)) => {
                Ok(Some((position, stored_digest(&bytes, "the chain head")?)))
            }
            None => Ok(None),
        }
    }

    fn purged_runs(&mut self, namespace: &str) -> CoreResult<Vec<PurgedRun>> {
        let mut stmt = self.0.prepare_cached(
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
        let stored: Option<Vec<u8>> = self
            .0
            .prepare_cached(
                "SELECT chain_digest FROM usage_events WHERE namespace = ?1 AND chain_position = ?2 \
                 UNION ALL SELECT digest FROM chain_purges WHERE namespace = ?1 AND last_position = ?2 LIMIT 1",
            )?
            .query_row(params![namespace, position], |r| r.get(0))
            .optional()?;
        stored
            .map(|b| stored_digest(&b, "a stored digest"))
            .transpose()
    }

    fn with_rows(
        &mut self,
        namespace: &str,
        start: i64,
        end: i64,
        visit: &mut dyn FnMut(&mut Rows<'_>) -> CoreResult<Walked>,
    ) -> CoreResult<Walked> {
        let mut stmt = self.0.prepare_cached(&format!(
            "SELECT {CHAINED_COLUMNS} FROM usage_events \
             WHERE namespace = ?1 AND chain_position >= ?2 AND chain_position <= ?3 ORDER BY chain_position"
        ))?;
        let mut rows = stmt
            .query_map(params![namespace, start, end], chain_row)?
            .map(|r| r.map_err(CoreError::from));
        visit(&mut rows)
    }

    fn row(&mut self, namespace: &str, request_id: &str) -> CoreResult<Option<ChainRow>> {
        Ok(self
            .0
            .prepare_cached(&format!(
                "SELECT {CHAINED_COLUMNS} FROM usage_events WHERE namespace = ?1 AND request_id = ?2"
            ))?
            .query_row(params![namespace, request_id], chain_row)
            .optional()?)
    }

    fn unchained(&mut self, namespace: &str) -> CoreResult<Option<String>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT request_id FROM usage_events WHERE namespace = ?1 AND chain_position IS NULL LIMIT 1",
            )?
            .query_row([namespace], |r| r.get(0))
            .optional()?)
    }

    fn beyond(&mut self, namespace: &str, head: i64) -> CoreResult<bool> {
        Ok(self
            .0
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
    let mut src = SqliteChain(&tx);
    let mut walked = Vec::with_capacity(segments.len());
    for segment in segments {
        let namespace = segment.chain.namespace;
        let mut chain = Some(segment.chain);
        walked.push(
            src.with_rows(namespace, segment.start, segment.end, &mut |rows| {
                walk(chain.take().expect("walked once"), rows, now_us)
            })?,
        );
    }
    Ok(walked)
}
