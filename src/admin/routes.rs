//! `GET /lb/routes`: the route table in force, in precedence order (the order a lookup tries
//! the routes, by [`Rank`]), each with its matchers and action as written in the config and
//! what its requests got; and the requests no route took. `GET /lb/routes/{name}`: one route's
//! entry. `/lb/stats`'s `routes` section is the counters alone.

use std::cmp::Reverse;

use serde_json::{json, Map, Value};

use crate::route_stats::RouteStats;
use crate::routing::rank::host_entries;
use crate::routing::{Rank, Route};
use crate::state::Shared;
use crate::stats::CLASSES;

use super::json::latency_json;

/// Config keys that say which requests a route takes.
const MATCHER_KEYS: [&str; 8] =
    ["host", "path", "path_prefix", "path_regex", "methods", "headers", "query", "priority"];
/// Config keys that say what a route does with them.
const ACTION_KEYS: [&str; 10] = [
    "pool",
    "split",
    "redirect",
    "respond",
    "strip_prefix",
    "add_prefix",
    "replace_prefix",
    "request_headers",
    "response_headers",
    "max_tries",
];

/// The routes in precedence order: the most specific first (its best host entry's rank), the
/// config's order between equals (which the table makes disjoint).
///
/// ```
/// use lb_sync::admin::routes::in_precedence_order;
/// use lb_sync::routing::{RouteConfig, RouteTable};
/// let routes: Vec<RouteConfig> = serde_json::from_str(r#"[
///     {"name": "site", "path_prefix": "/", "pool": "web"},
///     {"name": "api", "path_prefix": "/api", "pool": "api"},
///     {"name": "host", "host": "example.com", "pool": "web"}
/// ]"#).unwrap();
/// let table = RouteTable::build(&routes).unwrap();
/// let names: Vec<&str> = in_precedence_order(table.routes()).iter().map(|r| r.name.as_str()).collect();
/// assert_eq!(names, ["host", "api", "site"]);
/// ```
pub fn in_precedence_order(routes: &[Route]) -> Vec<&Route> {
    let best = |route: &Route| host_entries(route).into_iter().map(|host| Rank::of(route, host)).max();
    let mut ordered: Vec<&Route> = routes.iter().collect();
    ordered.sort_by_key(|route| (Reverse(best(route)), route.position));
    ordered
}

/// `{"1xx": n, ..., "5xx": n}`.
fn by_class(counts: &[u64; 5]) -> Value {
    Value::Object(CLASSES.iter().zip(counts).map(|(class, n)| (class.to_string(), json!(n))).collect())
}

/// What a route's requests got: totals, by class, ours among them, and the latency.
pub fn counters_json(stats: &RouteStats) -> Value {
    let s = stats.answers.snapshot();
    json!({
        "requests": s.total,
        "failed_requests": s.failed,
        "responses": by_class(&s.by_class),
        "answered_by_balancer": by_class(&s.local_by_class),
        "latency": latency_json(&stats.latency.snapshot()),
    })
}

/// The keys of `config` (a route as written, as JSON) among `keys`, in the config's spelling.
fn picked(config: &Value, keys: &[&str]) -> Value {
    let object = config.as_object();
    Value::Object(
        keys.iter().filter_map(|key| object.and_then(|o| o.get(*key)).map(|v| (key.to_string(), v.clone()))).collect(),
    )
}

/// One route in `/lb/routes`.
fn route_json(shared: &Shared, route: &Route, precedence: usize) -> Value {
    let config =
        shared.config.routes.get(route.position).map_or(Value::Null, |c| serde_json::to_value(c).unwrap_or_default());
    let mut value = json!({
        "name": route.name,
        "precedence": precedence,
        "position": route.position,
        "match": picked(&config, &MATCHER_KEYS),
        "action": picked(&config, &ACTION_KEYS),
    });
    if let (Value::Object(object), Value::Object(counters)) = (&mut value, counters_json(shared.route_stats.of(route)))
    {
        object.extend(counters);
    }
    value
}

/// The body of `GET /lb/routes`.
pub fn routes_json(shared: &Shared) -> Value {
    let routes = in_precedence_order(shared.routes.routes());
    let default = shared.pools.default_pool();
    let unmatched_go = if default.table.snapshot().backends.is_empty() && default.config.operations.registry.is_none() {
        "404"
    } else {
        "pool default"
    };
    let mut unmatched = counters_json(shared.route_stats.unmatched());
    unmatched["goes_to"] = json!(unmatched_go);
    json!({
        "routes": routes.iter().enumerate().map(|(i, route)| route_json(shared, route, i + 1)).collect::<Vec<_>>(),
        "unmatched": unmatched,
    })
}

/// The body of `GET /lb/routes/{name}`: the route's entry of `/lb/routes`, precedence
/// included; `None` when no route has that name.
pub fn route_by_name_json(shared: &Shared, name: &str) -> Option<Value> {
    let routes = in_precedence_order(shared.routes.routes());
    let (i, route) = routes.iter().enumerate().find(|(_, route)| route.name == name)?;
    Some(route_json(shared, route, i + 1))
}

/// `/lb/stats`'s `routes` section: each route's counters by name (`None` without routes).
pub fn stats_section(shared: &Shared) -> Option<Value> {
    if shared.routes.is_empty() {
        return None;
    }
    let routes: Map<String, Value> = shared
        .routes
        .routes()
        .iter()
        .map(|route| (route.name.clone(), counters_json(shared.route_stats.of(route))))
        .collect();
    Some(Value::Object(routes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{RouteConfig, RouteTable};

    #[test]
    fn precedence_order_is_specificity_then_the_configs_order() {
        let configs: Vec<RouteConfig> = serde_json::from_str(
            r#"[
                {"name": "any", "pool": "p"},
                {"name": "regex", "path_regex": "/r/[0-9]+", "pool": "p"},
                {"name": "short", "path_prefix": "/a", "pool": "p"},
                {"name": "long", "path_prefix": "/a/b", "pool": "p"},
                {"name": "exact", "path": "/a/b/c", "pool": "p"},
                {"name": "wild", "host": "*.example.com", "pool": "p"},
                {"name": "host", "host": ["*.example.com", "www.example.com"], "path": "/x", "pool": "p"},
                {"name": "post", "path_prefix": "/a", "methods": ["POST"], "pool": "p"}
            ]"#,
        )
        .unwrap();
        let table = RouteTable::build(&configs).unwrap();
        let names: Vec<&str> = in_precedence_order(table.routes()).iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["host", "wild", "exact", "long", "post", "short", "regex", "any"]);
    }
}
