//! Request counters for `/lb/stats`: atomics written by the workers, read by the API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Totals over every proxied request (management API requests are not counted).
#[derive(Debug, Default)]
pub struct Stats {
    total: AtomicU64,
    successful: AtomicU64,
    failed: AtomicU64,
    latency_micros: AtomicU64,
    tries: AtomicU64,
    failed_tries: [AtomicU64; TryFailure::ALL.len()],
    retries: AtomicU64,
    retries_denied_by_budget: AtomicU64,
}

/// Why a try at a backend failed, as counted in `/lb/stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryFailure {
    /// Connection refused or failed: the request never left.
    Refused,
    /// Connecting timed out.
    ConnectTimeout,
    /// Reset or closed before an answer.
    NoResponse,
    /// No answer within the request timeout.
    Timeout,
    /// The answer was not HTTP.
    BadResponse,
}

impl TryFailure {
    /// Every reason, in the order of the counters.
    pub const ALL: [TryFailure; 5] = [
        TryFailure::Refused,
        TryFailure::ConnectTimeout,
        TryFailure::NoResponse,
        TryFailure::Timeout,
        TryFailure::BadResponse,
    ];

    /// The key used in `/lb/stats`.
    pub fn name(self) -> &'static str {
        match self {
            TryFailure::Refused => "refused",
            TryFailure::ConnectTimeout => "connect_timeout",
            TryFailure::NoResponse => "no_response",
            TryFailure::Timeout => "timeout",
            TryFailure::BadResponse => "bad_response",
        }
    }
}

/// Counts of tries and retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrySnapshot {
    /// Requests sent to a backend (first tries and retries).
    pub tries: u64,
    /// Tries after the first for the same request.
    pub retries: u64,
    /// Retries not made because the budget was spent.
    pub denied_by_budget: u64,
    /// Failed tries by reason.
    pub failures: Vec<(&'static str, u64)>,
}

/// A consistent-enough reading of [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsSnapshot {
    /// Requests answered.
    pub total: u64,
    /// Answered with a status below 500.
    pub successful: u64,
    /// Answered 5xx (by a backend, or by us: 502, 503, 504).
    pub failed: u64,
    /// `successful / total`, 4 decimals (1.0 before any request).
    pub success_rate: f64,
    /// Mean time to the response head, in milliseconds, 2 decimals.
    pub average_response_time_ms: f64,
}

impl Stats {
    /// Counts one answered request.
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if status < 500 {
            self.successful.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_micros.fetch_add(elapsed.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Counts a try; `retry` when it is not the request's first.
    pub fn record_try(&self, retry: bool) {
        self.tries.fetch_add(1, Ordering::Relaxed);
        if retry {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a failed try.
    pub fn record_try_failure(&self, reason: TryFailure) {
        let index = TryFailure::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.failed_tries[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a retry the budget refused.
    pub fn record_budget_denial(&self) {
        self.retries_denied_by_budget.fetch_add(1, Ordering::Relaxed);
    }

    /// The try counters.
    pub fn tries(&self) -> TrySnapshot {
        TrySnapshot {
            tries: self.tries.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            denied_by_budget: self.retries_denied_by_budget.load(Ordering::Relaxed),
            failures: TryFailure::ALL
                .iter()
                .zip(&self.failed_tries)
                .map(|(reason, count)| (reason.name(), count.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// The current totals.
    ///
    /// ```
    /// let stats = lb_sync::stats::Stats::default();
    /// stats.record(200, std::time::Duration::from_millis(10));
    /// stats.record(502, std::time::Duration::from_millis(30));
    /// let s = stats.snapshot();
    /// assert_eq!((s.total, s.successful, s.failed, s.success_rate), (2, 1, 1, 0.5));
    /// assert_eq!(s.average_response_time_ms, 20.0);
    /// ```
    pub fn snapshot(&self) -> StatsSnapshot {
        let total = self.total.load(Ordering::Relaxed);
        let successful = self.successful.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let micros = self.latency_micros.load(Ordering::Relaxed);
        let round = |x: f64, places: i32| (x * 10f64.powi(places)).round() / 10f64.powi(places);
        StatsSnapshot {
            total,
            successful,
            failed,
            success_rate: if total == 0 { 1.0 } else { round(successful as f64 / total as f64, 4) },
            average_response_time_ms: if total == 0 { 0.0 } else { round(micros as f64 / total as f64 / 1000.0, 2) },
        }
    }
}
