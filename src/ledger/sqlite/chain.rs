//! The hash chain on SQLite: each row's position and digest, the head per
//! namespace in `chain_heads` (extended by the one writer, in the insert's
//! transaction, in commit order), and the runs a purge removed in
//! `chain_purges`.

use crate::error::{CoreError, CoreResult};
use crate::ledger::chain::{canonical, digest_from_slice, link, Digest, GENESIS};
use crate::ledger::chain_verify::{
    walk, Chain, ChainRow, Checkpoint, PositionRange, PurgedRun, Receipt, VerifyReport,
};
use crate::ledger::event::UsageEvent;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::HashMap;

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

fn chain_row(row: &Row<'_>) -> rusqlite::Result<ChainRow> {
    let event = chained_event(row)?;
    let digest: Option<Vec<u8>> = row.get(20)?;
    Ok(ChainRow {
        position: row.get(19)?,
        payload: canonical(&event),
        digest: digest.as_deref().and_then(digest_from_slice),
        request_id: event.request_id,
    })
}

fn stored_digest(bytes: Vec<u8>, what: &str) -> CoreResult<Digest> {
    digest_from_slice(&bytes)
        .ok_or_else(|| CoreError::Store(format!("{what} is not a 32-byte digest")))
}

fn head(conn: &Connection, namespace: &str) -> rusqlite::Result<Option<(i64, Vec<u8>)>> {
    conn.prepare_cached("SELECT position, digest FROM chain_heads WHERE namespace = ?1")?
        .query_row([namespace], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// The heads a transaction extends, read once per namespace and written back by `write`.
#[derive(Default)]
pub struct Heads {
    heads: HashMap<String, (i64, Digest, bool)>,
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
        Ok((position + 1, link(&previous, &canonical(e))))
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
pub fn record_purges(conn: &Connection, cutoff_us: i64, now_us: i64) -> rusqlite::Result<()> {
    let mut select = conn.prepare_cached(
        "SELECT namespace, chain_position, chain_digest FROM usage_events \
         WHERE ts < ?1 AND chain_position IS NOT NULL ORDER BY namespace, chain_position",
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO chain_purges (namespace, first_position, last_position, digest, cutoff_us, purged_at_us) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut run: Option<(String, i64, i64, Vec<u8>)> = None;
    let mut rows = select.query([cutoff_us])?;
    while let Some(row) = rows.next()? {
        let namespace: String = row.get(0)?;
        let position: i64 = row.get(1)?;
        let digest: Vec<u8> = row.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default();
        match &mut run {
            Some((ns, _, last, d)) if *ns == namespace && *last + 1 == position => {
                *last = position;
                *d = digest;
            }
            _ => {
                if let Some((ns, first, last, d)) = run.take() {
                    insert.execute(params![ns, first, last, d, cutoff_us, now_us])?;
                }
                run = Some((namespace, position, position, digest));
            }
        }
    }
    if let Some((ns, first, last, d)) = run {
        insert.execute(params![ns, first, last, d, cutoff_us, now_us])?;
    }
    Ok(())
}

/// The recorded head of `namespace` (position 0 and the zero digest before its first event).
pub fn checkpoint(conn: &Connection, namespace: &str, now_us: i64) -> CoreResult<Checkpoint> {
    let (position, digest) = match head(conn, namespace)? {
        Some((position, bytes)) => (position, stored_digest(bytes, "the chain head")?),
        None => (0, GENESIS),
    };
    Ok(Checkpoint {
        namespace: namespace.to_string(),
        position,
        digest,
        time_us: now_us,
    })
}

/// The digest at `position` as stored: the row's, or a purge boundary's.
fn digest_at(conn: &Connection, namespace: &str, position: i64) -> CoreResult<Option<Digest>> {
    if position == 0 {
        return Ok(Some(GENESIS));
    }
    let stored: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT chain_digest FROM usage_events WHERE namespace = ?1 AND chain_position = ?2 \
             UNION ALL SELECT digest FROM chain_purges WHERE namespace = ?1 AND last_position = ?2 LIMIT 1",
        )?
        .query_row(params![namespace, position], |r| r.get(0))
        .optional()?;
    stored
        .map(|b| stored_digest(b, "a stored digest"))
        .transpose()
}

pub fn receipt(conn: &Connection, namespace: &str, request_id: &str) -> CoreResult<Receipt> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {CHAINED_COLUMNS} FROM usage_events WHERE namespace = ?1 AND request_id = ?2"
        ))?
        .query_row(params![namespace, request_id], chain_row)
        .optional()?;
    let Some(row) = found else {
        return Err(CoreError::InvalidArgument(
            "request_id",
            format!("no event {request_id:?} in namespace {namespace:?}"),
        ));
    };
    let previous = digest_at(conn, namespace, row.position - 1)?.ok_or_else(|| {
        CoreError::Store(format!(
            "the chain before position {} of namespace {namespace:?} is missing",
            row.position
        ))
    })?;
    Ok(Receipt {
        namespace: namespace.to_string(),
        position: row.position,
        digest: row
            .digest
            .ok_or_else(|| CoreError::Store("the stored digest is not 32 bytes".into()))?,
        payload: row.payload,
        previous,
    })
}

