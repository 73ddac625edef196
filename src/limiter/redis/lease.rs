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

use super::call::{self, Op};
use super::fallback::SharedLimiter;
use super::{waiting, RedisInner, RedisLimiter};
use crate::clock::ClockListener;
use crate::error::{CoreError, CoreResult};
use crate::limiter::reservation::Adjust;
use crate::limiter::state::unlimited;
use crate::limiter::{check_keys, Decision, Limiter, Observation, Reservation, Started};
use crate::limits::{LimitSpec, Limits};
use crate::usage::{Dimension, Usage, MAX_COUNT};
use hashbrown::HashMap;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How much of each limit a slice takes, and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lease {
    fraction: f64,
    duration_ns: u64,
}

impl Lease {
    /// `fraction` in (0, 1] of each limit, for `duration_ns` > 0 (whole microseconds).
    pub fn new(fraction: f64, duration_ns: u64) -> CoreResult<Lease> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(CoreError::InvalidArgument(
                "fraction",
                format!("must be a number in (0, 1] (the share of each limit a slice takes), got {fraction}"),
            ));
        }
        if duration_ns < 1_000 {
            return Err(CoreError::InvalidArgument(
                "seconds",
                "must be a finite number of seconds > 0 (at least a microsecond)".into(),
            ));
        }
        Ok(Lease {
            fraction,
            duration_ns: duration_ns / 1_000 * 1_000,
        })
    }

    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    pub fn duration_ns(&self) -> u64 {
        self.duration_ns
    }

    fn fraction_ppm(&self) -> u64 {
        ((self.fraction * 1e6).round() as u64).clamp(1, 1_000_000)
    }
}

/// A slice held by this process on one key.
struct Slice {
    /// The dimensions it bounds (the key's limits and observed ceilings).
    dims: SmallVec<[Dimension; 5]>,
    granted: Usage,
    consumed: Usage,
    /// When it ends, on the local time line (see `Leases::local_now`).
    deadline: u64,
    hold: Arc<SliceHold>,
}

/// Where the reservations admitted from one slice settle: into the slice
/// while it is out, into Redis (at the slice's time there) once it is back.
struct SliceHold {
    leases: Weak<Leases>,
    slot: Weak<Slot>,
    id: u64,
    key: Arc<str>,
    redis_generation: u64,
    /// The slice's time in Redis: its end.
    at_end_ns: u64,
    /// Redis's time when the slice was taken, and the local time just before.
    taken_ns: u64,
    sent_local: u64,
}

/// One key's slice (none between slices).
struct Slot {
    key: Arc<str>,
    specs: Arc<Limits>,
    current: Mutex<Option<Slice>>,
}

pub(crate) struct Leases {
    redis: Arc<RedisInner>,
    lease: Lease,
    slots: Mutex<HashMap<Arc<str>, Arc<Slot>>>,
    next_id: AtomicU64,
    origin: Instant,
}

/// The limiter of a `RedisRateLimiter`: exact, or leased when a lease is given.
#[derive(Clone)]
pub struct LeasedLimiter {
    exact: SharedLimiter,
    leases: Option<Arc<Leases>>,
}

/// Whether a slice still holds `consumed` on every limited dimension.
fn within(dims: &[Dimension], granted: &Usage, consumed: &Usage) -> bool {
    dims.iter().all(|d| consumed.get(*d) <= granted.get(*d))
}

/// What a slice may still admit, field by field (unlimited fields read as the maximum).
fn leftover(dims: &[Dimension], granted: &Usage, consumed: &Usage) -> Usage {
    let mut out = Usage {
        requests: MAX_COUNT,
        input_tokens: MAX_COUNT,
        output_tokens: MAX_COUNT,
        cache_read_tokens: MAX_COUNT,
        cache_write_tokens: MAX_COUNT,
        cost_nanos: MAX_COUNT,
    };
    for d in dims {
        let left = granted.get(*d).saturating_sub(consumed.get(*d));
        match d {
            Dimension::Requests => out.requests = out.requests.min(left),
            Dimension::InputTokens => out.input_tokens = out.input_tokens.min(left),
            Dimension::OutputTokens => out.output_tokens = out.output_tokens.min(left),
            Dimension::TotalTokens => {
                out.input_tokens = out.input_tokens.min(left);
                out.output_tokens = out.output_tokens.min(left);
            }
            Dimension::Cost => out.cost_nanos = out.cost_nanos.min(left),
        }
    }
    out
}

