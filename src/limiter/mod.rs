//! The rate limiter: limits per key over sliding windows, checked and
//! recorded atomically across every window and every key of a request.
//!
//! State is sharded by key hash, each shard behind its own `parking_lot`
//! mutex, so unrelated keys do not contend. A request on several keys locks
//! their shards in ascending index order, which rules out deadlock.

mod backend;
pub mod headers;
mod holds;
mod keymap;
pub mod redis;
mod reservation;
mod state;
mod waiter;

pub use backend::{CancelWait, Limiter, Started, WaitFuture};
pub use holds::Observation;
pub use reservation::{Reservation, ReservationState};
pub use waiter::{Canceller, Enqueued, WaitHandle};

use crate::clock::{Clock, ClockListener};
use crate::error::{CoreError, CoreResult};
use crate::limits::{LimitSpec, Limits};
use crate::usage::Usage;
use crate::window::Bucket;
use hashbrown::DefaultHashBuilder;
use hashbrown::HashMap;
use keymap::KeyMap;
use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use state::{Fit, KeyState};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

const SHARDS: usize = 64;

/// The outcome of a non-waiting acquire or a check.
#[derive(Debug)]
pub struct Decision {
    pub allowed: bool,
    /// Nanoseconds until the request would fit: 0 when allowed, `None` when it never can.
    pub retry_after_ns: Option<u64>,
    /// `(index of the key, limit)`: when refused, the limit that frees up
    /// last; when allowed, the one with the smallest share left.
    pub limit: Option<(usize, LimitSpec)>,
    /// What could still be admitted (after this request, when allowed).
    pub remaining: Usage,
    pub reservation: Option<Reservation>,
}

struct Shard {
    keys: KeyMap,
    ops_since_sweep: usize,
}

impl Shard {
    /// The key's state (created on first use) and the map's shared copy of the key.
    fn state(&mut self, key: &str, inner: &Inner) -> (&Arc<str>, &mut KeyState) {
        self.keys.state(key, || {
            KeyState::new(inner.limits_for(key), inner.next_generation())
        })
    }

    /// Drops idle keys once the shard has seen four times as many operations
    /// as it holds keys: amortised O(1), and a quarter of a key visited per
    /// operation (each visit may be a cache miss).
    fn maybe_sweep(&mut self, now: u64) {
        self.ops_since_sweep += 1;
        if self.ops_since_sweep > (4 * self.keys.len()).max(64) {
            self.ops_since_sweep = 0;
            self.keys.retain(|key, state| {
                state.evict(now);
                !state.is_idle(key)
            });
        }
    }
}

pub(crate) struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: DefaultHashBuilder,
    default_limits: Arc<Limits>,
    per_key: HashMap<String, Arc<Limits>>,
    clock: Arc<dyn Clock>,
    generations: AtomicU64,
}

/// Guards of the shards a request touches, taken in ascending order.
pub(crate) struct Locked<'a> {
    guards: SmallVec<[(usize, MutexGuard<'a, Shard>); 2]>,
    key_shards: SmallVec<[usize; 2]>,
}

impl Locked<'_> {
    fn shard(&mut self, key_index: usize) -> &mut Shard {
        let shard = self.key_shards[key_index];
        let pos = self
            .guards
            .iter()
            .position(|(i, _)| *i == shard)
            .expect("every key's shard is locked");
        &mut self.guards[pos].1
    }
}

impl Inner {
    fn shard_of(&self, key: &str) -> usize {
        self.shard_of_hash(self.hasher.hash_one(key))
    }

