//! The balancer's configuration: every setting with its default, in one place. Read from a JSON
//! file (`--config`), overridden by command-line flags.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::server::{BodyBuffering, Limits, PathRules};
use crate::traffic::sticky::is_valid_cookie_name;
use crate::traffic::{RateLimitConfig, StickyCookie};

mod pools;
mod ranges;
mod registry_url;
pub use pools::{is_valid_pool_name, DEFAULT_POOL};
mod routes;
mod settings;
pub(crate) use ranges::of as range_of;
pub use ranges::{Range, Unit};
pub use registry_url::RegistryUrl;
pub use settings::{
    BreakerSettings, ClientLimits, Config, ConfigFile, HealthSettings, ListenerSettings, Operations, PoolConfig,
    PoolSettings, Setting, SettingInfo, TlsSettings, FLAGS, POOL_SETTINGS, RANGES, SETTINGS, SHOWN_AS,
};

/// One backend as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Stable name (`backend1`...); ip_hash hashes it, `/lb/backends/{id}` addresses it.
    /// Default: `backend<N>` by position, as the seed numbers them.
    #[serde(default)]
    pub id: Option<String>,
    /// Host name or address. `localhost` is resolved once, IPv4 first.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Relative share of traffic (weighted algorithms). Default 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// `http` (default) or `https`: requests and health checks go over TLS, the certificate
    /// verified for `host` (sent as SNI) against the system roots or `upstream_ca`. Left out of
    /// the JSON when `http`.
    #[serde(default, skip_serializing_if = "Scheme::is_http")]
    pub scheme: Scheme,
}

fn one() -> u32 {
    1
}

/// How lb-sync talks to a backend: plain HTTP/1.1, or HTTP/1.1 over TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP (the default).
    #[default]
    Http,
    /// HTTPS: TLS with certificate verification.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// Whether it is plain HTTP.
    pub fn is_http(&self) -> bool {
        *self == Scheme::Http
    }

    /// The port a URL of this scheme means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl BackendConfig {
    /// A backend from host, port and weight, with the default id.
    ///
    /// ```
    /// let b = lb_sync::config::BackendConfig::new("localhost", 8001, 2);
    /// assert_eq!((b.port, b.weight, b.id), (8001, 2, None));
    /// ```
    pub fn new(host: &str, port: u16, weight: u32) -> BackendConfig {
        BackendConfig { id: None, host: host.to_string(), port, weight, scheme: Scheme::Http }
    }

    /// Parses `[ID=][http://|https://]HOST[:PORT][:WEIGHT]`, the form of `--backend`: the port
    /// may be left out only after a scheme (80, 443), as in a URL; a path may not follow.
    ///
    /// ```
    /// use lb_sync::config::{BackendConfig, Scheme};
    /// let b = BackendConfig::parse("api=localhost:8001:3").unwrap();
    /// assert_eq!((b.id.as_deref(), b.host.as_str(), b.port, b.weight), (Some("api"), "localhost", 8001, 3));
    /// let b = BackendConfig::parse("https://api.example.com").unwrap();
    /// assert_eq!((b.scheme, b.host.as_str(), b.port), (Scheme::Https, "api.example.com", 443));
    /// assert!(BackendConfig::parse("localhost").is_err());
    /// assert!(BackendConfig::parse("https://example.com/api").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<BackendConfig, String> {
        let (id, rest) = match text.split_once('=') {
            Some((id, rest)) if !id.is_empty() && !id.contains("://") => (Some(id.to_string()), rest),
            Some(("", _)) => return Err(format!("backend '{text}': empty id before '='")),
            _ => (None, text),
        };
        let (scheme, rest) = match rest.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (Some(Scheme::Http), rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (Some(Scheme::Https), rest),
            Some((scheme, _)) => return Err(format!("backend '{text}': scheme '{scheme}' is not http or https")),
            None => (None, rest),
        };
        // A URL copied with its trailing slash means the same; any other path is not supported
        // (requests keep their own path).
        let rest = if scheme.is_some() { rest.strip_suffix('/').unwrap_or(rest) } else { rest };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!("backend '{text}': expected [ID=][http[s]://]HOST:PORT[:WEIGHT], without a path"));
        }
        match scheme {
            Some(scheme) if !has_port(rest) => {
                let host = rest.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(rest);
                if host.is_empty() {
                    return Err(format!("backend '{text}': no host"));
                }
                Ok(BackendConfig { id, host: host.to_string(), port: scheme.default_port(), weight: 1, scheme })
            }
            _ => Ok(BackendConfig { id, scheme: scheme.unwrap_or_default(), ..parse_host_port(text, rest)? }),
        }
    }

    /// `host:port`, or `https://host:port` for an HTTPS backend (`[v6]` in brackets): how logs
    /// and the ready line name it.
    ///
    /// ```
    /// use lb_sync::config::BackendConfig;
    /// assert_eq!(BackendConfig::new("::1", 8001, 1).address(), "[::1]:8001");
    /// assert_eq!(BackendConfig::parse("https://localhost:8443").unwrap().address(), "https://localhost:8443");
    /// ```
    pub fn address(&self) -> String {
        display_address(self.scheme, &self.host, self.port)
    }
}

