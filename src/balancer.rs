//! The balancer as a library user sees it: build it from a [`Config`], run it, stop it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::health::BreakerConfig;
use crate::logging::{LogHandle, LogTarget, LogWriter};
use crate::ops::{refusal_line, AccessLog, Operations, StateFile};
use crate::router::{AdminRouter, Router};
use crate::server::{RefusalHook, Server, ServerConfig};
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
    admin: Option<Server>,
    health: Option<HealthChecker>,
    shared: Arc<Shared>,
    /// The access log's writer, when this balancer opened it (see [`LoadBalancer::start_with_log`]).
    access_writer: Option<LogWriter>,
}

impl LoadBalancer {
    /// Validates `config`, resolves the backends (or reads them back from the state file),
    /// opens the access log, binds and starts serving.
    pub fn start(config: Config) -> io::Result<LoadBalancer> {
        LoadBalancer::start_with_log(config, None)
    }

    /// [`start`](Self::start), with access-log lines sent to `access_log` instead of a writer
    /// of its own (so the binary can share one writer between the access log and its process
    /// log when both go to the same place).
    pub fn start_with_log(config: Config, access_log: Option<LogHandle>) -> io::Result<LoadBalancer> {
        let invalid = |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        config.validate().map_err(|e| invalid(&e))?;
        let state_file = config.state_file.as_ref().map(StateFile::new);
        let saved = match &state_file {
            Some(file) => file.load().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
            None => None,
        };
        let backends: Vec<_> = match &saved {
            Some(saved) => saved.backend_configs(),
            None => config.backend_ids().into_iter().zip(config.backends.iter().cloned()).collect(),
        };
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
        if let (Some(saved), Some(file)) = (&saved, &state_file) {
            saved.apply_states(&table);
            log::info!("{} backend(s) restored from state file {}", saved.backends.len(), file.path().display());
        }
        let timeouts = ForwardTimeouts {
            connect: Duration::from_secs_f64(config.connect_timeout),
            request: Duration::from_secs_f64(config.request_timeout),
        };
        // Every worker may hold an idle connection to every backend (added ones included).
        let pool_size = (config.threads * backends.len().max(4)).max(64);
        let mut access_writer = None;
        let access_log = match (config.access_log, access_log) {
            (false, _) => None,
            (true, Some(handle)) => Some(handle),
            (true, None) => {
                let target = config.access_log_file.clone().map_or(LogTarget::Stderr, LogTarget::File);
                let writer = LogWriter::start(target)?;
                let handle = writer.handle();
                access_writer = Some(writer);
                Some(handle)
            }
        }
        .map(|handle| AccessLog { handle, format: config.access_log_format });
        let ops = Operations::new(access_log, state_file);
        let mut server_config = ServerConfig {
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
            probers: backends.len().clamp(4, 16),
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
            ops,
        });
        server_config.queue_depth = Arc::clone(&shared.ops.queue_depth);
        server_config.on_refusal = Some(refusal_hook(Arc::clone(&shared)));
        let server = Server::start(server_config, Router::new(Arc::clone(&shared)))?;
        let admin =
            match shared.config.admin_listen {
                Some(bind) => {
                    let config = ServerConfig { bind, threads: 4, queue_capacity: 64, ..ServerConfig::default() };
                    Some(Server::start(config, AdminRouter::new(Arc::clone(&shared))).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot listen on the admin address {bind}: {e}"))
                    })?)
                }
                None => None,
            };
        let health = if health_config.interval.is_zero() {
            None
        } else {
            Some(HealthChecker::start(Arc::clone(&shared.table), health_config)?)
        };
        Ok(LoadBalancer { server, admin, health, shared, access_writer })
    }

    /// The address it listens on (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The admin listener's address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Server::local_addr)
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
        if let Some(admin) = self.admin {
            admin.stop(grace);
        }
        self.server.stop(grace);
        if let Some(writer) = self.access_writer {
            writer.stop();
        }
    }
}

/// What the data port's front end does with a request it refuses on its own (400, 408, 413,
/// 431, 503...): count it with the other answers, write its access-log line, and warn (at most
/// once per status per interval).
fn refusal_hook(shared: Arc<Shared>) -> RefusalHook {
    RefusalHook::new(move |refusal| {
        shared.stats.record_local(refusal.status);
        if let Some(log) = &shared.ops.access_log {
            log.handle.send(refusal_line(log.format, crate::client_ip::canonical(refusal.peer.ip()), refusal.status));
        }
        shared.ops.warnings.warn(
            &format!("refused:{}", refusal.status),
            format_args!("refused a request from {} with {}: {}", refusal.peer, refusal.status, refusal.reason),
        );
    })
}
