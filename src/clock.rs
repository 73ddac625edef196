//! Time sources. Windows are measured on a monotonic clock in integer
//! nanoseconds; tests drive a [`ManualClock`] instead of sleeping.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Something that wants to hear when a manual clock moves, so that waiters
/// whose deadline has passed can be woken without any real sleeping.
pub trait ClockListener: Send + Sync {
    fn on_advance(&self);
}

pub trait Clock: Send + Sync {
    /// Nanoseconds on this clock's time line. Never goes backwards.
    fn now(&self) -> u64;

    /// `true` when time passes by itself, so waiting for a deadline means
    /// sleeping; `false` for a manual clock, whose waiters are woken by `advance`.
    fn is_real_time(&self) -> bool;

    /// Registers a listener told about every manual advance. Real-time clocks ignore it.
    fn subscribe(&self, _listener: Weak<dyn ClockListener>) {}
}

/// The default clock: monotonic (it never jumps with the wall clock), anchored
/// to Unix time when first read so its values read like `time.time()`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

struct Anchor {
    instant: Instant,
    unix_ns: u64,
}

fn anchor() -> &'static Anchor {
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    ANCHOR.get_or_init(|| Anchor {
        instant: Instant::now(),
        unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    })
}

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        let a = anchor();
        a.unix_ns + a.instant.elapsed().as_nanos() as u64
    }

    fn is_real_time(&self) -> bool {
        true
    }
}

impl SystemClock {
    /// How long to sleep until `deadline` on this clock.
    pub fn until(&self, deadline: u64) -> Duration {
        Duration::from_nanos(deadline.saturating_sub(self.now()))
    }
}

/// A clock that moves only when told to. Advancing it wakes every waiter
/// of every limiter that uses it, so tests never sleep.
pub struct ManualClock {
    now: AtomicU64,
    listeners: Mutex<Vec<Weak<dyn ClockListener>>>,
}

impl ManualClock {
    pub fn new(start_ns: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: AtomicU64::new(start_ns),
            listeners: Mutex::new(Vec::new()),
        })
    }

    /// Moves the clock forward by `ns` and wakes the listeners.
    pub fn advance(&self, ns: u64) {
        self.now.fetch_add(ns, Ordering::SeqCst);
        self.notify();
    }

    /// Sets the clock to `ns` if that is not in the past; returns whether it moved.
    pub fn set(&self, ns: u64) -> bool {
        let moved = self.now.fetch_max(ns, Ordering::SeqCst) <= ns;
        self.notify();
        moved
    }

    fn notify(&self) {
        let listeners: Vec<Arc<dyn ClockListener>> = {
            let mut list = self.listeners.lock();
            list.retain(|l| l.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        // Called without the list lock so listeners may subscribe or drop freely.
        for listener in listeners {
            listener.on_advance();
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn is_real_time(&self) -> bool {
        false
    }

    fn subscribe(&self, listener: Weak<dyn ClockListener>) {
        self.listeners.lock().push(listener);
    }
}

/// Seconds (as given at the Python edge) to nanoseconds; `None` for NaN,
/// infinite, negative or oversized values.
pub fn seconds_to_ns(seconds: f64) -> Option<u64> {
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    let ns = (seconds * 1e9).round();
    if ns >= u64::MAX as f64 {
        return None;
    }
    Some(ns as u64)
}

pub fn ns_to_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counter(AtomicUsize);
    impl ClockListener for Counter {
        fn on_advance(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn system_clock_is_monotonic_and_reads_like_unix_time() {
        let a = SystemClock.now();
        let b = SystemClock.now();
        assert!(b >= a);
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(a.abs_diff(unix) < 5_000_000_000);
    }

    #[test]
    fn manual_clock_moves_only_when_told_and_tells_listeners() {
        let clock = ManualClock::new(5);
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let weak: Weak<dyn ClockListener> = Arc::downgrade(&counter) as Weak<dyn ClockListener>;
        clock.subscribe(weak);
        assert_eq!(clock.now(), 5);
        clock.advance(10);
        assert_eq!(clock.now(), 15);
        assert!(!clock.set(3));
        assert_eq!(clock.now(), 15);
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        drop(counter);
        clock.advance(1);
        assert!(clock.listeners.lock().is_empty());
    }

    #[test]
    fn seconds_convert_to_whole_nanoseconds() {
        assert_eq!(seconds_to_ns(1.5), Some(1_500_000_000));
        assert_eq!(seconds_to_ns(-1.0), None);
        assert_eq!(seconds_to_ns(f64::NAN), None);
    }
}
