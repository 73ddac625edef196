//! The one writer: a background thread that owns the write connection and
//! commits queued events in batched transactions.
//!
//! `record` queues and returns; the writer drains whatever is queued (up to
//! `MAX_GROUP` events) into one transaction, so throughput grows with load.
//! Events nobody waits on also wait up to `GROUP_LINGER` for others to join
//! their transaction: a commit costs far more than an insert, and a steady
//! trickle (one event per HTTP request) would otherwise commit one by one.
//! An event waits at most for the transaction in progress plus its own.
//! The queue is bounded: a full queue makes `record` wait, it never drops.
//!
//! Failures are classified (`faults::classify`). One that may pass (busy,
//! locked, I/O, a full disk) is rolled back, logged, counted and retried with
//! backoff while the events stay queued. One that retrying cannot fix
//! (corrupt pages, a table missing, a read-only file) stops writes: every
//! acknowledged event still queued goes to the spill file, recorded on the
//! next open, and every later write fails at once with a `StoreError`.
//! Callers that wait (flush, batches, purge) wait at most until their deadline.

use super::faults::{self, Fault};
use super::insert::{Inserter, Outcome};
use super::rollup;
use super::schema::{open_writer, BUSY_TIMEOUT};
use super::LogSink;
use crate::error::{CoreError, CoreResult};
use crate::ledger::event::UsageEvent;
use crate::pricing::Pricing;
use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most events committed in one transaction.
pub const MAX_GROUP: usize = 10_000;
/// How long queued events that no caller waits on gather before they commit
/// (a flush, a batch, a commit-durability record or a full group ends it).
pub const GROUP_LINGER: Duration = Duration::from_millis(10);
/// While gathering, how often the PostgreSQL writer looks for a flush or a
/// caller who waits (the SQLite writer is woken by them instead).
pub const LINGER_NAP: Duration = Duration::from_millis(1);
/// Capacity of the queue between callers and the writer.
pub const QUEUE_CAPACITY: usize = 100_000;
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the writer waits on another process's lock per attempt; it then
/// retries on its own, so a closing store is not held up for long.
const WRITE_BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// Quiet time after writes before the writer checkpoints the log.
const IDLE_CHECKPOINT: Duration = Duration::from_millis(500);
/// Events per transaction while the disk is short of space: small enough
/// that the log a transaction adds always fits in the reserve.
const TIGHT_GROUP: usize = 64;

type Reply<T> = SyncSender<CoreResult<T>>;
/// When a waiting caller stops waiting (`None`: until done).
pub(crate) type Deadline = Option<Instant>;

/// Maintenance work run on the write connection, in order with writes.
pub type WriteJob = Box<dyn FnOnce(&mut Connection) -> CoreResult<usize> + Send>;

pub(crate) enum Command {
    Record(Arc<UsageEvent>, Option<Reply<Outcome>>),
    Batch(Vec<Arc<UsageEvent>>, Deadline, Reply<usize>),
    Flush(Reply<()>),
    Purge(i64, Deadline, Reply<usize>),
    /// Runs SQL on the write connection (maintenance such as re-pricing).
    Exec(WriteJob, Reply<usize>),
}

/// Counters shared with `stats()`.
#[derive(Default)]
pub struct Counters {
    pub queued: AtomicU64,
    pub inserted: AtomicU64,
    pub duplicates: AtomicU64,
    pub conflicts: AtomicU64,
    pub write_errors: AtomicU64,
    /// The latest failure, cleared by the next write that succeeds.
    pub last_error: Mutex<Option<String>>,
    /// Why writes stopped, after a failure retrying cannot fix.
    pub stopped: Mutex<Option<String>>,
    /// Acknowledged events written to the spill file instead of the database.
    pub spilled: AtomicU64,
    /// Acknowledged events that could be written neither to the database nor to the spill file.
    pub lost: AtomicU64,
}