impl Slice {
    /// What returning the slice adds to and takes from Redis's count, so
    /// that Redis counts what it admitted, field by field. On every bounded
    /// dimension that is at most what was granted, so nothing gets tighter.
    fn settlement(&self) -> (Usage, Usage) {
        (
            self.consumed.saturating_sub(self.granted),
            self.granted.saturating_sub(self.consumed),
        )
    }
}

impl Slice {
    fn fits(&self, usage: &Usage, now: u64) -> bool {
        now < self.deadline
            && within(
                &self.dims,
                &self.granted,
                &self.consumed.saturating_add(*usage),
            )
    }
}

impl Slot {
    /// The limit with the smallest share left in the slice.
    fn binding(&self, granted: &Usage, consumed: &Usage) -> (f64, LimitSpec) {
        let mut best: Option<(f64, LimitSpec)> = None;
        for spec in self.specs.specs() {
            let left = granted
                .get(spec.dimension)
                .saturating_sub(consumed.get(spec.dimension));
            let share = left as f64 / spec.amount.max(1) as f64;
            if best.is_none_or(|(s, _)| share < s) {
                best = Some((share, *spec));
            }
        }
        best.expect("a leased key has limits")
    }
}

/// Locks the slots of a request's keys (in address order, so two requests
/// never deadlock); the guards come back in key order.
fn lock_all(slots: &[Arc<Slot>]) -> Guards<'_> {
    if let [slot] = slots {
        return smallvec::smallvec![slot.current.lock()];
    }
    let mut order: SmallVec<[usize; 4]> = (0..slots.len()).collect();
    order.sort_by_key(|i| Arc::as_ptr(&slots[*i]) as usize);
    let mut guards: SmallVec<[Option<MutexGuard<'_, Option<Slice>>>; 4]> =
        (0..slots.len()).map(|_| None).collect();
    for i in order {
        guards[i] = Some(slots[i].current.lock());
    }
    guards
        .into_iter()
        .map(|g| g.expect("every slot is locked"))
        .collect()
}

type Guards<'a> = SmallVec<[MutexGuard<'a, Option<Slice>>; 2]>;

/// Several slices behind one reservation (a tuple of keys).
struct TupleHold(SmallVec<[Arc<SliceHold>; 2]>);

impl Adjust for TupleHold {
    fn adjust(&self, held: &[(Arc<str>, u64)], at: u64, add: Usage, sub: Usage) {
        for hold in &self.0 {
            hold.adjust(held, at, add, sub);
        }
    }
}

impl Adjust for SliceHold {
    /// Into the slice while it is out; what an extra charge takes beyond the
    /// slice is sent to Redis at once (and widens the slice by as much).
    fn adjust(&self, _held: &[(Arc<str>, u64)], _at: u64, add: Usage, sub: Usage) {
        let Some(leases) = self.leases.upgrade() else {
            return;
        };
        if let Some(slot) = self.slot.upgrade() {
            let mut current = slot.current.lock();
            if let Some(slice) = current.as_mut().filter(|s| s.hold.id == self.id) {
                slice.consumed = slice.consumed.saturating_sub(sub).saturating_add(add);
                if !within(&slice.dims, &slice.granted, &slice.consumed) {
                    let over = slice.consumed.saturating_sub(slice.granted);
                    slice.granted = slice.granted.saturating_add(over);
                    leases.redis_adjust(Op::Adjust, self, over, Usage::ZERO);
                }
                return;
            }
        }
        leases.redis_adjust(Op::Adjust, self, add, sub);
    }
}

