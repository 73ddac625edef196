use super::*;
use crate::clock::ManualClock;
use crate::limits::{LimitSpec, Unit};
use crate::usage::Dimension;
use std::sync::atomic::{AtomicBool, Ordering};

const S: u64 = 1_000_000_000;

fn limits(specs: &[(Dimension, Unit, u64)]) -> Limits {
    Limits::new(
        specs
            .iter()
            .map(|(dimension, unit, amount)| LimitSpec::new(*dimension, *unit, *amount))
            .collect(),
    )
    .unwrap()
}

fn rpm_tpm(rpm: u64, tpm: u64) -> Limits {
    limits(&[
        (Dimension::Requests, Unit::Minute, rpm),
        (Dimension::TotalTokens, Unit::Minute, tpm),
    ])
}

fn call(input: u64, output: u64) -> Usage {
    Usage {
        requests: 1,
        input_tokens: input,
        output_tokens: output,
        ..Usage::ZERO
    }
}

fn manual(l: Limits) -> (RateLimiter, Arc<ManualClock>) {
    let clock = ManualClock::new(0);
    (RateLimiter::new(l, [], clock.clone()), clock)
}

#[test]
fn admits_until_a_limit_then_refuses_with_exact_retry_after() {
    let (limiter, clock) = manual(rpm_tpm(3, 1_000));
    for _ in 0..3 {
        assert!(limiter.try_acquire(&["k"], call(10, 0)).unwrap().allowed);
        clock.advance(10 * S);
    }
    let d = limiter.try_acquire(&["k"], call(10, 0)).unwrap();
    assert!(!d.allowed);
    // The first request (t=0) leaves the window at t=60; now is t=30.
    assert_eq!(d.retry_after_ns, Some(30 * S));
    assert_eq!(d.limit.unwrap().1.name(), "requests_per_minute");
    clock.advance(30 * S - 1);
    assert!(!limiter.try_acquire(&["k"], call(10, 0)).unwrap().allowed);
    clock.advance(1);
    assert!(limiter.try_acquire(&["k"], call(10, 0)).unwrap().allowed);
}

#[test]
fn token_limit_retry_after_waits_for_enough_tokens_to_leave() {
    let (limiter, clock) = manual(rpm_tpm(100, 1_000));
    limiter.try_acquire(&["k"], call(400, 0)).unwrap();
    clock.advance(10 * S);
    limiter.try_acquire(&["k"], call(300, 0)).unwrap();
    clock.advance(10 * S);
    limiter.try_acquire(&["k"], call(200, 0)).unwrap();
    // 900 used; 500 more needs 400 gone: the t=0 entry, at t=60 (now 20).
    let d = limiter.check(&["k"], call(500, 0)).unwrap();
    assert_eq!(d.retry_after_ns, Some(40 * S));
    // 800 more needs 700 gone: t=0 and t=10 entries, at t=70.
    let d = limiter.check(&["k"], call(0, 800)).unwrap();
    assert_eq!(d.retry_after_ns, Some(50 * S));
    assert_eq!(d.limit.unwrap().1.name(), "total_tokens_per_minute");
    assert_eq!(limiter.usage("k", None).unwrap().total_tokens(), 900);
}

