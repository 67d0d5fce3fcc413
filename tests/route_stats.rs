//! Routes seen everywhere (issue 26, items 5-6): a real lb-sync with pools and routes over real
//! lb-backend processes gets a known mix of requests (to a pool, a redirect, a deny, a pool
//! whose backend is dead, and no route at all); `/lb/routes` shows the table in precedence order
//! with each route's counts by class and latency, `/lb/stats` gains a `routes` section, the
//! JSON access log names the route and the pool, and `/lb/metrics` has the route families
//! (checked by promtool). A reload keeps the counters of a route whose name stays and starts a
//! new name from zero. Loopback only; every wait polls within a bound.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::api::request;
use common::lb::Lb;
use common::{backends, promtool_check, unused_port, wait_until, Conn, Resp};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(10);

/// A config's `pools` and `routes`: `api` (one live backend), `dead` (a port nothing listens
/// on), and four routes; `old` is the one a reload replaces with `moved`.
fn settings(api: SocketAddr, dead_port: u16, log: &Path, old_route: &str) -> String {
    format!(
        r#""access_log": true, "access_log_format": "json", "access_log_file": "{}",
           "pools": {{"api": {{"backends": [{{"id": "a1", "host": "127.0.0.1", "port": {}}}]}},
                      "dead": {{"backends": [{{"id": "x1", "host": "127.0.0.1", "port": {dead_port}}}], "max_tries": 1}}}},
           "routes": [
             {old_route},
             {{"name": "api", "host": "api.example.com", "path_prefix": "/v1", "strip_prefix": "/v1", "pool": "api"}},
             {{"name": "broken", "path_prefix": "/broken", "pool": "dead"}},
             {{"name": "private", "path_prefix": "/private", "respond": {{"status": 403, "body": "no"}}}}
           ]"#,
        log.display(),
        api.port(),
    )
}

const OLD: &str = r#"{"name": "old", "path_prefix": "/old", "redirect": {"status": 301, "path": "/new"}}"#;
const MOVED: &str = r#"{"name": "moved", "path_prefix": "/old", "redirect": {"status": 302, "path": "/new"}}"#;

fn send(addr: SocketAddr, target: &str, host: &str) -> Resp {
    let mut conn = Conn::open(addr);
    conn.send(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    conn.response()
}

fn get(lb: &Lb, path: &str) -> Value {
    let resp = request(lb.addr, "GET", path, "");
    assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    resp.json()
}

/// The route named `name` in `/lb/routes`.
fn route<'a>(routes: &'a Value, name: &str) -> &'a Value {
    routes["routes"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or(&Value::Null)
}

