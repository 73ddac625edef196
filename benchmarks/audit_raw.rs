//! What the hash chain costs, for `bench_audit.py`. Prints one JSON object.
//!
//! ```text
//! cargo run --release --example audit_raw -- insert <path> <n> --chain on|off
//! cargo run --release --example audit_raw -- verify <path> <n>
//! ```
//!
//! `insert` writes `n` events through the writer's own `Inserter` in
//! 10,000-event transactions on the store's write connection (its schema and
//! pragmas), with the chain (digest, position, head) or without it (and
//! without the chain's index): the rate is events per second. `verify`
//! fills a ledger with `n` chained events (untimed), then times
//! `SqliteStore::verify` over all of them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use usagewarden::clock::SystemClock;
use usagewarden::ledger::chain_verify::PositionRange;
use usagewarden::ledger::event::{new_request_id, UsageEvent, DEFAULT_ACTION};
use usagewarden::ledger::sqlite::{Durability, Inserter, SqliteStore, StoreOptions};

const GROUP: usize = 10_000;
const MODELS: [&str; 3] = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"];

/// 50 agents, 5 consumers, 3 models, 4 namespaces, one microsecond apart.
fn make_events(n: usize) -> Vec<UsageEvent> {
    let start_us = 1_767_225_600_000_000_i64;
    (0..n as u64)
        .map(|i| UsageEvent {
            agent_id: format!("agent-{:02}", i % 50),
            consumer_id: format!("consumer-{}", i % 5),
            task_id: None,
            namespace: format!("team-{}", i % 4),
            action: DEFAULT_ACTION.into(),
            model: Some(MODELS[(i % 3) as usize].into()),
            tokens_in: 500 + i % 1000,
            tokens_out: 100 + i % 300,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            duration_ms: 0,
            api_calls: 1,
            units: 0,
            cost_nanos: Some(1_000_000),
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
        log: Arc::new(|_, message| eprintln!("{message}")),
        pricing: None,
    })
    .map_err(|e| e.to_string())
}

/// Inserts `events` on the store's write connection; returns the seconds it took.
fn insert(store: &SqliteStore, events: Vec<UsageEvent>, chained: bool) -> Result<f64, String> {
    let seconds = store
        .with_writer(Box::new(move |conn| {
            if !chained || std::env::var_os("AUDIT_RAW_NO_INDEX").is_some() {
                conn.execute_batch("DROP INDEX usage_events_chain")?;
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

/// Times `verify` over the whole ledger, which must hold `n` intact events.
fn time_verify(store: &SqliteStore, n: usize) -> Result<serde_json::Value, String> {
    let started = Instant::now();
    let report = store
        .verify(None, PositionRange::default(), &[])
        .map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    store.close();
    if !report.ok() || report.rows != n as u64 {
        return Err(format!("verify failed: {:?}", report.problem));
    }
    Ok(serde_json::json!({"events": n, "rows": report.rows, "seconds": seconds}))
}

fn run(args: &[String]) -> Result<serde_json::Value, String> {
    let usage = "usage: audit_raw insert <path> <n> --chain on|off | audit_raw verify <path> <n> | audit_raw verify-existing <path> <n>";
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
        "insert" => {
            let chained = match args.get(3..5) {
                Some([flag, value]) if flag == "--chain" => value == "on",
                _ => return Err(usage.into()),
            };
            let seconds = insert(&store, events, chained)?;
            store.close();
            Ok(
                serde_json::json!({"events": n, "chain": chained, "seconds": seconds, "rate": n as f64 / seconds}),
            )
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
