//! Reloading a running balancer: a new configuration is checked whole, then applied piece by
//! piece where each piece lives, without a connection closed or a request dropped. Anything
//! that can fail (validation, name resolution, building the rate limiter) fails before the
//! first change, so a refused reload leaves the old configuration running untouched.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::Config;
use crate::server::Tuner;
use crate::state::{Current, ReloadHook};
use crate::upstream::{BackendTable, DnsRefresher, Forwarder, HealthChecker, HealthConfig, Reconciled, Resolver};

use super::generation::{
    backend_list, backend_policy, build_shared, changed_keys, health_config, tls_certificates, tuning,
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
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.backends;
        let mut parts = Vec::new();
        for (what, ids) in
            [("added", &b.added), ("removed", &b.removed), ("replaced", &b.replaced), ("reweighted", &b.reweighted)]
        {
            if !ids.is_empty() {
                parts.push(format!("backends {what}: {}", ids.join(", ")));
            }
        }
        if !self.settings.is_empty() {
            parts.push(format!("settings changed: {}", self.settings.join(", ")));
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
    table: Arc<BackendTable>,
    tuner: Tuner,
    health: Mutex<Option<HealthChecker>>,
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
        table: Arc<BackendTable>,
        tuner: Tuner,
        health: Option<HealthChecker>,
        dns: DnsRefresher,
        reload_hook: &ReloadHook,
    ) -> Arc<Control> {
        let forwarders = vec![Arc::clone(&current.load().forwarder)];
        let control = Arc::new(Control {
            current,
            table,
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
        let mut restart_only = Vec::new();
        macro_rules! keep {
            ($($key:ident),*) => {$(
                if config.$key != old.$key {
                    restart_only.push(stringify!($key).to_string());
                    config.$key = old.$key.clone();
                }
            )*};
        }
        keep!(host, port, threads, client_body_temp_path);
        keep!(admin_listen, access_log, access_log_format, access_log_file, log_file, state_file, registry, tls_port);
        if config.tls_port.is_some() && config.tls_cert.is_none() {
            // TLS turned off in the file: the listener stays until a restart, with its files.
            restart_only.push("tls_cert".to_string());
            config.tls_cert.clone_from(&old.tls_cert);
            config.tls_key.clone_from(&old.tls_key);
            config.tls_sni_certificates.clone_from(&old.tls_sni_certificates);
        }
        // With a state file the management API owns the backend list (nginx Plus forbids
        // servers in the file with `state`), with a registry the registry does: a reload keeps
        // the table's and applies the rest.
        let keeper = match (&old.state_file, &old.registry) {
            (Some(_), _) => Some("the state file"),
            (None, Some(_)) => Some("the registry"),
            (None, None) => None,
        };
        let wanted = if let Some(keeper) = keeper {
            let running: Vec<_> = self.table.snapshot().backends.iter().map(|b| (b.id.clone(), b.config())).collect();
            if running != backend_list(&config) {
                restart_only.push(format!("backends ({keeper} keeps them)"));
            }
            config.backends = running.iter().map(|(_, b)| b.clone()).collect();
            None
        } else {
            Some(backend_list(&config))
        };
        let settings = changed_keys(old, &config);
        // Read again whatever their names: a renewed certificate keeps its file name.
        let certificates = tls_certificates(&config)?;
        // Everything that can fail, before the first change.
        let shared = build_shared(
            config,
            Arc::clone(&self.table),
            Some(&running),
            Arc::clone(&running.ops),
            Arc::clone(&running.reload),
        )?;
        let health = health_config(&shared.config, shared.forwarder.tls()).map_err(|e| e.to_string())?;
        let (algorithm, policy) = (shared.config.algorithm, backend_policy(&shared.config));
        let backends = match wanted {
            Some(wanted) => self.table.reconcile(algorithm, &wanted, policy).map_err(|e| e.to_string())?,
            // The backends stay as they are, whatever changes them meanwhile (the watch).
            None => self.table.reapply(algorithm, policy),
        };
        // From here on nothing fails.
        if !Arc::ptr_eq(&shared.forwarder, &running.forwarder) {
            let mut forwarders = lock(&self.forwarders);
            forwarders.retain(|f| Arc::ptr_eq(f, &running.forwarder) || f.in_use());
            forwarders.push(Arc::clone(&shared.forwarder));
        }
        self.tuner.apply(tuning(&shared.config));
        if let Some(certificates) = certificates {
            let described = certificates.describe();
            self.tuner.replace_certificates(certificates);
            log::info!("TLS certificates for new connections: {described}");
        }
        let old_health = health_config(old, running.forwarder.tls()).ok();
        if shared.config.dns_refresh_interval != old.dns_refresh_interval {
            if let Some(dns) = lock(&self.dns).as_ref() {
                dns.set_interval(Duration::from_secs_f64(shared.config.dns_refresh_interval));
            }
        }
        self.current.store(Arc::new(shared));
        if old_health.as_ref() != Some(&health) {
            self.restart_health(health);
        }
        Ok(ReloadReport { backends, settings, restart_only })
    }

    fn restart_health(&self, config: HealthConfig) {
        let mut slot = lock(&self.health);
        if let Some(old) = slot.take() {
            old.stop();
        }
        if config.interval.is_zero() {
            // No checks: nothing will ever bring a backend marked down back, so none is; it
            // comes back as any recovered backend does.
            for backend in &self.table.snapshot().backends {
                if backend.set_healthy(true) {
                    backend.recovered();
                }
            }
            return;
        }
        match HealthChecker::start(Arc::clone(&self.table), config) {
            Ok(checker) => *slot = Some(checker),
            Err(e) => log::error!("cannot restart the health checks: {e}"),
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

    /// Stops the health checks.
    pub fn stop_health(&self) {
        if let Some(checker) = lock(&self.health).take() {
            checker.stop();
        }
    }
}
