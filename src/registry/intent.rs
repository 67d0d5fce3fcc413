//! What the instances share, as etcd keys and values, under the registry's prefix:
//!
//! | key | value |
//! |---|---|
//! | `PREFIX/backends/ID` | one backend of the `default` pool: `{"host": "10.0.0.5", "port": 8001, "weight": 2, "state": "enabled"}` (`state`: `enabled`, `disabled` or `draining`; default `enabled`; `weight` default 1) |
//! | `PREFIX/numbered` | how many `backend<N>` ids the `default` pool handed out (decimal), so no id is ever reused; its presence also says the pool was seeded |
//! | `PREFIX/pools/POOL/backends/ID` | one backend of the named pool `POOL`, the same value |
//! | `PREFIX/pools/POOL/numbered` | the same count, for `POOL` |
//!
//! The `default` pool keeps the keys it had before pools, so a registry written by an older
//! lb-sync is the `default` pool's as it is, and an older lb-sync goes on reading and writing
//! it. The two never meet: an id holds no `/`, so no `PREFIX/backends/...` key is a pool's, and
//! `PREFIX/pools/default/...` is refused (the `default` pool's keys are the top level's).
//! Other keys under the prefix are not lb-sync's and are left alone.
//!
//! Health is not here: each instance probes from where it stands.

use serde_json::{Map, Value};

use crate::config::{is_valid_id, is_valid_pool_name, BackendConfig, DEFAULT_POOL};
use crate::upstream::BackendState;

/// What a key under the prefix names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// A backend of a pool.
    Backend {
        /// The pool (`default` for `PREFIX/backends/ID`).
        pool: String,
        /// The backend's id.
        id: String,
    },
    /// A pool's count of numbered ids.
    Numbered(String),
    /// Not one of lb-sync's keys.
    Other,
}

/// The keys under one prefix.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// The keys under `prefix` (`/lb-sync/prod`).
    pub fn new(prefix: &str) -> Layout {
        Layout { prefix: prefix.trim_end_matches('/').to_string() }
    }

    /// Where `pool`'s keys are: the prefix itself for `default`, `PREFIX/pools/POOL` for another.
    fn root(&self, pool: &str) -> String {
        if pool == DEFAULT_POOL {
            self.prefix.clone()
        } else {
            format!("{}/pools/{pool}", self.prefix)
        }
    }

    /// The first key of every pool's range: `PREFIX/`.
    pub fn all(&self) -> Vec<u8> {
        format!("{}/", self.prefix).into_bytes()
    }

    /// The end (excluded) of every pool's range.
    pub fn all_end(&self) -> Vec<u8> {
        super::etcd::prefix_end(&self.all())
    }

    /// The first key of `pool`'s backends' range: `PREFIX/backends/` for `default`,
    /// `PREFIX/pools/POOL/backends/` for another.
    pub fn backends(&self, pool: &str) -> Vec<u8> {
        format!("{}/backends/", self.root(pool)).into_bytes()
    }

    /// The end (excluded) of `pool`'s backends' range.
    pub fn backends_end(&self, pool: &str) -> Vec<u8> {
        super::etcd::prefix_end(&self.backends(pool))
    }

    /// The key of backend `id` of `pool`.
    pub fn backend(&self, pool: &str, id: &str) -> Vec<u8> {
        format!("{}/backends/{id}", self.root(pool)).into_bytes()
    }

    /// The key counting the `backend<N>` ids `pool` handed out.
    pub fn numbered(&self, pool: &str) -> Vec<u8> {
        format!("{}/numbered", self.root(pool)).into_bytes()
    }

    /// The backend id of a key of `pool`'s backends' range, or why it names none.
    pub fn id_of(&self, pool: &str, key: &[u8]) -> Result<String, String> {
        let id = key.strip_prefix(self.backends(pool).as_slice()).ok_or("not a backend key")?;
        match std::str::from_utf8(id) {
            Ok(id) if is_valid_id(id) => Ok(id.to_string()),
            _ => Err("the key's last part is not a backend id (1-64 of A-Z a-z 0-9 . _ ~ -)".to_string()),
        }
    }

    /// What `key` names, or why a key in lb-sync's part of the prefix is refused (a bad id, a
    /// bad pool name, `default` under `pools/`).
    ///
    /// ```
    /// use lb_sync::registry::{Key, Layout};
    /// let layout = Layout::new("/lb");
    /// let backend = |pool: &str, id: &str| Key::Backend { pool: pool.into(), id: id.into() };
    /// assert_eq!(layout.key(b"/lb/backends/b1"), Ok(backend("default", "b1")));
    /// assert_eq!(layout.key(b"/lb/pools/api/backends/b1"), Ok(backend("api", "b1")));
    /// assert_eq!(layout.key(b"/lb/pools/api/numbered"), Ok(Key::Numbered("api".into())));
    /// assert!(layout.key(b"/lb/pools/default/backends/b1").is_err());
    /// assert_eq!(layout.key(b"/lb/notes"), Ok(Key::Other));
    /// ```
    pub fn key(&self, key: &[u8]) -> Result<Key, String> {
        let Some(rest) = key.strip_prefix(self.all().as_slice()) else { return Ok(Key::Other) };
        if rest == b"numbered" {
            return Ok(Key::Numbered(DEFAULT_POOL.to_string()));
        }
        if rest.starts_with(b"backends/") {
            let id = self.id_of(DEFAULT_POOL, key)?;
            return Ok(Key::Backend { pool: DEFAULT_POOL.to_string(), id });
        }
        let Some(in_pool) = rest.strip_prefix(b"pools/") else { return Ok(Key::Other) };
        let Some(slash) = in_pool.iter().position(|&b| b == b'/') else { return Ok(Key::Other) };
        let (pool, tail) = (&in_pool[..slash], &in_pool[slash + 1..]);
        if tail != b"numbered" && !tail.starts_with(b"backends/") {
            return Ok(Key::Other);
        }
        let pool = match std::str::from_utf8(pool) {
            Ok(DEFAULT_POOL) => {
                let top = show(&self.backends(DEFAULT_POOL));
                return Err(format!("the default pool's backends are {top}ID, not under pools/default/"));
            }
            Ok(pool) if is_valid_pool_name(pool) => pool.to_string(),
            _ => return Err("the key's pool is not a pool name (1-64 of A-Z a-z 0-9 _ . -)".to_string()),
        };
        if tail == b"numbered" {
            return Ok(Key::Numbered(pool));
        }
        let id = self.id_of(&pool, key)?;
        Ok(Key::Backend { pool, id })
    }
}

