//! The PostgreSQL ledger: the SQLite store's contract on a database that
//! many hosts write and read. One writer task per store on the shared tokio
//! runtime commits queued events in batches; reads use a small pool.

mod batch_totals;
mod budgets;
mod calendar;
mod chain;
mod coarse;
mod grouped;
mod pairs;
mod read;
mod request_keys;
mod row_security;
mod schema;
mod tls;
mod writer;

pub use schema::{validate_schema, SCHEMA_VERSION};

use crate::clock::Clock;
use crate::error::{CoreError, CoreResult};
use crate::ledger::buckets::{parse_tz, GroupBy};
use crate::ledger::chain_source::{self, ChainSource};
use crate::ledger::chain_verify::{Checkpoint, PositionRange, Receipt, VerifyReport};
use crate::ledger::cursor::Cursor;
use crate::ledger::event::UsageEvent;
use crate::ledger::export::{write_events, Format};
use crate::ledger::filters::Filters;
use crate::ledger::page_end::COUNT_PAST_OFFSET;
use crate::ledger::sqlite::{
    Aggregate, Counters, Durability, LogSink, Outcome, StoreStats, QUEUE_CAPACITY,
};
use crate::ledger::store::{MeteringStore, NamespaceGrants};
use crate::pricing::Pricing;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use parking_lot::Mutex;
use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Config, IsolationLevel};
use tokio_postgres_rustls::MakeRustlsConnect;
use writer::Command;

impl From<tokio_postgres::Error> for CoreError {
    /// The server's message, or the client's with its causes (which say why
    /// a TLS handshake or a connection failed; none holds the password).
    fn from(e: tokio_postgres::Error) -> Self {
        let detail = match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => {
                let mut detail = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(inner) = cause {
                    detail = format!("{detail}: {inner}");
                    cause = inner.source();
                }
                detail
            }
        };
        CoreError::Store(format!("PostgreSQL: {detail}"))
    }
}

impl From<deadpool_postgres::PoolError> for CoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        CoreError::Store(format!("PostgreSQL: {e}"))
    }
}

/// How long a connection attempt may take before it is an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `close` waits for the writer to commit what is queued.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Events read per round trip by `export`.
const EXPORT_CHUNK: u64 = 10_000;

pub struct PostgresOptions {
    /// A libpq connection string or `postgresql://` URL.
    pub dsn: String,
    pub schema: String,
    pub retention_us: Option<i64>,
    pub durability: Durability,
    pub clock: Arc<dyn Clock>,
    pub log: LogSink,
    pub pricing: Option<Arc<Pricing>>,
    /// The runtime the writer task and every query run on.
    pub runtime: Handle,
    /// Every read sets `usagewarden.namespace` to its namespace, for the
    /// row-level security policies (`row_security`).
    pub row_security: bool,
}

/// What the store and its writer task share.
pub(crate) struct Shared {
    config: Config,
    /// TLS as the DSN's `sslmode` and `sslrootcert` ask (`tls`).
    tls: MakeRustlsConnect,
    pub(crate) schema: String,
    pub(crate) counters: Counters,
    pub(crate) closing: AtomicBool,
    pub(crate) log: LogSink,
    pub(crate) pricing: Option<Arc<Pricing>>,
    /// Events are written without the hash chain: only in the benchmark
    /// that measures what the chain costs (`benchmarks/pg_chain_raw.rs`).
    pub(crate) unchained: AtomicBool,
    row_security: bool,
}

