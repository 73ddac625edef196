//! The embedded SQLite ledger: one background writer, pooled readers.

mod budgets;
mod calendar;
mod chain;
mod chain_blocks;
mod coarse;
mod faults;
mod grouped;
mod insert;
mod models;
mod pairs;
mod presence;
mod read;
mod reprice;
mod rollup;
mod schema;
mod timeline;
mod writer;

pub use faults::spill_path;
pub use insert::{Inserter, Outcome};
pub use read::Aggregate;
pub use rollup::add as add_totals;
pub use schema::SCHEMA_VERSION;
pub use writer::{
    Counters, LogLevel, WriteJob, GROUP_LINGER, LINGER_NAP, MAX_GROUP, QUEUE_CAPACITY,
};

use crate::clock::Clock;
use crate::error::{CoreError, CoreResult};
use crate::ledger::buckets::{parse_tz, GroupBy};
use crate::ledger::chain_source;
use crate::ledger::chain_verify::{Checkpoint, PositionRange, Receipt, VerifyReport};
use crate::ledger::cursor::Cursor;
use crate::ledger::event::UsageEvent;
use crate::ledger::export::{write_events, Format};
use crate::ledger::filters::Filters;
use crate::ledger::page_end::{self, PageRead, COUNT_PAST_OFFSET};
use crate::pricing::Pricing;
use parking_lot::Mutex;
use rusqlite::{params_from_iter, Connection};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use writer::Writer;

/// Where the writer reports failures (the bindings forward to Python logging).
pub type LogSink = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `record` returns once the event is queued; it commits within one
    /// writer transaction (milliseconds under load).
    Batch,
    /// `record` returns after the event's transaction committed (fsync'd).
    Commit,
}

impl Durability {
    pub fn parse(name: &str) -> CoreResult<Durability> {
        match name {
            "batch" => Ok(Durability::Batch),
            "commit" => Ok(Durability::Commit),
            other => Err(CoreError::InvalidArgument(
                "durability",
                format!("must be \"batch\" or \"commit\", got {other:?}"),
            )),
        }
    }
}

pub struct StoreOptions {
    pub path: PathBuf,
    pub retention_us: Option<i64>,
    pub durability: Durability,
    pub clock: Arc<dyn Clock>,
    pub log: LogSink,
    /// Fills the cost of events recorded without one.
    pub pricing: Option<Arc<Pricing>>,
}

/// What `stats()` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub events: u64,
    pub oldest_us: Option<i64>,
    pub newest_us: Option<i64>,
    pub retention_us: Option<i64>,
    /// Events recorded since the store was opened (this process).
    pub inserted: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    /// Queued but not yet committed.
    pub queued: u64,
    /// Failed write attempts (each is retried).
    pub write_errors: u64,
    pub last_error: Option<String>,
    /// Database file plus its write-ahead log, in bytes.
    pub size_bytes: u64,
}

/// Threads `verify` reads and hashes a large ledger on.
const MAX_VERIFY_THREADS: usize = 4;

pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    durability: Durability,
    retention_us: Option<i64>,
    clock: Arc<dyn Clock>,
}

/// Busy reads are retried this many times (each after the busy timeout).
const READ_RETRIES: u64 = 5;

/// How long `close` keeps retrying a failing database before it spills
/// what is still queued.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

impl SqliteStore {
    pub fn open(options: StoreOptions) -> CoreResult<SqliteStore> {
        if let Some(r) = options.retention_us {
            if r <= 0 {
                return Err(CoreError::InvalidArgument(
                    "retention_seconds",
                    "must be positive".into(),
                ));
            }
        }
        let clock = options.clock.clone();
        let now_us: Arc<dyn Fn() -> i64 + Send + Sync> =
            Arc::new(move || (clock.now() / 1_000) as i64);
        let writer = Writer::start(
            options.path.clone(),
            options.durability == Durability::Commit,
            options.retention_us,
            now_us,
            options.log,
            options.pricing.clone(),
        )?;
        Ok(SqliteStore {
            path: options.path,
            writer,
            readers: Mutex::new(Vec::new()),
            durability: options.durability,
            retention_us: options.retention_us,
            clock: options.clock,
        })
    }

