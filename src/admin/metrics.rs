//! `GET /lb/metrics`: the Prometheus text exposition (format 0.0.4), from the same counters as
//! `/lb/stats` and `/lb/backends`, so the two never disagree.
//!
//! Families (every counter ends in `_total`). Every per-backend series names its pool first
//! (`pool="default"` for the top-level backends): two pools may each have a `backend1`, and
//! `{backend="backend1"}` alone would name two series. Pool names come from the config file, so
//! the label set stays bounded.
//!
//! | family | labels | what |
//! |---|---|---|
//! | `lb_requests_total` | `class` | every answer counted in `/lb/stats` `total_requests`, by status class |
//! | `lb_balancer_responses_total` | `class` | those the balancer gave itself (refusals, 502/503/504) |
//! | `lb_backend_responses_total` | `pool`, `backend`, `class` | answers relayed from each backend |
//! | `lb_request_duration_seconds` | | time to the response head of the proxy's answers (histogram) |
//! | `lb_backend_response_duration_seconds` | `pool`, `backend` | a backend's time to its response head (histogram) |
//! | `lb_in_flight_requests` | | requests being forwarded now (every pool's) |
//! | `lb_queue_depth` | | requests waiting for a worker |
//! | `lb_poller_connections` | `poller` | client connections each poller has open now (tunnels included) |
//! | `lb_poller_accepted_total`, `lb_poller_tls_handshakes_total`, `lb_poller_requests_total` | `poller` | connections each poller accepted, TLS handshakes it completed, requests it gave the workers |
//! | `lb_poller_queue_depth` | `poller` | requests of each poller's connections waiting for a worker |
//! | `lb_idle_closed_at_cap_total` | | idle client connections closed to make room for new ones at `max_connections` |
//! | `lb_open_tunnels`, `lb_tunnels_total` | | tunnels (WebSockets: upgraded connections) open now, and opened since the start |
//! | `lb_backend_open_tunnels`, `lb_backend_tunnels_total` | `pool`, `backend` | the same per backend |
//! | `lb_backend_idle_connections` | `pool`, `backend` | connections to it kept idle for the next requests |
//! | `lb_backend_connections_opened_total`, `lb_backend_connections_reused_total` | `pool`, `backend` | connections opened to it, and requests sent on an idle one taken again |
//! | `lb_backend_connections_unsolicited_total` | `pool`, `backend` | connections to it closed because it sent bytes no request asked for |
//! | `lb_backend_up` | `pool`, `backend` | 1 unless health checks marked it down |
//! | `lb_backend_usable` | `pool`, `backend` | 1 when a pick may choose it (enabled, up, circuit not open) |
//! | `lb_backend_enabled`, `lb_backend_draining` | `pool`, `backend` | management state |
//! | `lb_backend_weight` | `pool`, `backend` | its weight |
//! | `lb_backend_in_flight_requests` | `pool`, `backend` | requests being forwarded to it |
//! | `lb_backend_circuit_state` | `pool`, `backend`, `state` | 1 for its breaker's state (closed, open, half_open) |
//! | `lb_backend_tries_total`, `lb_backend_failed_tries_total` | `pool`, `backend` | requests sent to it, and those without an answer |
//! | `lb_backend_client_aborts_total` | `pool`, `backend` | requests to it whose client broke off a streamed body (neither answered nor failed) |
//! | `lb_tries_total`, `lb_retries_total`, `lb_retries_denied_total` | | tries, retries, retries the budget refused |
//! | `lb_failed_tries_total` | `reason` | failed tries by reason |
//! | `lb_rate_limited_total` | | requests the rate limiter refused with `429` |
//! | `lb_uptime_seconds` | | since start |
//! | `lb_pool_requests_total` | `pool`, `class` | answers to the requests sent to each pool, by status class |
//! | `lb_pool_backends`, `lb_pool_usable_backends` | `pool` | each pool's backends, and those a pick may choose |
//! | `lb_route_requests_total` | `route`, `class` | with routes: answers to the requests each route took (a backend's or ours: redirect, respond, 502...), by status class |
//! | `lb_route_request_duration_seconds` | `route` | with routes: time to the response head of each route's answers (histogram) |
//! | `lb_unrouted_requests_total` | `class` | with routes: answers to the requests no route took (the default pool's, or the `404`) |
//! | `lb_dns_lookups_total`, `lb_dns_lookup_failures_total`, `lb_dns_address_changes_total` | | re-resolutions of backend host names, failed ones (the address kept), changed addresses applied |
//! | `lb_registry_connected` | | with a registry: 1 while its watch is up, 0 while serving with the last known table |
//! | `lb_registry_revision` | | with a registry: the etcd revision the table reflects |
//! | `lb_registry_rejected_values` | | with a registry: keys whose values are refused |
//! | `lb_registry_reconnects_total`, `lb_registry_write_conflicts_total` | | with a registry: reconnections after a loss; writes retried after losing a race |

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::health::BreakerState;
use crate::metrics::prometheus::{ExpositionError, TextEncoder, LATENCY_BOUNDS_SECONDS};
use crate::server::PollerStats;
use crate::state::Shared;
use crate::stats::CLASSES;
use crate::upstream::{Backend, Membership};

