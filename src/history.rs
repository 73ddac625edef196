//! A standalone, lock-safe usage history over one sliding window.

use crate::clock::Clock;
use crate::error::{CoreError, CoreResult};
use crate::usage::Usage;
use crate::window::{Bucket, SlidingWindow};
use parking_lot::Mutex;
use std::sync::Arc;

/// A sliding window of usage behind one lock, on an injected clock.
pub struct UsageHistory {
    window: Mutex<SlidingWindow>,
    clock: Arc<dyn Clock>,
}

impl UsageHistory {
    pub fn new(window_ns: u64, clock: Arc<dyn Clock>) -> CoreResult<UsageHistory> {
        if window_ns == 0 {
            return Err(CoreError::InvalidArgument(
                "window_seconds",
                "must be positive".into(),
            ));
        }
        Ok(UsageHistory {
            window: Mutex::new(SlidingWindow::new(window_ns)),
            clock,
        })
    }

    pub fn window_ns(&self) -> u64 {
        self.window.lock().window()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Records `usage` at `at` (default: now). Usage already older than the
    /// window is ignored; usage in the future is refused.
    pub fn add(&self, usage: Usage, at: Option<u64>) -> CoreResult<()> {
        let now = self.clock.now();
        let at = at.unwrap_or(now);
        if at > now {
            return Err(CoreError::InvalidArgument(
                "at",
                "must not be in the future of the history's clock".into(),
            ));
        }
        let mut window = self.window.lock();
        window.evict(now);
        if at.saturating_add(window.window()) > now {
            window.add(at, usage);
        }
        Ok(())
    }

    /// Total usage within the last `span` ns (default: the whole window).
    pub fn usage_in_window(&self, span: Option<u64>) -> CoreResult<Usage> {
        let now = self.clock.now();
        let mut window = self.window.lock();
        window.evict(now);
        match span {
            None => Ok(window.sum()),
            Some(0) => Err(CoreError::InvalidArgument(
                "window_seconds",
                "must be positive".into(),
            )),
            Some(span) if span > window.window() => Err(CoreError::InvalidArgument(
                "window_seconds",
                "must not exceed the history's window".into(),
            )),
            Some(span) => Ok(window.sum_within(now, span)),
        }
    }

    /// Evicts everything that has left the window; returns the number of entries removed.
    pub fn cleanup(&self) -> usize {
        let now = self.clock.now();
        self.window.lock().evict(now)
    }

    /// Number of entries held (after merging within the quantum).
    pub fn len(&self) -> usize {
        let now = self.clock.now();
        let mut window = self.window.lock();
        window.evict(now);
        window.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries as `(age of first, age of last, usage)` relative to now, so a
    /// copy can be rebuilt on another clock.
    pub fn snapshot(&self) -> Vec<(u64, u64, Usage)> {
        let now = self.clock.now();
        let mut window = self.window.lock();
        window.evict(now);
        window
            .buckets()
            .map(|b| {
                (
                    now.saturating_sub(b.first),
                    now.saturating_sub(b.last),
                    b.usage,
                )
            })
            .collect()
    }

    /// Adds the entries of a [`UsageHistory::snapshot`].
    pub fn restore(&self, entries: &[(u64, u64, Usage)]) {
        let now = self.clock.now();
        let mut window = self.window.lock();
        for (first_age, last_age, usage) in entries {
            window.insert_bucket(Bucket {
                first: now.saturating_sub(*first_age),
                last: now.saturating_sub(*last_age),
                usage: *usage,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const S: u64 = 1_000_000_000;

    #[test]
    fn history_counts_within_its_window_only() {
        let clock = ManualClock::new(0);
        let history = UsageHistory::new(60 * S, clock.clone()).unwrap();
        let one = Usage {
            requests: 1,
            input_tokens: 10,
            ..Usage::ZERO
        };
        history.add(one, None).unwrap();
        clock.advance(30 * S);
        history.add(one, None).unwrap();
        assert_eq!(history.usage_in_window(None).unwrap().input_tokens, 20);
        assert_eq!(
            history.usage_in_window(Some(10 * S)).unwrap().input_tokens,
            10
        );
        clock.advance(30 * S);
        assert_eq!(history.usage_in_window(None).unwrap().requests, 1);
        assert_eq!(history.len(), 1);
        clock.advance(30 * S);
        assert_eq!(history.cleanup(), 1);
        assert!(history.is_empty());
        assert!(history.add(one, Some(200 * S)).is_err());
        assert!(history.usage_in_window(Some(61 * S)).is_err());
    }
}