    /// Leaves the hash chain out of what is written from now on: only for
    /// `benchmarks/audit_raw.rs`, which measures what the chain costs. A
    /// ledger written so fails `verify`.
    #[doc(hidden)]
    pub fn unchained_for_benchmark(&self) {
        self.writer.unchain_for_benchmark();
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    pub fn retention_us(&self) -> Option<i64> {
        self.retention_us
    }

    /// Now on the store's clock, in UTC microseconds.
    pub fn now_us(&self) -> i64 {
        (self.clock.now() / 1_000) as i64
    }

    fn open_check(&self) -> CoreResult<()> {
        if self.writer.is_closed() {
            return Err(CoreError::Store("the store is closed".into()));
        }
        Ok(())
    }

    /// Records one event; returns its request id. With `Durability::Commit`
    /// a conflicting duplicate raises `Conflict`; with `Batch` it is counted
    /// in the stats and logged.
    pub fn record(&self, event: impl Into<Arc<UsageEvent>>) -> CoreResult<String> {
        let event = event.into();
        event.validate()?;
        self.record_valid(event)
    }

    /// `record` for an event already validated (a `UsageEvent` from Python
    /// is validated when it is built and is immutable).
    pub(crate) fn record_valid(&self, event: Arc<UsageEvent>) -> CoreResult<String> {
        let request_id = event.request_id.clone();
        let wait = self.durability == Durability::Commit;
        match self.writer.record(event, wait)? {
            Some(Outcome::Conflict) => Err(CoreError::Conflict(format!(
                "request_id {request_id:?} was recorded before with different content"
            ))),
            _ => Ok(request_id),
        }
    }

    /// Queues an already validated event without waiting: `Ok(None)` when
    /// queued, `Ok(Some(event))` handed back when the queue is full. With
    /// `Durability::Batch` the caller then waits in `record_valid`; callers
    /// that must never wait (request metering) count it instead. Whatever
    /// the durability, a queued event is committed by the writer later.
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub(crate) fn try_record_valid(
        &self,
        event: Arc<UsageEvent>,
    ) -> CoreResult<Option<Arc<UsageEvent>>> {
        self.writer.try_record(event)
    }

    /// Records all events in one transaction, or none; returns how many were new.
    pub fn record_batch<E: Into<Arc<UsageEvent>>>(
        &self,
        events: impl IntoIterator<Item = E>,
    ) -> CoreResult<usize> {
        let events: Vec<Arc<UsageEvent>> = events.into_iter().map(Into::into).collect();
        for (i, event) in events.iter().enumerate() {
            event.validate().map_err(|e| match e {
                CoreError::InvalidArgument(field, msg) => {
                    CoreError::InvalidArgument("events", format!("events[{i}].{field}: {msg}"))
                }
                other => other,
            })?;
        }
        self.record_batch_valid(events)
    }

    /// `record_batch` for events already validated.
    pub(crate) fn record_batch_valid(&self, events: Vec<Arc<UsageEvent>>) -> CoreResult<usize> {
        self.record_batch_within(events, None)
    }

    /// `record_batch_valid` that gives up after `timeout` (a failing
    /// database): then nothing of the batch is written.
    pub(crate) fn record_batch_within(
        &self,
        events: Vec<Arc<UsageEvent>>,
        timeout: Option<Duration>,
    ) -> CoreResult<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        self.writer.record_batch(events, deadline(timeout))
    }

    pub fn flush(&self) -> CoreResult<()> {
        self.flush_within(None)
    }

    /// Returns once every event queued before it is committed. With a
    /// `timeout`, errs when it passes (the events stay queued); a store that
    /// stopped accepting writes errs at once.
    pub fn flush_within(&self, timeout: Option<Duration>) -> CoreResult<()> {
        self.open_check()?;
        self.writer.flush(deadline(timeout))
    }

    /// Deletes events older than now − retention (one exactly at the cutoff
    /// stays); returns how many. Without a retention, deletes nothing.
    pub fn purge_expired(&self) -> CoreResult<usize> {
        self.purge_expired_within(None)
    }

