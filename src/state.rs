//! What every part of a running balancer shares: the configuration, the pools of backends
//! (each with its table, HTTP client, retry budget and sticky cookie), the counters and the
//! rate limits. The router loads the current `Arc<Shared>` for each request (a [`Current`]); a
//! reload swaps in a new one, so a request sees one configuration from start to end while the
//! next one already sees the new. The parts that live across reloads (the tables, the counters,
//! the clients and policies whose settings did not change) are `Arc`s shared by both.
//!
//! Who writes what: the table's membership is swapped in whole by the management API and
//! reloads; everything else here is atomics, written by workers and prober threads without a
//! lock.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::ops::Operations;
use crate::pools::Pools;
use crate::route_policy::RoutePolicies;
use crate::route_stats::RouteCounters;
use crate::routing::RouteTable;
use crate::stats::Stats;
use crate::traffic::RateLimiter;

/// State shared by every worker, the management API and the health checker.
pub struct Shared {
    /// The configuration in force (the one the balancer started with, or the last reloaded).
    pub config: Config,
    /// The pools of backends, `default` first: each with its table (shared with its health
    /// checker), HTTP client, retry budget, sticky cookie and counters.
    pub pools: Pools,
    /// The route table built from `config.routes` (empty without routes: every request goes to
    /// `default`).
    pub routes: RouteTable,
    /// What each route's requests got (kept across reloads by route name), and those no route
    /// took.
    pub route_stats: RouteCounters,
    /// Each route's own rate limiter and HTTP clients (timeouts), when it sets them.
    pub route_policies: RoutePolicies,
    /// Request counters of the whole balancer.
    pub stats: Arc<Stats>,
    /// When the balancer started.
    pub started: Instant,
    /// The global and per-client request rate limits (both off by default; it counts either way).
    pub rate_limiter: Arc<RateLimiter>,
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
