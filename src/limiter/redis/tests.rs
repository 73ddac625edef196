//! The pipe on the test binary's redis-server: a call whose caller goes
//! away undoes what it did, wherever the caller stopped reading.

use super::call::Op;
use super::{RedisConfig, RedisLimiter};
use crate::limiter::backend::Limiter;
use crate::limits::{LimitSpec, Limits, Unit};
use crate::test_redis;
use crate::usage::{Dimension, Usage};
use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

fn limiter(server: &test_redis::Server) -> RedisLimiter {
    let limits = Limits::new(vec![LimitSpec::new(Dimension::Requests, Unit::Minute, 10)])
        .expect("valid limits");
    let config = RedisConfig {
        url: server.url.clone(),
        prefix: test_redis::fresh_prefix(),
        timeout: Duration::from_secs(5),
    };
    RedisLimiter::connect(config, limits, [], None, server.runtime()).expect("connects")
}

/// Admits one request on "k" through the pipe and, once the pipe has handed
/// the reply over, reads it or drops the call unread (a caller cancelled
/// between the two). Returns what "k" then counts.
fn admit_one(limiter: &RedisLimiter, read: bool) -> u64 {
    let inner = limiter.inner.clone();
    let mut cx = Context::from_waker(Waker::noop());
    let mut attempts = 0;
    let mut pending = loop {
        let mut call = inner.call(Op::Acquire, inner.call_keys(&["k"]).expect("one key"));
        call.usage = Usage {
            requests: 1,
            ..Usage::ZERO
        };
        let mut pending = Box::pin(inner.run(call));
        if pending.as_mut().poll(&mut cx).is_pending() {
            break pending;
        }
        // Answered within the first poll (this thread was descheduled after
        // queueing it): the reply was read. Undo it and queue another.
        attempts += 1;
        assert!(
            attempts < 100,
            "every call was answered before its first poll returned"
        );
        limiter.reset(Some("k")).expect("reset");
    };
    // The flush is answered after the call: its reply has been handed over.
    inner.runtime.block_on(inner.pipe.flush()).expect("flushed");
    if read {
        let reply = pending.as_mut().poll(&mut cx);
        assert!(matches!(reply, Poll::Ready(Ok(ref r)) if r.first() == Some(&1)));
    }
    drop(pending);
    limiter.flush().expect("flushed");
    limiter.usage("k", None).expect("usage").requests
}

#[test]
fn a_reply_read_keeps_its_admission() {
    let Some(server) = test_redis::server() else {
        return;
    };
    assert_eq!(admit_one(&limiter(server), true), 1);
}

#[test]
fn a_reply_handed_over_but_never_read_is_given_back() {
    let Some(server) = test_redis::server() else {
        return;
    };
    let limiter = limiter(server);
    assert_eq!(admit_one(&limiter, false), 0);
    // The key still admits up to its limit: nothing stayed counted.
    for _ in 0..10 {
        assert!(
            limiter
                .try_acquire(
                    &["k"],
                    Usage {
                        requests: 1,
                        ..Usage::ZERO
                    }
                )
                .expect("admits")
                .allowed
        );
    }
}
