//! Writing events inside a transaction, exactly as the writer does (public
//! so that benchmarks insert the same way).

use super::chain;
use super::rollup;
use crate::ledger::event::UsageEvent;
use crate::pricing::{Pricing, Tokens};
use rusqlite::{params, Connection};

/// What happened to one recorded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Inserted,
    /// The same `(namespace, request_id)` with the same content: ignored.
    Duplicate,
    /// The same `(namespace, request_id)` with different content: refused.
    Conflict,
}

/// The statement every event is written with.
const INSERT_SQL: &str = "INSERT INTO usage_events (namespace, request_id, ts, agent_id, consumer_id, task_id, action, model, \
     tokens_in, tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, cost_nanos, source, metadata, fingerprint, cost_priced, \
     artifact_digest, chain_position, chain_digest) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23) \
     ON CONFLICT (namespace, request_id) DO NOTHING";

/// Inserts events inside the caller's transaction, with the statement
/// prepared once per transaction rather than looked up per event. Public so
/// that benchmarks insert exactly as the writer does.
pub struct Inserter<'c> {
    conn: &'c Connection,
    stmt: rusqlite::CachedStatement<'c>,
    hourly: rollup::Pending,
    /// Each new event extends its namespace's chain, in commit order
    /// (`None` only in the benchmark that measures what the chain costs).
    chain: Option<chain::Heads>,
    pricing: Option<&'c Pricing>,
}

impl<'c> Inserter<'c> {
    pub fn new(conn: &'c Connection) -> rusqlite::Result<Inserter<'c>> {
        Inserter::with_pricing(conn, None)
    }

    /// An inserter that fills the cost of events that have none and whose
    /// model `pricing` knows (at the event's time).
    pub fn with_pricing(
        conn: &'c Connection,
        pricing: Option<&'c Pricing>,
    ) -> rusqlite::Result<Inserter<'c>> {
        Ok(Inserter {
            conn,
            stmt: conn.prepare_cached(INSERT_SQL)?,
            hourly: rollup::Pending::default(),
            chain: Some(chain::Heads::default()),
            pricing,
        })
    }

    pub fn insert(&mut self, e: &UsageEvent) -> rusqlite::Result<Outcome> {
        let priced = match (e.cost_nanos, self.pricing, &e.model) {
            (None, Some(pricing), Some(model)) => {
                pricing.cost_nanos(model, &Tokens::from(e), e.timestamp_us)
            }
            _ => None,
        };
        let link = match &mut self.chain {
            Some(chain) => Some(chain.next(self.conn, e)?),
            None => None,
        };
        let outcome = insert_with(self.conn, &mut self.stmt, e, priced, link)?;
        if outcome == Outcome::Inserted {
            self.hourly.add(e, e.cost_nanos.or(priced));
            if let (Some(chain), Some((position, digest))) = (&mut self.chain, link) {
                chain.advance(
                    &e.namespace,
                    position,
                    digest,
                    self.conn.last_insert_rowid(),
                );
            }
        }
        Ok(outcome)
    }

    /// Leaves the hash chain out: only for `benchmarks/audit_raw.rs`, which
    /// measures what the chain costs. A ledger written so fails `verify`.
    #[doc(hidden)]
    pub fn unchained_for_benchmark(mut self) -> Self {
        self.chain = None;
        self
    }

    /// Adds the new events to the hourly totals and the chain heads; call before committing.
    pub fn finish(mut self) -> rusqlite::Result<()> {
        if let Some(chain) = &self.chain {
            chain.write(self.conn)?;
        }
        self.hourly.write(self.conn)
    }
}

/// `priced`: the cost the store's pricing gave an event that came without
/// one. The fingerprint is the event's as given, so a retry is recognised
/// whatever the prices have become since.
fn insert_with(
    conn: &Connection,
    stmt: &mut rusqlite::CachedStatement<'_>,
    e: &UsageEvent,
    priced: Option<u64>,
    link: Option<(i64, crate::ledger::chain::Digest)>,
) -> rusqlite::Result<Outcome> {
    let (position, digest) = link.map_or((None, None), |(p, d)| (Some(p), Some(d)));
    let fingerprint = e.fingerprint();
    let changed = stmt.execute(params![
        e.namespace,
        e.request_id,
        e.timestamp_us,
        e.agent_id,
        e.consumer_id,
        e.task_id,
        e.action,
        e.model,
        e.tokens_in as i64,
        e.tokens_out as i64,
        e.cache_read_tokens as i64,
        e.cache_write_tokens as i64,
        e.duration_ms as i64,
        e.api_calls as i64,
        e.units as i64,
        e.cost_nanos.or(priced).map(|c| c as i64),
        e.source,
        e.metadata,
        fingerprint,
        priced.is_some(),
        e.artifact_digest,
        position,
        digest.as_ref().map(|d| &d[..]),
    ])?;
    if changed == 1 {
        return Ok(Outcome::Inserted);
    }
    let existing: i64 = conn
        .prepare_cached(
            "SELECT fingerprint FROM usage_events WHERE namespace = ?1 AND request_id = ?2",
        )?
        .query_row(params![e.namespace, e.request_id], |r| r.get(0))?;
    Ok(if existing == fingerprint {
        Outcome::Duplicate
    } else {
        Outcome::Conflict
    })
}
