//! The PostgreSQL writer: one tokio task that commits whatever is queued in
//! one transaction per batch — binary `COPY` into a temporary staging table,
//! then one statement that claims the request ids, inserts the new events
//! and adds them to the grouped totals (`super::grouped`).

use super::chain;
use super::schema;
use super::Shared;
use crate::error::{CoreError, CoreResult};
use crate::ledger::event::UsageEvent;
use crate::ledger::sqlite::{LogLevel, Outcome, MAX_GROUP};
use crate::pricing::Tokens;
use hashbrown::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a `durability="commit"` record waits for a failing database.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) enum Command {
    Record(
        Arc<UsageEvent>,
        Option<oneshot::Sender<CoreResult<Outcome>>>,
    ),
    Batch(Vec<Arc<UsageEvent>>, oneshot::Sender<CoreResult<usize>>),
    Flush(oneshot::Sender<()>),
}

/// The columns staged for each event, in `COPY` order.
const STAGE_COLUMNS: &str =
    "seq, namespace, request_id, ts, agent_id, consumer_id, task_id, action, model, \
     tokens_in, tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, \
     cost_nanos, source, metadata, fingerprint, cost_priced, artifact_digest";

const EVENT_COLUMNS: &str =
    "namespace, request_id, ts, agent_id, consumer_id, task_id, action, model, \
     tokens_in, tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, \
     cost_nanos, source, metadata, fingerprint, cost_priced, artifact_digest";

const STAGE_TYPES: [Type; 22] = [
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::BOOL,
    Type::TEXT,
];

/// `expr` capped at 2**63 - 1, as `int8`: sums are exact (numeric) and
/// saturate; NULL stays NULL (unlike `LEAST`, which skips it).
pub(crate) fn saturate(expr: &str) -> String {
    format!(
        "(CASE WHEN {expr} > 9223372036854775807 THEN 9223372036854775807 ELSE {expr} END)::int8"
    )
}

/// The counters an event carries, summed in every total.
pub(crate) const COUNTERS: [&str; 7] = [
    "tokens_in",
    "tokens_out",
    "cache_read_tokens",
    "cache_write_tokens",
    "duration_ms",
    "api_calls",
    "units",
];

/// Claims the staged request ids (the first of each, in staging order);
/// returns the `seq` of each new event, in order.
fn claim_sql(s: &str) -> String {
    format!(
        "WITH firsts AS ( \
             SELECT DISTINCT ON (namespace, request_id) seq, namespace, request_id, fingerprint, ts \
             FROM uw_staging ORDER BY namespace, request_id, seq \
         ), claimed AS ( \
             INSERT INTO {s}.request_keys (namespace, request_id, fingerprint, ts) \
             SELECT namespace, request_id, fingerprint, ts FROM firsts ORDER BY seq \
             ON CONFLICT (namespace, request_id) DO NOTHING \
             RETURNING namespace, request_id \
         ) SELECT f.seq FROM firsts f JOIN claimed c USING (namespace, request_id) ORDER BY f.seq"
    )
}

/// Inserts the claimed events (`$1` their seqs, `$2` and `$3` their chain
/// positions and digests) and adds them to the grouped totals (daily and
/// hourly, each in key order).
fn insert_sql(s: &str) -> String {
    format!(
        "WITH chained AS ( \
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::bytea[]) AS c(seq, chain_position, chain_digest) \
         ), fresh AS ( \
             SELECT s.*, c.chain_position, c.chain_digest FROM uw_staging s JOIN chained c USING (seq) \
         ), inserted AS ( \
             INSERT INTO {s}.usage_events ({EVENT_COLUMNS}, chain_position, chain_digest) \
             SELECT {EVENT_COLUMNS}, chain_position, chain_digest FROM fresh ORDER BY seq \
         ), {}daily AS ({}) {}",
        super::calendar::write_ctes(s, "fresh"),
        super::grouped::upsert_into(s, &super::coarse::DAILY, "fresh"),
        super::grouped::upsert_sql(s, "fresh")
    )
}

/// The statements a writer connection prepares once.
#[derive(Clone)]
struct Statements {
    heads: chain::HeadStatements,
    claim: tokio_postgres::Statement,
    insert: tokio_postgres::Statement,
}

