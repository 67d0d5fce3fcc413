//! The balancer's configuration: every setting with its default, in one place. Read from a JSON
//! file (`--config`), overridden by command-line flags.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balance::AlgorithmKind;
use crate::client_ip::Cidr;
use crate::logging::AccessFormat;
use crate::routing::RouteConfig;
use crate::server::{BodyBuffering, Limits, PathRules};
use crate::traffic::sticky::is_valid_cookie_name;
use crate::traffic::{ClientLimiter, RateLimitConfig, StickyCookie};

mod pools;
mod ranges;
mod registry_url;
pub use pools::{is_valid_pool_name, PoolConfig, DEFAULT_POOL, POOL_SETTINGS};
mod routes;
pub(crate) use ranges::of as range_of;
pub use ranges::{Range, Unit, RANGES};
pub use registry_url::RegistryUrl;

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

/// Everything the balancer needs to run. Field names are the config-file keys.
///
/// ```
/// let config: lb_sync::config::Config = serde_json::from_str(r#"{"port": 9090, "algorithm": "ip_hash"}"#).unwrap();
/// assert_eq!(config.port, 9090);
/// assert_eq!(config.backends.len(), 3, "the seed's three backends by default");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `0.0.0.0` (the seed's).
    pub host: IpAddr,
    /// Port to listen on. Default 8080.
    pub port: u16,
    /// Selection algorithm. Default `round_robin` (the seed's).
    pub algorithm: AlgorithmKind,
    /// Forwarding worker threads: each in-flight request holds one while its backend works
    /// (never while a client sends or reads: the poller does that). A worker costs a small
    /// stack, so the default is generous: 256 (Apache's event MPM defaults to 400), and 100
    /// slow backend requests in flight delay nobody else.
    pub threads: usize,
    /// The backends. Default: the seed's `localhost:8001` (weight 1), `:8002` (2), `:8003` (1).
    pub backends: Vec<BackendConfig>,
    /// Named pools of backends, each with the pool-level settings it changes (see
    /// [`PoolConfig`]); the top-level `backends` and settings are the pool `default`. Default
    /// none. Left out of the JSON when empty.
    #[serde(deserialize_with = "pools::by_name", skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, PoolConfig>,
    /// PEM file of the certificate authorities that HTTPS backends' certificates are verified
    /// against (nginx's `proxy_ssl_trusted_certificate`), read at start and on each reload.
    /// Default unset: the system roots (Mozilla's, built in).
    pub upstream_ca: Option<PathBuf>,
    /// Seconds between active health checks of a backend (±10 % jitter). Default 30 (the
    /// seed's). 0 turns active checks off.
    pub health_check_interval: f64,
    /// Seconds between health checks of a backend not known to be up: not probed yet, down, a
    /// failed probe since its last verdict, its breaker open or half-open, or traffic could not
    /// connect to it since its last probe (then the next probe is at most this long after the
    /// previous one, so at once after a quiet spell). Default 1 (HAProxy's `fastinter` and
    /// `downinter` in one); never slower than `health_check_interval`.
    pub health_check_fast_interval: f64,
    /// Path of the health check (`GET`). Default `/health` (what lb-backend answers).
    pub health_check_path: String,
    /// Seconds a health probe may take (connect and status line). Default 2.
    pub health_check_timeout: f64,
    /// Good probes in a row that bring a down backend back. Default 2 (HAProxy's `rise`).
    pub health_check_rise: u32,
    /// Failed probes in a row that take an up backend down. Default 3 (HAProxy's `fall`).
    pub health_check_fall: u32,
    /// Statuses a probe accepts as healthy, `LOW-HIGH`. Default `200-399` (HAProxy's).
    pub health_check_status: String,
    /// Seconds a backend may take to answer (and between body reads), then `504`. Default 30.
    pub request_timeout: f64,
    /// Seconds to connect to a backend before trying the next. Default 5.
    pub connect_timeout: f64,
    /// Most backends tried for one request (1 = no retry). Default 3.
    pub max_tries: usize,
    /// Retries allowed as a share of recent requests (over 10 s windows). Default 0.2 (Envoy's
    /// retry budget of 20 %).
    pub retry_budget_ratio: f64,
    /// Retries always allowed per window, whatever the ratio. Default 10.
    pub retry_budget_min: u64,
    /// An idempotent request whose body is larger than this is not sent again after it reached
    /// a backend (every body is buffered, so this bounds the upload a retry repeats); a request
    /// that never left (connection refused) is always retried. Default 64 KiB.
    pub retry_body_max_bytes: u64,
    /// Consecutive failures (connect errors, timeouts; 5xx with `breaker_on_5xx`) that open a
    /// backend's circuit breaker. Default 5.
    pub breaker_consecutive_failures: u32,
    /// Failure ratio over a 10 s window that opens it, after 20 requests. Default 0.5.
    pub breaker_failure_ratio: f64,
    /// Seconds a breaker stays open after its first trip; doubles on each failed trial, up to
    /// 60 s. Default 5.
    pub breaker_cooldown: f64,
    /// Trial requests a half-open breaker lets through; all must succeed to close it. Default 3.
    pub breaker_half_open_trials: u32,
    /// Count backend 5xx answers as breaker failures. Default false (a 500 is still an answer).
    pub breaker_on_5xx: bool,
    /// Seconds over which a recovered backend's share ramps from 10 % to 100 %. Default 10;
    /// 0 turns slow start off.
    pub slow_start: f64,
    /// When no backend is usable, try every enabled one anyway instead of answering `503`
    /// (Envoy's panic mode). Default false.
    pub panic_mode: bool,
    /// Seconds over which a backend's response-time estimate decays (peak_ewma): about how far
    /// back its answers count, and how soon a backend avoided for being slow is tried again.
    /// Default 10 (Finagle's and Linkerd's).
    pub peak_ewma_window: f64,
    /// Log one line per request. Default true (the seed's).
    pub access_log: bool,
    /// `combined` (nginx's, plus upstream address, upstream time, request time and request id)
    /// or `json`. Default `combined`.
    pub access_log_format: AccessFormat,
    /// Where access-log lines go. Default: stderr.
    pub access_log_file: Option<PathBuf>,
    /// Where the process's other log lines go (startup, health and breaker changes, warnings).
    /// Default: stderr.
    pub log_file: Option<PathBuf>,
    /// Seconds a sticky session lasts: the `Max-Age` of the sticky cookie, counted from when it
    /// was set. Default 3600 (the seed's); 0 makes it a browser-session cookie (no `Max-Age`).
    pub session_timeout: u64,
    /// Requests per second for all clients together; over it, `429`. Default 0: off.
    pub rate_limit: f64,
    /// Requests the global limit admits at once. Default 0: one second's worth,
    /// `max(1, ceil(rate_limit))`.
    pub rate_limit_burst: u32,
    /// Requests per second for each client address (the address ip_hash uses: the peer, or
    /// what a trusted proxy says). Default 0: off.
    pub client_rate_limit: f64,
    /// Requests each client's bucket admits at once. Default 0: `max(1, ceil(client_rate_limit))`.
    pub client_rate_limit_burst: u32,
    /// Most client addresses the per-client limit tracks at once; beyond it the least recently
    /// seen are forgotten. Default 100 000 (about 10 MB when full).
    pub rate_limit_max_clients: usize,
    /// Name of the sticky-session cookie; set, it turns sticky sessions on for every
    /// algorithm. Default unset: off.
    pub sticky_cookie: Option<String>,
    /// Key of the sticky cookie's HMAC: with it, a client cannot forge a cookie that picks its
    /// backend. Default unset (a fixed public key: opaque, not unforgeable).
    pub sticky_secret: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs). Default loopback only.
    pub trusted_proxies: Vec<Cidr>,
    /// Whether request header fields with `_` in their names are forwarded (nginx's
    /// `underscores_in_headers`). Default false: they are dropped, because a CGI or WSGI
    /// backend reads `X_Real_IP` as the `X-Real-IP` the proxy sets. Even when true, the
    /// underscore spellings of the fields the proxy sets itself are dropped.
    pub underscores_in_headers: bool,
    /// Whether each run of `/` in a request path is merged into one before the path is matched
    /// and forwarded (nginx's `merge_slashes`). Default true: `//lb/backends` is the admin path
    /// it looks like to a backend that merges them.
    pub merge_slashes: bool,
    /// Whether `%2F` and `%5C` may appear inside a path segment (passed on encoded, for APIs
    /// that put encoded names in paths). Default false: `400`, since a backend that decodes
    /// them reads a path other than the one matched.
    pub allow_encoded_slashes: bool,
    /// The protocols an `Upgrade` request may switch to, case-insensitive (Envoy's
    /// `upgrade_configs`). Default `["websocket"]`. Any other `Upgrade` (`h2c` above all) goes
    /// to the backend as a plain request, without `Upgrade`, `HTTP2-Settings` and their
    /// `Connection` options, so it is answered, never tunnelled.
    pub upgrade_protocols: Vec<String>,
    /// Path prefix of the management API. Default `/lb`.
    pub admin_prefix: String,
    /// When set, every caller of the management API must send `Authorization: Bearer <token>`
    /// (loopback peers too); then peers other than loopback may use it. Default unset: only
    /// direct loopback peers, and never a request carrying forwarding headers.
    pub admin_token: Option<String>,
    /// A separate address for the management API (and dashboard). When set, the data port
    /// serves none of it: `/lb/...` is proxied like any path. Default unset.
    pub admin_listen: Option<SocketAddr>,
    /// A JSON file that keeps every runtime change to the backends (add, remove, enable,
    /// disable, weight, drain), written atomically on each change and read back at start, where
    /// it replaces the configured backends. Default unset.
    pub state_file: Option<PathBuf>,
    /// Where several instances share their backends: `etcd://HOST:PORT/PREFIX`. Backends,
    /// weights, enabled and draining live there (loaded at start, followed through etcd's
    /// watch); management API changes are written there first. Default unset: this instance's
    /// table is its own.
    pub registry: Option<RegistryUrl>,
    /// Seconds between re-resolutions of backend host names (HAProxy's `resolvers`); a changed
    /// address is applied like any change of the table, a failed lookup keeps the last one.
    /// Default 30; 0 resolves once, when a backend is added.
    pub dns_refresh_interval: f64,
    /// Requests that may wait for a free worker; more get `503` + `Retry-After`. Default 1024.
    pub queue_capacity: usize,
    /// Most requests one backend is sent at once (HAProxy's per-server `maxconn`), so a
    /// blackholed backend cannot take every worker. A request that finds every candidate at its
    /// cap waits up to `backend_queue_timeout`, then gets `503`. Default: three quarters of
    /// `threads`.
    pub backend_max_connections: Option<usize>,
    /// Seconds a request may wait for a backend connection slot (HAProxy's `timeout queue`).
    /// Default 5.
    pub backend_queue_timeout: f64,
    /// Most workers one client (its address after `trusted_proxies`) has at once; its requests
    /// beyond it wait (never refused) until one of its own is answered, and other clients'
    /// requests go ahead of them. One client with slow requests cannot take every worker.
    /// Default: half of `threads`; 0: off.
    pub client_max_workers: Option<usize>,
    /// Most requests one client may have in process at once: with the workers, waiting for its
    /// share of them, or open tunnels (WebSockets). More get `429` + `Retry-After: 1` (nginx's
    /// `limit_conn`, HAProxy's `sc_conn_cur`). Default 0: off.
    pub client_max_in_flight: usize,
    /// Idle connections kept open to each backend for later requests (nginx's upstream
    /// `keepalive`); beyond it the least recently used is closed, and 0 closes each connection
    /// after its answer. Default: `threads` (every worker can keep one to each backend; the
    /// most recently used is taken first, so the surplus of a burst ages out).
    pub upstream_keepalive: Option<usize>,
    /// Which requests may reuse an idle backend connection: `safe` (default, HAProxy's): a
    /// client connection's first request goes on a backend connection of its own, so a
    /// backend's unasked-for answer on a pooled connection reaches no newcomer; `always`
    /// (nginx's): any request.
    pub upstream_reuse: UpstreamReuse,
    /// Seconds an idle backend connection is kept (nginx's upstream `keepalive_timeout`).
    /// Default 4: under the 5 s keep-alive of common backends (Node's), so a connection is
    /// not reused just as its backend closes it.
    pub upstream_keepalive_timeout: f64,
    /// Largest request body in bytes: `413` above, with a body that says the limit and this key.
    /// Default 1 MiB (nginx's `client_max_body_size`); a service that takes uploads raises it.
    pub max_body_bytes: u64,
    /// Request bodies are read whole by the poller before a worker sees them: in memory up to
    /// this many bytes, larger ones in a temp file (nginx's `client_body_buffer_size`, 16 KiB
    /// there). Default 64 KiB.
    pub client_body_buffer_size: usize,
    /// Bytes of request bodies held in memory by all connections together; past it, bodies go
    /// straight to temp files. Default 64 MiB.
    pub client_body_memory_cap: u64,
    /// Directory of body temp files (nginx's `client_body_temp_path`); each file is unlinked as
    /// soon as it is made. Default: the system temp directory.
    pub client_body_temp_path: Option<std::path::PathBuf>,
    /// Bytes of body temp files of all connections together, however much room the disk has;
    /// the cap in force is this or `client_body_temp_free_share` of the free space, the
    /// smaller (logged at start). Past it, a body is refused with `503` + `Retry-After`.
    /// Default 16 GiB.
    pub client_body_temp_cap: u64,
    /// Share of the temp directory's free space, measured at start, that body temp files may
    /// take together, so that uploads never fill the disk (or, on a tmpfs, the memory).
    /// Default 0.25.
    pub client_body_temp_free_share: f64,
    /// Share of the cap in force that one client's body temp files may take (the client every
    /// per-client limit counts by: the peer, or what a trusted proxy says); past it, its next
    /// body is refused with `429` + `Retry-After` while other clients' go on. Default 0.25; 1
    /// turns it off.
    pub client_body_temp_client_share: f64,
    /// Whether request bodies are read whole before a worker sees them (nginx's
    /// `proxy_request_buffering`). Default true. Off, a body streams to the backend as it
    /// arrives: for uploads that must not wait (or not touch disk), at the price of a worker
    /// held at the client's pace (see `request_body_min_rate`) and no retry on another backend.
    pub request_buffering: bool,
    /// The slowest a client may send a body, buffered or streamed, in bytes per second: it
    /// gets `client_io_timeout` (the grace at its start) plus one second per this many bytes
    /// received, in all, then `408` (Apache's mod_reqtimeout `MinRate`, default 500 there too).
    /// 0: no overall limit. Default 500.
    pub request_body_min_rate: u64,
    /// Most open client connections. Default 10 000.
    pub max_connections: usize,
    /// Seconds for a client to send a complete request head (`408` after). Default 10.
    pub client_header_timeout: u64,
    /// Seconds an idle keep-alive client connection is kept. Default 60.
    pub keep_alive_timeout: u64,
    /// Seconds without progress reading a client body or writing to a client. Default 60.
    pub client_io_timeout: u64,
    /// Seconds a stop (SIGTERM, SIGINT) lets requests in flight finish before their sockets,
    /// backend ones included, are broken. Default 30.
    pub shutdown_timeout: f64,
    /// Seconds a tunnel (an upgraded connection: a WebSocket) may go without a byte in either
    /// direction before both sides are closed. Default 3600 (HAProxy's `timeout tunnel`,
    /// nginx's `proxy_read_timeout`, as usually raised for WebSockets).
    pub tunnel_idle_timeout: f64,
    /// Port of an HTTPS listener beside the HTTP one (on `host`), served by the same workers:
    /// TLS 1.2 and 1.3 with rustls, ALPN `http/1.1`, `X-Forwarded-Proto: https` upstream.
    /// Default unset: no TLS.
    pub tls_port: Option<u16>,
    /// The HTTPS listener's PEM certificate chain, leaf first; read again on every reload (a
    /// renewed certificate under the same name is served from the next handshake). Required
    /// with `tls_port`.
    pub tls_cert: Option<PathBuf>,
    /// `tls_cert`'s PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC). Default: the `tls_cert`
    /// file itself (a combined PEM, as HAProxy's `crt`).
    pub tls_key: Option<PathBuf>,
    /// More certificates, each served to clients whose SNI names one of its DNS names (exact
    /// names before wildcards); `tls_cert` is served to the others. Default none.
    pub tls_sni_certificates: Vec<TlsCertificateFiles>,
    /// Seconds from accept to a complete TLS handshake; then `client_header_timeout` runs.
    /// Default 10.
    pub tls_handshake_timeout: u64,
    /// Routes by host, path, method, headers and query (README "Routes"), checked whole at
    /// load and on reload: a route that is wrong, or two that tie, refuse the file. Default
    /// none. Not yet applied to requests.
    #[serde(deserialize_with = "crate::routing::deserialize_routes", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
}

