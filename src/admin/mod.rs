//! The management API under the admin prefix (`/lb/` by default): JSON, the Prometheus
//! exposition and the dashboard page. Who may use it is decided in [`auth`]; routes are here;
//! the JSON it answers with is in [`json`] (the route table's in [`routes`]), the metrics in
//! [`metrics`], the last 15 minutes in [`history`].
//!
//! Every change to the backends takes effect on the next pick of every worker (the table swaps
//! in a new membership) and, with `--state-file`, is written to the state file before the
//! answer. With a registry a change is written to etcd instead, and answered once the watch has
//! brought it back and it is applied here ([`crate::registry`]).

pub mod auth;
pub mod history;
pub mod json;
pub mod metrics;
pub mod routes;

use std::io::Read;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::config::{BackendConfig, Scheme, DEFAULT_POOL};
use crate::pools::Pool;
use crate::registry::{Change, RegistryError};
use crate::server::{Request, Response};
use crate::state::Shared;
use crate::upstream::{Backend, TableError};

pub use auth::Listener;
pub use json::{backend_json, stats};

/// Largest JSON body the API reads.
const MAX_ADMIN_BODY: u64 = 64 * 1024;

/// The dashboard: one page, and the chart library it draws the history with.
const DASHBOARD: &str = include_str!("dashboard.html");

