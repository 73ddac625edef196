//! What the hash chain costs on PostgreSQL, for `bench_postgres.py`. Prints
//! one JSON object.
//!
//! ```text
//! cargo run --release --example pg_chain_raw -- <dsn> <n> --chain on|off
//! ```
//!
//! Opens a `PostgresStore` on a fresh schema, records `n` events one by one
//! through `record` (batch durability) and flushes: the rate is events per
//! second until every one is committed (and the client's CPU seconds
//! meanwhile). With the chain off, the store
//! writes no positions, digests or heads, and the chain's index is dropped.
//! The schema is dropped afterwards.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use usagewarden::clock::SystemClock;
use usagewarden::ledger::postgres::{PostgresOptions, PostgresStore};
use usagewarden::ledger::sqlite::Durability;
use usagewarden::ledger::store::MeteringStore;

#[path = "chain_events.rs"]
mod chain_events;
#[path = "cpu_time.rs"]
mod cpu_time;
use chain_events::make_events;
use cpu_time::cpu_seconds;

fn run(args: &[String]) -> Result<serde_json::Value, String> {
    let usage = "usage: pg_chain_raw <dsn> <n> --chain on|off";
    let [dsn, n, flag, value] = args else {
        return Err(usage.into());
    };
    let n: usize = n.parse().map_err(|_| usage.to_string())?;
    if flag != "--chain" || !matches!(value.as_str(), "on" | "off") {
        return Err(usage.into());
    }
    let chained = value == "on";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let schema = format!("chain_bench_{}", uuid::Uuid::now_v7().simple());
    let store = PostgresStore::open(PostgresOptions {
        dsn: dsn.clone(),
        schema: schema.clone(),
        retention_us: None,
        durability: Durability::Batch,
        clock: Arc::new(SystemClock),
        log: Arc::new(|_, message| eprintln!("{message}")),
        pricing: None,
        runtime: runtime.handle().clone(),
        row_security: false,
    })
    .map_err(|e| e.to_string())?;
    let (client, connection) = runtime
        .block_on(tokio_postgres::connect(dsn, tokio_postgres::NoTls))
        .map_err(|e| e.to_string())?;
    runtime.spawn(connection);
    if !chained {
        store.unchained_for_benchmark();
        runtime
            .block_on(client.batch_execute(&format!("DROP INDEX \"{schema}\".usage_events_chain")))
            .map_err(|e| e.to_string())?;
    }
    let events: Vec<_> = make_events(n).into_iter().map(Arc::new).collect();
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    for event in events {
        store.record_valid(event).map_err(|e| e.to_string())?;
    }
    store
        .flush(Some(Duration::from_secs(600)))
        .map_err(|e| e.to_string())?;
    let (seconds, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_before);
    store
        .close(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .map_err(|e| e.to_string())?;
    Ok(
        serde_json::json!({"events": n, "chain": chained, "seconds": seconds, "rate": n as f64 / seconds, "cpu_seconds": cpu}),
    )
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
