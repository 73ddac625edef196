//! The PostgreSQL writer: one tokio task that commits whatever is queued in
//! one transaction per batch (records nobody waits on gather for up to
//! `GROUP_LINGER` first: a commit is a round trip and a WAL flush). Under the
//! locks of the batch's namespaces' chain heads, its new request ids are
//! claimed by a binary `COPY` into `request_keys` (`super::request_keys`;
//! one already stored fails it, and the batch is decided again after
//! reading the stored fingerprints); the new events are then written with a
//! binary `COPY` straight into `usage_events`, and their grouped totals,
//! summed here (`super::batch_totals`), are added with one upsert per level.

use super::batch_totals::{self, BatchTotals};
use super::{chain, coarse, grouped, request_keys, schema, Shared};
use crate::error::{CoreError, CoreResult};
use crate::ledger::chain::Digest;
use crate::ledger::event::UsageEvent;
use crate::ledger::sqlite::{LogLevel, Outcome, GROUP_LINGER, LINGER_NAP, MAX_GROUP};
use crate::pricing::Tokens;
use bytes::{BufMut, BytesMut};
use futures_util::SinkExt;
use hashbrown::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};
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

/// The columns of `usage_events` the writer fills, in `COPY` order.
const EVENT_COLUMNS: &str =
    "namespace, request_id, ts, agent_id, consumer_id, task_id, action, model, \
     tokens_in, tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, \
     cost_nanos, source, metadata, fingerprint, cost_priced, artifact_digest, \
     chain_position, chain_digest";

const EVENT_TYPES: [Type; 23] = [
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
    Type::INT8,
    Type::BYTEA,
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

/// An event's values of `COUNTERS`, in their order.
pub(crate) fn counters(e: &UsageEvent) -> [u64; 7] {
    [
        e.tokens_in,
        e.tokens_out,
        e.cache_read_tokens,
        e.cache_write_tokens,
        e.duration_ms,
        e.api_calls,
        e.units,
    ]
}

/// The statements a writer connection prepares once.
#[derive(Clone)]
struct Statements {
    heads: chain::HeadStatements,
    stored: tokio_postgres::Statement,
    claim: tokio_postgres::Statement,
    hourly: tokio_postgres::Statement,
    daily: tokio_postgres::Statement,
    copy: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &Client, s: &str) -> CoreResult<Statements> {
        Ok(Statements {
            heads: chain::HeadStatements::prepare(client, s).await?,
            stored: client.prepare(&request_keys::stored_sql(s)).await?,
            claim: client.prepare(&request_keys::copy_sql(s)).await?,
            hourly: client
                .prepare(&super::calendar::hourly_upsert_sql(s))
                .await?,
            daily: client
                .prepare(&grouped::upsert_rows_sql(s, &coarse::DAILY))
                .await?,
            copy: client
                .prepare(&format!(
                    "COPY {s}.usage_events ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)"
                ))
                .await?,
        })
    }
}

/// What one transaction decided for a batch.
struct Claimed {
    /// Per record: whether it was inserted (only the first of an identity can be).
    fresh: Vec<bool>,
    /// Per record: the fingerprint stored for its identity (its own when
    /// new, or its first's); `None` only if the row is gone.
    stored: Vec<Option<i64>>,
    /// Whether any of the batch's ids was stored before it.
    found: bool,
}

impl Claimed {
    fn inserted(&self) -> usize {
        self.fresh.iter().filter(|&&f| f).count()
    }

    /// Each record's outcome.
    fn outcomes(&self, records: &[Pending]) -> Vec<Outcome> {
        records
            .iter()
            .enumerate()
            .map(|(i, p)| match self.stored[i] {
                _ if self.fresh[i] => Outcome::Inserted,
                Some(fp) if fp != p.fingerprint => Outcome::Conflict,
                _ => Outcome::Duplicate,
            })
            .collect()
    }
}

