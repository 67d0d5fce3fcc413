//! A circuit breaker per backend (passive health): closed → open after consecutive failures or a
//! failure ratio over a window; open for a cool-down that doubles on repeated trips (capped);
//! half-open lets a fixed number of trial requests through; their success closes it.
//!
//! The hot path (`allows` on a closed breaker, `record_success` with no failures pending) reads
//! and writes atomics only; the mutex is taken on failures and state changes.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

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

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
/// The state is the low two bits of the state word; the generation the rest.
const STATE_BITS: u32 = 2;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

fn word(generation: u64, state: u64) -> u64 {
    (generation << STATE_BITS) | state
}

fn split(word: u64) -> (u64, u64) {
    (word >> STATE_BITS, word & STATE_MASK)
}

/// What [`CircuitBreaker::admit`] gave a request: the breaker generation it was admitted in and
/// whether it is one of a half-open breaker's trials. Its outcome moves the breaker only while
/// that generation lasts, so a request admitted while the breaker was closed that finishes after
/// it tripped and turned half-open is not taken for a trial, and a trial of an earlier half-open
/// spell cannot close (or re-open) the breaker of a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    trial: bool,
}

impl Ticket {
    /// Whether the request is a trial of a half-open breaker.
    pub fn is_trial(&self) -> bool {
        self.trial
    }
}

/// What opened a breaker, as its log line and `/lb/backends` say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TripCause {
    /// This many failures in a row while closed.
    ConsecutiveFailures(u32),
    /// Failures over requests in the current ratio window reached the failure ratio.
    FailureRatio {
        /// Failed requests in the window.
        failures: u32,
        /// Requests in the window.
        requests: u32,
    },
    /// A trial request of the half-open breaker failed.
    FailedTrial,
}

impl TripCause {
    /// The cause in words, with the setting it crossed.
    ///
    /// ```
    /// use lb_sync::health::{BreakerConfig, TripCause};
    /// let config = BreakerConfig::default();
    /// assert_eq!(TripCause::ConsecutiveFailures(5).describe(&config), "5 consecutive failures");
    /// assert_eq!(
    ///     TripCause::FailureRatio { failures: 11, requests: 20 }.describe(&config),
    ///     "11 of 20 requests failed in a 10s window (failure ratio 0.5)"
    /// );
    /// ```
    pub fn describe(&self, config: &BreakerConfig) -> String {
        match self {
            TripCause::ConsecutiveFailures(1) => "1 failure".into(),
            TripCause::ConsecutiveFailures(n) => format!("{n} consecutive failures"),
            TripCause::FailureRatio { failures, requests } => format!(
                "{failures} of {requests} requests failed in a {:?} window (failure ratio {})",
                config.window, config.failure_ratio
            ),
            TripCause::FailedTrial => "a half-open trial request failed".into(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    opened_at: Instant,
    open_for: Duration,
    trips: u32,
    trials_started: u32,
    trials_succeeded: u32,
    last_cause: Option<TripCause>,
}

/// One backend's breaker.
///
/// ```
/// use lb_sync::health::{BreakerConfig, BreakerState, CircuitBreaker};
/// let breaker = CircuitBreaker::new(BreakerConfig { consecutive_failures: 2, ..BreakerConfig::default() });
/// let ticket = breaker.admit().unwrap();
/// breaker.record_failure(ticket);
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// breaker.record_failure(breaker.admit().unwrap());
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(!breaker.allows() && breaker.admit().is_none());
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    config: ArcSwap<BreakerConfig>,
    /// Who it guards, named in its log lines (`backend b1: circuit opened ...`).
    name: String,
    /// Generation and state in one word: every trip and every close starts a new generation.
    state: AtomicU64,
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
            config: ArcSwap::from_pointee(config),
            name: name.into(),
            state: AtomicU64::new(word(0, CLOSED)),
            consecutive_failures: AtomicU32::new(0),
            failures: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                opened_at: now,
                open_for: Duration::ZERO,
                trips: 0,
                trials_started: 0,
                trials_succeeded: 0,
                last_cause: None,
            }),
            created: now,
            window_index: AtomicU64::new(0),
            window_requests: AtomicU32::new(0),
            window_failures: AtomicU32::new(0),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> BreakerConfig {
        **self.config.load()
    }

