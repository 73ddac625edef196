//! `verify` walked in parts answers exactly as the one-thread walk.

use super::tests::{manual_at, spread_events, store_at, tempdir, S_US};
use super::*;
use crate::ledger::chain_source;
use rusqlite::Connection;

/// The one-thread walk's report, on one snapshot.
fn walked_on_one_thread(
    store: &SqliteStore,
    namespace: Option<&str>,
    range: PositionRange,
) -> VerifyReport {
    let now = store.now_us();
    store
        .read(|c| {
            let tx = c.unchecked_transaction()?;
            chain_source::verify(&mut chain::SqliteChain(&tx), namespace, range, &[], now)
        })
        .unwrap()
}

fn in_parts(
    store: &SqliteStore,
    namespace: Option<&str>,
    range: PositionRange,
) -> (VerifyReport, bool) {
    store.verify_in_parts(namespace, range, &[], 0).unwrap()
}

#[test]
fn an_intact_ledger_is_answered_by_the_parts_as_by_one_thread() {
    let dir = tempdir();
    let clock = manual_at(60 * 3_600 * S_US);
    let store = store_at(&dir, "parts.db", Durability::Batch, clock.clone());
    store.record_batch(spread_events(3_000)).unwrap();
    store.flush().unwrap();
    let ranges = [
        (None, PositionRange::default()),
        (Some("b"), PositionRange::default()),
        (
            Some("b"),
            PositionRange {
                start: Some(100),
                end: Some(700),
            },
        ),
        (
            None,
            PositionRange {
                start: Some(990),
                end: None,
            },
        ),
    ];
    for (namespace, range) in ranges {
        let (report, answered_in_parts) = in_parts(&store, namespace, range);
        assert!(answered_in_parts, "{namespace:?} {range:?}");
        assert!(report.ok());
        assert_eq!(report, walked_on_one_thread(&store, namespace, range));
    }
    assert_eq!(
        in_parts(&store, None, PositionRange::default()).0.rows,
        3_000
    );

    // After a purge, the parts start from the purge boundaries.
    clock.set(30 * 3_600_000_000_000 + 1_234_567_000);
    assert!(store.purge_expired().unwrap() > 0);
    let (report, answered_in_parts) = in_parts(&store, None, PositionRange::default());
    assert!(answered_in_parts && report.ok());
    assert_eq!(
        report,
        walked_on_one_thread(&store, None, PositionRange::default())
    );
    store.close();
}

#[test]
fn a_tampered_ledger_is_answered_by_the_one_thread_walk() {
    let dir = tempdir();
    let store = store_at(
        &dir,
        "tampered.db",
        Durability::Batch,
        manual_at(60 * 3_600 * S_US),
    );
    store.record_batch(spread_events(3_000)).unwrap();
    store.flush().unwrap();
    let edits = [
        "UPDATE usage_events SET tokens_in = tokens_in + 1 WHERE namespace = 'c' AND chain_position = 700",
        "UPDATE usage_events SET tokens_in = tokens_in - 1 WHERE namespace = 'c' AND chain_position = 700; \
         DELETE FROM usage_events WHERE namespace = 'a' AND chain_position = 999",
        "INSERT INTO usage_events (namespace, request_id, ts, agent_id, consumer_id, action, tokens_in, \
         tokens_out, cache_read_tokens, cache_write_tokens, duration_ms, api_calls, units, fingerprint, \
         chain_position, chain_digest) \
         SELECT 'b', 'slipped', 0, 'x', 'y', 'llm.request', 0, 0, 0, 0, 0, 1, 0, 0, position + 1, digest \
         FROM chain_heads WHERE namespace = 'b'",
    ];
    let conn = Connection::open(dir.join("tampered.db")).unwrap();
    for edit in edits {
        conn.execute_batch(edit).unwrap();
        let (report, answered_in_parts) = in_parts(&store, None, PositionRange::default());
        assert!(!answered_in_parts, "{edit}");
        assert!(report.problem.is_some(), "{edit}");
        assert_eq!(
            report,
            walked_on_one_thread(&store, None, PositionRange::default())
        );
    }
    store.close();
}
