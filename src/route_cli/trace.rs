//! One request through the route table as the data port would take it, without a socket: the
//! head parsed and made canonical by the front end's own [`parse_head`], the route looked up
//! and explained, and the action worked out (the pool and its first pick, the path upstream,
//! the redirect's `Location`, the fixed answer). Nothing is sent and no health check runs.

use std::net::IpAddr;

use crate::balance::AlgorithmKind;
use crate::client_ip::request_client;
use crate::config::{Config, DEFAULT_POOL};
use crate::lifecycle::{backend_list, backend_policy};
use crate::proxy::{origin_form, target_authority};
use crate::routing::{canonical_host, client_key, split_pool, Action, Explained, RequestView, Route, RouteTable};
use crate::server::field::{sole, Sole};
use crate::server::{parse_head, ParseOutcome};
use crate::upstream::BackendTable;

/// A request as the user writes it on the command line or in a cases file.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The method.
    pub method: String,
    /// `http://HOST/PATH`, `https://HOST/PATH` or `/PATH` (then `Host` from the headers).
    pub url: String,
    /// Header fields (name, value), in order.
    pub headers: Vec<(String, String)>,
    /// The client's address (a split's and ip_hash's key, after `trusted_proxies`).
    pub client: IpAddr,
}

/// Where the request ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The front end refuses it before any route is looked at.
    Refused {
        /// The status (400, 414, 431...).
        status: u16,
        /// Why, as the front end says it.
        why: String,
    },
    /// Under the management API's prefix on the data port: served by the API, never routed.
    Admin,
    /// Sent to a pool.
    Pool(Sent),
    /// No route, and the default pool has no backends.
    NotFound,
    /// A `redirect` route.
    Redirect {
        /// Its status.
        status: u16,
        /// The `Location`.
        location: String,
    },
    /// A `respond` route.
    Respond {
        /// Its status.
        status: u16,
        /// Its body.
        body: String,
    },
}

/// A request sent to a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The pool.
    pub pool: String,
    /// For a split: each pool and its weight, as `stable 95, canary 5`.
    pub split: Option<String>,
    /// The pool's algorithm.
    pub algorithm: AlgorithmKind,
    /// The origin-form target sent upstream (the route's rewrite applied).
    pub upstream: String,
    /// The backend a fresh start would pick first (`id address`), or why none is known.
    pub first_backend: Result<String, String>,
}

/// What lb-sync makes of a request.
#[derive(Clone, Debug)]
pub struct Trace {
    /// The request line as it would be sent.
    pub request_line: String,
    /// The host routes compare (canonical), when there is one; `None` when refused too.
    pub host: Option<String>,
    /// The canonical path and query (`None` when refused).
    pub target: Option<String>,
    /// Every route with its verdict, in precedence order (empty when refused).
    pub explained: Vec<Explained>,
    /// The route that takes it.
    pub route: Option<String>,
    /// Where it ends.
    pub fate: Fate,
}

impl Trace {
    /// The status lb-sync answers with itself; `None` when a backend answers (or the API).
    pub fn own_status(&self) -> Option<u16> {
        match &self.fate {
            Fate::Refused { status, .. } | Fate::Redirect { status, .. } | Fate::Respond { status, .. } => {
                Some(*status)
            }
            Fate::NotFound => Some(404),
            Fate::Admin | Fate::Pool(_) => None,
        }
    }
}

/// A pool as `lb-sync route` sees it: its table built as a start builds it (hosts resolved),
/// never health-checked.
struct PoolTable {
    name: String,
    algorithm: AlgorithmKind,
    /// The table, or why it could not be built (a host that does not resolve).
    table: Result<BackendTable, String>,
    /// Backends come from the registry: unknown here.
    from_registry: bool,
}

/// The configuration's routes and pools, ready to trace requests through.
pub struct Tracer {
    config: Config,
    routes: RouteTable,
    pools: Vec<PoolTable>,
}

