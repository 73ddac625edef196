//! The slices of one leased limiter: taking them from Redis in one round
//! trip, admitting from them, and returning what they did not use.

use super::slice::{leftover, lock_all, Lease, Slice, SliceHold, Slot, TupleHold};
use crate::clock::ClockListener;
use crate::error::CoreResult;
use crate::limiter::redis::call::{self, Op};
use crate::limiter::redis::{RedisInner, RedisLimiter};
use crate::limiter::reservation::Adjust;
use crate::limiter::state::unlimited;
use crate::limiter::{Decision, Reservation};
use crate::limits::LimitSpec;
use crate::usage::Usage;
use hashbrown::HashMap;
use parking_lot::Mutex;
use smallvec::SmallVec;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub(crate) struct Leases {
    pub(super) redis: Arc<RedisInner>,
    pub(super) lease: Lease,
    pub(super) slots: Mutex<SlotMap>,
    pub(super) next_id: AtomicU64,
    pub(super) origin: Instant,
}

/// The keys' slots, swept of idle ones as the map doubles, so memory follows
/// the keys with slices out rather than every key ever seen.
#[derive(Default)]
pub(super) struct SlotMap {
    by_key: HashMap<Arc<str>, Arc<Slot>>,
    sweep_at: usize,
}

impl SlotMap {
    const FIRST_SWEEP: usize = 1_024;

    fn insert(&mut self, key: Arc<str>, slot: Arc<Slot>) {
        if self.by_key.len() >= self.sweep_at.max(Self::FIRST_SWEEP) {
            // Kept: a slot with a slice out, or in use by a call now.
            self.by_key.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.current.try_lock().is_none_or(|c| c.is_some())
            });
            self.sweep_at = 2 * self.by_key.len();
        }
        self.by_key.insert(key, slot);
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.by_key.values()
    }
}

/// A lease call's outcome: admitted from the new slices, or Redis's refusal.
pub(super) enum Taken {
    Granted(Decision),
    Refused(Decision),
}

impl Taken {
    pub(super) fn reservation(self) -> Option<Reservation> {
        match self {
            Taken::Granted(mut d) => d.reservation.take(),
            Taken::Refused(_) => None,
        }
    }
}

impl Leases {
    pub(super) fn start(redis: &RedisLimiter, lease: Lease) -> Arc<Leases> {
        let leases = Arc::new(Leases {
            redis: redis.inner.clone(),
            lease,
            slots: Mutex::new(SlotMap::default()),
            next_id: AtomicU64::new(1),
            origin: Instant::now(),
        });
        if let Some(clock) = &leases.redis.clock {
            clock.subscribe(Arc::downgrade(&leases) as Weak<dyn ClockListener>);
        }
        leases
    }

    /// The injected clock's time, or monotonic time since the limiter started.
    pub(super) fn local_now(&self) -> u64 {
        match &self.redis.clock {
            Some(clock) => clock.now(),
            None => self.origin.elapsed().as_nanos() as u64,
        }
    }

    pub(super) fn redis_adjust(&self, op: Op, hold: &SliceHold, add: Usage, sub: Usage) {
        self.redis.send_adjust(
            op,
            &[(hold.key.clone(), hold.redis_generation)],
            hold.at_end_ns,
            add,
            sub,
        );
    }

    pub(super) fn slot(&self, key: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.by_key.get(key) {
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

    pub(super) fn slots_of(&self, keys: &[&str]) -> SmallVec<[Arc<Slot>; 2]> {
        keys.iter().map(|k| self.slot(k)).collect()
    }

    /// Sends back what a slice did not use (and what it used of fields no
    /// limit bounds, which the slice did not count).
    pub(super) fn retire(&self, slice: Slice) {
        let (add, sub) = slice.settlement();
        if !add.is_zero() || !sub.is_zero() {
            self.redis_adjust(Op::Return, &slice.hold, add, sub);
        }
    }

    pub(super) fn retire_keys(&self, keys: &[&str]) {
        for slot in self.slots_of(keys) {
            if let Some(slice) = slot.current.lock().take() {
                self.retire(slice);
            }
        }
    }

    /// Returns every slice (or drops them without a refund, after a reset).
    pub(super) fn retire_all(&self, refund: bool) {
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
    pub(super) fn admit_local(
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
    pub(super) fn lease_call(self: &Arc<Self>, keys: &[&str]) -> CoreResult<call::Call> {
        let mut call = self.redis.call(Op::Lease, self.redis.call_keys(keys)?);
        call.extra_ns = Some(self.lease.duration_ns());
        call.fraction_ppm = self.lease.fraction_ppm();
        Ok(call)
    }

    /// Takes new slices on every key for `usage` (the caller returned the
    /// old ones), and admits `usage` from them.
    pub(super) fn take(self: &Arc<Self>, keys: &[&str], usage: Usage) -> CoreResult<Taken> {
        let mut call = self.lease_call(keys)?;
        call.usage = usage;
        let sent_local = self.local_now();
        let reply = self.redis.block(self.redis.run(call))?;
        self.install(keys, usage, &reply, sent_local)
    }

    /// Takes new slices on `keys` (after an exact wait), unless waiters
    /// of this process are queued there.
    pub(super) fn refill(
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

    pub(super) fn refill_later(self: &Arc<Self>, keys: &[&str]) {
        if let Ok(refill) = self.refill(keys) {
            self.redis.runtime.spawn(refill);
        }
    }

    /// Installs the slices of a lease reply and admits `usage` from them;
    /// a refusal is Redis's exact decision.
    pub(super) fn install(
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
            crate::limiter::redis::unavailable(&self.redis.config.url, "the lease reply was short")
        })?;
        let taken_ns = verdict.at_ns;
        let at_end_ns = taken_ns + self.lease.duration_ns();
        let deadline = match &self.redis.clock {
            Some(_) => at_end_ns,
            // Local time runs from before the call: the slice ends here no
            // later than in Redis (less a microsecond of rounding).
            None => sent_local + self.lease.duration_ns() - 1_000,
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
    pub(super) fn expire_later(self: &Arc<Self>, slot: &Arc<Slot>, id: u64, deadline: u64) {
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

    pub(super) fn expire_due(&self) {
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

    pub(super) fn queued(&self, keys: &[&str]) -> bool {
        self.redis.queues.lock().queued_usage(keys).is_some()
    }
}

impl ClockListener for Leases {
    /// A manual clock moved: slices whose time is up go back.
    fn on_advance(&self) {
        self.expire_due();
    }
}
