//! Waiting for capacity: FIFO queues per key, one wake-up per event.
//!
//! A waiter is queued on every key it asks for and admitted only when it is
//! at the head of all of them, so a large request is never starved by a
//! stream of small ones. The head sleeps until the exact moment it would fit
//! (or its timeout); releases (cancel, refunding settle, reset, a waiter
//! leaving) wake the new head at once. Nothing polls.

use super::state::Fit;
use super::{Inner, RateLimiter, Reservation};
use crate::clock::ns_to_seconds;
use crate::error::{CoreError, CoreResult, RateLimited};
use crate::limits::LimitSpec;
use crate::usage::Usage;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often a blocking wait wakes to let the caller handle signals.
const INTERRUPT_CHECK: Duration = Duration::from_millis(100);

pub(crate) struct Waiter {
    pub(crate) keys: Vec<Arc<str>>,
    pub(crate) usage: Usage,
    signalled: Mutex<bool>,
    condvar: Condvar,
    notify: Notify,
}

impl Waiter {
    /// Wakes the waiter, whether it waits on a thread or in a task. A wake
    /// that arrives before the wait starts is kept, never lost.
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
        *self.signalled.lock() = true;
        self.condvar.notify_one();
    }
}

/// The result of [`RateLimiter::enqueue`].
pub enum Enqueued {
    Granted(Reservation),
    Waiting(WaitHandle),
}

enum Poll {
    Granted(Reservation),
    /// Wait for a wake-up, or until this deadline on the limiter's clock.
    Wait(Option<u64>),
    TimedOut(RateLimited),
}

/// A queued request. Dropping it before it is granted leaves every queue,
/// so a cancelled wait records nothing.
pub struct WaitHandle {
    limiter: RateLimiter,
    waiter: Arc<Waiter>,
    timeout_at: Option<u64>,
    finished: bool,
}

fn describe(keys: &[Arc<str>]) -> String {
    keys.iter().map(|k| &**k).collect::<Vec<_>>().join(", ")
}

/// The refusal, naming the key whose limit refused (all keys when unknown).
pub(crate) fn limited(
    keys: &[Arc<str>],
    retry_after_ns: Option<u64>,
    limit: Option<(usize, LimitSpec)>,
    why: &str,
) -> RateLimited {
    let key = match limit {
        Some((i, _)) if i < keys.len() => keys[i].to_string(),
        _ => describe(keys),
    };
    let limit = limit.map(|(_, spec)| spec);
    let limit_name = limit.as_ref().map(LimitSpec::name);
    let message = match (&limit_name, retry_after_ns) {
        (Some(name), None) => {
            format!("request on key {key:?} is larger than {name} itself and can never fit")
        }
        (Some(name), Some(ns)) => format!(
            "{why} on key {key:?}: {name} would be exceeded; it may fit in {:.3}s",
            ns_to_seconds(ns)
        ),
        (None, _) => format!("{why} on key {key:?}"),
    };
    RateLimited {
        retry_after_ns,
        limit,
        key,
        message,
    }
}

impl RateLimiter {
    /// Admits `usage` now if nobody is queued and it fits; otherwise queues it.
    /// A request larger than a limit itself fails at once.
    pub fn enqueue<S: AsRef<str>>(
        &self,
        keys: &[S],
        usage: Usage,
        timeout_ns: Option<u64>,
    ) -> CoreResult<Enqueued> {
        super::check_keys(keys)?;
        let inner: &Inner = &self.inner;
        let mut locked = inner.lock(keys);
        let now = inner.clock.now();
        let fit = inner.evaluate(&mut locked, keys, now, &usage, true);
        let owned: Vec<Arc<str>> = keys.iter().map(|k| Arc::from(k.as_ref())).collect();
        match fit {
            Fit::Never { limit } => {
                return Err(CoreError::RateLimited(limited(
                    &owned,
                    None,
                    Some(limit),
                    "",
                )));
            }
            Fit::Fits { .. } if inner.queued(&mut locked, keys).is_none() => {
                let held = inner.record(&mut locked, keys, now, usage);
                drop(locked);
                return Ok(Enqueued::Granted(Reservation::new(
                    self.inner.clone(),
                    held,
                    now,
                    usage,
                )));
            }
            _ => {}
        }
        let waiter = Arc::new(Waiter {
            keys: owned,
            usage,
            signalled: Mutex::new(false),
            condvar: Condvar::new(),
            notify: Notify::new(),
        });
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            let (_, state) = locked.shard(i).state(key, inner);
            state.queue.push_back(waiter.clone());
        }
        Ok(Enqueued::Waiting(WaitHandle {
            limiter: self.clone(),
            waiter,
            timeout_at: timeout_ns.map(|t| now.saturating_add(t)),
            finished: false,
        }))
    }

    /// Waits (in a task) until `usage` is admitted on every key, or the timeout passes.
    pub async fn acquire<S: AsRef<str>>(
        &self,
        keys: &[S],
        usage: Usage,
        timeout_ns: Option<u64>,
    ) -> CoreResult<Reservation> {
        match self.enqueue(keys, usage, timeout_ns)? {
            Enqueued::Granted(r) => Ok(r),
            Enqueued::Waiting(handle) => handle.wait().await,
        }
    }

    /// Waits (blocking this thread) until `usage` is admitted or the timeout passes.
    pub fn acquire_blocking<S: AsRef<str>>(
        &self,
        keys: &[S],
        usage: Usage,
        timeout_ns: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> CoreResult<Reservation> {
        match self.enqueue(keys, usage, timeout_ns)? {
            Enqueued::Granted(r) => Ok(r),
            Enqueued::Waiting(handle) => handle.wait_blocking(interrupted),
        }
    }
}