#[test]
fn a_request_larger_than_a_limit_never_fits() {
    let (limiter, _) = manual(rpm_tpm(10, 100));
    let d = limiter.try_acquire(&["k"], call(101, 0)).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ns, None);
    let err = limiter.enqueue(&["k"], call(101, 0), None).err().unwrap();
    match err {
        CoreError::RateLimited(r) => {
            assert_eq!(r.retry_after_ns, None);
            assert_eq!(r.limit.unwrap().name(), "total_tokens_per_minute");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(limiter.usage("k", None).unwrap().is_zero());
}

#[test]
fn every_window_is_checked_atomically() {
    let (limiter, clock) = manual(limits(&[
        (Dimension::Requests, Unit::Second, 2),
        (Dimension::Requests, Unit::Minute, 3),
    ]));
    assert!(limiter.try_acquire(&["k"], call(0, 0)).unwrap().allowed);
    assert!(limiter.try_acquire(&["k"], call(0, 0)).unwrap().allowed);
    let d = limiter.try_acquire(&["k"], call(0, 0)).unwrap();
    assert_eq!(d.limit.unwrap().1.name(), "requests_per_second");
    assert_eq!(d.retry_after_ns, Some(S));
    clock.advance(S);
    assert!(limiter.try_acquire(&["k"], call(0, 0)).unwrap().allowed);
    let d = limiter.try_acquire(&["k"], call(0, 0)).unwrap();
    assert_eq!(d.limit.unwrap().1.name(), "requests_per_minute");
    assert_eq!(d.retry_after_ns, Some(59 * S));
    assert_eq!(limiter.usage("k", Some(S)).unwrap().requests, 1);
    assert_eq!(limiter.usage("k", None).unwrap().requests, 3);
}

#[test]
fn settle_refunds_or_charges_at_the_original_time() {
    let (limiter, clock) = manual(rpm_tpm(100, 1_000));
    let r = limiter
        .try_acquire(&["k"], call(500, 300))
        .unwrap()
        .reservation
        .unwrap();
    clock.advance(30 * S);
    limiter.try_acquire(&["k"], call(100, 0)).unwrap();
    r.settle(call(200, 50)).unwrap();
    assert_eq!(limiter.usage("k", None).unwrap().total_tokens(), 350);
    assert!(matches!(
        r.settle(call(1, 1)),
        Err(CoreError::AlreadySettled)
    ));
    // The settled usage still leaves at t=60, with the original entry.
    clock.advance(30 * S);
    assert_eq!(limiter.usage("k", None).unwrap().total_tokens(), 100);

    let r = limiter
        .try_acquire(&["k"], call(100, 100))
        .unwrap()
        .reservation
        .unwrap();
    r.settle(call(100, 400)).unwrap();
    assert_eq!(limiter.usage("k", None).unwrap().total_tokens(), 600);
    assert_eq!(r.usage().output_tokens, 400);
}

#[test]
fn cancel_refunds_everything_once() {
    let (limiter, _) = manual(rpm_tpm(1, 1_000));
    let r = limiter
        .try_acquire(&["k"], call(10, 10))
        .unwrap()
        .reservation
        .unwrap();
    assert!(!limiter.try_acquire(&["k"], call(0, 0)).unwrap().allowed);
    assert!(r.cancel().unwrap());
    assert!(!r.cancel().unwrap());
    assert!(limiter.usage("k", None).unwrap().is_zero());
    assert!(limiter.try_acquire(&["k"], call(0, 0)).unwrap().allowed);
}

#[test]
fn zero_estimate_reservation_settles_extra_usage() {
    let (limiter, clock) = manual(rpm_tpm(10, 1_000));
    let r = limiter
        .try_acquire(&["k"], Usage::ZERO)
        .unwrap()
        .reservation
        .unwrap();
    clock.advance(S);
    r.settle(call(0, 70)).unwrap();
    assert_eq!(limiter.usage("k", None).unwrap().output_tokens, 70);
    clock.advance(59 * S);
    assert_eq!(limiter.usage("k", None).unwrap().output_tokens, 0);
}

#[test]
fn multi_key_acquire_is_all_or_nothing() {
    let clock = ManualClock::new(0);
    let limiter = RateLimiter::new(
        rpm_tpm(10, 1_000),
        [("model".to_string(), rpm_tpm(1, 1_000))],
        clock.clone(),
    );
    assert!(
        limiter
            .try_acquire(&["tenant", "model"], call(1, 1))
            .unwrap()
            .allowed
    );
    let d = limiter
        .try_acquire(&["tenant", "model"], call(1, 1))
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(d.limit.unwrap().0, 1, "refused by the second key");
    assert_eq!(limiter.usage("tenant", None).unwrap().requests, 1);
    assert!(matches!(
        limiter.try_acquire(&["a", "a"], call(1, 1)),
        Err(CoreError::InvalidArgument("key", _))
    ));
}

#[test]
fn reset_forgets_usage_and_voids_older_reservations() {
    let (limiter, _) = manual(rpm_tpm(2, 1_000));
    let old = limiter
        .try_acquire(&["k"], call(100, 0))
        .unwrap()
        .reservation
        .unwrap();
    limiter.reset(Some("k"));
    assert!(limiter.usage("k", None).unwrap().is_zero());
    limiter.try_acquire(&["k"], call(50, 0)).unwrap();
    old.cancel().unwrap();
    assert_eq!(limiter.usage("k", None).unwrap().input_tokens, 50);
}

#[test]
fn idle_keys_are_reclaimed() {
    let (limiter, clock) = manual(rpm_tpm(10, 1_000));
    for i in 0..1_000 {
        let _ = limiter
            .try_acquire(&[format!("key-{i}")], call(1, 0))
            .unwrap();
    }
    assert_eq!(limiter.len(), 1_000);
    clock.advance(61 * S);
    // Later traffic on other keys sweeps the idle ones, shard by shard;
    // checks create no state of their own.
    for i in 0..200_000 {
        let _ = limiter
            .check(&[format!("other-{}", i % 2_000)], call(1, 0))
            .unwrap();
    }
    assert_eq!(limiter.len(), 0, "idle keys are swept, and checks add none");
    for i in 0..10 {
        let _ = limiter
            .try_acquire(&[format!("late-{i}")], call(1, 0))
            .unwrap();
    }
    assert_eq!(limiter.len(), 10);
    clock.advance(61 * S);
    assert_eq!(limiter.reclaim(), 10);
    assert_eq!(limiter.len(), 0);
}

#[test]
fn snapshot_restores_onto_another_limiter() {
    let (limiter, clock) = manual(rpm_tpm(10, 1_000));
    limiter.try_acquire(&["a"], call(100, 0)).unwrap();
    clock.advance(20 * S);
    limiter.try_acquire(&["b"], call(5, 0)).unwrap();
    let snap = limiter.snapshot();
    let (copy, copy_clock) = manual(rpm_tpm(10, 1_000));
    copy_clock.advance(1_000 * S);
    copy.restore(&snap);
    assert_eq!(copy.snapshot(), snap);
    assert_eq!(copy.usage("a", None).unwrap().input_tokens, 100);
    copy_clock.advance(40 * S);
    assert_eq!(copy.usage("a", None).unwrap().input_tokens, 0);
    assert_eq!(copy.usage("b", None).unwrap().input_tokens, 5);
    assert_eq!(limiter.usage("a", None).unwrap().input_tokens, 100);
}

#[tokio::test]
async fn waiters_are_admitted_in_fifo_order_when_the_clock_moves() {
    let (limiter, clock) = manual(rpm_tpm(100, 1_000));
    limiter.try_acquire(&["k"], call(1_000, 0)).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // A big request first, then small ones that would each fit sooner.
    for (i, tokens) in [900u64, 10, 10, 10].into_iter().enumerate() {
        let (limiter, order) = (limiter.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let r = limiter
                .acquire(&["k"], call(tokens, 0), None)
                .await
                .unwrap();
            order.lock().push(i);
            r
        }));
        tokio::task::yield_now().await;
    }
    tokio::task::yield_now().await;
    assert!(order.lock().is_empty());
    let d = limiter.try_acquire(&["k"], call(1, 0)).unwrap();
    assert!(!d.allowed, "try_acquire does not jump the queue");
    clock.advance(60 * S);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3]);
    assert_eq!(limiter.usage("k", None).unwrap().input_tokens, 930);
}