    /// New settings (a reload): they apply from the next outcome; an open breaker keeps the
    /// cool-down it was given.
    pub fn set_config(&self, config: BreakerConfig) {
        self.config.store(std::sync::Arc::new(config));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state (an open breaker whose cool-down is over reads as half-open).
    pub fn state(&self) -> BreakerState {
        match split(self.state.load(Ordering::Acquire)).1 {
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
        match split(self.state.load(Ordering::Acquire)).1 {
            CLOSED => true,
            _ => {
                let inner = self.lock();
                let cooled = inner.opened_at.elapsed() >= inner.open_for;
                cooled && inner.trials_started < self.config.load().half_open_trials
            }
        }
    }

    /// Admits a request about to be sent: a ticket to report its outcome with, or `None` when
    /// it must not go (open, or every trial slot of a half-open breaker taken). A closed
    /// breaker always admits; a half-open one hands out trial tickets.
    pub fn admit(&self) -> Option<Ticket> {
        let (generation, state) = split(self.state.load(Ordering::Acquire));
        if state == CLOSED {
            return Some(Ticket { generation, trial: false });
        }
        let mut inner = self.lock();
        let (generation, state) = split(self.state.load(Ordering::Acquire));
        if state == CLOSED {
            return Some(Ticket { generation, trial: false });
        }
        if inner.opened_at.elapsed() < inner.open_for {
            return None;
        }
        let trials = self.config.load().half_open_trials;
        if inner.trials_started >= trials {
            return None;
        }
        if state == OPEN {
            self.state.store(word(generation, HALF_OPEN), Ordering::Release);
            log::info!("{}circuit half-open: letting {trials} trial request(s) through", self.prefix());
        }
        inner.trials_started += 1;
        Some(Ticket { generation, trial: true })
    }

    /// Counts a success; closes a half-open breaker once every trial of this spell succeeded.
    /// Returns true when this closed the breaker (a recovery: slow start may begin).
    pub fn record_success(&self, ticket: Ticket) -> bool {
        self.record_success_at(ticket, Instant::now())
    }

    /// [`record_success`](Self::record_success) of an outcome known at `now` (a clock reading
    /// the caller has).
    pub fn record_success_at(&self, ticket: Ticket, now: Instant) -> bool {
        self.successes.fetch_add(1, Ordering::Relaxed);
        let (generation, state) = split(self.state.load(Ordering::Acquire));
        if ticket.generation != generation {
            // Admitted before the last trip or close: it says nothing of the breaker now.
            return false;
        }
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if state == CLOSED {
            self.count_in_window(false, now);
            return false;
        }
        if state != HALF_OPEN || !ticket.trial {
            return false;
        }
        let mut inner = self.lock();
        if self.state.load(Ordering::Acquire) != word(generation, HALF_OPEN) {
            return false;
        }
        inner.trials_succeeded += 1;
        if inner.trials_succeeded >= self.config.load().half_open_trials {
            self.state.store(word(generation + 1, CLOSED), Ordering::Release);
            inner.trips = 0;
            inner.trials_started = 0;
            inner.trials_succeeded = 0;
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.window_requests.store(0, Ordering::Relaxed);
            self.window_failures.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Gives back a trial slot whose request ended neither in success nor in failure of the
    /// backend (the client went away, its body was refused), so the breaker cannot stay
    /// half-open forever with every slot taken.
    pub fn record_neutral(&self, ticket: Ticket) {
        if ticket.trial && self.state.load(Ordering::Acquire) == word(ticket.generation, HALF_OPEN) {
            let mut inner = self.lock();
            if self.state.load(Ordering::Acquire) == word(ticket.generation, HALF_OPEN) {
                inner.trials_started = inner.trials_started.saturating_sub(1);
            }
        }
    }

    /// Counts a failure; may open the breaker (or re-open a half-open one, for longer). Returns
    /// true when this call opened it. Only a failure of this generation moves the breaker: of
    /// a request admitted while it is closed, or of one of its current trials.
    pub fn record_failure(&self, ticket: Ticket) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let current = self.state.load(Ordering::Acquire);
        let (generation, state) = split(current);
        if ticket.generation != generation {
            return false;
        }
        let config = self.config.load();
        let cause = match state {
            CLOSED => {
                let consecutive = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let ratio = self.count_in_window(true, Instant::now());
                if consecutive >= config.consecutive_failures {
                    Some(TripCause::ConsecutiveFailures(consecutive))
                } else {
                    ratio.map(|(failures, requests)| TripCause::FailureRatio { failures, requests })
                }
            }
            HALF_OPEN if ticket.trial => Some(TripCause::FailedTrial),
            _ => None,
        };
        let Some(cause) = cause else {
            return false;
        };
        let mut inner = self.lock();
        // Re-check under the lock: another thread may have tripped it already.
        if self.state.load(Ordering::Acquire) != current {
            return false;
        }
        inner.trips += 1;
        let factor = 1u32 << (inner.trips - 1).min(16);
        inner.open_for = config.cooldown.saturating_mul(factor).min(config.max_cooldown);
        inner.opened_at = Instant::now();
        inner.trials_started = 0;
        inner.trials_succeeded = 0;
        inner.last_cause = Some(cause);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.state.store(word(generation + 1, OPEN), Ordering::Release);
        log::warn!("{}circuit opened for {:?}: {}", self.prefix(), inner.open_for, cause.describe(&config));
        true
    }

    /// What opened the breaker the last time it opened (`None` if it never did).
    pub fn last_cause(&self) -> Option<TripCause> {
        self.lock().last_cause
    }

    /// An active health probe passed after failed ones (the backend came back): an open
    /// breaker's cool-down ends now, so the next pick sends its trials instead of waiting out a
    /// cool-down that grew while the backend was dead (up to `max_cooldown`). A half-open or
    /// closed breaker is left as it is: trials (real requests) still decide whether it closes.
    pub fn probe_passed(&self) {
        if split(self.state.load(Ordering::Acquire)).1 == OPEN {
            let mut inner = self.lock();
            if split(self.state.load(Ordering::Acquire)).1 == OPEN {
                let elapsed = inner.opened_at.elapsed();
                if elapsed < inner.open_for {
                    log::info!(
                        "{}circuit cool-down ended after {elapsed:.1?} of {:?}: a health probe passed",
                        self.prefix(),
                        inner.open_for
                    );
                }
                inner.open_for = inner.open_for.min(elapsed);
                // A trial that fails now re-opens it for the first cool-down, not a doubled one.
                inner.trips = 0;
            }
        }
    }

    /// Closes the breaker (a new generation: outcomes of requests admitted before are only
    /// counted): the health checks brought its backend back up, which is evidence enough.
    pub fn reset(&self) {
        let mut inner = self.lock();
        let (generation, state) = split(self.state.load(Ordering::Acquire));
        if state != CLOSED {
            inner.trips = 0;
            inner.trials_started = 0;
            inner.trials_succeeded = 0;
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.window_requests.store(0, Ordering::Relaxed);
            self.window_failures.store(0, Ordering::Relaxed);
            self.state.store(word(generation + 1, CLOSED), Ordering::Release);
        }
    }

    /// Adds an outcome to the ratio window; the window's failures and requests when the ratio
    /// now calls for a trip.
    fn count_in_window(&self, failed: bool, now: Instant) -> Option<(u32, u32)> {
        let config = self.config.load();
        let window = config.window.as_millis().max(1) as u64;
        let index = now.saturating_duration_since(self.created).as_millis() as u64 / window;
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
        let trip = failed
            && requests >= config.min_requests
            && f64::from(failures) >= config.failure_ratio * f64::from(requests);
        trip.then_some((failures, requests))
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

    fn fail(b: &CircuitBreaker) -> bool {
        b.record_failure(b.admit().expect("admitted"))
    }

    fn succeed(b: &CircuitBreaker) -> bool {
        b.record_success(b.admit().expect("admitted"))
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = CircuitBreaker::new(quick());
        fail(&b);
        fail(&b);
        succeed(&b);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(fail(&b));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_none());
    }

    #[test]
    fn half_open_admits_exactly_the_trial_count_and_successes_close_it() {
        let b = CircuitBreaker::new(quick());
        for _ in 0..3 {
            fail(&b);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let (t1, t2) = (b.admit().unwrap(), b.admit().unwrap());
        assert!(t1.is_trial() && t2.is_trial());
        assert!(b.admit().is_none(), "a third trial while two are out");
        assert!(!b.record_success(t1));
        assert!(b.record_success(t2), "the last trial closes it");
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_trial_reopens_for_twice_as_long() {
        let b = CircuitBreaker::new(quick());
        for _ in 0..3 {
            fail(&b);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert!(fail(&b));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.state(), BreakerState::Open, "100 ms cool-down the second time");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn failure_ratio_over_the_window_trips() {
        let b = CircuitBreaker::new(BreakerConfig { consecutive_failures: 100, min_requests: 10, ..quick() });
        for i in 0..20 {
            let Some(ticket) = b.admit() else { break };
            if i % 2 == 0 {
                b.record_failure(ticket);
            } else {
                b.record_success(ticket);
            }
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.last_cause(), Some(TripCause::FailureRatio { failures: 6, requests: 11 }));
    }

    #[test]
    fn each_trip_says_what_opened_it() {
        let b = CircuitBreaker::new(quick());
        assert_eq!(b.last_cause(), None);
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(b.last_cause(), Some(TripCause::ConsecutiveFailures(3)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(fail(&b), "a failed trial re-opens it");
        assert_eq!(b.last_cause(), Some(TripCause::FailedTrial));
        assert_eq!(TripCause::FailedTrial.describe(&quick()), "a half-open trial request failed");
        assert_eq!(TripCause::ConsecutiveFailures(3).describe(&quick()), "3 consecutive failures");
    }

    #[test]
    fn only_real_trials_count_while_half_open() {
        let b = CircuitBreaker::new(quick());
        // Two requests admitted while closed are still out when it trips.
        let (early_ok, early_bad) = (b.admit().unwrap(), b.admit().unwrap());
        assert!(!early_ok.is_trial());
        for _ in 0..3 {
            fail(&b);
        }
        std::thread::sleep(Duration::from_millis(60));
        let trial = b.admit().unwrap();
        assert!(trial.is_trial());
        // They finish now, while it is half-open: neither is a trial.
        assert!(!b.record_success(early_ok));
        assert!(!b.record_failure(early_bad), "a failure from before the trip does not re-open it");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.record_success(trial), "one of two trials");
        let last = b.admit().unwrap();
        assert!(b.admit().is_none(), "two trial slots, both taken");
        assert!(b.record_success(last));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.counts(), (4, 3), "every outcome is counted, trial or not");
    }

    #[test]
    fn a_trial_of_an_earlier_half_open_spell_is_stale() {
        let b = CircuitBreaker::new(quick());
        for _ in 0..3 {
            fail(&b);
        }
        std::thread::sleep(Duration::from_millis(60));
        let (slow, failing) = (b.admit().unwrap(), b.admit().unwrap());
        assert!(b.record_failure(failing), "a failed trial re-opens it");
        std::thread::sleep(Duration::from_millis(110));
        let fresh = b.admit().unwrap();
        assert!(!b.record_success(slow), "the first spell's trial counts for nothing now");
        b.record_neutral(slow);
        let other = b.admit().unwrap();
        assert!(b.admit().is_none(), "the stale neutral gave back no slot");
        assert!(!b.record_success(fresh));
        assert!(b.record_success(other));
    }

    #[test]
    fn a_passed_probe_ends_the_cool_down_and_a_reset_closes() {
        let b = CircuitBreaker::new(BreakerConfig { cooldown: Duration::from_secs(60), ..quick() });
        let stale = b.admit().unwrap();
        for _ in 0..3 {
            fail(&b);
        }
        assert!(b.admit().is_none(), "open for a minute");
        b.probe_passed();
        assert_eq!(b.state(), BreakerState::HalfOpen, "the next pick may send a trial");
        assert!(b.admit().unwrap().is_trial());
        b.reset();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.record_failure(stale), "from before the reset: counted only");
        assert!(!b.admit().unwrap().is_trial());
    }

    #[test]
    fn new_settings_apply_to_the_next_outcome() {
        let b = CircuitBreaker::new(quick());
        b.set_config(BreakerConfig { consecutive_failures: 1, ..quick() });
        assert!(fail(&b));
    }
}
