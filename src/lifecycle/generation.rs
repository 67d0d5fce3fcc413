//! One generation of [`Shared`]: everything a request reads, built from one configuration and
//! reusing from the previous generation what did not change (the counters always, the table
//! always, the HTTP client and the traffic policies when their settings are the same: the
//! `upstream_ca` file is read again each time, and a changed file makes a new client).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{BackendConfig, Config, ConfigError};
use crate::health::BreakerConfig;
use crate::metrics::Histogram;
use crate::ops::Operations;
use crate::pools::{Pool, Pools};
use crate::registry::RegistryPool;
use crate::route_policy::RoutePolicies;
use crate::route_stats::RouteCounters;
use crate::routing::RouteTable;
use crate::server::{Certificates, Tuning};
use crate::state::{ReloadHook, Shared};
use crate::stats::Stats;
use crate::traffic::RateLimiter;
use crate::upstream::{
    BackendPolicy, BackendTable, ForwardTimeouts, Forwarder, HealthConfig, IdleLimits, RetryBudget, UpstreamTls,
};

/// Settings a reload cannot change: they need a new listener, a new worker pool or files and
/// threads opened at start. A reload keeps their running values and says so.
pub const RESTART_ONLY: &[&str] = &[
    "host",
    "port",
    "threads",
    "pollers",
    "client_body_temp_path",
    "admin_listen",
    "access_log",
    "access_log_format",
    "access_log_file",
    "log_file",
    "state_file",
    "registry",
    "tls_port",
];

/// The health checker's settings; HTTPS backends are probed with `tls`, the HTTP client's.
pub(crate) fn health_config(config: &Config, tls: &Arc<UpstreamTls>) -> Result<HealthConfig, ConfigError> {
    Ok(HealthConfig {
        path: config.health.path.clone(),
        interval: config.health.interval.unwrap_or_default(),
        fast_interval: config.health.fast_interval,
        timeout: config.health.timeout,
        rise: config.health.rise,
        fall: config.health.fall,
        expected: config.expected_health_status()?,
        probers: config.backends.len().clamp(4, 16),
        tls: Arc::clone(tls),
    })
}

/// How every backend behaves when things go wrong.
pub(crate) fn backend_policy(config: &Config) -> BackendPolicy {
    BackendPolicy {
        breaker: BreakerConfig {
            consecutive_failures: config.breaker.consecutive_failures,
            failure_ratio: config.breaker.failure_ratio,
            cooldown: config.breaker.cooldown,
            max_cooldown: Duration::from_secs(60).max(config.breaker.cooldown),
            half_open_trials: config.breaker.half_open_trials,
            ..BreakerConfig::default()
        },
        slow_start: config.pool.slow_start.unwrap_or_default(),
        panic_mode: config.pool.panic_mode,
        max_connections: config.backend_connection_cap(),
        peak_ewma_window: config.pool.peak_ewma_window,
    }
}

/// The backends as (id, config), in order.
pub(crate) fn backend_list(config: &Config) -> Vec<(String, BackendConfig)> {
    config.backend_ids().into_iter().zip(config.backends.iter().cloned()).collect()
}

/// What the registry keeps of each pool: its table, and its configured backends to seed it with.
pub(crate) fn registry_pools(
    pool_configs: &[(String, Config)],
    tables: &[(String, Arc<BackendTable>)],
) -> Vec<RegistryPool> {
    pool_configs
        .iter()
        .zip(tables)
        .map(|((name, config), (_, table))| RegistryPool {
            name: name.clone(),
            table: Arc::clone(table),
            seed: backend_list(config),
        })
        .collect()
}

/// The front end's reloadable settings.
pub(crate) fn tuning(config: &Config) -> Tuning {
    Tuning {
        limits: config.limits(),
        queue_capacity: config.listener.queue_capacity,
        body_buffering: config.body_buffering(),
    }
}

/// The HTTPS listener's certificates, read from their files now (`None` without `tls_port`):
/// at start, by `--check-config`, and on every reload, so a renewed file is picked up.
pub(crate) fn tls_certificates(config: &Config) -> Result<Option<Certificates>, String> {
    let files = config.tls_files();
    if files.is_empty() {
        return Ok(None);
    }
    Certificates::load(&files).map(Some)
}