impl Default for Config {
    fn default() -> Config {
        let limits = Limits::default();
        let buffering = BodyBuffering::default();
        Config {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 8080,
            algorithm: AlgorithmKind::RoundRobin,
            threads: 256,
            backends: seed_backends(),
            pools: BTreeMap::new(),
            upstream_ca: None,
            health_check_interval: 30.0,
            health_check_fast_interval: 1.0,
            health_check_path: "/health".into(),
            health_check_timeout: 2.0,
            health_check_rise: 2,
            health_check_fall: 3,
            health_check_status: "200-399".into(),
            request_timeout: 30.0,
            connect_timeout: 5.0,
            max_tries: 3,
            retry_budget_ratio: 0.2,
            retry_budget_min: 10,
            retry_body_max_bytes: 64 * 1024,
            breaker_consecutive_failures: 5,
            breaker_failure_ratio: 0.5,
            breaker_cooldown: 5.0,
            breaker_half_open_trials: 3,
            breaker_on_5xx: false,
            slow_start: 10.0,
            panic_mode: false,
            peak_ewma_window: crate::balance::peak_ewma::DEFAULT_WINDOW.as_secs_f64(),
            access_log: true,
            access_log_format: AccessFormat::Combined,
            access_log_file: None,
            log_file: None,
            session_timeout: 3600,
            rate_limit: 0.0,
            rate_limit_burst: 0,
            client_rate_limit: 0.0,
            client_rate_limit_burst: 0,
            rate_limit_max_clients: ClientLimiter::DEFAULT_MAX_ENTRIES,
            sticky_cookie: None,
            sticky_secret: None,
            trusted_proxies: vec![Cidr::parse("127.0.0.0/8").unwrap(), Cidr::parse("::1/128").unwrap()],
            underscores_in_headers: false,
            merge_slashes: true,
            allow_encoded_slashes: false,
            upgrade_protocols: vec!["websocket".to_string()],
            admin_prefix: "/lb".to_string(),
            admin_token: None,
            admin_listen: None,
            state_file: None,
            registry: None,
            dns_refresh_interval: 30.0,
            queue_capacity: 1024,
            backend_max_connections: None,
            backend_queue_timeout: 5.0,
            client_max_workers: None,
            client_max_in_flight: 0,
            upstream_keepalive: None,
            upstream_reuse: UpstreamReuse::Safe,
            upstream_keepalive_timeout: 4.0,
            max_body_bytes: limits.max_body_bytes,
            client_body_buffer_size: buffering.memory_threshold,
            client_body_memory_cap: buffering.memory_cap,
            client_body_temp_path: None,
            client_body_temp_cap: buffering.disk_cap,
            client_body_temp_free_share: buffering.disk_free_share,
            client_body_temp_client_share: buffering.client_disk_share,
            request_buffering: buffering.request_buffering,
            request_body_min_rate: buffering.min_upload_rate,
            max_connections: limits.max_connections,
            client_header_timeout: limits.head_timeout.as_secs(),
            keep_alive_timeout: limits.keep_alive_timeout.as_secs(),
            client_io_timeout: limits.io_timeout.as_secs(),
            shutdown_timeout: 30.0,
            tunnel_idle_timeout: 3600.0,
            tls_port: None,
            tls_cert: None,
            tls_key: None,
            tls_sni_certificates: Vec::new(),
            tls_handshake_timeout: limits.handshake_timeout.as_secs(),
            routes: Vec::new(),
        }
    }
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

impl Config {
    /// Reads a JSON config file; unknown keys are errors (a typo must not be ignored).
    pub fn from_file(path: &str) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| ConfigError::Unreadable { path: path.into(), error })?;
        let config: Config =
            serde_json::from_str(&text).map_err(|error| ConfigError::Malformed { path: path.into(), error })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    ///
    /// ```
    /// let config = lb_sync::config::Config { threads: 0, ..Default::default() };
    /// assert_eq!(config.validate().unwrap_err().to_string(), "threads must be 1-10000, got 0");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        ranges::check(self)?;
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

