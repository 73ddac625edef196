//! Waiting for capacity on a Redis limiter: FIFO per key within the
//! process. The head of every queue it is in tries the script; when refused,
//! it sleeps until the exact `retry_after` (or its timeout), woken early by a
//! local refund, reset or manual clock move. Nothing polls.

use super::call::Op;
use super::RedisInner;
use crate::error::{CoreError, CoreResult};
use crate::limiter::backend::Started;
use crate::limiter::waiter::limited;
use crate::limiter::Reservation;
use crate::limits::LimitSpec;
use crate::usage::Usage;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often a blocking wait wakes to let the caller handle signals.
const INTERRUPT_CHECK: Duration = Duration::from_millis(100);

pub(crate) struct LocalWaiter {
    notify: Notify,
    usage: Usage,
}

#[derive(Default)]
pub(crate) struct Queues {
    by_key: HashMap<Arc<str>, VecDeque<Arc<LocalWaiter>>>,
}

impl Queues {
    /// What the waiters queued on any of `keys` ask for together (`None`
    /// when nobody is queued).
    pub(crate) fn queued_usage(&self, keys: &[&str]) -> Option<Usage> {
        if self.by_key.is_empty() {
            return None;
        }
        let mut seen: Vec<&Arc<LocalWaiter>> = Vec::new();
        for key in keys {
            for w in self.by_key.get(*key).into_iter().flatten() {
                if !seen.iter().any(|s| Arc::ptr_eq(s, w)) {
                    seen.push(w);
                }
            }
        }
        (!seen.is_empty()).then(|| {
            seen.iter()
                .fold(Usage::ZERO, |a, w| a.saturating_add(w.usage))
        })
    }

    fn join(&mut self, keys: &[Arc<str>], usage: Usage) -> Arc<LocalWaiter> {
        let me = Arc::new(LocalWaiter {
            notify: Notify::new(),
            usage,
        });
        for key in keys {
            self.by_key
                .entry(key.clone())
                .or_default()
                .push_back(me.clone());
        }
        me
    }

    /// What the waiters ahead of `me` on any of `keys` ask for together.
    fn ahead_of(&self, keys: &[Arc<str>], me: &Arc<LocalWaiter>) -> Usage {
        let mut seen: Vec<&Arc<LocalWaiter>> = Vec::new();
        for key in keys {
            for w in self.by_key.get(key).into_iter().flatten() {
                if Arc::ptr_eq(w, me) {
                    break;
                }
                if !seen.iter().any(|s| Arc::ptr_eq(s, w)) {
                    seen.push(w);
                }
            }
        }
        seen.iter()
            .fold(Usage::ZERO, |a, w| a.saturating_add(w.usage))
    }

    fn is_head(&self, keys: &[Arc<str>], me: &Arc<LocalWaiter>) -> bool {
        keys.iter().all(|k| {
            self.by_key
                .get(k)
                .and_then(VecDeque::front)
                .is_some_and(|h| Arc::ptr_eq(h, me))
        })
    }

    /// Leaves every queue; the new heads are woken.
    fn leave(&mut self, keys: &[Arc<str>], me: &Arc<LocalWaiter>) {
        for key in keys {
            if let Some(queue) = self.by_key.get_mut(key) {
                queue.retain(|w| !Arc::ptr_eq(w, me));
                match queue.front() {
                    Some(head) => head.notify.notify_one(),
                    None => {
                        self.by_key.remove(key);
                    }
                }
            }
        }
    }

    pub(crate) fn wake_heads(&self, keys: &[Arc<str>]) {
        for key in keys {
            if let Some(head) = self.by_key.get(key).and_then(VecDeque::front) {
                head.notify.notify_one();
            }
        }
    }

    pub(crate) fn wake_all(&self) {
        for queue in self.by_key.values() {
            for w in queue {
                w.notify.notify_one();
            }
        }
    }
}

/// Leaves the queues when the wait ends, however it ends.
struct Place {
    inner: Arc<RedisInner>,
    keys: Vec<Arc<str>>,
    me: Arc<LocalWaiter>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.inner.queues.lock().leave(&self.keys, &self.me);
    }
}

/// The limit `usage` can never fit in, on any of `keys`.
pub(crate) fn too_large(
    inner: &RedisInner,
    keys: &[&str],
    usage: &Usage,
) -> Option<(usize, LimitSpec)> {
    keys.iter().enumerate().find_map(|(i, key)| {
        inner
            .limits_for(key)
            .specs()
            .iter()
            .find(|s| usage.get(s.dimension) > s.amount)
            .map(|s| (i, *s))
    })
}

/// Where a timeout falls: on the manual clock (ns), or real time.
enum Deadline {
    Manual(u64),
    Real(Instant),
}