/// Stages `records`, locks their namespaces' chain heads, claims the new
/// request ids and inserts those events, each extending its chain in
/// staging order; returns the seqs of the new events. Duplicates and
/// conflicts are not claimed, so they never advance a chain.
async fn insert_chained(
    tx: &tokio_postgres::Transaction<'_>,
    statements: &Statements,
    records: &[Pending],
    unchained: bool,
) -> CoreResult<Vec<i64>> {
    stage(tx, records).await?;
    if unchained {
        return insert_unchained(tx, statements).await;
    }
    // Locked before the claim: another host's events of these namespaces
    // are committed (and their ids claimed) before this one's are decided.
    let events = records.iter().map(|p| &*p.event);
    let (mut heads, claimed) = chain::Heads::lock_then(
        tx,
        &statements.heads,
        events,
        tx.query(&statements.claim, &[]),
    )
    .await?;
    let fresh: Vec<i64> = claimed.iter().map(|r| r.get(0)).collect();
    if fresh.is_empty() {
        return Ok(fresh);
    }
    let (mut positions, mut digests) = (Vec::new(), Vec::new());
    for &seq in &fresh {
        let (position, digest) = heads.extend(&records[seq as usize].event);
        positions.push(position);
        digests.push(digest);
    }
    let digests: Vec<&[u8]> = digests.iter().map(|d| &d[..]).collect();
    // Sent pipelined, in this order (`try_join` polls in order): one round trip.
    futures_util::future::try_join(
        async {
            tx.execute(&statements.insert, &[&fresh, &positions, &digests])
                .await
                .map_err(CoreError::from)
        },
        heads.write(tx, &statements.heads),
    )
    .await?;
    Ok(fresh)
}

/// `insert_chained` without the chain (for the benchmark that measures it).
async fn insert_unchained(
    tx: &tokio_postgres::Transaction<'_>,
    statements: &Statements,
) -> CoreResult<Vec<i64>> {
    let claimed = tx.query(&statements.claim, &[]).await?;
    let fresh: Vec<i64> = claimed.iter().map(|r| r.get(0)).collect();
    let none: (Vec<Option<i64>>, Vec<Option<&[u8]>>) =
        (vec![None; fresh.len()], vec![None; fresh.len()]);
    tx.execute(&statements.insert, &[&fresh, &none.0, &none.1])
        .await?;
    Ok(fresh)
}

/// This connection's staging table; a transaction's rows go at its end.
const STAGING_TABLE: &str = "CREATE TEMP TABLE uw_staging ( \
     seq BIGINT, namespace TEXT, request_id TEXT, ts BIGINT, agent_id TEXT, consumer_id TEXT, \
     task_id TEXT, action TEXT, model TEXT, tokens_in BIGINT, tokens_out BIGINT, \
     cache_read_tokens BIGINT, cache_write_tokens BIGINT, duration_ms BIGINT, api_calls BIGINT, \
     units BIGINT, cost_nanos BIGINT, source TEXT, metadata TEXT, fingerprint BIGINT, \
     cost_priced BOOLEAN, artifact_digest TEXT) ON COMMIT DELETE ROWS";

/// One staged event and who waits for it.
struct Pending {
    event: Arc<UsageEvent>,
    /// The cost the store's pricing filled in, if any.
    priced: Option<u64>,
    reply: Option<oneshot::Sender<CoreResult<Outcome>>>,
}

pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    client: Option<Client>,
    /// The writer's statements, prepared on `client`.
    statements: Option<Statements>,
    known_months: HashSet<i64>,
}