    /// The HTTPS listener's (certificate, key) files, the default first; empty without
    /// `tls_port`. A missing key file is the certificate's own.
    ///
    /// ```
    /// let config = lb_sync::config::Config { tls_port: Some(8443), tls_cert: Some("site.pem".into()), ..Default::default() };
    /// assert_eq!(config.tls_files(), [("site.pem".into(), "site.pem".into())]);
    /// ```
    pub fn tls_files(&self) -> Vec<(PathBuf, PathBuf)> {
        let (Some(_), Some(cert)) = (self.tls_port, &self.tls_cert) else { return Vec::new() };
        let pair = |cert: &PathBuf, key: &Option<PathBuf>| (cert.clone(), key.clone().unwrap_or_else(|| cert.clone()));
        std::iter::once(pair(cert, &self.tls_key))
            .chain(self.tls_sni_certificates.iter().map(|c| pair(&c.cert, &c.key)))
            .collect()
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

    /// The rate-limit settings as [`RateLimitConfig`]; both limits off by default.
    ///
    /// ```
    /// let config = lb_sync::config::Config { client_rate_limit: 20.0, ..Default::default() };
    /// let limits = config.rate_limits();
    /// assert_eq!((limits.rate, limits.client_rate, limits.effective_client_burst()), (0.0, 20.0, 20));
    /// ```
    pub fn rate_limits(&self) -> RateLimitConfig {
        RateLimitConfig {
            rate: self.rate_limit,
            burst: self.rate_limit_burst,
            client_rate: self.client_rate_limit,
            client_burst: self.client_rate_limit_burst,
            max_clients: self.rate_limit_max_clients,
        }
    }

    /// The sticky-session cookie, when `sticky_cookie` is set (call [`validate`](Self::validate)
    /// first: an invalid name panics here).
    ///
    /// ```
    /// let config = lb_sync::config::Config { sticky_cookie: Some("SRV".into()), session_timeout: 60, ..Default::default() };
    /// assert_eq!(config.sticky_sessions().unwrap().set_cookie("t"), "SRV=t; Max-Age=60; Path=/; HttpOnly");
    /// assert!(lb_sync::config::Config::default().sticky_sessions().is_none());
    /// ```
    pub fn sticky_sessions(&self) -> Option<StickyCookie> {
        let max_age = Duration::from_secs(self.session_timeout);
        self.sticky_cookie.as_deref().map(|name| StickyCookie::new(name, self.sticky_secret.as_deref(), max_age))
    }

    /// The `health_check_status` range.
    pub fn expected_health_status(&self) -> Result<std::ops::RangeInclusive<u16>, ConfigError> {
        let text = self.health_check_status.trim();
        let (low, high) = text.split_once('-').unwrap_or((text, text));
        match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
            (Ok(low), Ok(high)) if (100..=599).contains(&low) && (low..=599).contains(&high) => Ok(low..=high),
            _ => {
                Err(invalid("health_check_status", format!("health_check_status must look like 200-399, got '{text}'")))
            }
        }
    }

