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
        self.latency_micros.fetch_add(
            elapsed.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
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
            success_rate: if total == 0 {
                1.0
            } else {
                round(successful as f64 / total as f64, 4)
            },
            average_response_time_ms: if total == 0 {
                0.0
            } else {
                round(micros as f64 / total as f64 / 1000.0, 2)
            },
        }
    }
}