/// `host:port` (`[v6]:port`), with `https://` before it for an HTTPS backend.
pub fn display_address(scheme: Scheme, host: &str, port: u16) -> String {
    let prefix = if scheme.is_http() { "" } else { "https://" };
    if host.contains(':') {
        format!("{prefix}[{host}]:{port}")
    } else {
        format!("{prefix}{host}:{port}")
    }
}

/// Whether `HOST[:PORT]` (after a scheme) names a port: a colon after the host (after the
/// brackets of an IPv6 literal).
fn has_port(rest: &str) -> bool {
    match rest.strip_prefix('[') {
        Some(v6) => v6.split_once(']').is_some_and(|(_, tail)| tail.starts_with(':')),
        None => rest.contains(':'),
    }
}

/// `HOST:PORT[:WEIGHT]` (`[v6]:PORT[:WEIGHT]`) as an HTTP backend with no id; `text` is the
/// whole argument, for errors.
fn parse_host_port(text: &str, rest: &str) -> Result<BackendConfig, String> {
    let (host, tail) = if let Some(stripped) = rest.strip_prefix('[') {
        let (host, tail) = stripped.split_once(']').ok_or(format!("backend '{text}': unclosed '['"))?;
        (host, tail.strip_prefix(':').unwrap_or(tail))
    } else {
        rest.split_once(':').ok_or(format!("backend '{text}': expected HOST:PORT[:WEIGHT]"))?
    };
    let mut parts = tail.split(':');
    let port = parts
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != 0)
        .ok_or(format!("backend '{text}': port must be 1-65535"))?;
    let weight = match parts.next() {
        None => 1,
        Some(w) => w
            .parse::<u32>()
            .ok()
            .filter(|&w| w >= 1)
            .ok_or(format!("backend '{text}': weight must be a whole number >= 1"))?,
    };
    if parts.next().is_some() || host.is_empty() {
        return Err(format!("backend '{text}': expected [ID=][http[s]://]HOST:PORT[:WEIGHT]"));
    }
    Ok(BackendConfig::new(host, port, weight))
}

/// A certificate served on the HTTPS listener to clients whose SNI names one of its DNS names
/// (a `tls_sni_certificates` entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificateFiles {
    /// The PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its PEM private key. Default: the `cert` file itself (a combined PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// Whether `id` may name a backend: 1-64 characters of `[A-Za-z0-9._~-]` (RFC 3986's
/// unreserved set), so it goes in a URL path as it is.
///
/// ```
/// use lb_sync::config::is_valid_id;
/// assert!(is_valid_id("backend-1.eu_west~2"));
/// assert!(!is_valid_id("a/b") && !is_valid_id("") && !is_valid_id("é") && !is_valid_id("a b"));
/// ```
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
}