    /// The id of each backend: configured, or `backend<N>` by position.
    pub fn backend_ids(&self) -> Vec<String> {
        self.backends
            .iter()
            .enumerate()
            .map(|(i, b)| b.id.clone().unwrap_or_else(|| format!("backend{}", i + 1)))
            .collect()
    }

    /// The per-backend connection cap in force (`backend_max_connections`, or three quarters of
    /// the workers).
    ///
    /// ```
    /// let config = lb_sync::config::Config { threads: 8, ..Default::default() };
    /// assert_eq!(config.backend_connection_cap(), 6);
    /// ```
    pub fn backend_connection_cap(&self) -> usize {
        self.backend_max_connections.unwrap_or((self.threads * 3 / 4).max(1))
    }

    /// The workers one client may have at once (`client_max_workers`, or half of them; 0 = no
    /// share).
    ///
    /// ```
    /// let config = lb_sync::config::Config { threads: 8, ..Default::default() };
    /// assert_eq!(config.client_share_in_force(), 4);
    /// ```
    pub fn client_share_in_force(&self) -> usize {
        self.client_max_workers.unwrap_or((self.threads / 2).max(1))
    }

    /// Idle connections kept to each backend (`upstream_keepalive`, or one per worker).
    ///
    /// ```
    /// let config = lb_sync::config::Config { threads: 8, ..Default::default() };
    /// assert_eq!(config.upstream_keepalive_in_force(), 8);
    /// ```
    pub fn upstream_keepalive_in_force(&self) -> usize {
        self.upstream_keepalive.unwrap_or(self.threads)
    }

