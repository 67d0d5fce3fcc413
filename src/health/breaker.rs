//! A circuit breaker per backend (passive health): closed → open after consecutive failures or a
//! failure ratio over a window; open for a cool-down that doubles on repeated trips (capped);
//! half-open lets a fixed number of trial requests through; their success closes it.
//!
//! The hot path (`allows` on a closed breaker, `record_success` with no failures pending) reads
//! and writes atomics only; the mutex is taken on failures and state changes.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker settings. Defaults in [`BreakerConfig::default`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker. Default 5 (Envoy's consecutive_5xx).
    pub consecutive_failures: u32,
    /// Failure ratio over `window` that opens it, once `min_requests` were seen. Default 0.5.
    pub failure_ratio: f64,
    /// Requests in the window before the ratio counts. Default 20.
    pub min_requests: u32,
    /// Length of the ratio window. Default 10 s.
    pub window: Duration,
    /// Open time after the first trip; doubles on each trip that follows a failed trial. Default 5 s.
    pub cooldown: Duration,
    /// Longest open time. Default 60 s.
    pub max_cooldown: Duration,
    /// Trial requests let through while half-open; all must succeed to close. Default 3.
    pub half_open_trials: u32,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
            half_open_trials: 3,
        }
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the cool-down ends.
    Open,
    /// A few trial requests are let through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug)]
struct Inner {
    opened_at: Instant,
    open_for: Duration,
    trips: u32,
    trials_started: u32,
    trials_succeeded: u32,
}