/// Under the locks of the batch's namespaces' chain heads, decides which
/// request ids are new, then writes them, the new events (each extending
/// its chain in queue order) and their grouped totals. Duplicates and
/// conflicts are not claimed, so they never advance a chain.
///
/// Every writer of a namespace holds its head's lock until it commits, so
/// no id can be claimed between the decision and the write: a plain `COPY`
/// suffices. With `lookup` the stored fingerprints of the batch's ids are
/// read first; without it the batch's ids are taken to be new, and the
/// `COPY` into `request_keys` proves it: when an id is stored already (or a
/// writer without the chain, only ever a benchmark, raced this one) it
/// fails on the unique key, and `Ok(None)` asks for the batch again with
/// the lookup, in a new transaction.
async fn insert_chained(
    tx: &tokio_postgres::Transaction<'_>,
    statements: &Statements,
    records: &[Pending],
    unchained: bool,
    lookup: bool,
) -> CoreResult<Option<Claimed>> {
    // Each identity once, at its first record: a later one is decided by
    // what the first stored.
    let mut index: HashMap<(&str, &str), usize> = HashMap::with_capacity(records.len());
    let first_of: Vec<usize> = records
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let e = &*p.event;
            *index
                .entry((e.namespace.as_str(), e.request_id.as_str()))
                .or_insert(i)
        })
        .collect();
    let firsts: Vec<&UsageEvent> = (0..records.len())
        .filter(|&i| first_of[i] == i)
        .map(|i| &*records[i].event)
        .collect();
    let namespaces: Vec<&str> = firsts.iter().map(|e| e.namespace.as_str()).collect();
    let request_ids: Vec<&str> = firsts.iter().map(|e| e.request_id.as_str()).collect();
    let params: [&(dyn ToSql + Sync); 2] = [&namespaces, &request_ids];
    let read = async {
        match lookup {
            true => tx.query(&statements.stored, &params).await,
            false => Ok(Vec::new()),
        }
    };
    let (mut heads, rows) = if unchained {
        (None, read.await?)
    } else {
        // Locked before the read: another host's events of these namespaces
        // are committed (and their ids claimed) before this one's are decided.
        let events = records.iter().map(|p| &*p.event);
        let (heads, rows) = chain::Heads::lock_then(tx, &statements.heads, events, read).await?;
        (Some(heads), rows)
    };
    let mut stored: Vec<Option<i64>> = vec![None; records.len()];
    for row in &rows {
        if let Some(&i) = index.get(&(row.get::<_, &str>(0), row.get::<_, &str>(1))) {
            stored[i] = Some(row.get(2));
        }
    }
    let fresh: Vec<bool> = (0..records.len())
        .map(|i| first_of[i] == i && stored[i].is_none())
        .collect();
    for i in 0..records.len() {
        if fresh[i] {
            stored[i] = Some(records[i].fingerprint);
        }
        stored[i] = stored[first_of[i]];
    }
    let found = !rows.is_empty();
    let outcome = Claimed {
        fresh,
        stored,
        found,
    };
    if outcome.inserted() == 0 {
        return Ok(Some(outcome));
    }
    let fresh: Vec<&Pending> = records
        .iter()
        .zip(&outcome.fresh)
        .filter_map(|(p, &fresh)| fresh.then_some(p))
        .collect();
    // Done while the server stores the claimed ids: the chain links and the
    // totals need no answer from it.
    let link_and_sum = || {
        let mut hourly = BatchTotals::new(batch_totals::period_of(&grouped::HOURLY));
        let mut daily = BatchTotals::new(batch_totals::period_of(&coarse::DAILY));
        let mut links = Vec::with_capacity(fresh.len());
        for p in &fresh {
            let cost = p.event.cost_nanos.or(p.priced);
            hourly.add(&p.event, cost);
            daily.add(&p.event, cost);
            links.push(heads.as_mut().map(|h| h.extend(&p.event)));
        }
        (links, hourly.columns(), daily.columns())
    };
    let Some((links, hourly, daily)) =
        copy_keys(tx, &statements.claim, &fresh, link_and_sum).await?
    else {
        return Ok(None);
    };
    let write_heads = async {
        match &heads {
            Some(h) => h.write(tx, &statements.heads).await,
            None => Ok(()),
        }
    };
    // Sent pipelined, in this order (`try_join3` polls in order): one round trip.
    futures_util::future::try_join3(
        write_heads,
        async {
            tx.execute(&statements.hourly, &hourly.params())
                .await
                .map_err(CoreError::from)
        },
        async {
            tx.execute(&statements.daily, &daily.params())
                .await
                .map_err(CoreError::from)
        },
    )
    .await?;
    copy_events(tx, &statements.copy, &fresh, &links).await?;
    Ok(Some(outcome))
}

