//! The pools in force: each named group of backends with everything a request sent to it
//! reads (its table, its HTTP client, its retry budget, its sticky cookie, its settings and its
//! counters). `default`, the top-level backends and settings, is always there and first; the
//! proxy forwards every request through one [`Pool`].
//!
//! A pool's parts live across reloads as the single table did before pools: a reload that
//! keeps a pool keeps its table (backends, health, breakers, counters) and its counters, and
//! its client and retry budget while their settings are the same ([`crate::lifecycle`]).

use std::sync::Arc;

use crate::config::{Config, DEFAULT_POOL};
use crate::metrics::Histogram;
use crate::stats::Stats;
use crate::traffic::StickyCookie;
use crate::upstream::{BackendTable, Forwarder, RetryBudget};

/// One pool of backends and what forwarding to it needs.
pub struct Pool {
    /// Its name (`default` for the top level).
    pub name: String,
    /// Its settings in force: the top level with the pool's overrides and its backends
    /// ([`Config::pool_configs`]); the balancer-wide settings are the top level's.
    pub config: Config,
    /// Its backends and the algorithm over them (shared with its health checker).
    pub table: Arc<BackendTable>,
    /// Its HTTP client (timeouts and idle connections are pool settings).
    pub forwarder: Arc<Forwarder>,
    /// Limits its retries to a share of its recent requests.
    pub retry_budget: Arc<RetryBudget>,
    /// Its sticky-session cookie, when sticky sessions are on for it.
    pub sticky: Option<StickyCookie>,
    /// The requests sent to it: answers by class, tries and retries.
    pub stats: Arc<Stats>,
    /// Time from taking each of its requests to the response head (as the balancer-wide
    /// latency), for `/lb/pools` and the history.
    pub latency: Arc<Histogram>,
}

/// Every pool in force, `default` first, then the named ones by name.
///
/// ```
/// # use lb_sync::pools::Pools;
/// fn backends_of(pools: &Pools, name: &str) -> Option<usize> {
///     pools.get(name).map(|pool| pool.table.snapshot().backends.len())
/// }
/// ```
pub struct Pools {
    /// Never empty: `default` is first.
    pools: Vec<Pool>,
}

impl Pools {
    /// The pools of `pools`, whose first must be `default` (the order [`Config::pool_configs`]
    /// gives).
    ///
    /// # Panics
    /// When the first pool is not `default`: every caller builds from `pool_configs`.
    pub fn new(pools: Vec<Pool>) -> Pools {
        assert!(pools.first().is_some_and(|p| p.name == DEFAULT_POOL), "the default pool comes first");
        Pools { pools }
    }

    /// The `default` pool: the top-level backends and settings.
    pub fn default_pool(&self) -> &Pool {
        &self.pools[0]
    }

    /// The pool named `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Every pool, `default` first.
    pub fn iter(&self) -> std::slice::Iter<'_, Pool> {
        self.pools.iter()
    }

    /// How many pools there are (`default` included).
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// Never true: `default` is always there (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }
}
