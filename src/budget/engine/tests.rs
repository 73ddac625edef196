//! The engine's contract, run on every state (`backends::all()`).

mod backends;

use super::*;
use crate::budget::{Budget, Period, Scope};
use backends::Backend;
use std::sync::Arc;

const USD: u64 = 1_000_000_000;
const DAY_US: i64 = 86_400_000_000;
/// 2026-01-31T12:00:00Z
const JAN_31_NOON: i64 = 1_769_860_800_000_000;

fn budget(name: &str, limit_usd: u64, period: Period, action: &str) -> Budget {
    let downgrade = (action == "downgrade").then(|| "small-model".to_string());
    Budget::new(
        name,
        limit_usd * USD,
        Scope::Global,
        None,
        period,
        "UTC",
        vec![0.5, 0.75, 0.9, 1.0],
        action,
        downgrade,
        false,
    )
    .unwrap()
}

fn engine(backend: Backend, budgets: Vec<Budget>) -> Engine {
    backend.apply(
        Engine::new(budgets, Box::new(|_, _, _, _| Ok(0)), None).unwrap(),
        None,
    )
}

fn call() -> CallScope {
    CallScope {
        namespace: "default".into(),
        agent_id: "bot".into(),
        consumer_id: "alice".into(),
        model: Some("big-model".into()),
        task_id: None,
    }
}