pub(crate) struct Writer {
    tx: Mutex<Option<SyncSender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, woken when a command that someone waits on is queued.
    wake: std::thread::Thread,
    pub(crate) counters: Arc<Counters>,
    closing: Arc<AtomicBool>,
    /// Set only by the benchmark that measures what the hash chain costs.
    unchained: Arc<AtomicBool>,
}

pub(crate) fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn closed() -> CoreError {
    CoreError::Store("the store is closed".into())
}

fn stopped_message(reason: &str) -> String {
    format!("the store stopped accepting writes: {reason}")
}

/// Sends, waiting for room in the queue at most until `deadline`.
fn send_until(tx: &SyncSender<Command>, command: Command, deadline: Deadline) -> Result<(), bool> {
    let Some(deadline) = deadline else {
        return tx.send(command).map_err(|_| false);
    };
    let mut command = command;
    loop {
        match tx.try_send(command) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                command = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TrySendError::Full(_)) => return Err(true),
            Err(TrySendError::Disconnected(_)) => return Err(false),
        }
    }
}

impl Writer {
    /// Opens the write connection (creating and migrating the database),
    /// records what an earlier run spilled, and starts the thread.
    pub(crate) fn start(
        path: PathBuf,
        synchronous_full: bool,
        retention_us: Option<i64>,
        now_us: Arc<dyn Fn() -> i64 + Send + Sync>,
        log: LogSink,
        pricing: Option<Arc<Pricing>>,
    ) -> CoreResult<Writer> {
        let cannot_open =
            |e: CoreError| CoreError::Store(format!("cannot open {}: {e}", path.display()));
        let mut conn = open_writer(&path, synchronous_full).map_err(cannot_open)?;
        let counters = Arc::new(Counters::default());
        replay_spill(&mut conn, &path, &log, pricing.as_deref(), &counters).map_err(cannot_open)?;
        conn.busy_timeout(WRITE_BUSY_TIMEOUT)?;
        let short_of_space = faults::ensure_reserve(&path).is_err();
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let closing = Arc::new(AtomicBool::new(false));
        let unchained = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            conn,
            path,
            counters: counters.clone(),
            closing: closing.clone(),
            unchained: unchained.clone(),
            log,
            retention_us,
            now_us,
            pricing,
            unchecked_writes: false,
            short_of_space,
        };
        let thread = std::thread::Builder::new()
            .name("usagewarden-writer".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| CoreError::Store(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            tx: Mutex::new(Some(tx)),
            wake: thread.thread().clone(),
            thread: Mutex::new(Some(thread)),
            counters,
            closing,
            unchained,
        })
    }

    fn stopped_error(&self) -> CoreError {
        match self.counters.stopped.lock().as_deref() {
            Some(reason) => CoreError::Store(stopped_message(reason)),
            None => CoreError::Store("the writer has stopped".into()),
        }
    }

    fn timed_out(&self, what: &str) -> CoreError {
        let last = self.counters.last_error.lock().clone();
        let queued = self.counters.queued.load(Ordering::SeqCst);
        CoreError::Store(format!(
            "{what} did not finish in time: {queued} events still queued (kept, not dropped); last error: {}",
            last.as_deref().unwrap_or("none")
        ))
    }

    /// The queue, unless the store is closed or has stopped accepting writes.
    fn sender(&self) -> CoreResult<SyncSender<Command>> {
        let tx = self.tx.lock().clone().ok_or_else(closed)?;
        if self.counters.stopped.lock().is_some() {
            return Err(self.stopped_error());
        }
        Ok(tx)
    }

    fn send(&self, what: &str, command: Command, deadline: Deadline) -> CoreResult<()> {
        // Events nobody waits on join the group gathering; anything else ends it now.
        let awaited = !matches!(command, Command::Record(_, None));
        send_until(&self.sender()?, command, deadline).map_err(|timed_out| {
            if timed_out {
                self.timed_out(what)
            } else {
                self.stopped_error()
            }
        })?;
        if awaited {
            self.wake.unpark();
        }
        Ok(())
    }

    fn wait<T>(
        &self,
        what: &str,
        deadline: Deadline,
        answer: Receiver<CoreResult<T>>,
    ) -> CoreResult<T> {
        let received = match deadline {
            None => answer.recv().map_err(|_| self.stopped_error()),
            Some(at) => answer
                .recv_timeout(at.saturating_duration_since(Instant::now()))
                .map_err(|e| match e {
                    RecvTimeoutError::Timeout => self.timed_out(what),
                    RecvTimeoutError::Disconnected => self.stopped_error(),
                }),
        };
        received?
    }

    fn call<T>(
        &self,
        what: &str,
        deadline: Deadline,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> CoreResult<T> {
        let (reply, answer) = sync_channel(1);
        self.send(what, make(reply), deadline)?;
        self.wait(what, deadline, answer)
    }

    /// Queues one event if the queue has room now; gives it back if not.
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub(crate) fn try_record(&self, event: Arc<UsageEvent>) -> CoreResult<Option<Arc<UsageEvent>>> {
        let tx = self.sender()?;
        self.counters.queued.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(Command::Record(event, None)) {
            Ok(()) => Ok(None),
            Err(e) => {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                match e {
                    TrySendError::Full(Command::Record(event, _)) => Ok(Some(event)),
                    _ => Err(self.stopped_error()),
                }
            }
        }
    }

    /// Queues one event. With `wait`, returns after its transaction committed.
    pub(crate) fn record(&self, event: Arc<UsageEvent>, wait: bool) -> CoreResult<Option<Outcome>> {
        self.counters.queued.fetch_add(1, Ordering::SeqCst);
        let (reply, answer) = if wait {
            let (reply, answer) = sync_channel(1);
            (Some(reply), Some(answer))
        } else {
            (None, None)
        };
        // Once queued, the writer accounts for the event whatever happens.
        if let Err(e) = self.send("record", Command::Record(event, reply), None) {
            self.counters.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        match answer {
            Some(answer) => self.wait("record", None, answer).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn record_batch(
        &self,
        events: Vec<Arc<UsageEvent>>,
        deadline: Deadline,
    ) -> CoreResult<usize> {
        self.call("record_batch", deadline, |reply| {
            Command::Batch(events, deadline, reply)
        })
    }

    /// Returns once everything queued before it is committed, or raises at
    /// `deadline` with the events still queued.
    pub(crate) fn flush(&self, deadline: Deadline) -> CoreResult<()> {
        self.call("flush", deadline, Command::Flush)
    }

    pub(crate) fn purge(&self, cutoff_us: i64, deadline: Deadline) -> CoreResult<usize> {
        self.call("purge", deadline, |reply| {
            Command::Purge(cutoff_us, deadline, reply)
        })
    }

    pub(crate) fn exec(&self, work: WriteJob) -> CoreResult<usize> {
        self.call("maintenance", None, |reply| Command::Exec(work, reply))
    }

    /// Commits what is queued and stops the thread. A database that keeps
    /// failing is given until `grace`; the events it has not taken by then
    /// go to the spill file. Errs only when acknowledged events were lost
    /// (the spill file could not be written either).
    pub(crate) fn close(&self, grace: Duration) -> CoreResult<()> {
        let Some(tx) = self.tx.lock().take() else {
            return Ok(());
        };
        let deadline = Some(Instant::now() + grace);
        let (reply, answer) = sync_channel(1);
        if send_until(&tx, Command::Flush(reply), deadline).is_ok() {
            self.wake.unpark();
            let _ = self.wait("close", deadline, answer);
        }
        // From here the writer stops retrying and spills what it cannot commit.
        self.closing.store(true, Ordering::SeqCst);
        drop(tx);
        self.wake.unpark();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
        match self.counters.lost.load(Ordering::SeqCst) {
            0 => Ok(()),
            lost => Err(CoreError::Store(format!(
                "{lost} acknowledged events could not be written to the database nor to the spill file; last error: {}",
                self.counters.last_error.lock().as_deref().unwrap_or("none")
            ))),
        }
    }

    /// Leaves the hash chain out of what is written from now on (see
    /// `SqliteStore::unchained_for_benchmark`).
    pub(crate) fn unchain_for_benchmark(&self) {
        self.unchained.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.lock().is_none()
    }
}

/// Records the events an earlier run spilled, in one transaction, then
/// removes the file. Replaying twice is harmless: a request id already
/// stored with the same content is a duplicate.
fn replay_spill(
    conn: &mut Connection,
    path: &Path,
    log: &LogSink,
    pricing: Option<&Pricing>,
    counters: &Counters,
) -> CoreResult<()> {
    let spill = faults::spill_path(path);
    let read = faults::read_spill(path)
        .map_err(|e| CoreError::Store(format!("cannot read {}: {e}", spill.display())))?;
    let Some((events, unreadable)) = read else {
        return Ok(());
    };
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut inserter = Inserter::with_pricing(&tx, pricing)?;
    let (mut inserted, mut conflicts) = (0, 0);
    for event in &events {
        match inserter.insert(event)? {
            Outcome::Inserted => inserted += 1,
            Outcome::Duplicate => {}
            Outcome::Conflict => conflicts += 1,
        }
    }
    inserter.finish()?;
    tx.commit()?;
    std::fs::remove_file(&spill)
        .map_err(|e| CoreError::Store(format!("cannot remove {}: {e}", spill.display())))?;
    counters.inserted.fetch_add(inserted, Ordering::SeqCst);
    log(
        LogLevel::Warning,
        &format!(
            "recorded {inserted} events from {} ({} already stored, {conflicts} conflicting, {unreadable} unreadable lines)",
            spill.display(),
            events.len() as u64 - inserted - conflicts
        ),
    );
    Ok(())
}

/// The inserter of a write transaction: with the hash chain, unless the
/// chain benchmark turned it off.
fn inserter<'c>(
    tx: &'c Connection,
    pricing: Option<&'c Pricing>,
    unchained: &AtomicBool,
) -> rusqlite::Result<Inserter<'c>> {
    let inserter = Inserter::with_pricing(tx, pricing)?;
    Ok(if unchained.load(Ordering::Relaxed) {
        inserter.unchained_for_benchmark()
    } else {
        inserter
    })
}

struct Worker {
    conn: Connection,
    path: PathBuf,
    counters: Arc<Counters>,
    closing: Arc<AtomicBool>,
    unchained: Arc<AtomicBool>,
    log: LogSink,
    retention_us: Option<i64>,
    now_us: Arc<dyn Fn() -> i64 + Send + Sync>,
    pricing: Option<Arc<Pricing>>,
    /// Commits since the last checkpoint.
    unchecked_writes: bool,
    /// The disk filled up and has not had plenty of room since. Meanwhile
    /// records commit in small transactions, each followed by a `TRUNCATE`
    /// checkpoint: a large one would leave a log that, beside the grown
    /// database, no longer fits, and could then never be checkpointed.
    short_of_space: bool,
}

type Records = Vec<(Arc<UsageEvent>, Option<Reply<Outcome>>)>;

impl Worker {
    fn run(&mut self, rx: Receiver<Command>) {
        let purge_every = self
            .retention_us
            .map(|r| Duration::from_micros((r / 10).clamp(1_000_000, 3_600_000_000) as u64));
        let mut next_purge = purge_every.map(|p| Instant::now() + p);
        loop {
            let mut wait = next_purge
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            if self.unchecked_writes {
                wait = wait.min(IDLE_CHECKPOINT);
            }
            let first = match rx.recv_timeout(wait) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    if self.unchecked_writes {
                        let _ = self.checkpoint("PASSIVE");
                        let _ = faults::ensure_reserve(&self.path);
                    }
                    if let (Some(at), Some(every), Some(retention)) =
                        (next_purge, purge_every, self.retention_us)
                    {
                        if Instant::now() >= at {
                            let cutoff = (self.now_us)().saturating_sub(retention);
                            let _ = self.retry("scheduled purge", None, |w| w.purge(cutoff));
                            next_purge = Some(Instant::now() + every);
                        }
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.checkpoint("TRUNCATE");
                    return;
                }
            };
            let mut records = Vec::new();
            let mut pending = Some(first);
            let linger_until = Instant::now() + GROUP_LINGER;
            let mut lingering = true;
            loop {
                let command = match pending.take() {
                    Some(command) => command,
                    None if lingering && !records.is_empty() && records.len() < MAX_GROUP => {
                        // Parks rather than waits on the queue: a wait would wake
                        // (two context switches) for every event that joins.
                        // A command someone waits on unparks it at once.
                        let left = linger_until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        std::thread::park_timeout(left);
                        match rx.try_recv() {
                            Ok(command) => command,
                            Err(TryRecvError::Empty) => continue,
                            // Seen (and handled) by the next wait.
                            Err(TryRecvError::Disconnected) => break,
                        }
                    }
                    None => break,
                };
                match command {
                    Command::Record(event, reply) => {
                        // Someone waits for this commit: no more gathering.
                        lingering &= reply.is_none();
                        records.push((event, reply));
                        if records.len() < MAX_GROUP {
                            pending = rx.try_recv().ok();
                        }
                    }
                    other => {
                        // Keep order: commit the records queued before it first.
                        self.commit_records(std::mem::take(&mut records));
                        self.handle(other);
                        lingering = false;
                        pending = rx.try_recv().ok();
                    }
                }
            }
            self.commit_records(records);
        }
    }

    /// Moves the log into the database. `TRUNCATE` (on close) also empties
    /// the `-wal` file; `PASSIVE` (when idle) never waits on readers.
    fn checkpoint(&mut self, mode: &str) -> bool {
        if self.counters.stopped.lock().is_some() {
            return false;
        }
        let done = self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                r.get::<_, i64>(0)
            });
        if done == Ok(0) {
            self.unchecked_writes = false;
        }
        done == Ok(0)
    }

    fn stop_error(&self) -> CoreError {
        match self.counters.stopped.lock().as_deref() {
            Some(reason) => CoreError::Store(stopped_message(reason)),
            None => CoreError::Store(format!(
                "the store was closed while the database kept failing: {}",
                self.counters
                    .last_error
                    .lock()
                    .as_deref()
                    .unwrap_or("unknown error")
            )),
        }
    }

    fn handle(&mut self, command: Command) {
        if self.counters.stopped.lock().is_some() {
            let refused = self.stop_error();
            match command {
                Command::Record(..) => unreachable!("records are grouped by run"),
                Command::Flush(reply) => {
                    let _ = reply.send(Err(refused));
                }
                Command::Batch(_, _, reply)
                | Command::Purge(_, _, reply)
                | Command::Exec(_, reply) => {
                    let _ = reply.send(Err(refused));
                }
            }
            return;
        }
        match command {
            Command::Record(..) => unreachable!("records are grouped by run"),
            Command::Flush(reply) => {
                let _ = reply.send(Ok(()));
            }
            Command::Batch(events, deadline, reply) => {
                let result = self.retry("record_batch", deadline, |w| w.batch(&events));
                let _ = reply.send(result);
            }
            Command::Purge(cutoff, deadline, reply) => {
                let result = self.retry("purge", deadline, |w| w.purge(cutoff));
                let _ = reply.send(result);
            }
            Command::Exec(work, reply) => {
                let _ = reply.send(work(&mut self.conn));
            }
        }
    }

    /// Runs `op` until it succeeds, backing off between attempts that may
    /// pass. Gives up on a failure retrying cannot fix (and stops writes),
    /// at `deadline` (a caller that stopped waiting is told nothing was
    /// written) and when the store is closing.
    fn retry<T>(
        &mut self,
        what: &str,
        deadline: Deadline,
        mut op: impl FnMut(&mut Self) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let mut backoff = Duration::from_millis(10);
        let past = |deadline: Deadline| deadline.is_some_and(|at| Instant::now() >= at);
        if past(deadline) {
            return Err(CoreError::Store(format!(
                "{what} was not started: its caller stopped waiting"
            )));
        }
        let mut busy_since: Option<Instant> = None;
        loop {
            let e = match op(self) {
                Err(CoreError::Sqlite(e)) => e,
                other => {
                    if other.is_ok() {
                        self.unchecked_writes = true;
                        *self.counters.last_error.lock() = None;
                    }
                    return other;
                }
            };
            // Another process holding the lock for a while is not a failure
            // (each attempt waits `WRITE_BUSY_TIMEOUT`): reported only when
            // it lasts longer than a connection's own busy timeout would.
            let waited_out = busy(&e) && {
                let since = *busy_since.get_or_insert_with(Instant::now);
                since.elapsed() < BUSY_TIMEOUT
            };
            if !waited_out {
                self.failed(what, &e);
            }
            if faults::classify(&e) == Fault::Permanent {
                self.stop(what, &e);
                return Err(self.stop_error());
            }
            if faults::is_disk_full(&e) {
                self.short_of_space = true;
                self.make_room();
            }
            if self.closing.load(Ordering::SeqCst) {
                return Err(self.stop_error());
            }
            if past(deadline) {
                return Err(CoreError::Store(format!(
                    "{what} failed and was given up at its deadline: {e}"
                )));
            }
            if !busy(&e) {
                self.pause(backoff, deadline);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Sleeps up to `backoff`, waking early when the store closes or the deadline passes.
    fn pause(&self, backoff: Duration, deadline: Deadline) {
        let until = Instant::now() + backoff;
        let until = deadline.map_or(until, |d| d.min(until));
        while Instant::now() < until && !self.closing.load(Ordering::SeqCst) {
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(10)),
            );
        }
    }

    /// A full disk: free the reserve and move the log into the database, so
    /// that the space the log held can be reused.
    fn make_room(&mut self) {
        if faults::release_reserve(&self.path) {
            (self.log)(
                LogLevel::Warning,
                "the disk is full: released the reserve to checkpoint the log",
            );
        }
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
    }

    fn failed(&self, what: &str, e: &rusqlite::Error) {
        self.counters.write_errors.fetch_add(1, Ordering::SeqCst);
        let message = format!("{what} failed: {e}");
        (self.log)(LogLevel::Warning, &message);
        *self.counters.last_error.lock() = Some(message);
    }

    fn stop(&self, what: &str, e: &rusqlite::Error) {
        let reason = format!(
            "{what} failed with an error retrying cannot fix ({e}); reopen the store once the database at {} is repaired",
            self.path.display()
        );
        (self.log)(LogLevel::Error, &stopped_message(&reason));
        *self.counters.stopped.lock() = Some(reason);
    }

    fn commit_records(&mut self, records: Records) {
        if records.is_empty() {
            return;
        }
        let mut outcomes = Vec::with_capacity(records.len());
        let committed = if self.counters.stopped.lock().is_some() {
            Err(self.stop_error())
        } else {
            self.retry("record", None, |w| w.insert_groups(&records, &mut outcomes))
        };
        let mut records = records;
        let failed = match committed {
            Ok(()) => None,
            Err(e) => Some((records.split_off(outcomes.len()), e)),
        };
        self.acknowledge(records, outcomes);
        if let Some((rest, e)) = failed {
            self.refuse(rest, &e);
        }
    }

    /// Tells the callers of committed records what became of them.
    fn acknowledge(&mut self, records: Records, outcomes: Vec<Outcome>) {
        if records.is_empty() {
            return;
        }
        // Counters move before anyone is told the records committed.
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
        c.queued.fetch_sub(records.len() as u64, Ordering::SeqCst);
        for ((_, reply), outcome) in records.into_iter().zip(outcomes) {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(outcome));
            }
        }
    }

    /// Commits the records not yet in `outcomes`: in one transaction, or in
    /// small ones while the disk is short of space. `outcomes` keeps what
    /// committed, so a retry goes on from there.
    fn insert_groups(&mut self, records: &Records, outcomes: &mut Vec<Outcome>) -> CoreResult<()> {
        while outcomes.len() < records.len() {
            let start = outcomes.len();
            let group = if self.short_of_space {
                TIGHT_GROUP
            } else {
                records.len()
            };
            let end = (start + group).min(records.len());
            let committed = self.insert_group(&records[start..end])?;
            outcomes.extend(committed);
            if self.short_of_space {
                self.after_tight_commit();
            }
        }
        Ok(())
    }

    /// Empties the log, takes the reserve back once there is room beside it, and
    /// returns to full-size transactions once the disk has plenty of room
    /// (the reserve alone coming back is not enough: the next large
    /// transaction would fill the disk again).
    fn after_tight_commit(&mut self) {
        if !self.checkpoint("TRUNCATE") {
            return;
        }
        let free = faults::available_space(&self.path);
        // With barely the reserve's size free, the room goes to the events.
        if free.is_some_and(|f| f < 2 * faults::RESERVE_BYTES as u64)
            || faults::ensure_reserve(&self.path).is_err()
        {
            return;
        }
        if free.is_none_or(|f| f >= faults::ROOMY_BYTES) {
            self.short_of_space = false;
            (self.log)(
                LogLevel::Warning,
                "the disk has room again: back to full-size transactions",
            );
        }
    }

    fn insert_group(
        &mut self,
        records: &[(Arc<UsageEvent>, Option<Reply<Outcome>>)],
    ) -> CoreResult<Vec<Outcome>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserter = inserter(&tx, self.pricing.as_deref(), &self.unchained)?;
        let outcomes = records
            .iter()
            .map(|(event, _)| inserter.insert(event))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        inserter.finish()?;
        tx.commit()?;
        Ok(outcomes)
    }

    /// Records the database did not take: callers waiting on them get the
    /// error; acknowledged ones (nobody waiting) go to the spill file.
    fn refuse(&mut self, records: Records, error: &CoreError) {
        let n = records.len() as u64;
        let mut acknowledged = Vec::new();
        for (event, reply) in records {
            match reply {
                Some(reply) => {
                    let _ = reply.send(Err(CoreError::Store(error.to_string())));
                }
                None => acknowledged.push(event),
            }
        }
        if !acknowledged.is_empty() {
            let count = acknowledged.len() as u64;
            match faults::spill(&self.path, &acknowledged) {
                Ok(spill) => {
                    self.counters.spilled.fetch_add(count, Ordering::SeqCst);
                    (self.log)(
                        LogLevel::Error,
                        &format!(
                            "{count} acknowledged events could not be committed ({error}); saved to {}, recorded when the store is next opened",
                            spill.display()
                        ),
                    );
                }
                Err(e) => {
                    self.counters.lost.fetch_add(count, Ordering::SeqCst);
                    (self.log)(
                        LogLevel::Error,
                        &format!("{count} acknowledged events were lost: the database failed ({error}) and so did the spill file ({e})"),
                    );
                }
            }
        }
        self.counters.queued.fetch_sub(n, Ordering::SeqCst);
    }

    /// One transaction for the whole batch: all or nothing.
    fn batch(&mut self, events: &[Arc<UsageEvent>]) -> CoreResult<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserted = 0;
        let mut duplicates = 0;
        let mut inserter = inserter(&tx, self.pricing.as_deref(), &self.unchained)?;
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

    fn purge(&mut self, cutoff_us: i64) -> CoreResult<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let removed = super::chain::record_purges(&tx, cutoff_us, (self.now_us)())?;
        let deleted = tx
            .prepare_cached("DELETE FROM usage_events WHERE ts < ?1")?
            .execute([cutoff_us])?;
        for (namespace, through) in removed {
            super::chain_blocks::forget_emptied(&tx, &namespace, through)?;
        }
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