impl Tracer {
    /// Builds the route table and each pool's table from a checked configuration.
    pub fn new(config: Config) -> Result<Tracer, String> {
        let routes = RouteTable::build(&config.routes).map_err(|e| format!("routes: {e}"))?;
        let pools = config
            .pool_configs()
            .into_iter()
            .map(|(name, pool)| {
                let table = BackendTable::new(pool.pool.algorithm, &backend_list(&pool), backend_policy(&pool))
                    .map_err(|e| e.to_string());
                PoolTable {
                    name,
                    algorithm: pool.pool.algorithm,
                    table,
                    from_registry: pool.operations.registry.is_some(),
                }
            })
            .collect();
        Ok(Tracer { config, routes, pools })
    }

    /// The route table.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// What lb-sync does with `probe`.
    pub fn trace(&self, probe: &Probe) -> Trace {
        let (target, head) = request_head(probe);
        let request_line = format!("{} {target}", probe.method);
        let refused = |status, why: String| Trace {
            request_line: request_line.clone(),
            host: None,
            target: None,
            explained: Vec::new(),
            route: None,
            fate: Fate::Refused { status, why },
        };
        let head = match parse_head(head.as_bytes(), &self.config.limits()) {
            Ok(ParseOutcome::Complete(head, _)) => head,
            Ok(ParseOutcome::Partial) => return refused(400, "the request head is incomplete".into()),
            Err(error) => return refused(error.status(), error.reason().to_string()),
        };
        let Some(origin) = origin_form(&head.target) else {
            return refused(400, "the target is not a path or an http(s) URL".into());
        };
        let raw_host = match target_authority(&head.target) {
            Some(authority) => Some(authority.to_string()),
            None => match sole(&head.headers, "host") {
                Sole::Text(value) => Some(value.to_string()),
                Sole::Absent | Sole::Unusable => None,
            },
        };
        let host = raw_host.as_deref().map(|h| canonical_host(h).into_owned());
        let (path, query) = origin.split_once('?').unwrap_or((origin, ""));
        let mut trace = Trace {
            request_line,
            host: host.clone(),
            target: Some(origin.to_string()),
            explained: Vec::new(),
            route: None,
            fate: Fate::Admin,
        };
        if self.config.operations.admin_listen.is_none() && is_under(path, &self.config.operations.admin_prefix) {
            return trace;
        }
        let view = RequestView { method: &head.method, host: host.as_deref(), path, query, headers: &head.headers };
        trace.explained = self.routes.explain(&view);
        let route = self.routes.lookup(&view);
        trace.route = route.map(|r| r.name.clone());
        let client = request_client(probe.client, &head.headers, &self.config.listener.trusted_proxies);
        trace.fate = match route {
            None if self.routes.is_empty() => self.sent(DEFAULT_POOL, None, origin, client),
            None => match self.pool(DEFAULT_POOL) {
                Some(default)
                    if default.from_registry
                        || default.table.as_ref().is_ok_and(|t| !t.snapshot().backends.is_empty()) =>
                {
                    self.sent(DEFAULT_POOL, None, origin, client)
                }
                _ => Fate::NotFound,
            },
            Some(route) => self.act(route, origin, raw_host.as_deref(), probe, client),
        };
        trace
    }