#[test]
fn concurrent_calls_never_commit_past_the_limit() {
    for backend in backends::all() {
        let e = Arc::new(engine(
            backend,
            vec![budget("b", 50, Period::Monthly, "block")],
        ));
        let admitted: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..100)
                .map(|_| {
                    let e = e.clone();
                    s.spawn(move || match e.check(&call(), USD, JAN_31_NOON).unwrap() {
                        Ok(a) => Some(a.reservation),
                        Err(_) => None,
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(admitted.len(), 50, "exactly the limit's worth of estimates");
        for id in admitted {
            e.settle(id, USD, JAN_31_NOON).unwrap();
        }
        let [status] = e.status(JAN_31_NOON).unwrap().try_into().unwrap();
        assert_eq!((status.spent_nanos, status.reserved_nanos), (50 * USD, 0));
        assert!(e.check(&call(), 1, JAN_31_NOON).unwrap().is_err());
    }
}

#[test]
fn each_threshold_fires_once_per_period_and_a_new_month_resets() {
    for backend in backends::all() {
        let e = engine(backend, vec![budget("b", 10, Period::Monthly, "alert")]);
        let mut fired = Vec::new();
        for _ in 0..12 {
            let a = e.check(&call(), USD, JAN_31_NOON).unwrap().unwrap();
            for alert in e.settle(a.reservation, USD, JAN_31_NOON).unwrap() {
                fired.push(alert.kind);
            }
        }
        let expected: Vec<AlertKind> = [0.5, 0.75, 0.9, 1.0]
            .into_iter()
            .map(AlertKind::Threshold)
            .collect();
        assert_eq!(
            fired, expected,
            "an alert budget admits past its limit, alerting once each"
        );
        // Midnight at the month's end: February starts afresh.
        let feb = JAN_31_NOON + DAY_US / 2;
        let a = e.check(&call(), USD, feb).unwrap().unwrap();
        assert!(matches!(
            a.alerts.as_slice(),
            [Alert {
                kind: AlertKind::Reset,
                ..
            }]
        ));
        let [status] = e.status(feb).unwrap().try_into().unwrap();
        assert_eq!(status.spent_nanos, 0);
        assert_eq!(status.period_start_us, feb);
    }
}

#[test]
fn daily_periods_follow_the_time_zone_across_a_dst_change() {
    for backend in backends::all() {
        let mut b = budget("b", 10, Period::Daily, "block");
        b.tz = "America/New_York".parse().unwrap();
        let e = engine(backend, vec![b]);
        // 2026-03-08 is 23 hours long in New York (clocks spring forward).
        let mar_8_local_midnight = 1_772_946_000_000_000; // 05:00Z
        let mar_9_local_midnight = mar_8_local_midnight + 23 * 3_600_000_000;
        let a = e
            .check(&call(), USD, mar_8_local_midnight + 1)
            .unwrap()
            .unwrap();
        e.settle(a.reservation, USD, mar_8_local_midnight + 1)
            .unwrap();
        let [before] = e
            .status(mar_9_local_midnight - 1)
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(before.next_reset_us, Some(mar_9_local_midnight));
        assert_eq!(before.spent_nanos, USD);
        let [after] = e.status(mar_9_local_midnight).unwrap().try_into().unwrap();
        assert_eq!(
            (after.spent_nanos, after.period_start_us),
            (0, mar_9_local_midnight)
        );
    }
}

#[test]
fn downgrade_names_the_cheaper_model_and_blocking_reserves_nothing() {
    for backend in backends::all() {
        let e = engine(
            backend,
            vec![
                budget("soft-cap", 2, Period::Total, "downgrade"),
                budget("hard-cap", 3, Period::Total, "block"),
            ],
        );
        let first = e.check(&call(), 2 * USD, 0).unwrap().unwrap();
        assert_eq!(first.downgrade_to, None);
        e.settle(first.reservation, 2 * USD, 0).unwrap();
        let second = e.check(&call(), USD / 2, 0).unwrap().unwrap();
        assert_eq!(second.downgrade_to.as_deref(), Some("small-model"));
        let refused = e.check(&call(), USD, 0).unwrap().unwrap_err();
        assert_eq!(refused.budget, "hard-cap");
        let reserved: Vec<u64> = e
            .status(0)
            .unwrap()
            .iter()
            .map(|s| s.reserved_nanos)
            .collect();
        assert_eq!(
            reserved,
            [USD / 2, USD / 2],
            "the refused call reserved nothing"
        );
        assert!(e.settle(999, 0, 0).is_err());
    }
}

#[test]
fn spend_is_rebuilt_from_the_ledger_per_scope_value() {
    for backend in backends::all() {
        let mut b = budget("per-agent", 10, Period::Daily, "block");
        b.scope = Scope::Agent;
        let e = Engine::new(
            vec![b],
            Box::new(|budget, value, start, end| {
                assert_eq!(budget.name, "per-agent");
                assert!(start < end);
                Ok(if value == "bot" { 9 * USD } else { 0 })
            }),
            None,
        )
        .unwrap()
        .apply_to(backend);
        assert!(e.check(&call(), 2 * USD, JAN_31_NOON).unwrap().is_err());
        let other = CallScope {
            agent_id: "other".into(),
            ..call()
        };
        assert!(e.check(&other, 2 * USD, JAN_31_NOON).unwrap().is_ok());
        let crossed: Vec<Vec<f64>> = e
            .status(JAN_31_NOON)
            .unwrap()
            .into_iter()
            .map(|s| s.thresholds_crossed)
            .collect();
        assert_eq!(
            crossed,
            [vec![0.5, 0.75, 0.9], vec![]],
            "restored spend does not re-alert"
        );
    }
}

#[test]
fn rolling_periods_forget_what_slid_out() {
    for backend in backends::all() {
        let e = engine(
            backend,
            vec![budget("b", 3, Period::Rolling(60_000_000), "block")],
        );
        for t in [0, 10, 20] {
            let a = e.check(&call(), USD, t * 1_000_000).unwrap().unwrap();
            e.settle(a.reservation, USD, t * 1_000_000).unwrap();
        }
        assert!(e.check(&call(), USD, 59_000_000).unwrap().is_err());
        // Shared, spend is kept in buckets of a 60th of the window, each
        // forgotten once its end has slid out: up to one bucket late.
        assert!(e.check(&call(), USD, 61_000_000).unwrap().is_ok());
    }
}

#[test]
fn bad_budgets_name_the_argument() {
    let bad = |thresholds: Vec<f64>, action: &str, downgrade: Option<&str>| {
        Budget::new(
            "b",
            USD,
            Scope::Agent,
            None,
            Period::Daily,
            "UTC",
            thresholds,
            action,
            downgrade.map(String::from),
            false,
        )
        .unwrap_err()
        .to_string()
    };
    assert!(bad(vec![0.0], "block", None).starts_with("thresholds"));
    assert!(bad(vec![1.5], "block", None).starts_with("thresholds"));
    assert!(bad(vec![0.9, 0.5], "block", None).contains("ascending"));
    assert!(bad(vec![], "downgrade", None).starts_with("downgrade_to"));
    assert!(bad(vec![], "explode", None).starts_with("action"));
    assert!(Scope::parse("planet")
        .unwrap_err()
        .to_string()
        .starts_with("scope"));
    assert!(Period::parse("hourly")
        .unwrap_err()
        .to_string()
        .starts_with("period"));
    assert!(Period::rolling_seconds(-1.0).is_err());
    let tz = Budget::new(
        "b",
        1,
        Scope::Global,
        None,
        Period::Daily,
        "Mars/Base",
        vec![],
        "block",
        None,
        false,
    );
    assert!(tz.unwrap_err().to_string().starts_with("tz"));
    let twice = Engine::new(
        vec![
            budget("same", 1, Period::Total, "block"),
            budget("same", 2, Period::Total, "block"),
        ],
        Box::new(|_, _, _, _| Ok(0)),
        None,
    );
    assert!(twice.is_err());
}

#[test]
fn spend_recorded_elsewhere_is_read_again_every_refresh() {
    for backend in backends::all() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let elsewhere = Arc::new(AtomicU64::new(0));
        let seen = elsewhere.clone();
        let e = Engine::new(
            vec![budget("shared", 10, Period::Monthly, "block")],
            Box::new(move |_, _, _, _| Ok(seen.load(Ordering::SeqCst))),
            Some(5_000_000),
        )
        .unwrap()
        .apply_to(backend);
        let a = e.check(&call(), USD, JAN_31_NOON).unwrap().unwrap();
        e.settle(a.reservation, USD, JAN_31_NOON).unwrap();
        // Another process records $8 (and this process's $1 reaches the ledger).
        elsewhere.store(9 * USD, Ordering::SeqCst);
        assert!(
            e.check(&call(), USD, JAN_31_NOON + 1).unwrap().is_ok(),
            "not read again yet"
        );
        let later = JAN_31_NOON + 5_000_000;
        let refused = e.check(&call(), 2 * USD, later).unwrap().unwrap_err();
        assert_eq!(refused.spent_nanos, 9 * USD);
    }
}

fn stored(namespace: &str, budget: &Budget, reset_us: Option<i64>) -> StoredBudget {
    StoredBudget {
        namespace: namespace.into(),
        name: budget.name.clone(),
        definition: crate::budget::definition::to_json(budget),
        created_us: 0,
        updated_us: 0,
        deleted_us: None,
        reset_us,
    }
}

use crate::ledger::budget_table::StoredBudget;

#[test]
fn stored_budgets_are_picked_up_on_refresh_and_confined_to_their_namespace() {
    for backend in backends::all() {
        let rows: Arc<parking_lot::Mutex<Vec<StoredBudget>>> = Arc::default();
        let source = rows.clone();
        let e = Engine::new(
            vec![budget("shared", 100, Period::Monthly, "block")],
            Box::new(|_, _, _, _| Ok(0)),
            Some(1_000_000),
        )
        .unwrap()
        .apply_to(backend)
        .with_stored(Box::new(move || Ok(source.lock().clone())));
        let mut t = JAN_31_NOON;
        assert!(e.check(&call(), 2 * USD, t).unwrap().is_ok());
        // The stored "shared" replaces the code one in namespace "default" only.
        rows.lock().push(stored(
            "default",
            &budget("shared", 1, Period::Monthly, "block"),
            None,
        ));
        assert!(
            e.check(&call(), 2 * USD, t).unwrap().is_ok(),
            "not before the refresh"
        );
        t += 1_000_000;
        assert!(
            e.check(&call(), 2 * USD, t).unwrap().is_err(),
            "after the refresh"
        );
        let other = CallScope {
            namespace: "other".into(),
            ..call()
        };
        assert!(
            e.check(&other, 2 * USD, t).unwrap().is_ok(),
            "the code budget still holds there"
        );
        rows.lock().clear();
        t += 1_000_000;
        assert!(
            e.check(&call(), 2 * USD, t).unwrap().is_ok(),
            "deleted: the code budget is back"
        );
    }
}

#[test]
fn a_reset_counts_spend_from_the_reset_on() {
    for backend in backends::all() {
        let rows: Arc<parking_lot::Mutex<Vec<StoredBudget>>> = Arc::default();
        let source = rows.clone();
        let starts: Arc<parking_lot::Mutex<Vec<i64>>> = Arc::default();
        let seen = starts.clone();
        let e = Engine::new(
            vec![],
            Box::new(move |_, _, start, _| {
                seen.lock().push(start);
                Ok(if start > JAN_31_NOON { 0 } else { 5 * USD })
            }),
            Some(1_000_000),
        )
        .unwrap()
        .apply_to(backend)
        .with_stored(Box::new(move || Ok(source.lock().clone())));
        let b = budget("b", 5, Period::Monthly, "block");
        rows.lock().push(stored("default", &b, None));
        assert!(
            e.check(&call(), USD, JAN_31_NOON).unwrap().is_err(),
            "spent up"
        );
        rows.lock()[0] = stored("default", &b, Some(JAN_31_NOON + 1));
        let later = JAN_31_NOON + 2_000_000;
        assert!(e.check(&call(), USD, later).unwrap().is_ok(), "reset");
        assert_eq!(*starts.lock().last().unwrap(), JAN_31_NOON + 1);
        let [status] = e.status(later).unwrap().try_into().unwrap();
        assert_eq!(status.period_start_us, JAN_31_NOON + 1);
        assert_eq!(status.namespace.as_deref(), Some("default"));
    }
}