impl WaitHandle {
    fn poll(&mut self) -> Poll {
        let inner: &Inner = &self.limiter.inner;
        let waiter = &self.waiter;
        let keys = &waiter.keys;
        let mut locked = inner.lock(keys);
        let now = inner.clock.now();
        let mut at_head = true;
        for (i, key) in keys.iter().enumerate() {
            let (_, state) = locked.shard(i).state(key, inner);
            at_head &= state.is_head(waiter);
        }
        let timed_out = self.timeout_at.is_some_and(|t| now >= t);
        let fit = at_head.then(|| inner.evaluate(&mut locked, keys, now, &waiter.usage, true));
        if let Some(Fit::Fits { .. }) = fit {
            let held = inner.record(&mut locked, keys, now, waiter.usage);
            for (i, key) in keys.iter().enumerate() {
                if let Some(state) = locked.shard(i).keys.get_mut(key) {
                    state.queue.pop_front();
                    state.wake_head();
                }
            }
            self.finished = true;
            return Poll::Granted(Reservation::new(
                self.limiter.inner.clone(),
                held,
                now,
                waiter.usage,
            ));
        }
        let (wait_ns, limit) = match fit {
            Some(Fit::Waits { wait_ns, limit }) => (Some(wait_ns), Some(limit)),
            Some(Fit::Never { limit }) => (None, Some(limit)),
            _ => (None, None),
        };
        if timed_out {
            // Behind other waiters: report when it would fit on its own, or,
            // if it already would, when the head of the queue fits.
            let (wait_ns, limit) = match wait_ns {
                Some(_) => (wait_ns, limit),
                None if at_head => (wait_ns, limit),
                None => {
                    match inner.evaluate_behind_queues(
                        &mut locked,
                        keys,
                        now,
                        &waiter.usage,
                        Some(waiter),
                    ) {
                        Fit::Waits { wait_ns, limit } => (Some(wait_ns), Some(limit)),
                        _ => (Some(0), None),
                    }
                }
            };
            for (i, key) in keys.iter().enumerate() {
                if let Some(state) = locked.shard(i).keys.get_mut(key) {
                    state.leave(waiter);
                }
            }
            self.finished = true;
            return Poll::TimedOut(limited(
                keys,
                wait_ns,
                limit,
                "timed out waiting for capacity",
            ));
        }
        Poll::Wait(wait_ns.map(|w| now.saturating_add(w)))
    }

    /// The earlier of the fit deadline and the timeout.
    fn wake_at(&self, deadline: Option<u64>) -> Option<u64> {
        match (deadline, self.timeout_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub async fn wait(mut self) -> CoreResult<Reservation> {
        loop {
            match self.poll() {
                Poll::Granted(r) => return Ok(r),
                Poll::TimedOut(e) => return Err(CoreError::RateLimited(e)),
                Poll::Wait(deadline) => {
                    let clock = self.limiter.clock().clone();
                    let notified = self.waiter.notify.notified();
                    match self.wake_at(deadline).filter(|_| clock.is_real_time()) {
                        Some(at) => {
                            let sleep = Duration::from_nanos(at.saturating_sub(clock.now()));
                            tokio::select! {
                                _ = notified => {}
                                _ = tokio::time::sleep(sleep) => {}
                            }
                        }
                        None => notified.await,
                    }
                }
            }
        }
    }

    pub fn wait_blocking(
        mut self,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> CoreResult<Reservation> {
        loop {
            match self.poll() {
                Poll::Granted(r) => return Ok(r),
                Poll::TimedOut(e) => return Err(CoreError::RateLimited(e)),
                Poll::Wait(deadline) => {
                    let clock = self.limiter.clock().clone();
                    let mut slice = INTERRUPT_CHECK;
                    if let Some(at) = self.wake_at(deadline).filter(|_| clock.is_real_time()) {
                        slice = slice.min(Duration::from_nanos(at.saturating_sub(clock.now())));
                    }
                    let mut signalled = self.waiter.signalled.lock();
                    if !*signalled {
                        self.waiter.condvar.wait_for(&mut signalled, slice);
                    }
                    *signalled = false;
                    drop(signalled);
                    if interrupted() {
                        return Err(CoreError::Interrupted);
                    }
                }
            }
        }
    }
}

/// Takes a queued request out of its queues from another thread, at once
/// (for example when the asyncio future awaiting it is cancelled).
#[derive(Clone)]
pub struct Canceller {
    limiter: RateLimiter,
    waiter: Arc<Waiter>,
}

impl Canceller {
    /// Leaves every queue; idempotent, and a no-op once granted.
    pub fn cancel(&self) {
        let inner: &Inner = &self.limiter.inner;
        let keys = &self.waiter.keys;
        let mut locked = inner.lock(keys);
        for (i, key) in keys.iter().enumerate() {
            if let Some(state) = locked.shard(i).keys.get_mut(key) {
                state.leave(&self.waiter);
            }
        }
    }
}

impl WaitHandle {
    pub fn canceller(&self) -> Canceller {
        Canceller {
            limiter: self.limiter.clone(),
            waiter: self.waiter.clone(),
        }
    }
}

impl Drop for WaitHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.canceller().cancel();
        }
    }
}