/// Which requests may go on an idle backend connection another client's request used before
/// (HAProxy's `http-reuse`).
///
/// ```
/// use lb_sync::config::UpstreamReuse;
/// assert_eq!("always".parse::<UpstreamReuse>(), Ok(UpstreamReuse::Always));
/// assert_eq!(UpstreamReuse::default(), UpstreamReuse::Safe);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamReuse {
    /// The first request of each client connection goes on a backend connection of its own;
    /// only later ones reuse idle connections (HAProxy's default, `safe`). A backend that writes
    /// an answer nobody asked for can then mislead no client but the one whose connection it
    /// answered before.
    #[default]
    Safe,
    /// Every request may reuse an idle connection (nginx's upstream `keepalive`, HAProxy's
    /// `always`): one new backend connection fewer per new client connection.
    Always,
}

impl std::str::FromStr for UpstreamReuse {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "safe" => Ok(UpstreamReuse::Safe),
            "always" => Ok(UpstreamReuse::Always),
            other => Err(format!("unknown upstream_reuse '{other}' (safe, always)")),
        }
    }
}

/// Whether `text` is an RFC 9110 token (a protocol or field name).
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The seed's default backends.
pub fn seed_backends() -> Vec<BackendConfig> {
    vec![
        BackendConfig { id: Some("backend1".into()), ..BackendConfig::new("localhost", 8001, 1) },
        BackendConfig { id: Some("backend2".into()), ..BackendConfig::new("localhost", 8002, 2) },
        BackendConfig { id: Some("backend3".into()), ..BackendConfig::new("localhost", 8003, 1) },
    ]
}

/// Why a configuration was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        error: io::Error,
    },
    /// The file is not valid JSON, has an unknown key or a value of the wrong type.
    Malformed {
        /// The file.
        path: String,
        /// What serde said, with line and column.
        error: serde_json::Error,
    },
    /// A value that parses but makes no sense.
    Invalid {
        /// The key (or keys) at fault.
        key: &'static str,
        /// What is wrong, naming the key and the valid range.
        why: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Unreadable { path, error } => write!(f, "cannot read config file {path}: {error}"),
            ConfigError::Malformed { path, error } => write!(f, "config file {path}: {error}"),
            ConfigError::Invalid { why, .. } => f.write_str(why),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The highest rate (requests per second) a limit may have: one request a nanosecond, the
/// token bucket's resolution.
const MAX_RATE: f64 = 1e9;
/// The largest burst: far above any real one, and far from the bucket's arithmetic limits.
const MAX_BURST: u32 = 100_000_000;
/// The most clients the per-client limit may track (about 100 bytes each: 1 GB).
const MAX_TRACKED_CLIENTS: usize = 10_000_000;

fn invalid(key: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, why: why.into() }
}