/// A lease call's outcome: admitted from the new slices, or Redis's refusal.
enum Taken {
    Granted(Decision),
    Refused(Decision),
}

impl Taken {
    fn reservation(self) -> Option<Reservation> {
        match self {
            Taken::Granted(mut d) => d.reservation.take(),
            Taken::Refused(_) => None,
        }
    }
}

impl Leases {
    fn start(redis: &RedisLimiter, lease: Lease) -> Arc<Leases> {
        let leases = Arc::new(Leases {
            redis: redis.inner.clone(),
            lease,
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            origin: Instant::now(),
        });
        if let Some(clock) = &leases.redis.clock {
            clock.subscribe(Arc::downgrade(&leases) as Weak<dyn ClockListener>);
        }
        leases
    }

    /// The injected clock's time, or monotonic time since the limiter started.
    fn local_now(&self) -> u64 {
        match &self.redis.clock {
            Some(clock) => clock.now(),
            None => self.origin.elapsed().as_nanos() as u64,
        }
    }

    fn redis_adjust(&self, op: Op, hold: &SliceHold, add: Usage, sub: Usage) {
        self.redis.send_adjust(
            op,
            &[(hold.key.clone(), hold.redis_generation)],
            hold.at_end_ns,
            add,
            sub,
        );
    }

    fn slot(&self, key: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        let specs = self.redis.limits_for(key);
        let key: Arc<str> = Arc::from(key);
        let slot = Arc::new(Slot {
            key: key.clone(),
            specs,
            current: Mutex::new(None),
        });
        slots.insert(key, slot.clone());
        slot
    }

    fn slots_of(&self, keys: &[&str]) -> SmallVec<[Arc<Slot>; 2]> {
        keys.iter().map(|k| self.slot(k)).collect()
    }

    /// Sends back what a slice did not use (and what it used of fields no
    /// limit bounds, which the slice did not count).
    fn retire(&self, slice: Slice) {
        let (add, sub) = slice.settlement();
        if !add.is_zero() || !sub.is_zero() {
            self.redis_adjust(Op::Return, &slice.hold, add, sub);
        }
    }

    fn retire_keys(&self, keys: &[&str]) {
        for slot in self.slots_of(keys) {
            if let Some(slice) = slot.current.lock().take() {
                self.retire(slice);
            }
        }
    }

    /// Returns every slice (or drops them without a refund, after a reset).
    fn retire_all(&self, refund: bool) {
        let slots: Vec<Arc<Slot>> = self.slots.lock().values().cloned().collect();
        for slot in slots {
            if let Some(slice) = slot.current.lock().take() {
                if refund {
                    self.retire(slice);
                }
            }
        }
    }

    /// Admits from the keys' slices when they all hold `usage` (recording it
    /// when `record`); otherwise returns the slices that are spent or over.
    fn admit_local(
        self: &Arc<Self>,
        keys: &[&str],
        usage: Usage,
        record: bool,
    ) -> Option<Decision> {
        let slots = self.slots_of(keys);
        let mut guards = lock_all(&slots);
        let now = self.local_now();
        let fits = guards
            .iter()
            .all(|g| g.as_ref().is_some_and(|s| s.fits(&usage, now)));
        if !fits {
            for guard in guards.iter_mut() {
                if let Some(slice) = guard.take() {
                    self.retire(slice);
                }
            }
            return None;
        }
        let mut remaining = unlimited();
        let mut binding: Option<(f64, (usize, LimitSpec))> = None;
        let mut holds: SmallVec<[Arc<SliceHold>; 2]> = SmallVec::new();
        let mut held: SmallVec<[(Arc<str>, u64); 2]> = SmallVec::new();
        for (i, (guard, slot)) in guards.iter_mut().zip(&slots).enumerate() {
            let slice = guard.as_mut().expect("checked above");
            if record {
                slice.consumed = slice.consumed.saturating_add(usage);
            }
            let after = if record {
                slice.consumed
            } else {
                slice.consumed.saturating_add(usage)
            };
            remaining = remaining.min(leftover(&slice.dims, &slice.granted, &after));
            let (share, spec) = slot.binding(&slice.granted, &after);
            if binding.is_none_or(|(s, _)| share < s) {
                binding = Some((share, (i, spec)));
            }
            held.push((slot.key.clone(), slice.hold.id));
            holds.push(slice.hold.clone());
        }
        drop(guards);
        let reservation = record.then(|| {
            let first = &holds[0];
            let at = match &self.redis.clock {
                Some(_) => now,
                None => first.taken_ns + now.saturating_sub(first.sent_local),
            };
            let adjust: Arc<dyn Adjust> = if holds.len() == 1 {
                holds.pop().expect("one hold")
            } else {
                Arc::new(TupleHold(holds))
            };
            Reservation::new(adjust, held, at, usage)
        });
        Some(Decision {
            allowed: true,
            retry_after_ns: Some(0),
            limit: binding.map(|(_, l)| l),
            remaining,
            reservation,
        })
    }