    /// Middle bits pick the shard; the table inside uses the same hash, whose
    /// low bits place a key and whose top 7 bits tag it.
    fn shard_of_hash(&self, hash: u64) -> usize {
        ((hash >> 32) as usize) % self.shards.len()
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed)
    }

    fn limits_for(&self, key: &str) -> Arc<Limits> {
        self.per_key
            .get(key)
            .cloned()
            .unwrap_or_else(|| self.default_limits.clone())
    }

    pub(crate) fn lock<S: AsRef<str>>(&self, keys: &[S]) -> Locked<'_> {
        let key_shards: SmallVec<[usize; 2]> =
            keys.iter().map(|k| self.shard_of(k.as_ref())).collect();
        let mut order: SmallVec<[usize; 2]> = key_shards.clone();
        order.sort_unstable();
        order.dedup();
        let guards = order.iter().map(|i| (*i, self.shards[*i].lock())).collect();
        Locked { guards, key_shards }
    }

    /// Evicts expired usage and evaluates `usage` on every key.
    /// With `create` false, a key without state is evaluated as empty and
    /// left without state (a check records nothing, not even the key).
    fn evaluate<S: AsRef<str>>(
        &self,
        locked: &mut Locked<'_>,
        keys: &[S],
        now: u64,
        usage: &Usage,
        create: bool,
    ) -> Fit {
        let fit = keys.iter().enumerate().map(|(i, key)| {
            let key = key.as_ref();
            let shard = locked.shard(i);
            if create || shard.keys.contains_key(key) {
                let (_, state) = shard.state(key, self);
                state.evict(now);
                state.evaluate(now, usage, i)
            } else {
                KeyState::new(self.limits_for(key), 0).evaluate(now, usage, i)
            }
        });
        fit.reduce(Fit::and).unwrap_or(Fit::Fits {
            remaining: state::unlimited(),
            binding: None,
            binding_share: f64::INFINITY,
        })
    }

    /// Records `usage` at `now` on every key; returns the epochs for a reservation.
    fn record<S: AsRef<str>>(
        &self,
        locked: &mut Locked<'_>,
        keys: &[S],
        now: u64,
        usage: Usage,
    ) -> SmallVec<[(Arc<str>, u64); 2]> {
        let mut held = SmallVec::new();
        for (i, key) in keys.iter().enumerate() {
            let (name, state) = locked.shard(i).state(key.as_ref(), self);
            state.record(now, usage);
            held.push((name.clone(), state.generation));
        }
        held
    }

    /// Like `evaluate`, but as if everyone queued on the keys went first.
    fn evaluate_behind_queues<S: AsRef<str>>(
        &self,
        locked: &mut Locked<'_>,
        keys: &[S],
        now: u64,
        usage: &Usage,
        me: Option<&Arc<waiter::Waiter>>,
    ) -> Fit {
        let fit = keys.iter().enumerate().map(|(i, key)| {
            let key = key.as_ref();
            match locked.shard(i).keys.get(key) {
                Some(state) => state.evaluate_behind_queue(now, usage, i, me),
                None => KeyState::new(self.limits_for(key), 0).evaluate(now, usage, i),
            }
        });
        fit.reduce(Fit::and).expect("keys are never empty")
    }

    fn queued<S: AsRef<str>>(&self, locked: &mut Locked<'_>, keys: &[S]) -> Option<Usage> {
        for (i, key) in keys.iter().enumerate() {
            if let Some(head) = locked
                .shard(i)
                .keys
                .get(key.as_ref())
                .and_then(|s| s.queue.front())
            {
                return Some(head.usage);
            }
        }
        None
    }
}

impl ClockListener for Inner {
    /// A manual clock moved: every waiter re-checks its deadline and timeout.
    fn on_advance(&self) {
        for shard in self.shards.iter() {
            for state in shard.lock().keys.values() {
                for waiter in &state.queue {
                    waiter.wake();
                }
            }
        }
    }
}

/// A bucket relative to now: `(age of first entry, age of last entry, usage)`.
pub type SnapshotBucket = (u64, u64, Usage);
/// One window of a key: `(window length in ns, buckets)`.
pub type SnapshotWindow = (u64, Vec<SnapshotBucket>);

/// Per-key state that can be rebuilt on another clock (ages, not times).
/// Pending waiters are not part of it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LimiterSnapshot {
    pub keys: Vec<(String, Vec<SnapshotWindow>)>,
}

/// A sharded, lock-safe rate limiter. Cloning shares the same state.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

pub(crate) fn check_keys<S: AsRef<str>>(keys: &[S]) -> CoreResult<()> {
    if keys.is_empty() {
        return Err(CoreError::InvalidArgument(
            "key",
            "a tuple of keys must not be empty".into(),
        ));
    }
    for (i, key) in keys.iter().enumerate() {
        if keys[..i].iter().any(|k| k.as_ref() == key.as_ref()) {
            return Err(CoreError::InvalidArgument(
                "key",
                format!("{:?} appears twice", key.as_ref()),
            ));
        }
    }
    Ok(())
}

