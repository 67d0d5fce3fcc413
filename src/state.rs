//! What every part of a running balancer shares: the configuration, the backend table, the
//! HTTP client, the counters, the retry budget and the traffic policies (rate limits, sticky
//! cookie). One `Arc<Shared>` is held by the router (and through it every worker), the
//! management API and the balancer handle.
//!
//! Who writes what: the table's membership changes under its write lock (management API);
//! everything else here is atomics, written by workers and prober threads without a lock.

use std::time::Instant;

use crate::config::Config;
use crate::ops::Operations;
use crate::stats::Stats;
use crate::traffic::{RateLimiter, StickyCookie};
use crate::upstream::{BackendTable, Forwarder, RetryBudget};
use std::sync::Arc;

/// State shared by every worker, the management API and the health checker.
pub struct Shared {
    /// The configuration the balancer started with.
    pub config: Config,
    /// The backends and the algorithm over them (shared with the health checker).
    pub table: Arc<BackendTable>,
    /// The shared HTTP client.
    pub forwarder: Forwarder,
    /// Request counters.
    pub stats: Stats,
    /// Limits retries to a share of recent requests.
    pub retry_budget: RetryBudget,
    /// When the balancer started.
    pub started: Instant,
    /// The global and per-client request rate limits (both off by default; it counts either way).
    pub rate_limiter: RateLimiter,
    /// The sticky-session cookie, when sticky sessions are on.
    pub sticky: Option<StickyCookie>,
    /// Latency histogram, queue depth, access log, rate-limited warnings, state file.
    pub ops: Operations,
}