#[tokio::test]
async fn a_refund_wakes_the_head_waiter() {
    let (limiter, _clock) = manual(rpm_tpm(1, 1_000));
    let r = limiter
        .try_acquire(&["k"], call(0, 0))
        .unwrap()
        .reservation
        .unwrap();
    let waiting = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire(&["k"], call(0, 0), None).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    r.cancel().unwrap();
    assert!(waiting.await.unwrap().is_ok());
}

#[tokio::test]
async fn timeout_records_nothing_and_cancellation_leaves_the_queue() {
    let (limiter, clock) = manual(rpm_tpm(1, 1_000));
    limiter.try_acquire(&["k"], call(0, 0)).unwrap();
    let timed = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire(&["k"], call(5, 0), Some(10 * S)).await })
    };
    let cancelled = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire(&["k"], call(7, 0), None).await })
    };
    tokio::task::yield_now().await;
    cancelled.abort();
    assert!(cancelled.await.is_err());
    clock.advance(10 * S);
    match timed.await.unwrap() {
        Err(CoreError::RateLimited(r)) => assert!(r.message.contains("timed out")),
        other => panic!("unexpected {other:?}"),
    }
    clock.advance(50 * S);
    assert!(
        limiter.try_acquire(&["k"], call(0, 0)).unwrap().allowed,
        "no waiter left queued"
    );
    assert_eq!(limiter.usage("k", None).unwrap().input_tokens, 0);
}

