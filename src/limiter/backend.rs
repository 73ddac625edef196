//! The limiter contract every backend implements: the in-process
//! [`RateLimiter`] and the Redis-backed one share it, so the bindings and
//! the tests treat them alike.

use super::{Decision, Enqueued, Observation, RateLimiter, Reservation};
use crate::error::CoreResult;
use crate::usage::Usage;
use std::future::Future;
use std::pin::Pin;

/// A wait in progress, to be driven on the tokio runtime.
pub type WaitFuture = Pin<Box<dyn Future<Output = CoreResult<Reservation>> + Send>>;

/// Undoes a queued wait at once (from whichever thread cancels it).
pub type CancelWait = Box<dyn FnOnce() + Send>;

/// How an acquire starts: admitted at once (known without waiting), or a
/// wait to drive. Starting never blocks on I/O, so an event loop may call it.
pub enum Started {
    Granted(Reservation),
    Waiting(WaitFuture, Option<CancelWait>),
}

/// Sliding-window limits per key, checked and recorded atomically on every
/// window and every key of a request. Times are on the limiter's clock, in ns.
pub trait Limiter: Send + Sync + 'static {
    /// Admits `usage` on every key now, or on none; never waits.
    fn try_acquire(&self, keys: &[&str], usage: Usage) -> CoreResult<Decision>;
    /// What `try_acquire` would decide; records nothing.
    fn check(&self, keys: &[&str], usage: Usage) -> CoreResult<Decision>;
    /// Starts a FIFO wait for `usage` (a request larger than a limit fails at once).
    fn start_acquire(
        &self,
        keys: &[&str],
        usage: Usage,
        timeout_ns: Option<u64>,
    ) -> CoreResult<Started>;
    /// Waits on this thread; `interrupted` is polled to give up early.
    fn acquire_blocking(
        &self,
        keys: &[&str],
        usage: Usage,
        timeout_ns: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> CoreResult<Reservation>;
    fn usage(&self, key: &str, span: Option<u64>) -> CoreResult<Usage>;
    fn remaining(&self, keys: &[&str]) -> CoreResult<Usage>;
    fn reset(&self, key: Option<&str>) -> CoreResult<()>;
    fn pause(&self, keys: &[&str], duration_ns: u64) -> CoreResult<()>;
    fn observe(&self, keys: &[&str], observations: &[Observation]) -> CoreResult<()>;
    /// `try_acquire` (or `check` when not `record`) when it can be decided
    /// without I/O, such as from a lease's slice; `None` sends the call down
    /// the path that may wait on the network (the bindings then release the GIL).
    fn decide_without_io(
        &self,
        _keys: &[&str],
        _usage: Usage,
        _record: bool,
    ) -> Option<CoreResult<Decision>> {
        None
    }
}

impl Limiter for RateLimiter {
    fn try_acquire(&self, keys: &[&str], usage: Usage) -> CoreResult<Decision> {
        RateLimiter::try_acquire(self, keys, usage)
    }

    fn check(&self, keys: &[&str], usage: Usage) -> CoreResult<Decision> {
        RateLimiter::check(self, keys, usage)
    }

    fn start_acquire(
        &self,
        keys: &[&str],
        usage: Usage,
        timeout_ns: Option<u64>,
    ) -> CoreResult<Started> {
        Ok(match self.enqueue(keys, usage, timeout_ns)? {
            Enqueued::Granted(r) => Started::Granted(r),
            Enqueued::Waiting(handle) => {
                let canceller = handle.canceller();
                Started::Waiting(
                    Box::pin(handle.wait()),
                    Some(Box::new(move || canceller.cancel())),
                )
            }
        })
    }

    fn acquire_blocking(
        &self,
        keys: &[&str],
        usage: Usage,
        timeout_ns: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> CoreResult<Reservation> {
        RateLimiter::acquire_blocking(self, keys, usage, timeout_ns, interrupted)
    }

    fn usage(&self, key: &str, span: Option<u64>) -> CoreResult<Usage> {
        RateLimiter::usage(self, key, span)
    }

    fn remaining(&self, keys: &[&str]) -> CoreResult<Usage> {
        RateLimiter::remaining(self, keys)
    }

    fn reset(&self, key: Option<&str>) -> CoreResult<()> {
        RateLimiter::reset(self, key);
        Ok(())
    }

    fn pause(&self, keys: &[&str], duration_ns: u64) -> CoreResult<()> {
        RateLimiter::pause(self, keys, duration_ns)
    }

    fn observe(&self, keys: &[&str], observations: &[Observation]) -> CoreResult<()> {
        RateLimiter::observe(self, keys, observations)
    }
}