/// A per-poller family: name, help, whether it is a counter, and its value.
type PollerFamily = (&'static str, &'static str, bool, fn(&PollerStats) -> f64);

/// One per-backend gauge's reading.
type BackendGauge = fn(&Backend) -> f64;

/// Requests the rate limiter refused with `429`, for `lb_rate_limited_total` (the
/// `rejected_requests` of `/lb/stats`'s `rate_limiter`).
pub fn rate_limited_total(shared: &Shared) -> u64 {
    shared.rate_limiter.snapshot().rejected_requests
}

/// The exposition body.
pub fn render(shared: &Shared) -> String {
    match encode(shared) {
        Ok(text) => text,
        // Names and labels are fixed here and ids are checked when backends are added, so this
        // is a bug; say so in a form a scraper reports.
        Err(e) => format!("# lb-sync failed to write its metrics: {e}\n"),
    }
}

fn encode(shared: &Shared) -> Result<String, ExpositionError> {
    let stats = shared.stats.snapshot();
    let tries = shared.stats.tries();
    let tables: Vec<(&str, Arc<Membership>)> =
        shared.pools.iter().map(|pool| (pool.name.as_str(), pool.table.snapshot())).collect();
    // Every pool's backends, each with its pool's name: the per-backend families' series.
    let backends: Vec<(&str, &Backend)> =
        tables.iter().flat_map(|(pool, table)| table.backends.iter().map(move |b| (*pool, &**b))).collect();
    let mut e = TextEncoder::new();

    let mut family =
        e.counter("lb_requests", "Answers on the data port by status class (/lb/stats total_requests).")?;
    for (class, n) in CLASSES.iter().zip(stats.by_class) {
        family.sample(&[("class", class)], n as f64)?;
    }
    let mut family = e.counter(
        "lb_balancer_responses",
        "Answers the balancer gave itself (refusals, 502, 503, 504) by status class.",
    )?;
    for (class, n) in CLASSES.iter().zip(stats.local_by_class) {
        family.sample(&[("class", class)], n as f64)?;
    }
    let mut family = e.counter("lb_backend_responses", "Answers relayed from each backend by status class.")?;
    for &(pool, b) in &backends {
        for (class, n) in CLASSES.iter().zip(b.answers()) {
            family.sample(&[("pool", pool), ("backend", &b.id), ("class", class)], n as f64)?;
        }
    }
    e.histogram(
        "lb_request_duration_seconds",
        "Time from taking a request to the response head, for the proxy's answers.",
    )?
    .histogram(&[], &shared.ops.latency.snapshot(), &LATENCY_BOUNDS_SECONDS)?;
    let mut family = e.histogram(
        "lb_backend_response_duration_seconds",
        "Time from sending a request to a backend to its response head.",
    )?;
    for &(pool, b) in &backends {
        family.histogram(&[("pool", pool), ("backend", &b.id)], &b.latency().snapshot(), &LATENCY_BOUNDS_SECONDS)?;
    }
    let in_flight: usize = backends.iter().map(|(_, b)| b.in_flight()).sum();
    e.gauge("lb_in_flight_requests", "Requests being forwarded to a backend now.")?.sample(&[], in_flight as f64)?;
    e.gauge("lb_queue_depth", "Requests waiting for a worker.")?
        .sample(&[], shared.ops.queue_depth.load(Ordering::Relaxed) as f64)?;
    let pollers = shared.ops.pollers.read();
    let names: Vec<String> = (0..pollers.len()).map(|i| i.to_string()).collect();
    let per_poller: [PollerFamily; 5] = [
        ("lb_poller_connections", "Client connections each poller has open now.", false, |p| p.connections as f64),
        ("lb_poller_accepted", "Connections each poller accepted.", true, |p| p.accepted as f64),
        ("lb_poller_tls_handshakes", "TLS handshakes each poller completed.", true, |p| p.handshakes as f64),
        ("lb_poller_requests", "Requests each poller gave to the workers.", true, |p| p.requests as f64),
        ("lb_poller_queue_depth", "Requests of each poller's connections waiting for a worker.", false, |p| {
            p.queued as f64
        }),
    ];
    for (name, help, counter, value) in per_poller {
        let mut family = if counter { e.counter(name, help)? } else { e.gauge(name, help)? };
        for (poller, stats) in names.iter().zip(&pollers) {
            family.sample(&[("poller", poller)], value(stats))?;
        }
    }
    e.counter("lb_idle_closed_at_cap", "Idle client connections closed to make room for new ones at max_connections.")?
        .sample(&[], shared.ops.idle_closed.load(Ordering::Relaxed) as f64)?;
    let tunnels = &shared.stats.tunnels;
    e.gauge("lb_open_tunnels", "Tunnels (upgraded connections: WebSockets) open now.")?
        .sample(&[], tunnels.active() as f64)?;
    e.counter("lb_tunnels", "Tunnels (upgraded connections: WebSockets) opened.")?
        .sample(&[], tunnels.total() as f64)?;
    let mut family = e.gauge("lb_backend_open_tunnels", "Tunnels to each backend open now.")?;
    for &(pool, b) in &backends {
        family.sample(&[("pool", pool), ("backend", &b.id)], b.tunnels().active() as f64)?;
    }
    let mut family = e.counter("lb_backend_tunnels", "Tunnels opened to each backend.")?;
    for &(pool, b) in &backends {
        family.sample(&[("pool", pool), ("backend", &b.id)], b.tunnels().total() as f64)?;
    }
    let mut family =
        e.gauge("lb_backend_idle_connections", "Connections to each backend kept idle for later requests.")?;
    for &(pool, b) in &backends {
        family.sample(&[("pool", pool), ("backend", &b.id)], b.idle_connections() as f64)?;
    }
    let mut family = e.counter("lb_backend_connections_opened", "Connections opened to each backend.")?;
    for &(pool, b) in &backends {
        family.sample(&[("pool", pool), ("backend", &b.id)], b.connection_counts().opened() as f64)?;
    }
    let mut family =
        e.counter("lb_backend_connections_reused", "Requests sent to each backend on an idle connection taken again.")?;
    for &(pool, b) in &backends {
        family.sample(&[("pool", pool), ("backend", &b.id)], b.connection_counts().reused() as f64)?;
    }
    let mut family = e.counter(
        "lb_backend_connections_unsolicited",
        "Connections to each backend closed because it sent bytes no request asked for.",
    )?;
    for &(pool, b) in &backends {
        family.sample(&[("pool", pool), ("backend", &b.id)], b.connection_counts().unsolicited() as f64)?;
    }

    let gauges: [(&str, &str, BackendGauge); 6] = [
        ("lb_backend_up", "1 unless active health checks marked the backend down.", |b| {
            f64::from(u8::from(b.is_healthy()))
        }),
        ("lb_backend_usable", "1 when a pick may choose the backend (enabled, up, circuit not open).", |b| {
            f64::from(u8::from(b.is_usable()))
        }),
        ("lb_backend_enabled", "1 when the backend is enabled (not disabled or draining).", |b| {
            f64::from(u8::from(b.is_enabled()))
        }),
        ("lb_backend_draining", "1 while the backend is being drained.", |b| f64::from(u8::from(b.is_draining()))),
        ("lb_backend_weight", "The backend's weight.", |b| f64::from(b.weight())),
        ("lb_backend_in_flight_requests", "Requests being forwarded to the backend now.", |b| b.in_flight() as f64),
    ];
    for (name, help, value) in gauges {
        let mut family = e.gauge(name, help)?;
        for &(pool, b) in &backends {
            family.sample(&[("pool", pool), ("backend", &b.id)], value(b))?;
        }
    }
    let mut family = e.gauge("lb_backend_circuit_state", "1 for the state the backend's circuit breaker is in.")?;
    for &(pool, b) in &backends {
        let state = b.breaker().state();
        for s in [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen] {
            family.sample(
                &[("pool", pool), ("backend", &b.id), ("state", s.as_str())],
                f64::from(u8::from(state == s)),
            )?;
        }
    }
    let mut sent = e.counter("lb_backend_tries", "Requests sent to each backend (first tries and retries).")?;
    for &(pool, b) in &backends {
        sent.sample(&[("pool", pool), ("backend", &b.id)], b.counts().0 as f64)?;
    }
    let mut failed = e.counter("lb_backend_failed_tries", "Requests sent to each backend that got no answer.")?;
    for &(pool, b) in &backends {
        failed.sample(&[("pool", pool), ("backend", &b.id)], b.counts().1 as f64)?;
    }
    let mut aborted =
        e.counter("lb_backend_client_aborts", "Requests to each backend whose client broke off its streamed body.")?;
    for &(pool, b) in &backends {
        aborted.sample(&[("pool", pool), ("backend", &b.id)], b.client_aborts() as f64)?;
    }
    e.counter("lb_tries", "Requests sent to backends (first tries and retries).")?.sample(&[], tries.tries as f64)?;
    e.counter("lb_retries", "Tries after a request's first.")?.sample(&[], tries.retries as f64)?;
    e.counter("lb_retries_denied", "Retries not made because the retry budget was spent.")?
        .sample(&[], tries.denied_by_budget as f64)?;
    let mut family = e.counter("lb_failed_tries", "Tries that got no answer, by reason.")?;
    for (reason, n) in &tries.failures {
        family.sample(&[("reason", reason)], *n as f64)?;
    }
    e.counter("lb_rate_limited", "Requests the rate limiter refused with 429.")?
        .sample(&[], rate_limited_total(shared) as f64)?;
    e.gauge("lb_uptime_seconds", "Seconds since the balancer started.")?
        .sample(&[], shared.started.elapsed().as_secs_f64())?;
    // Pool names come from the config file: a bounded label set.
    let mut family = e.counter("lb_pool_requests", "Answers to the requests sent to each pool by status class.")?;
    for pool in shared.pools.iter() {
        for (class, n) in CLASSES.iter().zip(pool.stats.snapshot().by_class) {
            family.sample(&[("pool", &pool.name), ("class", class)], n as f64)?;
        }
    }
    let mut family = e.gauge("lb_pool_backends", "Backends in each pool.")?;
    for (pool, table) in &tables {
        family.sample(&[("pool", pool)], table.backends.len() as f64)?;
    }
    let mut family = e.gauge("lb_pool_usable_backends", "Backends of each pool a pick may choose.")?;
    for (pool, table) in &tables {
        let usable = table.backends.iter().filter(|b| b.is_usable()).count();
        family.sample(&[("pool", pool)], usable as f64)?;
    }
    if !shared.routes.is_empty() {
        routes(&mut e, shared)?;
    }
    let dns = &shared.ops.dns;
    e.counter("lb_dns_lookups", "Re-resolutions of backend host names.")?.sample(&[], dns.lookups() as f64)?;
    e.counter("lb_dns_lookup_failures", "Re-resolutions that failed (the backend kept its address).")?
        .sample(&[], dns.failures() as f64)?;
    e.counter("lb_dns_address_changes", "Backend addresses changed by a re-resolution.")?
        .sample(&[], dns.changes() as f64)?;
    if let Some(registry) = &shared.ops.registry {
        let status = registry.status();
        e.gauge(
            "lb_registry_connected",
            "1 while the registry's watch is up, 0 while serving with the last known table.",
        )?
        .sample(&[], f64::from(u8::from(status.connected())))?;
        e.gauge("lb_registry_revision", "The registry revision the backend table reflects.")?
            .sample(&[], status.revision as f64)?;
        e.gauge("lb_registry_rejected_values", "Registry keys whose values are refused.")?
            .sample(&[], status.rejected.len() as f64)?;
        e.counter("lb_registry_reconnects", "Reconnections to the registry after losing it.")?
            .sample(&[], status.reconnects as f64)?;
        e.counter("lb_registry_write_conflicts", "Registry writes retried after another writer came first.")?
            .sample(&[], status.write_conflicts as f64)?;
    }
    Ok(e.finish())
}

/// The route families: route names come from the config file (a bounded label set), never a
/// request's path.
fn routes(e: &mut TextEncoder, shared: &Shared) -> Result<(), ExpositionError> {
    let routes = shared.routes.routes();
    let mut family = e.counter("lb_route_requests", "Answers to the requests each route took by status class.")?;
    for route in routes {
        for (class, n) in CLASSES.iter().zip(shared.route_stats.of(route).answers.snapshot().by_class) {
            family.sample(&[("route", &route.name), ("class", class)], n as f64)?;
        }
    }
    let mut family = e.histogram(
        "lb_route_request_duration_seconds",
        "Time from taking a request to the response head, for each route's answers.",
    )?;
    for route in routes {
        let latency = shared.route_stats.of(route).latency.snapshot();
        family.histogram(&[("route", &route.name)], &latency, &LATENCY_BOUNDS_SECONDS)?;
    }
    let mut family = e.counter("lb_unrouted_requests", "Answers to the requests no route took by status class.")?;
    for (class, n) in CLASSES.iter().zip(shared.route_stats.unmatched().answers.snapshot().by_class) {
        family.sample(&[("class", class)], n as f64)?;
    }
    Ok(())
}
