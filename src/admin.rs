//! The management API under `/lb/` (SPEC section 9): JSON, never proxied, loopback peers only
//! unless an admin token is configured.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::backend::{Backend, TableError};
use crate::balancer::Shared;
use crate::breaker::BreakerState;
use crate::client_ip::canonical;
use crate::config::BackendConfig;
use crate::server::{Request, Response};

/// Largest JSON body the API reads.
const MAX_ADMIN_BODY: u64 = 64 * 1024;

/// The JSON object describing one backend in `/lb/backends`.
pub fn backend_json(backend: &Backend) -> Value {
    let (requests, failures) = backend.counts();
    let (breaker_failures, breaker_successes) = backend.breaker().counts();
    let last_check =
        backend.last_check().map(|c| json!({ "ok": c.ok, "detail": c.detail, "at": c.at_unix, "took_ms": c.took_ms }));
    json!({
        "id": backend.id,
        "host": backend.host,
        "port": backend.port,
        "address": backend.addr.to_string(),
        "weight": backend.weight,
        "enabled": backend.is_enabled(),
        "healthy": backend.is_healthy(),
        "usable": backend.is_usable(),
        "active_connections": backend.in_flight(),
        "total_requests": requests,
        "failed_requests": failures,
        "circuit_breaker": {
            "state": backend.breaker().state().as_str(),
            "failure_count": breaker_failures,
            "success_count": breaker_successes,
        },
        "slow_start_share": backend.slow_start().permille() as f64 / 1000.0,
        "last_check": last_check,
    })
}

fn error(status: u16, message: impl Into<String>) -> Response<'static> {
    Response::json(status, &json!({ "error": message.into() }))
}

fn table_error(e: TableError) -> Response<'static> {
    match e {
        TableError::UnknownId(_) => error(404, e.to_string()),
        TableError::DuplicateId(_) => error(409, e.to_string()),
        TableError::Unresolvable(_) => error(400, e.to_string()),
    }
}

/// Whether the caller may use the API: loopback, or the configured bearer token.
fn authorized(shared: &Shared, request: &Request<'_>) -> bool {
    match &shared.config.admin_token {
        Some(token) => request
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| given.trim() == token),
        None => canonical(request.peer().ip()).is_loopback(),
    }
}

/// Answers a request whose path is under the admin prefix.
pub fn handle<'r>(shared: &Shared, mut request: Request<'r>) -> Response<'r> {
    if !authorized(shared, &request) {
        return error(403, "the management API is only for loopback peers or bearers of the admin token");
    }
    let prefix = shared.config.admin_prefix.as_str();
    let path = request.path()[prefix.len()..].to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method().to_string();
    let get = method == "GET" || method == "HEAD";
    match (method.as_str(), segments.as_slice()) {
        (_, ["health"]) if get => health(shared),
        (_, ["stats"]) if get => Response::json(200, &stats(shared)),
        (_, ["backends"]) if get => {
            let snapshot = shared.table.snapshot();
            Response::json(200, &Value::Array(snapshot.backends.iter().map(|b| backend_json(b)).collect()))
        }
        (_, ["config"]) if get => config(shared),
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

fn health(shared: &Shared) -> Response<'static> {
    let snapshot = shared.table.snapshot();
    let usable = snapshot.backends.iter().filter(|b| b.is_usable()).count();
    let status = if usable > 0 { "healthy" } else { "unhealthy" };
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    Response::json(
        if usable > 0 { 200 } else { 503 },
        &json!({
            "status": status,
            "usable_backends": usable,
            "total_backends": snapshot.backends.len(),
            "uptime_seconds": shared.started.elapsed().as_secs(),
            "timestamp": timestamp,
        }),
    )
}

/// The seed's statistics object.
pub fn stats(shared: &Shared) -> Value {
    let s = shared.stats.snapshot();
    let tries = shared.stats.tries();
    let snapshot = shared.table.snapshot();
    let healthy = snapshot.backends.iter().filter(|b| b.is_healthy()).count();
    let name = shared.table.algorithm().display_name();
    json!({
        "load_balancer": name,
        "total_requests": s.total,
        "successful_requests": s.successful,
        "failed_requests": s.failed,
        "success_rate": s.success_rate,
        "average_response_time": s.average_response_time_ms,
        "circuit_breaker": breaker_summary(&snapshot.backends),
        "retries": {
            "tries": tries.tries,
            "retries": tries.retries,
            "denied_by_budget": tries.denied_by_budget,
            "failed_tries": tries.failures.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "backends": {
            "algorithm": name,
            "total_backends": snapshot.backends.len(),
            "healthy_backends": healthy,
            "unhealthy_backends": snapshot.backends.len() - healthy,
        },
    })
}

/// The seed's aggregate breaker: `closed` only when every breaker is closed, `open` when any is
/// open, else `half_open`; counts summed.
fn breaker_summary(backends: &[std::sync::Arc<Backend>]) -> Value {
    let states: Vec<BreakerState> = backends.iter().map(|b| b.breaker().state()).collect();
    let state = if states.contains(&BreakerState::Open) {
        BreakerState::Open
    } else if states.contains(&BreakerState::HalfOpen) {
        BreakerState::HalfOpen
    } else {
        BreakerState::Closed
    };
    let (failures, successes) =
        backends.iter().map(|b| b.breaker().counts()).fold((0, 0), |(f, s), (bf, bs)| (f + bf, s + bs));
    json!({ "state": state.as_str(), "failure_count": failures, "success_count": successes })
}

fn config(shared: &Shared) -> Response<'static> {
    let mut value = serde_json::to_value(&shared.config).unwrap_or(Value::Null);
    // The running table, not the start-up list: backends may have been added or removed.
    let snapshot = shared.table.snapshot();
    value["backends"] = Value::Array(
        snapshot
            .backends
            .iter()
            .map(|b| json!({ "id": b.id, "host": b.host, "port": b.port, "weight": b.weight }))
            .collect(),
    );
    if value.get("admin_token").is_some_and(|t| !t.is_null()) {
        value["admin_token"] = json!("(set)");
    }
    Response::json(200, &value)
}

fn set_enabled(shared: &Shared, id: &str, enabled: bool) -> Response<'static> {
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

fn add_backend(shared: &Shared, request: &mut Request<'_>) -> Response<'static> {
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
