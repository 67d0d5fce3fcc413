//! Warnings that can fire thousands of times a second (a backend refusing every connection, a
//! full queue) limited to one line per cause per interval, so the log stays readable and
//! writing it does not become the load.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Causes remembered at once; past this, causes not seen for an interval are forgotten first.
pub const MAX_CAUSES: usize = 1024;

#[derive(Debug)]
struct Cause {
    last_written: Instant,
    suppressed: u64,
}

/// At most one line per cause per interval; the next line written for a cause says how many
/// were suppressed since the last: `backend b1 refused (41 similar suppressed)`.
///
/// Lines suppressed at the end of a burst are reported only when the cause fires again.
///
/// ```
/// use std::time::{Duration, Instant};
/// use lb_sync::logging::RateLimitedWarn;
///
/// let limiter = RateLimitedWarn::new(Duration::from_secs(10));
/// let start = Instant::now();
/// let line = |seconds, limiter: &RateLimitedWarn| {
///     limiter.line_at("refused:b1", format_args!("backend b1 refused"), start + Duration::from_secs(seconds))
/// };
/// assert_eq!(line(0, &limiter).as_deref(), Some("backend b1 refused"));
/// assert_eq!(line(1, &limiter), None);
/// assert_eq!(line(2, &limiter), None);
/// assert_eq!(line(10, &limiter).as_deref(), Some("backend b1 refused (2 similar suppressed)"));
/// ```
#[derive(Debug)]
pub struct RateLimitedWarn {
    interval: Duration,
    causes: Mutex<HashMap<String, Cause>>,
    untracked: AtomicU64,
}

impl RateLimitedWarn {
    /// One line per cause per `interval`.
    ///
    /// ```
    /// let limiter = lb_sync::logging::RateLimitedWarn::new(std::time::Duration::from_secs(30));
    /// assert_eq!(limiter.interval(), std::time::Duration::from_secs(30));
    /// ```
    pub fn new(interval: Duration) -> RateLimitedWarn {
        RateLimitedWarn { interval, causes: Mutex::new(HashMap::new()), untracked: AtomicU64::new(0) }
    }

