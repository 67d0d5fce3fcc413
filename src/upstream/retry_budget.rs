//! The retry budget (Envoy's): retries may be at most a ratio of the requests of a recent
//! window, plus a small floor, so a failing fleet is not hit by a retry storm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts requests and retries per window and says whether one more retry fits.
///
/// ```
/// use std::time::Duration;
/// use lb_sync::upstream::RetryBudget;
/// let budget = RetryBudget::new(0.2, 2, Duration::from_secs(10));
/// for _ in 0..10 { budget.record_request(); }
/// assert!(budget.try_retry() && budget.try_retry(), "the floor of 2");
/// assert!(!budget.try_retry(), "20% of 10 is 2");
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor: u64,
    window: Duration,
    epoch: Instant,
    window_index: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    /// Retries allowed: `max(floor, ratio × requests)` per `window`.
    pub fn new(ratio: f64, floor: u64, window: Duration) -> RetryBudget {
        RetryBudget {
            ratio,
            floor,
            window,
            epoch: Instant::now(),
            window_index: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    fn roll(&self) {
        let index = self.epoch.elapsed().as_millis() as u64 / self.window.as_millis().max(1) as u64;
        let seen = self.window_index.load(Ordering::Relaxed);
        if seen != index
            && self.window_index.compare_exchange(seen, index, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a client request.
    pub fn record_request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_retry(&self) -> bool {
        self.roll();
        let allowed = ((self.requests.load(Ordering::Relaxed) as f64 * self.ratio) as u64).max(self.floor);
        let taken = self.retries.fetch_add(1, Ordering::Relaxed);
        if taken < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}
