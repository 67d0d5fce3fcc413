//! Request counters for `/lb/stats` and `/lb/metrics`: atomics written by the workers (and by
//! the front end's refusal hook), read by the API.
//!
//! One source of truth: answers are counted once, by status class; `successful` (below 500),
//! `failed` (5xx) and `total` are sums of those counters, so `total = successful + failed` holds
//! in every reading, however many threads count at once.

use std::sync::atomic::{AtomicU64, Ordering};

/// Status classes counted, in order: 1xx to 5xx.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Totals over every answer on the data port: the proxy's (a backend's, or our own 502, 503,
/// 504) and the front end's refusals (400, 408, 413, 431, 503...). The management API's own
/// answers are not counted.
#[derive(Debug, Default)]
pub struct Stats {
    by_class: [AtomicU64; 5],
    /// Answers the balancer gave itself (no backend's answer relayed), by class.
    local_by_class: [AtomicU64; 5],
    tries: AtomicU64,
    failed_tries: [AtomicU64; TryFailure::ALL.len()],
    retries: AtomicU64,
    retries_denied_by_budget: AtomicU64,
    /// Tunnels (WebSocket and other upgraded connections) relayed for clients.
    pub tunnels: TunnelCounter,
}

/// Tunnels opened and closed: connections that switched protocols (`101`) and are relayed both
/// ways. Counted once opened (the backend answered `101`) and once closed, however they end.
///
/// ```
/// let tunnels = lb_sync::stats::TunnelCounter::default();
/// tunnels.opened();
/// tunnels.opened();
/// tunnels.closed();
/// assert_eq!((tunnels.active(), tunnels.total()), (1, 2));
/// ```
#[derive(Debug, Default)]
pub struct TunnelCounter {
    opened: AtomicU64,
    closed: AtomicU64,
}

impl TunnelCounter {
    /// Counts a tunnel opened.
    pub fn opened(&self) {
        self.opened.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a tunnel closed.
    pub fn closed(&self) {
        self.closed.fetch_add(1, Ordering::AcqRel);
    }

    /// Tunnels open now.
    pub fn active(&self) -> u64 {
        // Closed first: every close follows its open, so the difference never goes below 0.
        let closed = self.closed.load(Ordering::Acquire);
        self.opened.load(Ordering::Acquire).saturating_sub(closed)
    }

    /// Tunnels opened since the start.
    pub fn total(&self) -> u64 {
        self.opened.load(Ordering::Acquire)
    }
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
    /// The TLS handshake with an HTTPS backend failed (a refused certificate...).
    Tls,
}

impl TryFailure {
    /// Every reason, in the order of the counters.
    pub const ALL: [TryFailure; 6] = [
        TryFailure::Refused,
        TryFailure::ConnectTimeout,
        TryFailure::NoResponse,
        TryFailure::Timeout,
        TryFailure::BadResponse,
        TryFailure::Tls,
    ];

    /// The key used in `/lb/stats`.
    pub fn name(self) -> &'static str {
        match self {
            TryFailure::Refused => "refused",
            TryFailure::ConnectTimeout => "connect_timeout",
            TryFailure::NoResponse => "no_response",
            TryFailure::Timeout => "timeout",
            TryFailure::BadResponse => "bad_response",
            TryFailure::Tls => "tls",
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

/// A reading of [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsSnapshot {
    /// Answers by status class, 1xx to 5xx.
    pub by_class: [u64; 5],
    /// Of those, answers the balancer gave itself, by class.
    pub local_by_class: [u64; 5],
    /// Requests answered: the sum of `by_class`.
    pub total: u64,
    /// Answered with a status below 500.
    pub successful: u64,
    /// Answered 5xx (by a backend, or by us: 502, 503, 504).
    pub failed: u64,
    /// `successful / total`, 4 decimals (1.0 before any request).
    pub success_rate: f64,
}

/// The index of `status`'s class in [`CLASSES`] (out-of-range statuses count as 5xx).
///
/// ```
/// assert_eq!(lb_sync::stats::class_index(204), 1);
/// assert_eq!(lb_sync::stats::class_index(503), 4);
/// ```
pub fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

impl Stats {
    /// Counts one answer relayed from a backend.
    pub fn record(&self, status: u16) {
        self.by_class[class_index(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answer the balancer gave itself (a refusal, or 502/503/504).
    pub fn record_local(&self, status: u16) {
        let class = class_index(status);
        self.local_by_class[class].fetch_add(1, Ordering::Relaxed);
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
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

    /// The current totals, derived from one reading of the class counters.
    ///
    /// ```
    /// let stats = lb_sync::stats::Stats::default();
    /// stats.record(200);
    /// stats.record_local(502);
    /// let s = stats.snapshot();
    /// assert_eq!((s.total, s.successful, s.failed, s.success_rate), (2, 1, 1, 0.5));
    /// assert_eq!(s.local_by_class, [0, 0, 0, 0, 1]);
    /// ```
    pub fn snapshot(&self) -> StatsSnapshot {
        let local_by_class: [u64; 5] = std::array::from_fn(|i| self.local_by_class[i].load(Ordering::Relaxed));
        let by_class: [u64; 5] = std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed));
        let successful: u64 = by_class[..4].iter().sum();
        let failed = by_class[4];
        let total = successful + failed;
        let round = |x: f64| (x * 10_000.0).round() / 10_000.0;
        StatsSnapshot {
            by_class,
            local_by_class,
            total,
            successful,
            failed,
            success_rate: if total == 0 { 1.0 } else { round(successful as f64 / total as f64) },
        }
    }
}