    /// The lease call for `usage` on `keys` (one round trip).
    fn lease_call(self: &Arc<Self>, keys: &[&str]) -> CoreResult<call::Call> {
        let mut call = self.redis.call(Op::Lease, self.redis.call_keys(keys)?);
        call.extra_ns = Some(self.lease.duration_ns);
        call.fraction_ppm = self.lease.fraction_ppm();
        Ok(call)
    }

    /// Takes new slices on every key for `usage` (the caller returned the
    /// old ones), and admits `usage` from them.
    fn take(self: &Arc<Self>, keys: &[&str], usage: Usage) -> CoreResult<Taken> {
        let mut call = self.lease_call(keys)?;
        call.usage = usage;
        let sent_local = self.local_now();
        let reply = self.redis.block(self.redis.run(call))?;
        self.install(keys, usage, &reply, sent_local)
    }

    /// Takes new slices on `keys` (after an exact wait), unless waiters
    /// of this process are queued there.
    fn refill(
        self: &Arc<Self>,
        keys: &[&str],
    ) -> CoreResult<impl Future<Output = CoreResult<()>> + Send + 'static> {
        let call = self.lease_call(keys)?;
        let leases = self.clone();
        let owned: Vec<Arc<str>> = keys.iter().map(|k| Arc::from(*k)).collect();
        Ok(async move {
            let names: Vec<&str> = owned.iter().map(|k| &**k).collect();
            if leases.queued(&names) {
                return Ok(());
            }
            let sent_local = leases.local_now();
            let reply = leases.redis.run(call).await?;
            leases.install(&names, Usage::ZERO, &reply, sent_local)?;
            if leases.queued(&names) {
                leases.retire_keys(&names);
            }
            Ok(())
        })
    }

    fn refill_later(self: &Arc<Self>, keys: &[&str]) {
        if let Ok(refill) = self.refill(keys) {
            self.redis.runtime.spawn(refill);
        }
    }

    /// Installs the slices of a lease reply and admits `usage` from them;
    /// a refusal is Redis's exact decision.
    fn install(
        self: &Arc<Self>,
        keys: &[&str],
        usage: Usage,
        reply: &[i64],
        sent_local: u64,
    ) -> CoreResult<Taken> {
        let Some(granted) = call::slices(reply, keys.len()) else {
            return Ok(Taken::Refused(
                self.redis.decision(keys, usage, reply, false)?,
            ));
        };
        let verdict = call::verdict(reply, &self.redis.limits_of(keys)).ok_or_else(|| {
            super::unavailable(&self.redis.config.url, "the lease reply was short")
        })?;
        let taken_ns = verdict.at_ns;
        let at_end_ns = taken_ns + self.lease.duration_ns;
        let deadline = match &self.redis.clock {
            Some(_) => at_end_ns,
            // Local time runs from before the call: the slice ends here no
            // later than in Redis (less a microsecond of rounding).
            None => sent_local + self.lease.duration_ns - 1_000,
        };
        let slots = self.slots_of(keys);
        {
            let mut guards = lock_all(&slots);
            for (i, (guard, slot)) in guards.iter_mut().zip(&slots).enumerate() {
                if let Some(old) = guard.take() {
                    // Another thread took one meanwhile: the newer one stays.
                    self.retire(old);
                }
                let hold = Arc::new(SliceHold {
                    leases: Arc::downgrade(self),
                    slot: Arc::downgrade(slot),
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    key: slot.key.clone(),
                    redis_generation: verdict.generations[i],
                    at_end_ns,
                    taken_ns,
                    sent_local,
                });
                **guard = Some(Slice {
                    dims: granted[i].dimensions.clone(),
                    granted: granted[i].usage,
                    consumed: Usage::ZERO,
                    deadline,
                    hold: hold.clone(),
                });
                self.expire_later(slot, hold.id, deadline);
            }
        }
        match self.admit_local(keys, usage, true) {
            Some(d) => Ok(Taken::Granted(d)),
            // The slice ended already (a manual clock moved in between).
            None => Ok(Taken::Refused(Decision {
                allowed: false,
                retry_after_ns: Some(0),
                limit: None,
                remaining: Usage::ZERO,
                reservation: None,
            })),
        }
    }

    /// On real time, returns the slice when its time is up if nobody did before.
    fn expire_later(self: &Arc<Self>, slot: &Arc<Slot>, id: u64, deadline: u64) {
        if self.redis.clock.is_some() {
            return; // a manual clock's moves call `on_advance`
        }
        let wait = Duration::from_nanos(deadline.saturating_sub(self.local_now()));
        let leases = Arc::downgrade(self);
        let slot = Arc::downgrade(slot);
        self.redis.runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            if let (Some(leases), Some(slot)) = (leases.upgrade(), slot.upgrade()) {
                let mut current = slot.current.lock();
                if current.as_ref().is_some_and(|s| s.hold.id == id) {
                    let slice = current.take().expect("checked");
                    leases.retire(slice);
                }
            }
        });
    }

    fn expire_due(&self) {
        let now = self.local_now();
        let slots: Vec<Arc<Slot>> = self.slots.lock().values().cloned().collect();
        for slot in slots {
            let mut current = slot.current.lock();
            if current.as_ref().is_some_and(|s| s.deadline <= now) {
                let slice = current.take().expect("checked");
                self.retire(slice);
            }
        }
    }

    fn queued(&self, keys: &[&str]) -> bool {
        self.redis.queues.lock().queued_usage(keys).is_some()
    }
}

