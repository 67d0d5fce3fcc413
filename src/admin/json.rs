//! The JSON the management API answers with: one backend, the statistics object, the
//! balancer's own health, the running configuration.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::config::SHOWN_AS;
use crate::health::BreakerState;
use crate::metrics::HistogramSnapshot;
use crate::pools::Pool;
use crate::state::Shared;
use crate::stats::CLASSES;
use crate::upstream::Backend;

/// Milliseconds, 3 decimals.
fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// `{count, mean_ms, p50_ms, p90_ms, p99_ms, max_ms}` of a latency histogram (`null`s before
/// the first request).
pub fn latency_json(h: &HistogramSnapshot) -> Value {
    let q = |q: f64| h.percentile(q).map(ms);
    json!({
        "count": h.count(),
        "mean_ms": h.mean().map(ms),
        "p50_ms": q(0.5),
        "p90_ms": q(0.9),
        "p99_ms": q(0.99),
        "max_ms": h.max().map(ms),
    })
}

/// `{"1xx": n, ..., "5xx": n}`.
fn by_class(counts: &[u64; 5]) -> Value {
    Value::Object(CLASSES.iter().zip(counts).map(|(class, n)| (class.to_string(), json!(n))).collect())
}

/// The JSON object describing one backend in `/lb/backends`.
pub fn backend_json(backend: &Backend) -> Value {
    let (requests, failures) = backend.counts();
    let (breaker_failures, breaker_successes) = backend.breaker().counts();
    let last_check =
        backend.last_check().map(|c| json!({ "ok": c.ok, "detail": c.detail, "at": c.at_unix, "took_ms": c.took_ms }));
    let in_flight = backend.in_flight();
    json!({
        "id": backend.id,
        "host": backend.host,
        "port": backend.port,
        "scheme": backend.scheme.as_str(),
        "address": backend.addr.to_string(),
        "weight": backend.weight(),
        "enabled": backend.is_enabled(),
        "draining": backend.is_draining(),
        "drained": backend.is_draining() && in_flight == 0,
        "health": backend.health().as_str(),
        "healthy": backend.is_healthy(),
        "usable": backend.is_usable(),
        "active_connections": in_flight,
        "awaiting_answer": backend.awaiting_answer(),
        "tunnels": { "active": backend.tunnels().active(), "total": backend.tunnels().total() },
        "total_requests": requests,
        "failed_requests": failures,
        "client_aborts": backend.client_aborts(),
        "upstream_connections": {
            "idle": backend.idle_connections(),
            "opened": backend.connection_counts().opened(),
            "reused": backend.connection_counts().reused(),
            "unsolicited": backend.connection_counts().unsolicited(),
        },
        "responses": by_class(&backend.answers()),
        "latency": latency_json(&backend.latency().snapshot()),
        "circuit_breaker": {
            "state": backend.breaker().state().as_str(),
            "failure_count": breaker_failures,
            "success_count": breaker_successes,
            "last_opened_by": backend.breaker().last_cause().map(|c| c.describe(&backend.breaker().config())),
        },
        "slow_start_share": backend.slow_start().permille() as f64 / 1000.0,
        // What peak_ewma picks by: null until the backend's first answer (or after a recovery).
        "response_time_ms": backend
            .response_time()
            .estimate(crate::balance::peak_ewma::now())
            .map(|ns| (ns / 10_000.0).round() / 100.0),
        "last_check": last_check,
    })
}

/// One pool in `/lb/pools` and under `pools` in `/lb/stats`: its name, algorithm, whether any
/// of its backends is usable (`status` `up` or `down`), its backends' count and health, and
/// what its requests got (their latency to the response head too).
pub fn pool_json(pool: &Pool) -> Value {
    let snapshot = pool.table.snapshot();
    let healthy = snapshot.backends.iter().filter(|b| b.is_usable()).count();
    let s = pool.stats.snapshot();
    let tries = pool.stats.tries();
    json!({
        "name": pool.name,
        "algorithm": pool.table.algorithm().to_string(),
        "status": if healthy > 0 { "up" } else { "down" },
        "backends": {
            "total": snapshot.backends.len(),
            "healthy": healthy,
            "unhealthy": snapshot.backends.len() - healthy,
        },
        "requests": s.total,
        "successful_requests": s.successful,
        "failed_requests": s.failed,
        "responses": by_class(&s.by_class),
        "answered_by_balancer": by_class(&s.local_by_class),
        "in_flight": snapshot.backends.iter().map(|b| b.in_flight()).sum::<usize>(),
        "retries": { "tries": tries.tries, "retries": tries.retries, "denied_by_budget": tries.denied_by_budget },
        "latency": latency_json(&pool.latency.snapshot()),
    })
}

