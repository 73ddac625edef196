//! `on_unavailable="local"` for shared budgets: while Redis cannot be
//! reached, the engine keeps budgets in the process (seeded from the ledger,
//! as without Redis) and warns once; after `PROBE_EVERY` one call tries Redis
//! again. A reservation settles where it was made. What was spent locally
//! reaches Redis through the ledger, at the next refresh.

use super::local::LocalState;
use super::redis::RedisState;
use super::{BudgetState, Figures, Reserved, SlotSpec};
use crate::error::{CoreError, CoreResult};
use crate::limiter::redis::fallback::{Warn, PROBE_EVERY};
use hashbrown::HashSet;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Instant;

pub struct FallbackState {
    redis: RedisState,
    local: LocalState,
    /// Until when calls stay local (`None`: Redis is in use).
    down_until: Mutex<Option<Instant>>,
    /// Reservations made locally.
    local_ids: Mutex<HashSet<u64>>,
    warn: Warn,
}

impl FallbackState {
    pub fn new(redis: RedisState, warn: Warn) -> FallbackState {
        FallbackState {
            redis,
            local: LocalState::default(),
            down_until: Mutex::new(None),
            local_ids: Mutex::new(HashSet::new()),
            warn,
        }
    }

    /// Runs `op` on Redis, or on the local state while Redis is down.
    fn route<T>(
        &self,
        op: impl Fn(&dyn BudgetState) -> CoreResult<T>,
        on_local: impl Fn(),
    ) -> CoreResult<T> {
        let was_down = *self.down_until.lock();
        if was_down.is_some_and(|until| Instant::now() < until) {
            on_local();
            return op(&self.local);
        }
        match op(&self.redis) {
            Err(CoreError::Unavailable(why)) => {
                *self.down_until.lock() = Some(Instant::now() + PROBE_EVERY);
                if was_down.is_none() {
                    (self.warn)(&format!(
                        "{why}; budgets are kept in this process until it is back"
                    ));
                }
                on_local();
                op(&self.local)
            }
            result => {
                if was_down.is_some() && self.down_until.lock().take().is_some() {
                    (self.warn)(&format!(
                        "Redis at {} is back; budgets are shared again",
                        self.redis.url()
                    ));
                }
                result
            }
        }
    }
}

impl BudgetState for FallbackState {
    fn reserve(
        &self,
        slots: &[SlotSpec],
        id: u64,
        estimate: u64,
        now_us: i64,
    ) -> CoreResult<Reserved> {
        let local = std::cell::Cell::new(false);
        let reserved = self.route(
            |s| s.reserve(slots, id, estimate, now_us),
            || local.set(true),
        )?;
        if local.get() && matches!(reserved, Reserved::Admitted(_)) {
            self.local_ids.lock().insert(id);
        }
        Ok(reserved)
    }

    fn settle(
        &self,
        slots: &[SlotSpec],
        id: u64,
        actual: u64,
        now_us: i64,
    ) -> CoreResult<Vec<Figures>> {
        if self.local_ids.lock().remove(&id) {
            return self.local.settle(slots, id, actual, now_us);
        }
        self.route(|s| s.settle(slots, id, actual, now_us), || {})
    }

    fn merge(&self, slots: &[SlotSpec], recorded: &[u64], now_us: i64) -> CoreResult<Vec<Figures>> {
        self.route(|s| s.merge(slots, recorded, now_us), || {})
    }

    fn figures(&self, slots: &[SlotSpec], now_us: i64) -> CoreResult<Vec<Option<Figures>>> {
        self.route(|s| s.figures(slots, now_us), || {})
    }

    fn forget(&self, ids: &[Arc<str>]) {
        self.local.forget(ids);
    }
}