impl ConfigFile {
    /// Reads a JSON config file and checks it; unknown keys are errors (a typo must not be
    /// ignored).
    pub fn from_file(path: &str) -> Result<ConfigFile, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| ConfigError::Unreadable { path: path.into(), error })?;
        let config: ConfigFile =
            serde_json::from_str(&text).map_err(|error| ConfigError::Malformed { path: path.into(), error })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    ///
    /// ```
    /// let file = lb_sync::config::ConfigFile { threads: 0, ..Default::default() };
    /// assert_eq!(file.validate().unwrap_err().to_string(), "threads must be 1-10000, got 0");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_ranges()?;
        self.check_weights()?;
        if !self.health_check_path.starts_with('/') {
            let why = format!("health_check_path must start with '/', got '{}'", self.health_check_path);
            return Err(invalid("health_check_path", why));
        }
        self.expected_health_status()?;
        if !self.admin_prefix.starts_with('/') || self.admin_prefix.len() < 2 || self.admin_prefix.ends_with('/') {
            return Err(invalid(
                "admin_prefix",
                format!("admin_prefix must look like /lb, got '{}'", self.admin_prefix),
            ));
        }
        self.validate_traffic()?;
        if self.registry.is_some() && self.state_file.is_some() {
            let why = "state_file and registry cannot both be set: the registry keeps the runtime changes";
            return Err(invalid("state_file", why));
        }
        self.validate_tls()?;
        if self.admin_token.as_deref().is_some_and(|t| t.trim().is_empty() || t.trim() != t) {
            return Err(invalid("admin_token", "admin_token must be non-empty, without surrounding spaces"));
        }
        routes::check(self)?;
        if let Some(id) = self.backend_ids().into_iter().find(|id| !is_valid_id(id)) {
            let why = format!("backend id '{id}' is not allowed: use 1-64 of A-Z a-z 0-9 . _ ~ -");
            return Err(invalid("backends", why));
        }
        let mut ids: Vec<String> = self.backend_ids();
        ids.sort();
        if let Some(pair) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid("backends", format!("backend id '{}' is used twice", pair[0])));
        }
        self.validate_pools()
    }

    /// The TLS listener's settings: a port and a certificate go together.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let files_set = self.tls_cert.is_some() || self.tls_key.is_some() || !self.tls_sni_certificates.is_empty();
        match self.tls_port {
            Some(_) if self.tls_cert.is_none() => {
                Err(invalid("tls_cert", "tls_port is set but tls_cert is not: the HTTPS listener needs a certificate"))
            }
            Some(port) if port != 0 && port == self.port => {
                Err(invalid("tls_port", format!("tls_port must differ from port, both are {port}")))
            }
            None if files_set => {
                Err(invalid("tls_port", "tls_cert, tls_key or tls_sni_certificates set without tls_port"))
            }
            _ => Ok(()),
        }
    }

    /// The rate-limit and sticky-session settings.
    fn validate_traffic(&self) -> Result<(), ConfigError> {
        let limits = [
            ("rate_limit", self.rate_limit, "rate_limit_burst", self.rate_limit_burst),
            ("client_rate_limit", self.client_rate_limit, "client_rate_limit_burst", self.client_rate_limit_burst),
        ];
        for (rate_key, rate, burst_key, burst) in limits {
            if !rate.is_finite() || !(0.0..=MAX_RATE).contains(&rate) {
                let why = format!("{rate_key} must be a number of requests per second 0-{MAX_RATE}, got {rate}");
                return Err(invalid(rate_key, why));
            }
            if burst > MAX_BURST {
                return Err(invalid(burst_key, format!("{burst_key} must be 0-{MAX_BURST}, got {burst}")));
            }
            if burst > 0 && rate == 0.0 {
                // A burst without a rate limits nothing: most likely the rate was forgotten.
                let why = format!("{burst_key} is {burst} but {rate_key} is 0 (off): set {rate_key} too");
                return Err(invalid(burst_key, why));
            }
        }
        if !(1..=MAX_TRACKED_CLIENTS).contains(&self.rate_limit_max_clients) {
            let why =
                format!("rate_limit_max_clients must be 1-{MAX_TRACKED_CLIENTS}, got {}", self.rate_limit_max_clients);
            return Err(invalid("rate_limit_max_clients", why));
        }
        if let Some(protocol) = self.upgrade_protocols.iter().find(|p| !is_token(p)) {
            let why = format!(
                "upgrade_protocols must list protocol names (letters, digits, !#$%&'*+-.^_`|~), got '{protocol}'"
            );
            return Err(invalid("upgrade_protocols", why));
        }
        if let Some(name) = &self.sticky_cookie {
            if !is_valid_cookie_name(name) {
                let why =
                    format!("sticky_cookie must be a cookie name (letters, digits, !#$%&'*+-.^_`|~), got '{name}'");
                return Err(invalid("sticky_cookie", why));
            }
        }
        match (&self.sticky_secret, &self.sticky_cookie) {
            (Some(secret), _) if secret.is_empty() => Err(invalid("sticky_secret", "sticky_secret must not be empty")),
            (Some(_), None) => Err(invalid("sticky_secret", "sticky_secret is set but sticky_cookie is not")),
            _ => Ok(()),
        }
    }

    /// The `health_check_status` range.
    pub fn expected_health_status(&self) -> Result<std::ops::RangeInclusive<u16>, ConfigError> {
        health_status_range(&self.health_check_status)
    }

    /// The id of each backend: configured, or `backend<N>` by position.
    pub fn backend_ids(&self) -> Vec<String> {
        backend_ids(&self.backends)
    }

    /// Each backend's weight against its range.
    fn check_weights(&self) -> Result<(), ConfigError> {
        let weight = ranges::of("weight");
        for backend in &self.backends {
            if !weight.contains(f64::from(backend.weight)) {
                let why = format!(
                    "backend {}:{}: weight must be {}, got {}",
                    backend.host,
                    backend.port,
                    weight.describe(),
                    backend.weight
                );
                return Err(invalid("backends", why));
            }
        }
        Ok(())
    }
}