    /// `purge_expired` that gives up after `timeout` (a failing database).
    pub fn purge_expired_within(&self, timeout: Option<Duration>) -> CoreResult<usize> {
        self.open_check()?;
        match self.retention_us {
            Some(retention) => self
                .writer
                .purge(self.now_us().saturating_sub(retention), deadline(timeout)),
            None => Ok(0),
        }
    }

    /// Runs maintenance SQL on the write connection, in order with writes.
    pub fn with_writer(&self, work: WriteJob) -> CoreResult<usize> {
        self.open_check()?;
        self.writer.exec(work)
    }

    /// Runs `f` on a pooled read-only connection. A read that finds the
    /// file busy (another process recovering or checkpointing it) is retried,
    /// so "database is locked" does not reach the caller.
    pub fn read<T>(&self, f: impl FnMut(&Connection) -> CoreResult<T>) -> CoreResult<T> {
        self.read_with_retries(READ_RETRIES, f)
    }

    fn read_with_retries<T>(
        &self,
        retries: u64,
        mut f: impl FnMut(&Connection) -> CoreResult<T>,
    ) -> CoreResult<T> {
        self.open_check()?;
        let conn = match self.readers.lock().pop() {
            Some(conn) => conn,
            None => schema::open_reader(&self.path)?,
        };
        let mut attempts = 0;
        let result = loop {
            match f(&conn) {
                Err(CoreError::Sqlite(e)) if writer::busy(&e) && attempts < retries => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(10 * attempts));
                }
                other => break other,
            }
        };
        self.readers.lock().push(conn);
        result
    }

    pub fn query(
        &self,
        filters: &Filters,
        limit: Option<u64>,
        offset: u64,
    ) -> CoreResult<Vec<UsageEvent>> {
        filters.validate()?;
        self.read(|c| read::query(c, filters, limit, offset))
    }

    /// One page of at most `limit` events, skipping `offset`, after `cursor`
    /// (a token from the previous page, made under the same filters), and
    /// the next page's token.
    pub fn page(
        &self,
        filters: &Filters,
        limit: u64,
        offset: u64,
        cursor: Option<&str>,
    ) -> CoreResult<(Vec<UsageEvent>, Option<String>)> {
        let after = Cursor::for_page(filters, limit, cursor)?;
        let (events, next) = if after.is_none() && offset >= COUNT_PAST_OFFSET {
            self.read(|c| {
                // The count and the page from one snapshot.
                let snapshot = c.unchecked_transaction()?;
                let total = grouped::totals_without_distinct(&snapshot, filters)?.events;
                match page_end::choose(total, offset, limit) {
                    PageRead::Empty => Ok((Vec::new(), None)),
                    PageRead::FromStart => read::page(&snapshot, filters, None, limit, offset),
                    PageRead::FromEnd { skip, take, more } => {
                        read::page_from_end(&snapshot, filters, skip, take, more)
                    }
                }
            })?
        } else {
            self.read(|c| read::page(c, filters, after, limit, offset))?
        };
        Ok((events, next.map(|n| n.encode())))
    }

    /// Recomputes the cost of matching events with `pricing`: events recorded
    /// without a cost, and those whose cost a pricing filled in; a cost the
    /// caller gave is kept, and so is the cost of a model `pricing` does not
    /// know. Returns how many events changed.
    pub fn reprice(&self, pricing: Arc<Pricing>, filters: &Filters) -> CoreResult<usize> {
        filters.validate()?;
        let filters = filters.clone();
        self.with_writer(Box::new(move |conn| {
            reprice::reprice(conn, &pricing, &filters)
        }))
    }

    pub fn aggregate(
        &self,
        group_by: &str,
        tz: &str,
        filters: &Filters,
    ) -> CoreResult<Vec<Aggregate>> {
        let group_by = GroupBy::parse(group_by)?;
        parse_tz(tz)?;
        filters.validate()?;
        self.read(|c| read::aggregate(c, group_by, tz, filters))
    }

    /// Totals over the matching events: the whole hours of the range from
    /// the pre-aggregated totals (per namespace and hour, or per group for
    /// filters on agent, consumer, model or action), so that a summary costs
    /// about the same at a million events as at a thousand.
    pub fn summary(&self, filters: &Filters) -> CoreResult<Aggregate> {
        filters.validate()?;
        self.read(|c| {
            if !crate::ledger::rollup_plan::answers(filters) {
                return read::summary(c, filters);
            }
            let mut totals = grouped::totals_without_distinct(c, filters)?;
            if totals.events > 0 {
                let (agents, consumers) = timeline::distinct_counts(c, filters)?;
                totals.unique_agents = agents;
                totals.unique_consumers = consumers;
            }
            Ok(totals)
        })
    }

    /// Distinct agents (`"agent_id"`) or consumers (`"consumer_id"`) with their event counts.
    pub fn distinct(&self, column: &str, filters: &Filters) -> CoreResult<Vec<(String, u64)>> {
        filters.validate()?;
        self.read(|c| grouped::distinct(c, column, filters))
    }

    pub fn stats(&self) -> CoreResult<StoreStats> {
        let (events, oldest_us, newest_us) = self.read(read::extent)?;
        let file_size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let c = &self.writer.counters;
        Ok(StoreStats {
            events,
            oldest_us,
            newest_us,
            retention_us: self.retention_us,
            inserted: c.inserted.load(Ordering::SeqCst),
            duplicates: c.duplicates.load(Ordering::SeqCst),
            conflicts: c.conflicts.load(Ordering::SeqCst),
            queued: c.queued.load(Ordering::SeqCst),
            write_errors: c.write_errors.load(Ordering::SeqCst),
            last_error: c.last_error.lock().clone(),
            size_bytes: file_size(&self.path) + file_size(Path::new(&wal)),
        })
    }

    /// Streams matching events (oldest first, at most `limit`) to `out`.
    pub fn export(
        &self,
        filters: &Filters,
        format: Format,
        limit: Option<u64>,
        out: &mut dyn Write,
    ) -> CoreResult<u64> {
        filters.validate()?;
        // Not retried: rows may already have been written out.
        self.read_with_retries(0, |conn| {
            let (sql, params) = read::select_events(filters, limit, 0);
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(params), read::event_from_row)?;
            write_events(format, rows.map(|r| r.map_err(CoreError::from)), out)
        })
    }

    /// Commits what is queued and stops the writer. Idempotent.
    pub fn close(&self) {
        let _ = self.close_within(CLOSE_GRACE);
    }

    /// Commits what is queued and stops the writer, within `grace`: what a
    /// failing database has not taken by then is spilled (see `spill_path`).
    /// Errs only if acknowledged events could not be kept. Idempotent.
    pub fn close_within(&self, grace: Duration) -> CoreResult<()> {
        let closed = self.writer.close(grace);
        self.readers.lock().clear();
        closed
    }

    /// Recomputes the hash chains (see `MeteringStore::verify`).
    pub fn verify(
        &self,
        namespace: Option<&str>,
        range: PositionRange,
        anchors: &[Checkpoint],
    ) -> CoreResult<VerifyReport> {
        let min = chain_source::PARALLEL_MIN_POSITIONS;
        Ok(self.verify_in_parts(namespace, range, anchors, min)?.0)
    }

    /// `verify`, walked in parts on several readers at once when it has
    /// `min_positions` or more to check; says whether the parts answered.
    pub(crate) fn verify_in_parts(
        &self,
        namespace: Option<&str>,
        range: PositionRange,
        anchors: &[Checkpoint],
        min_positions: i64,
    ) -> CoreResult<(VerifyReport, bool)> {
        range.validate()?;
        let now = self.now_us();
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(2, MAX_VERIFY_THREADS);
        // Each part is walked on a reader of its own (not retried when busy:
        // a part that fails leaves the answer to the one-thread walk).
        let walk_parts = |segments: Vec<chain_source::Segment<'_>>| {
            let mut segments = Some(segments);
            self.read_with_retries(0, |c| {
                chain::walk_segments(c, segments.take().unwrap_or_default(), now)
            })
        };
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            chain_source::verify_in_parallel(
                &mut chain::SqliteChain::new(&tx),
                namespace,
                range,
                anchors,
                now,
                &chain_source::Parts {
                    workers,
                    min_positions,
                    walk: &walk_parts,
                },
            )
        })
    }

    pub fn receipt(&self, request_id: &str, namespace: &str) -> CoreResult<Receipt> {
        self.read(|c| chain_source::receipt(&mut chain::SqliteChain::new(c), namespace, request_id))
    }

    pub fn checkpoint(&self, namespace: &str) -> CoreResult<Checkpoint> {
        let now = self.now_us();
        self.read(|c| chain_source::checkpoint(&mut chain::SqliteChain::new(c), namespace, now))
    }

    /// Events queued but not yet committed.
    pub fn queued(&self) -> u64 {
        self.writer.counters.queued.load(Ordering::SeqCst)
    }

    pub fn is_closed(&self) -> bool {
        self.writer.is_closed()
    }
}

