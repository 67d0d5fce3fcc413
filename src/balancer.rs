//! The balancer as a library user sees it: build it from a [`Config`], run it, reload it, stop
//! it.

mod serve;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Config, DEFAULT_POOL};
use crate::lifecycle::{
    backend_list, backend_policy, build_shared, health_config, registry_pools, tls_certificates, tuning, Control,
    ReloadReport,
};
use crate::logging::{LogHandle, LogTarget, LogWriter};
use crate::ops::history::{PoolSource, Sampler};
use crate::ops::{refusal_line, AccessLog, Operations, StateFile};
use crate::registry::Registry;
use crate::router::{AdminRouter, Router};
use crate::server::{bind_for, ClientKey, RefusalHook, Server, ServerConfig, TlsAcceptor, TlsListener};
use crate::state::{Current, ReloadHook, Shared};
use crate::upstream::{BackendTable, DnsRefresher, DnsStatus, HealthChecker, PoolTables, Resolver};

/// A running load balancer.
///
/// ```no_run
/// use lb_sync::balancer::LoadBalancer;
/// use lb_sync::config::{BackendConfig, Config};
///
/// let mut config = Config::default();
/// config.listener.port = 0; // any free port
/// config.backends = vec![BackendConfig::new("127.0.0.1", 8001, 1), BackendConfig::new("127.0.0.1", 8002, 2)];
/// config.pool.algorithm = "weighted_round_robin".parse().unwrap();
/// let balancer = LoadBalancer::start(config.clone()).unwrap();
/// println!("balancing on {}", balancer.local_addr());
/// // Weights and algorithm change without a connection dropped:
/// config.pool.algorithm = "least_connections".parse().unwrap();
/// balancer.reload(config).unwrap();
/// balancer.stop(std::time::Duration::from_secs(5));
/// ```
pub struct LoadBalancer {
    server: Server,
    admin: Option<Server>,
    current: Arc<Current>,
    control: Arc<Control>,
    /// The access log's writer, when this balancer opened it (see [`LoadBalancer::start_with_log`]).
    access_writer: Option<LogWriter>,
    /// Fills `/lb/history` once a second from the counters the requests keep.
    history: Sampler,
    /// What a stop is doing now, for the binary's stop deadline to name what held it.
    stop_phase: StopPhase,
}

/// What a [`LoadBalancer::stop`] is doing now (shared, so that another thread can tell).
pub type StopPhase = Arc<std::sync::Mutex<&'static str>>;