fn namespaces(conn: &Connection, anchors: &[Checkpoint]) -> CoreResult<Vec<String>> {
    let mut names: Vec<String> = conn
        .prepare(
            "SELECT namespace FROM chain_heads UNION SELECT DISTINCT namespace FROM usage_events",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    names.extend(anchors.iter().map(|a| a.namespace.clone()));
    names.sort();
    names.dedup();
    Ok(names)
}

fn purged_runs(conn: &Connection, namespace: &str) -> CoreResult<Vec<PurgedRun>> {
    let mut stmt = conn.prepare_cached(
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
            digest: stored_digest(digest, "a purge boundary")?,
        });
    }
    Ok(runs)
}

/// Recomputes the chains of `namespace` (every namespace when `None`), in
/// one read transaction, and stops at the first problem.
pub fn verify(
    conn: &Connection,
    namespace: Option<&str>,
    range: PositionRange,
    anchors: &[Checkpoint],
    now_us: i64,
) -> CoreResult<VerifyReport> {
    let tx = conn.unchecked_transaction()?;
    let names = match namespace {
        Some(ns) => vec![ns.to_string()],
        None => namespaces(&tx, anchors)?,
    };
    let mut report = VerifyReport::default();
    for name in &names {
        report.namespaces.push(name.clone());
        let head = match head(&tx, name)? {
            Some((position, bytes)) => Some((position, stored_digest(bytes, "the chain head")?)),
            None => None,
        };
        let start = range.start.unwrap_or(1);
        let chain = Chain {
            namespace: name,
            head,
            purged: purged_runs(&tx, name)?,
            anchors: anchors.iter().filter(|a| a.namespace == *name).collect(),
            range,
            seed: if start > 1 {
                digest_at(&tx, name, start - 1)?
            } else {
                None
            },
        };
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {CHAINED_COLUMNS} FROM usage_events \
             WHERE namespace = ?1 AND chain_position >= ?2 AND chain_position <= ?3 ORDER BY chain_position"
        ))?;
        let mut rows = stmt
            .query_map(
                params![name, start, range.end.unwrap_or(i64::MAX)],
                chain_row,
            )?
            .map(|r| r.map_err(CoreError::from));
        let walked = walk(chain, &mut rows, now_us)?;
        report.rows += walked.rows;
        report.heads.push(walked.head);
        if walked.problem.is_some() {
            report.problem = walked.problem;
            return Ok(report);
        }
        if let Some(p) = unchained(&tx, name)? {
            report.problem = Some(p);
            return Ok(report);
        }
    }
    Ok(report)
}

/// A row the writer did not chain (no position): slipped in by hand.
fn unchained(
    conn: &Connection,
    namespace: &str,
) -> CoreResult<Option<crate::ledger::chain_verify::Problem>> {
    let found: Option<String> = conn
        .prepare_cached(
            "SELECT request_id FROM usage_events WHERE namespace = ?1 AND chain_position IS NULL LIMIT 1",
        )?
        .query_row([namespace], |r| r.get(0))
        .optional()?;
    Ok(
        found.map(|request_id| crate::ledger::chain_verify::Problem {
            namespace: namespace.to_string(),
            position: 0,
            message: format!(
                "request {request_id:?} has no chain position: it was not recorded by the writer"
            ),
            request_id: Some(request_id),
            kind: crate::ledger::chain_verify::ProblemKind::Inserted,
        }),
    )
}
