//! Operating lb-sync (issue 10): the seed's management commands, every status of the API, who
//! may use it, `--admin-listen`, the state file, the counters' identities under load with
//! failures, `/lb/metrics` under `promtool check metrics`, the access log and the process log.
//! Loopback only; no test waits on a clock: each polls for what it needs, within a bound.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::inproc::demo_backend;
use common::lb::{lb_sync, listening_addr};
use common::{unused_port, wait_until, Conn, Resp};
use lb_sync::balance::AlgorithmKind;
use lb_sync::balancer::LoadBalancer;
use lb_sync::config::{BackendConfig, Config};
use lb_sync::server::Server;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(10);

fn config(algorithm: AlgorithmKind, ports: &[u16], tweak: impl FnOnce(&mut Config)) -> Config {
    let backends = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| BackendConfig {
            id: Some(format!("backend{}", i + 1)),
            ..BackendConfig::new("127.0.0.1", port, 1)
        })
        .collect();
    let mut config = {
        let mut adjusted = common::inproc::config(backends);
        adjusted.pool.algorithm = algorithm;
        adjusted.listener.threads = 16;
        adjusted
    };
    tweak(&mut config);
    config
}

fn balancer(algorithm: AlgorithmKind, ports: &[u16], tweak: impl FnOnce(&mut Config)) -> LoadBalancer {
    LoadBalancer::start(config(algorithm, ports, tweak)).unwrap()
}

fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("lb-sync-ops-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// One request on a fresh connection, shaped like curl's (`Host`, `User-Agent`, `Accept`).
fn curl(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)], body: Option<&str>) -> Resp {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nAccept: */*\r\n", addr.port());
    if !extra.iter().any(|(name, _)| name.eq_ignore_ascii_case("user-agent")) {
        raw.push_str("User-Agent: curl/8.5.0\r\n");
    }
    for (name, value) in extra {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    raw.push_str(body.unwrap_or(""));
    let mut conn = Conn::open(addr);
    conn.send(raw.as_bytes());
    conn.response()
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let resp = curl(addr, "GET", path, &[], None);
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
    resp.json()
}

fn post_json(addr: SocketAddr, path: &str, body: &str) -> Resp {
    curl(addr, "POST", path, &[("Content-Type", "application/json")], Some(body))
}

/// `server_info.id` of `n` sequential requests to `/`.
fn served(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut conn = Conn::open(addr);
    (0..n)
        .map(|_| {
            let resp = conn.get("/");
            assert_eq!(resp.status, 200, "{}", resp.text());
            resp.json()["server_info"]["id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn the_seeds_management_commands_work_as_written_with_traffic_checked_after_each() {
    let backends: Vec<(Server, u16)> = (0..4).map(|_| demo_backend()).collect();
    let ports: Vec<u16> = backends.iter().map(|(_, p)| *p).collect();
    let id = |i: usize| format!("backend-{}", ports[i]);
    let lb = balancer(AlgorithmKind::RoundRobin, &ports[..3], |_| {});
    let addr = lb.local_addr();
    assert_eq!(served(addr, 6), [id(0), id(1), id(2), id(0), id(1), id(2)]);

    // curl -X POST -H "Content-Type: application/json" -d '{"host":"localhost","port":8004,"weight":1}' .../lb/backends/add
    let body = format!(r#"{{"host":"localhost","port":{},"weight":1}}"#, ports[3]);
    let added = post_json(addr, "/lb/backends/add", &body);
    assert_eq!(added.status, 201, "{}", added.text());
    assert_eq!(added.json()["id"], "backend4");
    let mut seen = served(addr, 8);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "the added backend takes its turn at once: {seen:?}");

    // curl -X POST http://localhost:8080/lb/backends/backend1/disable (no body, no Content-Length)
    assert_eq!(curl(addr, "POST", "/lb/backends/backend1/disable", &[], None).status, 200);
    let after = served(addr, 9);
    assert!(!after.contains(&id(0)) && after.contains(&id(3)), "disabled from the next pick on: {after:?}");

    assert_eq!(curl(addr, "POST", "/lb/backends/backend1/enable", &[], None).status, 200);
    assert!(served(addr, 8).contains(&id(0)), "enabled again");

    // curl -X DELETE http://localhost:8080/lb/backends/backend1/remove
    assert_eq!(curl(addr, "DELETE", "/lb/backends/backend1/remove", &[], None).status, 200);
    let after = served(addr, 9);
    assert!(!after.contains(&id(0)), "removed: {after:?}");
    assert_eq!(get_json(addr, "/lb/backends").as_array().unwrap().len(), 3);

    // curl http://localhost:8080/lb/stats: every proxied request above, and nothing else.
    let stats = get_json(addr, "/lb/stats");
    assert_eq!(stats["total_requests"], 6 + 8 + 9 + 8 + 9);
    assert_eq!(stats["successful_requests"], stats["total_requests"]);
    assert_eq!(stats["backends"]["total_backends"], 3);
    assert_eq!(stats["backends"]["healthy_backends"], 3);
    lb.stop(Duration::from_secs(1));
}

#[test]
fn every_management_status_allow_and_a_failed_add_leaves_no_trace() {
    let (_b1, p1) = demo_backend();
    let (_b2, p2) = demo_backend();
    let (_b3, p3) = demo_backend();
    // Health checks off: an added backend stays `unknown` for as long as this test looks.
    let lb = balancer(AlgorithmKind::RoundRobin, &[p1, p2], |c| c.health.interval = None);
    let addr = lb.local_addr();

    for (path, allow) in [
        ("/lb/stats", "GET, HEAD, OPTIONS"),
        ("/lb/metrics", "GET, HEAD, OPTIONS"),
        ("/lb/backends", "GET, HEAD, OPTIONS"),
        ("/lb/backends/backend1", "GET, HEAD, OPTIONS"),
        ("/lb/backends/backend1/disable", "POST, OPTIONS"),
        ("/lb/backends/backend1/weight", "POST, OPTIONS"),
        ("/lb/backends/backend1/drain", "POST, OPTIONS"),
        ("/lb/backends/backend1/remove", "DELETE, OPTIONS"),
        ("/lb/backends/add", "POST, OPTIONS"),
    ] {
        let wrong = if allow.starts_with("GET") { "PUT" } else { "GET" };
        let resp = curl(addr, wrong, path, &[], None);
        assert_eq!((resp.status, resp.header("allow")), (405, Some(allow)), "{wrong} {path}");
        assert!(resp.json()["error"].as_str().unwrap().contains("use "), "says what to use");
        assert_eq!(curl(addr, "OPTIONS", path, &[], None).header("allow"), Some(allow));
    }
    assert_eq!(curl(addr, "GET", "/lb/nope", &[], None).status, 404);
    assert_eq!(curl(addr, "POST", "/lb/backends/ghost/disable", &[], None).status, 404);
    assert_eq!(curl(addr, "GET", "/lb/backends/ghost", &[], None).status, 404);
    assert_eq!(get_json(addr, "/lb/backends/backend2")["port"], p2);

    // Failed adds: bad JSON, a bad field, an id outside the URL-safe set, a taken id, a taken
    // address (the same port under another name for the host too).
    for (body, status, field) in [
        ("not json", 400, "JSON"),
        (r#"{"host":"127.0.0.1","port":0}"#, 400, "port"),
        (r#"{"host":"127.0.0.1","port":1,"id":"a/b"}"#, 400, "id"),
        (r#"{"host":"127.0.0.1","port":1,"id":"a b"}"#, 400, "id"),
        (&format!(r#"{{"host":"127.0.0.1","port":{p3},"id":"backend1"}}"#), 409, "backend1"),
        (&format!(r#"{{"host":"127.0.0.1","port":{p1}}}"#), 409, "address"),
        (&format!(r#"{{"host":"localhost","port":{p2}}}"#), 409, "address"),
    ] {
        let resp = post_json(addr, "/lb/backends/add", body);
        assert_eq!(resp.status, status, "{body}: {}", resp.text());
        assert!(resp.json()["error"].as_str().unwrap().contains(field), "{body}: {}", resp.text());
    }
    assert_eq!(get_json(addr, "/lb/backends").as_array().unwrap().len(), 2, "no trace of the failed adds");
    let added = post_json(addr, "/lb/backends/add", &format!(r#"{{"host":"127.0.0.1","port":{p3}}}"#));
    assert_eq!(added.status, 201);
    assert_eq!(added.header("location"), Some("/lb/backends/backend3"));
    let json = added.json();
    assert_eq!((json["id"].as_str(), json["health"].as_str()), (Some("backend3"), Some("unknown")), "no id used up");
    assert_eq!(get_json(addr, "/lb/backends/backend3")["health"], "unknown", "not probed while checks are off");

    // Weight: bad bodies, then a change the next picks follow.
    for body in ["{}", r#"{"weight":0}"#, r#"{"weight":"2"}"#, r#"{"weight":2,"x":1}"#, "[]"] {
        assert_eq!(post_json(addr, "/lb/backends/backend1/weight", body).status, 400, "{body}");
    }
    assert_eq!(post_json(addr, "/lb/backends/ghost/weight", r#"{"weight":2}"#).status, 404);
    let resp = post_json(addr, "/lb/backends/backend2/weight", r#"{"weight":5}"#);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["backend"]["weight"], 5);
    assert_eq!(get_json(addr, "/lb/backends/backend2")["weight"], 5);
    assert_eq!(get_json(addr, "/lb/config")["backends"][1]["weight"], 5);
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_weight_change_and_a_drain_take_effect_on_the_next_pick() {
    let (_b1, p1) = demo_backend();
    let (_b2, p2) = demo_backend();
    let lb = balancer(AlgorithmKind::WeightedRoundRobin, &[p1, p2], |_| {});
    let addr = lb.local_addr();
    let count = |ids: &[String], port: u16| ids.iter().filter(|id| **id == format!("backend-{port}")).count();
    let before = served(addr, 8);
    assert_eq!((count(&before, p1), count(&before, p2)), (4, 4));
    assert_eq!(post_json(addr, "/lb/backends/backend2/weight", r#"{"weight":3}"#).status, 200);
    let after = served(addr, 8);
    assert_eq!((count(&after, p1), count(&after, p2)), (2, 6), "1:3 from the next pick on");
    lb.stop(Duration::from_secs(1));

    // A slow request holds backend1 (round robin's first pick) while it is drained.
    let lb = balancer(AlgorithmKind::RoundRobin, &[p1, p2], |_| {});
    let addr = lb.local_addr();
    let slow = std::thread::spawn(move || {
        let resp = Conn::open(addr).get("/?delay_ms=1500");
        assert_eq!(resp.json()["server_info"]["port"], p1);
        resp.status
    });
    assert!(wait_until(LIMIT, || get_json(addr, "/lb/backends/backend1")["active_connections"] == 1));
    let drained = curl(addr, "POST", "/lb/backends/backend1/drain", &[], None);
    assert_eq!(drained.status, 200, "{}", drained.text());
    let b1 = get_json(addr, "/lb/backends/backend1");
    assert_eq!(
        (&b1["draining"], &b1["enabled"], &b1["usable"]),
        (&Value::Bool(true), &Value::Bool(false), &Value::Bool(false))
    );
    assert_eq!((&b1["active_connections"], &b1["drained"]), (&Value::from(1), &Value::Bool(false)), "in flight shown");
    assert!(served(addr, 6).iter().all(|id| *id == format!("backend-{p2}")), "no new request while draining");
    assert_eq!(slow.join().unwrap(), 200, "the request in flight finishes");
    assert!(wait_until(LIMIT, || get_json(addr, "/lb/backends/backend1")["active_connections"] == 0));
    assert_eq!(get_json(addr, "/lb/backends/backend1")["drained"], true);
    assert_eq!(curl(addr, "POST", "/lb/backends/backend1/enable", &[], None).status, 200);
    assert_eq!(get_json(addr, "/lb/backends/backend1")["draining"], false, "enable ends a drain");
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_backend_added_at_run_time_is_unknown_until_its_first_probe_which_runs_at_once() {
    let (_b1, p1) = demo_backend();
    let (_b2, p2) = demo_backend();
    // An interval far longer than the test: only the probe of a new backend runs at once.
    let lb = balancer(AlgorithmKind::RoundRobin, &[p1], |c| c.health.interval = Some(Duration::from_secs_f64(600.0)));
    let addr = lb.local_addr();
    let resp = post_json(addr, "/lb/backends/add", &format!(r#"{{"host":"127.0.0.1","port":{p2}}}"#));
    assert_eq!(resp.status, 201);
    let health = resp.json()["health"].as_str().unwrap().to_string();
    assert!(health == "unknown" || health == "up", "{health}");
    assert!(wait_until(LIMIT, || get_json(addr, "/lb/backends/backend2")["health"] == "up"));
    let dead = unused_port();
    assert_eq!(post_json(addr, "/lb/backends/add", &format!(r#"{{"host":"127.0.0.1","port":{dead}}}"#)).status, 201);
    assert!(wait_until(LIMIT, || get_json(addr, "/lb/backends/backend3")["health"] == "down"), "one failed probe");
    assert_eq!(get_json(addr, "/lb/health")["usable_backends"], 2);
    assert_eq!(get_json(addr, "/lb/stats")["backends"]["healthy_backends"], 2, "the same definition");
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_token_is_required_from_loopback_when_configured_and_the_dashboard_asks_for_it() {
    let (_b, port) = demo_backend();
    let lb = balancer(AlgorithmKind::RoundRobin, &[port], |c| c.operations.admin_token = Some("s3cret".into()));
    let addr = lb.local_addr();
    let missing = curl(addr, "GET", "/lb/backends", &[], None);
    assert_eq!(missing.status, 401);
    assert!(missing.json()["error"].as_str().unwrap().contains("Authorization: Bearer"), "{}", missing.text());
    assert_eq!(curl(addr, "GET", "/lb/backends", &[("Authorization", "Bearer s3cre")], None).status, 401);
    assert_eq!(curl(addr, "GET", "/lb/backends", &[("Authorization", "Basic s3cret")], None).status, 401);
    assert_eq!(curl(addr, "GET", "/lb/backends", &[("Authorization", "Bearer s3cret")], None).status, 200);
    let forwarded = [("Authorization", "Bearer s3cret"), ("X-Forwarded-For", "203.0.113.9")];
    assert_eq!(curl(addr, "GET", "/lb/stats", &forwarded, None).status, 200, "the token opens it to any peer");
    let page = curl(addr, "GET", "/lb/dashboard", &[], None);
    assert_eq!(page.status, 200, "the page itself holds no data");
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.text().contains("Authorization"), "it sends the token it is given");
    lb.stop(Duration::from_secs(1));
}

#[test]
fn forwarding_headers_from_loopback_are_refused_without_a_token() {
    let (_b, port) = demo_backend();
    let lb = balancer(AlgorithmKind::RoundRobin, &[port], |_| {});
    let addr = lb.local_addr();
    assert_eq!(curl(addr, "GET", "/lb/stats", &[], None).status, 200, "a direct loopback peer");
    for header in ["X-Forwarded-For", "Forwarded", "X-Real-IP"] {
        let resp = curl(addr, "GET", "/lb/stats", &[(header, "for=203.0.113.9")], None);
        assert_eq!(resp.status, 403, "{header}");
        assert!(resp.json()["error"].as_str().unwrap().contains("--admin-token"), "says what to do");
    }
    // The refusals are answers like any other: counted (the API's own answers are not).
    assert_eq!(get_json(addr, "/lb/stats")["answered_by_balancer"]["4xx"], 3);
    lb.stop(Duration::from_secs(1));
}

#[test]
fn absolute_form_targets_are_routed_by_their_path() {
    let (_b, port) = demo_backend();
    let lb = balancer(AlgorithmKind::RoundRobin, &[port], |_| {});
    let addr = lb.local_addr();
    // As curl sends them through a proxy: the target's authority and Host agree.
    let origin = format!("http://localhost:{}", addr.port());
    let stats = curl(addr, "GET", &format!("{origin}/lb/stats"), &[], None);
    assert_eq!(stats.status, 200);
    assert!(stats.json().get("total_requests").is_some(), "the API answered, not a backend: {}", stats.text());
    let proxied = curl(addr, "GET", &format!("{origin}/other?q=1"), &[], None);
    assert_eq!(proxied.json()["request"]["path"], "/other");
    lb.stop(Duration::from_secs(1));
}

#[test]
fn admin_listen_serves_the_api_while_the_data_port_proxies_lb_paths() {
    let (_b, port) = demo_backend();
    let lb = balancer(AlgorithmKind::RoundRobin, &[port], |c| {
        c.operations.admin_listen = Some("127.0.0.1:0".parse().unwrap())
    });
    let admin = lb.admin_addr().expect("an admin listener");
    assert_ne!(admin, lb.local_addr());
    let stats = get_json(admin, "/lb/stats");
    assert!(stats.get("total_requests").is_some());
    let on_data_port = curl(lb.local_addr(), "GET", "/lb/stats", &[], None);
    assert_eq!(on_data_port.status, 200);
    let json = on_data_port.json();
    assert_eq!(json["server_info"]["id"], format!("backend-{port}"), "proxied: {json}");
    assert_eq!(json["request"]["path"], "/lb/stats");
    assert_eq!(curl(admin, "GET", "/", &[], None).status, 404, "the admin listener proxies nothing");
    assert_eq!(curl(admin, "POST", "/lb/backends/backend1/disable", &[], None).status, 200);
    assert_eq!(curl(lb.local_addr(), "GET", "/", &[], None).status, 503, "the change took effect");
    assert_eq!(curl(admin, "GET", "/lb/dashboard", &[], None).status, 200);
    lb.stop(Duration::from_secs(1));
}

#[test]
fn restart_with_a_state_file_keeps_every_change() {
    let ports: Vec<u16> = (0..3).map(|_| unused_port()).collect();
    let (_b, live) = demo_backend();
    let state = temp_path("state.json");
    let make = || {
        config(AlgorithmKind::RoundRobin, &ports, |c| {
            c.operations.state_file = Some(state.clone());
            c.health.interval = None;
        })
    };
    let lb = LoadBalancer::start(make()).unwrap();
    let addr = lb.local_addr();
    assert!(!state.exists(), "nothing changed yet");
    assert_eq!(
        post_json(addr, "/lb/backends/add", &format!(r#"{{"host":"127.0.0.1","port":{live},"weight":2}}"#)).status,
        201
    );
    assert_eq!(curl(addr, "POST", "/lb/backends/backend1/disable", &[], None).status, 200);
    assert_eq!(curl(addr, "POST", "/lb/backends/backend2/drain", &[], None).status, 200);
    assert_eq!(post_json(addr, "/lb/backends/backend3/weight", r#"{"weight":7}"#).status, 200);
    assert_eq!(curl(addr, "DELETE", "/lb/backends/backend4/remove", &[], None).status, 200);
    assert_eq!(
        post_json(addr, "/lb/backends/add", &format!(r#"{{"host":"127.0.0.1","port":{live},"id":"web-1"}}"#)).status,
        201
    );
    let summary = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|b| format!("{} {} {} {} {}", b["id"], b["port"], b["weight"], b["enabled"], b["draining"]))
            .collect()
    };
    let before = summary(&get_json(addr, "/lb/backends"));
    lb.stop(Duration::from_secs(1));

    let lb = LoadBalancer::start(make()).unwrap();
    let addr = lb.local_addr();
    assert_eq!(summary(&get_json(addr, "/lb/backends")), before, "every change survived the restart");
    let next = post_json(addr, "/lb/backends/add", &format!(r#"{{"host":"127.0.0.1","port":{}}}"#, unused_port()));
    assert_eq!(next.json()["id"], "backend5", "ids are never reused: backend4 was removed");
    lb.stop(Duration::from_secs(1));

    // A corrupt file stops the start with a clear error and is left as it is.
    std::fs::write(&state, "{\"version\": 1, \"backends\": [").unwrap();
    let error = LoadBalancer::start(make()).err().expect("a corrupt state file is an error").to_string();
    assert!(error.contains("corrupt") && error.contains(&state.display().to_string()), "{error}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "{\"version\": 1, \"backends\": [", "not replaced");
    let out = Command::new(env!("CARGO_BIN_EXE_lb-sync"))
        .args(["--port", "0", "--host", "127.0.0.1", "--state-file"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is corrupt"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(&state).unwrap();
}

/// A backend that closes every connection after reading the request: the try fails after the
/// request was sent.
fn closes_without_answer() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
        }
    });
    port
}

#[test]
fn counters_agree_with_each_other_and_with_the_clients_under_concurrent_load_with_failures() {
    let (_good, good) = demo_backend();
    let (_other, other) = demo_backend();
    let closing = closes_without_answer();
    let refused = unused_port();
    let lb = balancer(AlgorithmKind::RoundRobin, &[good, other, closing, refused], |c| {
        c.health.interval = None; // keep the failing backends in the rotation
        c.pool.retry_budget_min = 1_000_000;
        c.listener.max_connections = 10_000;
    });
    let addr = lb.local_addr();
    let answered = Arc::new(AtomicU64::new(0));
    let refusals = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // A reader checks the identity on every reading while the load runs.
    let reader = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut readings = 0;
            while !done.load(Ordering::SeqCst) || readings < 5 {
                let s = get_json(addr, "/lb/stats");
                let (t, ok, failed) =
                    (s["total_requests"].as_u64(), s["successful_requests"].as_u64(), s["failed_requests"].as_u64());
                assert_eq!(t, Some(ok.unwrap() + failed.unwrap()), "total = successful + failed in every reading");
                readings += 1;
            }
        })
    };
    let clients: Vec<_> = (0..8)
        .map(|t| {
            let answered = Arc::clone(&answered);
            let refusals = Arc::clone(&refusals);
            std::thread::spawn(move || {
                for i in 0..40 {
                    let resp = match (t + i) % 7 {
                        0 => curl(addr, "POST", "/post", &[], Some("body")), // 502 when it meets the closing backend
                        1 => curl(addr, "GET", "/?status=500", &[], None),
                        2 => curl(addr, "GET", "/?status=404", &[], None),
                        3 => {
                            // The front end's own refusals: a malformed request line (400), a
                            // head over 32 KiB (431).
                            let mut conn = Conn::open(addr);
                            conn.send(b"BAD\r\n\r\n");
                            let resp = conn.response();
                            assert_eq!(resp.status, 400);
                            refusals.fetch_add(1, Ordering::SeqCst);
                            resp
                        }
                        4 => {
                            let mut conn = Conn::open(addr);
                            conn.send(
                                format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "x".repeat(40_000))
                                    .as_bytes(),
                            );
                            let resp = conn.response();
                            assert_eq!(resp.status, 431);
                            refusals.fetch_add(1, Ordering::SeqCst);
                            resp
                        }
                        _ => curl(addr, "GET", "/", &[], None),
                    };
                    assert!(resp.status >= 200);
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    assert!(wait_until(LIMIT, || get_json(addr, "/lb/stats")["in_flight"] == 0));

    let stats = get_json(addr, "/lb/stats");
    let backends = get_json(addr, "/lb/backends");
    let n = |v: &Value| v.as_u64().unwrap();
    let classes = |v: &Value| ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().map(|c| n(&v[c])).sum::<u64>();
    let total = n(&stats["total_requests"]);
    assert_eq!(total, answered.load(Ordering::SeqCst), "every answer the clients got is counted once");
    assert_eq!(total, n(&stats["successful_requests"]) + n(&stats["failed_requests"]));
    assert_eq!(classes(&stats["responses"]), total);
    assert_eq!(n(&stats["failed_requests"]), n(&stats["responses"]["5xx"]));
    assert_eq!(n(&stats["answered_by_balancer"]["4xx"]), refusals.load(Ordering::SeqCst), "each 400 and 431 once");
    let list = backends.as_array().unwrap();
    let from_backends: u64 = list.iter().map(|b| classes(&b["responses"])).sum();
    assert_eq!(from_backends + classes(&stats["answered_by_balancer"]), total);
    for b in list {
        let sent = n(&b["total_requests"]);
        assert_eq!(
            sent,
            n(&b["failed_requests"]) + classes(&b["responses"]),
            "{}: tries = failures + answers",
            b["id"]
        );
        let breaker = &b["circuit_breaker"];
        assert_eq!(
            n(&breaker["failure_count"]) + n(&breaker["success_count"]),
            sent,
            "{}: the breaker heard every try",
            b["id"]
        );
    }
    let retries = &stats["retries"];
    assert_eq!(list.iter().map(|b| n(&b["total_requests"])).sum::<u64>(), n(&retries["tries"]));
    let failed_tries: u64 = retries["failed_tries"].as_object().unwrap().values().map(n).sum();
    assert_eq!(list.iter().map(|b| n(&b["failed_requests"])).sum::<u64>(), failed_tries);
    assert!(failed_tries > 0, "failures were mixed in");
    let breaker = &stats["circuit_breaker"];
    assert_eq!(n(&breaker["failure_count"]) + n(&breaker["success_count"]), n(&retries["tries"]));
    assert_eq!(
        n(&stats["latency"]["count"]),
        total - n(&stats["answered_by_balancer"]["4xx"]),
        "one latency per proxied answer"
    );

    // /lb/metrics reads the same counters.
    let metrics = curl(addr, "GET", "/lb/metrics", &[], None).text();
    let sum = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(sum("lb_requests_total{") as u64, total);
    assert_eq!(sum("lb_backend_tries_total{") as u64, n(&retries["tries"]));
    assert_eq!(sum("lb_request_duration_seconds_count") as u64, n(&stats["latency"]["count"]));
    lb.stop(Duration::from_secs(1));
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    let (_b, port) = demo_backend();
    let lb = balancer(AlgorithmKind::RoundRobin, &[port, unused_port()], |c| c.health.interval = None);
    let addr = lb.local_addr();
    for path in ["/", "/?status=503", "/?status=302", "/?delay_ms=20"] {
        curl(addr, "GET", path, &[], None);
    }
    let resp = curl(addr, "GET", "/lb/metrics", &[], None);
    assert_eq!(resp.status, 200);
    assert!(resp.header("content-type").unwrap().contains("version=0.0.4"));
    let text = resp.text();
    for family in [
        "lb_requests_total{class=\"2xx\"}",
        "lb_backend_responses_total{pool=\"default\",backend=\"backend1\",class=\"2xx\"}",
        "lb_request_duration_seconds_bucket{le=\"+Inf\"}",
        "lb_backend_response_duration_seconds_count{pool=\"default\",backend=\"backend1\"}",
        "lb_in_flight_requests ",
        "lb_queue_depth ",
        "lb_backend_up{pool=\"default\",backend=\"backend2\"}",
        "lb_backend_weight{pool=\"default\",backend=\"backend1\"} 1",
        "lb_backend_circuit_state{pool=\"default\",backend=\"backend1\",state=\"closed\"} 1",
        "lb_retries_total ",
        "lb_rate_limited_total 0",
    ] {
        assert!(text.contains(family), "no {family} in\n{text}");
    }
    common::promtool_check(&text);
    lb.stop(Duration::from_secs(1));
}

/// An `lb-sync` child process; killed and reaped when dropped.
struct LbProcess {
    child: Child,
    addr: SocketAddr,
}

impl LbProcess {
    fn start(args: &[&str]) -> LbProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lb-sync"))
            .args(["--host", "127.0.0.1", "--port", "0", "--threads", "8"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = listening_addr(&line).unwrap_or_else(|| panic!("no address in the ready line {line:?}"));
        LbProcess { child, addr }
    }
}

impl Drop for LbProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` holds a line containing `needle`; returns that line.
fn line_with(path: &PathBuf, needle: &str) -> String {
    let mut found = None;
    wait_until(LIMIT, || {
        found =
            std::fs::read_to_string(path).ok().and_then(|t| t.lines().find(|l| l.contains(needle)).map(str::to_string));
        found.is_some()
    });
    found
        .unwrap_or_else(|| panic!("no line with {needle:?} in {}: {:?}", path.display(), std::fs::read_to_string(path)))
}

/// nginx `combined` plus the four fields: returns the fields, quotes removed, brackets kept.
fn parse_combined(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (field, tail) = if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').expect("closing quote");
            (quoted[..end].to_string(), &quoted[end + 1..])
        } else if rest.starts_with('[') {
            let end = rest.find(']').expect("closing bracket");
            (rest[..=end].to_string(), &rest[end + 1..])
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            (rest[..end].to_string(), &rest[end..])
        };
        fields.push(field);
        rest = tail.trim_start();
    }
    fields
}

#[test]
fn the_access_log_line_of_a_known_request_is_nginx_combined_and_the_process_log_goes_to_its_file() {
    let (_b, port) = demo_backend();
    let access = temp_path("access.log");
    let app = temp_path("app.log");
    let backend = format!("127.0.0.1:{port}");
    let lb = LbProcess::start(&[
        "--backend",
        &backend,
        "--access-log-file",
        access.to_str().unwrap(),
        "--log-file",
        app.to_str().unwrap(),
        "--debug",
    ]);
    let resp = curl(
        lb.addr,
        "GET",
        "/hello?x=1",
        &[("Referer", "http://ref.example/"), ("User-Agent", "probe \"1\""), ("X-Request-Id", "known-id-42")],
        None,
    );
    assert_eq!(resp.status, 200);
    let upstream_headers = &resp.json()["request"]["headers"];
    assert_eq!(upstream_headers["x-request-id"], "known-id-42", "an incoming id is passed on: {upstream_headers}");
    let line = line_with(&access, "known-id-42");
    let f = parse_combined(&line);
    assert_eq!(f.len(), 13, "{line}");
    assert_eq!((f[0].as_str(), f[1].as_str(), f[2].as_str()), ("127.0.0.1", "-", "-"));
    assert!(f[3].starts_with('[') && f[3].ends_with(" +0000]"), "{}", f[3]);
    assert_eq!(f[4], "GET /hello?x=1 HTTP/1.1");
    assert_eq!(f[5], "200");
    assert_eq!(f[6].parse::<usize>().unwrap(), resp.body.len(), "body_bytes_sent");
    assert_eq!(f[7], "http://ref.example/");
    assert_eq!(f[8], "probe \\x221\\x22", "quotes escaped as nginx does");
    assert_eq!(f[9], backend, "upstream address");
    assert!(f[10].parse::<f64>().is_ok() && f[11].parse::<f64>().is_ok(), "upstream and request times: {line}");
    assert_eq!(f[12], "known-id-42");

    // Without an incoming id, ours goes upstream and into the line.
    let resp = curl(lb.addr, "GET", "/second", &[], None);
    let id = resp.json()["request"]["headers"]["x-request-id"].as_str().unwrap().to_string();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert!(line_with(&access, &id).contains("\"GET /second HTTP/1.1\" 200 "));

    // A refusal of the front end is logged too, in both logs, with its request line as sent
    // (nginx's `$request`).
    let mut conn = Conn::open(lb.addr);
    conn.send(b"NONSENSE\r\n\r\n");
    assert_eq!(conn.response().status, 400);
    assert!(line_with(&access, "\"NONSENSE\" 400 0").starts_with("127.0.0.1 - - ["));
    line_with(&app, "refused a request from 127.0.0.1");

    // The process log: startup, --debug's decision per request, nothing of ureq's internals.
    line_with(&app, "listening on");
    let decision = line_with(&app, "GET /second: try 1: round_robin chose backend1");
    assert!(decision.contains("DEBUG") && decision.contains("passed over: none"), "{decision}");
    let text = std::fs::read_to_string(&app).unwrap();
    assert!(!text.lines().any(|l| l.contains(" ureq")), "ureq's internals stay out:\n{text}");
    assert!(!std::fs::read_to_string(&access).unwrap().contains("listening on"), "the two logs stay apart");
    drop(lb);
    let _ = std::fs::remove_file(&access);
    let _ = std::fs::remove_file(&app);
}

#[test]
fn debug_explains_skipped_backends_and_retries() {
    let (_b, port) = demo_backend();
    let app = temp_path("debug.log");
    let dead = format!("dead=127.0.0.1:{}", unused_port());
    let live = format!("live=127.0.0.1:{port}");
    let lb = LbProcess::start(&[
        "--backend",
        &dead,
        "--backend",
        &live,
        "--health-check-interval",
        "0",
        "--access-log",
        "false",
        "--log-file",
        app.to_str().unwrap(),
        "--debug",
    ]);
    assert_eq!(curl(lb.addr, "GET", "/retry-me", &[], None).status, 200);
    let failed = line_with(&app, "GET /retry-me: dead failed");
    assert!(failed.contains("retrying on another backend: the request never reached this one"), "{failed}");
    let second = line_with(&app, "GET /retry-me: try 2");
    assert!(second.contains("chose live") && second.contains("dead (tried already)"), "{second}");
    assert_eq!(curl(lb.addr, "POST", "/lb/backends/dead/disable", &[], None).status, 200);
    curl(lb.addr, "GET", "/after-disable", &[], None);
    assert!(line_with(&app, "GET /after-disable: try 1").contains("passed over: dead (disabled)"));
    line_with(&app, "backend dead disabled");
    drop(lb);
    let _ = std::fs::remove_file(&app);
}

#[test]
fn version_and_help_name_the_new_flags() {
    let out = lb_sync(&["--version"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("lb-sync {}", env!("CARGO_PKG_VERSION")));
    let out = lb_sync(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in
        ["--admin-listen", "--state-file", "--access-log-format", "--access-log-file", "--log-file", "--version"]
    {
        assert!(help.contains(flag), "{flag} in --help");
    }
    let out = lb_sync(&["--access-log-format", "apache"]);
    assert_eq!(out.status.code(), Some(2));
    let out = lb_sync(&["--backend", "a/b=127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(2), "ids are URL-safe");
}

#[test]
fn rate_limited_requests_are_counted_as_the_balancers_answers_and_in_the_metrics() {
    let (_b, port) = demo_backend();
    // One request per 1000 s after a burst of 2: the third in a row is refused.
    let lb = balancer(AlgorithmKind::RoundRobin, &[port], |c| {
        c.client_limits.rate_limit = 0.001;
        c.client_limits.rate_limit_burst = 2;
    });
    let addr = lb.local_addr();
    let statuses: Vec<u16> = (0..4).map(|_| curl(addr, "GET", "/", &[], None).status).collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
    let stats = get_json(addr, "/lb/stats");
    assert_eq!((stats["total_requests"].as_u64(), stats["answered_by_balancer"]["4xx"].as_u64()), (Some(4), Some(2)));
    assert_eq!(stats["rate_limiter"]["rejected_requests"], 2);
    assert!(curl(addr, "GET", "/lb/metrics", &[], None).text().contains("\nlb_rate_limited_total 2\n"));
    lb.stop(Duration::from_secs(1));
}