/// A data port open beyond loopback serves the management API to loopback peers alone; a proxy on
/// this machine that does not say it forwarded (no `X-Forwarded-For`, no `Via`) would open it to
/// its clients, so the operator is told to set a token or a listener of its own.
fn warn_if_the_api_is_unguarded(config: &Config) {
    if config.operations.admin_token.is_none()
        && config.operations.admin_listen.is_none()
        && !config.listener.host.is_loopback()
    {
        log::warn!(
            "the management API ({}/...) is served on {} with no admin_token: only loopback peers without \
             forwarding headers may use it; behind a proxy on this machine set admin_token (--admin-token) or \
             admin_listen (--admin-listen)",
            config.operations.admin_prefix,
            SocketAddr::new(config.listener.host, config.listener.port)
        );
    }
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
        let state_file = config.operations.state_file.as_ref().map(StateFile::new);
        let saved = match &state_file {
            Some(file) => file.load().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
            None => None,
        };
        let pool_configs = config.pool_configs();
        if let (Some(saved), Some(file)) = (&saved, &state_file) {
            for name in saved.pools.keys().filter(|name| !config.pools.contains_key(*name)) {
                log::warn!(
                    "state file {}: pool '{name}' is not in the configuration: skipped (it leaves the file at the next change)",
                    file.path().display()
                );
            }
        }
        // Each pool's table: from the state file when it has the pool, else the configuration.
        let mut tables = Vec::new();
        for (name, pool) in &pool_configs {
            let restored = saved.as_ref().and_then(|saved| saved.pool(name));
            let backends = restored.as_ref().map_or_else(|| backend_list(pool), |r| r.backend_configs());
            let table = BackendTable::new(pool.pool.algorithm, &backends, backend_policy(pool)).map_err(|e| {
                if name == DEFAULT_POOL {
                    invalid(&e)
                } else {
                    invalid(&format!("pool '{name}': {e}"))
                }
            })?;
            if let (Some(restored), Some(file)) = (&restored, &state_file) {
                restored.apply_states(&table);
                let pool = if name == DEFAULT_POOL { String::new() } else { format!("pool {name}: ") };
                let path = file.path().display();
                log::info!("{pool}{} backend(s) restored from state file {path}", restored.backends.len());
            }
            tables.push((name.clone(), Arc::new(table)));
        }
        // With a registry the tables become what etcd says (each pool seeded with its
        // configured backends when it has no keys) before the listener opens.
        let registry = match &config.operations.registry {
            Some(url) => Some(Registry::start(url, registry_pools(&pool_configs, &tables))?),
            None => None,
        };
        // A start that fails from here on stops following the registry.
        let mut stop_registry = StopOnDrop(registry.clone());
        let dns = Arc::new(DnsStatus::default());
        let mut access_writer = None;
        let access_log = match (config.operations.access_log, access_log) {
            (false, _) => None,
            (true, Some(handle)) => Some(handle),
            (true, None) => {
                let target = config.operations.access_log_file.clone().map_or(LogTarget::Stderr, LogTarget::File);
                let writer = LogWriter::start(target)?;
                let handle = writer.handle();
                access_writer = Some(writer);
                Some(handle)
            }
        }
        .map(|handle| AccessLog { handle, format: config.operations.access_log_format });
        let ops = Arc::new(Operations { registry, dns: Arc::clone(&dns), ..Operations::new(access_log, state_file) });
        let tuning = tuning(&config);
        let tls = match (config.tls.port, tls_certificates(&config).map_err(|e| invalid(&e))?) {
            (Some(port), Some(certificates)) => {
                log::info!("TLS certificates: {}", certificates.describe());
                Some(TlsListener {
                    bind: SocketAddr::new(config.listener.host, port),
                    acceptor: TlsAcceptor::new(certificates),
                })
            }
            _ => None,
        };
        let mut server_config = ServerConfig {
            bind: SocketAddr::new(config.listener.host, config.listener.port),
            threads: config.listener.threads,
            pollers: config.pollers(),
            queue_capacity: tuning.queue_capacity,
            limits: tuning.limits,
            body_buffering: tuning.body_buffering,
            tls,
            ..ServerConfig::default()
        };
        let reload = Arc::new(ReloadHook::default());
        let shared =
            build_shared(config, &tables, None, Arc::clone(&ops), Arc::clone(&reload)).map_err(|e| invalid(&e))?;
        let mut health_configs = Vec::new();
        for pool in shared.pools.iter() {
            let mut config = health_config(&pool.config, pool.forwarder.tls()).map_err(|e| invalid(&e))?;
            // The table may come from the state file or the registry, not the file.
            config.probers = pool.table.snapshot().backends.len().clamp(4, 16);
            health_configs.push((pool.name.clone(), Arc::clone(&pool.table), config));
        }
        let current: Arc<Current> = Arc::new(ArcSwap::from_pointee(shared));
        let refresher = DnsRefresher::start(
            pool_tables(Arc::clone(&current)),
            current.load().config.operations.dns_refresh_interval.unwrap_or_default(),
            Arc::clone(&dns),
        )?;
        let history = history_sampler(Arc::clone(&current))?;
        server_config.queue_depth = Arc::clone(&ops.queue_depth);
        server_config.idle_closed = Arc::clone(&ops.idle_closed);
        server_config.poller_gauges = ops.pollers.clone();
        server_config.on_refusal = Some(refusal_hook(Arc::clone(&current)));
        server_config.client_key = Some(client_key(Arc::clone(&current)));
        let server = Server::start(server_config, Router::new(Arc::clone(&current)))?;
        let admin = match current.load().config.operations.admin_listen {
            Some(bind) => {
                let config =
                    ServerConfig { bind, threads: 4, pollers: 1, queue_capacity: 64, ..ServerConfig::default() };
                let listener = bind_for(Some("the management API (admin_listen)"), bind, config.backlog)?;
                Some(Server::start_on(listener, config, AdminRouter::new(Arc::clone(&current)))?)
            }
            None => None,
        };
        let mut health = Vec::new();
        for (name, table, config) in health_configs.into_iter().filter(|(_, _, c)| !c.interval.is_zero()) {
            health.push((name, HealthChecker::start(table, config)?));
        }
        let control = Control::new(Arc::clone(&current), server.tuner(), health, refresher, &reload);
        stop_registry.0 = None;
        // Once started: a start that fails says one thing, its reason.
        warn_if_the_api_is_unguarded(&current.load().config);
        log::info!("{}", server.body_spool());
        Ok(LoadBalancer { server, admin, current, control, access_writer, history, stop_phase: StopPhase::default() })
    }

    /// The address it listens on (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The HTTPS listener's address, when `tls_port` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.server.tls_addr()
    }

    /// The admin listener's address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Server::local_addr)
    }

    /// The shared state in force: the backend table, statistics, configuration.
    pub fn shared(&self) -> Arc<Shared> {
        self.current.load_full()
    }

    /// Reloads, stops the health checks, breaks backend I/O.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Looks backend host names up with `resolver` from the next DNS refresh on (the system
    /// resolver by default): for service discovery of an embedder's own, and for tests.
    pub fn set_resolver(&self, resolver: Arc<Resolver>) {
        self.control.set_resolver(resolver);
    }

    /// Applies a new configuration without dropping a connection or a request in flight (see
    /// [`crate::lifecycle`] for what takes effect when). On error nothing changed.
    pub fn reload(&self, config: Config) -> Result<ReloadReport, String> {
        self.control.reload(config)
    }

    /// Stops accepting, closes idle connections, lets in-flight requests finish for up to
    /// `grace`, then breaks what is left (client sockets and backend connections alike, so no
    /// worker waits out a request timeout) and joins every thread. Bounded: it returns within
    /// `grace` plus a few seconds, whatever the backends do.
    pub fn stop(self, grace: Duration) {
        let phase = |now: &'static str| *self.stop_phase.lock().unwrap_or_else(|e| e.into_inner()) = now;
        phase("finishing the requests in flight");
        let control = Arc::clone(&self.control);
        let (done, finished) = crossbeam_channel::bounded::<()>(0);
        let watchdog = std::thread::Builder::new().name("stop-deadline".into()).spawn(move || {
            if finished.recv_timeout(grace) == Err(crossbeam_channel::RecvTimeoutError::Timeout) {
                control.break_backend_io();
            }
        });
        let admin = self.admin.map(|admin| std::thread::spawn(move || admin.stop(grace)));
        self.server.stop(grace);
        if let Some(admin) = admin {
            let _ = admin.join();
        }
        drop(done);
        if let Ok(watchdog) = watchdog {
            let _ = watchdog.join();
        }
        phase("stopping the health checks");
        self.control.stop_health();
        phase("stopping the DNS refresh");
        self.control.stop_dns();
        phase("stopping the history sampler");
        self.history.stop();
        if let Some(registry) = &self.current.load().ops.registry {
            phase("leaving the registry");
            registry.stop();
        }
        if let Some(writer) = self.access_writer {
            phase("writing the rest of the access log");
            writer.stop();
        }
        phase("stopped");
    }

    /// What [`stop`](Self::stop) is doing now, readable from another thread while it runs.
    pub fn stop_phase(&self) -> StopPhase {
        Arc::clone(&self.stop_phase)
    }

    /// Opens the log files again by their paths (after logrotate renamed them): the access
    /// log's, and `also`'s (the process log's, for the binary), each once however many of them
    /// share a writer. Lines queued before go to the old files, later ones to the new. Returns
    /// what was reopened (`access log /var/log/lb/access.log`), or each failure; a log that
    /// could not be reopened goes on to its old file. Logs on stderr have nothing to reopen.
    pub fn reopen_logs(&self, also: Option<&LogHandle>) -> Result<Vec<String>, Vec<String>> {
        let shared = self.current.load();
        let access = shared.ops.access_log.as_ref().map(|log| ("access log", &log.handle));
        let mut logs: Vec<(String, &LogHandle)> = Vec::new();
        for (what, handle) in access.into_iter().chain(also.map(|handle| ("log", handle))) {
            match logs.iter_mut().find(|(_, seen)| seen.same_writer(handle)) {
                Some((named, _)) => *named = format!("{named} and {what}"),
                None => logs.push((what.to_string(), handle)),
            }
        }
        let (mut reopened, mut failed) = (Vec::new(), Vec::new());
        for (what, handle) in logs {
            if let LogTarget::File(path) = handle.target() {
                match handle.reopen_within(Duration::from_secs(1)) {
                    Ok(()) => reopened.push(format!("{what} {}", path.display())),
                    Err(e) => {
                        failed.push(format!("{what} {}: {e} (its lines still go to the old file)", path.display()))
                    }
                }
            }
        }
        if failed.is_empty() {
            Ok(reopened)
        } else {
            Err(failed)
        }
    }
}