impl RateLimiter {
    pub fn new(
        default_limits: Limits,
        per_key: impl IntoIterator<Item = (String, Limits)>,
        clock: Arc<dyn Clock>,
    ) -> RateLimiter {
        let hasher = DefaultHashBuilder::default();
        let inner = Arc::new(Inner {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        keys: KeyMap::new(hasher.clone()),
                        ops_since_sweep: 0,
                    })
                })
                .collect(),
            hasher,
            default_limits: Arc::new(default_limits),
            per_key: per_key.into_iter().map(|(k, l)| (k, Arc::new(l))).collect(),
            clock,
            generations: AtomicU64::new(0),
        });
        let listener: Weak<dyn ClockListener> = Arc::downgrade(&inner) as Weak<dyn ClockListener>;
        inner.clock.subscribe(listener);
        RateLimiter { inner }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn now(&self) -> u64 {
        self.inner.clock.now()
    }

    pub fn default_limits(&self) -> &Limits {
        &self.inner.default_limits
    }

    pub fn per_key_limits(&self) -> impl Iterator<Item = (&str, &Limits)> {
        self.inner.per_key.iter().map(|(k, l)| (k.as_str(), &**l))
    }

    /// Admits `usage` on every key now, or on none. Never waits. Refused
    /// while earlier waiters are queued on any of the keys (FIFO fairness).
    pub fn try_acquire<S: AsRef<str>>(&self, keys: &[S], usage: Usage) -> CoreResult<Decision> {
        self.decide(keys, usage, true)
    }

    /// What [`RateLimiter::try_acquire`] would decide; records nothing.
    pub fn check<S: AsRef<str>>(&self, keys: &[S], usage: Usage) -> CoreResult<Decision> {
        self.decide(keys, usage, false)
    }

    fn decide<S: AsRef<str>>(
        &self,
        keys: &[S],
        usage: Usage,
        record: bool,
    ) -> CoreResult<Decision> {
        check_keys(keys)?;
        if let [key] = keys {
            if let Some(decision) = self.admit_one(key.as_ref(), usage, record) {
                return Ok(decision);
            }
        }
        Ok(self.decide_locked(keys, usage, record))
    }

    /// The hot path: one key, nobody queued, and it fits. One lock, one
    /// lookup. `None` sends every other case down the general path.
    fn admit_one(&self, key: &str, usage: Usage, record: bool) -> Option<Decision> {
        let inner = &*self.inner;
        let hash = inner.hasher.hash_one(key);
        let mut shard = inner.shards[inner.shard_of_hash(hash)].lock();
        let now = inner.clock.now();
        shard.maybe_sweep(now);
        if !record && !shard.keys.contains_key(key) {
            return None; // a check on a new key: the general path evaluates it without state
        }
        let (name, state) = shard.keys.state_hashed(hash, key, || {
            KeyState::new(inner.limits_for(key), inner.next_generation())
        });
        state.evict(now);
        if !state.queue.is_empty() {
            return None;
        }
        let Fit::Fits {
            remaining, binding, ..
        } = state.evaluate(now, &usage, 0)
        else {
            return None;
        };
        let reservation = record.then(|| {
            state.record(now, usage);
            let held = smallvec::smallvec![(name.clone(), state.generation)];
            Reservation::new(self.inner.clone(), held, now, usage)
        });
        Some(Decision {
            allowed: true,
            retry_after_ns: Some(0),
            limit: binding,
            remaining,
            reservation,
        })
    }

    fn decide_locked<S: AsRef<str>>(&self, keys: &[S], usage: Usage, record: bool) -> Decision {
        let inner = &*self.inner;
        let mut locked = inner.lock(keys);
        let now = inner.clock.now();
        for (_, guard) in locked.guards.iter_mut() {
            guard.maybe_sweep(now);
        }
        let fit = inner.evaluate(&mut locked, keys, now, &usage, record);
        let queued_head = match fit {
            Fit::Never { .. } => None,
            _ => inner.queued(&mut locked, keys),
        };
        match (fit, queued_head) {
            (
                Fit::Fits {
                    remaining, binding, ..
                },
                None,
            ) => {
                let reservation = if record {
                    let held = inner.record(&mut locked, keys, now, usage);
                    drop(locked);
                    Some(Reservation::new(self.inner.clone(), held, now, usage))
                } else {
                    None
                };
                Decision {
                    allowed: true,
                    retry_after_ns: Some(0),
                    limit: binding,
                    remaining,
                    reservation,
                }
            }
            (Fit::Never { limit }, _) => Decision {
                allowed: false,
                retry_after_ns: None,
                limit: Some(limit),
                remaining: Usage::ZERO,
                reservation: None,
            },
            (Fit::Waits { wait_ns, limit }, None) => {
                let remaining = self.remaining_locked(&mut locked, keys, now);
                Decision {
                    allowed: false,
                    retry_after_ns: Some(wait_ns),
                    limit: Some(limit),
                    remaining,
                    reservation: None,
                }
            }
            (_, Some(_)) => {
                // Behind queued waiters: when it fits once they have gone first.
                let (wait_ns, limit) =
                    match inner.evaluate_behind_queues(&mut locked, keys, now, &usage, None) {
                        Fit::Waits { wait_ns, limit } => (Some(wait_ns), Some(limit)),
                        Fit::Never { limit } => (None, Some(limit)),
                        Fit::Fits { binding, .. } => (Some(0), binding),
                    };
                let remaining = self.remaining_locked(&mut locked, keys, now);
                Decision {
                    allowed: false,
                    retry_after_ns: wait_ns,
                    limit,
                    remaining,
                    reservation: None,
                }
            }
        }
    }

    fn remaining_locked<S: AsRef<str>>(
        &self,
        locked: &mut Locked<'_>,
        keys: &[S],
        now: u64,
    ) -> Usage {
        let mut remaining = state::unlimited();
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            if let Some(state) = locked.shard(i).keys.get_mut(key) {
                state.evict(now);
                remaining = remaining.min(state.remaining(now));
            } else {
                remaining =
                    remaining.min(KeyState::new(self.inner.limits_for(key), 0).remaining(now));
            }
        }
        remaining
    }

    /// Admits nothing on any of `keys` for `duration_ns` from now (a
    /// provider's 429 / Retry-After). A longer pause extends one in force; a
    /// shorter one changes nothing. Waiters wake when it ends, still in order.
    pub fn pause<S: AsRef<str>>(&self, keys: &[S], duration_ns: u64) -> CoreResult<()> {
        check_keys(keys)?;
        if duration_ns == 0 {
            return Err(CoreError::InvalidArgument(
                "seconds",
                "must be a finite number of seconds > 0".into(),
            ));
        }
        let inner = &*self.inner;
        let mut locked = inner.lock(keys);
        let now = inner.clock.now();
        for (i, key) in keys.iter().enumerate() {
            let (_, state) = locked.shard(i).state(key.as_ref(), inner);
            state.evict(now);
            state.holds_mut().pause(now.saturating_add(duration_ns));
        }
        Ok(())
    }

    /// Follows a provider's remaining-quota figures: where one is below what
    /// the limiter would still admit on a key, at most that much more of
    /// the dimension is admitted there until the provider's reset.
    pub fn observe<S: AsRef<str>>(
        &self,
        keys: &[S],
        observations: &[Observation],
    ) -> CoreResult<()> {
        check_keys(keys)?;
        let inner = &*self.inner;
        let mut locked = inner.lock(keys);
        let now = inner.clock.now();
        for (i, key) in keys.iter().enumerate() {
            let (_, state) = locked.shard(i).state(key.as_ref(), inner);
            state.evict(now);
            for o in observations {
                let reset = o.reset_ns.unwrap_or_else(|| {
                    state
                        .limits
                        .specs()
                        .iter()
                        .filter(|s| s.dimension == o.dimension)
                        .map(LimitSpec::window_ns)
                        .min()
                        .unwrap_or(crate::limits::Unit::Minute.window_ns())
                });
                if reset > 0 && o.remaining < state.headroom(o.dimension) {
                    state
                        .holds_mut()
                        .tighten(o.dimension, o.remaining, now.saturating_add(reset));
                }
            }
        }
        Ok(())
    }

    /// Usage counted for `key`: within the longest window, or within the last
    /// `span` ns when given (at most the longest window).
    pub fn usage(&self, key: &str, span: Option<u64>) -> CoreResult<Usage> {
        let inner = &*self.inner;
        let mut locked = inner.lock(&[key]);
        let now = inner.clock.now();
        let Some(state) = locked.shard(0).keys.get_mut(key) else {
            return Ok(Usage::ZERO);
        };
        state.evict(now);
        let Some(longest) = state.windows.last() else {
            return Ok(Usage::ZERO);
        };
        match span {
            None => Ok(longest.sum()),
            Some(0) => Err(CoreError::InvalidArgument(
                "window_seconds",
                "must be positive".into(),
            )),
            Some(span) if span > longest.window() => Err(CoreError::InvalidArgument(
                "window_seconds",
                "must not exceed the longest limit window".into(),
            )),
            Some(span) => {
                let window = state
                    .windows
                    .iter()
                    .find(|w| w.window() >= span)
                    .unwrap_or(longest);
                Ok(window.sum_within(now, span))
            }
        }
    }

    /// What could still be admitted on every key now (fields with no limit
    /// read as the maximum count; a total-token limit caps input and output).
    pub fn remaining<S: AsRef<str>>(&self, keys: &[S]) -> CoreResult<Usage> {
        check_keys(keys)?;
        let mut locked = self.inner.lock(keys);
        let now = self.inner.clock.now();
        Ok(self.remaining_locked(&mut locked, keys, now))
    }

    /// Forgets the usage of `key` (or of every key). Outstanding reservations
    /// no longer count; queued waiters stay queued and are re-checked.
    pub fn reset(&self, key: Option<&str>) {
        let mut clear = |state: &mut KeyState| {
            state.clear(self.inner.next_generation());
            state.wake_head();
        };
        match key {
            Some(key) => {
                let mut locked = self.inner.lock(&[key]);
                if let Some(state) = locked.shard(0).keys.get_mut(key) {
                    clear(state);
                }
            }
            None => {
                for shard in self.inner.shards.iter() {
                    shard.lock().keys.values_mut().for_each(&mut clear);
                }
            }
        }
    }

    /// Number of keys with state (idle keys are reclaimed over time).
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().keys.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Evicts expired usage everywhere and drops idle keys; returns how many were dropped.
    pub fn reclaim(&self) -> usize {
        let now = self.inner.clock.now();
        let mut dropped = 0;
        for shard in self.inner.shards.iter() {
            let mut shard = shard.lock();
            let before = shard.keys.len();
            shard.keys.retain(|key, state| {
                state.evict(now);
                !state.is_idle(key)
            });
            shard.ops_since_sweep = 0;
            dropped += before - shard.keys.len();
        }
        dropped
    }

    pub fn snapshot(&self) -> LimiterSnapshot {
        let now = self.inner.clock.now();
        let mut keys = Vec::new();
        for shard in self.inner.shards.iter() {
            let mut shard = shard.lock();
            for (key, state) in shard.keys.iter_mut() {
                state.evict(now);
                let windows: Vec<_> = state
                    .windows
                    .iter()
                    .filter(|w| !w.is_empty())
                    .map(|w| {
                        let buckets = w
                            .buckets()
                            .map(|b| {
                                (
                                    now.saturating_sub(b.first),
                                    now.saturating_sub(b.last),
                                    b.usage,
                                )
                            })
                            .collect();
                        (w.window(), buckets)
                    })
                    .collect();
                if !windows.is_empty() {
                    keys.push((key.to_string(), windows));
                }
            }
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        LimiterSnapshot { keys }
    }

    /// Adds the usage of a snapshot (windows the limits here do not have are skipped).
    pub fn restore(&self, snapshot: &LimiterSnapshot) {
        let now = self.inner.clock.now();
        for (key, windows) in &snapshot.keys {
            let mut locked = self.inner.lock(&[key.as_str()]);
            let (_, state) = locked.shard(0).state(key, &self.inner);
            for (length, buckets) in windows {
                let Some(window) = state.windows.iter_mut().find(|w| w.window() == *length) else {
                    continue;
                };
                for (first_age, last_age, usage) in buckets {
                    window.insert_bucket(Bucket {
                        first: now.saturating_sub(*first_age),
                        last: now.saturating_sub(*last_age),
                        usage: *usage,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
