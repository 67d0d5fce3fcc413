//! A route as written in the config file's `routes` list. Serde types only: checked and built
//! into a [`Route`](super::Route) by [`RouteTable::build`](super::RouteTable::build).

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::action::{HeaderEdits, Overrides, Redirect, Respond, SplitShare};

/// One entry of `routes`.
///
/// ```
/// let route: lb_sync::routing::RouteConfig = serde_json::from_str(
///     r#"{"name": "api", "host": "api.example.com", "path_prefix": "/v1", "pool": "api"}"#,
/// ).unwrap();
/// assert_eq!((route.host, route.pool.as_deref()), (vec!["api.example.com".to_string()], Some("api")));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique, `[A-Za-z0-9_.-]+`: how errors, logs and metrics name the route.
    pub name: String,
    /// Host names (a string or a list): `api.example.com` or `*.example.com`; empty: any.
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<String>,
    /// This path exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// This path and below, on segment boundaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// A regex the whole path matches (anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Methods (exact, case-sensitive); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header name → `true` (present), a string (exact value) or `{"regex": "..."}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderMatchConfig>,
    /// Query parameter → `true` (present) or a string (equal, percent-decoded).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, QueryMatchConfig>,
    /// Breaks a tie between equally specific routes: higher wins. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Action: send to this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Action: split across pools by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<SplitShare>>,
    /// Action: redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Action: answer at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<Respond>,
    /// Upstream path: this prefix removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Upstream path: this prefix added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_prefix: Option<String>,
    /// Upstream path: the route's `path_prefix` replaced by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix: Option<String>,
    /// Fields set, added and removed on the request sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderEdits>,
    /// Fields set, added and removed on the answer sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderEdits>,
    // Top-level settings replaced for this route's requests, under the same names (serde's
    // flatten cannot go with deny_unknown_fields).
    /// `request_timeout` for this route, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<f64>,
    /// `connect_timeout` for this route, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<f64>,
    /// `max_tries` for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tries: Option<usize>,
    /// Requests per second through this route, all clients together (as the top-level `rate_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    /// `rate_limit_burst` of the route's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<u32>,
    /// Requests per second through this route, per client (as `client_rate_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_rate_limit: Option<f64>,
    /// `client_rate_limit_burst` of the route's per-client limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_rate_limit_burst: Option<u32>,
}

impl RouteConfig {
    /// The per-route settings it sets.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            max_tries: self.max_tries,
            rate_limit: self.rate_limit,
            rate_limit_burst: self.rate_limit_burst,
            client_rate_limit: self.client_rate_limit,
            client_rate_limit_burst: self.client_rate_limit_burst,
        }
    }
}

/// A header matcher as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderMatchConfig {
    /// `true`.
    Present,
    /// `"value"`.
    Exact(String),
    /// `{"regex": "..."}`.
    Regex(String),
}

/// A query matcher as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryMatchConfig {
    /// `true`.
    Present,
    /// `"value"`.
    Equals(String),
}

impl<'de> Deserialize<'de> for HeaderMatchConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Bool(true) => Ok(HeaderMatchConfig::Present),
            Value::String(value) => Ok(HeaderMatchConfig::Exact(value)),
            Value::Object(map) if map.len() == 1 && map.get("regex").is_some_and(Value::is_string) => {
                Ok(HeaderMatchConfig::Regex(map["regex"].as_str().unwrap_or_default().to_string()))
            }
            other => Err(D::Error::custom(format!(
                "a header matcher is true (present), a string (the exact value) or {{\"regex\": \"...\"}}, got {other}"
            ))),
        }
    }
}

impl Serialize for HeaderMatchConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HeaderMatchConfig::Present => serializer.serialize_bool(true),
            HeaderMatchConfig::Exact(value) => serializer.serialize_str(value),
            HeaderMatchConfig::Regex(regex) => BTreeMap::from([("regex", regex)]).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for QueryMatchConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Bool(true) => Ok(QueryMatchConfig::Present),
            Value::String(value) => Ok(QueryMatchConfig::Equals(value)),
            other => {
                Err(D::Error::custom(format!("a query matcher is true (present) or a string (the value), got {other}")))
            }
        }
    }
}

impl Serialize for QueryMatchConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            QueryMatchConfig::Present => serializer.serialize_bool(true),
            QueryMatchConfig::Equals(value) => serializer.serialize_str(value),
        }
    }
}

/// `"a"` or `["a", "b"]`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(one) => Ok(vec![one]),
        Value::Array(many) => many
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(D::Error::custom(format!("host must be a string or a list of strings, got {other}"))),
            })
            .collect(),
        other => Err(D::Error::custom(format!("host must be a string or a list of strings, got {other}"))),
    }
}

/// Reads the `routes` list so that an error names the route it is in (serde alone would say
/// only "unknown field `hots`" and a line): `route 'api': unknown field ...`.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct File {
///     #[serde(deserialize_with = "lb_sync::routing::deserialize_routes")]
///     routes: Vec<lb_sync::routing::RouteConfig>,
/// }
/// let error = serde_json::from_str::<File>(r#"{"routes": [{"name": "api", "hots": "x", "pool": "a"}]}"#)
///     .err().unwrap().to_string();
/// assert!(error.starts_with("route 'api': unknown field `hots`"), "{error}");
/// ```
pub fn deserialize_routes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RouteConfig>, D::Error> {
    let entries = Vec::<Value>::deserialize(deserializer)?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let label = match entry.get("name").and_then(Value::as_str) {
                Some(name) => format!("route '{name}'"),
                None => format!("route #{}", i + 1),
            };
            serde_json::from_value::<RouteConfig>(entry).map_err(|e| D::Error::custom(format!("{label}: {e}")))
        })
        .collect()
}
