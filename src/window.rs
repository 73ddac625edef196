//! A sliding window of usage with running sums.
//!
//! Usage recorded at time `t` counts while `now < t + window`. Entries that
//! arrive within one `quantum` of the newest bucket's first entry are merged
//! into it, so a window never holds more than `window / quantum + 1` buckets,
//! whatever the rate. A merged bucket is released when its *latest* entry
//! expires: usage is never released early (a limit is never exceeded over
//! any exact window), and at most one quantum late. A lone entry is exact.
//! Adding, evicting and checking a limit are O(1) amortised; the log is never
//! re-summed on a hit.

use crate::usage::{Dimension, Usage};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Default merge quantum: a thousandth of the window (60 ms for a minute),
/// and at least one nanosecond.
pub fn default_quantum(window_ns: u64) -> u64 {
    (window_ns / 1000).max(1)
}

/// Usage merged from entries recorded between `first` and `last` (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub first: u64,
    pub last: u64,
    pub usage: Usage,
}

/// The newest bucket lives inline and the release time of the oldest is
/// cached, so the common hit (nothing expires, the entry merges into the
/// newest bucket) touches no heap memory: with many keys, that is what
/// keeps a hit off the cache-miss path.
#[derive(Clone, Debug)]
pub struct SlidingWindow {
    window: u64,
    quantum: u64,
    /// Every bucket but the newest, oldest first.
    older: VecDeque<Bucket>,
    newest: Option<Bucket>,
    /// When the oldest bucket leaves the window (`u64::MAX` when empty).
    front_expiry: u64,
    sum: Usage,
}

impl SlidingWindow {
    pub fn new(window_ns: u64) -> SlidingWindow {
        SlidingWindow::with_quantum(window_ns, default_quantum(window_ns))
    }