/// `LOW-HIGH` as a range of statuses (`health_check_status`).
fn health_status_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, ConfigError> {
    let text = text.trim();
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
        (Ok(low), Ok(high)) if (100..=599).contains(&low) && (low..=599).contains(&high) => Ok(low..=high),
        _ => Err(invalid("health_check_status", format!("health_check_status must look like 200-399, got '{text}'"))),
    }
}

/// The id of each backend: configured, or `backend<N>` by position.
fn backend_ids(backends: &[BackendConfig]) -> Vec<String> {
    backends.iter().enumerate().map(|(i, b)| b.id.clone().unwrap_or_else(|| format!("backend{}", i + 1))).collect()
}

impl Config {
    /// Reads a JSON config file and checks it ([`ConfigFile::from_file`]).
    pub fn from_file(path: &str) -> Result<Config, ConfigError> {
        Config::try_from(ConfigFile::from_file(path)?)
    }

    /// Checks values that parse but make no sense, as the file's ([`ConfigFile::validate`]).
    ///
    /// ```
    /// let mut config = lb_sync::config::Config::default();
    /// config.listener.threads = 0;
    /// assert_eq!(config.validate().unwrap_err().to_string(), "threads must be 1-10000, got 0");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigFile::from(self).validate()
    }

    /// The `health_check_status` range.
    pub fn expected_health_status(&self) -> Result<std::ops::RangeInclusive<u16>, ConfigError> {
        health_status_range(&self.health.status)
    }

    /// The id of each backend: configured, or `backend<N>` by position.
    pub fn backend_ids(&self) -> Vec<String> {
        backend_ids(&self.backends)
    }

    /// The HTTPS listener's (certificate, key) files, the default first; empty without
    /// `tls_port`. A missing key file is the certificate's own.
    ///
    /// ```
    /// use lb_sync::config::{Config, ConfigFile};
    /// let config = Config::try_from(ConfigFile { tls_port: Some(8443), tls_cert: Some("site.pem".into()), ..Default::default() }).unwrap();
    /// assert_eq!(config.tls_files(), [("site.pem".into(), "site.pem".into())]);
    /// ```
    pub fn tls_files(&self) -> Vec<(PathBuf, PathBuf)> {
        let (Some(_), Some(cert)) = (self.tls.port, &self.tls.cert) else { return Vec::new() };
        let pair = |cert: &PathBuf, key: &Option<PathBuf>| (cert.clone(), key.clone().unwrap_or_else(|| cert.clone()));
        std::iter::once(pair(cert, &self.tls.key))
            .chain(self.tls.sni_certificates.iter().map(|c| pair(&c.cert, &c.key)))
            .collect()
    }

    /// The rate-limit settings as [`RateLimitConfig`]; both limits off by default.
    ///
    /// ```
    /// use lb_sync::config::{Config, ConfigFile};
    /// let config = Config::try_from(ConfigFile { client_rate_limit: 20.0, ..Default::default() }).unwrap();
    /// let limits = config.rate_limits();
    /// assert_eq!((limits.rate, limits.client_rate, limits.effective_client_burst()), (0.0, 20.0, 20));
    /// ```
    pub fn rate_limits(&self) -> RateLimitConfig {
        RateLimitConfig {
            rate: self.client_limits.rate_limit,
            burst: self.client_limits.rate_limit_burst,
            client_rate: self.client_limits.client_rate_limit,
            client_burst: self.client_limits.client_rate_limit_burst,
            max_clients: self.client_limits.rate_limit_max_clients,
        }
    }

    /// The sticky-session cookie, when `sticky_cookie` is set (call [`validate`](Self::validate)
    /// first: an invalid name panics here).
    ///
    /// ```
    /// use lb_sync::config::{Config, ConfigFile};
    /// let config = Config::try_from(ConfigFile { sticky_cookie: Some("SRV".into()), session_timeout: 60, ..Default::default() }).unwrap();
    /// assert_eq!(config.sticky_sessions().unwrap().set_cookie("t"), "SRV=t; Max-Age=60; Path=/; HttpOnly");
    /// assert!(Config::default().sticky_sessions().is_none());
    /// ```
    pub fn sticky_sessions(&self) -> Option<StickyCookie> {
        let max_age = self.pool.session_timeout;
        self.pool
            .sticky_cookie
            .as_deref()
            .map(|name| StickyCookie::new(name, self.pool.sticky_secret.as_deref(), max_age))
    }

    /// The pollers in force (`pollers`, or one per CPU this process may run on, at most 16).
    ///
    /// ```
    /// use lb_sync::config::{Config, ConfigFile};
    /// let config = Config::try_from(ConfigFile { pollers: Some(3), ..Default::default() }).unwrap();
    /// assert_eq!(config.pollers(), 3);
    /// assert_eq!(Config::default().pollers(), lb_sync::server::default_pollers());
    /// ```
    pub fn pollers(&self) -> usize {
        self.listener.pollers.unwrap_or_else(crate::server::default_pollers)
    }

    /// The per-backend connection cap in force (`backend_max_connections`, or three quarters of
    /// the workers).
    ///
    /// ```
    /// use lb_sync::config::{Config, ConfigFile};
    /// let config = Config::try_from(ConfigFile { threads: 8, ..Default::default() }).unwrap();
    /// assert_eq!(config.backend_connection_cap(), 6);
    /// ```
    pub fn backend_connection_cap(&self) -> usize {
        self.pool.backend_max_connections.unwrap_or((self.listener.threads * 3 / 4).max(1))
    }

    /// The workers one client may have at once (`client_max_workers`, or half of them; 0 = no
    /// share).
    ///
    /// ```
    /// use lb_sync::config::{Config, ConfigFile};
    /// let config = Config::try_from(ConfigFile { threads: 8, ..Default::default() }).unwrap();
    /// assert_eq!(config.client_share_in_force(), 4);
    /// ```
    pub fn client_share_in_force(&self) -> usize {
        self.client_limits.client_max_workers.unwrap_or((self.listener.threads / 2).max(1))
    }

    /// Idle connections kept to each backend (`upstream_keepalive`, or one per worker).
    ///
    /// ```
    /// use lb_sync::config::{Config, ConfigFile};
    /// let config = Config::try_from(ConfigFile { threads: 8, ..Default::default() }).unwrap();
    /// assert_eq!(config.upstream_keepalive_in_force(), 8);
    /// ```
    pub fn upstream_keepalive_in_force(&self) -> usize {
        self.pool.upstream_keepalive.unwrap_or(self.listener.threads)
    }

    /// How request bodies are buffered, from this configuration.
    pub fn body_buffering(&self) -> BodyBuffering {
        let default = BodyBuffering::default();
        BodyBuffering {
            memory_threshold: self.listener.client_body_buffer_size,
            memory_cap: self.listener.client_body_memory_cap,
            disk_cap: self.listener.client_body_temp_cap,
            disk_free_share: self.listener.client_body_temp_free_share,
            client_disk_share: self.client_limits.client_body_temp_client_share,
            temp_dir: self.listener.client_body_temp_path.clone().unwrap_or(default.temp_dir),
            request_buffering: self.listener.request_buffering,
            min_upload_rate: self.client_limits.request_body_min_rate,
        }
    }

    /// The front end's limits from this configuration.
    pub fn limits(&self) -> Limits {
        Limits {
            head_timeout: self.listener.client_header_timeout,
            handshake_timeout: self.tls.handshake_timeout,
            keep_alive_timeout: self.listener.keep_alive_timeout,
            io_timeout: self.listener.client_io_timeout,
            max_body_bytes: self.client_limits.max_body_bytes,
            max_connections: self.listener.max_connections,
            client_max_workers: self.client_share_in_force(),
            client_max_in_flight: self.client_limits.client_max_in_flight,
            paths: PathRules {
                merge_slashes: self.listener.merge_slashes,
                allow_encoded_slashes: self.listener.allow_encoded_slashes,
            },
            ..Limits::default()
        }
    }
}
