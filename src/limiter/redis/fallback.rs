//! `on_unavailable="local"`: while Redis cannot be reached, each process
//! admits from a limiter of its own holding `1/n` of every limit, so that `n`
//! processes together stay within the shared limit without Redis.
//!
//! Once a round trip fails, calls go to the local limiter for `PROBE_EVERY`
//! without trying Redis (each try would cost a timeout); then one call tries
//! Redis again. Reservations settle where they were made. What was admitted
//! locally is not sent to Redis when it comes back: the shared windows miss
//! it, which is the price of staying up.

use super::RedisLimiter;
use crate::clock::Clock;
use crate::error::{CoreError, CoreResult};
use crate::limiter::{Decision, Limiter, Observation, RateLimiter, Reservation, Started};
use crate::limits::{LimitSpec, Limits};
use crate::usage::Usage;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long calls stay local after Redis failed, before one tries it again.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Where a warning about the switch goes (the bindings log it).
pub type Warn = Arc<dyn Fn(&str) + Send + Sync>;

/// `limits` with every amount divided by `processes` (at least 1 each).
pub fn share_of(limits: &Limits, processes: u64) -> CoreResult<Limits> {
    Limits::new(
        limits
            .specs()
            .iter()
            .map(|s| LimitSpec {
                amount: (s.amount / processes).max(1),
                ..*s
            })
            .collect(),
    )
}

struct Local {
    limiter: RateLimiter,
    /// Until when calls stay local (`None`: Redis is in use).
    down_until: Mutex<Option<Instant>>,
    warn: Warn,
}

/// The Redis limiter, with a local limiter to fall back on when asked for.
#[derive(Clone)]
pub struct SharedLimiter {
    redis: RedisLimiter,
    local: Option<Arc<Local>>,
}

impl SharedLimiter {
    pub fn deny(redis: RedisLimiter) -> SharedLimiter {
        SharedLimiter { redis, local: None }
    }

    /// Falls back on a limiter with `1/processes` of `limits` (and of each
    /// per-key override) on `clock`.
    pub fn local(
        redis: RedisLimiter,
        limits: &Limits,
        per_key: &[(String, Limits)],
        processes: u64,
        clock: Arc<dyn Clock>,
        warn: Warn,
    ) -> CoreResult<SharedLimiter> {
        let per_key = per_key
            .iter()
            .map(|(k, l)| Ok((k.clone(), share_of(l, processes)?)))
            .collect::<CoreResult<Vec<_>>>()?;
        let limiter = RateLimiter::new(share_of(limits, processes)?, per_key, clock);
        Ok(SharedLimiter {
            redis,
            local: Some(Arc::new(Local {
                limiter,
                down_until: Mutex::new(None),
                warn,
            })),
        })
    }

    pub fn redis(&self) -> &RedisLimiter {
        &self.redis
    }

    /// Whether a local limiter takes over while Redis is unreachable.
    pub fn falls_back(&self) -> bool {
        self.local.is_some()
    }

    /// Whether calls go to the local limiter now.
    pub fn is_local(&self) -> bool {
        self.local
            .as_ref()
            .is_some_and(|l| l.down_until.lock().is_some())
    }

    /// Redis answered (a call, or `health()`): calls go to it again.
    pub fn back(&self) {
        if let Some(local) = &self.local {
            if local.down_until.lock().take().is_some() {
                (local.warn)(&format!(
                    "Redis at {} is back; limits are shared again",
                    self.redis.config().url
                ));
            }
        }
    }

    /// Runs `op` on Redis, or on the local limiter while Redis is down.
    fn route<T>(
        &self,
        op: impl FnOnce(&dyn Limiter) -> CoreResult<T>,
        fallback: impl FnOnce(&dyn Limiter) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let Some(local) = &self.local else {
            return op(&self.redis);
        };
        let was_down = *local.down_until.lock();
        if was_down.is_some_and(|until| Instant::now() < until) {
            return fallback(&local.limiter);
        }
        match op(&self.redis) {
            Err(CoreError::Unavailable(why)) => {
                *local.down_until.lock() = Some(Instant::now() + PROBE_EVERY);
                if was_down.is_none() {
                    (local.warn)(&format!(
                        "{why}; admitting from this process's share of each limit until it is back"
                    ));
                }
                fallback(&local.limiter)
            }
            result => {
                if was_down.is_some() {
                    self.back();
                }
                result
            }
        }
    }
}

impl Limiter for SharedLimiter {
    fn try_acquire(&self, keys: &[&str], usage: Usage) -> CoreResult<Decision> {
        self.route(
            |l| l.try_acquire(keys, usage),
            |l| l.try_acquire(keys, usage),
        )
    }

    fn check(&self, keys: &[&str], usage: Usage) -> CoreResult<Decision> {
        self.route(|l| l.check(keys, usage), |l| l.check(keys, usage))
    }

    fn start_acquire(
        &self,
        keys: &[&str],
        usage: Usage,
        timeout_ns: Option<u64>,
    ) -> CoreResult<Started> {
        self.route(
            |l| l.start_acquire(keys, usage, timeout_ns),
            |l| l.start_acquire(keys, usage, timeout_ns),
        )
    }

    fn acquire_blocking(
        &self,
        keys: &[&str],
        usage: Usage,
        timeout_ns: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> CoreResult<Reservation> {
        // One closure may run, never both: they share `interrupted` through a cell.
        let interrupted = std::cell::RefCell::new(interrupted);
        self.route(
            |l| l.acquire_blocking(keys, usage, timeout_ns, &mut *interrupted.borrow_mut()),
            |l| l.acquire_blocking(keys, usage, timeout_ns, &mut *interrupted.borrow_mut()),
        )
    }

    fn usage(&self, key: &str, span: Option<u64>) -> CoreResult<Usage> {
        self.route(|l| l.usage(key, span), |l| l.usage(key, span))
    }

    fn remaining(&self, keys: &[&str]) -> CoreResult<Usage> {
        self.route(|l| l.remaining(keys), |l| l.remaining(keys))
    }

    fn reset(&self, key: Option<&str>) -> CoreResult<()> {
        if let Some(local) = &self.local {
            Limiter::reset(&local.limiter, key)?;
        }
        self.route(|l| l.reset(key), |_| Ok(()))
    }

    fn pause(&self, keys: &[&str], duration_ns: u64) -> CoreResult<()> {
        if let Some(local) = &self.local {
            Limiter::pause(&local.limiter, keys, duration_ns)?;
        }
        self.route(|l| l.pause(keys, duration_ns), |_| Ok(()))
    }

    fn observe(&self, keys: &[&str], observations: &[Observation]) -> CoreResult<()> {
        if let Some(local) = &self.local {
            Limiter::observe(&local.limiter, keys, observations)?;
        }
        self.route(|l| l.observe(keys, observations), |_| Ok(()))
    }
}
