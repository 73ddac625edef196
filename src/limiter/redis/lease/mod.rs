//! Lease mode: each process takes a slice of every limit of a key from Redis
//! in one round trip and admits from it locally, without a round trip per
//! request. What a slice did not use goes back to Redis when it is spent, when
//! its time is up, or at `close`.
//!
//! A slice is recorded in Redis at its end (taken at `t`, it ends at
//! `t + seconds`), so it counts from when it is taken until one window after
//! its end: every local admission falls within the slice's time, so none
//! leaves a window before Redis stops counting it, and no window anywhere
//! exceeds a limit. The price: up to one unused slice per process counted
//! while leases are out, and what a slice used counts until one window after
//! its scheduled end even when it is returned early.
//!
//! Requests that a slice cannot hold take a new slice sized for them (at
//! least the request, at most what is left); refused there, they get Redis's
//! exact answer. Waits go to the exact limiter once slices are returned.

mod slice;
mod slices;

pub use slice::Lease;

use super::fallback::SharedLimiter;
use super::{waiting, RedisLimiter};
use crate::error::{CoreError, CoreResult};
use crate::limiter::state::unlimited;
use crate::limiter::{check_keys, Decision, Limiter, Observation, Reservation, Started};
use crate::usage::Usage;
use slice::leftover;
use slices::{Leases, Taken};
use std::sync::Arc;

/// The limiter of a `RedisRateLimiter`: exact, or leased when a lease is given.
#[derive(Clone)]
pub struct LeasedLimiter {
    exact: SharedLimiter,
    leases: Option<Arc<Leases>>,
}

impl LeasedLimiter {
    pub fn exact(exact: SharedLimiter) -> LeasedLimiter {
        LeasedLimiter {
            exact,
            leases: None,
        }
    }

    pub fn leased(exact: SharedLimiter, lease: Lease) -> LeasedLimiter {
        let leases = Leases::start(exact.redis(), lease);
        LeasedLimiter {
            exact,
            leases: Some(leases),
        }
    }

    pub fn shared(&self) -> &SharedLimiter {
        &self.exact
    }

    pub fn redis(&self) -> &RedisLimiter {
        self.exact.redis()
    }

    pub fn lease(&self) -> Option<Lease> {
        self.leases.as_ref().map(|l| l.lease)
    }

    /// Returns every slice, then waits until Redis has every pending write.
    pub fn close(&self) -> CoreResult<()> {
        if let Some(leases) = &self.leases {
            leases.retire_all(true);
        }
        self.redis().flush()
    }

    /// Redis is unreachable and a local fallback is configured.
    fn falls_back(&self, result: &CoreResult<Taken>) -> bool {
        matches!(result, Err(CoreError::Unavailable(_))) && self.exact.falls_back()
    }
}

impl Limiter for LeasedLimiter {
    fn try_acquire(&self, keys: &[&str], usage: Usage) -> CoreResult<Decision> {
        let Some(leases) = &self.leases else {
            return self.exact.try_acquire(keys, usage);
        };
        check_keys(keys)?;
        if leases.queued(keys) {
            leases.retire_keys(keys);
            return self.exact.try_acquire(keys, usage);
        }
        if let Some(decision) = leases.admit_local(keys, usage, true) {
            return Ok(decision);
        }
        if self.exact.is_local() {
            // Redis is away: the local share decides without a timeout.
            return self.exact.try_acquire(keys, usage);
        }
        let taken = leases.take(keys, usage);
        if self.falls_back(&taken) {
            return self.exact.try_acquire(keys, usage);
        }
        Ok(match taken? {
            Taken::Granted(decision) | Taken::Refused(decision) => decision,
        })
    }

    fn decide_without_io(
        &self,
        keys: &[&str],
        usage: Usage,
        record: bool,
    ) -> Option<CoreResult<Decision>> {
        let leases = self.leases.as_ref()?;
        if let Err(e) = check_keys(keys) {
            return Some(Err(e));
        }
        if leases.queued(keys) {
            return None;
        }
        leases.admit_local(keys, usage, record).map(Ok)
    }

    fn check(&self, keys: &[&str], usage: Usage) -> CoreResult<Decision> {
        let Some(leases) = &self.leases else {
            return self.exact.check(keys, usage);
        };
        check_keys(keys)?;
        if !leases.queued(keys) {
            if let Some(decision) = leases.admit_local(keys, usage, false) {
                return Ok(decision);
            }
        }
        leases.retire_keys(keys);
        self.exact.check(keys, usage)
    }