/// `{"1xx": .., "5xx": ..}` with `n` in `class` and 0 elsewhere.
fn only(class: &str, n: u64) -> Value {
    let mut counts = json!({"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0});
    counts[class] = json!(n);
    counts
}

/// The JSON access-log lines so far.
fn log_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn each_route_counts_its_answers_and_shows_them_in_routes_stats_the_log_and_metrics() {
    let (children, addrs) = backends(2, &[]);
    let dir = common::unique_dir("route-stats");
    let log = dir.join("access.log");
    let dead = unused_port();
    let lb = Lb::start(&addrs[..1], &settings(addrs[1], dead, &log, OLD));

    // The mix: three to api, two redirects, one deny, one to a dead pool, two no route.
    for _ in 0..3 {
        let resp = send(lb.addr, "/v1/users", "api.example.com");
        assert_eq!((resp.status, resp.json()["request"]["path"].as_str()), (200, Some("/users")));
    }
    for _ in 0..2 {
        assert_eq!(send(lb.addr, "/old/page", "t.example").status, 301);
    }
    assert_eq!(send(lb.addr, "/private/x", "t.example").status, 403);
    assert_eq!(send(lb.addr, "/broken", "t.example").status, 502);
    for _ in 0..2 {
        assert_eq!(send(lb.addr, "/other", "t.example").status, 200);
    }

    let routes = get(&lb, "/lb/routes");
    let names: Vec<&str> = routes["routes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "private", "broken", "old"], "precedence order: exact host, then longest prefix");
    let api = route(&routes, "api");
    assert_eq!((api["precedence"].as_u64(), api["position"].as_u64()), (Some(1), Some(1)));
    assert_eq!(api["match"], json!({"host": ["api.example.com"], "path_prefix": "/v1"}));
    assert_eq!(api["action"], json!({"pool": "api", "strip_prefix": "/v1"}));
    assert_eq!((api["requests"].as_u64(), api["failed_requests"].as_u64()), (Some(3), Some(0)));
    assert_eq!(api["responses"], only("2xx", 3));
    assert_eq!(api["answered_by_balancer"], only("2xx", 0));
    assert_eq!(api["latency"]["count"], 3);
    for key in ["p50_ms", "p99_ms"] {
        assert!(api["latency"][key].as_f64().is_some_and(|ms| ms >= 0.0), "{key}: {api}");
    }
    let old = route(&routes, "old");
    assert_eq!(old["action"], json!({"redirect": {"status": 301, "path": "/new"}}));
    assert_eq!((old["responses"].clone(), old["answered_by_balancer"].clone()), (only("3xx", 2), only("3xx", 2)));
    assert_eq!(route(&routes, "private")["responses"], only("4xx", 1));
    let broken = route(&routes, "broken");
    assert_eq!((broken["responses"].clone(), broken["failed_requests"].as_u64()), (only("5xx", 1), Some(1)));
    assert_eq!(routes["unmatched"]["responses"], only("2xx", 2));
    assert_eq!(routes["unmatched"]["goes_to"], "pool default");
    assert_eq!(request(lb.addr, "GET", "/lb/routes/api/x", "").status, 404, "no sub-path");

    // /lb/stats: its fields as before, and the routes by name.
    let stats = get(&lb, "/lb/stats");
    assert_eq!(stats["total_requests"], 9);
    assert_eq!(stats["routes"]["api"]["requests"], 3);
    assert_eq!(stats["routes"]["old"]["responses"], only("3xx", 2));
    assert_eq!(stats["routes"].as_object().unwrap().len(), 4);

    // The access log: the route and the pool of each line (null when none).
    let expected = [
        ("/v1/users", json!("api"), json!("api")),
        ("/old/page", json!("old"), Value::Null),
        ("/private/x", json!("private"), Value::Null),
        ("/broken", json!("broken"), json!("dead")),
        ("/other", Value::Null, json!("default")),
    ];
    assert!(wait_until(LIMIT, || log_lines(&log).len() >= 9), "nine lines: {:?}", std::fs::read_to_string(&log));
    let lines = log_lines(&log);
    for (target, route_name, pool) in expected {
        let line = lines.iter().find(|l| l["target"] == target).unwrap_or_else(|| panic!("no line for {target}"));
        assert_eq!((&line["route"], &line["pool"]), (&route_name, &pool), "{line}");
    }

    // Prometheus: bounded labels (the config's route names), a valid exposition.
    let metrics = request(lb.addr, "GET", "/lb/metrics", "").text();
    for sample in [
        r#"lb_route_requests_total{route="api",class="2xx"} 3"#,
        r#"lb_route_requests_total{route="old",class="3xx"} 2"#,
        r#"lb_route_requests_total{route="broken",class="5xx"} 1"#,
        r#"lb_route_request_duration_seconds_count{route="api"} 3"#,
        r#"lb_unrouted_requests_total{class="2xx"} 2"#,
    ] {
        assert!(metrics.lines().any(|l| l == sample), "no {sample} in\n{metrics}");
    }
    assert!(!metrics.contains("/v1/users"), "no raw path in a label");
    promtool_check(&metrics);

    // A reload that keeps `api` and replaces `old` with `moved`.
    lb.write_config(&addrs[..1], &settings(addrs[1], dead, &log, MOVED));
    let resp = request(lb.addr, "POST", "/lb/config/reload", "");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(send(lb.addr, "/old/page", "t.example").status, 302);
    let routes = get(&lb, "/lb/routes");
    assert_eq!(route(&routes, "api")["responses"], only("2xx", 3), "a kept name keeps its counters");
    assert_eq!(route(&routes, "moved")["responses"], only("3xx", 1), "a new name starts from zero");
    assert_eq!(route(&routes, "old"), &Value::Null, "a removed route is gone");
    assert_eq!(routes["unmatched"]["requests"], 2);
    drop(lb);
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_routes_nothing_route_shaped_shows() {
    let (children, addrs) = backends(1, &[]);
    let lb = Lb::start(&addrs, "");
    assert_eq!(send(lb.addr, "/x", "t.example").status, 200);
    let stats = get(&lb, "/lb/stats");
    assert!(stats.get("routes").is_none(), "{stats}");
    assert_eq!(stats["total_requests"], 1);
    let routes = get(&lb, "/lb/routes");
    assert_eq!(routes["routes"], json!([]));
    assert_eq!(routes["unmatched"]["requests"], 0, "no lookup, nothing counted");
    let metrics = request(lb.addr, "GET", "/lb/metrics", "").text();
    assert!(!metrics.contains("lb_route_") && !metrics.contains("lb_unrouted_"), "{metrics}");
    drop(lb);
    drop(children);
}

/// `GET /lb/routes/{name}`: the route's entry of `/lb/routes` (its precedence, matchers, action
/// and counts), `404` with a JSON error for a name the table does not have (as
/// `/lb/backends/{id}`), and gone after a reload that removes it.
#[test]
fn one_route_by_name_is_its_entry_of_the_table_and_an_unknown_name_is_404() {
    let (children, addrs) = backends(2, &[]);
    let dir = common::unique_dir("route-by-name");
    let log = dir.join("access.log");
    let dead = unused_port();
    let lb = Lb::start(&addrs[..1], &settings(addrs[1], dead, &log, OLD));
    for _ in 0..2 {
        assert_eq!(send(lb.addr, "/v1/users", "api.example.com").status, 200);
    }
    assert_eq!(send(lb.addr, "/old/x", "t.example").status, 301);

    let table = get(&lb, "/lb/routes");
    for name in ["api", "private", "broken", "old"] {
        assert_eq!(get(&lb, &format!("/lb/routes/{name}")), *route(&table, name), "{name}");
    }
    let api = get(&lb, "/lb/routes/api");
    assert_eq!((api["precedence"].as_u64(), api["requests"].as_u64()), (Some(1), Some(2)));
    assert_eq!(api["responses"], only("2xx", 2));
    assert_eq!(get(&lb, "/lb/routes/old")["answered_by_balancer"], only("3xx", 1));

    let missing = request(lb.addr, "GET", "/lb/routes/nope", "");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), json!({"error": "no route 'nope'"}));
    let mut conn = Conn::open(lb.addr);
    conn.send(b"HEAD /lb/routes/api HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(conn.head_response().status, 200);
    let post = request(lb.addr, "POST", "/lb/routes/api", "");
    assert_eq!(post.status, 405, "{}", post.text());

    lb.write_config(&addrs[..1], &settings(addrs[1], dead, &log, MOVED));
    assert_eq!(request(lb.addr, "POST", "/lb/config/reload", "").status, 200);
    assert_eq!(request(lb.addr, "GET", "/lb/routes/old", "").status, 404, "removed by the reload");
    assert_eq!(get(&lb, "/lb/routes/moved")["requests"], 0);
    assert_eq!(get(&lb, "/lb/routes/api")["requests"], 2, "kept by name");
    drop(lb);
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
}
