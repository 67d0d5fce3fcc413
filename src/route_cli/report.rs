//! How `lb-sync route` prints a [`Trace`]: one `key: value` line each, every route in
//! precedence order with its matchers and verdict.

use std::fmt::Write;

use crate::routing::{HeaderTest, PathMatch, Route, RouteTable};

use super::trace::{Fate, Trace};

/// A route's matchers in a few words: `host api.example.com, path_prefix /v1, headers x-canary`.
pub fn matchers(route: &Route) -> String {
    let mut parts = Vec::new();
    if !route.hosts.is_empty() {
        let hosts: Vec<String> = route.hosts.iter().map(ToString::to_string).collect();
        parts.push(format!("host {}", hosts.join("|")));
    }
    match &route.path {
        PathMatch::Any => {}
        PathMatch::Exact(path) => parts.push(format!("path {path}")),
        PathMatch::Prefix(prefix) => parts.push(format!("path_prefix {prefix}")),
        PathMatch::Regex(regex) => parts.push(format!("path_regex {}", regex.source)),
    }
    if !route.conditions.methods.is_empty() {
        parts.push(format!("methods {}", route.conditions.methods.join("|")));
    }
    for (name, test) in &route.conditions.headers {
        parts.push(match test {
            HeaderTest::Present => format!("header {name}"),
            HeaderTest::Exact(value) => format!("header {name}={value}"),
            HeaderTest::Regex(source, _) => format!("header {name}~{source}"),
        });
    }
    for (name, test) in &route.conditions.query {
        parts.push(match test {
            crate::routing::QueryTest::Present => format!("query {name}"),
            crate::routing::QueryTest::Equals(value) => format!("query {name}={value}"),
        });
    }
    if route.priority != 0 {
        parts.push(format!("priority {}", route.priority));
    }
    if parts.is_empty() {
        "any request".to_string()
    } else {
        parts.join(", ")
    }
}

/// The whole explanation of one request.
pub fn render(trace: &Trace, table: &RouteTable) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "request: {}", trace.request_line);
    if let Fate::Refused { status, why } = &trace.fate {
        if trace.target.is_none() {
            let _ = writeln!(out, "refused: {status} {why} (by the front end, before any route)");
            return out;
        }
    }
    let _ = writeln!(out, "host: {}", trace.host.as_deref().unwrap_or("(none)"));
    let target = trace.target.as_deref().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let _ = writeln!(out, "path: {path}");
    if !query.is_empty() {
        let _ = writeln!(out, "query: {query}");
    }
    if trace.fate == Fate::Admin {
        let _ = writeln!(out, "management API: the data port serves this path itself, no route is looked up");
        return out;
    }
    if !trace.explained.is_empty() {
        let _ = writeln!(out, "routes, in precedence order:");
        let width = table.routes().iter().map(|r| r.name.len()).max().unwrap_or(0);
        for line in &trace.explained {
            let route = &table.routes()[line.route];
            let _ = writeln!(out, "  {:width$}  {} -> {}", route.name, matchers(route), line.verdict);
        }
    }
    match &trace.route {
        Some(route) => {
            let _ = writeln!(out, "route: {route}");
        }
        None if table.is_empty() => {
            let _ = writeln!(out, "route: none (no routes: every request goes to the default pool)");
        }
        None if trace.fate == Fate::NotFound => {
            let _ = writeln!(out, "route: none: 404 (the default pool has no backends)");
        }
        None => {
            let _ = writeln!(out, "route: none: default pool");
        }
    }
    match &trace.fate {
        Fate::Pool(sent) => {
            if let Some(split) = &sent.split {
                let _ = writeln!(out, "split: {split} (by the client's address)");
            }
            let _ = writeln!(out, "pool: {} ({})", sent.pool, sent.algorithm);
            let _ = writeln!(out, "upstream: {}", sent.upstream);
            match &sent.first_backend {
                Ok(backend) => {
                    let _ = writeln!(out, "first backend: {backend}");
                }
                Err(why) => {
                    let _ = writeln!(out, "first backend: {why}");
                }
            }
        }
        Fate::Redirect { status, location } => {
            let _ = writeln!(out, "redirect: {status} Location: {location}");
        }
        Fate::Respond { status, body } => {
            let _ = writeln!(out, "respond: {status} {body:?}");
        }
        Fate::NotFound => {
            let _ = writeln!(out, "respond: 404 \"no route matched this request\"");
        }
        Fate::Refused { status, why } => {
            let _ = writeln!(out, "refused: {status} {why}");
        }
        Fate::Admin => {}
    }
    out
}
