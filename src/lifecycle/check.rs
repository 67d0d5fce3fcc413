//! `lb-sync --check-config` (as `nginx -t`): everything a start would refuse, without binding a
//! port or starting a thread.

use std::sync::Arc;

use crate::config::{Config, DEFAULT_POOL};
use crate::routing::RouteTable;
use crate::traffic::RateLimiter;
use crate::upstream::{distinct_addresses, resolve, UpstreamTls};

use super::generation::{backend_list, health_config, tls_certificates};

/// Checks `config` as a start or a reload would: every value in range, every backend's host
/// resolves (no two to one address), the `upstream_ca` file reads, the health-check statuses and rate limits make sense,
/// the TLS certificates load (readable, key matching, valid now). `Ok` is a one-line summary.
///
/// ```
/// use lb_sync::config::{BackendConfig, Config};
/// let config = Config { backends: vec![BackendConfig::new("127.0.0.1", 9001, 1)], ..Config::default() };
/// assert_eq!(lb_sync::lifecycle::check_config(&config).unwrap(), "1 backend(s), round_robin, 256 threads, port 8080");
/// let mut bad = config;
/// bad.listener.max_connections = 0;
/// assert_eq!(lb_sync::lifecycle::check_config(&bad).unwrap_err(), "max_connections must be 1-1000000, got 0");
/// ```
pub fn check_config(config: &Config) -> Result<String, String> {
    config.validate().map_err(|e| e.to_string())?;
    let tls = Arc::new(UpstreamTls::load(config.tls.upstream_ca.as_deref()).map_err(|e| e.to_string())?);
    RateLimiter::new(&config.rate_limits()).map_err(|e| e.to_string())?;
    for (name, pool) in config.pool_configs() {
        // The default pool's messages stay as they were before pools.
        let named = |e: String| if name == DEFAULT_POOL { e } else { format!("pool '{name}': {e}") };
        health_config(&pool, &tls).map_err(|e| named(e.to_string()))?;
        let mut addresses = Vec::new();
        for (id, backend) in backend_list(&pool) {
            let addr = resolve(&backend.host, backend.port).map_err(|e| named(format!("backend {id}: {e}")))?;
            addresses.push((id, addr));
        }
        distinct_addresses(&addresses).map_err(|e| named(e.to_string()))?;
    }
    tls_certificates(config)?;
    let pools = match config.pools.len() {
        0 => String::new(),
        n => format!(" and {n} named pool(s)"),
    };
    Ok(format!(
        "{} backend(s){pools}, {}, {} threads, port {}",
        config.backends.len(),
        config.pool.algorithm,
        config.listener.threads,
        config.listener.port
    ))
}

/// What a configuration that loads may still do wrong, one line each, for `--check-config` and
/// reload to say (they do not refuse it): the route table's warnings (routes that can never
/// match, regexes anchored by hand, prefixes probably meant with a segment boundary, things
/// named twice), then each named pool no route names
/// when there are routes (no request reaches it). A route naming an undefined pool is an
/// error, not a warning ([`Config::validate`]).
///
/// ```
/// let config: lb_sync::config::Config = serde_json::from_str(r#"{
///     "pools": {"api": {"backends": [{"host": "127.0.0.1", "port": 9001}]},
///               "old": {"backends": [{"host": "127.0.0.1", "port": 9002}]}},
///     "routes": [{"name": "api", "path_regex": "^/api/.*", "pool": "api"}]
/// }"#).unwrap();
/// assert_eq!(lb_sync::lifecycle::config_warnings(&config), [
///     "route 'api': regex '^/api/.*' has ^ or $, but every regex is matched against the whole value already",
///     "pool 'old' is named by no route: no request reaches it",
/// ]);
/// ```
pub fn config_warnings(config: &Config) -> Vec<String> {
    let Ok(table) = RouteTable::build(&config.routes) else { return Vec::new() };
    let mut warnings: Vec<String> = table.warnings().iter().map(ToString::to_string).collect();
    if !table.is_empty() {
        let named = table.pools_named();
        for pool in config.pools.keys().filter(|pool| !named.contains(&pool.as_str())) {
            warnings.push(format!("pool '{pool}' is named by no route: no request reaches it"));
        }
    }
    warnings
}
