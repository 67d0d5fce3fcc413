//! Named pools (`"pools": {"api": {...}}`): each a backend list with the per-pool settings
//! it overrides (those of the groups [`Config::pool`], [`Config::health`] and
//! [`Config::breaker`]; [`PoolConfig`] is declared by the list of settings). The top-level
//! `backends` and settings are the pool named `default`; a named pool starts from them and
//! changes only what it names, so one list of keys, types and ranges serves both (a pool's
//! settings in force are a whole configuration, checked by the same
//! [`ConfigFile::validate`]).

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::{invalid, Config, ConfigError, ConfigFile, PoolConfig};

/// The pool the top-level `backends` and settings make, which every request goes to until
/// routes choose another; a pool in the file may not take its name.
pub const DEFAULT_POOL: &str = "default";

/// Whether `name` may name a pool: 1-64 of `[A-Za-z0-9_.-]` (it goes in `/lb/pools/{name}` as
/// it is), and not `default`, the top-level pool's.
///
/// ```
/// use lb_sync::config::is_valid_pool_name;
/// assert!(is_valid_pool_name("api.v2_eu-west"));
/// assert!(!is_valid_pool_name("default") && !is_valid_pool_name("a/b") && !is_valid_pool_name(""));
/// ```
pub fn is_valid_pool_name(name: &str) -> bool {
    name != DEFAULT_POOL
        && (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Reads `pools` one pool at a time, so that an unknown key or a wrong type names its pool.
pub(super) fn by_name<'de, D: Deserializer<'de>>(input: D) -> Result<BTreeMap<String, PoolConfig>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(input)?;
    raw.into_iter()
        .map(|(name, value)| match PoolConfig::deserialize(value) {
            Ok(pool) => Ok((name, pool)),
            Err(e) => Err(D::Error::custom(format!("pool '{name}': {e}"))),
        })
        .collect()
}

impl Config {
    /// Every pool's settings in force, `default` (this configuration itself, without its named
    /// pools) first, then the named pools by name.
    ///
    /// ```
    /// use lb_sync::config::Config;
    /// let config: Config = serde_json::from_str(
    ///     r#"{"max_tries": 2, "pools": {"api": {"backends": [{"host": "127.0.0.1", "port": 9001}], "max_tries": 5}}}"#,
    /// ).unwrap();
    /// let pools = config.pool_configs();
    /// assert_eq!(pools.iter().map(|(name, c)| (name.as_str(), c.pool.max_tries)).collect::<Vec<_>>(), [("default", 2), ("api", 5)]);
    /// assert_eq!(pools[1].1.backends.len(), 1);
    /// ```
    pub fn pool_configs(&self) -> Vec<(String, Config)> {
        let default = Config { pools: BTreeMap::new(), routes: Vec::new(), ..self.clone() };
        let file = ConfigFile::from(self);
        let named = self.pools.iter().map(|(name, pool)| {
            // Every caller validated first (validate_pools), so a value no setting holds (a
            // negative duration) is not there; were it, the pool would keep the top's settings.
            let laid = Config::try_from(pool.lay_over(&file))
                .unwrap_or_else(|_| Config { backends: pool.backends.clone(), ..default.clone() });
            (name.clone(), laid)
        });
        std::iter::once((DEFAULT_POOL.to_string(), default.clone())).chain(named).collect()
    }
}

impl ConfigFile {
    /// Each named pool: its name, its backends, and its settings in force checked as the
    /// top-level ones are; a message names the pool.
    pub(super) fn validate_pools(&self) -> Result<(), ConfigError> {
        for (name, pool) in &self.pools {
            if name == DEFAULT_POOL {
                let why = "pool name 'default' is reserved: the top-level backends and settings are the default pool";
                return Err(invalid("pools", why));
            }
            if !is_valid_pool_name(name) {
                let why = format!("pool name '{name}' is not allowed: use 1-64 of A-Z a-z 0-9 _ . -");
                return Err(invalid("pools", why));
            }
            if pool.backends.is_empty() {
                return Err(invalid("pools", format!("pool '{name}': backends must list at least one backend")));
            }
            pool.lay_over(self).validate().map_err(|e| invalid("pools", format!("pool '{name}': {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_pools(pools: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(&format!(r#"{{"pools": {pools}}}"#)).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn a_pool_changes_only_what_it_names() {
        let config = with_pools(
            r#"{"api": {"backends": [{"host": "127.0.0.1", "port": 9001}], "sticky_cookie": "SRV", "backend_max_connections": 7}}"#,
        )
        .unwrap();
        let (name, api) = &config.pool_configs()[1];
        assert_eq!(name, "api");
        assert_eq!((api.pool.sticky_cookie.as_deref(), api.pool.backend_max_connections), (Some("SRV"), Some(7)));
        let default = &config.pool_configs()[0].1;
        let mut api_without_its_own = api.clone();
        api_without_its_own.backends.clone_from(&default.backends);
        api_without_its_own.pool.sticky_cookie = None;
        api_without_its_own.pool.backend_max_connections = None;
        assert_eq!(api_without_its_own, *default);
        assert!(api.pools.is_empty());
    }

    #[test]
    fn bad_pools_are_refused_with_the_pool_named() {
        let one = r#"[{"host": "127.0.0.1", "port": 9001}]"#;
        let cases = [
            (format!(r#"{{"api": {{"backends": {one}, "colour": 1}}}}"#), "pool 'api': unknown field `colour`"),
            (r#"{"api": {"algorithm": "p2c"}}"#.to_string(), "pool 'api': missing field `backends`"),
            (r#"{"api": {"backends": []}}"#.to_string(), "pool 'api': backends must list at least one backend"),
            (format!(r#"{{"default": {{"backends": {one}}}}}"#), "pool name 'default' is reserved"),
            (format!(r#"{{"a b": {{"backends": {one}}}}}"#), "pool name 'a b' is not allowed"),
            (
                format!(r#"{{"api": {{"backends": {one}, "max_tries": 0}}}}"#),
                "pool 'api': max_tries must be 1-100, got 0",
            ),
            (
                format!(r#"{{"api": {{"backends": {one}, "health_check_status": "x"}}}}"#),
                "pool 'api': health_check_status must look like 200-399",
            ),
            (
                r#"{"api": {"backends": [{"host": "127.0.0.1", "port": 9001, "weight": 0}]}}"#.to_string(),
                "pool 'api': backend 127.0.0.1:9001: weight must be",
            ),
        ];
        for (pools, message) in cases {
            let error = with_pools(&pools).unwrap_err();
            assert!(error.starts_with(message), "{pools}: {error}");
        }
    }
}
