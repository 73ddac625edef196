use super::*;
use crate::clock::ManualClock;
use crate::ledger::event::tests::event;
use crate::ledger::export::Format;
use rusqlite::Connection;

pub(super) const S_US: i64 = 1_000_000;

pub(super) fn store_at(
    dir: &std::path::Path,
    name: &str,
    durability: Durability,
    clock: Arc<dyn Clock>,
) -> SqliteStore {
    SqliteStore::open(StoreOptions {
        path: dir.join(name),
        retention_us: Some(3_600 * S_US),
        durability,
        clock,
        log: Arc::new(|_, _| {}),
        pricing: None,
    })
    .unwrap()
}

/// A scratch directory removed when the test ends.
pub(super) struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(format!("uw-test-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

pub(super) fn manual_at(us: i64) -> Arc<ManualClock> {
    ManualClock::new(us as u64 * 1_000)
}

#[test]
fn records_are_queryable_after_flush_in_time_order() {
    let dir = tempdir();
    let store = store_at(&dir, "a.db", Durability::Batch, manual_at(100 * S_US));
    for (i, ts) in [30, 10, 20].iter().enumerate() {
        store
            .record(event(&format!("agent-{i}"), ts * S_US, 1))
            .unwrap();
    }
    store.flush().unwrap();
    let all = store.query(&Filters::default(), None, 0).unwrap();
    let agents: Vec<_> = all.iter().map(|e| e.agent_id.as_str()).collect();
    assert_eq!(agents, ["agent-1", "agent-2", "agent-0"]);
    let page = store.query(&Filters::default(), Some(1), 1).unwrap();
    assert_eq!(page[0].agent_id, "agent-2");
    let bounded = Filters {
        start_us: Some(10 * S_US),
        end_us: Some(20 * S_US),
        ..Filters::default()
    };
    assert_eq!(
        store.query(&bounded, None, 0).unwrap().len(),
        2,
        "both bounds inclusive"
    );
    assert_eq!(all[0], {
        let mut e = all[0].clone();
        e.metadata = None;
        e
    });
}

#[test]
fn duplicates_are_ignored_and_conflicts_refused() {
    let dir = tempdir();
    let store = store_at(&dir, "a.db", Durability::Commit, manual_at(0));
    let e = event("a", 1, 5);
    store.record(e.clone()).unwrap();
    store.record(e.clone()).unwrap();
    let mut changed = e.clone();
    changed.tokens_in = 6;
    assert!(matches!(
        store.record(changed.clone()),
        Err(CoreError::Conflict(_))
    ));
    let mut other_ns = changed.clone();
    other_ns.namespace = "other".into();
    store.record(other_ns).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!((stats.events, stats.duplicates, stats.conflicts), (2, 1, 1));

    // A batch with one conflicting event stores nothing.
    let fresh = event("b", 2, 1);
    let err = store
        .record_batch(vec![fresh.clone(), changed])
        .unwrap_err();
    assert!(matches!(err, CoreError::Conflict(m) if m.starts_with("events[1]")));
    assert_eq!(store.stats().unwrap().events, 2);
    assert_eq!(
        store.record_batch(vec![fresh.clone(), e.clone()]).unwrap(),
        1
    );
    assert_eq!(store.record_batch(vec![fresh]).unwrap(), 0);
}

#[test]
fn batch_durability_counts_conflicts_without_raising() {
    let dir = tempdir();
    let store = store_at(&dir, "a.db", Durability::Batch, manual_at(0));
    let e = event("a", 1, 5);
    let mut changed = e.clone();
    changed.tokens_out = 99;
    store.record(e).unwrap();
    store.record(changed).unwrap();
    store.flush().unwrap();
    let stats = store.stats().unwrap();
    assert_eq!((stats.events, stats.conflicts, stats.queued), (1, 1, 0));
}

#[test]
fn aggregates_match_a_plain_computation() {
    let dir = tempdir();
    let store = store_at(&dir, "a.db", Durability::Batch, manual_at(0));
    let mut events = Vec::new();
    for i in 0..500u64 {
        let mut e = event(
            &format!("agent-{}", i % 7),
            (i as i64) * 3_600 * S_US / 5,
            i % 13,
        );
        e.consumer_id = format!("c-{}", i % 3);
        e.model = if i % 5 == 0 {
            None
        } else {
            Some(format!("m-{}", i % 2))
        };
        e.cost_nanos = if i % 4 == 0 { None } else { Some(i * 10) };
        events.push(e);
    }
    store.record_batch(events.clone()).unwrap();
    let by_agent = store
        .aggregate("agent", "UTC", &Filters::default())
        .unwrap();
    assert_eq!(by_agent.len(), 7);
    for agg in &by_agent {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| Some(&e.agent_id) == agg.group.as_ref())
            .collect();
        assert_eq!(agg.events, mine.len() as u64);
        assert_eq!(agg.tokens_in, mine.iter().map(|e| e.tokens_in).sum::<u64>());
        assert_eq!(
            agg.cost_nanos,
            Some(mine.iter().filter_map(|e| e.cost_nanos).sum::<u64>())
        );
        assert_eq!(agg.unique_consumers, 3);
        assert_eq!(
            agg.unpriced_events,
            mine.iter().filter(|e| e.cost_nanos.is_none()).count() as u64
        );
    }
    let by_model = store
        .aggregate("model", "UTC", &Filters::default())
        .unwrap();
    assert_eq!(by_model[0].group, None);
    assert_eq!(by_model[0].events, 100);
    let days = store.aggregate("day", "UTC", &Filters::default()).unwrap();
    assert_eq!(days.iter().map(|d| d.events).sum::<u64>(), 500);
    assert_eq!(days[0].group.as_deref(), Some("1970-01-01"));
    let total = store.summary(&Filters::default()).unwrap();
    assert_eq!(total.events, 500);
    assert_eq!(total.group.as_deref(), Some("all"));
    assert!(store.aggregate("year", "UTC", &Filters::default()).is_err());
    assert!(store
        .aggregate("day", "Nowhere/City", &Filters::default())
        .is_err());
}

#[test]
fn purge_keeps_the_event_exactly_at_the_cutoff() {
    let dir = tempdir();
    let now = 10_000 * S_US;
    let store = store_at(&dir, "a.db", Durability::Batch, manual_at(now));
    let cutoff = now - 3_600 * S_US;
    store
        .record_batch(vec![
            event("old", cutoff - 1, 1),
            event("edge", cutoff, 1),
            event("new", cutoff + 1, 1),
        ])
        .unwrap();
    assert_eq!(store.purge_expired().unwrap(), 1);
    let left: Vec<_> = store
        .query(&Filters::default(), None, 0)
        .unwrap()
        .into_iter()
        .map(|e| e.agent_id)
        .collect();
    assert_eq!(left, ["edge", "new"]);
}

#[test]
fn every_filter_with_a_time_range_uses_an_index() {
    let dir = tempdir();
    let store = store_at(&dir, "a.db", Durability::Batch, manual_at(0));
    store.record_batch(vec![event("a", 1, 1)]).unwrap();
    for column in [
        "namespace",
        "agent_id",
        "consumer_id",
        "task_id",
        "model",
        "action",
    ] {
        let plan: Vec<String> = store
            .read(|c| {
                let sql = format!("EXPLAIN QUERY PLAN SELECT * FROM usage_events WHERE {column} = ?1 AND ts >= ?2 AND ts <= ?3");
                let mut stmt = c.prepare(&sql)?;
                let rows = stmt.query_map(rusqlite::params!["x", 0, 1], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .unwrap();
        let plan = plan.join(" | ");
        assert!(
            plan.contains("USING INDEX") && plan.contains(column) && plan.contains("ts>? AND ts<?"),
            "{column}: {plan}"
        );
    }
}

#[test]
fn several_writers_on_one_file_lose_nothing() {
    let dir = tempdir();
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let dir = dir.to_path_buf();
            std::thread::spawn(move || {
                let store = store_at(&dir, "shared.db", Durability::Batch, manual_at(0));
                for i in 0..2_000 {
                    store.record(event(&format!("w{w}"), i, 1)).unwrap();
                }
                store.close();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = store_at(&dir, "shared.db", Durability::Batch, manual_at(0));
    let stats = store.stats().unwrap();
    assert_eq!(stats.events, 8_000);
    assert_eq!(stats.write_errors, 0);
}

#[test]
fn export_streams_every_format() {
    let dir = tempdir();
    let store = store_at(&dir, "a.db", Durability::Batch, manual_at(0));
    store
        .record_batch((0..10).map(|i| event("a", i, 1)))
        .unwrap();
    let mut out = Vec::new();
    assert_eq!(
        store
            .export(&Filters::default(), Format::Csv, Some(4), &mut out)
            .unwrap(),
        4
    );
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 5);
    let mut out = Vec::new();
    assert_eq!(
        store
            .export(&Filters::default(), Format::Ndjson, None, &mut out)
            .unwrap(),
        10
    );
}

#[test]
fn closed_stores_refuse_work() {
    let dir = tempdir();
    let store = store_at(&dir, "a.db", Durability::Batch, manual_at(0));
    store.close();
    store.close();
    assert!(matches!(
        store.record(event("a", 1, 1)),
        Err(CoreError::Store(_))
    ));
    assert!(store.flush().is_err());
}

#[test]
fn pages_neither_skip_nor_repeat_while_events_arrive() {
    let dir = tempdir();
    let store = store_at(&dir, "p.db", Durability::Commit, manual_at(100 * S_US));
    // Several events share a timestamp, so the cursor must order by id too.
    for i in 0..25 {
        store
            .record(event(&format!("agent-{i}"), (10 + i / 4) * S_US, 1))
            .unwrap();
    }
    let filters = Filters::default();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let (events, next) = store.page(&filters, 7, 0, cursor.as_deref()).unwrap();
        pages += 1;
        seen.extend(events.iter().map(|e| e.agent_id.clone()));
        // A newer event arriving between pages lands at the end, read once.
        if pages == 2 {
            store.record(event("late", 90 * S_US, 1)).unwrap();
        }
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..25).map(|i| format!("agent-{i}")).collect();
    expected.push("late".into());
    assert_eq!(seen, expected);
    assert_eq!(pages, 4, "26 events in pages of 7, no empty trailing page");

    let other = Filters {
        agent_id: Some("agent-1".into()),
        ..Filters::default()
    };
    let (_, next) = store.page(&filters, 3, 0, None).unwrap();
    let err = store.page(&other, 3, 0, next.as_deref()).unwrap_err();
    assert!(matches!(err, CoreError::InvalidArgument("cursor", _)));
    assert!(matches!(
        store.page(&filters, 0, 0, None).unwrap_err(),
        CoreError::InvalidArgument("limit", _)
    ));
    let (skipped, _) = store.page(&filters, 2, 24, None).unwrap();
    let names: Vec<_> = skipped.iter().map(|e| e.agent_id.as_str()).collect();
    assert_eq!(names, ["agent-24", "late"], "offset 24 of 26 leaves two");
}

/// Events over several namespaces and about two days, some unpriced.
pub(super) fn spread_events(n: u64) -> Vec<UsageEvent> {
    (0..n)
        .map(|i| {
            let mut e = event(
                &format!("agent-{}", i % 7),
                (i as i64 * 7_919 * S_US) % (50 * 3_600 * S_US),
                i,
            );
            e.namespace = ["a", "b", "c"][(i % 3) as usize].into();
            e.consumer_id = format!("c-{}", i % 11);
            e.cost_nanos = (i % 4 != 0).then_some(i * 10);
            e
        })
        .collect()
}

fn assert_summaries_match_the_events(store: &SqliteStore) {
    let h = rollup::HOUR_US;
    let ranges = [
        (None, None),
        (Some(0), None),
        (None, Some(10 * h)),
        (Some(h / 2), Some(30 * h + 17)),
        (Some(3 * h), Some(5 * h - 1)),
        (Some(3 * h + 1), Some(3 * h + 20 * S_US)),
        (Some(-5 * h), Some(100 * h)),
    ];
    for namespace in [None, Some("a"), Some("b"), Some("zzz")] {
        for (start_us, end_us) in ranges {
            let filters = Filters {
                namespace: namespace.map(String::from),
                start_us,
                end_us,
                ..Filters::default()
            };
            let from_events = store.read(|c| read::summary(c, &filters)).unwrap();
            assert_eq!(store.summary(&filters).unwrap(), from_events, "{filters:?}");
        }
    }
}

#[test]
fn summaries_from_hourly_totals_equal_summaries_from_events() {
    let dir = tempdir();
    // Before the purge below (a manual clock never goes back).
    let clock = manual_at(20 * 3_600 * S_US);
    let store = store_at(&dir, "r.db", Durability::Batch, clock.clone());
    let events = spread_events(3_000);
    store.record_batch(events[..1_000].to_vec()).unwrap();
    for e in &events[1_000..] {
        store.record(e.clone()).unwrap();
    }
    store.record_batch(events[..10].to_vec()).unwrap(); // duplicates add nothing
    store.flush().unwrap();
    assert_summaries_match_the_events(&store);

    // Retention is one hour: the purge cuts through an hour.
    clock.set(30 * 3_600_000_000_000 + 1_234_567_000);
    let purged = store.purge_expired().unwrap();
    assert!(purged > 0 && purged < 3_000, "{purged}");
    assert_summaries_match_the_events(&store);
    store.close();

    // A ledger from before the hourly totals existed gets them on opening.
    let conn = Connection::open(dir.join("r.db")).unwrap();
    conn.execute_batch(
        "DROP TABLE usage_hourly; DROP TABLE usage_rollup; ALTER TABLE usage_events DROP COLUMN cost_priced; \
         DROP INDEX usage_events_unchained; DROP TABLE chain_blocks; DROP TABLE chain_heads; DROP TABLE chain_purges; \
         ALTER TABLE usage_events DROP COLUMN artifact_digest; \
         ALTER TABLE usage_events DROP COLUMN chain_position; \
         ALTER TABLE usage_events DROP COLUMN chain_digest; \
         DELETE FROM schema_version WHERE version >= 2;",
    )
    .unwrap();
    drop(conn);
    let reopened = store_at(&dir, "r.db", Durability::Batch, clock);
    assert_summaries_match_the_events(&reopened);
}

#[test]
fn totals_of_the_largest_counts_saturate_instead_of_failing() {
    let dir = tempdir();
    let store = store_at(&dir, "big.db", Durability::Commit, manual_at(100 * S_US));
    let max = crate::usage::MAX_COUNT;
    let big = |agent: &str| {
        let mut e = event(agent, 10 * S_US, max);
        e.cost_nanos = Some(max);
        e
    };
    store
        .record_batch(vec![big("a"), big("a"), big("b")])
        .unwrap();
    store.record(big("c")).unwrap(); // the hourly totals saturate too
    let all = Filters::default();
    let summary = store.summary(&all).unwrap();
    assert_eq!(summary.events, 4);
    assert_eq!((summary.tokens_in, summary.cost_nanos), (max, Some(max)));
    let from_events = store.read(|c| read::summary(c, &all)).unwrap();
    assert_eq!(from_events.tokens_in, max);
    for group_by in ["agent", "day", "model"] {
        let groups = store.aggregate(group_by, "UTC", &all).unwrap();
        assert_eq!(
            groups.iter().map(|g| g.events).sum::<u64>(),
            4,
            "{group_by}"
        );
        assert!(groups.iter().all(|g| g.tokens_in == max), "{group_by}");
    }
}

#[test]
fn timestamps_outside_years_1_to_9999_are_refused() {
    use crate::ledger::event::{MAX_TIMESTAMP_US, MIN_TIMESTAMP_US};
    for (ts, ok) in [
        (MIN_TIMESTAMP_US, true),
        (MAX_TIMESTAMP_US, true),
        (MIN_TIMESTAMP_US - 1, false),
        (MAX_TIMESTAMP_US + 1, false),
    ] {
        assert_eq!(event("a", ts, 1).validate().is_ok(), ok, "{ts}");
    }
}

fn prices(input_usd_per_million: f64) -> Arc<crate::pricing::Pricing> {
    let spec = serde_json::json!({"gpt-4o": {"input": input_usd_per_million, "output": 0.0}});
    Arc::new(crate::pricing::Pricing::from_json_object(spec.as_object().unwrap()).unwrap())
}

#[test]
fn the_store_prices_events_without_a_cost_and_reprices_them_later() {
    let dir = tempdir();
    let store = SqliteStore::open(StoreOptions {
        path: dir.join("p.db"),
        retention_us: None,
        durability: Durability::Commit,
        clock: manual_at(100 * S_US),
        log: Arc::new(|_, _| {}),
        pricing: Some(prices(1.0)),
    })
    .unwrap();
    let unpriced = |agent: &str, model: Option<&str>| {
        let mut e = event(agent, 10 * S_US, 2_000_000); // $2 at $1/M
        e.cost_nanos = None;
        e.model = model.map(String::from);
        e
    };
    let filled = unpriced("filled", Some("gpt-4o"));
    let mut given = unpriced("given", Some("gpt-4o"));
    given.cost_nanos = Some(7);
    let unknown = unpriced("unknown", Some("mystery"));
    store
        .record_batch(vec![filled.clone(), given, unknown])
        .unwrap();
    // A retry of the event as it was sent is a duplicate, not a conflict.
    assert_eq!(store.record_batch(vec![filled]).unwrap(), 0);
    let cost_of = |store: &SqliteStore| -> Vec<(String, Option<u64>)> {
        let events = store.query(&Filters::default(), None, 0).unwrap();
        events
            .into_iter()
            .map(|e| (e.agent_id, e.cost_nanos))
            .collect()
    };
    let expected = |filled: u64, unknown: Option<u64>| {
        vec![
            ("filled".to_string(), Some(filled)),
            ("given".to_string(), Some(7)),
            ("unknown".to_string(), unknown),
        ]
    };
    assert_eq!(cost_of(&store), expected(2_000_000_000, None));

    // Prices change: the filled cost follows, the given one stays.
    assert_eq!(store.reprice(prices(0.5), &Filters::default()).unwrap(), 1);
    assert_eq!(cost_of(&store), expected(1_000_000_000, None));
    let both = serde_json::json!({
        "gpt-4o": {"input": 0.5, "output": 0.0},
        "mystery": {"input": 3.0, "output": 0.0},
    });
    let with_mystery =
        crate::pricing::Pricing::from_json_object(both.as_object().unwrap()).unwrap();
    // A model priced only now gets its cost; repricing again changes nothing.
    assert_eq!(
        store
            .reprice(Arc::new(with_mystery.clone()), &Filters::default())
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .reprice(Arc::new(with_mystery), &Filters::default())
            .unwrap(),
        0
    );
    assert_eq!(
        cost_of(&store),
        expected(1_000_000_000, Some(6_000_000_000))
    );
    let all = Filters::default();
    let from_events = store.read(|c| read::summary(c, &all)).unwrap();
    assert_eq!(store.summary(&all).unwrap(), from_events);
    assert_eq!(from_events.cost_nanos, Some(7_000_000_007));
}
