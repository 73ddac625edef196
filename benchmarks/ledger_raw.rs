//! The ledger's physical write limit on this machine, for `bench_ledger.py`.
//!
//! Inserts N events into the schema `SqliteStore` creates and prints one JSON
//! object with the events per second:
//!
//! ```text
//! cargo run --release --example ledger_raw -- <path> <n> [--mode MODE] [--batch SIZE]
//! ```
//!
//! Modes:
//! - `raw` (default): plain rusqlite on its own connection, with the writer's
//!   pragmas (WAL, `synchronous=NORMAL`) and its exact INSERT statement, in
//!   transactions of `--batch` events (10,000, the writer's largest group).
//!   The schema comes from opening the database with `SqliteStore` first.
//! - `store-record`: `SqliteStore::record` per event, then `flush` (the
//!   store's path without Python).
//! - `store-batch`: `SqliteStore::record_batch` with `--batch` events per call
//!   (use 1,000 to compare with Python's `record_batch`).
//!
//! Events are built before the clock starts; the fingerprint is computed
//! inside the timed loop, as the writer does. The database at `path` must not
//! exist yet (a fresh file, like the other rows of the benchmark).

use rusqlite::{params, Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use usagewarden::clock::SystemClock;
use usagewarden::ledger::event::{new_request_id, UsageEvent, DEFAULT_ACTION, DEFAULT_NAMESPACE};
use usagewarden::ledger::sqlite::{Durability, SqliteStore, StoreOptions};

/// Copied from `src/ledger/sqlite/writer.rs` (`INSERT`), which is private.
const INSERT: &str = "INSERT INTO usage_events (namespace, request_id, ts, agent_id, consumer_id, task_id, action, model, \
     tokens_in, tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, cost_nanos, source, metadata, fingerprint) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19) \
     ON CONFLICT (namespace, request_id) DO NOTHING";

const AGENTS: u64 = 50;
const CONSUMERS: u64 = 5;
const MODELS: [&str; 3] = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    StoreRecord,
    StoreBatch,
}

impl Mode {
    fn parse(name: &str) -> Option<Mode> {
        match name {
            "raw" => Some(Mode::Raw),
            "store-record" => Some(Mode::StoreRecord),
            "store-batch" => Some(Mode::StoreBatch),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::StoreRecord => "store-record",
            Mode::StoreBatch => "store-batch",
        }
    }
}

struct Args {
    path: PathBuf,
    events: usize,
    mode: Mode,
    batch: usize,
}

const USAGE: &str = "usage: ledger_raw <path> <n> [--mode raw|store-record|store-batch] [--batch SIZE]";

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut mode = Mode::Raw;
    let mut batch = 10_000;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mode" => {
                let name = it.next().ok_or("--mode needs a value")?;
                mode = Mode::parse(&name).ok_or_else(|| format!("unknown mode {name:?}"))?;
            }
            "--batch" => {
                batch = it
                    .next()
                    .and_then(|b| b.parse().ok())
                    .filter(|&b| b > 0)
                    .ok_or("--batch needs a positive integer")?;
            }
            _ => positional.push(arg),
        }
    }
    let [path, events] = <[String; 2]>::try_from(positional).map_err(|_| USAGE.to_string())?;
    let events = events
        .parse()
        .map_err(|_| format!("<n> must be a count, got {events:?}"))?;
    Ok(Args {
        path: PathBuf::from(path),
        events,
        mode,
        batch,
    })
}

/// Events like the Python benchmark's: 50 agents, 5 consumers, 3 models,
/// time-ordered UUIDv7 request ids, one microsecond apart from now.
fn make_events(n: usize) -> Vec<UsageEvent> {
    let start_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    (0..n as u64)
        .map(|i| UsageEvent {
            agent_id: format!("agent-{:02}", i % AGENTS),
            consumer_id: format!("consumer-{}", i % CONSUMERS),
            task_id: None,
            namespace: DEFAULT_NAMESPACE.into(),
            action: DEFAULT_ACTION.into(),
            model: Some(MODELS[(i % MODELS.len() as u64) as usize].into()),
            tokens_in: 500 + i % 1000,
            tokens_out: 100 + i % 300,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            duration_ms: 0,
            api_calls: 0,
            units: 0,
            cost_nanos: Some(1_000_000 + i % 1000),
            timestamp_us: start_us + i as i64,
            request_id: new_request_id(),
            source: None,
            metadata: None,
        })
        .collect()
}

fn open_store(path: &Path) -> Result<SqliteStore, String> {
    SqliteStore::open(StoreOptions {
        path: path.to_path_buf(),
        retention_us: None,
        durability: Durability::Batch,
        clock: Arc::new(SystemClock),
        log: Arc::new(|level, message| eprintln!("ledger_raw: {level:?}: {message}")),
    })
    .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Plain rusqlite: the writer's pragmas and INSERT, `batch` events per transaction.
fn insert_raw(path: &Path, events: &[UsageEvent], batch: usize) -> rusqlite::Result<Duration> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let started = Instant::now();
    for chunk in events.chunks(batch) {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(INSERT)?;
            for e in chunk {
                stmt.execute(params![
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
                    e.cost_nanos.map(|c| c as i64),
                    e.source,
                    e.metadata,
                    e.fingerprint(),
                ])?;
            }
        }
        tx.commit()?;
    }
    Ok(started.elapsed())
}

fn run(args: &Args) -> Result<(Duration, u64), String> {
    if args.path.exists() {
        return Err(format!("{} exists; give a new path", args.path.display()));
    }
    let events = make_events(args.events);
    let store = open_store(&args.path)?;
    let err = |e: usagewarden::error::CoreError| e.to_string();
    let elapsed = match args.mode {
        Mode::Raw => {
            // The store created the schema; the raw connection does the inserts.
            store.close();
            drop(store);
            insert_raw(&args.path, &events, args.batch).map_err(|e| e.to_string())?
        }
        Mode::StoreRecord => {
            let started = Instant::now();
            for event in events {
                store.record(event).map_err(err)?;
            }
            store.flush().map_err(err)?;
            started.elapsed()
        }
        Mode::StoreBatch => {
            let started = Instant::now();
            let mut events = events;
            while !events.is_empty() {
                let rest = events.split_off(events.len().min(args.batch));
                store.record_batch(events).map_err(err)?;
                events = rest;
            }
            started.elapsed()
        }
    };
    let stored = Connection::open(&args.path)
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM usage_events", [], |r| r.get(0)))
        .map_err(|e| e.to_string())?;
    Ok((elapsed, stored))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("ledger_raw: {message}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok((elapsed, stored)) => {
            let seconds = elapsed.as_secs_f64();
            let report = serde_json::json!({
                "mode": args.mode.name(),
                "events": args.events,
                "stored": stored,
                "batch": args.batch,
                "seconds": seconds,
                "events_per_s": args.events as f64 / seconds,
                "sqlite_version": rusqlite::version(),
            });
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("ledger_raw: {message}");
            ExitCode::FAILURE
        }
    }
}
