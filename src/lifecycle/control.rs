//! Reloading a running balancer: a new configuration is checked whole, then applied piece by
//! piece where each piece lives, without a connection closed or a request dropped. Anything
//! that can fail (validation, name resolution, building the rate limiter) fails before the
//! first change, so a refused reload leaves the old configuration running untouched.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{Config, DEFAULT_POOL};
use crate::server::Tuner;
use crate::state::{Current, ReloadHook, Shared};
use crate::upstream::{
    BackendTable, DnsRefresher, Forwarder, HealthChecker, HealthConfig, Reconciled, Resolver, TableError,
};

use super::generation::{
    backend_list, backend_policy, build_shared, changed_keys, health_config, registry_pools, tls_certificates, tuning,
};

/// Where a reload reads its configuration: the config file and the command line, read again.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changes to the backend table.
    pub backends: Reconciled,
    /// Other settings now in force with new values.
    pub settings: Vec<String>,
    /// Settings that differ in the new configuration but only take effect at a restart.
    pub restart_only: Vec<String>,
    /// What changed in the named pools.
    pub pools: PoolChanges,
}

/// What a reload changed in the named pools (the default pool's are [`ReloadReport`]'s own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolChanges {
    /// Pools that were not there.
    pub added: Vec<String>,
    /// Pools no longer configured (their health checks stopped; requests in flight finish).
    pub removed: Vec<String>,
    /// Changes to a kept pool's table, by pool.
    pub backends: Vec<(String, Reconciled)>,
    /// A kept pool's own settings now in force with new values, by pool (the top level's
    /// changes, which every pool inherits, are in [`ReloadReport::settings`]).
    pub settings: Vec<(String, Vec<String>)>,
}

