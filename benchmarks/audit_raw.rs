//! What the hash chain costs, for `bench_audit.py`. Prints one JSON object.
//!
//! ```text
//! cargo run --release --example audit_raw -- insert <path> <n> --chain on|off
//! cargo run --release --example audit_raw -- record <path> <n> --chain on|off
//! cargo run --release --example audit_raw -- verify <path> <n>
//! ```
//!
//! `insert` writes `n` events through the writer's own `Inserter` in
//! 10,000-event transactions on the store's write connection (its schema and
//! pragmas), with the chain (digest, position, head, blocks) or without
//! it: the rate is events per second. `record`
//! goes through the store's public path instead: `SqliteStore::record` one
//! event at a time (batch durability: the writer thread groups what is
//! queued into transactions), then `flush`, so the rate counts every event
//! committed; with the chain off the store writes no positions, digests or
//! heads or blocks. `verify`
//! fills a ledger with `n` chained events (untimed), then times
//! `SqliteStore::verify` over all of them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use usagewarden::clock::SystemClock;
use usagewarden::ledger::chain_verify::PositionRange;
use usagewarden::ledger::event::UsageEvent;
use usagewarden::ledger::sqlite::{Durability, Inserter, SqliteStore, StoreOptions};

const GROUP: usize = 10_000;

/// With the chain off, the index of unchained rows goes too: it is empty
/// in a chained ledger, and would hold every row of an unchained one.
const WITHOUT_THE_CHAIN: &str = "DROP INDEX usage_events_unchained";

#[path = "chain_events.rs"]
mod chain_events;
#[path = "cpu_time.rs"]
mod cpu_time;
use chain_events::make_events;
use cpu_time::cpu_seconds;

fn open_store(path: &Path) -> Result<SqliteStore, String> {
    SqliteStore::open(StoreOptions {
        path: path.to_path_buf(),
        retention_us: None,
        durability: Durability::Batch,
        clock: Arc::new(SystemClock),
        log: Arc::new(|_, message| eprintln!("{message}")),
        pricing: None,
    })
    .map_err(|e| e.to_string())
}

/// Inserts `events` on the store's write connection; returns the seconds it took.
fn insert(store: &SqliteStore, events: Vec<UsageEvent>, chained: bool) -> Result<f64, String> {
    let seconds = store
        .with_writer(Box::new(move |conn| {
            if !chained {
                conn.execute_batch(WITHOUT_THE_CHAIN)?;
            }
            let started = Instant::now();
            for group in events.chunks(GROUP) {
                let tx = conn.transaction()?;
                let mut inserter = Inserter::new(&tx)?;
                if !chained {
                    inserter = inserter.unchained_for_benchmark();
                }
                for event in group {
                    inserter.insert(event)?;
                }
                inserter.finish()?;
                tx.commit()?;
            }
            Ok(started.elapsed().as_micros() as usize)
        }))
        .map_err(|e| e.to_string())?;
    Ok(seconds as f64 / 1e6)
}

/// Records `events` one by one through the store and flushes; returns the seconds it took.
fn record(store: &SqliteStore, events: Vec<UsageEvent>, chained: bool) -> Result<f64, String> {
    if !chained {
        store.unchained_for_benchmark();
        store
            .with_writer(Box::new(|conn| {
                conn.execute_batch(WITHOUT_THE_CHAIN)?;
                Ok(0)
            }))
            .map_err(|e| e.to_string())?;
    }
    let events: Vec<Arc<UsageEvent>> = events.into_iter().map(Arc::new).collect();
    let started = Instant::now();
    for event in events {
        store.record(event).map_err(|e| e.to_string())?;
    }
    store.flush().map_err(|e| e.to_string())?;
    Ok(started.elapsed().as_secs_f64())
}

/// Times `verify` over the whole ledger, which must hold `n` intact events.
fn time_verify(store: &SqliteStore, n: usize) -> Result<serde_json::Value, String> {
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let report = store
        .verify(None, PositionRange::default(), &[])
        .map_err(|e| e.to_string())?;
    let (seconds, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_before);
    store.close();
    if !report.ok() || report.rows != n as u64 {
        return Err(format!("verify failed: {:?}", report.problem));
    }
    Ok(
        serde_json::json!({"events": n, "rows": report.rows, "seconds": seconds, "cpu_seconds": cpu}),
    )
}

fn run(args: &[String]) -> Result<serde_json::Value, String> {
    let usage = "usage: audit_raw insert|record <path> <n> --chain on|off | audit_raw verify <path> <n> | audit_raw verify-existing <path> <n>";
    let (command, path, n) = match args {
        [c, p, n, ..] => (
            c.as_str(),
            PathBuf::from(p),
            n.parse::<usize>().map_err(|_| usage.to_string())?,
        ),
        _ => return Err(usage.into()),
    };
    if command == "verify-existing" {
        let store = open_store(&path)?;
        return time_verify(&store, n);
    }
    if path.exists() {
        return Err(format!("{} exists: give a fresh path", path.display()));
    }
    let events = make_events(n);
    let store = open_store(&path)?;
    match command {
        "insert" | "record" => {
            let chained = match args.get(3..5) {
                Some([flag, value]) if flag == "--chain" => value == "on",
                _ => return Err(usage.into()),
            };
            let cpu_before = cpu_seconds();
            let seconds = if command == "insert" {
                insert(&store, events, chained)?
            } else {
                record(&store, events, chained)?
            };
            let cpu = cpu_seconds() - cpu_before;
            store.close();
            Ok(serde_json::json!({
                "events": n, "chain": chained, "seconds": seconds, "rate": n as f64 / seconds,
                "cpu_seconds": cpu, "cpu_rate": n as f64 / cpu,
            }))
        }
        "verify" => {
            insert(&store, events, true)?;
            store.flush().map_err(|e| e.to_string())?;
            time_verify(&store, n)
        }
        _ => Err(usage.into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
