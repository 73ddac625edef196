//! The one writer: a background thread that owns the write connection and
//! commits queued events in batched transactions.
//!
//! `record` queues and returns; the writer drains whatever is queued (up to
//! `MAX_GROUP` events) into one transaction, so throughput grows with load
//! and an event waits at most for the transaction in progress plus its own.
//! The queue is bounded: a full queue makes `record` wait, it never drops.
//! A failed transaction (locked, disk full, read-only file) is rolled back,
//! logged, counted and retried with backoff; it never reaches the caller.

use super::rollup;
use super::schema::open_writer;
use super::LogSink;
use crate::error::{CoreError, CoreResult};
use crate::ledger::event::UsageEvent;
use crate::pricing::{Pricing, Tokens};
use parking_lot::Mutex;
use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most events committed in one transaction.
pub const MAX_GROUP: usize = 10_000;
/// Capacity of the queue between callers and the writer.
pub const QUEUE_CAPACITY: usize = 100_000;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What happened to one recorded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Inserted,
    /// The same `(namespace, request_id)` with the same content: ignored.
    Duplicate,
    /// The same `(namespace, request_id)` with different content: refused.
    Conflict,
}

type Reply<T> = SyncSender<T>;

/// Maintenance work run on the write connection, in order with writes.
pub type WriteJob = Box<dyn FnOnce(&mut Connection) -> CoreResult<usize> + Send>;

pub(crate) enum Command {
    Record(Arc<UsageEvent>, Option<Reply<Outcome>>),
    Batch(Vec<Arc<UsageEvent>>, Reply<CoreResult<usize>>),
    Flush(Reply<()>),
    Purge(i64, Reply<CoreResult<usize>>),
    /// Runs SQL on the write connection (maintenance such as re-pricing).
    Exec(WriteJob, Reply<CoreResult<usize>>),
}

/// Counters shared with `stats()`.
#[derive(Default)]
pub struct Counters {
    pub queued: AtomicU64,
    pub inserted: AtomicU64,
    pub duplicates: AtomicU64,
    pub conflicts: AtomicU64,
    pub write_errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

pub(crate) struct Writer {
    tx: Mutex<Option<SyncSender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) counters: Arc<Counters>,
    closing: Arc<AtomicBool>,
}

pub(crate) fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

impl Writer {
    /// Opens the write connection (creating and migrating the database) and starts the thread.
    pub(crate) fn start(
        path: PathBuf,
        synchronous_full: bool,
        retention_us: Option<i64>,
        now_us: Arc<dyn Fn() -> i64 + Send + Sync>,
        log: LogSink,
        pricing: Option<Arc<Pricing>>,
    ) -> CoreResult<Writer> {
        let conn = open_writer(&path, synchronous_full)
            .map_err(|e| CoreError::Store(format!("cannot open {}: {e}", path.display())))?;
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let closing = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            conn,
            counters: counters.clone(),
            closing: closing.clone(),
            log,
            retention_us,
            now_us,
            pricing,
        };
        let thread = std::thread::Builder::new()
            .name("usagewarden-writer".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| CoreError::Store(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            counters,
            closing,
        })
    }

    fn send(&self, command: Command) -> CoreResult<()> {
        let tx = self
            .tx
            .lock()
            .clone()
            .ok_or_else(|| CoreError::Store("the store is closed".into()))?;
        // Blocks while the queue is full: events are never dropped.
        tx.send(command)
            .map_err(|_| CoreError::Store("the writer has stopped".into()))
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> CoreResult<T> {
        let (reply, answer) = sync_channel(1);
        self.send(make(reply))?;
        answer
            .recv()
            .map_err(|_| CoreError::Store("the writer has stopped".into()))
    }

    /// Queues one event if the queue has room now; gives it back if not.
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub(crate) fn try_record(&self, event: Arc<UsageEvent>) -> CoreResult<Option<Arc<UsageEvent>>> {
        let tx = self
            .tx
            .lock()
            .clone()
            .ok_or_else(|| CoreError::Store("the store is closed".into()))?;
        self.counters.queued.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(Command::Record(event, None)) {
            Ok(()) => Ok(None),
            Err(e) => {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                match e {
                    TrySendError::Full(Command::Record(event, _)) => Ok(Some(event)),
                    _ => Err(CoreError::Store("the writer has stopped".into())),
                }
            }
        }
    }

    /// Queues one event. With `wait`, returns after its transaction committed.
    pub(crate) fn record(&self, event: Arc<UsageEvent>, wait: bool) -> CoreResult<Option<Outcome>> {
        self.counters.queued.fetch_add(1, Ordering::SeqCst);
        if wait {
            let outcome = self.call(|reply| Command::Record(event, Some(reply)));
            if outcome.is_err() {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            }
            outcome.map(Some)
        } else {
            let sent = self.send(Command::Record(event, None));
            if sent.is_err() {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            }
            sent.map(|_| None)
        }
    }

    pub(crate) fn record_batch(&self, events: Vec<Arc<UsageEvent>>) -> CoreResult<usize> {
        self.call(|reply| Command::Batch(events, reply))?
    }

    /// Returns once everything queued before it is committed.
    pub(crate) fn flush(&self) -> CoreResult<()> {
        self.call(Command::Flush)
    }

    pub(crate) fn purge(&self, cutoff_us: i64) -> CoreResult<usize> {
        self.call(|reply| Command::Purge(cutoff_us, reply))?
    }

    pub(crate) fn exec(&self, work: WriteJob) -> CoreResult<usize> {
        self.call(|reply| Command::Exec(work, reply))?
    }

    /// Drains the queue and stops the thread. A transaction that keeps
    /// failing is given up after `grace`, with an error logged.
    pub(crate) fn close(&self, grace: Duration) {
        let Some(tx) = self.tx.lock().take() else {
            return;
        };
        let deadline = Instant::now() + grace;
        let (reply, answer) = sync_channel(1);
        if tx.send(Command::Flush(reply)).is_ok() {
            let _ = answer.recv_timeout(grace);
        }
        if Instant::now() >= deadline {
            self.closing.store(true, Ordering::SeqCst);
        }
        drop(tx);
        self.closing.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.lock().is_none()
    }
}

