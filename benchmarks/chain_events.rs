//! The events both chain benchmarks write (`audit_raw`, `pg_chain_raw`).

use usagewarden::ledger::event::{new_request_id, UsageEvent, DEFAULT_ACTION};

const MODELS: [&str; 3] = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"];

/// 50 agents, 5 consumers, 3 models, 4 namespaces, one microsecond apart.
pub fn make_events(n: usize) -> Vec<UsageEvent> {
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
