//! A reservation: usage admitted on an estimate, settled on the actual usage.

use super::Inner;
use crate::error::{CoreError, CoreResult};
use crate::usage::Usage;
use parking_lot::Mutex;
use smallvec::SmallVec;
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationState {
    Open,
    Settled,
    Cancelled,
}

/// Where a reservation's usage is counted: applies a settle or a refund to
/// the usage recorded at `at` on each key (skipping a key whose state was
/// reset since, which its generation tells).
pub trait Adjust: Send + Sync {
    fn adjust(&self, keys: &[(Arc<str>, u64)], at: u64, add: Usage, sub: Usage);
}

/// Usage recorded on one or more keys at one moment. `settle` replaces the
/// estimate with the actual usage at that same moment (a refund or an extra
/// charge); `cancel` refunds all of it. Either happens once.
pub struct Reservation {
    inner: Arc<dyn Adjust>,
    /// The keys' state identities at admission (see `KeyState::name`).
    /// Each key with the generation of its state at admission.
    keys: SmallVec<[(Arc<str>, u64); 2]>,
    at: u64,
    state: Mutex<(ReservationState, Usage)>,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, usage) = *self.state.lock();
        f.debug_struct("Reservation")
            .field("keys", &self.keys().collect::<Vec<_>>())
            .field("at", &self.at)
            .field("state", &state)
            .field("usage", &usage)
            .finish()
    }
}

impl Reservation {
    pub fn new(
        inner: Arc<dyn Adjust>,
        keys: SmallVec<[(Arc<str>, u64); 2]>,
        at: u64,
        usage: Usage,
    ) -> Reservation {
        Reservation {
            inner,
            keys,
            at,
            state: Mutex::new((ReservationState::Open, usage)),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| &**k)
    }

    /// When the usage was recorded, on the limiter's clock.
    pub fn at(&self) -> u64 {
        self.at
    }

    pub fn state(&self) -> ReservationState {
        self.state.lock().0
    }

    /// What is counted for this reservation now: the estimate, the settled
    /// usage, or nothing once cancelled.
    pub fn usage(&self) -> Usage {
        let (state, usage) = *self.state.lock();
        match state {
            ReservationState::Cancelled => Usage::ZERO,
            _ => usage,
        }
    }

    /// Replaces the estimate with `actual` (its `requests` field is kept as reserved).
    pub fn settle(&self, actual: Usage) -> CoreResult<Usage> {
        let mut state = self.state.lock();
        match state.0 {
            ReservationState::Open => {}
            ReservationState::Settled => return Err(CoreError::AlreadySettled),
            ReservationState::Cancelled => {
                return Err(CoreError::InvalidArgument(
                    "reservation",
                    "was cancelled and cannot be settled".into(),
                ))
            }
        }
        let reserved = state.1;
        let actual = Usage {
            requests: reserved.requests,
            ..actual
        };
        self.apply(
            actual.saturating_sub(reserved),
            reserved.saturating_sub(actual),
        );
        *state = (ReservationState::Settled, actual);
        Ok(actual)
    }

    /// Refunds everything. Returns `false` when it was already cancelled.
    pub fn cancel(&self) -> CoreResult<bool> {
        let mut state = self.state.lock();
        match state.0 {
            ReservationState::Open => {
                self.apply(Usage::ZERO, state.1);
                state.0 = ReservationState::Cancelled;
                Ok(true)
            }
            ReservationState::Cancelled => Ok(false),
            ReservationState::Settled => Err(CoreError::AlreadySettled),
        }
    }

    fn apply(&self, add: Usage, sub: Usage) {
        if add.is_zero() && sub.is_zero() {
            return;
        }
        self.inner.adjust(&self.keys, self.at, add, sub);
    }
}

impl Adjust for Inner {
    fn adjust(&self, held: &[(Arc<str>, u64)], at: u64, add: Usage, sub: Usage) {
        let keys: SmallVec<[&str; 2]> = held.iter().map(|(k, _)| &**k).collect();
        let mut locked = self.lock(&keys);
        let now = self.clock.now();
        for (i, (key, generation)) in held.iter().enumerate() {
            let Some(state) = locked.shard(i).keys.get_mut(key) else {
                continue;
            };
            if state.generation != *generation {
                continue; // the key was reset since: this usage no longer counts
            }
            state.evict(now);
            state.adjust(now, at, add, sub);
            if !sub.is_zero() {
                state.wake_head();
            }
        }
    }
}