/// A key as text for messages (lossy: keys written by hand may be anything).
pub fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// One backend's shared intent: where it is, its weight, and what the management API left it in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// Its configuration (`id` set).
    pub config: BackendConfig,
    /// Enabled, disabled or draining.
    pub state: BackendState,
}

impl Intent {
    /// The intent stored for `id`, or why the value is refused (named so an operator can fix
    /// it: not JSON, an unknown field, a port or weight out of range...).
    ///
    /// ```
    /// use lb_sync::registry::Intent;
    /// let intent = Intent::parse("api", br#"{"host": "10.0.0.5", "port": 8001, "state": "draining"}"#).unwrap();
    /// assert_eq!((intent.config.port, intent.config.weight, intent.state.as_str()), (8001, 1, "draining"));
    /// assert_eq!(Intent::parse("api", br#"{"host": "10.0.0.5", "port": 0}"#).unwrap_err(), "port must be 1-65535");
    /// ```
    pub fn parse(id: &str, value: &[u8]) -> Result<Intent, String> {
        let mut object: Map<String, Value> = match serde_json::from_slice(value) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err("the value is not a JSON object".into()),
            Err(e) => return Err(format!("the value is not JSON: {e}")),
        };
        let state = match object.remove("state") {
            None => BackendState::Enabled,
            Some(state) => serde_json::from_value(state)
                .map_err(|_| "state must be \"enabled\", \"disabled\" or \"draining\"".to_string())?,
        };
        match object.remove("id") {
            None => {}
            Some(Value::String(named)) if named == id => {}
            Some(other) => return Err(format!("id {other} differs from the key's '{id}'")),
        }
        let mut config: BackendConfig = serde_json::from_value(Value::Object(object)).map_err(|e| e.to_string())?;
        if config.host.trim().is_empty() || config.host.trim() != config.host {
            return Err("host must be a non-empty name or address, without spaces".into());
        }
        if config.port == 0 {
            return Err("port must be 1-65535".into());
        }
        if !(1..=1_000_000).contains(&config.weight) {
            return Err(format!("weight must be 1-1000000, got {}", config.weight));
        }
        config.id = Some(id.to_string());
        Ok(Intent { config, state })
    }

    /// The value to store (the id is the key's).
    ///
    /// ```
    /// use lb_sync::config::BackendConfig;
    /// use lb_sync::registry::Intent;
    /// use lb_sync::upstream::BackendState;
    /// let intent = Intent { config: BackendConfig::new("10.0.0.5", 8001, 2), state: BackendState::Enabled };
    /// assert_eq!(intent.value(), br#"{"host":"10.0.0.5","port":8001,"weight":2,"state":"enabled"}"#);
    /// ```
    pub fn value(&self) -> Vec<u8> {
        // Filtered rather than removed: a removal would reorder the fields.
        let mut object: Map<String, Value> = match serde_json::to_value(&self.config) {
            Ok(Value::Object(object)) => object.into_iter().filter(|(key, _)| key != "id").collect(),
            _ => Map::new(),
        };
        object.insert("state".into(), Value::from(self.state.as_str()));
        Value::Object(object).to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_backends_and_nothing_else() {
        let layout = Layout::new("/lb/prod/");
        assert_eq!(layout.backend(DEFAULT_POOL, "b1"), b"/lb/prod/backends/b1");
        assert_eq!(layout.backends_end(DEFAULT_POOL), b"/lb/prod/backends0");
        assert_eq!(layout.id_of(DEFAULT_POOL, b"/lb/prod/backends/b1").unwrap(), "b1");
        assert!(layout.id_of(DEFAULT_POOL, b"/lb/prod/backends/a/b").is_err());
        assert!(layout.id_of(DEFAULT_POOL, b"/lb/prod/backends/").is_err());
        assert!(layout.id_of(DEFAULT_POOL, b"/lb/prod/numbered").is_err());
    }

    #[test]
    fn a_pools_keys_are_under_pools_and_never_the_default_pools() {
        let layout = Layout::new("/lb/prod");
        assert_eq!(layout.backend("api", "b1"), b"/lb/prod/pools/api/backends/b1");
        assert_eq!(layout.numbered("api"), b"/lb/prod/pools/api/numbered");
        assert_eq!(layout.backends_end("api"), b"/lb/prod/pools/api/backends0");
        assert_eq!((layout.all(), layout.all_end()), (b"/lb/prod/".to_vec(), b"/lb/prod0".to_vec()));
        let backend = |pool: &str, id: &str| Ok(Key::Backend { pool: pool.into(), id: id.into() });
        assert_eq!(layout.key(b"/lb/prod/pools/api/backends/b1"), backend("api", "b1"));
        assert_eq!(layout.key(&layout.backend("api", "backend3")), backend("api", "backend3"));
        assert_eq!(layout.key(b"/lb/prod/numbered"), Ok(Key::Numbered(DEFAULT_POOL.into())));
        // An id with a slash is refused, never read as a pool.
        assert!(layout.key(b"/lb/prod/backends/pools/api").is_err());
        assert!(layout.key(b"/lb/prod/pools/api/backends/a/b").unwrap_err().contains("not a backend id"));
        assert!(layout.key(b"/lb/prod/pools/default/backends/b1").unwrap_err().contains("/lb/prod/backends/ID"));
        assert!(layout.key(b"/lb/prod/pools/a b/backends/b1").unwrap_err().contains("not a pool name"));
        for other in
            [&b"/lb/prod/pools/api/notes"[..], b"/lb/prod/pools/api", b"/lb/prod/x", b"/lb/production/backends/b1"]
        {
            assert_eq!(layout.key(other), Ok(Key::Other), "{}", show(other));
        }
    }

    #[test]
    fn a_value_round_trips_and_every_corruption_is_named() {
        let intent = Intent {
            config: BackendConfig { id: Some("b1".into()), ..BackendConfig::new("web.internal", 8080, 3) },
            state: BackendState::Draining,
        };
        assert_eq!(Intent::parse("b1", &intent.value()).unwrap(), intent);
        let https = Intent::parse("b1", br#"{"host": "api.internal", "port": 8443, "scheme": "https"}"#).unwrap();
        assert_eq!(https.config.scheme, crate::config::Scheme::Https);
        assert!(String::from_utf8(https.value()).unwrap().contains(r#""scheme":"https""#));
        assert!(!String::from_utf8(intent.value()).unwrap().contains("scheme"), "http is left out");
        for (value, why) in [
            (&b"{not json"[..], "not JSON"),
            (b"[1, 2]", "not a JSON object"),
            (br#"{"port": 1}"#, "missing field `host`"),
            (br#"{"host": "h"}"#, "missing field `port`"),
            (br#"{"host": "h", "port": 70000}"#, "70000"),
            (br#"{"host": "h", "port": 1, "weight": 0}"#, "weight must be 1-1000000, got 0"),
            (br#"{"host": "", "port": 1}"#, "host must be"),
            (br#"{"host": "h", "port": 1, "state": "up"}"#, "state must be"),
            (br#"{"host": "h", "port": 1, "colour": "red"}"#, "unknown field `colour`"),
            (br#"{"host": "h", "port": 1, "id": "b2"}"#, "differs from the key's 'b1'"),
        ] {
            let error = Intent::parse("b1", value).unwrap_err();
            assert!(error.contains(why), "{}: {error}", String::from_utf8_lossy(value));
        }
    }
}