impl Shared {
    /// A new connection, its connection task spawned on the current runtime.
    pub(crate) async fn connect(&self) -> CoreResult<Client> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

pub struct PostgresStore {
    shared: Arc<Shared>,
    pool: Pool,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    runtime: Handle,
    durability: Durability,
    retention_us: Option<i64>,
    clock: Arc<dyn Clock>,
    location: String,
    /// The last `(events, oldest, newest, bytes)` read, for `stats` while the server is down.
    last_extent: Mutex<(u64, Option<i64>, Option<i64>, u64)>,
}

/// `postgresql://user@host:port/dbname` (never the password).
fn describe(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgresql://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

impl PostgresStore {
    /// Leaves the hash chain out of what is written from now on: only for
    /// `benchmarks/pg_chain_raw.rs`, which measures what the chain costs. A
    /// ledger written so fails `verify`.
    #[doc(hidden)]
    pub fn unchained_for_benchmark(&self) {
        self.shared.unchained.store(true, Ordering::SeqCst);
    }

    pub fn open(options: PostgresOptions) -> CoreResult<PostgresStore> {
        if let Some(r) = options.retention_us {
            if r <= 0 {
                return Err(CoreError::InvalidArgument(
                    "retention_seconds",
                    "must be positive".into(),
                ));
            }
        }
        validate_schema(&options.schema)?;
        let (dsn, tls_options) = tls::split_dsn(&options.dsn)?;
        let mut config = Config::from_str(&dsn)
            .map_err(|e| CoreError::InvalidArgument("dsn", format!("not a PostgreSQL DSN: {e}")))?;
        let tls = tls::apply(&mut config, &tls_options)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("usagewarden");
        }
        let location = describe(&config);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let runtime = options.runtime;
        let pool = {
            let _guard = runtime.enter();
            Pool::builder(manager)
                .max_size(4)
                .build()
                .map_err(|e| CoreError::Store(format!("PostgreSQL pool: {e}")))?
        };
        let shared = Arc::new(Shared {
            config,
            tls,
            schema: options.schema,
            counters: Counters::default(),
            closing: AtomicBool::new(false),
            log: options.log,
            pricing: options.pricing,
            unchained: AtomicBool::new(false),
            row_security: options.row_security,
        });
        let now_us = (options.clock.now() / 1_000) as i64;
        let migrated = shared.clone();
        runtime.block_on(async move {
            let mut client = migrated.connect().await?;
            schema::migrate(&mut client, &migrated.schema).await?;
            // This month's and the next month's partitions, ahead of need.
            let months: Vec<_> = [now_us, now_us.saturating_add(32 * 86_400_000_000)]
                .into_iter()
                .filter_map(schema::month_of)
                .collect();
            schema::create_partitions(&mut client, &migrated.schema, &months).await
        })?;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = runtime.spawn(writer::Worker::new(shared.clone()).run(rx));
        Ok(PostgresStore {
            shared,
            pool,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            runtime,
            durability: options.durability,
            retention_us: options.retention_us,
            clock: options.clock,
            location,
            last_extent: Mutex::new((0, None, None, 0)),
        })
    }

    fn schema_sql(&self) -> String {
        format!("\"{}\"", self.shared.schema)
    }

    fn sender(&self) -> CoreResult<mpsc::Sender<Command>> {
        self.tx
            .lock()
            .clone()
            .ok_or_else(|| CoreError::Store("the store is closed".into()))
    }

    /// Runs a read on a pooled connection, from outside the runtime.
    fn read<T: Send>(
        &self,
        f: impl AsyncFnOnce(&deadpool_postgres::Client, &str) -> CoreResult<T>,
    ) -> CoreResult<T> {
        self.read_in(None, false, f)
    }

    /// A read of `namespace` (`None`: of every namespace the role may read),
    /// in one REPEATABLE READ snapshot with `snapshot`. With row security the
    /// read runs in a transaction that sets `usagewarden.namespace`.
    fn read_in<T: Send>(
        &self,
        namespace: Option<&str>,
        snapshot: bool,
        f: impl AsyncFnOnce(&deadpool_postgres::Client, &str) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let secured = self.shared.row_security;
        if !(snapshot || secured) {
            return self.read_owner(f);
        }
        if MeteringStore::is_closed(self) {
            return Err(CoreError::Store("the store is closed".into()));
        }
        let s = self.schema_sql();
        self.runtime.block_on(async {
            let client = self.pool.get().await?;
            let begin = if snapshot {
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
            } else {
                "BEGIN READ ONLY"
            };
            client.batch_execute(begin).await?;
            if secured {
                client
                    .execute(
                        &format!("SELECT set_config('{}', $1, true)", row_security::SETTING),
                        &[&namespace.unwrap_or("")],
                    )
                    .await?;
            }
            let out = f(&client, &s).await;
            let ended = client
                .batch_execute(if out.is_ok() { "COMMIT" } else { "ROLLBACK" })
                .await;
            let out = out?;
            ended?;
            Ok(out)
        })
    }

    /// Sends a command to the writer and waits for its answer, at most
    /// `timeout`. The command stays with the writer: a timed-out batch is
    /// still committed once the server answers (idempotently, by request id).
    fn call_within<T>(
        &self,
        timeout: Option<Duration>,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> CoreResult<T> {
        let tx = self.sender()?;
        let (reply, answer) = oneshot::channel();
        tx.blocking_send(make(reply))
            .map_err(|_| CoreError::Store("the writer has stopped".into()))?;
        let stopped = |_| CoreError::Store("the writer has stopped".into());
        match timeout {
            None => answer.blocking_recv().map_err(stopped),
            Some(limit) => self
                .runtime
                .block_on(async { tokio::time::timeout(limit, answer).await })
                .map_err(|_| {
                    CoreError::Store(format!(
                        "PostgreSQL did not take the write within {:.1} s; it stays queued",
                        limit.as_secs_f64()
                    ))
                })?
                .map_err(stopped),
        }
    }

    fn now_us(&self) -> i64 {
        (self.clock.now() / 1_000) as i64
    }

    /// Runs `f` on the chain as one read-only REPEATABLE READ snapshot sees it.
    fn read_chain<T>(
        &self,
        f: impl FnOnce(&mut dyn ChainSource) -> CoreResult<T>,
    ) -> CoreResult<T> {
        if MeteringStore::is_closed(self) {
            return Err(CoreError::Store("the store is closed".into()));
        }
        let s = self.schema_sql();
        let mut client = self.runtime.block_on(self.pool.get())?;
        let tx = self.runtime.block_on(
            client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start(),
        )?;
        let out = f(&mut chain::PostgresChain {
            tx: &tx,
            runtime: &self.runtime,
            schema: &s,
        })?;
        self.runtime.block_on(tx.commit())?;
        Ok(out)
    }

    /// Deletes events older than `cutoff_us`: whole expired partitions are
    /// dropped, the partition the cutoff falls in is deleted from.
    fn purge_before(&self, cutoff_us: i64) -> CoreResult<usize> {
        let schema_name = self.shared.schema.clone();
        let s = self.schema_sql();
        self.runtime.block_on(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                &[&format!("usagewarden.partitions:{schema_name}")],
            )
            .await?;
            chain::record_purges(&tx, &s, cutoff_us, self.now_us()).await?;
            // Before the partitions: a writer holding the totals never waits on them.
            grouped::lock(&tx, &s).await?;
            // Found through the events, so before those go.
            tx.execute(&request_keys::purge_sql(&s), &[&cutoff_us])
                .await?;
            let mut purged: u64 = 0;
            for (name, _, upper) in schema::partitions(&tx, &schema_name).await? {
                if upper <= cutoff_us {
                    let row = tx
                        .query_one(&format!("SELECT COUNT(*)::int8 FROM {s}.\"{name}\""), &[])
                        .await?;
                    purged += row.get::<_, i64>(0) as u64;
                    tx.batch_execute(&format!("DROP TABLE {s}.\"{name}\""))
                        .await?;
                }
            }
            purged += tx
                .execute(
                    &format!("DELETE FROM {s}.usage_events WHERE ts < $1"),
                    &[&cutoff_us],
                )
                .await?;
            grouped::after_purge(&tx, &s, cutoff_us).await?;
            tx.commit().await?;
            Ok(purged as usize)
        })
    }
}