    /// How request bodies are buffered, from this configuration.
    pub fn body_buffering(&self) -> BodyBuffering {
        let default = BodyBuffering::default();
        BodyBuffering {
            memory_threshold: self.client_body_buffer_size,
            memory_cap: self.client_body_memory_cap,
            disk_cap: self.client_body_temp_cap,
            disk_free_share: self.client_body_temp_free_share,
            client_disk_share: self.client_body_temp_client_share,
            temp_dir: self.client_body_temp_path.clone().unwrap_or(default.temp_dir),
            request_buffering: self.request_buffering,
            min_upload_rate: self.request_body_min_rate,
        }
    }

    /// The front end's limits from this configuration.
    pub fn limits(&self) -> Limits {
        Limits {
            head_timeout: Duration::from_secs(self.client_header_timeout),
            handshake_timeout: Duration::from_secs(self.tls_handshake_timeout),
            keep_alive_timeout: Duration::from_secs(self.keep_alive_timeout),
            io_timeout: Duration::from_secs(self.client_io_timeout),
            max_body_bytes: self.max_body_bytes,
            max_connections: self.max_connections,
            client_max_workers: self.client_share_in_force(),
            client_max_in_flight: self.client_max_in_flight,
            paths: PathRules { merge_slashes: self.merge_slashes, allow_encoded_slashes: self.allow_encoded_slashes },
            ..Limits::default()
        }
    }
}
