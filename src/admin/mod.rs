//! The management API under the admin prefix (`/lb/` by default): JSON, never proxied, loopback
//! peers only unless an admin token is configured. Routes are here; the JSON they answer with is
//! in [`json`].

pub mod json;

use std::io::Read;

use serde_json::{json, Value};

use crate::client_ip::canonical;
use crate::config::BackendConfig;
use crate::server::{Request, Response};
use crate::state::Shared;
use crate::upstream::TableError;

pub use json::{backend_json, stats};

/// Largest JSON body the API reads.
const MAX_ADMIN_BODY: u64 = 64 * 1024;

fn error(status: u16, message: impl Into<String>) -> Response {
    Response::json(status, &json!({ "error": message.into() }))
}

fn table_error(e: TableError) -> Response {
    match e {
        TableError::UnknownId(_) => error(404, e.to_string()),
        TableError::DuplicateId(_) => error(409, e.to_string()),
        TableError::Unresolvable { .. } => error(400, e.to_string()),
    }
}

/// Whether the caller may use the API: loopback, or the configured bearer token.
fn authorized(shared: &Shared, request: &Request) -> bool {
    match &shared.config.admin_token {
        Some(token) => request
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| given.trim() == token),
        None => canonical(request.peer().ip()).is_loopback(),
    }
}

/// Answers a request whose path is under the admin prefix.
pub fn handle(shared: &Shared, mut request: Request) -> Response {
    if !authorized(shared, &request) {
        return error(403, "the management API is only for loopback peers or bearers of the admin token");
    }
    let prefix = shared.config.admin_prefix.as_str();
    let path = request.path()[prefix.len()..].to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method().to_string();
    let get = method == "GET" || method == "HEAD";
    match (method.as_str(), segments.as_slice()) {
        (_, ["health"]) if get => {
            let (status, body) = json::health(shared);
            Response::json(status, &body)
        }
        (_, ["stats"]) if get => Response::json(200, &stats(shared)),
        (_, ["backends"]) if get => {
            let snapshot = shared.table.snapshot();
            Response::json(200, &Value::Array(snapshot.backends.iter().map(|b| backend_json(b)).collect()))
        }
        (_, ["config"]) if get => Response::json(200, &json::config(shared)),
        ("POST", ["backends", "add"]) => add_backend(shared, &mut request),
        ("POST", ["backends", id, "disable"]) => set_enabled(shared, id, false),
        ("POST", ["backends", id, "enable"]) => set_enabled(shared, id, true),
        ("DELETE", ["backends", id, "remove"]) => match shared.table.remove(id) {
            Ok(backend) => {
                log::info!("backend {} removed", backend.id);
                Response::json(
                    200,
                    &json!({ "message": format!("backend {} removed", backend.id), "backend": backend_json(&backend) }),
                )
            }
            Err(e) => table_error(e),
        },
        (_, ["health" | "stats" | "backends" | "config"]) | (_, ["backends", "add"]) | (_, ["backends", _, _]) => {
            error(405, format!("{method} is not allowed on {}", request.path()))
                .with_header("Allow", "GET, POST, DELETE")
        }
        _ => error(404, format!("no management endpoint {}", request.path())),
    }
}

fn set_enabled(shared: &Shared, id: &str, enabled: bool) -> Response {
    match shared.table.set_enabled(id, enabled) {
        Ok(backend) => {
            let verb = if enabled { "enabled" } else { "disabled" };
            log::info!("backend {} {verb}", backend.id);
            Response::json(
                200,
                &json!({ "message": format!("backend {} {verb}", backend.id), "backend": backend_json(&backend) }),
            )
        }
        Err(e) => table_error(e),
    }
}

fn add_backend(shared: &Shared, request: &mut Request) -> Response {
    let mut body = Vec::new();
    if let Err(e) = request.body().take(MAX_ADMIN_BODY + 1).read_to_end(&mut body) {
        return error(400, format!("cannot read body: {e}"));
    }
    if body.len() as u64 > MAX_ADMIN_BODY {
        return error(413, "body too large");
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => return error(400, format!("body is not JSON: {e}")),
    };
    let config = match parse_backend(&value) {
        Ok(config) => config,
        Err(message) => return error(400, message),
    };
    match shared.table.add(&config) {
        Ok(backend) => {
            log::info!("backend {} added at {}:{}", backend.id, backend.host, backend.port);
            Response::json(201, &backend_json(&backend))
        }
        Err(e) => table_error(e),
    }
}

/// Checks the fields of an added backend one by one so the error names the field.
fn parse_backend(value: &Value) -> Result<BackendConfig, String> {
    let object = value.as_object().ok_or("body must be a JSON object")?;
    for key in object.keys() {
        if !["host", "port", "weight", "id"].contains(&key.as_str()) {
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
        Some(w) => {
            w.as_u64().filter(|&w| (1..=1_000_000).contains(&w)).ok_or("field 'weight' must be an integer 1-1000000")?
                as u32
        }
        None => 1,
    };
    let id = match object.get("id") {
        Some(Value::String(id)) if !id.is_empty() && !id.contains('/') => Some(id.clone()),
        Some(_) => return Err("field 'id' must be a non-empty string without '/'".into()),
        None => None,
    };
    Ok(BackendConfig { id, host, port, weight })
}
