//! The balancer as a library user sees it: build it from a [`Config`], run it, stop it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::health::BreakerConfig;
use crate::router::Router;
use crate::server::{Server, ServerConfig};
use crate::state::Shared;
use crate::stats::Stats;
use crate::traffic::RateLimiter;
use crate::upstream::{
    BackendPolicy, BackendTable, ForwardTimeouts, Forwarder, HealthChecker, HealthConfig, RetryBudget,
};

/// A running load balancer.
///
/// ```no_run
/// use lb_sync::balancer::LoadBalancer;
/// use lb_sync::config::{BackendConfig, Config};
///
/// let config = Config {
///     port: 0, // any free port
///     backends: vec![BackendConfig::new("127.0.0.1", 8001, 1), BackendConfig::new("127.0.0.1", 8002, 2)],
///     algorithm: "weighted_round_robin".parse().unwrap(),
///     ..Config::default()
/// };
/// let balancer = LoadBalancer::start(config).unwrap();
/// println!("balancing on {}", balancer.local_addr());
/// balancer.stop(std::time::Duration::from_secs(5));
/// ```
pub struct LoadBalancer {
    server: Server,
    health: Option<HealthChecker>,
    shared: Arc<Shared>,
}

impl LoadBalancer {
    /// Validates `config`, resolves the backends, binds and starts serving.
    pub fn start(config: Config) -> io::Result<LoadBalancer> {
        let invalid = |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        config.validate().map_err(|e| invalid(&e))?;
        let backends: Vec<_> = config.backend_ids().into_iter().zip(config.backends.iter().cloned()).collect();
        let policy = BackendPolicy {
            breaker: BreakerConfig {
                consecutive_failures: config.breaker_consecutive_failures,
                failure_ratio: config.breaker_failure_ratio,
                cooldown: Duration::from_secs_f64(config.breaker_cooldown),
                max_cooldown: Duration::from_secs(60).max(Duration::from_secs_f64(config.breaker_cooldown)),
                half_open_trials: config.breaker_half_open_trials,
                ..BreakerConfig::default()
            },
            slow_start: Duration::from_secs_f64(config.slow_start),
            panic_mode: config.panic_mode,
            max_connections: config.backend_connection_cap(),
        };
        let table = BackendTable::new(config.algorithm, &backends, policy).map_err(|e| invalid(&e))?;
        let timeouts = ForwardTimeouts {
            connect: Duration::from_secs_f64(config.connect_timeout),
            request: Duration::from_secs_f64(config.request_timeout),
        };
        // Every worker may hold an idle connection to every backend (added ones included).
        let pool_size = (config.threads * config.backends.len().max(4)).max(64);
        let server_config = ServerConfig {
            bind: SocketAddr::new(config.host, config.port),
            threads: config.threads,
            queue_capacity: config.queue_capacity,
            limits: config.limits(),
            body_buffering: config.body_buffering(),
            ..ServerConfig::default()
        };
        let health_config = HealthConfig {
            path: config.health_check_path.clone(),
            interval: Duration::from_secs_f64(config.health_check_interval),
            timeout: Duration::from_secs_f64(config.health_check_timeout),
            rise: config.health_check_rise,
            fall: config.health_check_fall,
            expected: config.expected_health_status().map_err(|e| invalid(&e))?,
            probers: config.backends.len().clamp(4, 16),
        };
        let rate_limiter = RateLimiter::new(&config.rate_limits()).map_err(|e| invalid(&e))?;
        let shared = Arc::new(Shared {
            forwarder: Forwarder::new(timeouts, pool_size),
            table: Arc::new(table),
            stats: Stats::default(),
            retry_budget: RetryBudget::new(config.retry_budget_ratio, config.retry_budget_min, Duration::from_secs(10)),
            started: Instant::now(),
            rate_limiter,
            sticky: config.sticky_sessions(),
            config,
        });
        let server = Server::start(server_config, Router::new(Arc::clone(&shared)))?;
        let health = if health_config.interval.is_zero() {
            None
        } else {
            Some(HealthChecker::start(Arc::clone(&shared.table), health_config)?)
        };
        Ok(LoadBalancer { server, health, shared })
    }

    /// The address it listens on (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The shared state: the backend table, statistics, configuration.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, joins every thread.
    pub fn stop(self, grace: Duration) {
        if let Some(health) = self.health {
            health.stop();
        }
        self.server.stop(grace);
    }
}