    pub fn with_quantum(window_ns: u64, quantum_ns: u64) -> SlidingWindow {
        assert!(window_ns > 0, "window must be positive");
        SlidingWindow {
            window: window_ns,
            quantum: quantum_ns.max(1),
            older: VecDeque::new(),
            newest: None,
            front_expiry: u64::MAX,
            sum: Usage::ZERO,
        }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    pub fn quantum(&self) -> u64 {
        self.quantum
    }

    /// Running total of everything still in the window (as of the last eviction).
    pub fn sum(&self) -> Usage {
        self.sum
    }

    /// Number of buckets held.
    pub fn len(&self) -> usize {
        self.older.len() + usize::from(self.newest.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.newest.is_none()
    }

    /// Nothing is counted: the window may be dropped without changing any decision.
    pub fn is_idle(&self) -> bool {
        self.sum.is_zero()
    }

    /// Buckets, oldest first.
    pub fn buckets(&self) -> impl DoubleEndedIterator<Item = &Bucket> {
        self.older.iter().chain(self.newest.iter())
    }

    fn expiry(&self, bucket: &Bucket) -> u64 {
        bucket.last.saturating_add(self.window)
    }

    fn refresh_front(&mut self) {
        self.front_expiry = match self.older.front().or(self.newest.as_ref()) {
            Some(b) => self.expiry(b),
            None => u64::MAX,
        };
    }

    /// Moves the newest bucket into `older`, for operations that work on all buckets.
    fn spill(&mut self) {
        if let Some(b) = self.newest.take() {
            self.older.push_back(b);
        }
    }

    /// Undoes [`SlidingWindow::spill`] and refreshes the cached release time.
    fn unspill(&mut self) {
        self.newest = self.older.pop_back();
        self.refresh_front();
    }

    /// Drops buckets whose latest entry has left the window; returns how many.
    pub fn evict(&mut self, now: u64) -> usize {
        if now < self.front_expiry {
            return 0;
        }
        self.spill();
        let mut evicted = 0;
        while let Some(front) = self.older.front() {
            if self.expiry(front) > now {
                break;
            }
            self.sum = self.sum.saturating_sub(front.usage);
            self.older.pop_front();
            evicted += 1;
        }
        if self.older.is_empty() {
            self.sum = Usage::ZERO;
        }
        self.unspill();
        evicted
    }

    /// Records `usage` at time `at`. In-order adds are O(1); an add older than
    /// the newest bucket is placed by binary search.
    pub fn add(&mut self, at: u64, usage: Usage) {
        if usage.is_zero() {
            return;
        }
        self.sum = self.sum.saturating_add(usage);
        let (window, quantum) = (self.window, self.quantum);
        match &mut self.newest {
            Some(newest) if at >= newest.first && at - newest.first < quantum => {
                newest.usage = newest.usage.saturating_add(usage);
                newest.last = newest.last.max(at);
                if self.older.is_empty() {
                    self.front_expiry = newest.last.saturating_add(window);
                }
            }
            Some(newest) if at >= newest.first => {
                let previous = std::mem::replace(
                    newest,
                    Bucket {
                        first: at,
                        last: at,
                        usage,
                    },
                );
                self.older.push_back(previous);
            }
            None => {
                self.newest = Some(Bucket {
                    first: at,
                    last: at,
                    usage,
                });
                self.front_expiry = at.saturating_add(window);
            }
            Some(_) => {
                self.spill();
                let idx = self.older.partition_point(|b| b.first <= at);
                if idx > 0 && at - self.older[idx - 1].first < quantum {
                    let bucket = &mut self.older[idx - 1];
                    bucket.usage = bucket.usage.saturating_add(usage);
                    bucket.last = bucket.last.max(at);
                } else {
                    self.older.insert(
                        idx,
                        Bucket {
                            first: at,
                            last: at,
                            usage,
                        },
                    );
                }
                self.unspill();
            }
        }
    }

    /// Replaces part of the usage recorded at `at` (a settle or a refund):
    /// removes `sub` and adds `add` in the bucket that holds `at`. Returns
    /// `false` when that bucket has already left the window.
    pub fn adjust(&mut self, at: u64, add: Usage, sub: Usage) -> bool {
        let bucket = match &mut self.newest {
            Some(newest) if at >= newest.first => {
                if at > newest.last {
                    return false;
                }
                newest
            }
            _ => {
                let idx = self.older.partition_point(|b| b.first <= at);
                if idx == 0 || at > self.older[idx - 1].last {
                    return false;
                }
                &mut self.older[idx - 1]
            }
        };
        let old = bucket.usage;
        let new = old.saturating_sub(sub).saturating_add(add);
        bucket.usage = new;
        self.sum = self.sum.saturating_sub(old).saturating_add(new);
        true
    }

    /// Nanoseconds from `now` until at least `need` of `dim` has left the
    /// window; `None` when the window does not hold that much.
    pub fn time_until_released(&self, now: u64, dim: Dimension, need: u64) -> Option<u64> {
        if need == 0 {
            return Some(0);
        }
        let mut released = 0u64;
        for bucket in self.buckets() {
            released = released.saturating_add(bucket.usage.get(dim));
            if released >= need {
                return Some(self.expiry(bucket).saturating_sub(now));
            }
        }
        None
    }

    /// Usage recorded within the last `span` nanoseconds (`span <= window`):
    /// every bucket whose latest entry is still inside that span.
    pub fn sum_within(&self, now: u64, span: u64) -> Usage {
        if span >= self.window {
            return self.sum;
        }
        let mut total = Usage::ZERO;
        for bucket in self.buckets().rev() {
            if bucket.last.saturating_add(span) <= now {
                break;
            }
            total = total.saturating_add(bucket.usage);
        }
        total
    }

    /// Puts back a bucket taken from [`SlidingWindow::buckets`] (used to rebuild
    /// a copy), keeping its release time.
    pub fn insert_bucket(&mut self, bucket: Bucket) {
        if bucket.usage.is_zero() {
            return;
        }
        self.spill();
        let idx = self.older.partition_point(|b| b.first <= bucket.first);
        self.older.insert(idx, bucket);
        self.sum = self.sum.saturating_add(bucket.usage);
        self.unspill();
    }

    pub fn clear(&mut self) {
        self.older.clear();
        self.newest = None;
        self.front_expiry = u64::MAX;
        self.sum = Usage::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(n: u64) -> Usage {
        Usage {
            requests: n,
            ..Usage::ZERO
        }
    }

    fn tokens(n: u64) -> Usage {
        Usage {
            requests: 1,
            input_tokens: n,
            ..Usage::ZERO
        }
    }

    #[test]
    fn a_lone_entry_counts_for_exactly_one_window() {
        let mut w = SlidingWindow::with_quantum(60, 1);
        w.add(10, req(1));
        w.evict(69);
        assert_eq!(w.sum().requests, 1);
        w.evict(70);
        assert_eq!(w.sum().requests, 0);
        assert!(w.is_empty());
    }

    #[test]
    fn entries_within_a_quantum_merge_and_release_with_the_latest() {
        let mut w = SlidingWindow::with_quantum(1000, 10);
        for t in 0..10 {
            w.add(t, req(1));
        }
        w.add(10, req(1));
        assert_eq!(w.len(), 2);
        assert_eq!(w.sum().requests, 11);
        w.evict(1008);
        assert_eq!(w.sum().requests, 11, "merged usage is never released early");
        w.evict(1009);
        assert_eq!(w.sum().requests, 1);
    }

    #[test]
    fn release_time_is_when_enough_has_left() {
        let mut w = SlidingWindow::with_quantum(60, 1);
        w.add(0, tokens(100));
        w.add(10, tokens(50));
        w.add(20, tokens(25));
        assert_eq!(
            w.time_until_released(30, Dimension::InputTokens, 100),
            Some(30)
        );
        assert_eq!(
            w.time_until_released(30, Dimension::InputTokens, 101),
            Some(40)
        );
        assert_eq!(
            w.time_until_released(30, Dimension::TotalTokens, 175),
            Some(50)
        );
        assert_eq!(w.time_until_released(30, Dimension::InputTokens, 176), None);
        assert_eq!(w.time_until_released(30, Dimension::Requests, 0), Some(0));
    }

    #[test]
    fn adjust_changes_the_bucket_that_holds_the_time() {
        let mut w = SlidingWindow::with_quantum(60, 1);
        w.add(0, tokens(100));
        w.add(10, tokens(50));
        assert!(w.adjust(
            0,
            Usage::ZERO,
            tokens(0).saturating_add(Usage {
                input_tokens: 60,
                ..Usage::ZERO
            })
        ));
        assert_eq!(w.sum().input_tokens, 90);
        assert!(w.adjust(
            10,
            Usage {
                input_tokens: 5,
                ..Usage::ZERO
            },
            Usage::ZERO
        ));
        assert_eq!(w.sum().input_tokens, 95);
        assert!(!w.adjust(5, tokens(1), Usage::ZERO), "no entry at t=5");
        w.evict(60);
        assert!(
            !w.adjust(0, tokens(1), Usage::ZERO),
            "t=0 has left the window"
        );
        assert_eq!(w.sum().input_tokens, 55);
    }

    #[test]
    fn out_of_order_adds_are_placed_in_time_order() {
        let mut w = SlidingWindow::with_quantum(100, 5);
        w.add(50, req(1));
        w.add(10, req(2));
        w.add(12, req(4));
        w.add(30, req(8));
        let firsts: Vec<u64> = w.buckets().map(|b| b.first).collect();
        assert_eq!(firsts, vec![10, 30, 50]);
        assert_eq!(w.sum().requests, 15);
        w.evict(113);
        assert_eq!(w.sum().requests, 9);
    }

    #[test]
    fn sum_within_a_shorter_span() {
        let mut w = SlidingWindow::with_quantum(100, 1);
        w.add(0, req(1));
        w.add(50, req(2));
        w.add(90, req(4));
        assert_eq!(w.sum_within(95, 10).requests, 4);
        assert_eq!(w.sum_within(95, 50).requests, 6);
        assert_eq!(w.sum_within(95, 100).requests, 7);
    }

    proptest! {
        /// For any in-order stream of adds, at any later time: the running sum
        /// equals a re-sum of the buckets, it is never less than the exact
        /// sliding-window total (no early release) nor more than the exact
        /// total over a window one quantum longer, and memory stays bounded.
        #[test]
        fn window_invariants(
            gaps in prop::collection::vec(0u64..40, 1..300),
            amounts in prop::collection::vec(1u64..1000, 300),
            probe in 0u64..200,
        ) {
            let window = 100;
            let quantum = 7;
            let mut w = SlidingWindow::with_quantum(window, quantum);
            let mut log: Vec<(u64, u64)> = Vec::new();
            let mut t = 0u64;
            for (i, gap) in gaps.iter().enumerate() {
                t += gap;
                w.evict(t);
                w.add(t, tokens(amounts[i]));
                log.push((t, amounts[i]));
                prop_assert!(w.len() as u64 <= window / quantum + 2);
            }
            let now = t + probe;
            w.evict(now);
            let resum: u64 = w.buckets().map(|b| b.usage.input_tokens).sum();
            prop_assert_eq!(resum, w.sum().input_tokens);
            let exact: u64 = log.iter().filter(|(at, _)| at + window > now).map(|(_, a)| a).sum();
            let loose: u64 = log.iter().filter(|(at, _)| at + window + quantum > now).map(|(_, a)| a).sum();
            prop_assert!(w.sum().input_tokens >= exact);
            prop_assert!(w.sum().input_tokens <= loose);
        }
    }
}