impl NamespaceGrants for PostgresStore {
    fn grant_namespace(&self, role: &str, namespace: &str) -> CoreResult<()> {
        let s = self.schema_sql();
        let schema_name = self.shared.schema.clone();
        self.runtime.block_on(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            // Under the migrations' lock: a host migrating re-protects the tables after.
            schema::lock_migrations(&tx, &schema_name).await?;
            row_security::grant(&tx, &s, &schema_name, role, namespace).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn revoke_namespace(&self, role: &str, namespace: &str) -> CoreResult<bool> {
        self.read_owner(async |c, s| row_security::revoke(&***c, s, role, namespace).await)
    }

    fn granted(&self) -> CoreResult<Vec<(String, String)>> {
        self.read_owner(async |c, s| row_security::grants(&***c, s).await)
    }
}

impl PostgresStore {
    /// Runs `f` on a pooled connection outside any transaction of its own
    /// (and so without the row-security setting).
    fn read_owner<T: Send>(
        &self,
        f: impl AsyncFnOnce(&deadpool_postgres::Client, &str) -> CoreResult<T>,
    ) -> CoreResult<T> {
        if MeteringStore::is_closed(self) {
            return Err(CoreError::Store("the store is closed".into()));
        }
        let s = self.schema_sql();
        self.runtime.block_on(async {
            let client = self.pool.get().await?;
            f(&client, &s).await
        })
    }
}

impl MeteringStore for PostgresStore {
    fn namespace_grants(&self) -> Option<&dyn NamespaceGrants> {
        Some(self)
    }

    fn location(&self) -> String {
        self.location.clone()
    }
    fn durability(&self) -> Durability {
        self.durability
    }
    fn retention_us(&self) -> Option<i64> {
        self.retention_us
    }
    fn is_closed(&self) -> bool {
        self.tx.lock().is_none()
    }
    fn queued(&self) -> u64 {
        self.shared.counters.queued.load(Ordering::SeqCst)
    }

    fn record_valid(&self, event: Arc<UsageEvent>) -> CoreResult<String> {
        let request_id = event.request_id.clone();
        let tx = self.sender()?;
        let stopped = || CoreError::Store("the writer has stopped".into());
        let queued = &self.shared.counters.queued;
        queued.fetch_add(1, Ordering::SeqCst);
        // Once sent, the writer accounts for the event, whatever happens.
        let (reply, answer) = match self.durability {
            Durability::Commit => {
                let (reply, answer) = oneshot::channel();
                (Some(reply), Some(answer))
            }
            Durability::Batch => (None, None),
        };
        if tx.blocking_send(Command::Record(event, reply)).is_err() {
            queued.fetch_sub(1, Ordering::SeqCst);
            return Err(stopped());
        }
        match answer.map(|a| a.blocking_recv()) {
            None => Ok(request_id),
            Some(Err(_)) => Err(stopped()),
            Some(Ok(Err(e))) => Err(e),
            Some(Ok(Ok(Outcome::Conflict))) => Err(CoreError::Conflict(format!(
                "request_id {request_id:?} was recorded before with different content"
            ))),
            Some(Ok(Ok(_))) => Ok(request_id),
        }
    }

    fn try_record_valid(&self, event: Arc<UsageEvent>) -> CoreResult<Option<Arc<UsageEvent>>> {
        let tx = self.sender()?;
        let counters = &self.shared.counters;
        counters.queued.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(Command::Record(event, None)) {
            Ok(()) => Ok(None),
            Err(e) => {
                counters.queued.fetch_sub(1, Ordering::SeqCst);
                match e {
                    mpsc::error::TrySendError::Full(Command::Record(event, _)) => Ok(Some(event)),
                    _ => Err(CoreError::Store("the writer has stopped".into())),
                }
            }
        }
    }

    fn record_batch_valid(
        &self,
        events: Vec<Arc<UsageEvent>>,
        timeout: Option<Duration>,
    ) -> CoreResult<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        self.call_within(timeout, |reply| Command::Batch(events, reply))?
    }

    fn query(
        &self,
        filters: &Filters,
        limit: Option<u64>,
        offset: u64,
    ) -> CoreResult<Vec<UsageEvent>> {
        filters.validate()?;
        self.read_in(filters.namespace.as_deref(), false, async |c, s| {
            read::query(c, s, filters, limit, offset).await
        })
    }

    fn page(
        &self,
        filters: &Filters,
        limit: u64,
        offset: u64,
        cursor: Option<&str>,
    ) -> CoreResult<(Vec<UsageEvent>, Option<String>)> {
        let after = Cursor::for_page(filters, limit, cursor)?;
        let namespace = filters.namespace.as_deref();
        let (events, next) = if after.is_none() && offset >= COUNT_PAST_OFFSET {
            self.read_in(namespace, true, async |c, s| {
                read::page_from_nearer_end(c, s, filters, limit, offset).await
            })?
        } else {
            self.read_in(namespace, false, async |c, s| {
                read::page(c, s, filters, after, limit, offset).await
            })?
        };
        Ok((events, next.map(|n| n.encode())))
    }

    fn aggregate(&self, group_by: &str, tz: &str, filters: &Filters) -> CoreResult<Vec<Aggregate>> {
        let group_by = GroupBy::parse(group_by)?;
        parse_tz(tz)?;
        filters.validate()?;
        self.read_in(filters.namespace.as_deref(), false, async |c, s| {
            read::aggregate(c, s, group_by, tz, filters).await
        })
    }

    fn summary(&self, filters: &Filters) -> CoreResult<Aggregate> {
        filters.validate()?;
        self.read_in(filters.namespace.as_deref(), false, async |c, s| {
            read::summary(c, s, filters).await
        })
    }

    fn distinct(&self, column: &str, filters: &Filters) -> CoreResult<Vec<(String, u64)>> {
        filters.validate()?;
        self.read_in(filters.namespace.as_deref(), false, async |c, s| {
            read::distinct(c, s, column, filters).await
        })
    }

    fn stats(&self) -> CoreResult<StoreStats> {
        let schema_name = self.shared.schema.clone();
        let c = &self.shared.counters;
        // While the server is unreachable the counters (queue depth, write
        // errors) still matter most: they come with the last extent read.
        let extent = self.read(async |c, s| read::extent(c, s, &schema_name).await);
        let (events, oldest_us, newest_us, size_bytes) = match extent {
            Ok(extent) => {
                *self.last_extent.lock() = extent;
                extent
            }
            Err(e) if !MeteringStore::is_closed(self) => {
                *c.last_error.lock() = Some(format!("stats: {e}"));
                *self.last_extent.lock()
            }
            Err(e) => return Err(e),
        };
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
            size_bytes,
        })
    }

    fn reprice(&self, pricing: Arc<Pricing>, filters: &Filters) -> CoreResult<usize> {
        filters.validate()?;
        MeteringStore::flush(self, None)?;
        let s = self.schema_sql();
        self.runtime.block_on(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let n = read::reprice(&tx, &s, &pricing, filters).await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    fn purge_expired(&self, timeout: Option<Duration>) -> CoreResult<usize> {
        if MeteringStore::is_closed(self) {
            return Err(CoreError::Store("the store is closed".into()));
        }
        match self.retention_us {
            Some(retention) => {
                // In order with writes: what was queued before the purge is purged too.
                MeteringStore::flush(self, timeout)?;
                self.purge_before(self.now_us().saturating_sub(retention))
            }
            None => Ok(0),
        }
    }

    fn export(
        &self,
        filters: &Filters,
        format: Format,
        limit: Option<u64>,
        out: &mut dyn Write,
    ) -> CoreResult<u64> {
        filters.validate()?;
        let mut remaining = limit.unwrap_or(u64::MAX);
        let mut last: Option<(i64, i64)> = None;
        let mut chunk: std::vec::IntoIter<(UsageEvent, i64)> = Vec::new().into_iter();
        let mut failed = None;
        let rows = std::iter::from_fn(|| {
            if remaining == 0 || failed.is_some() {
                return None;
            }
            if chunk.len() == 0 {
                let want = remaining.min(EXPORT_CHUNK);
                match self.read(async |c, s| read::after(c, s, filters, last, want, 0).await) {
                    Ok(rows) => chunk = rows.into_iter(),
                    Err(e) => {
                        failed = Some(e);
                        return None;
                    }
                }
            }
            let (event, id) = chunk.next()?;
            last = Some((event.timestamp_us, id));
            remaining -= 1;
            Some(Ok(event))
        });
        let written = write_events(format, rows, out)?;
        Ok(written)
    }

    fn flush(&self, timeout: Option<Duration>) -> CoreResult<()> {
        self.call_within(timeout, Command::Flush)
    }

    fn close(&self, grace: Duration) -> CoreResult<()> {
        let Some(tx) = self.tx.lock().take() else {
            return Ok(());
        };
        let handle = self.writer.lock().take();
        let in_runtime = Handle::try_current().is_ok();
        if !in_runtime {
            let (reply, answer) = oneshot::channel();
            self.runtime.block_on(async {
                if tx.send(Command::Flush(reply)).await.is_ok() {
                    let _ = tokio::time::timeout(grace, answer).await;
                }
            });
        }
        self.shared.closing.store(true, Ordering::SeqCst);
        drop(tx);
        if let (Some(handle), false) = (handle, in_runtime) {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(grace, handle).await });
        }
        self.pool.close();
        Ok(())
    }

    fn verify(
        &self,
        namespace: Option<&str>,
        range: PositionRange,
        anchors: &[Checkpoint],
    ) -> CoreResult<VerifyReport> {
        range.validate()?;
        let now = self.now_us();
        self.read_chain(|c| chain_source::verify(c, namespace, range, anchors, now))
    }

    fn receipt(&self, request_id: &str, namespace: &str) -> CoreResult<Receipt> {
        self.read_chain(|c| chain_source::receipt(c, namespace, request_id))
    }

    fn checkpoint(&self, namespace: &str) -> CoreResult<Checkpoint> {
        let now = self.now_us();
        self.read_chain(|c| chain_source::checkpoint(c, namespace, now))
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        let _ = MeteringStore::close(self, CLOSE_GRACE);
    }
}
