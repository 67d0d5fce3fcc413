//! The balancer as a library user sees it: build it from a [`Config`], run it, stop it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::BackendTable;
use crate::config::Config;
use crate::forward::{ForwardTimeouts, Forwarder};
use crate::proxy::Proxy;
use crate::server::{Server, ServerConfig};
use crate::stats::Stats;

/// State shared by every worker, the management API and (later) the health thread.
pub struct Shared {
    /// The configuration the balancer started with.
    pub config: Config,
    /// The backends and the algorithm over them.
    pub table: BackendTable,
    /// The shared ureq agent.
    pub forwarder: Forwarder,
    /// Request counters.
    pub stats: Stats,
    /// When the balancer started.
    pub started: Instant,
}

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
    shared: Arc<Shared>,
}

impl LoadBalancer {
    /// Validates `config`, resolves the backends, binds and starts serving.
    pub fn start(config: Config) -> io::Result<LoadBalancer> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let backends: Vec<_> = config
            .backend_ids()
            .into_iter()
            .zip(config.backends.iter().cloned())
            .collect();
        let table = BackendTable::new(config.algorithm, &backends)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let timeouts = ForwardTimeouts {
            connect: Duration::from_secs(config.connect_timeout),
            request: Duration::from_secs(config.request_timeout),
        };
        // Every worker may hold an idle connection to every backend (added ones included).
        let pool_size = (config.threads * config.backends.len().max(4)).max(64);
        let server_config = ServerConfig {
            bind: SocketAddr::new(config.host, config.port),
            threads: config.threads,
            queue_capacity: config.queue_capacity,
            limits: config.limits(),
            ..ServerConfig::default()
        };
        let shared = Arc::new(Shared {
            forwarder: Forwarder::new(timeouts, pool_size),
            table,
            stats: Stats::default(),
            started: Instant::now(),
            config,
        });
        let server = Server::start(server_config, Proxy::new(Arc::clone(&shared)))?;
        Ok(LoadBalancer { server, shared })
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
        self.server.stop(grace);
    }
}