    fn pool(&self, name: &str) -> Option<&PoolTable> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// What `route`'s action does with the request.
    fn act(&self, route: &Route, origin: &str, raw_host: Option<&str>, probe: &Probe, client: IpAddr) -> Fate {
        match &route.action {
            Action::Pool(pool) => self.sent(pool, Some(route), origin, client),
            Action::Split(shares) => {
                let usable = |name: &str| {
                    self.pool(name).is_some_and(|p| {
                        p.from_registry
                            || p.table.as_ref().is_ok_and(|t| t.snapshot().backends.iter().any(|b| b.is_usable()))
                    })
                };
                let key = client_key(client);
                match split_pool(shares, key.as_bytes(), usable) {
                    Some(pool) => {
                        let mut fate = self.sent(pool, Some(route), origin, client);
                        if let Fate::Pool(sent) = &mut fate {
                            let sides: Vec<String> =
                                shares.iter().map(|s| format!("{} {}", s.pool, s.weight)).collect();
                            sent.split = Some(sides.join(", "));
                        }
                        fate
                    }
                    None => Fate::Respond { status: 503, body: "every pool of its split has weight 0".into() },
                }
            }
            Action::Redirect(redirect) => {
                let scheme = if probe.url.to_ascii_lowercase().starts_with("https://") { "https" } else { "http" };
                Fate::Redirect { status: redirect.status, location: redirect.location(scheme, raw_host, origin) }
            }
            Action::Respond(respond) => Fate::Respond { status: respond.status, body: respond.body.clone() },
        }
    }

    fn sent(&self, pool: &str, route: Option<&Route>, origin: &str, client: IpAddr) -> Fate {
        let upstream = match route.and_then(|r| r.rewrite.as_ref()) {
            Some(rewrite) => {
                let (path, query) = origin.split_at(origin.find('?').unwrap_or(origin.len()));
                format!("{}{query}", rewrite.apply(path))
            }
            None => origin.to_string(),
        };
        let Some(table) = self.pool(pool) else {
            return Fate::Refused { status: 500, why: format!("pool '{pool}' is not defined") };
        };
        let first_backend = match &table.table {
            _ if table.from_registry => Err("backends come from the registry: not known here".to_string()),
            Err(why) => Err(why.clone()),
            Ok(backends) => {
                let snapshot = backends.snapshot();
                let key = match client {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                match snapshot.pick(&key, |_| true) {
                    Some((backend, _)) => Ok(format!("{} {}", backend.id, backend.address())),
                    None => Err("none: the pool has no backend (503)".to_string()),
                }
            }
        };
        Fate::Pool(Sent { pool: pool.to_string(), split: None, algorithm: table.algorithm, upstream, first_backend })
    }
}

/// Whether `path` is `prefix` or below it (the admin prefix's test).
fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The target on the request line and the raw head: an absolute URL is sent in absolute form
/// with its authority as `Host` (unless a `Host` is given: then the front end checks that they
/// agree); a path without `Host` goes as HTTP/1.0, which may omit it.
fn request_head(probe: &Probe) -> (String, String) {
    let target = probe.url.clone();
    let has_host = probe.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host"));
    let mut fields: Vec<(String, String)> = Vec::new();
    if !has_host {
        if let Some(authority) = target_authority(&target) {
            fields.push(("Host".into(), authority.to_string()));
        }
    }
    fields.extend(probe.headers.iter().cloned());
    let version = if fields.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) { "1.1" } else { "1.0" };
    let mut head = format!("{} {target} HTTP/{version}\r\n", probe.method);
    for (name, value) in &fields {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    (target, head)
}

/// Reads `Name: value` as given to `-H`; `Err` says what is wrong.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    if text.contains(['\r', '\n']) {
        return Err(format!("header '{}' has a line break", text.escape_debug()));
    }
    match text.split_once(':') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.trim().to_string())),
        _ => Err(format!("header '{text}' is not 'Name: value'")),
    }
}

/// Checks a method and URL before they go on a request line.
pub fn check_request(method: &str, url: &str) -> Result<(), String> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("'{}' is not a method", method.escape_debug()));
    }
    if url.contains(['\r', '\n']) {
        return Err(format!("URL '{}' has a line break", url.escape_debug()));
    }
    let lower = url.to_ascii_lowercase();
    if !url.starts_with('/') && !lower.starts_with("http://") && !lower.starts_with("https://") {
        return Err(format!("URL '{url}' must be http://HOST/PATH, https://HOST/PATH or /PATH (with -H 'Host: ...')"));
    }
    Ok(())
}
