//! `verify` walked in parts answers exactly as the one-thread walk.

use super::tests::{manual_at, spread_events, store_at, tempdir, S_US};
use super::*;
use crate::ledger::chain_source;
use crate::ledger::chain_verify::ProblemKind;
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
            chain_source::verify(
                &mut chain::SqliteChain::new(&tx),
                namespace,
                range,
                &[],
                now,
            )
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

/// A store on `dir/name` holding `events`, committed.
fn committed(
    dir: &std::path::Path,
    name: &str,
    events: Vec<UsageEvent>,
    clock: Arc<crate::clock::ManualClock>,
) -> SqliteStore {
    let store = store_at(dir, name, Durability::Batch, clock);
    store.record_batch(events).unwrap();
    store.flush().unwrap();
    store
}

/// The request id at `position` of `namespace`.
fn request_at(store: &SqliteStore, namespace: &str, position: i64) -> String {
    store
        .read(|c| {
            Ok(c.query_row(
                "SELECT request_id FROM usage_events WHERE namespace = ?1 AND chain_position = ?2",
                rusqlite::params![namespace, position],
                |r| r.get(0),
            )?)
        })
        .unwrap()
}

#[test]
fn an_intact_ledger_is_answered_by_the_parts_as_by_one_thread() {
    let dir = tempdir();
    // Before the purge below (a manual clock never goes back).
    let clock = manual_at(20 * 3_600 * S_US);
    let store = committed(&dir, "parts.db", spread_events(3_000), clock.clone());
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
    assert!(report.rows > 0 && report.rows < 3_000, "{}", report.rows);
    assert_eq!(
        report,
        walked_on_one_thread(&store, None, PositionRange::default())
    );
    store.close();
}