impl Worker {
    pub(crate) fn new(shared: Arc<Shared>) -> Worker {
        Worker {
            shared,
            client: None,
            statements: None,
            known_months: HashSet::new(),
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.recv().await {
            let mut records = Vec::new();
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Record(event, reply) => {
                        records.push(self.pending(event, reply));
                        if records.len() < MAX_GROUP {
                            next = rx.try_recv().ok();
                        }
                    }
                    Command::Batch(events, reply) => {
                        // Keep order: commit the records queued before it first.
                        self.commit_records(std::mem::take(&mut records)).await;
                        let _ = reply.send(self.commit_batch(events).await);
                    }
                    Command::Flush(reply) => {
                        self.commit_records(std::mem::take(&mut records)).await;
                        let _ = reply.send(());
                    }
                }
            }
            self.commit_records(records).await;
        }
        // The channel is closed and drained: the store is closed.
    }

    fn pending(
        &self,
        event: Arc<UsageEvent>,
        reply: Option<oneshot::Sender<CoreResult<Outcome>>>,
    ) -> Pending {
        let priced = match (event.cost_nanos, &self.shared.pricing, &event.model) {
            (None, Some(pricing), Some(model)) => {
                pricing.cost_nanos(model, &Tokens::from(&*event), event.timestamp_us)
            }
            _ => None,
        };
        Pending {
            event,
            priced,
            reply,
        }
    }

    /// Commits queued records, retrying a failing database until it works or
    /// the store is closed for good; every caller is told the outcome.
    async fn commit_records(&mut self, records: Vec<Pending>) {
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        let mut backoff = Duration::from_millis(10);
        // Callers waiting for the commit are answered in bounded time; events
        // only queued (durability "batch") are retried until they are stored.
        let give_up_at = records
            .iter()
            .any(|p| p.reply.is_some())
            .then(|| Instant::now() + COMMIT_TIMEOUT);
        let outcomes = loop {
            match self.write(&records).await {
                Ok(outcomes) => break Some(outcomes),
                Err(e) => {
                    self.failed("record", &e);
                    if give_up_at.is_some_and(|at| Instant::now() >= at) {
                        let c = &self.shared.counters;
                        c.queued.fetch_sub(n, Ordering::SeqCst);
                        let message = format!("could not commit to PostgreSQL: {e}");
                        for p in records {
                            if let Some(reply) = p.reply {
                                let _ = reply.send(Err(CoreError::Store(message.clone())));
                            }
                        }
                        return;
                    }
                    if self.shared.closing.load(Ordering::SeqCst) {
                        break None;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let c = &self.shared.counters;
        let Some(outcomes) = outcomes else {
            let message = format!(
                "gave up writing {n} events: the store was closed while the database kept failing"
            );
            (self.shared.log)(LogLevel::Error, &message);
            *c.last_error.lock() = Some(message.clone());
            c.queued.fetch_sub(n, Ordering::SeqCst);
            for p in records {
                if let Some(reply) = p.reply {
                    let _ = reply.send(Err(CoreError::Store(message.clone())));
                }
            }
            return;
        };
        let (mut inserted, mut duplicates, mut conflicts) = (0, 0, 0);
        for (p, outcome) in records.iter().zip(&outcomes) {
            match outcome {
                Outcome::Inserted => inserted += 1,
                Outcome::Duplicate => duplicates += 1,
                Outcome::Conflict => {
                    conflicts += 1;
                    if p.reply.is_none() {
                        (self.shared.log)(
                            LogLevel::Warning,
                            &format!(
                                "conflict: request_id {:?} in namespace {:?} was recorded before with different content; the new event was not stored",
                                p.event.request_id, p.event.namespace
                            ),
                        );
                    }
                }
            }
        }
        c.inserted.fetch_add(inserted, Ordering::SeqCst);
        c.duplicates.fetch_add(duplicates, Ordering::SeqCst);
        c.conflicts.fetch_add(conflicts, Ordering::SeqCst);
        c.queued.fetch_sub(n, Ordering::SeqCst);
        for (p, outcome) in records.into_iter().zip(outcomes) {
            if let Some(reply) = p.reply {
                let _ = reply.send(Ok(outcome));
            }
        }
    }

    /// `record_batch`: all or nothing; a conflict fails the whole batch.
    async fn commit_batch(&mut self, events: Vec<Arc<UsageEvent>>) -> CoreResult<usize> {
        let records: Vec<Pending> = events.into_iter().map(|e| self.pending(e, None)).collect();
        let mut attempts = 0;
        loop {
            match self.write_checked(&records).await {
                Ok(n) => {
                    let c = &self.shared.counters;
                    c.inserted.fetch_add(n as u64, Ordering::SeqCst);
                    c.duplicates
                        .fetch_add((records.len() - n) as u64, Ordering::SeqCst);
                    return Ok(n);
                }
                Err(e @ CoreError::Conflict(_)) => return Err(e),
                Err(e) => {
                    self.failed("record_batch", &e);
                    attempts += 1;
                    if attempts >= 5 || self.shared.closing.load(Ordering::SeqCst) {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(20 << attempts)).await;
                }
            }
        }
    }

    fn failed(&mut self, what: &str, e: &CoreError) {
        let c = &self.shared.counters;
        c.write_errors.fetch_add(1, Ordering::SeqCst);
        let message = format!("{what} failed, will retry: {e}");
        (self.shared.log)(LogLevel::Warning, &message);
        *c.last_error.lock() = Some(message);
        // A partition may have been dropped by a purge (here or on another host).
        self.known_months.clear();
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
    }

    async fn client(&mut self) -> CoreResult<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = self.shared.connect().await?;
            client.batch_execute(STAGING_TABLE).await?;
            let s = format!("\"{}\"", self.shared.schema);
            self.statements = Some(Statements {
                heads: chain::HeadStatements::prepare(&client, &s).await?,
                claim: client.prepare(&claim_sql(&s)).await?,
                insert: client.prepare(&insert_sql(&s)).await?,
            });
            self.client = Some(client);
            self.known_months.clear();
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    /// Creates the partitions these events need that this writer has not seen.
    async fn ensure_partitions(&mut self, records: &[Pending]) -> CoreResult<()> {
        let mut wanted = Vec::new();
        let mut seen = HashSet::new();
        for p in records {
            if let Some(month) = schema::month_of(p.event.timestamp_us) {
                if !self.known_months.contains(&month.0) && seen.insert(month.0) {
                    wanted.push(month);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let schema_name = self.shared.schema.clone();
        schema::create_partitions(self.client().await?, &schema_name, &wanted).await?;
        self.known_months.extend(wanted.iter().map(|m| m.0));
        Ok(())
    }

    /// One transaction: stage, insert, classify. Returns each record's outcome.
    async fn write(&mut self, records: &[Pending]) -> CoreResult<Vec<Outcome>> {
        self.ensure_partitions(records).await?;
        let s = format!("\"{}\"", self.shared.schema);
        self.client().await?;
        let statements = self
            .statements
            .clone()
            .expect("prepared with the connection");
        let client = self.client.as_mut().expect("connected");
        let tx = client.transaction().await?;
        let fresh: HashSet<i64> = insert_chained(
            &tx,
            &statements,
            records,
            self.shared.unchained.load(Ordering::Relaxed),
        )
        .await?
        .into_iter()
        .collect();
        let mut outcomes = vec![Outcome::Inserted; records.len()];
        if fresh.len() < records.len() {
            // A new statement (a new snapshot): request ids another host
            // committed while this one waited on them are visible here.
            let rows = tx
                .query(
                    &format!(
                        "SELECT s.seq, k.fingerprint = s.fingerprint FROM uw_staging s \
                         JOIN {s}.request_keys k USING (namespace, request_id) \
                         WHERE NOT (s.seq = ANY($1))"
                    ),
                    &[&fresh.iter().copied().collect::<Vec<i64>>()],
                )
                .await?;
            for row in rows {
                let seq: i64 = row.get(0);
                let same: bool = row.get(1);
                outcomes[seq as usize] = if same {
                    Outcome::Duplicate
                } else {
                    Outcome::Conflict
                };
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// `write` for `record_batch`: rolls back on a conflict.
    async fn write_checked(&mut self, records: &[Pending]) -> CoreResult<usize> {
        self.ensure_partitions(records).await?;
        let shared = self.shared.clone();
        let conflicts = &shared.counters.conflicts;
        let s = format!("\"{}\"", self.shared.schema);
        self.client().await?;
        let statements = self
            .statements
            .clone()
            .expect("prepared with the connection");
        let client = self.client.as_mut().expect("connected");
        let tx = client.transaction().await?;
        let fresh = insert_chained(
            &tx,
            &statements,
            records,
            self.shared.unchained.load(Ordering::Relaxed),
        )
        .await?
        .len();
        if fresh < records.len() {
            let conflict = tx
                .query(
                    &format!(
                        "SELECT s.seq, s.request_id, s.namespace FROM uw_staging s \
                         JOIN {s}.request_keys k USING (namespace, request_id) \
                         WHERE k.fingerprint <> s.fingerprint ORDER BY s.seq LIMIT 1"
                    ),
                    &[],
                )
                .await?;
            if let Some(row) = conflict.first() {
                let (index, request_id, namespace): (i64, String, String) =
                    (row.get(0), row.get(1), row.get(2));
                conflicts.fetch_add(1, Ordering::SeqCst);
                return Err(CoreError::Conflict(format!(
                    "events[{index}]: request_id {request_id:?} in namespace {namespace:?} was recorded before with different content; nothing in the batch was stored"
                )));
            }
        }
        tx.commit().await?;
        Ok(fresh)
    }
}

/// Binary `COPY` of the records into this connection's staging table
/// (created with the connection, emptied at each commit or rollback).
async fn stage(tx: &tokio_postgres::Transaction<'_>, records: &[Pending]) -> CoreResult<()> {
    let sink = tx
        .copy_in(&format!(
            "COPY uw_staging ({STAGE_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &STAGE_TYPES);
    let mut writer = std::pin::pin!(writer);
    for (seq, p) in records.iter().enumerate() {
        let e = &*p.event;
        let big = |v: u64| v.min(i64::MAX as u64) as i64;
        let cost = e.cost_nanos.or(p.priced).map(big);
        let row: [&(dyn ToSql + Sync); 22] = [
            &(seq as i64),
            &e.namespace,
            &e.request_id,
            &e.timestamp_us,
            &e.agent_id,
            &e.consumer_id,
            &e.task_id,
            &e.action,
            &e.model,
            &big(e.tokens_in),
            &big(e.tokens_out),
            &big(e.cache_read_tokens),
            &big(e.cache_write_tokens),
            &big(e.duration_ms),
            &big(e.api_calls),
            &big(e.units),
            &cost,
            &e.source,
            &e.metadata,
            &e.fingerprint(),
            &p.priced.is_some(),
            &e.artifact_digest,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}
