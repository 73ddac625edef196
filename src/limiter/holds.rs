//! What a provider told the limiter about a key, on top of its own limits:
//! a pause (a 429 with Retry-After) and ceilings from remaining-quota
//! headers ("N more tokens until the reset"). Both only ever tighten.

use super::state::{cap, Fit};
use crate::limits::{LimitOrigin, LimitSpec, Unit};
use crate::usage::{Dimension, Usage};
use smallvec::SmallVec;

/// A provider's remaining-quota figure for one dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub dimension: Dimension,
    /// How much more the provider admits until the reset.
    pub remaining: u64,
    /// Nanoseconds from now until the provider's window resets; `None`
    /// takes the window of the key's limit on that dimension (else a minute).
    pub reset_ns: Option<u64>,
}

/// At most `left` more of `dimension` until `until`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ceiling {
    dimension: Dimension,
    /// What the provider said remained, when it said it.
    observed: u64,
    left: u64,
    until: u64,
}

impl Ceiling {
    fn spec(&self) -> LimitSpec {
        LimitSpec {
            dimension: self.dimension,
            unit: Unit::Second,
            amount: self.observed,
            origin: LimitOrigin::Observed,
        }
    }
}

/// The pause and ceilings of one key. Expired ones are dropped on `expire`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Holds {
    pause_until: u64,
    ceilings: SmallVec<[Ceiling; 2]>,
}

/// The limit a paused key reports.
pub(crate) fn pause_spec() -> LimitSpec {
    LimitSpec {
        dimension: Dimension::Requests,
        unit: Unit::Second,
        amount: 0,
        origin: LimitOrigin::Pause,
    }
}

/// Does a limit on `limit` bound usage of `dim`? A total-token limit bounds
/// input and output tokens too.
pub(crate) fn bounds(limit: Dimension, dim: Dimension) -> bool {
    limit == dim
        || (limit == Dimension::TotalTokens
            && matches!(dim, Dimension::InputTokens | Dimension::OutputTokens))
}

impl Holds {
    pub(crate) fn is_empty(&self) -> bool {
        self.pause_until == 0 && self.ceilings.is_empty()
    }

    pub(crate) fn expire(&mut self, now: u64) {
        if self.pause_until <= now {
            self.pause_until = 0;
        }
        self.ceilings.retain(|c| c.until > now);
    }

    /// A longer pause extends; a shorter one changes nothing.
    pub(crate) fn pause(&mut self, until: u64) {
        self.pause_until = self.pause_until.max(until);
    }

    /// What the ceilings let through of `dim` now (`u64::MAX` when none).
    pub(crate) fn headroom(&self, dim: Dimension) -> u64 {
        self.ceilings
            .iter()
            .filter(|c| bounds(c.dimension, dim))
            .map(|c| c.left)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Replaces the ceiling on the observation's dimension.
    pub(crate) fn tighten(&mut self, dimension: Dimension, remaining: u64, until: u64) {
        self.ceilings.retain(|c| c.dimension != dimension);
        self.ceilings.push(Ceiling {
            dimension,
            observed: remaining,
            left: remaining,
            until,
        });
    }

    /// Counts admitted (or settled extra) usage against the ceilings.
    pub(crate) fn consume(&mut self, usage: &Usage) {
        for c in &mut self.ceilings {
            c.left = c.left.saturating_sub(usage.get(c.dimension));
        }
    }

    /// The verdict of the pause and the ceilings on `usage` now.
    pub(crate) fn evaluate(&self, now: u64, usage: &Usage, key_index: usize) -> Fit {
        if self.pause_until > now {
            return Fit::Waits {
                wait_ns: self.pause_until - now,
                limit: (key_index, pause_spec()),
            };
        }
        let mut remaining = super::state::unlimited();
        let mut binding = None;
        let mut binding_share = f64::INFINITY;
        let mut longest: Option<(u64, LimitSpec)> = None;
        for c in self.ceilings.iter().filter(|c| c.until > now) {
            let wanted = usage.get(c.dimension);
            if wanted > c.left {
                let wait = c.until - now;
                if longest.is_none_or(|(best, _)| wait > best) {
                    longest = Some((wait, c.spec()));
                }
                cap(&mut remaining, c.dimension, c.left);
            } else {
                let left = c.left - wanted;
                cap(&mut remaining, c.dimension, left);
                let share = left as f64 / c.observed.max(1) as f64;
                if share < binding_share {
                    binding_share = share;
                    binding = Some((key_index, c.spec()));
                }
            }
        }
        match longest {
            Some((wait_ns, spec)) => Fit::Waits {
                wait_ns,
                limit: (key_index, spec),
            },
            None => Fit::Fits {
                remaining,
                binding,
                binding_share,
            },
        }
    }

    /// Caps what remains by the pause (nothing) and the ceilings.
    pub(crate) fn cap_remaining(&self, now: u64, remaining: &mut Usage) {
        if self.pause_until > now {
            *remaining = Usage::ZERO;
            return;
        }
        for c in self.ceilings.iter().filter(|c| c.until > now) {
            cap(remaining, c.dimension, c.left);
        }
    }
}
