//! What every part of a running balancer shares: the configuration, the backend table, the
//! HTTP client, the counters, the retry budget and the traffic policies (rate limits, sticky
//! cookie). The router loads the current `Arc<Shared>` for each request (a [`Current`]); a
//! reload swaps in a new one, so a request sees one configuration from start to end while the
//! next one already sees the new. The parts that live across reloads (the table, the counters,
//! the client and policies whose settings did not change) are `Arc`s shared by both.
//!
//! Who writes what: the table's membership is swapped in whole by the management API and
//! reloads; everything else here is atomics, written by workers and prober threads without a
//! lock.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::ops::Operations;
use crate::stats::Stats;
use crate::traffic::{RateLimiter, StickyCookie};
use crate::upstream::{BackendTable, Forwarder, RetryBudget};

/// State shared by every worker, the management API and the health checker.
pub struct Shared {
    /// The configuration in force (the one the balancer started with, or the last reloaded).
    pub config: Config,
    /// The backends and the algorithm over them (shared with the health checker).
    pub table: Arc<BackendTable>,
    /// The shared HTTP client.
    pub forwarder: Arc<Forwarder>,
    /// Request counters.
    pub stats: Arc<Stats>,
    /// Limits retries to a share of recent requests.
    pub retry_budget: Arc<RetryBudget>,
    /// When the balancer started.
    pub started: Instant,
    /// The global and per-client request rate limits (both off by default; it counts either way).
    pub rate_limiter: Arc<RateLimiter>,
    /// The sticky-session cookie, when sticky sessions are on.
    pub sticky: Option<StickyCookie>,
    /// Latency histogram, queue depth, access log, rate-limited warnings, state file (they
    /// live across reloads).
    pub ops: Arc<Operations>,
    /// What `POST /lb/config/reload` calls.
    pub reload: Arc<ReloadHook>,
}

/// The `Shared` in force, swapped whole by a reload.
pub type Current = ArcSwap<Shared>;

/// A reload from the configuration's source (the config file and the command line), set by the
/// balancer once it runs: `Ok` says what changed, `Err` why nothing did.
#[derive(Default)]
pub struct ReloadHook {
    hook: OnceLock<Box<dyn Fn() -> Result<String, String> + Send + Sync>>,
}

impl ReloadHook {
    /// Sets what a reload runs (once; later calls are ignored).
    pub fn set(&self, hook: impl Fn() -> Result<String, String> + Send + Sync + 'static) {
        let _ = self.hook.set(Box::new(hook));
    }

    /// Runs a reload.
    pub fn reload(&self) -> Result<String, String> {
        match self.hook.get() {
            Some(hook) => hook(),
            None => Err("this balancer has no configuration source to reload from".to_string()),
        }
    }
}