impl crate::ledger::store::MeteringStore for SqliteStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }
    fn durability(&self) -> Durability {
        self.durability
    }
    fn retention_us(&self) -> Option<i64> {
        self.retention_us
    }
    fn is_closed(&self) -> bool {
        SqliteStore::is_closed(self)
    }
    fn queued(&self) -> u64 {
        SqliteStore::queued(self)
    }
    fn record_valid(&self, event: Arc<UsageEvent>) -> CoreResult<String> {
        SqliteStore::record_valid(self, event)
    }
    fn try_record_valid(&self, event: Arc<UsageEvent>) -> CoreResult<Option<Arc<UsageEvent>>> {
        SqliteStore::try_record_valid(self, event)
    }
    fn record_batch_valid(
        &self,
        events: Vec<Arc<UsageEvent>>,
        timeout: Option<Duration>,
    ) -> CoreResult<usize> {
        SqliteStore::record_batch_within(self, events, timeout)
    }
    fn query(
        &self,
        filters: &Filters,
        limit: Option<u64>,
        offset: u64,
    ) -> CoreResult<Vec<UsageEvent>> {
        SqliteStore::query(self, filters, limit, offset)
    }
    fn page(
        &self,
        filters: &Filters,
        limit: u64,
        offset: u64,
        cursor: Option<&str>,
    ) -> CoreResult<(Vec<UsageEvent>, Option<String>)> {
        SqliteStore::page(self, filters, limit, offset, cursor)
    }
    fn aggregate(&self, group_by: &str, tz: &str, filters: &Filters) -> CoreResult<Vec<Aggregate>> {
        SqliteStore::aggregate(self, group_by, tz, filters)
    }
    fn summary(&self, filters: &Filters) -> CoreResult<Aggregate> {
        SqliteStore::summary(self, filters)
    }
    fn distinct(&self, column: &str, filters: &Filters) -> CoreResult<Vec<(String, u64)>> {
        SqliteStore::distinct(self, column, filters)
    }
    fn stats(&self) -> CoreResult<StoreStats> {
        SqliteStore::stats(self)
    }
    fn reprice(&self, pricing: Arc<Pricing>, filters: &Filters) -> CoreResult<usize> {
        SqliteStore::reprice(self, pricing, filters)
    }
    fn purge_expired(&self, timeout: Option<Duration>) -> CoreResult<usize> {
        SqliteStore::purge_expired_within(self, timeout)
    }
    fn export(
        &self,
        filters: &Filters,
        format: Format,
        limit: Option<u64>,
        out: &mut dyn Write,
    ) -> CoreResult<u64> {
        SqliteStore::export(self, filters, format, limit, out)
    }
    fn flush(&self, timeout: Option<Duration>) -> CoreResult<()> {
        SqliteStore::flush_within(self, timeout)
    }
    fn close(&self, grace: Duration) -> CoreResult<()> {
        SqliteStore::close_within(self, grace)
    }
    fn verify(
        &self,
        namespace: Option<&str>,
        range: PositionRange,
        anchors: &[Checkpoint],
    ) -> CoreResult<VerifyReport> {
        SqliteStore::verify(self, namespace, range, anchors)
    }
    fn receipt(&self, request_id: &str, namespace: &str) -> CoreResult<Receipt> {
        SqliteStore::receipt(self, request_id, namespace)
    }
    fn checkpoint(&self, namespace: &str) -> CoreResult<Checkpoint> {
        SqliteStore::checkpoint(self, namespace)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod chain_tests;
#[cfg(test)]
mod tests;
