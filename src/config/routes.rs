//! The `routes` key checked as a start or a reload would: the whole table built (each route
//! valid, names unique, no ties), and each route's overrides of top-level settings held to the
//! ranges of those settings. Whether the pools it names exist is the pools' check
//! ([`RouteTable::pools_named`]).

use crate::routing::{RouteConfig, RouteTable};

use super::{invalid, ranges, Config, ConfigError, MAX_BURST, MAX_RATE};

/// Checks `config.routes`.
pub(super) fn check(config: &Config) -> Result<(), ConfigError> {
    RouteTable::build(&config.routes).map_err(|e| invalid("routes", e.to_string()))?;
    config.routes.iter().try_for_each(check_overrides)
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
        let config: Config = serde_json::from_str(&format!(r#"{{"routes": {json}}}"#)).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn a_config_with_routes_loads_and_old_files_are_unchanged() {
        with_routes(r#"[{"name": "api", "host": ["api.example.com", "*.api.example.com"], "path_prefix": "/v1", "pool": "api", "request_timeout": 5}]"#).unwrap();
        let config: Config = serde_json::from_str("{}").unwrap();
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
    }
}