impl ClockListener for Leases {
    /// A manual clock moved: slices whose time is up go back.
    fn on_advance(&self) {
        self.expire_due();
    }
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
                let names: Vec<&str> = owned.iter().map(|k| &**k).collect();
                if let Ok(refill) = leases.refill(&names) {
                    let _ = refill.await;
                }
                Ok(reservation)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn u(requests: u64, input: u64, output: u64) -> Usage {
        Usage {
            requests,
            input_tokens: input,
            output_tokens: output,
            ..Usage::ZERO
        }
    }

    #[test]
    fn leftover_caps_input_and_output_by_the_total() {
        let dims = [Dimension::TotalTokens];
        let left = leftover(&dims, &u(0, 1_000, 0), &u(0, 100, 300));
        assert_eq!(left.input_tokens, 600);
        assert_eq!(left.output_tokens, 600);
        assert_eq!(left.requests, MAX_COUNT);
    }

    #[test]
    fn a_lease_is_validated() {
        assert!(Lease::new(0.0, 1_000_000).is_err());
        assert!(Lease::new(1.5, 1_000_000).is_err());
        assert!(Lease::new(f64::NAN, 1_000_000).is_err());
        assert!(Lease::new(0.5, 0).is_err());
        assert_eq!(Lease::new(1.0, 1_500).unwrap().duration_ns(), 1_000);
    }
}