struct Worker {
    conn: Connection,
    counters: Arc<Counters>,
    closing: Arc<AtomicBool>,
    log: LogSink,
    retention_us: Option<i64>,
    now_us: Arc<dyn Fn() -> i64 + Send + Sync>,
    pricing: Option<Arc<Pricing>>,
}

/// The statement every event is written with.
const INSERT_SQL: &str = "INSERT INTO usage_events (namespace, request_id, ts, agent_id, consumer_id, task_id, action, model, \
     tokens_in, tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, cost_nanos, source, metadata, fingerprint, cost_priced) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20) \
     ON CONFLICT (namespace, request_id) DO NOTHING";

/// Inserts events inside the caller's transaction, with the statement
/// prepared once per transaction rather than looked up per event. Public so
/// that benchmarks insert exactly as the writer does.
pub struct Inserter<'c> {
    conn: &'c Connection,
    stmt: rusqlite::CachedStatement<'c>,
    hourly: rollup::Pending,
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
        let outcome = insert_with(self.conn, &mut self.stmt, e, priced)?;
        if outcome == Outcome::Inserted {
            self.hourly.add(e, e.cost_nanos.or(priced));
        }
        Ok(outcome)
    }

    /// Adds the new events to the hourly totals; call before committing.
    pub fn finish(mut self) -> rusqlite::Result<()> {
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
) -> rusqlite::Result<Outcome> {
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

impl Worker {
    fn run(&mut self, rx: Receiver<Command>) {
        let purge_every = self
            .retention_us
            .map(|r| Duration::from_micros((r / 10).clamp(1_000_000, 3_600_000_000) as u64));
        let mut next_purge = purge_every.map(|p| Instant::now() + p);
        loop {
            let wait = next_purge
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            let first = match rx.recv_timeout(wait) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    if let (Some(every), Some(retention)) = (purge_every, self.retention_us) {
                        let cutoff = (self.now_us)().saturating_sub(retention);
                        self.retry("scheduled purge", |w| w.purge(cutoff));
                        next_purge = Some(Instant::now() + every);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut records = Vec::new();
            let mut pending = Some(first);
            while let Some(command) = pending.take() {
                match command {
                    Command::Record(event, reply) => {
                        records.push((event, reply));
                        if records.len() < MAX_GROUP {
                            pending = rx.try_recv().ok();
                        }
                    }
                    other => {
                        // Keep order: commit the records queued before it first.
                        self.commit_records(std::mem::take(&mut records));
                        self.handle(other);
                        pending = rx.try_recv().ok();
                    }
                }
            }
            self.commit_records(records);
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Record(..) => unreachable!("records are grouped by run"),
            Command::Flush(reply) => {
                let _ = reply.send(());
            }
            Command::Batch(events, reply) => {
                let result = self.retry_result("record_batch", |w| w.batch(&events));
                let _ = reply.send(result);
            }
            Command::Purge(cutoff, reply) => {
                let result =
                    self.retry_result("purge", |w| w.purge(cutoff).map_err(CoreError::from));
                let _ = reply.send(result);
            }
            Command::Exec(work, reply) => {
                let _ = reply.send(work(&mut self.conn));
            }
        }
    }

    /// Runs `op` until it succeeds (or the store is closing), backing off
    /// between attempts and reporting failures.
    fn retry<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut Self) -> rusqlite::Result<T>,
    ) -> Option<T> {
        let mut backoff = Duration::from_millis(10);
        loop {
            match op(self) {
                Ok(v) => return Some(v),
                Err(e) => {
                    self.failed(what, &e);
                    if self.closing.load(Ordering::SeqCst) {
                        return None;
                    }
                    if !busy(&e) {
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    /// Like `retry`, for operations whose result goes back to a waiting caller.
    fn retry_result<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut Self) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let mut backoff = Duration::from_millis(10);
        loop {
            match op(self) {
                Err(CoreError::Sqlite(e)) => {
                    self.failed(what, &e);
                    if self.closing.load(Ordering::SeqCst) {
                        return Err(CoreError::Store(format!("{what} failed: {e}")));
                    }
                    if !busy(&e) {
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                other => return other,
            }
        }
    }

    fn failed(&self, what: &str, e: &rusqlite::Error) {
        self.counters.write_errors.fetch_add(1, Ordering::SeqCst);
        let message = format!("{what} failed, will retry: {e}");
        (self.log)(LogLevel::Warning, &message);
        *self.counters.last_error.lock() = Some(message);
    }

    fn commit_records(&mut self, records: Vec<(Arc<UsageEvent>, Option<Reply<Outcome>>)>) {
        if records.is_empty() {
            return;
        }
        let outcomes = self.retry("record", |w| {
            let tx = w
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut inserter = Inserter::with_pricing(&tx, w.pricing.as_deref())?;
            let outcomes = records
                .iter()
                .map(|(event, _)| inserter.insert(event))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            inserter.finish()?;
            tx.commit()?;
            Ok(outcomes)
        });
        let n = records.len() as u64;
        let Some(outcomes) = outcomes else {
            let message = format!(
                "gave up writing {n} events: the store was closed while the database kept failing"
            );
            (self.log)(LogLevel::Error, &message);
            *self.counters.last_error.lock() = Some(message);
            self.counters.queued.fetch_sub(n, Ordering::SeqCst);
            return;
        };
        // Counters move once per transaction, before anyone is told it committed.
        let (mut inserted, mut duplicates, mut conflicts) = (0, 0, 0);
        for ((event, reply), outcome) in records.iter().zip(&outcomes) {
            match outcome {
                Outcome::Inserted => inserted += 1,
                Outcome::Duplicate => duplicates += 1,
                Outcome::Conflict => {
                    conflicts += 1;
                    if reply.is_none() {
                        (self.log)(
                            LogLevel::Warning,
                            &format!(
                                "conflict: request_id {:?} in namespace {:?} was recorded before with different content; the new event was not stored",
                                event.request_id, event.namespace
                            ),
                        );
                    }
                }
            }
        }
        let c = &self.counters;
        c.inserted.fetch_add(inserted, Ordering::SeqCst);
        c.duplicates.fetch_add(duplicates, Ordering::SeqCst);
        c.conflicts.fetch_add(conflicts, Ordering::SeqCst);
        c.queued.fetch_sub(n, Ordering::SeqCst);
        for ((_, reply), outcome) in records.into_iter().zip(outcomes) {
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
    }

    /// One transaction for the whole batch: all or nothing.
    fn batch(&mut self, events: &[Arc<UsageEvent>]) -> CoreResult<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserted = 0;
        let mut duplicates = 0;
        let mut inserter = Inserter::with_pricing(&tx, self.pricing.as_deref())?;
        for (index, event) in events.iter().enumerate() {
            match inserter.insert(event)? {
                Outcome::Inserted => inserted += 1,
                Outcome::Duplicate => duplicates += 1,
                Outcome::Conflict => {
                    drop(inserter);
                    drop(tx); // rolls back
                    self.counters.conflicts.fetch_add(1, Ordering::SeqCst);
                    return Err(CoreError::Conflict(format!(
                        "events[{index}]: request_id {:?} in namespace {:?} was recorded before with different content; nothing in the batch was stored",
                        event.request_id, event.namespace
                    )));
                }
            }
        }
        inserter.finish()?;
        tx.commit()?;
        self.counters
            .inserted
            .fetch_add(inserted as u64, Ordering::SeqCst);
        self.counters
            .duplicates
            .fetch_add(duplicates, Ordering::SeqCst);
        Ok(inserted)
    }

    fn purge(&mut self, cutoff_us: i64) -> rusqlite::Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let deleted = tx
            .prepare_cached("DELETE FROM usage_events WHERE ts < ?1")?
            .execute([cutoff_us])?;
        if deleted > 0 {
            rollup::after_purge(&tx, cutoff_us)?;
        }
        tx.commit()?;
        Ok(deleted)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Warning,
    Error,
}