    /// From the slices when they hold the request; otherwise the exact FIFO
    /// wait (queued at once), after which the keys take new slices.
    fn start_acquire(
        &self,
        keys: &[&str],
        usage: Usage,
        timeout_ns: Option<u64>,
    ) -> CoreResult<Started> {
        let Some(leases) = &self.leases else {
            return self.exact.start_acquire(keys, usage, timeout_ns);
        };
        check_keys(keys)?;
        if !leases.queued(keys) {
            if let Some(mut decision) = leases.admit_local(keys, usage, true) {
                return Ok(Started::Granted(
                    decision.reservation.take().expect("recorded"),
                ));
            }
        }
        leases.retire_keys(keys);
        let (wait, cancel) = match self.exact.start_acquire(keys, usage, timeout_ns)? {
            Started::Granted(reservation) => {
                leases.refill_later(keys);
                return Ok(Started::Granted(reservation));
            }
            Started::Waiting(wait, cancel) => (wait, cancel),
        };
        let leases = leases.clone();
        let owned: Vec<Arc<str>> = keys.iter().map(|k| Arc::from(*k)).collect();
        Ok(Started::Waiting(
            Box::pin(async move {
                let reservation = wait.await?;
                // A cancellation while the slices refill comes after the grant:
                // the guard hands the reservation back instead of dropping it counted.
                // The refill runs as a task of its own: a slice taken in Redis is
                // installed even if this waiter is dropped while it is in flight.
                let granted = CancelOnDrop(Some(reservation));
                let names: Vec<&str> = owned.iter().map(|k| &**k).collect();
                if let Ok(refill) = leases.refill(&names) {
                    let _ = leases.redis.runtime.spawn(refill).await;
                }
                Ok(granted.keep())
            }),
            cancel,
        ))
    }

    fn acquire_blocking(
        &self,
        keys: &[&str],
        usage: Usage,
        timeout_ns: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> CoreResult<Reservation> {
        let Some(leases) = &self.leases else {
            return self
                .exact
                .acquire_blocking(keys, usage, timeout_ns, interrupted);
        };
        check_keys(keys)?;
        if !leases.queued(keys) {
            if let Some(mut decision) = leases.admit_local(keys, usage, true) {
                return Ok(decision.reservation.take().expect("recorded"));
            }
            if !self.exact.is_local() && waiting::too_large(&leases.redis, keys, &usage).is_none() {
                let taken = leases.take(keys, usage);
                if !self.falls_back(&taken) {
                    if let Some(reservation) = taken?.reservation() {
                        return Ok(reservation);
                    }
                }
            }
        }
        leases.retire_keys(keys);
        let reservation = self
            .exact
            .acquire_blocking(keys, usage, timeout_ns, interrupted)?;
        if let Ok(refill) = leases.refill(keys) {
            let _ = leases.redis.block(refill);
        }
        Ok(reservation)
    }

    /// Redis's count, less what this process's slice on the key did not use:
    /// other processes' slices count as used in full.
    fn usage(&self, key: &str, span: Option<u64>) -> CoreResult<Usage> {
        let counted = self.exact.usage(key, span)?;
        let Some(leases) = &self.leases else {
            return Ok(counted);
        };
        let slot = leases.slot(key);
        let (add, sub) = match &*slot.current.lock() {
            Some(s) => s.settlement(),
            None => (Usage::ZERO, Usage::ZERO),
        };
        Ok(counted.saturating_sub(sub).saturating_add(add))
    }

    /// Redis's remaining plus what this process's slices still hold.
    fn remaining(&self, keys: &[&str]) -> CoreResult<Usage> {
        let Some(leases) = &self.leases else {
            return self.exact.remaining(keys);
        };
        check_keys(keys)?;
        let now = leases.local_now();
        let mut out = unlimited();
        for key in keys {
            let shared = self.exact.remaining(&[key])?;
            let slot = leases.slot(key);
            let local = match &*slot.current.lock() {
                Some(s) if now < s.deadline => leftover(&s.dims, &s.granted, &s.consumed),
                _ => Usage::ZERO,
            };
            out = out.min(shared.saturating_add(local));
        }
        Ok(out)
    }

    fn reset(&self, key: Option<&str>) -> CoreResult<()> {
        if let Some(leases) = &self.leases {
            match key {
                // The reset forgets the slices in Redis: nothing to send back.
                Some(key) => drop(leases.slot(key).current.lock().take()),
                None => leases.retire_all(false),
            }
        }
        self.exact.reset(key)
    }

    fn pause(&self, keys: &[&str], duration_ns: u64) -> CoreResult<()> {
        self.exact.pause(keys, duration_ns)?;
        if let Some(leases) = &self.leases {
            leases.retire_keys(keys);
        }
        Ok(())
    }

    fn observe(&self, keys: &[&str], observations: &[Observation]) -> CoreResult<()> {
        if let Some(leases) = &self.leases {
            leases.retire_keys(keys);
        }
        self.exact.observe(keys, observations)
    }
}

/// A reservation granted to a waiter not yet handed over: cancelled if the
/// waiter goes away first.
struct CancelOnDrop(Option<Reservation>);

impl CancelOnDrop {
    fn keep(mut self) -> Reservation {
        self.0.take().expect("kept once")
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(reservation) = self.0.take() {
            let _ = reservation.cancel();
        }
    }
}
