//! Per-key limiter state and the fit arithmetic shared by every acquire path.

use super::holds::{bounds, Holds};
use super::waiter::Waiter;
use crate::limits::{LimitSpec, Limits};
use crate::usage::{Dimension, Usage, MAX_COUNT};
use crate::window::SlidingWindow;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::Arc;

pub(crate) struct KeyState {
    /// Which life of the key this is. A reset (or a reclaim and re-creation)
    /// changes it, so reservations made before settle into nothing.
    pub(crate) generation: u64,
    pub(crate) limits: Arc<Limits>,
    /// One window per distinct window length in `limits`, shortest first.
    pub(crate) windows: SmallVec<[SlidingWindow; 1]>,
    /// Waiters in arrival order; only the head may be admitted.
    pub(crate) queue: VecDeque<Arc<Waiter>>,
    /// A provider's pause and ceilings, when it gave any (boxed: rare, and
    /// the hot path should not carry them).
    pub(crate) holds: Option<Box<Holds>>,
}

/// Whether a request fits a key (or a set of keys) now.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fit {
    /// It fits; `remaining` is what would be left after it, `binding` the
    /// limit with the smallest share left.
    Fits {
        remaining: Usage,
        binding: Option<(usize, LimitSpec)>,
        binding_share: f64,
    },
    /// It fits in `wait_ns`; `limit` is the limit that frees up last.
    Waits {
        wait_ns: u64,
        limit: (usize, LimitSpec),
    },
    /// It is larger than `limit` itself.
    Never { limit: (usize, LimitSpec) },
}

pub(crate) fn unlimited() -> Usage {
    Usage::from_array([MAX_COUNT; 6])
}

pub(crate) fn cap(remaining: &mut Usage, dim: Dimension, left: u64) {
    match dim {
        Dimension::Requests => remaining.requests = remaining.requests.min(left),
        Dimension::InputTokens => remaining.input_tokens = remaining.input_tokens.min(left),
        Dimension::OutputTokens => remaining.output_tokens = remaining.output_tokens.min(left),
        Dimension::TotalTokens => {
            remaining.input_tokens = remaining.input_tokens.min(left);
            remaining.output_tokens = remaining.output_tokens.min(left);
        }
        Dimension::Cost => remaining.cost_nanos = remaining.cost_nanos.min(left),
    }
}

impl Fit {
    /// Combines the verdicts of several keys: never beats waits beats fits;
    /// the longest wait wins; what remains is the minimum.
    pub(crate) fn and(self, other: Fit) -> Fit {
        match (self, other) {
            (Fit::Never { limit }, _) | (_, Fit::Never { limit }) => Fit::Never { limit },
            (
                Fit::Waits {
                    wait_ns: a,
                    limit: la,
                },
                Fit::Waits {
                    wait_ns: b,
                    limit: lb,
                },
            ) => {
                if b > a {
                    Fit::Waits {
                        wait_ns: b,
                        limit: lb,
                    }
                } else {
                    Fit::Waits {
                        wait_ns: a,
                        limit: la,
                    }
                }
            }
            (w @ Fit::Waits { .. }, _) | (_, w @ Fit::Waits { .. }) => w,
            (
                Fit::Fits {
                    remaining: ra,
                    binding: ba,
                    binding_share: sa,
                },
                Fit::Fits {
                    remaining: rb,
                    binding: bb,
                    binding_share: sb,
                },
            ) => {
                let (binding, binding_share) = if sb < sa { (bb, sb) } else { (ba, sa) };
                Fit::Fits {
                    remaining: ra.min(rb),
                    binding,
                    binding_share,
                }
            }
        }
    }
}

impl KeyState {
    pub(crate) fn new(limits: Arc<Limits>, generation: u64) -> KeyState {
        let windows = limits
            .windows()
            .iter()
            .map(|w| SlidingWindow::new(*w))
            .collect();
        KeyState {
            generation,
            limits,
            windows,
            queue: VecDeque::new(),
            holds: None,
        }
    }

    pub(crate) fn evict(&mut self, now: u64) {
        for window in &mut self.windows {
            window.evict(now);
        }
        if let Some(holds) = &mut self.holds {
            holds.expire(now);
            if holds.is_empty() {
                self.holds = None;
            }
        }
    }

    /// Nothing counted, nobody waiting, no reservation outstanding (a
    /// reservation holds a clone of the map's `key`).
    pub(crate) fn is_idle(&self, key: &Arc<str>) -> bool {
        self.queue.is_empty()
            && self.holds.is_none()
            && Arc::strong_count(key) == 1
            && self.windows.iter().all(SlidingWindow::is_idle)
    }

    /// Does `usage` fit now? `key_index` tags the limits this key reports.
    pub(crate) fn evaluate(&self, now: u64, usage: &Usage, key_index: usize) -> Fit {
        let fit = evaluate(&self.limits, &self.windows, now, usage, key_index);
        match &self.holds {
            Some(holds) => fit.and(holds.evaluate(now, usage, key_index)),
            None => fit,
        }
    }