/// The seed's statistics object.
pub fn stats(shared: &Shared) -> Value {
    let s = shared.stats.snapshot();
    let tries = shared.stats.tries();
    let snapshot = shared.pools.default_pool().table.snapshot();
    // The one definition of healthy here and in /lb/health: usable (enabled, not down, circuit
    // not open).
    let healthy = snapshot.backends.iter().filter(|b| b.is_usable()).count();
    let name = shared.pools.default_pool().table.algorithm().display_name();
    let latency = shared.ops.latency.snapshot();
    let average = latency.mean().map_or(0.0, |d| (d.as_secs_f64() * 100_000.0).round() / 100.0);
    let mut stats = json!({
        "load_balancer": name,
        "total_requests": s.total,
        "successful_requests": s.successful,
        "failed_requests": s.failed,
        "success_rate": s.success_rate,
        "average_response_time": average,
        "circuit_breaker": breaker_summary(&snapshot.backends),
        "responses": by_class(&s.by_class),
        "answered_by_balancer": by_class(&s.local_by_class),
        "latency": latency_json(&latency),
        "in_flight": snapshot.backends.iter().map(|b| b.in_flight()).sum::<usize>(),
        "queue_depth": shared.ops.queue_depth.load(std::sync::atomic::Ordering::Relaxed),
        "idle_closed_at_cap": shared.ops.idle_closed.load(std::sync::atomic::Ordering::Relaxed),
        "pollers": shared.ops.pollers.read().iter().map(|p| json!({
            "connections": p.connections,
            "accepted": p.accepted,
            "tls_handshakes": p.handshakes,
            "requests": p.requests,
            "queue_depth": p.queued,
        })).collect::<Vec<_>>(),
        "tunnels": { "active": shared.stats.tunnels.active(), "total": shared.stats.tunnels.total() },
        "retries": {
            "tries": tries.tries,
            "retries": tries.retries,
            "denied_by_budget": tries.denied_by_budget,
            "failed_tries": tries.failures.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "backends": {
            "algorithm": name,
            "total_backends": snapshot.backends.len(),
            "healthy_backends": healthy,
            "unhealthy_backends": snapshot.backends.len() - healthy,
        },
        "rate_limiter": shared.rate_limiter.snapshot(),
        "dns": dns(shared),
        "pools": shared.pools.iter().map(|pool| (pool.name.clone(), pool_json(pool))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(registry) = &shared.ops.registry {
        stats["registry"] = json!(registry.status());
    }
    if let Some(routes) = super::routes::stats_section(shared) {
        stats["routes"] = routes;
    }
    stats
}

/// What the re-resolutions of backend host names did: lookups, failures (the backend kept its
/// address), addresses changed, and the backends whose last lookup failed, with why.
fn dns(shared: &Shared) -> Value {
    let dns = &shared.ops.dns;
    json!({
        "refresh_interval": shared.config.operations.dns_refresh_interval.map_or(0.0, |interval| interval.as_secs_f64()),
        "lookups": dns.lookups(),
        "failed_lookups": dns.failures(),
        "address_changes": dns.changes(),
        "failing": dns.failing(),
    })
}

/// The seed's aggregate breaker: `closed` only when every breaker is closed, `open` when any is
/// open, else `half_open`; counts summed.
fn breaker_summary(backends: &[Arc<Backend>]) -> Value {
    let states: Vec<BreakerState> = backends.iter().map(|b| b.breaker().state()).collect();
    let state = if states.contains(&BreakerState::Open) {
        BreakerState::Open
    } else if states.contains(&BreakerState::HalfOpen) {
        BreakerState::HalfOpen
    } else {
        BreakerState::Closed
    };
    let (failures, successes) =
        backends.iter().map(|b| b.breaker().counts()).fold((0, 0), |(f, s), (bf, bs)| (f + bf, s + bs));
    json!({ "state": state.as_str(), "failure_count": failures, "success_count": successes })
}

/// The balancer's own health: status 200 with `healthy` while any backend is usable, else 503
/// (usable as in `/lb/stats`'s `healthy_backends`); with a registry, its status too.
pub fn health(shared: &Shared) -> (u16, Value) {
    let snapshot = shared.pools.default_pool().table.snapshot();
    let usable = snapshot.backends.iter().filter(|b| b.is_usable()).count();
    let status = if usable > 0 { "healthy" } else { "unhealthy" };
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let mut body = json!({
        "status": status,
        "usable_backends": usable,
        "total_backends": snapshot.backends.len(),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "timestamp": timestamp,
    });
    // Reported, not a reason for 503: the instance serves on with the last known table.
    if let Some(registry) = &shared.ops.registry {
        body["registry"] = json!(registry.status());
    }
    (if usable > 0 { 200 } else { 503 }, body)
}

/// The running configuration, with the running backend table, the secrets hidden, and the
/// values in force of settings worked out from others (with where each came from, under
/// `derived`).
pub fn config(shared: &Shared) -> Value {
    let mut value = serde_json::to_value(&shared.config).unwrap_or(Value::Null);
    // The running table, not the start-up list: backends may have been added or removed.
    let snapshot = shared.pools.default_pool().table.snapshot();
    value["backends"] = Value::Array(
        snapshot.backends.iter().map(|b| serde_json::to_value(b.config()).unwrap_or(Value::Null)).collect(),
    );
    // The settings the list says to show as a fixed text (secrets), at the top and in pools.
    for &(key, shown) in SHOWN_AS {
        if value.get(key).is_some_and(|t| !t.is_null()) {
            value[key] = json!(shown);
        }
        if let Some(Value::Object(pools)) = value.get_mut("pools") {
            for pool in pools.values_mut().filter(|p| p.get(key).is_some()) {
                pool[key] = json!(shown);
            }
        }
    }
    let derived = derived_settings(&shared.config);
    for (key, (in_force, _)) in &derived {
        value[*key] = in_force.clone();
    }
    value["derived"] = derived.into_iter().map(|(key, (_, why))| (key.to_string(), json!(why))).collect();
    value
}

/// The settings left unset (or 0 for "one second's worth") whose value in force is worked out
/// from others: key → (the value in force, where it came from). `/lb/config` shows the value in
/// force under the key, and where it came from under `derived`.
fn derived_settings(config: &crate::config::Config) -> Vec<(&'static str, (Value, String))> {
    let mut derived = Vec::new();
    if config.pool.backend_max_connections.is_none() {
        let why = format!("unset: 3/4 of threads ({})", config.listener.threads);
        derived.push(("backend_max_connections", (json!(config.backend_connection_cap()), why)));
    }
    if config.client_limits.client_max_workers.is_none() {
        let why = format!("unset: half of threads ({})", config.listener.threads);
        derived.push(("client_max_workers", (json!(config.client_share_in_force()), why)));
    }
    if config.pool.upstream_keepalive.is_none() {
        let why = format!("unset: one per worker (threads, {})", config.listener.threads);
        derived.push(("upstream_keepalive", (json!(config.upstream_keepalive_in_force()), why)));
    }
    let limits = config.rate_limits();
    if config.client_limits.rate_limit > 0.0 && config.client_limits.rate_limit_burst == 0 {
        let why = format!("0: one second of rate_limit ({})", config.client_limits.rate_limit);
        derived.push(("rate_limit_burst", (json!(limits.effective_burst()), why)));
    }
    if config.client_limits.client_rate_limit > 0.0 && config.client_limits.client_rate_limit_burst == 0 {
        let why = format!("0: one second of client_rate_limit ({})", config.client_limits.client_rate_limit);
        derived.push(("client_rate_limit_burst", (json!(limits.effective_client_burst()), why)));
    }
    if config.listener.client_body_temp_path.is_none() {
        let dir = config.body_buffering().temp_dir;
        derived.push(("client_body_temp_path", (json!(dir), "unset: the system's temp dir".to_string())));
    }
    if let (Some(cert), None) = (&config.tls.cert, &config.tls.key) {
        derived.push(("tls_key", (json!(cert), "unset: the tls_cert file".to_string())));
    }
    derived
}