    /// The interval given to [`new`](Self::new).
    ///
    /// ```
    /// let limiter = lb_sync::logging::RateLimitedWarn::new(std::time::Duration::ZERO);
    /// assert_eq!(limiter.interval(), std::time::Duration::ZERO);
    /// ```
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether a line for `cause` at `now` is written: `Some(n)` with the lines suppressed since
    /// the last one written, `None` to suppress this one. The first line of a cause is written;
    /// the next is written once `interval` has passed since the last written one.
    ///
    /// When [`MAX_CAUSES`] causes were all written within the last interval, a new cause is
    /// suppressed (counted in [`untracked`](Self::untracked)) rather than let a flood of distinct
    /// causes through.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let limiter = lb_sync::logging::RateLimitedWarn::new(Duration::from_secs(5));
    /// let now = Instant::now();
    /// assert_eq!(limiter.check_at("a", now), Some(0));
    /// assert_eq!(limiter.check_at("b", now), Some(0), "causes are limited separately");
    /// assert_eq!(limiter.check_at("a", now + Duration::from_secs(4)), None);
    /// assert_eq!(limiter.check_at("a", now + Duration::from_secs(5)), Some(1));
    /// ```
    pub fn check_at(&self, cause: &str, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        let mut causes = self.causes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(state) = causes.get_mut(cause) {
            if now.saturating_duration_since(state.last_written) < self.interval {
                state.suppressed += 1;
                return None;
            }
            state.last_written = now;
            return Some(std::mem::take(&mut state.suppressed));
        }
        if causes.len() >= MAX_CAUSES {
            // Forgetting a quiet cause loses nothing but its count of suppressed lines.
            causes.retain(|_, state| now.saturating_duration_since(state.last_written) < self.interval);
            if causes.len() >= MAX_CAUSES {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        causes.insert(cause.to_string(), Cause { last_written: now, suppressed: 0 });
        Some(0)
    }

    /// The line to write for `cause` at `now`, or `None` to suppress it: `message`, followed by
    /// ` (N similar suppressed)` when N > 0.
    ///
    /// ```
    /// use std::time::Instant;
    /// let limiter = lb_sync::logging::RateLimitedWarn::new(std::time::Duration::from_secs(1));
    /// let line = limiter.line_at("queue", format_args!("queue full ({} waiting)", 1024), Instant::now());
    /// assert_eq!(line.as_deref(), Some("queue full (1024 waiting)"));
    /// ```
    pub fn line_at(&self, cause: &str, message: fmt::Arguments<'_>, now: Instant) -> Option<String> {
        self.check_at(cause, now).map(|suppressed| {
            if suppressed == 0 {
                message.to_string()
            } else {
                format!("{message} ({suppressed} similar suppressed)")
            }
        })
    }

    /// Logs `message` with `log::warn!` unless the cause is over its rate.
    ///
    /// ```
    /// let limiter = lb_sync::logging::RateLimitedWarn::new(std::time::Duration::from_secs(10));
    /// for attempt in 0..3 {
    ///     limiter.warn("refused:b1", format_args!("backend b1 refused (attempt {attempt})")); // one line
    /// }
    /// ```
    pub fn warn(&self, cause: &str, message: fmt::Arguments<'_>) {
        if let Some(line) = self.line_at(cause, message, Instant::now()) {
            log::warn!("{line}");
        }
    }

    /// Lines suppressed because [`MAX_CAUSES`] busy causes were already tracked.
    ///
    /// ```
    /// let limiter = lb_sync::logging::RateLimitedWarn::new(std::time::Duration::from_secs(1));
    /// assert_eq!(limiter.untracked(), 0);
    /// ```
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_per_interval_with_the_count_of_the_rest() {
        let limiter = RateLimitedWarn::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let mut written = Vec::new();
        for (cause, millis) in [
            ("refused:b1", 0),
            ("refused:b1", 1),
            ("refused:b2", 2),
            ("refused:b1", 9_999),
            ("refused:b1", 10_000),
            ("refused:b2", 12_002),
            ("refused:b1", 15_000),
            ("refused:b1", 19_999),
            ("refused:b1", 60_000),
            ("refused:b1", 60_001),
        ] {
            if let Some(line) = limiter.line_at(cause, format_args!("{cause}"), at(millis)) {
                written.push(format!("{millis}: {line}"));
            }
        }
        assert_eq!(
            written,
            [
                "0: refused:b1",
                "2: refused:b2",
                "10000: refused:b1 (2 similar suppressed)",
                "12002: refused:b2",
                "60000: refused:b1 (2 similar suppressed)",
            ]
        );
    }

    #[test]
    fn an_instant_before_the_last_line_is_within_the_interval() {
        let limiter = RateLimitedWarn::new(Duration::from_secs(1));
        let start = Instant::now() + Duration::from_secs(5);
        assert_eq!(limiter.check_at("x", start), Some(0));
        assert_eq!(limiter.check_at("x", start - Duration::from_secs(3)), None, "clock order from several threads");
        assert_eq!(limiter.check_at("x", start + Duration::from_secs(1)), Some(1));
    }

    #[test]
    fn a_zero_interval_writes_everything() {
        let limiter = RateLimitedWarn::new(Duration::ZERO);
        let now = Instant::now();
        assert!((0..5).all(|_| limiter.check_at("x", now) == Some(0)));
    }

    #[test]
    fn too_many_busy_causes_are_suppressed_quiet_ones_forgotten() {
        let limiter = RateLimitedWarn::new(Duration::from_secs(10));
        let start = Instant::now();
        for i in 0..MAX_CAUSES {
            assert_eq!(limiter.check_at(&format!("cause {i}"), start), Some(0));
        }
        assert_eq!(limiter.check_at("one more", start + Duration::from_secs(1)), None);
        assert_eq!(limiter.untracked(), 1);
        // Ten seconds later every cause is quiet: they are forgotten to make room.
        assert_eq!(limiter.check_at("one more", start + Duration::from_secs(10)), Some(0));
        assert_eq!(limiter.check_at("cause 0", start + Duration::from_secs(10)), Some(0), "forgotten, so new");
    }
}