    /// When `usage` would fit if the queued waiters (those ahead of `me`, when
    /// given) were admitted first, in order, each as soon as it fits
    /// (refunds aside): a replay on a copy of the windows.
    pub(crate) fn evaluate_behind_queue(
        &self,
        now: u64,
        usage: &Usage,
        key_index: usize,
        me: Option<&Arc<Waiter>>,
    ) -> Fit {
        let mut windows = self.windows.clone();
        let mut t = now;
        for waiter in &self.queue {
            if me.is_some_and(|me| Arc::ptr_eq(me, waiter)) {
                break;
            }
            if let Fit::Waits { wait_ns, .. } =
                evaluate(&self.limits, &windows, t, &waiter.usage, key_index)
            {
                t = t.saturating_add(wait_ns);
            }
            for window in &mut windows {
                window.evict(t);
                window.add(t, waiter.usage);
            }
        }
        for window in &mut windows {
            window.evict(t);
        }
        let mut fit = evaluate(&self.limits, &windows, t, usage, key_index);
        if let Some(holds) = &self.holds {
            fit = fit.and(holds.evaluate(t, usage, key_index));
        }
        match fit {
            Fit::Fits { binding, .. } => Fit::Waits {
                wait_ns: t - now,
                limit: binding.unwrap_or((key_index, self.limits.specs()[0])),
            },
            Fit::Waits { wait_ns, limit } => Fit::Waits {
                wait_ns: t - now + wait_ns,
                limit,
            },
            never => never,
        }
    }
}

/// The fit arithmetic over a key's windows.
fn evaluate(
    limits: &Limits,
    windows: &[SlidingWindow],
    now: u64,
    usage: &Usage,
    key_index: usize,
) -> Fit {
    {
        let mut remaining = unlimited();
        let mut binding = None;
        let mut binding_share = f64::INFINITY;
        let mut longest: Option<(u64, LimitSpec)> = None;
        for (spec, w) in limits.specs_with_window() {
            let wanted = usage.get(spec.dimension);
            if wanted > spec.amount {
                return Fit::Never {
                    limit: (key_index, *spec),
                };
            }
            let window = &windows[w];
            let used = window.sum().get(spec.dimension);
            let after = used.saturating_add(wanted);
            if after > spec.amount {
                let wait = window
                    .time_until_released(now, spec.dimension, after - spec.amount)
                    .unwrap_or(window.window());
                if longest.is_none_or(|(best, _)| wait > best) {
                    longest = Some((wait, *spec));
                }
                cap(
                    &mut remaining,
                    spec.dimension,
                    spec.amount.saturating_sub(used),
                );
            } else {
                let left = spec.amount - after;
                cap(&mut remaining, spec.dimension, left);
                let share = left as f64 / spec.amount as f64;
                if share < binding_share {
                    binding_share = share;
                    binding = Some((key_index, *spec));
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
}

impl KeyState {
    /// What could still be admitted now (fields with no limit read the
    /// maximum count; a full or over-full limit reads zero for its fields only).
    pub(crate) fn remaining(&self, now: u64) -> Usage {
        let mut remaining = unlimited();
        for (spec, w) in self.limits.specs_with_window() {
            let used = self.windows[w].sum().get(spec.dimension);
            cap(
                &mut remaining,
                spec.dimension,
                spec.amount.saturating_sub(used),
            );
        }
        if let Some(holds) = &self.holds {
            holds.cap_remaining(now, &mut remaining);
        }
        remaining
    }

    /// How much more of `dim` the limits and ceilings let through now.
    pub(crate) fn headroom(&self, dim: Dimension) -> u64 {
        let limits = self
            .limits
            .specs_with_window()
            .filter(|(spec, _)| bounds(spec.dimension, dim))
            .map(|(spec, w)| {
                let used = self.windows[w].sum().get(spec.dimension);
                spec.amount.saturating_sub(used)
            })
            .min()
            .unwrap_or(u64::MAX);
        let ceilings = self.holds.as_ref().map_or(u64::MAX, |h| h.headroom(dim));
        limits.min(ceilings)
    }

    /// The pause and ceilings, created on first use.
    pub(crate) fn holds_mut(&mut self) -> &mut Holds {
        self.holds.get_or_insert_with(Box::default)
    }

    pub(crate) fn record(&mut self, now: u64, usage: Usage) {
        for window in &mut self.windows {
            window.add(now, usage);
        }
        if let Some(holds) = &mut self.holds {
            holds.consume(&usage);
        }
    }

    /// Applies a settle or refund to the usage recorded at `at`, in every
    /// window that still holds it.
    pub(crate) fn adjust(&mut self, now: u64, at: u64, add: Usage, sub: Usage) {
        // A refund does not raise a provider's ceiling (the provider has
        // counted the request); extra usage does use it up.
        if let Some(holds) = &mut self.holds {
            holds.consume(&add);
        }
        for window in &mut self.windows {
            if !window.adjust(at, add, sub) && at.saturating_add(window.window()) > now {
                // Nothing was recorded at `at` (a zero-usage reservation):
                // the extra usage still belongs at the original time.
                window.add(at, add);
            }
        }
    }

    /// Forgets all usage; outstanding reservations no longer apply.
    pub(crate) fn clear(&mut self, generation: u64) {
        for window in &mut self.windows {
            window.clear();
        }
        self.holds = None;
        self.generation = generation;
    }

    pub(crate) fn wake_head(&self) {
        if let Some(head) = self.queue.front() {
            head.wake();
        }
    }

    pub(crate) fn is_head(&self, waiter: &Arc<Waiter>) -> bool {
        self.queue.front().is_some_and(|h| Arc::ptr_eq(h, waiter))
    }

    /// Removes `waiter` from the queue; wakes the next head if it was the head.
    pub(crate) fn leave(&mut self, waiter: &Arc<Waiter>) {
        if let Some(pos) = self.queue.iter().position(|w| Arc::ptr_eq(w, waiter)) {
            self.queue.remove(pos);
            if pos == 0 {
                self.wake_head();
            }
        }
    }
}
