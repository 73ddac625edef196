//! Opening connections, and the versioned schema.

use crate::error::{CoreError, CoreResult};
use crate::ledger::buckets::{parse_tz, LabelCache, TimeUnit};
use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// How long a connection waits on another process's lock before SQLite
/// reports it busy (the writer then retries on its own).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Ordered migrations; `schema_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE usage_events (
    id                 INTEGER PRIMARY KEY,
    namespace          TEXT    NOT NULL,
    request_id         TEXT    NOT NULL,
    ts                 INTEGER NOT NULL,
    agent_id           TEXT    NOT NULL,
    consumer_id        TEXT    NOT NULL,
    task_id            TEXT,
    action             TEXT    NOT NULL,
    model              TEXT,
    tokens_in          INTEGER NOT NULL,
    tokens_out         INTEGER NOT NULL,
    cache_read_tokens  INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    duration_ms        INTEGER NOT NULL,
    api_calls          INTEGER NOT NULL,
    units              INTEGER NOT NULL,
    cost_nanos         INTEGER,
    source             TEXT,
    metadata           TEXT,
    fingerprint        INTEGER NOT NULL,
    UNIQUE (namespace, request_id)
);
CREATE INDEX usage_events_ts          ON usage_events (ts);
CREATE INDEX usage_events_namespace   ON usage_events (namespace, ts);
CREATE INDEX usage_events_agent       ON usage_events (agent_id, ts);
CREATE INDEX usage_events_consumer    ON usage_events (consumer_id, ts);
CREATE INDEX usage_events_task        ON usage_events (task_id, ts) WHERE task_id IS NOT NULL;
CREATE INDEX usage_events_model       ON usage_events (model, ts) WHERE model IS NOT NULL;
CREATE INDEX usage_events_action      ON usage_events (action, ts);
"#,
    super::rollup::MIGRATION,
    // Whether a cost was filled in by the store's pricing (and may be repriced).
    "ALTER TABLE usage_events ADD COLUMN cost_priced INTEGER NOT NULL DEFAULT 0;",
    // The hash chain and artifact digests (`super::chain`).
    super::chain::MIGRATION,
    // Budgets managed at run time (`super::budgets`).
    super::budgets::MIGRATION,
    // Totals per hour × namespace × agent × consumer × model × action.
    super::rollup::GROUPED_MIGRATION,
    // Totals per UTC day × the same keys, and per hour × namespace × model.
    super::coarse::MIGRATION,
    // Totals per hour and per UTC day × namespace × agent × consumer, and
    // the hours each agent and consumer was seen in per day and model.
    super::pairs::MIGRATION,
    // Chain positions found by block of row ids, not by an index per event.
    super::chain_blocks::MIGRATION,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The WAL is cut back to this size when it is reset after a checkpoint.
const JOURNAL_SIZE_LIMIT: i64 = 4 << 20;

/// Brings the schema up to date, once, even with several processes racing.
/// A database written by a newer version is refused: its writer would not
/// know what the newer tables need.
pub fn migrate(conn: &mut Connection) -> CoreResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: i64 = tx
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| {
            r.get::<_, Option<i64>>(0)
        })?
        .unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(CoreError::Store(format!(
            "the database has schema version {current}, newer than the version {SCHEMA_VERSION} this usagewarden {} writes; upgrade usagewarden to open it",
            env!("CARGO_PKG_VERSION")
        )));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(migration)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?)",
            [i as i64 + 1],
        )?;
        if i as i64 + 1 == super::chain::CHAIN_SCHEMA_VERSION {
            super::chain::chain_existing(&tx)?;
        }
        if *migration == super::rollup::GROUPED_MIGRATION {
            super::rollup::fill_grouped(&tx)?;
        }
        if *migration == super::coarse::MIGRATION {
            super::coarse::fill(&tx)?;
        }
        if *migration == super::pairs::MIGRATION {
            super::pairs::fill(&tx)?;
        }
        if *migration == super::chain_blocks::MIGRATION {
            super::chain_blocks::fill(&tx)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The writer's connection: WAL, the schema migrated. Switching a new file
/// to WAL reports "busy" at once (without waiting) when another process is
/// creating it at the same moment, so opening retries on busy.
pub fn open_writer(path: &Path, synchronous_full: bool) -> CoreResult<Connection> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match try_open_writer(path, synchronous_full) {
            Err(CoreError::Sqlite(e)) if is_busy(&e) && started.elapsed() < BUSY_TIMEOUT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn try_open_writer(path: &Path, synchronous_full: bool) -> CoreResult<Connection> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if synchronous_full { "FULL" } else { "NORMAL" },
    )?;
    // Every insert touches eight B-trees (the table, the request-id key and
    // six indexes): keeping their hot pages cached is what sets throughput.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// A read-only connection with the `uw_bucket` SQL function.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Scans read pages straight from the OS cache instead of copying them
    // into SQLite's own (about a third faster on a 1M-event aggregate).
    conn.pragma_update(None, "mmap_size", 1_i64 << 30)?;
    register_functions(&conn)?;
    Ok(conn)
}

/// `uw_bucket(ts, unit, tz)`: the calendar bucket label of `ts` in `tz`.
pub fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    // A connection is used by one thread at a time: this lock never contends.
    let state: parking_lot::Mutex<(LabelCache, Option<(String, chrono_tz::Tz)>)> =
        parking_lot::Mutex::new((LabelCache::default(), None));
    conn.create_scalar_function(
        "uw_bucket",
        3,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        move |ctx| {
            let ts: i64 = ctx.get(0)?;
            let unit = TimeUnit::parse(&ctx.get::<String>(1)?)
                .ok_or_else(|| rusqlite::Error::UserFunctionError("unknown time unit".into()))?;
            let tz_name: String = ctx.get(2)?;
            let mut state = state.lock();
            let (cache, zone) = &mut *state;
            let tz = match zone {
                Some((name, tz)) if *name == tz_name => *tz,
                _ => {
                    let tz = parse_tz(&tz_name)
                        .map_err(|e| rusqlite::Error::UserFunctionError(e.to_string().into()))?;
                    *zone = Some((tz_name, tz));
                    tz
                }
            };
            Ok(cache.label(ts, unit, tz).to_string())
        },
    )
}