/// The HTTP client's settings: its timeouts, and how many idle connections each backend keeps
/// for how long.
fn client_settings(config: &Config) -> (ForwardTimeouts, IdleLimits) {
    let timeouts = ForwardTimeouts { connect: config.pool.connect_timeout, request: config.pool.request_timeout };
    let idle =
        IdleLimits { max: config.upstream_keepalive_in_force(), timeout: config.pool.upstream_keepalive_timeout };
    (timeouts, idle)
}

/// Builds the `Shared` of `config` over `tables` (one per pool of [`Config::pool_configs`], by
/// name), reusing from `previous` the counters (a route's by its name), the start time, and each pool's HTTP client
/// and retry budget and the rate limiter when their settings did not change (`ops` and
/// `reload` live as long as the balancer). Fails (changing nothing) when a setting cannot be
/// built.
pub(crate) fn build_shared(
    config: Config,
    tables: &[(String, Arc<BackendTable>)],
    previous: Option<&Shared>,
    ops: Arc<Operations>,
    reload: Arc<ReloadHook>,
) -> Result<Shared, String> {
    let tls = Arc::new(UpstreamTls::load(config.tls.upstream_ca.as_deref()).map_err(|e| e.to_string())?);
    let mut pools = Vec::new();
    for (name, pool_config) in config.pool_configs() {
        let table = tables
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, table)| Arc::clone(table))
            .ok_or_else(|| format!("pool '{name}' has no backend table"))?;
        let before = previous.and_then(|p| p.pools.get(&name));
        pools.push(build_pool(name, pool_config, table, before, &tls));
    }
    let limits = config.rate_limits();
    let rate_limiter = match previous {
        Some(p) if p.config.rate_limits() == limits => Arc::clone(&p.rate_limiter),
        _ => Arc::new(RateLimiter::new(&limits).map_err(|e| e.to_string())?),
    };
    let routes = RouteTable::build(&config.routes).map_err(|e| format!("routes: {e}"))?;
    let route_stats = RouteCounters::build(&routes, previous.map(|p| &p.route_stats));
    let pools = Pools::new(pools);
    let route_policies = RoutePolicies::build(&routes, &pools, previous.map(|p| &p.route_policies))?;
    Ok(Shared {
        pools,
        routes,
        route_stats,
        route_policies,
        stats: previous.map_or_else(|| Arc::new(Stats::default()), |p| Arc::clone(&p.stats)),
        started: previous.map_or_else(Instant::now, |p| p.started),
        rate_limiter,
        config,
        ops,
        reload,
    })
}

/// One pool over `table`, reusing from its namesake `before` the counters, and the HTTP client
/// and retry budget when their settings are the same.
fn build_pool(
    name: String,
    config: Config,
    table: Arc<BackendTable>,
    before: Option<&Pool>,
    tls: &Arc<UpstreamTls>,
) -> Pool {
    let (timeouts, idle_limits) = client_settings(&config);
    let forwarder = match before {
        Some(p) if p.forwarder.settings() == (timeouts, idle_limits) && **p.forwarder.tls() == **tls => {
            Arc::clone(&p.forwarder)
        }
        _ => Arc::new(Forwarder::new(timeouts, idle_limits, Arc::clone(tls))),
    };
    let budget = (config.pool.retry_budget_ratio, config.pool.retry_budget_min);
    let retry_budget = match before {
        Some(p) if (p.config.pool.retry_budget_ratio, p.config.pool.retry_budget_min) == budget => {
            Arc::clone(&p.retry_budget)
        }
        _ => Arc::new(RetryBudget::new(budget.0, budget.1, Duration::from_secs(10))),
    };
    Pool {
        name,
        sticky: config.sticky_sessions(),
        stats: before.map_or_else(|| Arc::new(Stats::default()), |p| Arc::clone(&p.stats)),
        latency: before.map_or_else(|| Arc::new(Histogram::new()), |p| Arc::clone(&p.latency)),
        config,
        table,
        forwarder,
        retry_budget,
    }
}

/// The keys whose values differ between two configurations (`backends` and `pools` aside: the
/// tables and the pools report their own changes).
pub(crate) fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    new.iter()
        .filter(|(key, value)| !["backends", "pools"].contains(&key.as_str()) && old.get(*key) != Some(value))
        .map(|(k, _)| k.clone())
        .collect()
}