/// One backend's breaker.
///
/// ```
/// use lb_sync::health::{BreakerConfig, BreakerState, CircuitBreaker};
/// let breaker = CircuitBreaker::new(BreakerConfig { consecutive_failures: 2, ..BreakerConfig::default() });
/// breaker.record_failure();
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// breaker.record_failure();
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(!breaker.allows());
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    /// Who it guards, named in its log lines (`backend b1: circuit opened ...`).
    name: String,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    failures: AtomicU64,
    successes: AtomicU64,
    inner: Mutex<Inner>,
    // The ratio window, in atomics so that successes never lock: which window (elapsed time /
    // window length) the two counters belong to, and the counters.
    created: Instant,
    window_index: AtomicU64,
    window_requests: AtomicU32,
    window_failures: AtomicU32,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker::named(config, "")
    }

    /// A closed breaker whose log lines name what it guards (`backend b1`).
    pub fn named(config: BreakerConfig, name: impl Into<String>) -> CircuitBreaker {
        let now = Instant::now();
        CircuitBreaker {
            config,
            name: name.into(),
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU32::new(0),
            failures: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                opened_at: now,
                open_for: Duration::ZERO,
                trips: 0,
                trials_started: 0,
                trials_succeeded: 0,
            }),
            created: now,
            window_index: AtomicU64::new(0),
            window_requests: AtomicU32::new(0),
            window_failures: AtomicU32::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state (an open breaker whose cool-down is over reads as half-open).
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => {
                let inner = self.lock();
                if inner.opened_at.elapsed() >= inner.open_for {
                    BreakerState::HalfOpen
                } else {
                    BreakerState::Open
                }
            }
        }
    }

    /// Whether a pick may choose this backend now, without taking a trial slot.
    pub fn allows(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            _ => {
                let inner = self.lock();
                let cooled = inner.opened_at.elapsed() >= inner.open_for;
                cooled && inner.trials_started < self.config.half_open_trials
            }
        }
    }

    /// Takes a slot for a request about to be sent; false when it must not go (open, or all
    /// trial slots of a half-open breaker taken). Closed breakers always admit.
    pub fn admit(&self) -> bool {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return true;
        }
        let mut inner = self.lock();
        if inner.opened_at.elapsed() < inner.open_for {
            return false;
        }
        if inner.trials_started >= self.config.half_open_trials {
            return false;
        }
        if self.state.load(Ordering::Acquire) == OPEN {
            self.state.store(HALF_OPEN, Ordering::Release);
            log::info!(
                "{}circuit half-open: letting {} trial request(s) through",
                self.prefix(),
                self.config.half_open_trials
            );
        }
        inner.trials_started += 1;
        true
    }

    /// Counts a success; closes a half-open breaker once every trial succeeded. Returns true
    /// when this closed the breaker (a recovery: slow start may begin).
    pub fn record_success(&self) -> bool {
        self.successes.fetch_add(1, Ordering::Relaxed);
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        match self.state.load(Ordering::Acquire) {
            CLOSED => {
                self.count_in_window(false);
                return false;
            }
            // A request sent before the trip finishing now is no trial.
            OPEN => return false,
            _ => {}
        }
        let mut inner = self.lock();
        if self.state.load(Ordering::Acquire) != HALF_OPEN {
            return false;
        }
        inner.trials_succeeded += 1;
        if inner.trials_succeeded >= self.config.half_open_trials {
            self.state.store(CLOSED, Ordering::Release);
            inner.trips = 0;
            inner.trials_started = 0;
            inner.trials_succeeded = 0;
            self.window_requests.store(0, Ordering::Relaxed);
            self.window_failures.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Gives back a trial slot whose request ended neither in success nor in failure of the
    /// backend (the client went away, its body was refused), so the breaker cannot stay
    /// half-open forever with every slot taken.
    pub fn record_neutral(&self) {
        if self.state.load(Ordering::Acquire) == HALF_OPEN {
            let mut inner = self.lock();
            inner.trials_started = inner.trials_started.saturating_sub(1);
        }
    }

    /// Counts a failure; may open the breaker (or re-open a half-open one, for longer). Returns
    /// true when this call opened it.
    pub fn record_failure(&self) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let consecutive = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let ratio_trip = self.count_in_window(true);
        let state = self.state.load(Ordering::Acquire);
        let trip = match state {
            CLOSED => consecutive >= self.config.consecutive_failures || ratio_trip,
            HALF_OPEN => true,
            _ => false,
        };
        if trip {
            let mut inner = self.lock();
            // Re-check under the lock: another thread may have tripped it already.
            if self.state.load(Ordering::Acquire) == OPEN {
                return false;
            }
            inner.trips += 1;
            let factor = 1u32 << (inner.trips - 1).min(16);
            inner.open_for = self.config.cooldown.saturating_mul(factor).min(self.config.max_cooldown);
            inner.opened_at = Instant::now();
            inner.trials_started = 0;
            inner.trials_succeeded = 0;
            self.state.store(OPEN, Ordering::Release);
            log::warn!(
                "{}circuit opened for {:?} after {consecutive} consecutive failure(s)",
                self.prefix(),
                inner.open_for
            );
            return true;
        }
        false
    }

    /// Adds an outcome to the ratio window; true when the ratio now calls for a trip.
    fn count_in_window(&self, failed: bool) -> bool {
        let window = self.config.window.as_millis().max(1) as u64;
        let index = self.created.elapsed().as_millis() as u64 / window;
        let seen = self.window_index.load(Ordering::Relaxed);
        // The first thread to notice a new window resets it; a few outcomes racing with the
        // reset land in either window, which a ratio does not mind.
        if seen != index
            && self.window_index.compare_exchange(seen, index, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.window_requests.store(0, Ordering::Relaxed);
            self.window_failures.store(0, Ordering::Relaxed);
        }
        let requests = self.window_requests.fetch_add(1, Ordering::Relaxed) + 1;
        let failures = if failed {
            self.window_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.window_failures.load(Ordering::Relaxed)
        };
        failed
            && requests >= self.config.min_requests
            && f64::from(failures) >= self.config.failure_ratio * f64::from(requests)
    }

    /// `"backend b1: "` for log lines, or nothing for an unnamed breaker.
    fn prefix(&self) -> String {
        if self.name.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.name)
        }
    }

    /// Counts an outcome without letting it move the breaker: for a request sent while the
    /// breaker was ignored (the last backends, panic mode), so that every try's outcome is in
    /// [`counts`](Self::counts).
    pub fn count_only(&self, failed: bool) {
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        } else {
            self.successes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Failures and successes recorded since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.failures.load(Ordering::Relaxed), self.successes.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            cooldown: Duration::from_millis(50),
            half_open_trials: 2,
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = CircuitBreaker::new(quick());
        b.record_failure();
        b.record_failure();
        b.record_success();
        b.record_failure();
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.record_failure());
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.admit());
    }

    #[test]
    fn half_open_admits_exactly_the_trial_count_and_successes_close_it() {
        let b = CircuitBreaker::new(quick());
        for _ in 0..3 {
            b.record_failure();
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit() && b.admit());
        assert!(!b.admit(), "a third trial while two are out");
        assert!(!b.record_success());
        assert!(b.record_success(), "the last trial closes it");
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_trial_reopens_for_twice_as_long() {
        let b = CircuitBreaker::new(quick());
        for _ in 0..3 {
            b.record_failure();
        }
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit());
        assert!(b.record_failure());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.state(), BreakerState::Open, "100 ms cool-down the second time");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn failure_ratio_over_the_window_trips() {
        let b = CircuitBreaker::new(BreakerConfig { consecutive_failures: 100, min_requests: 10, ..quick() });
        for i in 0..20 {
            if i % 2 == 0 {
                b.record_failure();
            } else {
                b.record_success();
            }
        }
        assert_eq!(b.state(), BreakerState::Open);
    }
}
