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
//! - `raw` (default): plain rusqlite through the writer's own `Inserter` (its
//!   exact statement and bindings), `--batch` events per transaction (10,000,
//!   the writer's largest group), nothing else: no queue, no validation, no counters. It runs on the
//!   store's own write connection (`SqliteStore::with_writer`), so the schema
//!   and the pragmas (WAL, `synchronous`, `cache_size`...) are the store's,
//!   whatever they are; the report lists them.
//! - `store-record`: `SqliteStore::record` per event, then `flush` (the
//!   store's path without Python).
//! - `store-batch`: `SqliteStore::record_batch` with `--batch` events per call
//!   (use 1,000 to compare with Python's `record_batch`).
//!
//! Events are built before the clock starts; the fingerprint is computed
//! inside the timed loop, as the writer does. The database at `path` must not
//! exist yet (a fresh file, like the other rows of the benchmark).

use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use usagewarden::clock::SystemClock;
use usagewarden::error::CoreError;
use usagewarden::ledger::event::{new_request_id, UsageEvent, DEFAULT_ACTION, DEFAULT_NAMESPACE};
use usagewarden::ledger::sqlite::{Durability, Inserter, SqliteStore, StoreOptions};

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

const USAGE: &str =
    "usage: ledger_raw <path> <n> [--mode raw|store-record|store-batch] [--batch SIZE]";

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
            cost_nanos: Some(1_000_000), // 0.001 USD, as in the Python runs
            timestamp_us: start_us + i as i64,
            request_id: new_request_id(),
            source: None,
            metadata: None,
            artifact_digest: None,
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
        pricing: None,
    })
    .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// What the raw inserts report back from the writer's thread.
struct RawReport {
    elapsed: Duration,
    pragmas: serde_json::Value,
}

/// Plain rusqlite on the writer's own connection (so with its pragmas and
/// statement cache, whatever they are): the writer's `Inserter`, `batch` events
/// per transaction, nothing else.
fn insert_raw(
    conn: &mut Connection,
    events: &[UsageEvent],
    batch: usize,
) -> rusqlite::Result<RawReport> {
    let pragma = |name: &str| -> rusqlite::Result<serde_json::Value> {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| {
            Ok(match r.get_ref(0)? {
                ValueRef::Integer(i) => i.into(),
                ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                other => format!("{other:?}").into(),
            })
        })
    };
    let pragmas = serde_json::json!({
        "journal_mode": pragma("journal_mode")?,
        "synchronous": pragma("synchronous")?,
        "cache_size": pragma("cache_size")?,
    });
    let started = Instant::now();
    for chunk in events.chunks(batch) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserter = Inserter::new(&tx)?;
        for e in chunk {
            inserter.insert(e)?;
        }
        inserter.finish()?;
        tx.commit()?;
    }
    Ok(RawReport {
        elapsed: started.elapsed(),
        pragmas,
    })
}

fn run(args: &Args) -> Result<serde_json::Value, String> {
    if args.path.exists() {
        return Err(format!("{} exists; give a new path", args.path.display()));
    }
    let events = make_events(args.events);
    let store = open_store(&args.path)?;
    let err = |e: CoreError| e.to_string();
    let mut pragmas = serde_json::Value::Null;
    let elapsed = match args.mode {
        Mode::Raw => {
            let (tx, rx) = mpsc::channel();
            let batch = args.batch;
            store
                .with_writer(Box::new(move |conn| {
                    let report = insert_raw(conn, &events, batch)?;
                    let _ = tx.send(report);
                    Ok(events.len())
                }))
                .map_err(err)?;
            let report = rx.recv().map_err(|e| e.to_string())?;
            pragmas = report.pragmas;
            report.elapsed
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
            let mut batches = Vec::new();
            let mut events = events.into_iter();
            loop {
                let batch: Vec<UsageEvent> = events.by_ref().take(args.batch).collect();
                if batch.is_empty() {
                    break;
                }
                batches.push(batch);
            }
            let started = Instant::now();
            for batch in batches {
                store.record_batch(batch).map_err(err)?;
            }
            started.elapsed()
        }
    };
    let stored = store.stats().map_err(err)?.events;
    store.close();
    let seconds = elapsed.as_secs_f64();
    Ok(serde_json::json!({
        "mode": args.mode.name(),
        "events": args.events,
        "stored": stored,
        "batch": args.batch,
        "seconds": seconds,
        "events_per_s": args.events as f64 / seconds,
        "sqlite_version": rusqlite::version(),
        "pragmas": pragmas,
    }))
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
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("ledger_raw: {message}");
            ExitCode::FAILURE
        }
    }
}