#[test]
fn blocking_acquire_waits_on_the_real_clock() {
    let limiter = RateLimiter::new(
        limits(&[(Dimension::Requests, Unit::Second, 2)]),
        [],
        Arc::new(crate::clock::SystemClock),
    );
    let start = std::time::Instant::now();
    for _ in 0..3 {
        limiter
            .acquire_blocking(&["k"], call(0, 0), None, &mut || false)
            .unwrap();
    }
    let waited = start.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(990),
        "{waited:?}"
    );
    limiter
        .acquire_blocking(&["k"], call(0, 0), Some(0), &mut || false)
        .unwrap();
    let err = limiter
        .acquire_blocking(&["k"], call(0, 0), Some(0), &mut || false)
        .unwrap_err();
    assert!(matches!(err, CoreError::RateLimited(_)));
}

#[test]
fn concurrent_threads_never_exceed_a_limit() {
    let clock = ManualClock::new(0);
    let limiter = RateLimiter::new(rpm_tpm(500, 20_000), [], clock.clone());
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (clock, stop) = (clock.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                clock.advance(S / 100);
                std::thread::yield_now();
            }
        })
    };
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (limiter, admitted) = (limiter.clone(), admitted.clone());
            std::thread::spawn(move || {
                for i in 0..5_000u64 {
                    let tokens = (w * 31 + i * 17) % 120;
                    let d = limiter.try_acquire(&["k"], call(tokens, 0)).unwrap();
                    if let Some(r) = d.reservation {
                        admitted.lock().push((r.at(), tokens));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    ticker.join().unwrap();
    let mut log = admitted.lock().clone();
    log.sort();
    assert!(!log.is_empty());
    // Replay: for every admitted entry, the window ending there holds no more than the limits.
    let window = 60 * S;
    let mut start = 0;
    let (mut reqs, mut toks) = (0u64, 0u64);
    for end in 0..log.len() {
        reqs += 1;
        toks += log[end].1;
        while log[start].0 + window <= log[end].0 {
            reqs -= 1;
            toks -= log[start].1;
            start += 1;
        }
        assert!(
            reqs <= 500 && toks <= 20_000,
            "window ending at {} holds {reqs} requests, {toks} tokens",
            log[end].0
        );
    }
}

#[test]
fn a_pause_refuses_everything_until_it_ends_and_only_extends() {
    let (limiter, clock) = manual(rpm_tpm(100, 10_000));
    limiter.pause(&["k"], 30 * S).unwrap();
    let d = limiter.try_acquire(&["k"], call(1, 0)).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ns, Some(30 * S));
    assert_eq!(d.limit.unwrap().1.name(), "pause");
    assert_eq!(limiter.remaining(&["k"]).unwrap(), Usage::ZERO);
    assert!(limiter.try_acquire(&["other"], call(1, 0)).unwrap().allowed);
    limiter.pause(&["k"], 10 * S).unwrap(); // shorter: no change
    clock.advance(20 * S);
    limiter.pause(&["k"], 20 * S).unwrap(); // now until t=40
    clock.advance(15 * S);
    let d = limiter.check(&["k"], call(1, 0)).unwrap();
    assert_eq!(d.retry_after_ns, Some(5 * S));
    clock.advance(5 * S);
    assert!(limiter.try_acquire(&["k"], call(1, 0)).unwrap().allowed);
    assert!(limiter.pause(&["k"], 0).is_err());
}

#[test]
fn a_pause_keeps_waiters_in_order_and_wakes_them_when_it_ends() {
    let (limiter, clock) = manual(rpm_tpm(100, 10_000));
    limiter.pause(&["k"], 10 * S).unwrap();
    let Enqueued::Waiting(first) = limiter.enqueue(&["k"], call(1, 0), None).unwrap() else {
        panic!("paused: must wait");
    };
    let Enqueued::Waiting(second) = limiter.enqueue(&["k"], call(1, 0), None).unwrap() else {
        panic!("paused: must wait");
    };
    let order = Arc::new(Mutex::new(Vec::new()));
    let spawn = |handle: WaitHandle, n: u32| {
        let order = order.clone();
        std::thread::spawn(move || {
            let r = handle.wait_blocking(&mut || false).unwrap();
            order.lock().push(n);
            r
        })
    };
    let (a, b) = (spawn(first, 1), spawn(second, 2));
    clock.advance(10 * S);
    let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(*order.lock(), vec![1, 2]);
    assert!(ra.at() <= rb.at());
    assert_eq!(limiter.usage("k", None).unwrap().requests, 2);
}

#[test]
fn an_observed_remaining_caps_admissions_until_its_reset() {
    let (limiter, clock) = manual(rpm_tpm(100, 10_000));
    let tokens = |remaining, reset_ns| Observation {
        dimension: Dimension::TotalTokens,
        remaining,
        reset_ns,
    };
    limiter
        .observe(&["k"], &[tokens(300, Some(20 * S))])
        .unwrap();
    assert_eq!(limiter.remaining(&["k"]).unwrap().input_tokens, 300);
    assert!(limiter.try_acquire(&["k"], call(200, 50)).unwrap().allowed);
    let d = limiter.try_acquire(&["k"], call(100, 0)).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ns, Some(20 * S));
    assert_eq!(d.limit.unwrap().1.name(), "observed_total_tokens");
    assert!(limiter.try_acquire(&["k"], call(50, 0)).unwrap().allowed);
    // A looser figure than the limiter's own changes nothing.
    limiter.observe(&["k"], &[tokens(5_000, Some(S))]).unwrap();
    assert_eq!(limiter.remaining(&["k"]).unwrap().input_tokens, 0);
    clock.advance(20 * S);
    assert_eq!(
        limiter.remaining(&["k"]).unwrap().input_tokens,
        10_000 - 300
    );
    // Without a reset, the dimension's own window (a minute) applies.
    limiter
        .observe(
            &["k"],
            &[Observation {
                dimension: Dimension::Requests,
                remaining: 0,
                reset_ns: None,
            }],
        )
        .unwrap();
    let d = limiter.check(&["k"], call(0, 0)).unwrap();
    assert_eq!(d.retry_after_ns, Some(60 * S));
    limiter.reset(Some("k"));
    assert!(limiter.check(&["k"], call(0, 0)).unwrap().allowed);
}
