//! What a route sets for its own requests beyond its pool's settings: a rate limit (all
//! clients together and per client, in the shapes of the top-level `rate_limit` and
//! `client_rate_limit`) and timeouts (an HTTP client for each pool the route sends to, with
//! that pool's idle-connection limits and TLS and the route's `connect_timeout` and
//! `request_timeout`). Built for each configuration, keeping a route's limiter and clients by
//! its name while their settings are the same: a reload does not refill a route's buckets or
//! drop its idle connections.

use std::sync::Arc;
use std::time::Duration;

use crate::pools::{Pool, Pools};
use crate::routing::{Action, Route, RouteTable};
use crate::traffic::{RateLimitConfig, RateLimiter};
use crate::upstream::{ForwardTimeouts, Forwarder};

/// One route's limiter and clients.
#[derive(Default)]
pub struct RoutePolicy {
    name: String,
    limit: Option<(RateLimitConfig, Arc<RateLimiter>)>,
    /// By pool name: the route's client for that pool, when the route sets a timeout.
    forwarders: Vec<(String, Arc<Forwarder>)>,
}

impl RoutePolicy {
    /// The route's rate limiter, when it sets a rate.
    pub fn limiter(&self) -> Option<&RateLimiter> {
        self.limit.as_ref().map(|(_, limiter)| &**limiter)
    }

    /// The HTTP client the route uses for `pool`: its own when it sets a timeout, else the
    /// pool's.
    pub fn forwarder<'a>(&'a self, pool: &'a Pool) -> &'a Forwarder {
        self.forwarders.iter().find(|(name, _)| *name == pool.name).map_or(&pool.forwarder, |(_, f)| f)
    }
}

/// Every route's policy, in the table's order.
#[derive(Default)]
pub struct RoutePolicies {
    by_route: Vec<RoutePolicy>,
}

impl RoutePolicies {
    /// The policies of `table` over `pools`, keeping from `previous` a route's limiter and
    /// clients (by its name) whose settings did not change.
    ///
    /// ```
    /// # use lb_sync::route_policy::RoutePolicies;
    /// # use lb_sync::routing::RouteTable;
    /// # fn build(table: &RouteTable, pools: &lb_sync::pools::Pools, before: &RoutePolicies) -> RoutePolicies {
    /// RoutePolicies::build(table, pools, Some(before)).expect("rates were checked at load")
    /// # }
    /// ```
    pub fn build(table: &RouteTable, pools: &Pools, previous: Option<&RoutePolicies>) -> Result<RoutePolicies, String> {
        let mut by_route = Vec::with_capacity(table.routes().len());
        for route in table.routes() {
            let before = previous.and_then(|p| p.by_route.iter().find(|b| b.name == route.name));
            by_route.push(RoutePolicy {
                name: route.name.clone(),
                limit: limit(route, before)?,
                forwarders: forwarders(route, pools, before),
            });
        }
        Ok(RoutePolicies { by_route })
    }

    /// The policy of `route` (one of the table's this was built from).
    pub fn of(&self, route: &Route) -> Option<&RoutePolicy> {
        self.by_route.get(route.position)
    }
}

fn limit(route: &Route, before: Option<&RoutePolicy>) -> Result<Option<(RateLimitConfig, Arc<RateLimiter>)>, String> {
    let o = &route.overrides;
    if o.rate_limit.is_none() && o.client_rate_limit.is_none() {
        return Ok(None);
    }
    let config = RateLimitConfig {
        rate: o.rate_limit.unwrap_or(0.0),
        burst: o.rate_limit_burst.unwrap_or(0),
        client_rate: o.client_rate_limit.unwrap_or(0.0),
        client_burst: o.client_rate_limit_burst.unwrap_or(0),
        ..RateLimitConfig::default()
    };
    if let Some((kept, limiter)) = before.and_then(|b| b.limit.as_ref()) {
        if *kept == config {
            return Ok(Some((config, Arc::clone(limiter))));
        }
    }
    let limiter = RateLimiter::new(&config).map_err(|e| format!("route '{}': {e}", route.name))?;
    Ok(Some((config, Arc::new(limiter))))
}

fn forwarders(route: &Route, pools: &Pools, before: Option<&RoutePolicy>) -> Vec<(String, Arc<Forwarder>)> {
    let o = &route.overrides;
    if o.connect_timeout.is_none() && o.request_timeout.is_none() {
        return Vec::new();
    }
    let names: Vec<&str> = match &route.action {
        Action::Pool(pool) => vec![pool.as_str()],
        Action::Split(shares) => shares.iter().map(|share| share.pool.as_str()).collect(),
        Action::Redirect(_) | Action::Respond(_) => Vec::new(),
    };
    let mut made = Vec::new();
    for pool in names.into_iter().filter_map(|name| pools.get(name)) {
        let (pool_timeouts, idle) = pool.forwarder.settings();
        let timeouts = ForwardTimeouts {
            connect: o.connect_timeout.map_or(pool_timeouts.connect, Duration::from_secs_f64),
            request: o.request_timeout.map_or(pool_timeouts.request, Duration::from_secs_f64),
        };
        let kept = before.and_then(|b| b.forwarders.iter().find(|(name, _)| *name == pool.name)).map(|(_, f)| f);
        let forwarder = match kept {
            Some(f) if f.settings() == (timeouts, idle) && **f.tls() == **pool.forwarder.tls() => Arc::clone(f),
            _ => Arc::new(Forwarder::new(timeouts, idle, Arc::clone(pool.forwarder.tls()))),
        };
        if !made.iter().any(|(name, _): &(String, _)| *name == pool.name) {
            made.push((pool.name.clone(), forwarder));
        }
    }
    made
}