#[test]
fn a_tampered_ledger_is_answered_by_the_one_thread_walk() {
    let dir = tempdir();
    let clock = manual_at(60 * 3_600 * S_US);
    let store = committed(&dir, "tampered.db", spread_events(3_000), clock);
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

/// Each namespace's rows per block, read by position: `(block, ids)`.
fn rows_by_block(conn: &Connection, namespace: &str) -> Vec<(i64, Vec<i64>)> {
    let mut stmt = conn
        .prepare(
            "SELECT (chain_position - 1) / ?2, id FROM usage_events WHERE namespace = ?1 ORDER BY chain_position",
        )
        .unwrap();
    let mut blocks: Vec<(i64, Vec<i64>)> = Vec::new();
    for row in stmt
        .query_map(rusqlite::params![namespace, chain_blocks::BLOCK], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap()
    {
        let (block, id) = row.unwrap();
        match blocks.last_mut() {
            Some((b, ids)) if *b == block => ids.push(id),
            _ => blocks.push((block, vec![id])),
        }
    }
    blocks
}

#[test]
fn blocks_hold_the_id_range_of_each_run_of_positions() {
    let dir = tempdir();
    let store = store_at(
        &dir,
        "blocks.db",
        Durability::Batch,
        manual_at(60 * 3_600 * S_US),
    );
    // Interleaved namespaces, in several transactions of different sizes.
    let events = spread_events(3_000);
    store.record_batch(events[..700].to_vec()).unwrap();
    for e in &events[700..] {
        store.record(e.clone()).unwrap();
    }
    store.flush().unwrap();
    store.close();
    let conn = Connection::open(dir.join("blocks.db")).unwrap();
    for namespace in ["a", "b", "c"] {
        let stored: Vec<(i64, i64, i64, bool)> = conn
            .prepare("SELECT block, first_id, last_id, ordered FROM chain_blocks WHERE namespace = ?1 ORDER BY block")
            .unwrap()
            .query_map([namespace], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let expected: Vec<(i64, i64, i64, bool)> = rows_by_block(&conn, namespace)
            .into_iter()
            .map(|(block, ids)| {
                let ascending = ids.windows(2).all(|w| w[0] < w[1]);
                (block, ids[0], *ids.last().unwrap(), ascending)
            })
            .collect();
        assert_eq!(stored, expected, "{namespace}");
        assert_eq!(
            stored.len(),
            4,
            "1,000 positions in blocks of {}",
            chain_blocks::BLOCK
        );
        assert!(stored.iter().all(|b| b.3));
    }
}

#[test]
fn rows_are_read_by_ranges_of_row_ids_in_position_order() {
    let dir = tempdir();
    let store = committed(&dir, "plan.db", spread_events(10), manual_at(0));
    let plan: Vec<String> = store
        .read(|c| {
            let sql = format!("EXPLAIN QUERY PLAN {}", chain_blocks::rows_sql("id"));
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params!["a", 1, 9, 0, 0], |r| {
                r.get::<_, String>(3)
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .unwrap();
    let plan = plan.join(" | ");
    assert!(
        plan.contains("INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
        "{plan}"
    );
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    store.close();
}

#[test]
fn a_ledger_whose_positions_do_not_follow_row_ids_reads_by_position() {
    let dir = tempdir();
    let clock = manual_at(60 * 3_600 * S_US);
    committed(&dir, "moved.db", spread_events(900), clock.clone()).close();
    // As a ledger chained before the blocks existed may be: a row of block 0
    // whose id is past every other row's, and the old index back.
    let conn = Connection::open(dir.join("moved.db")).unwrap();
    conn.execute_batch(
        "DROP INDEX usage_events_unchained; DROP TABLE chain_blocks; \
         CREATE UNIQUE INDEX usage_events_chain ON usage_events (namespace, chain_position); \
         UPDATE usage_events SET id = (SELECT MAX(id) + 1 FROM usage_events) WHERE namespace = 'a' AND chain_position = 5; \
         DELETE FROM schema_version WHERE version > 8;",
    )
    .unwrap();
    drop(conn);
    let store = store_at(&dir, "moved.db", Durability::Batch, clock);
    let ordered: Vec<(String, i64, bool)> = store
        .read(|c| {
            Ok(
                c.prepare("SELECT namespace, block, ordered FROM chain_blocks WHERE NOT ordered")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<_>>()?,
            )
        })
        .unwrap();
    assert_eq!(ordered, vec![("a".to_string(), 0, false)]);
    let report = walked_on_one_thread(&store, None, PositionRange::default());
    assert!(report.ok(), "{:?}", report.problem);
    assert_eq!(report.rows, 900);
    let (in_parts_report, _) = store
        .verify_in_parts(None, PositionRange::default(), &[], 0)
        .unwrap();
    assert_eq!(in_parts_report, report);
    // Receipts still find the digest before each position.
    let row = request_at(&store, "a", 6);
    assert!(store.receipt(&row, "a").unwrap().is_consistent());
    // New events extend the chain, and it still verifies.
    let mut more = spread_events(903)[900..].to_vec();
    for (i, e) in more.iter_mut().enumerate() {
        e.request_id = format!("more-{i}");
    }
    store.record_batch(more).unwrap();
    store.flush().unwrap();
    let report = walked_on_one_thread(&store, None, PositionRange::default());
    assert!(report.ok(), "{:?}", report.problem);
    assert_eq!(report.rows, 903);
    store.close();
}

#[test]
fn a_row_moved_out_of_its_block_is_found_by_reading_by_position() {
    let dir = tempdir();
    let clock = manual_at(60 * 3_600 * S_US);
    let store = committed(&dir, "hidden.db", spread_events(900), clock);
    let conn = Connection::open(dir.join("hidden.db")).unwrap();
    // The count still adds up, but the row at position 10 now sits outside
    // every block's id range, and position 12 is gone.
    conn.execute_batch(
        "UPDATE usage_events SET id = (SELECT MAX(id) + 1 FROM usage_events) WHERE namespace = 'b' AND chain_position = 10; \
         UPDATE usage_events SET tokens_in = tokens_in + 1 WHERE namespace = 'b' AND chain_position = 10; \
         DELETE FROM usage_events WHERE namespace = 'b' AND chain_position = 12;",
    )
    .unwrap();
    let problem = walked_on_one_thread(&store, Some("b"), PositionRange::default())
        .problem
        .expect("a problem");
    assert_eq!((problem.position, problem.kind), (10, ProblemKind::Altered));
    store.close();
}

#[test]
fn a_purge_forgets_the_blocks_it_emptied() {
    let dir = tempdir();
    let clock = manual_at(1_000 * S_US);
    // Positions in time order: the purge below removes positions 1..=600.
    let events: Vec<UsageEvent> = (0..1_000)
        .map(|i| crate::ledger::event::tests::event("agent", i * S_US, 1))
        .collect();
    let store = committed(&dir, "purged.db", events, clock.clone());
    let blocks = |store: &SqliteStore| -> Vec<i64> {
        store
            .read(|c| {
                Ok(c.prepare("SELECT block FROM chain_blocks ORDER BY block")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?)
            })
            .unwrap()
    };
    assert_eq!(blocks(&store), vec![0, 1, 2, 3]);
    // Retention is one hour: the cutoff is at 600 s.
    clock.set((3_600 + 600) * 1_000_000_000);
    assert_eq!(store.purge_expired().unwrap(), 600);
    // Blocks 0 and 1 (positions 1..=512) are empty; block 2 keeps 601..=768.
    assert_eq!(blocks(&store), vec![2, 3]);
    let report = walked_on_one_thread(&store, None, PositionRange::default());
    assert!(report.ok(), "{:?}", report.problem);
    assert_eq!(report.rows, 400);
    let first_kept = request_at(&store, "default", 601);
    assert!(store
        .receipt(&first_kept, "default")
        .unwrap()
        .is_consistent());
    store.close();
}