pub(crate) fn start(
    inner: &Arc<RedisInner>,
    keys: &[&str],
    usage: Usage,
    timeout_ns: Option<u64>,
) -> CoreResult<Started> {
    inner.call_keys(keys)?;
    let owned: Vec<Arc<str>> = keys.iter().map(|k| Arc::from(*k)).collect();
    if let Some(limit) = too_large(inner, keys, &usage) {
        return Err(CoreError::RateLimited(limited(
            &owned,
            None,
            Some(limit),
            "",
        )));
    }
    let deadline = timeout_ns.map(|t| match inner.now() {
        Some(now) => Deadline::Manual(now.saturating_add(t)),
        None => Deadline::Real(Instant::now() + Duration::from_nanos(t)),
    });
    let me = inner.queues.lock().join(&owned, usage);
    let place = Place {
        inner: inner.clone(),
        keys: owned,
        me,
    };
    Ok(Started::Waiting(
        Box::pin(wait(place, usage, deadline)),
        None,
    ))
}

async fn wait(place: Place, usage: Usage, deadline: Option<Deadline>) -> CoreResult<Reservation> {
    let inner = place.inner.clone();
    let names: Vec<&str> = place.keys.iter().map(|k| &**k).collect();
    loop {
        let at_head = inner.queues.lock().is_head(&place.keys, &place.me);
        let mut wait_ns = None;
        if at_head {
            let mut call = inner.call(Op::Acquire, inner.call_keys(&names)?);
            call.usage = usage;
            let reply = inner.run(call).await?;
            let mut decision = inner.decision(&names, usage, &reply, true)?;
            if let Some(reservation) = decision.reservation.take() {
                drop(place); // leaves the queues and wakes whoever is next
                return Ok(reservation);
            }
            if decision.retry_after_ns.is_none() {
                return Err(CoreError::RateLimited(limited(
                    &place.keys,
                    None,
                    decision.limit,
                    "",
                )));
            }
            wait_ns = decision.retry_after_ns;
        }
        let left = match &deadline {
            None => None,
            Some(Deadline::Manual(at)) => Some(at.saturating_sub(inner.now().unwrap_or(0))),
            Some(Deadline::Real(at)) => {
                Some(at.saturating_duration_since(Instant::now()).as_nanos() as u64)
            }
        };
        if left == Some(0) {
            let (wait_ns, limit) = when_it_fits(&place, &names, usage).await?;
            return Err(CoreError::RateLimited(limited(
                &place.keys,
                wait_ns,
                limit,
                "timed out waiting for capacity",
            )));
        }
        let notified = place.me.notify.notified();
        if inner.clock.is_some() {
            notified.await; // a manual clock: woken when it moves
            continue;
        }
        let sleep = match (wait_ns, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match sleep {
            Some(ns) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(Duration::from_nanos(ns)) => {}
                }
            }
            None => notified.await,
        }
    }
}

/// When the request would fit (now) once the waiters ahead of it had gone
/// first, for the error of a wait that timed out.
async fn when_it_fits(
    place: &Place,
    names: &[&str],
    usage: Usage,
) -> CoreResult<(Option<u64>, Option<(usize, LimitSpec)>)> {
    let inner = &place.inner;
    let ahead = inner.queues.lock().ahead_of(&place.keys, &place.me);
    for together in [ahead.saturating_add(usage), usage] {
        let mut call = inner.call(Op::Check, inner.call_keys(names)?);
        call.usage = together;
        let reply = inner.run(call).await?;
        let decision = inner.decision(names, usage, &reply, false)?;
        if decision.retry_after_ns.is_some() {
            return Ok((decision.retry_after_ns, decision.limit));
        }
    }
    Ok((None, None))
}

/// Waits on this thread (the wait itself runs on the runtime).
pub(crate) fn blocking(
    inner: &Arc<RedisInner>,
    keys: &[&str],
    usage: Usage,
    timeout_ns: Option<u64>,
    interrupted: &mut dyn FnMut() -> bool,
) -> CoreResult<Reservation> {
    let fut = match start(inner, keys, usage, timeout_ns)? {
        Started::Granted(r) => return Ok(r),
        Started::Waiting(fut, _) => fut,
    };
    let mut task = inner.runtime.spawn(fut);
    loop {
        let step = inner
            .runtime
            .block_on(async { tokio::time::timeout(INTERRUPT_CHECK, &mut task).await });
        match step {
            Ok(Ok(result)) => return result,
            Ok(Err(join)) => return Err(CoreError::Store(format!("wait failed: {join}"))),
            Err(_) if interrupted() => {
                task.abort();
                if let Ok(Ok(reservation)) = inner.runtime.block_on(task) {
                    let _ = reservation.cancel();
                }
                return Err(CoreError::Interrupted);
            }
            Err(_) => {}
        }
    }
}