/// One queued event and who waits for it.
struct Pending {
    event: Arc<UsageEvent>,
    /// The cost the store's pricing filled in, if any.
    priced: Option<u64>,
    /// `event.fingerprint()`, computed once: the claim, the row and the
    /// outcome all need it.
    fingerprint: i64,
    reply: Option<oneshot::Sender<CoreResult<Outcome>>>,
}

pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    client: Option<Client>,
    /// The writer's statements, prepared on `client`.
    statements: Option<Statements>,
    known_months: HashSet<i64>,
    /// Whether the next batch reads its stored ids before claiming them
    /// (the last one found some), rather than claiming them outright.
    lookup: bool,
}

impl Worker {
    pub(crate) fn new(shared: Arc<Shared>) -> Worker {
        Worker {
            shared,
            client: None,
            statements: None,
            known_months: HashSet::new(),
            lookup: false,
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.recv().await {
            let mut records = Vec::new();
            let mut next = Some(first);
            // Records nobody waits on gather for a moment (see `GROUP_LINGER`).
            let linger_until = tokio::time::Instant::now() + GROUP_LINGER;
            let mut lingering = true;
            loop {
                let command = match next.take() {
                    Some(command) => command,
                    None if lingering && !records.is_empty() && records.len() < MAX_GROUP => {
                        let now = tokio::time::Instant::now();
                        if now >= linger_until {
                            break;
                        }
                        // Naps rather than waits on the queue, which would wake for every record.
                        tokio::time::sleep_until(linger_until.min(now + LINGER_NAP)).await;
                        match rx.try_recv() {
                            Ok(command) => command,
                            Err(mpsc::error::TryRecvError::Empty) => continue,
                            Err(mpsc::error::TryRecvError::Disconnected) => break,
                        }
                    }
                    None => break,
                };
                match command {
                    Command::Record(event, reply) => {
                        // Someone waits for this commit: no more gathering.
                        lingering &= reply.is_none();
                        records.push(self.pending(event, reply));
                        if records.len() < MAX_GROUP {
                            next = rx.try_recv().ok();
                        }
                    }
                    Command::Batch(events, reply) => {
                        // Keep order: commit the records queued before it first.
                        self.commit_records(std::mem::take(&mut records)).await;
                        let _ = reply.send(self.commit_batch(events).await);
                        lingering = false;
                        next = rx.try_recv().ok();
                    }
                    Command::Flush(reply) => {
                        self.commit_records(std::mem::take(&mut records)).await;
                        let _ = reply.send(());
                        lingering = false;
                        next = rx.try_recv().ok();
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
            fingerprint: event.fingerprint(),
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
            let s = format!("\"{}\"", self.shared.schema);
            self.statements = Some(Statements::prepare(&client, &s).await?);
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

    /// The connection and its statements, and whether the chain is left out.
    async fn ready(&mut self) -> CoreResult<(&mut Client, Statements, bool)> {
        self.client().await?;
        let statements = self
            .statements
            .clone()
            .expect("prepared with the connection");
        let unchained = self.shared.unchained.load(Ordering::Relaxed);
        Ok((
            self.client.as_mut().expect("connected"),
            statements,
            unchained,
        ))
    }

    /// One transaction: claim, insert, classify. Returns each record's outcome.
    async fn write(&mut self, records: &[Pending]) -> CoreResult<Vec<Outcome>> {
        self.ensure_partitions(records).await?;
        let mut lookup = self.lookup;
        let (client, statements, unchained) = self.ready().await?;
        let claimed = claim(client, &statements, records, unchained, &mut lookup, |_| {
            true
        })
        .await?;
        self.lookup = lookup;
        Ok(claimed.outcomes(records))
    }

    /// `write` for `record_batch`: rolls back on a conflict.
    async fn write_checked(&mut self, records: &[Pending]) -> CoreResult<usize> {
        self.ensure_partitions(records).await?;
        let mut lookup = self.lookup;
        let (client, statements, unchained) = self.ready().await?;
        let conflict = |c: &Claimed| {
            c.outcomes(records)
                .iter()
                .position(|o| *o == Outcome::Conflict)
        };
        let claimed = claim(client, &statements, records, unchained, &mut lookup, |c| {
            conflict(c).is_none()
        })
        .await?;
        self.lookup = lookup;
        if let Some(index) = conflict(&claimed) {
            let e = &*records[index].event;
            self.shared
                .counters
                .conflicts
                .fetch_add(1, Ordering::SeqCst);
            return Err(CoreError::Conflict(format!(
                "events[{index}]: request_id {:?} in namespace {:?} was recorded before with different content; nothing in the batch was stored",
                e.request_id, e.namespace
            )));
        }
        Ok(claimed.inserted())
    }
}

/// Claims `records` (`insert_chained`) in one transaction, first without
/// the lookup unless `lookup` asks for it, and again with it when an id
/// proves stored; commits it when `keep` says so (else rolls it back).
/// `lookup` is left saying whether the next batch should read first:
/// whether this one found stored ids.
async fn claim(
    client: &mut Client,
    statements: &Statements,
    records: &[Pending],
    unchained: bool,
    lookup: &mut bool,
    keep: impl Fn(&Claimed) -> bool,
) -> CoreResult<Claimed> {
    loop {
        let tx = client.transaction().await?;
        match insert_chained(&tx, statements, records, unchained, *lookup).await? {
            Some(claimed) => {
                *lookup = claimed.found;
                match keep(&claimed) {
                    true => tx.commit().await?,
                    false => tx.rollback().await?,
                }
                return Ok(claimed);
            }
            None if *lookup => {
                // Only a writer without the chain races the read.
                return Err(CoreError::Store(
                    "PostgreSQL: a request id of the batch was claimed by another writer meanwhile"
                        .into(),
                ));
            }
            None => {
                tx.rollback().await?;
                *lookup = true;
            }
        }
    }
}

/// Bytes of binary `COPY` data sent per message: large, so that a batch
/// goes out in a few writes (tokio-postgres's own writer sends 4 KiB each).
const COPY_CHUNK: usize = 256 * 1024;

/// Why a binary `COPY` failed.
enum CopyFailed {
    Database(tokio_postgres::Error),
    Encode(usize, Box<dyn std::error::Error + Sync + Send>),
}

impl From<tokio_postgres::Error> for CopyFailed {
    fn from(e: tokio_postgres::Error) -> Self {
        CopyFailed::Database(e)
    }
}

impl From<CopyFailed> for CoreError {
    fn from(e: CopyFailed) -> Self {
        match e {
            CopyFailed::Database(e) => e.into(),
            CopyFailed::Encode(column, e) => {
                CoreError::Store(format!("PostgreSQL: COPY column {column}: {e}"))
            }
        }
    }
}

/// Sends `rows` (values of `types`) in PostgreSQL's binary `COPY` format
/// to `copy`, encoded straight into large messages, and runs `meanwhile`
/// once they are sent, while the server is still storing them.
async fn copy_rows<'r, const N: usize, T>(
    tx: &tokio_postgres::Transaction<'_>,
    copy: &tokio_postgres::Statement,
    types: &[Type; N],
    rows: impl Iterator<Item = [&'r (dyn ToSql + Sync + 'r); N]>,
    meanwhile: impl FnOnce() -> T,
) -> Result<T, CopyFailed> {
    let sink = tx.copy_in::<_, bytes::Bytes>(copy).await?;
    let mut sink = std::pin::pin!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + 8192);
    // Signature, flags, header extension length.
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0);
    buf.put_i32(0);
    for row in rows {
        buf.put_i16(N as i16);
        for (column, (value, ty)) in row.iter().zip(types).enumerate() {
            let at = buf.len();
            buf.put_i32(0);
            let length = match value.to_sql_checked(ty, &mut buf) {
                Ok(IsNull::Yes) => -1,
                Ok(IsNull::No) => i32::try_from(buf.len() - at - 4)
                    .map_err(|e| CopyFailed::Encode(column, e.into()))?,
                Err(e) => return Err(CopyFailed::Encode(column, e)),
            };
            buf[at..at + 4].copy_from_slice(&length.to_be_bytes());
        }
        if buf.len() >= COPY_CHUNK {
            sink.send(buf.split().freeze()).await?;
        }
    }
    buf.put_i16(-1);
    sink.send(buf.split().freeze()).await?;
    let done = meanwhile();
    sink.finish().await?;
    Ok(done)
}

/// Binary `COPY` of the new events' identities into `request_keys`, with
/// `meanwhile` run while the server stores them; `None` when one of them
/// is stored already (the transaction is then aborted).
async fn copy_keys<T>(
    tx: &tokio_postgres::Transaction<'_>,
    copy: &tokio_postgres::Statement,
    events: &[&Pending],
    meanwhile: impl FnOnce() -> T,
) -> CoreResult<Option<T>> {
    let rows = events.iter().map(|p| {
        let e = &*p.event;
        let row: [&(dyn ToSql + Sync); 3] = [&e.namespace, &e.request_id, &p.fingerprint];
        row
    });
    let types = [Type::TEXT, Type::TEXT, Type::INT8];
    match copy_rows(tx, copy, &types, rows, meanwhile).await {
        Ok(done) => Ok(Some(done)),
        Err(CopyFailed::Database(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The values of an event's row that are not fields of the event.
struct Computed<'e> {
    counters: [i64; 7],
    cost: Option<i64>,
    priced: bool,
    position: Option<i64>,
    digest: Option<&'e [u8]>,
}

/// Binary `COPY` of the new events, with their chain positions and digests
/// (`links`, none when the chain is left out), straight into `usage_events`.
async fn copy_events(
    tx: &tokio_postgres::Transaction<'_>,
    copy: &tokio_postgres::Statement,
    events: &[&Pending],
    links: &[Option<(i64, Digest)>],
) -> CoreResult<()> {
    let big = |v: u64| v.min(i64::MAX as u64) as i64;
    // The values computed here, owned for the rows that borrow them.
    let computed: Vec<Computed> = events
        .iter()
        .zip(links)
        .map(|(p, link)| {
            let e = &*p.event;
            Computed {
                counters: counters(e).map(big),
                cost: e.cost_nanos.or(p.priced).map(big),
                priced: p.priced.is_some(),
                position: link.map(|l| l.0),
                digest: link.as_ref().map(|l| &l.1[..]),
            }
        })
        .collect();
    let rows = events.iter().zip(&computed).map(|(p, c)| {
        let e = &*p.event;
        let n = &c.counters;
        let row: [&(dyn ToSql + Sync); 23] = [
            &e.namespace,
            &e.request_id,
            &e.timestamp_us,
            &e.agent_id,
            &e.consumer_id,
            &e.task_id,
            &e.action,
            &e.model,
            &n[0],
            &n[1],
            &n[2],
            &n[3],
            &n[4],
            &n[5],
            &n[6],
            &c.cost,
            &e.source,
            &e.metadata,
            &p.fingerprint,
            &c.priced,
            &e.artifact_digest,
            &c.position,
            &c.digest,
        ];
        row
    });
    copy_rows(tx, copy, &EVENT_TYPES, rows, || ()).await?;
    Ok(())
}
