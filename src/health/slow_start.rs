//! Slow start: a backend that comes back (health checks or its breaker) takes a growing share of
//! the picks over a window instead of its full share at once (HAProxy's `slowstart`).
//!
//! It works for every algorithm the same way, outside them: while ramping, the backend accepts
//! only a fraction of the picks offered to it, rising linearly from 10 % to 100 % over the
//! window, and the picks it declines go to the next candidate. The fraction is applied exactly
//! (Bresenham-style on an offer counter), not by chance, so tests can count it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Share accepted at the start of a ramp, in thousandths.
const START_PERMILLE: u64 = 100;

/// One backend's ramp.
///
/// ```
/// use std::time::Duration;
/// use lb_sync::health::SlowStart;
/// let ramp = SlowStart::new(Duration::from_secs(60));
/// assert!(ramp.admit(), "not ramping: everything is admitted");
/// ramp.begin();
/// let admitted = (0..1000).filter(|_| ramp.admit()).count();
/// assert!((95..=110).contains(&admitted), "about 10% at the start: {admitted}");
/// ```
#[derive(Debug)]
pub struct SlowStart {
    /// The window in milliseconds (0: off); a reload may change it.
    window_ms: AtomicU64,
    epoch: Instant,
    /// Milliseconds after `epoch` at which the ramp began, plus one; 0 when not ramping.
    began: AtomicU64,
    offers: AtomicU64,
}

impl SlowStart {
    /// A ramp of length `window`; a zero window turns slow start off.
    pub fn new(window: Duration) -> SlowStart {
        SlowStart {
            window_ms: AtomicU64::new(window.as_millis() as u64),
            epoch: Instant::now(),
            began: AtomicU64::new(0),
            offers: AtomicU64::new(0),
        }
    }

    /// A new window (a reload); a ramp under way continues over it; zero ends it.
    pub fn set_window(&self, window: Duration) {
        self.window_ms.store(window.as_millis() as u64, Ordering::Relaxed);
        if window.is_zero() {
            self.began.store(0, Ordering::Relaxed);
        }
    }

    /// Starts ramping now (a recovery).
    pub fn begin(&self) {
        if self.window_ms.load(Ordering::Relaxed) != 0 {
            self.offers.store(0, Ordering::Relaxed);
            self.began.store(self.epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        }
    }

    /// The share currently accepted, in thousandths (1000 when not ramping).
    pub fn permille(&self) -> u64 {
        let began = self.began.load(Ordering::Relaxed);
        if began == 0 {
            return 1000;
        }
        let elapsed = (self.epoch.elapsed().as_millis() as u64 + 1).saturating_sub(began);
        let window = self.window_ms.load(Ordering::Relaxed).max(1);
        if elapsed >= window {
            self.began.store(0, Ordering::Relaxed);
            return 1000;
        }
        START_PERMILLE + (1000 - START_PERMILLE) * elapsed / window
    }

    /// Whether this offer of the backend is accepted.
    pub fn admit(&self) -> bool {
        let share = self.permille();
        if share >= 1000 {
            return true;
        }
        // Accept offer n when floor((n + 1) * share / 1000) moves past floor(n * share / 1000).
        let n = self.offers.fetch_add(1, Ordering::Relaxed);
        (n + 1) * share / 1000 > n * share / 1000
    }
}