/// uPlot (MIT), vendored: see `vendor/uplot/VERSION` for its version and where it came from.
const UPLOT_JS: &str = include_str!("vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("vendor/uplot/uPlot.min.css");

fn error(status: u16, message: impl Into<String>) -> Response {
    Response::json(status, &json!({ "error": message.into() }))
}

fn table_error(e: TableError) -> Response {
    match e {
        TableError::UnknownId(_) => error(404, e.to_string()),
        TableError::DuplicateId(_) | TableError::DuplicateAddress { .. } => error(409, e.to_string()),
        TableError::Unresolvable { .. } | TableError::InvalidId(_) => error(400, e.to_string()),
    }
}

fn registry_error(e: RegistryError) -> Response {
    match e {
        RegistryError::UnknownPool(_) => error(404, e.to_string()),
        RegistryError::Refused(e) => table_error(e),
        RegistryError::Corrupt { .. } => error(409, e.to_string()),
        RegistryError::Unavailable(_) | RegistryError::Contended(_) => {
            error(503, e.to_string()).with_header("Retry-After", "1")
        }
        RegistryError::RemovedNotHere { .. } => Response::json(200, &json!({ "message": e.to_string() })),
        // Made in the registry; not (yet) here.
        RegistryError::NotApplied { revision, .. } => {
            Response::json(202, &json!({ "message": e.to_string(), "revision": revision }))
        }
    }
}

/// Makes a change to `pool`: in the registry when there is one, under the pool's keys (it
/// takes effect here, as everywhere, through the watch), else in the pool's table.
fn write(shared: &Shared, pool: &Pool, change: Change) -> Result<Arc<Backend>, Response> {
    if let Some(registry) = &shared.ops.registry {
        return registry.submit(&pool.name, change).map_err(registry_error);
    }
    let table = &pool.table;
    match change {
        Change::Add(config) => table.add(&config),
        Change::Enable(id) => table.set_enabled(&id, true),
        Change::Disable(id) => table.set_enabled(&id, false),
        Change::Drain(id) => table.drain(&id),
        Change::Weight(id, weight) => table.set_weight(&id, weight),
        Change::Remove(id) => table.remove(&id),
    }
    .map_err(table_error)
}

/// Whether `pool` is the top-level one, whose API paths and log lines name no pool.
fn is_default(pool: &Pool) -> bool {
    pool.name == DEFAULT_POOL
}

/// What a path under the prefix names, and the methods it accepts (its `Allow`).
enum Resource<'a> {
    Routes,
    Route(&'a str),
    Pools,
    Pool(&'a str),
    Health,
    Stats,
    Metrics,
    Config,
    Reload,
    History,
    Dashboard,
    DashboardAsset(&'static str, &'static str),
    Backends,
    Backend(&'a str),
    Add,
    Action(&'a str, &'a str),
    Remove(&'a str),
}

impl<'a> Resource<'a> {
    /// The resource and, for `/pools/{pool}/backends...`, the pool it is in (`None`: the
    /// default pool, or none).
    fn of(segments: &[&'a str]) -> Option<(Option<&'a str>, Resource<'a>)> {
        match *segments {
            ["routes"] => Some((None, Resource::Routes)),
            ["routes", name] => Some((None, Resource::Route(name))),
            ["pools"] => Some((None, Resource::Pools)),
            ["pools", pool] => Some((None, Resource::Pool(pool))),
            ["pools", pool, ref rest @ ..] if rest.first() == Some(&"backends") => {
                Some((Some(pool), Resource::of_pool(rest)?))
            }
            _ => Some((None, Resource::of_pool(segments)?)),
        }
    }

    /// A resource of the balancer, or of a pool's backends.
    fn of_pool(segments: &[&'a str]) -> Option<Resource<'a>> {
        Some(match *segments {
            ["health"] => Resource::Health,
            ["stats"] => Resource::Stats,
            ["metrics"] => Resource::Metrics,
            ["config"] => Resource::Config,
            ["config", "reload"] => Resource::Reload,
            ["history"] => Resource::History,
            ["dashboard"] => Resource::Dashboard,
            ["dashboard", "uplot.js"] => Resource::DashboardAsset(UPLOT_JS, "text/javascript; charset=utf-8"),
            ["dashboard", "uplot.css"] => Resource::DashboardAsset(UPLOT_CSS, "text/css; charset=utf-8"),
            ["backends"] => Resource::Backends,
            ["backends", "add"] => Resource::Add,
            ["backends", id] => Resource::Backend(id),
            ["backends", id, action @ ("enable" | "disable" | "drain" | "weight")] => Resource::Action(id, action),
            ["backends", id, "remove"] => Resource::Remove(id),
            _ => return None,
        })
    }

    fn allow(&self) -> &'static str {
        match self {
            Resource::Add | Resource::Action(..) | Resource::Reload => "POST",
            Resource::Remove(_) => "DELETE",
            _ => "GET, HEAD",
        }
    }
}

/// Whether `path` (origin form, no query) is the dashboard page or its chart library, which
/// are served before any access check: they hold no data, and the page asks for the token
/// itself when the API wants one.
pub fn is_dashboard(shared: &Shared, path: &str) -> bool {
    path.strip_prefix(shared.config.operations.admin_prefix.as_str())
        .is_some_and(|rest| matches!(rest, "/dashboard" | "/dashboard/uplot.js" | "/dashboard/uplot.css"))
}

/// Answers a request whose path (origin form, without the query) is under the admin prefix,
/// once [`auth::check`] let it through (the dashboard page needs no check).
pub fn handle(shared: &Shared, mut request: Request, path: &str) -> Response {
    let rest = &path[shared.config.operations.admin_prefix.len().min(path.len())..];
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let Some((pool_name, resource)) = Resource::of(&segments) else {
        return error(404, format!("no management endpoint {path}"));
    };
    let pool = match pool_name {
        None => shared.pools.default_pool(),
        Some(name) => match shared.pools.get(name) {
            Some(pool) => pool,
            None => return error(404, format!("no pool '{name}'")),
        },
    };
    let method = request.method().to_string();
    let allow = resource.allow();
    let accepted = allow.split(", ").any(|m| m == method);
    if method == "OPTIONS" {
        return Response::new(204).with_header("Allow", format!("{allow}, OPTIONS"));
    }
    if !accepted {
        return error(405, format!("{method} is not allowed on {path}: use {allow}"))
            .with_header("Allow", format!("{allow}, OPTIONS"));
    }
    match resource {
        Resource::Health => {
            let (status, body) = json::health(shared);
            Response::json(status, &body)
        }
        Resource::Stats => Response::json(200, &stats(shared)),
        Resource::Metrics => Response::new(200)
            .with_header("Content-Type", crate::metrics::prometheus::CONTENT_TYPE)
            .with_body(metrics::render(shared)),
        Resource::Config => Response::json(200, &json::config(shared)),
        // The config file and flags read again, as SIGHUP: all or nothing.
        Resource::Reload => match shared.reload.reload() {
            Ok(changes) => Response::json(200, &json!({ "message": "configuration reloaded", "changes": changes })),
            Err(why) => error(400, format!("reload refused, the running configuration stays: {why}")),
        },
        Resource::History => match history::asked(request.query()) {
            Ok(asked) => match history::history_json(&shared.ops.history, &asked, |p| shared.pools.get(p).is_some()) {
                Some(body) => Response::json(200, &body),
                None => error(404, format!("no pool '{}'", asked.pool.unwrap_or_default())),
            },
            Err(message) => error(400, message),
        },
        Resource::Dashboard => Response::new(200)
            .with_header("Content-Type", "text/html; charset=utf-8")
            .with_header("Cache-Control", "no-store")
            .with_body(DASHBOARD),
        // The same bytes until lb-sync is upgraded: an hour in the browser's cache.
        Resource::DashboardAsset(body, content_type) => Response::new(200)
            .with_header("Content-Type", content_type)
            .with_header("Cache-Control", "max-age=3600")
            .with_body(body),
        Resource::Routes => Response::json(200, &routes::routes_json(shared)),
        Resource::Route(name) => match routes::route_by_name_json(shared, name) {
            Some(route) => Response::json(200, &route),
            None => error(404, format!("no route '{name}'")),
        },
        Resource::Pools => Response::json(200, &Value::Array(shared.pools.iter().map(json::pool_json).collect())),
        Resource::Pool(name) => match shared.pools.get(name) {
            Some(pool) => Response::json(200, &json::pool_json(pool)),
            None => error(404, format!("no pool '{name}'")),
        },
        Resource::Backends => {
            let snapshot = pool.table.snapshot();
            Response::json(200, &Value::Array(snapshot.backends.iter().map(|b| backend_json(b)).collect()))
        }
        Resource::Backend(id) => match pool.table.snapshot().backends.iter().find(|b| b.id == id) {
            Some(backend) => Response::json(200, &backend_json(backend)),
            None => error(404, format!("no backend with id '{id}'")),
        },
        Resource::Add => add_backend(shared, pool, &mut request),
        Resource::Action(id, "weight") => set_weight(shared, pool, id, &mut request),
        Resource::Action(id, action) => {
            let result = match action {
                "enable" => write(shared, pool, Change::Enable(id.to_string())),
                "disable" => write(shared, pool, Change::Disable(id.to_string())),
                _ => write(shared, pool, Change::Drain(id.to_string())),
            };
            match result {
                Ok(backend) => {
                    let message = match action {
                        "drain" => {
                            format!("backend {} draining: {} request(s) in flight", backend.id, backend.in_flight())
                        }
                        _ => format!("backend {} {action}d", backend.id),
                    };
                    changed(shared, pool, 200, &message, &backend)
                }
                Err(response) => response,
            }
        }
        Resource::Remove(id) => match write(shared, pool, Change::Remove(id.to_string())) {
            Ok(backend) => {
                let message =
                    format!("backend {} removed ({} request(s) in flight finish)", backend.id, backend.in_flight());
                changed(shared, pool, 200, &message, &backend)
            }
            Err(response) => response,
        },
    }
}

/// A change was made: log it, write the state file (every pool's), answer with the backend.
fn changed(shared: &Shared, pool: &Pool, status: u16, message: &str, backend: &Backend) -> Response {
    if is_default(pool) {
        log::info!("{message}");
    } else {
        log::info!("pool {}: {message}", pool.name);
    }
    if let Some(file) = &shared.ops.state_file {
        if let Err(e) = file.save(shared.pools.iter().map(|p| (p.name.as_str(), &*p.table))) {
            log::error!("cannot write state file {}: {e}", file.path().display());
            return error(
                500,
                format!(
                    "{message}, but the state file {} could not be written ({e}): the change is live and will be lost on restart",
                    file.path().display()
                ),
            );
        }
    }
    let body = if status == 201 {
        backend_json(backend)
    } else {
        json!({ "message": message, "backend": backend_json(backend) })
    };
    let response = Response::json(status, &body);
    if status == 201 {
        let location = if is_default(pool) {
            format!("{}/backends/{}", shared.config.operations.admin_prefix, backend.id)
        } else {
            format!("{}/pools/{}/backends/{}", shared.config.operations.admin_prefix, pool.name, backend.id)
        };
        response.with_header("Location", location)
    } else {
        response
    }
}

/// The request's body as a JSON object.
fn json_body(request: &mut Request) -> Result<Map<String, Value>, Response> {
    let mut body = Vec::new();
    if let Err(e) = request.body().take(MAX_ADMIN_BODY + 1).read_to_end(&mut body) {
        return Err(error(400, format!("cannot read body: {e}")));
    }
    if body.len() as u64 > MAX_ADMIN_BODY {
        return Err(error(413, "body too large"));
    }
    match serde_json::from_slice(&body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(error(400, "body must be a JSON object")),
        Err(e) => Err(error(400, format!("body is not JSON: {e}"))),
    }
}

fn add_backend(shared: &Shared, pool: &Pool, request: &mut Request) -> Response {
    let object = match json_body(request) {
        Ok(object) => object,
        Err(response) => return response,
    };
    let config = match parse_backend(&object) {
        Ok(config) => config,
        Err(message) => return error(400, message),
    };
    match write(shared, pool, Change::Add(config)) {
        Ok(backend) => {
            let message =
                format!("backend {} added at {} (weight {})", backend.id, backend.address(), backend.weight());
            changed(shared, pool, 201, &message, &backend)
        }
        Err(response) => response,
    }
}

fn set_weight(shared: &Shared, pool: &Pool, id: &str, request: &mut Request) -> Response {
    let object = match json_body(request) {
        Ok(object) => object,
        Err(response) => return response,
    };
    if let Some(key) = object.keys().find(|k| *k != "weight") {
        return error(400, format!("unknown field '{key}': the body is {{\"weight\": N}}"));
    }
    let weight = match object.get("weight").map(parse_weight) {
        Some(Ok(weight)) => weight,
        Some(Err(message)) => return error(400, message),
        None => return error(400, "field 'weight' is required: the body is {\"weight\": N}"),
    };
    let before = pool.table.snapshot().backends.iter().find(|b| b.id == id).map(|b| b.weight());
    match write(shared, pool, Change::Weight(id.to_string(), weight)) {
        Ok(backend) => {
            let message = format!("backend {} weight {} -> {weight}", backend.id, before.unwrap_or(weight));
            changed(shared, pool, 200, &message, &backend)
        }
        Err(response) => response,
    }
}

fn parse_weight(value: &Value) -> Result<u32, String> {
    value
        .as_u64()
        .filter(|&w| (1..=1_000_000).contains(&w))
        .map(|w| w as u32)
        .ok_or_else(|| "field 'weight' must be an integer 1-1000000".to_string())
}

/// Checks the fields of an added backend one by one so the error names the field.
fn parse_backend(object: &Map<String, Value>) -> Result<BackendConfig, String> {
    for key in object.keys() {
        if !["host", "port", "weight", "id", "scheme"].contains(&key.as_str()) {
            return Err(format!("unknown field '{key}'"));
        }
    }
    let host = match object.get("host") {
        Some(Value::String(h)) if !h.trim().is_empty() => h.trim().to_string(),
        Some(_) => return Err("field 'host' must be a non-empty string".into()),
        None => return Err("field 'host' is required".into()),
    };
    let port = match object.get("port") {
        Some(p) => {
            p.as_u64().filter(|&p| (1..=65535).contains(&p)).ok_or("field 'port' must be an integer 1-65535")? as u16
        }
        None => return Err("field 'port' is required".into()),
    };
    let weight = match object.get("weight") {
        Some(w) => parse_weight(w)?,
        None => 1,
    };
    let id = match object.get("id") {
        Some(Value::String(id)) if crate::config::is_valid_id(id) => Some(id.clone()),
        Some(_) => return Err("field 'id' must be 1-64 of the characters A-Z a-z 0-9 . _ ~ -".into()),
        None => None,
    };
    let scheme = match object.get("scheme").map(Value::as_str) {
        None | Some(Some("http")) => Scheme::Http,
        Some(Some("https")) => Scheme::Https,
        Some(_) => return Err("field 'scheme' must be \"http\" or \"https\"".into()),
    };
    Ok(BackendConfig { id, host, port, weight, scheme })
}
