//! A slice of a key's limits held by this process, and where the
//! reservations admitted from it settle.

use super::slices::Leases;
use crate::error::{CoreError, CoreResult};
use crate::limiter::redis::call::Op;
use crate::limiter::reservation::Adjust;
use crate::limiter::state::{cap, unlimited};
use crate::limits::{LimitSpec, Limits};
use crate::usage::{Dimension, Usage};
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;
use std::sync::{Arc, Weak};

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

    pub(super) fn fraction_ppm(&self) -> u64 {
        ((self.fraction * 1e6).round() as u64).clamp(1, 1_000_000)
    }
}

/// A slice held by this process on one key.
pub(super) struct Slice {
    /// The dimensions it bounds (the key's limits and observed ceilings).
    pub(super) dims: SmallVec<[Dimension; 5]>,
    pub(super) granted: Usage,
    pub(super) consumed: Usage,
    /// When it ends, on the local time line (see `Leases::local_now`).
    pub(super) deadline: u64,
    pub(super) hold: Arc<SliceHold>,
}

/// Where the reservations admitted from one slice settle: into the slice
/// while it is out, into Redis (at the slice's time there) once it is back.
pub(super) struct SliceHold {
    pub(super) leases: Weak<Leases>,
    pub(super) slot: Weak<Slot>,
    pub(super) id: u64,
    pub(super) key: Arc<str>,
    pub(super) redis_generation: u64,
    /// The slice's time in Redis: its end.
    pub(super) at_end_ns: u64,
    /// Redis's time when the slice was taken, and the local time just before.
    pub(super) taken_ns: u64,
    pub(super) sent_local: u64,
}

/// One key's slice (none between slices).
pub(super) struct Slot {
    pub(super) key: Arc<str>,
    pub(super) specs: Arc<Limits>,
    pub(super) current: Mutex<Option<Slice>>,
}

/// Whether a slice still holds `consumed` on every limited dimension.
pub(super) fn within(dims: &[Dimension], granted: &Usage, consumed: &Usage) -> bool {
    dims.iter().all(|d| consumed.get(*d) <= granted.get(*d))
}

/// What a slice may still admit, field by field (unlimited fields read as the maximum).
pub(super) fn leftover(dims: &[Dimension], granted: &Usage, consumed: &Usage) -> Usage {
    let mut out = unlimited();
    for d in dims {
        cap(
            &mut out,
            *d,
            granted.get(*d).saturating_sub(consumed.get(*d)),
        );
    }
    out
}

impl Slice {
    /// What returning the slice adds to and takes from Redis's count, so
    /// that Redis counts what it admitted, field by field. On every bounded
    /// dimension that is at most what was granted, so nothing gets tighter.
    pub(super) fn settlement(&self) -> (Usage, Usage) {
        (
            self.consumed.saturating_sub(self.granted),
            self.granted.saturating_sub(self.consumed),
        )
    }
}

impl Slice {
    pub(super) fn fits(&self, usage: &Usage, now: u64) -> bool {
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
    pub(super) fn binding(&self, granted: &Usage, consumed: &Usage) -> (f64, LimitSpec) {
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
pub(super) fn lock_all(slots: &[Arc<Slot>]) -> Guards<'_> {
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

pub(super) type Guards<'a> = SmallVec<[MutexGuard<'a, Option<Slice>>; 2]>;

/// Several slices behind one reservation (a tuple of keys).
pub(super) struct TupleHold(pub(super) SmallVec<[Arc<SliceHold>; 2]>);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::MAX_COUNT;

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
