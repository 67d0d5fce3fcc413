//! The `routes` key checked as a start or a reload would: the whole table built (each route
//! valid, names unique, no ties), and each route's overrides of top-level settings held to the
//! ranges of those settings. Whether the pools it names exist is the pools' check
//! ([`RouteTable::pools_named`]).

use crate::routing::{Action, Route, RouteConfig, RouteTable};

use super::{invalid, ranges, ConfigError, ConfigFile, DEFAULT_POOL, MAX_BURST, MAX_RATE};

/// Checks `config.routes`.
pub(super) fn check(config: &ConfigFile) -> Result<(), ConfigError> {
    let table = RouteTable::build(&config.routes).map_err(|e| invalid("routes", e.to_string()))?;
    config.routes.iter().try_for_each(check_overrides)?;
    for route in table.routes() {
        let o = &route.overrides;
        let set = [
            ("request_timeout", o.request_timeout.is_some()),
            ("connect_timeout", o.connect_timeout.is_some()),
            ("max_tries", o.max_tries.is_some()),
            ("rate_limit", o.rate_limit.is_some()),
            ("client_rate_limit", o.client_rate_limit.is_some()),
        ];
        if let (Action::Redirect(_) | Action::Respond(_), Some((key, _))) =
            (&route.action, set.iter().find(|(_, s)| *s))
        {
            return Err(invalid(
                "routes",
                format!(
                    "route '{}': {key} applies to requests sent to a pool; this route answers them itself",
                    route.name
                ),
            ));
        }
    }
    for (route, pool) in table.routes().iter().flat_map(|r| pools_of(r).into_iter().map(move |p| (r, p))) {
        if pool != DEFAULT_POOL && !config.pools.contains_key(pool) {
            let known: Vec<&str> =
                std::iter::once(DEFAULT_POOL).chain(config.pools.keys().map(String::as_str)).collect();
            return Err(invalid(
                "routes",
                format!(
                    "route '{}' names pool '{pool}', which is not defined (pools: {})",
                    route.name,
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The pools a route sends to.
fn pools_of(route: &Route) -> Vec<&str> {
    match &route.action {
        Action::Pool(pool) => vec![pool.as_str()],
        Action::Split(shares) => shares.iter().map(|share| share.pool.as_str()).collect(),
        Action::Redirect(_) | Action::Respond(_) => Vec::new(),
    }
}

fn check_overrides(route: &RouteConfig) -> Result<(), ConfigError> {
    let fail = |why: String| invalid("routes", format!("route '{}': {why}", route.name));
    let o = route.overrides();
    let ranged = [
        ("request_timeout", o.request_timeout),
        ("connect_timeout", o.connect_timeout),
        ("max_tries", o.max_tries.map(|n| n as f64)),
    ];
    for (key, value) in ranged {
        let range = ranges::of(key);
        match value {
            Some(v) if !range.contains(v) => return Err(fail(format!("{key} must be {}, got {v}", range.describe()))),
            _ => {}
        }
    }
    let limits = [
        ("rate_limit", o.rate_limit, "rate_limit_burst", o.rate_limit_burst),
        ("client_rate_limit", o.client_rate_limit, "client_rate_limit_burst", o.client_rate_limit_burst),
    ];
    for (rate_key, rate, burst_key, burst) in limits {
        if let Some(rate) = rate {
            if !rate.is_finite() || !(0.0..=MAX_RATE).contains(&rate) {
                return Err(fail(format!(
                    "{rate_key} must be a number of requests per second 0-{MAX_RATE}, got {rate}"
                )));
            }
        }
        match (burst, rate) {
            (Some(burst), _) if burst > MAX_BURST => {
                return Err(fail(format!("{burst_key} must be 0-{MAX_BURST}, got {burst}")));
            }
            (Some(burst), None | Some(0.0)) if burst > 0 => {
                return Err(fail(format!(
                    "{burst_key} is {burst} but the route sets no {rate_key}: set {rate_key} too"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_routes(json: &str) -> Result<(), String> {
        let config: ConfigFile =
            serde_json::from_str(&format!(r#"{{"routes": {json}}}"#)).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn a_config_with_routes_loads_and_old_files_are_unchanged() {
        with_routes(r#"[{"name": "api", "host": ["api.example.com", "*.api.example.com"], "path_prefix": "/v1", "pool": "default", "max_tries": 2}]"#).unwrap();
        let config: ConfigFile = serde_json::from_str("{}").unwrap();
        assert!(config.routes.is_empty());
        let json = serde_json::to_value(&config).unwrap();
        assert!(json.get("routes").is_none(), "no routes key when there is none");
    }

    #[test]
    fn errors_name_the_route() {
        let unknown = with_routes(r#"[{"name": "api", "hosts": "x", "pool": "a"}]"#).unwrap_err();
        assert!(unknown.starts_with("route 'api': unknown field `hosts`"), "{unknown}");
        let nameless = with_routes(r#"[{"pool": "a"}]"#).unwrap_err();
        assert!(nameless.starts_with("route #1: missing field `name`"), "{nameless}");
        let range = with_routes(r#"[{"name": "slow", "pool": "a", "request_timeout": 0}]"#).unwrap_err();
        assert_eq!(range, "route 'slow': request_timeout must be 0.001-86400 s, got 0");
        let tries = with_routes(r#"[{"name": "t", "pool": "a", "max_tries": 0}]"#).unwrap_err();
        assert_eq!(tries, "route 't': max_tries must be 1-100, got 0");
        let burst = with_routes(r#"[{"name": "b", "pool": "a", "rate_limit_burst": 5}]"#).unwrap_err();
        assert!(burst.starts_with("route 'b': rate_limit_burst is 5"), "{burst}");
        let tie =
            with_routes(r#"[{"name": "a", "path": "/x", "pool": "p"}, {"name": "b", "path": "/x", "pool": "q"}]"#)
                .unwrap_err();
        assert!(tie.starts_with("routes 'a' and 'b' can take the same request"), "{tie}");
        let undefined = with_routes(r#"[{"name": "u", "pool": "nowhere"}]"#).unwrap_err();
        assert_eq!(undefined, "route 'u' names pool 'nowhere', which is not defined (pools: default)");
        let split =
            with_routes(r#"[{"name": "s", "split": [{"pool": "default", "weight": 9}, {"pool": "x", "weight": 1}]}]"#);
        assert!(split.unwrap_err().contains("names pool 'x'"));
        with_routes(r#"[{"name": "p", "pool": "default", "request_timeout": 5, "client_rate_limit": 2}]"#).unwrap();
        let answered = with_routes(r#"[{"name": "r", "respond": {"status": 403}, "rate_limit": 5}]"#).unwrap_err();
        assert_eq!(
            answered,
            "route 'r': rate_limit applies to requests sent to a pool; this route answers them itself"
        );
    }
}