/// `backends added: a, b` and the like, for each kind of change in `b`, after `pool`.
fn describe_backends(pool: &str, b: &Reconciled, parts: &mut Vec<String>) {
    for (what, ids) in
        [("added", &b.added), ("removed", &b.removed), ("replaced", &b.replaced), ("reweighted", &b.reweighted)]
    {
        if !ids.is_empty() {
            parts.push(format!("{pool}backends {what}: {}", ids.join(", ")));
        }
    }
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        describe_backends("", &self.backends, &mut parts);
        if !self.settings.is_empty() {
            parts.push(format!("settings changed: {}", self.settings.join(", ")));
        }
        let pools = &self.pools;
        for (what, names) in [("added", &pools.added), ("removed", &pools.removed)] {
            if !names.is_empty() {
                parts.push(format!("pools {what}: {}", names.join(", ")));
            }
        }
        for (pool, reconciled) in &pools.backends {
            describe_backends(&format!("pool {pool}: "), reconciled, &mut parts);
        }
        for (pool, keys) in &pools.settings {
            parts.push(format!("pool {pool}: settings changed: {}", keys.join(", ")));
        }
        if !self.restart_only.is_empty() {
            parts.push(format!("kept until a restart: {}", self.restart_only.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("no change")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// The parts of a running balancer that a reload or a stop reaches.
pub struct Control {
    current: Arc<Current>,
    tuner: Tuner,
    /// Each pool's health checker, by pool name (none for a pool whose checks are off).
    health: Mutex<Vec<(String, HealthChecker)>>,
    dns: Mutex<Option<DnsRefresher>>,
    /// Every HTTP client made so far that may still be in use (a reload that changes the
    /// timeouts makes a new one; requests in flight keep theirs): a stop breaks them all.
    /// The forwarders whose connections a stop must break: the current one and any that a
    /// reload replaced while they are still in use (held, not weak: an old one would be
    /// dropped while a worker still reads a body from one of its connections).
    forwarders: Mutex<Vec<Arc<Forwarder>>>,
    source: Mutex<Option<Arc<ConfigSource>>>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Control {
    /// Takes charge of a started balancer's parts, and answers `reload_hook` (what
    /// `POST /lb/config/reload` calls) with reloads from the configuration source.
    pub(crate) fn new(
        current: Arc<Current>,
        tuner: Tuner,
        health: Vec<(String, HealthChecker)>,
        dns: DnsRefresher,
        reload_hook: &ReloadHook,
    ) -> Arc<Control> {
        let forwarders = current.load().pools.iter().map(|pool| Arc::clone(&pool.forwarder)).collect();
        let control = Arc::new(Control {
            current,
            tuner,
            health: Mutex::new(health),
            dns: Mutex::new(Some(dns)),
            forwarders: Mutex::new(forwarders),
            source: Mutex::new(None),
            reloading: Mutex::new(()),
        });
        let weak = Arc::downgrade(&control);
        reload_hook.set(move || match weak.upgrade() {
            Some(control) => control.reload_from_source().map(|report| report.to_string()),
            None => Err("the balancer is stopping".to_string()),
        });
        control
    }

    /// Sets where [`reload_from_source`](Self::reload_from_source) reads the configuration.
    pub fn set_source(&self, source: ConfigSource) {
        *lock(&self.source) = Some(Arc::new(source));
    }

    /// Reads the configuration from its source again and applies it (SIGHUP,
    /// `POST /lb/config/reload`). On error nothing changed; the reason is logged and returned.
    pub fn reload_from_source(&self) -> Result<ReloadReport, String> {
        let source = lock(&self.source).clone();
        let result = match source {
            Some(source) => source().and_then(|config| self.apply(config)),
            None => Err("no configuration source to reload from".to_string()),
        };
        match &result {
            Ok(report) => log::info!("configuration reloaded: {report}"),
            Err(why) => log::error!("reload refused, the running configuration stays: {why}"),
        }
        result
    }

    /// Applies `config` (see [`crate::lifecycle`] for what takes effect when). On error nothing
    /// changed.
    pub fn reload(&self, config: Config) -> Result<ReloadReport, String> {
        let result = self.apply(config);
        match &result {
            Ok(report) => log::info!("configuration reloaded: {report}"),
            Err(why) => log::error!("reload refused, the running configuration stays: {why}"),
        }
        result
    }

    fn apply(&self, mut config: Config) -> Result<ReloadReport, String> {
        let _one_at_a_time = lock(&self.reloading);
        config.validate().map_err(|e| e.to_string())?;
        let running = self.current.load_full();
        let old = &running.config;
        // What a reload cannot change keeps its running value (the list of settings says which).
        let mut restart_only = Config::keep_restart_only(&mut config, old);
        if config.tls.port.is_some() && config.tls.cert.is_none() {
            // TLS turned off in the file: the listener stays until a restart, with its files.
            restart_only.push("tls_cert".to_string());
            config.tls.cert.clone_from(&old.tls.cert);
            config.tls.key.clone_from(&old.tls.key);
            config.tls.sni_certificates.clone_from(&old.tls.sni_certificates);
        }
        // With a state file the management API owns every pool's backend list (nginx Plus
        // forbids servers in the file with `state`), with a registry the registry does: a
        // reload keeps each kept pool's table and applies the rest.
        let keeper = match (&old.operations.state_file, &old.operations.registry) {
            (Some(_), _) => Some("the state file"),
            (None, Some(_)) => Some("the registry"),
            (None, None) => None,
        };
        let table = Arc::clone(&running.pools.default_pool().table);
        let wanted = if let Some(keeper) = keeper {
            let running: Vec<_> = table.snapshot().backends.iter().map(|b| (b.id.clone(), b.config())).collect();
            if running != backend_list(&config) {
                restart_only.push(format!("backends ({keeper} keeps them)"));
            }
            config.backends = running.iter().map(|(_, b)| b.clone()).collect();
            None
        } else {
            Some(backend_list(&config))
        };
        // A pool the reload adds comes back from the state file when the file has it, as at a
        // start: built from the configuration, the next save would drop what the file kept.
        let saved = match &running.ops.state_file {
            Some(file) => file.load().map_err(|e| format!("state file {}: {e}", file.path().display()))?,
            None => None,
        };
        let mut restored = Vec::new();
        if keeper.is_some() {
            // A kept named pool's list is its table's too; a new pool starts from the state
            // file when it has the pool, else from the configuration.
            for (name, pool) in &mut config.pools {
                let Some(kept) = running.pools.get(name) else {
                    if let Some(saved) = saved.as_ref().and_then(|saved| saved.pool(name)) {
                        pool.backends = saved.backend_configs().into_iter().map(|(_, b)| b).collect();
                        restored.push((name.clone(), saved));
                    }
                    continue;
                };
                let running: Vec<_> =
                    kept.table.snapshot().backends.iter().map(|b| (b.id.clone(), b.config())).collect();
                let listed = backend_list(&Config { backends: pool.backends.clone(), ..Config::default() });
                if running != listed {
                    restart_only.push(format!("pool {name}: backends ({} keeps them)", keeper.unwrap_or_default()));
                }
                pool.backends = running.into_iter().map(|(_, b)| b).collect();
            }
        }
        let settings = changed_keys(old, &config);
        // Read again whatever their names: a renewed certificate keeps its file name.
        let certificates = tls_certificates(&config)?;
        // Everything that can fail, before the first change: a new pool's table is built, and a
        // kept pool's new backends are resolved and checked as a table of their own.
        let mut tables = vec![(DEFAULT_POOL.to_string(), Arc::clone(&table))];
        for (name, pool) in config.pool_configs().into_iter().skip(1) {
            let wanted = backend_list(&pool);
            let named = |e: TableError| format!("pool '{name}': {e}");
            let table = match running.pools.get(&name) {
                Some(kept) => {
                    let now: Vec<_> =
                        kept.table.snapshot().backends.iter().map(|b| (b.id.clone(), b.config())).collect();
                    if now != wanted {
                        BackendTable::new(pool.pool.algorithm, &wanted, backend_policy(&pool)).map_err(named)?;
                    }
                    Arc::clone(&kept.table)
                }
                None => {
                    let table =
                        BackendTable::new(pool.pool.algorithm, &wanted, backend_policy(&pool)).map_err(named)?;
                    if let Some((_, saved)) = restored.iter().find(|(pool, _)| *pool == name) {
                        saved.apply_states(&table);
                        log::info!("pool {name}: {} backend(s) restored from the state file", saved.backends.len());
                    }
                    Arc::new(table)
                }
            };
            tables.push((name, table));
        }
        let shared =
            build_shared(config, &tables, Some(&running), Arc::clone(&running.ops), Arc::clone(&running.reload))?;
        let mut health = Vec::new();
        for pool in shared.pools.iter() {
            let checks = health_config(&pool.config, pool.forwarder.tls()).map_err(|e| e.to_string())?;
            health.push(checks);
        }
        let (algorithm, policy) = (shared.config.pool.algorithm, backend_policy(&shared.config));
        let backends = match wanted {
            Some(wanted) => table.reconcile(algorithm, &wanted, policy).map_err(|e| e.to_string())?,
            // The backends stay as they are, whatever changes them meanwhile (the watch).
            None => table.reapply(algorithm, policy),
        };
        // From here on nothing fails (a kept pool's backends resolved a moment ago).
        let pools = self.reconcile_pools(&running, &shared, &settings, keeper.is_some());
        if let Some(registry) = &shared.ops.registry {
            // Before the pools are in force: a new pool's table is what the registry says (or
            // seeded) by the time a request reaches it.
            let configs: Vec<_> = shared.pools.iter().map(|p| (p.name.clone(), p.config.clone())).collect();
            let tables: Vec<_> = shared.pools.iter().map(|p| (p.name.clone(), Arc::clone(&p.table))).collect();
            registry.set_pools(registry_pools(&configs, &tables));
        }
        let running_forwarders: Vec<_> = running.pools.iter().map(|p| Arc::clone(&p.forwarder)).collect();
        {
            let mut forwarders = lock(&self.forwarders);
            forwarders.retain(|f| running_forwarders.iter().any(|r| Arc::ptr_eq(f, r)) || f.in_use());
            for pool in shared.pools.iter() {
                if !forwarders.iter().any(|f| Arc::ptr_eq(f, &pool.forwarder)) {
                    forwarders.push(Arc::clone(&pool.forwarder));
                }
            }
        }
        self.tuner.apply(tuning(&shared.config));
        if let Some(certificates) = certificates {
            let described = certificates.describe();
            self.tuner.replace_certificates(certificates);
            log::info!("TLS certificates for new connections: {described}");
        }
        if shared.config.operations.dns_refresh_interval != old.operations.dns_refresh_interval {
            if let Some(dns) = lock(&self.dns).as_ref() {
                dns.set_interval(shared.config.operations.dns_refresh_interval.unwrap_or_default());
            }
        }
        let shared = Arc::new(shared);
        self.current.store(Arc::clone(&shared));
        self.restart_health(&running, &shared, health);
        // As --check-config says them: the reload goes ahead.
        for warning in super::config_warnings(&shared.config) {
            log::warn!("{warning}");
        }
        Ok(ReloadReport { backends, settings, restart_only, pools })
    }

    /// Makes each kept named pool's table what the new configuration says (`kept_lists`: a
    /// state file or a registry keeps its backends, and only the algorithm and policies apply),
    /// and reports what changed in the named pools.
    fn reconcile_pools(
        &self,
        running: &Shared,
        next: &Shared,
        top_settings: &[String],
        kept_lists: bool,
    ) -> PoolChanges {
        let mut changes = PoolChanges::default();
        for pool in next.pools.iter().skip(1) {
            let Some(kept) = running.pools.get(&pool.name) else {
                changes.added.push(pool.name.clone());
                continue;
            };
            let (algorithm, policy) = (pool.config.pool.algorithm, backend_policy(&pool.config));
            let reconciled = if kept_lists {
                Ok(pool.table.reapply(algorithm, policy))
            } else {
                pool.table.reconcile(algorithm, &backend_list(&pool.config), policy)
            };
            match reconciled {
                Ok(reconciled) if reconciled.is_empty() => {}
                Ok(reconciled) => changes.backends.push((pool.name.clone(), reconciled)),
                // Resolved a moment ago, refused now: its name changed address in between.
                Err(e) => log::error!("pool {}: backends not changed: {e}", pool.name),
            }
            let own: Vec<String> = changed_keys(&kept.config, &pool.config)
                .into_iter()
                .filter(|key| !top_settings.contains(key))
                .collect();
            if !own.is_empty() {
                changes.settings.push((pool.name.clone(), own));
            }
        }
        changes.removed = running
            .pools
            .iter()
            .skip(1)
            .filter(|p| next.pools.get(&p.name).is_none())
            .map(|p| p.name.clone())
            .collect();
        changes
    }

    /// Starts again the health checks of each pool whose checks changed or that is new (on its
    /// table), and stops those of removed pools; `health` is `next`'s, pool by pool.
    fn restart_health(&self, running: &Shared, next: &Shared, health: Vec<HealthConfig>) {
        let mut checkers = lock(&self.health);
        let (kept, gone): (Vec<_>, Vec<_>) =
            std::mem::take(&mut *checkers).into_iter().partition(|(name, _)| next.pools.get(name).is_some());
        *checkers = kept;
        stop_all(gone.into_iter().map(|(_, checker)| checker).collect());
        for (pool, config) in next.pools.iter().zip(health) {
            let before = running.pools.get(&pool.name);
            let unchanged = before.is_some_and(|old| {
                Arc::ptr_eq(&old.table, &pool.table)
                    && health_config(&old.config, old.forwarder.tls()).ok().as_ref() == Some(&config)
            });
            if unchanged {
                continue;
            }
            if let Some(at) = checkers.iter().position(|(name, _)| *name == pool.name) {
                checkers.swap_remove(at).1.stop();
            }
            if config.interval.is_zero() {
                // No checks: nothing will ever bring a backend marked down back, so none is; it
                // comes back as any recovered backend does.
                for backend in &pool.table.snapshot().backends {
                    if backend.set_healthy(true) {
                        backend.recovered();
                    }
                }
                continue;
            }
            match HealthChecker::start(Arc::clone(&pool.table), config) {
                Ok(checker) => checkers.push((pool.name.clone(), checker)),
                Err(e) => log::error!("pool {}: cannot restart the health checks: {e}", pool.name),
            }
        }
    }

    /// Breaks every backend connection of every HTTP client still in use: workers blocked on
    /// a backend get an error at once (the end of a stop's grace period).
    pub fn break_backend_io(&self) {
        let forwarders: Vec<_> = lock(&self.forwarders).clone();
        for forwarder in forwarders {
            forwarder.shutdown();
        }
    }

    /// Looks backend host names up with `resolver` from the next DNS refresh on.
    pub fn set_resolver(&self, resolver: Arc<Resolver>) {
        if let Some(dns) = lock(&self.dns).as_ref() {
            dns.set_resolver(resolver);
        }
    }

    /// Stops the DNS refresh.
    pub fn stop_dns(&self) {
        if let Some(dns) = lock(&self.dns).take() {
            dns.stop();
        }
    }

    /// Stops every pool's health checks, all at once (each stop is bounded; together they
    /// take as long as the slowest).
    pub fn stop_health(&self) {
        stop_all(std::mem::take(&mut *lock(&self.health)).into_iter().map(|(_, checker)| checker).collect());
    }
}

/// Stops `checkers` side by side.
fn stop_all(checkers: Vec<HealthChecker>) {
    std::thread::scope(|scope| {
        for checker in checkers {
            scope.spawn(move || checker.stop());
        }
    });
}