/// Every pool's table in force, read again on each DNS round (a reload adds and removes pools).
fn pool_tables(current: Arc<Current>) -> Box<PoolTables> {
    Box::new(move || current.load().pools.iter().map(|pool| (pool.name.clone(), Arc::clone(&pool.table))).collect())
}

/// Stops a registry's watcher when dropped (a start that failed half way).
struct StopOnDrop(Option<Arc<Registry>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(registry) = &self.0 {
            registry.stop();
        }
    }
}

/// The history's sampler: each second, what the counters of the configuration in force say.
fn history_sampler(current: Arc<Current>) -> io::Result<Sampler> {
    Sampler::start(move |second| {
        let shared = current.load();
        let tables: Vec<_> = shared.pools.iter().map(|pool| pool.table.snapshot()).collect();
        let pools: Vec<PoolSource<'_>> = shared
            .pools
            .iter()
            .zip(&tables)
            .map(|(pool, table)| PoolSource {
                name: &pool.name,
                stats: &pool.stats,
                latency: &pool.latency,
                backends: &table.backends,
            })
            .collect();
        shared.ops.history.sample(second, &shared.stats, &shared.ops.latency, &pools);
    })
}

/// Which client a request counts against in the front end's per-client limits: the address
/// after the `trusted_proxies` in force.
fn client_key(current: Arc<Current>) -> ClientKey {
    ClientKey::new(move |peer, head| {
        crate::client_ip::request_client(peer.ip(), &head.headers, &current.load().config.listener.trusted_proxies)
    })
}

/// What the data port's front end does with a request it refuses on its own (400, 408, 413,
/// 431, 503...): count it with the other answers, write its access-log line, and warn (at most
/// once per status per interval).
fn refusal_hook(current: Arc<Current>) -> RefusalHook {
    RefusalHook::new(move |refusal| {
        let shared = current.load();
        shared.stats.record_local(refusal.status);
        if let Some(log) = &shared.ops.access_log {
            log.handle.send(refusal_line(
                log.format,
                crate::client_ip::canonical(refusal.peer.ip()),
                refusal.status,
                refusal.request_line,
            ));
        }
        shared.ops.warnings.warn(
            &format!("refused:{}", refusal.status),
            format_args!("refused a request from {} with {}: {}", refusal.peer, refusal.status, refusal.reason),
        );
    })
}
