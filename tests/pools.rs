//! Named pools (issue 26, item 1): a real lb-sync with a config of three pools (`default` and
//! two named) over real lb-backend processes. Each pool's backends and algorithm show in
//! `/lb/pools` and `/lb/pools/{pool}/backends`; a change in one pool leaves the others alone;
//! each pool's own health checks judge its backends; a reload adds, changes and removes pools
//! and keeps what did not change; bad pool configs are refused naming the pool; the state file
//! keeps every pool's changes across a restart, reads an older file as the default pool's and
//! skips a pool no longer configured. Loopback only; every wait polls within a bound.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::api::request;
use common::lb::{lb_sync, Lb};
use common::{backends, served_by, unused_port, wait_until, ChildProcess, Conn};
use lb_sync::balancer::LoadBalancer;
use lb_sync::config::Config;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(10);

/// `[{"id": ID, "host": "127.0.0.1", "port": PORT}, ...]`.
fn list(backends: &[(&str, SocketAddr)]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|(id, addr)| format!(r#"{{"id": "{id}", "host": "127.0.0.1", "port": {}}}"#, addr.port()))
        .collect();
    format!("[{}]", items.join(", "))
}

/// `GET path` on the API as JSON, with its status.
fn get(lb: &Lb, path: &str) -> (u16, Value) {
    let resp = request(lb.addr, "GET", path, "");
    (resp.status, resp.json())
}

/// The pool named `name` in `/lb/pools`.
fn pool(lb: &Lb, name: &str) -> Value {
    let (status, pools) = get(lb, "/lb/pools");
    assert_eq!(status, 200);
    pools.as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null)
}

/// The ids and `enabled` of a backend list.
fn ids_enabled(backends: &Value) -> Vec<(String, bool)> {
    backends
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap().to_string(), b["enabled"].as_bool().unwrap()))
        .collect()
}

/// Three pools: `default` (one backend, round robin), `api` (two, least connections, three
/// tries) and `web` (one, ip_hash). `default`'s backend and `api`'s first share an id.
struct Three {
    lb: Lb,
    _backends: Vec<ChildProcess>,
    addrs: Vec<SocketAddr>,
    /// The id of the default pool's backend, and of `api`'s first.
    shared_id: String,
}

fn three_pools() -> Three {
    let (children, addrs) = backends(4, &[]);
    // The helper names the default pool's backend `p<port>`.
    let shared_id = format!("p{}", addrs[0].port());
    let settings = format!(
        r#""pools": {{"api": {{"backends": {}, "algorithm": "least_connections", "max_tries": 3}},
                     "web": {{"backends": {}, "algorithm": "ip_hash"}}}}"#,
        list(&[(&shared_id, addrs[1]), ("b2", addrs[2])]),
        list(&[("w1", addrs[3])]),
    );
    let lb = Lb::start(&addrs[..1], &settings);
    Three { lb, _backends: children, addrs, shared_id }
}

#[test]
fn each_pool_shows_its_backends_and_algorithm_and_default_takes_the_traffic() {
    let three = three_pools();
    let lb = &three.lb;
    let (status, pools) = get(lb, "/lb/pools");
    assert_eq!(status, 200);
    let summary: Vec<(String, String, u64)> = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap().to_string();
            (name, p["algorithm"].as_str().unwrap().to_string(), p["backends"]["total"].as_u64().unwrap())
        })
        .collect();
    let expected = [("default", "round_robin", 1), ("api", "least_connections", 2), ("web", "ip_hash", 1)];
    let expected: Vec<(String, String, u64)> =
        expected.iter().map(|(n, a, t)| (n.to_string(), a.to_string(), *t)).collect();
    assert_eq!(summary, expected);
    let (status, api) = get(lb, "/lb/pools/api/backends");
    assert_eq!(status, 200);
    let ports: Vec<u64> = api.as_array().unwrap().iter().map(|b| b["port"].as_u64().unwrap()).collect();
    assert_eq!(ports, [u64::from(three.addrs[1].port()), u64::from(three.addrs[2].port())]);
    let (status, b2) = get(lb, "/lb/pools/api/backends/b2");
    assert_eq!((status, b2["port"].as_u64()), (200, Some(u64::from(three.addrs[2].port()))));
    // /lb/backends is the default pool's, and so is /lb/pools/default/backends.
    let (_, default) = get(lb, "/lb/backends");
    assert_eq!(ids_enabled(&default), [(three.shared_id.clone(), true)]);
    assert_eq!(get(lb, "/lb/pools/default/backends").1, default);
    // Every request goes to the default pool for now.
    let mut conn = Conn::open(lb.addr);
    for _ in 0..3 {
        let resp = conn.get("/");
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.json()["server_info"]["port"].as_u64(),
            Some(u64::from(three.addrs[0].port())),
            "{}",
            served_by(&resp)
        );
    }
    assert!(wait_until(LIMIT, || pool(lb, "default")["requests"] == 3));
    assert_eq!((pool(lb, "api")["requests"].as_u64(), pool(lb, "web")["requests"].as_u64()), (Some(0), Some(0)));
    let stats = common::api::stats(lb.addr);
    assert_eq!(stats["pools"]["default"]["requests"], 3);
    assert_eq!(stats["pools"]["api"]["backends"]["total"], 2);
    assert_eq!(stats["backends"]["total_backends"], 1, "the seed's fields stay the default pool's");
    let metrics = request(lb.addr, "GET", "/lb/metrics", "").text();
    for line in [
        r#"lb_pool_requests_total{pool="default",class="2xx"} 3"#,
        r#"lb_pool_requests_total{pool="api",class="2xx"} 0"#,
        r#"lb_pool_backends{pool="api"} 2"#,
        r#"lb_pool_usable_backends{pool="web"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no line {line} in\n{metrics}");
    }
    // Every per-backend series names its pool: default's backend and api's first share an id,
    // and each has its own series (promtool refuses a series written twice).
    let id = &three.shared_id;
    for line in [
        format!(r#"lb_backend_responses_total{{pool="default",backend="{id}",class="2xx"}} 3"#),
        format!(r#"lb_backend_responses_total{{pool="api",backend="{id}",class="2xx"}} 0"#),
        format!(r#"lb_backend_tries_total{{pool="default",backend="{id}"}} 3"#),
        format!(r#"lb_backend_tries_total{{pool="api",backend="{id}"}} 0"#),
        format!(r#"lb_backend_circuit_state{{pool="api",backend="{id}",state="closed"}} 1"#),
        r#"lb_backend_weight{pool="api",backend="b2"} 1"#.to_string(),
        r#"lb_backend_usable{pool="web",backend="w1"} 1"#.to_string(),
        r#"lb_backend_response_duration_seconds_count{pool="web",backend="w1"} 0"#.to_string(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "no line {line} in\n{metrics}");
    }
    let per_backend = |family: &str| metrics.lines().filter(|l| l.starts_with(&format!("{family}{{"))).count();
    assert_eq!(per_backend("lb_backend_up"), 4, "one series per backend of every pool:\n{metrics}");
    assert!(
        metrics.lines().filter(|l| l.starts_with("lb_backend_")).all(|l| l.contains("{pool=\"")),
        "every per-backend series has its pool first:\n{metrics}"
    );
    common::promtool_check(&metrics);
    // An unknown pool is a 404 naming it, on every path under it.
    for path in ["/lb/pools/nope", "/lb/pools/nope/backends", "/lb/pools/nope/backends/b2"] {
        let (status, body) = get(lb, path);
        assert_eq!(status, 404, "{path}");
        assert!(body["error"].as_str().unwrap().contains("'nope'"), "{path}: {body}");
    }
    let resp = request(lb.addr, "POST", "/lb/pools/nope/backends/b2/disable", "");
    assert_eq!(resp.status, 404);
}

#[test]
fn a_change_in_one_pool_changes_nothing_in_another() {
    let three = three_pools();
    let lb = &three.lb;
    let id = &three.shared_id;
    let resp = request(lb.addr, "POST", &format!("/lb/pools/api/backends/{id}/disable"), "");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["backend"]["enabled"], false);
    assert_eq!(ids_enabled(&get(lb, "/lb/pools/api/backends").1), [(id.clone(), false), ("b2".into(), true)]);
    // The default pool's backend of that id is another backend.
    assert_eq!(ids_enabled(&get(lb, "/lb/backends").1), [(id.clone(), true)]);
    assert_eq!(Conn::open(lb.addr).get("/").status, 200);
    // The other verbs, as /lb/backends has them.
    let resp = request(lb.addr, "POST", "/lb/pools/web/backends/w1/weight", r#"{"weight": 5}"#);
    assert_eq!((resp.status, resp.json()["backend"]["weight"].as_u64()), (200, Some(5)));
    let body = format!(r#"{{"id": "w2", "host": "127.0.0.1", "port": {}}}"#, three.addrs[0].port());
    let resp = request(lb.addr, "POST", "/lb/pools/web/backends/add", &body);
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(resp.header("Location"), Some("/lb/pools/web/backends/w2"));
    let resp = request(lb.addr, "DELETE", "/lb/pools/web/backends/w2/remove", "");
    assert_eq!(resp.status, 200);
    let resp = request(lb.addr, "GET", "/lb/pools/web/backends/w2", "");
    assert_eq!(resp.status, 404);
    let resp = request(lb.addr, "GET", "/lb/pools/web/backends/add", "");
    assert_eq!((resp.status, resp.header("Allow")), (405, Some("POST, OPTIONS")));
    assert_eq!(ids_enabled(&get(lb, "/lb/backends").1), [(id.clone(), true)]);
    assert_eq!(get(lb, &format!("/lb/backends/{id}")).1["weight"], 1);
}

#[test]
fn a_pool_whose_backends_are_down_is_down_by_its_own_checks_while_default_stays_up() {
    let (children, addrs) = backends(1, &[]);
    let dead = SocketAddr::from(([127, 0, 0, 1], unused_port()));
    // Checks only in the pool `api`, fast; the top level has none.
    let settings = format!(
        r#""health_check_interval": 0, "pools": {{"api": {{"backends": {}, "health_check_interval": 0.1,
            "health_check_fast_interval": 0.05, "health_check_fall": 1}}}}"#,
        list(&[("dead", dead)])
    );
    let lb = Lb::start(&addrs, &settings);
    assert!(wait_until(LIMIT, || pool(&lb, "api")["status"] == "down"), "{}", pool(&lb, "api"));
    let (_, dead_backend) = get(&lb, "/lb/pools/api/backends/dead");
    assert_eq!(
        (dead_backend["health"].as_str(), dead_backend["last_check"]["ok"].as_bool()),
        (Some("down"), Some(false))
    );
    let default = pool(&lb, "default");
    assert_eq!((default["status"].as_str(), default["backends"]["healthy"].as_u64()), (Some("up"), Some(1)));
    assert_eq!(get(&lb, "/lb/backends").1[0]["last_check"], Value::Null, "the default pool has no checks");
    assert_eq!(request(lb.addr, "GET", "/lb/health", "").status, 200);
    assert_eq!(Conn::open(lb.addr).get("/").status, 200);
    drop(children);
}

#[test]
fn reload_adds_changes_and_removes_pools_and_keeps_the_rest() {
    let (children, addrs) = backends(4, &[]);
    let pools = |api: &str, web: Option<&str>, extra: Option<&str>| {
        let mut named = vec![format!(r#""api": {{"backends": {api}}}"#)];
        if let Some(web) = web {
            named.push(format!(r#""web": {{"backends": {web}, "health_check_interval": 0.2}}"#));
        }
        if let Some(extra) = extra {
            named.push(format!(r#""extra": {{"backends": {extra}, "algorithm": "p2c"}}"#));
        }
        // The top level without checks in every version (the helper adds it only when no pool
        // names the key).
        format!(r#""health_check_interval": 0, "pools": {{{}}}"#, named.join(", "))
    };
    let web = list(&[("w1", addrs[3])]);
    let lb = Lb::start(&addrs[..1], &pools(&list(&[("a1", addrs[1])]), Some(&web), None));
    // Live state to keep: web's backend disabled and probed, default's counters.
    assert_eq!(request(lb.addr, "POST", "/lb/pools/web/backends/w1/disable", "").status, 200);
    assert!(wait_until(LIMIT, || get(&lb, "/lb/pools/web/backends/w1").1["last_check"]["ok"] == true));
    assert_eq!(Conn::open(lb.addr).get("/").status, 200);
    assert!(wait_until(LIMIT, || pool(&lb, "default")["requests"] == 1));
    // api gets a second backend.
    lb.write_config(&addrs[..1], &pools(&list(&[("a1", addrs[1]), ("a2", addrs[2])]), Some(&web), None));
    let resp = request(lb.addr, "POST", "/lb/config/reload", "");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["changes"], "pool api: backends added: a2");
    assert_eq!(pool(&lb, "api")["backends"]["total"], 2);
    assert_eq!(ids_enabled(&get(&lb, "/lb/pools/web/backends").1), [("w1".to_string(), false)], "web kept its table");
    assert_eq!(pool(&lb, "default")["requests"], 1, "default kept its counters");
    // web goes, extra comes.
    lb.write_config(&addrs[..1], &pools(&list(&[("a1", addrs[1])]), None, Some(&list(&[("x1", addrs[3])]))));
    let resp = request(lb.addr, "POST", "/lb/config/reload", "");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["changes"], "pools added: extra; pools removed: web; pool api: backends removed: a2");
    let names: Vec<Value> = get(&lb, "/lb/pools").1.as_array().unwrap().iter().map(|p| p["name"].clone()).collect();
    assert_eq!(names, ["default", "api", "extra"]);
    assert_eq!(get(&lb, "/lb/pools/web/backends").0, 404);
    assert_eq!(pool(&lb, "extra")["algorithm"], "p2c");
    // A bad pool refuses the whole reload: nothing changes.
    lb.write_config(
        &addrs[..1],
        &format!(r#""pools": {{"api": {{"backends": {}, "max_tries": 0}}}}"#, list(&[("a1", addrs[1])])),
    );
    let resp = request(lb.addr, "POST", "/lb/config/reload", "");
    assert_eq!(resp.status, 400);
    assert!(
        resp.json()["error"].as_str().unwrap().contains("pool 'api': max_tries must be 1-100, got 0"),
        "{}",
        resp.text()
    );
    assert_eq!(pool(&lb, "extra")["backends"]["total"], 1);
    drop(children);
}

#[test]
fn a_kept_pool_keeps_its_table_and_counters_across_a_reload() {
    let (children, addrs) = backends(3, &[]);
    let config = |api: &str| -> Config {
        serde_json::from_str(&format!(
            r#"{{"host": "127.0.0.1", "port": 0, "access_log": false, "health_check_interval": 0,
                 "backends": {}, "pools": {{"api": {{"backends": {api}}}, "web": {{"backends": {}}}}}}}"#,
            list(&[("d1", addrs[0])]),
            list(&[("w1", addrs[2])]),
        ))
        .unwrap()
    };
    let lb = LoadBalancer::start(config(&list(&[("a1", addrs[1])]))).unwrap();
    let before = lb.shared();
    let web = before.pools.get("web").unwrap();
    web.stats.record(200);
    web.table.snapshot().backends[0].record_request();
    lb.reload(config(&list(&[("a1", addrs[1]), ("a2", addrs[0])]))).unwrap();
    let after = lb.shared();
    let web_after = after.pools.get("web").unwrap();
    assert!(Arc::ptr_eq(&web.table, &web_after.table) && Arc::ptr_eq(&web.stats, &web_after.stats));
    assert!(Arc::ptr_eq(&web.forwarder, &web_after.forwarder), "same settings, same client");
    assert_eq!(web_after.stats.snapshot().total, 1);
    assert_eq!(web_after.table.snapshot().backends[0].counts().0, 1);
    let api = after.pools.get("api").unwrap();
    assert!(Arc::ptr_eq(&before.pools.get("api").unwrap().table, &api.table), "a changed pool is reconciled in place");
    assert_eq!(api.table.snapshot().backends.len(), 2);
    lb.stop(Duration::from_secs(1));
    drop(children);
}

#[test]
fn bad_pool_configs_are_refused_by_check_config_naming_the_pool() {
    let one = r#"[{"host": "127.0.0.1", "port": 9001}]"#;
    let cases = [
        (format!(r#"{{"api": {{"backends": {one}, "colour": "red"}}}}"#), "pool 'api': unknown field `colour`"),
        (format!(r#"{{"a/b": {{"backends": {one}}}}}"#), "pool name 'a/b' is not allowed"),
        (format!(r#"{{"default": {{"backends": {one}}}}}"#), "pool name 'default' is reserved"),
        (r#"{"api": {"backends": []}}"#.to_string(), "pool 'api': backends must list at least one backend"),
        (
            format!(r#"{{"api": {{"backends": {one}, "health_check_timeout": 0}}}}"#),
            "pool 'api': health_check_timeout must be 0.001-86400 s, got 0",
        ),
    ];
    let dir = common::unique_dir("pools-check");
    for (pools, message) in cases {
        let path = dir.join("config.json");
        std::fs::write(&path, format!(r#"{{"pools": {pools}}}"#)).unwrap();
        let out = lb_sync(&["--config", path.to_str().unwrap(), "--check-config"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{pools}: {stderr}");
        assert!(stderr.contains(message), "{pools}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let path = dir.join("config.json");
    std::fs::write(&path, format!(r#"{{"pools": {{"api": {{"backends": {one}}}}}}}"#)).unwrap();
    let out = lb_sync(&["--config", path.to_str().unwrap(), "--check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("and 1 named pool(s)")
            || String::from_utf8_lossy(&out.stderr).contains("and 1 named pool(s)")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn forward_to_sends_to_the_chosen_pool_under_its_own_settings() {
    use lb_sync::server::{parse_head, Limits, ParseOutcome, Request, RequestBody};
    let (children, addrs) = backends(2, &[]);
    let dead = SocketAddr::from(([127, 0, 0, 1], unused_port()));
    // Both pools: a dead backend first, then a live one, round robin. The default pool retries
    // (max_tries 3); `api` does not (max_tries 1).
    let config: Config = serde_json::from_str(&format!(
        r#"{{"host": "127.0.0.1", "port": 0, "access_log": false, "health_check_interval": 0,
             "backends": {}, "pools": {{"api": {{"backends": {}, "max_tries": 1}}}}}}"#,
        list(&[("dead", dead), ("live", addrs[0])]),
        list(&[("dead", dead), ("live", addrs[1])]),
    ))
    .unwrap();
    let lb = LoadBalancer::start(config).unwrap();
    let request = || {
        let Ok(ParseOutcome::Complete(head, _)) =
            parse_head(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n", &Limits::default())
        else {
            panic!("a complete head")
        };
        Request::new(head, "127.0.0.1:5000".parse().unwrap(), RequestBody::empty())
    };
    let shared = lb.shared();
    let api = shared.pools.get("api").unwrap();
    assert_eq!(lb_sync::proxy::forward_to(&shared, api, request()).status, 502, "api's one try hit the dead backend");
    assert_eq!(lb_sync::proxy::forward_to(&shared, api, request()).status, 200);
    assert_eq!(lb_sync::proxy::forward(&shared, request()).status, 200, "the default pool retries past it");
    let counts = |pool: &str| -> Vec<(String, u64)> {
        let table = &shared.pools.get(pool).unwrap().table;
        table.snapshot().backends.iter().map(|b| (b.id.clone(), b.counts().0)).collect()
    };
    assert_eq!(counts("api"), [("dead".to_string(), 1), ("live".to_string(), 1)]);
    assert_eq!(counts("default"), [("dead".to_string(), 1), ("live".to_string(), 1)]);
    let (api_stats, default_stats) = (api.stats.snapshot(), shared.pools.default_pool().stats.snapshot());
    assert_eq!((api_stats.total, api_stats.failed, default_stats.total, default_stats.failed), (2, 1, 1, 0));
    assert_eq!(shared.stats.snapshot().total, 3, "the balancer's counters count every pool");
    assert_eq!((api.stats.tries().retries, shared.pools.default_pool().stats.tries().retries), (0, 1));
    drop(shared);
    lb.stop(Duration::from_secs(1));
    drop(children);
}

/// Each backend of a list as `id port weight enabled draining`.
fn summary(backends: &Value) -> Vec<String> {
    backends
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{} {} {} {} {}", b["id"], b["port"], b["weight"], b["enabled"], b["draining"]))
        .collect()
}

/// Stops `lb` with SIGTERM and waits for its exit (0).
fn stop(mut lb: Lb) {
    lb.signal("TERM");
    let status = lb.wait_exit(LIMIT).expect("stopped");
    assert_eq!(status.code(), Some(0), "{}", lb.log());
}

#[test]
fn a_named_pools_changes_survive_a_restart_through_the_state_file() {
    let (_children, addrs) = backends(4, &[]);
    let dir = common::unique_dir("pool-state");
    let state = dir.join("state.json");
    let settings = format!(
        r#""state_file": "{}", "pools": {{"api": {{"backends": {}}}}}"#,
        state.display(),
        list(&[("a1", addrs[1]), ("a2", addrs[2])])
    );
    let lb = Lb::start(&addrs[..1], &settings);
    assert_eq!(request(lb.addr, "POST", "/lb/pools/api/backends/a1/disable", "").status, 200);
    assert_eq!(request(lb.addr, "POST", "/lb/pools/api/backends/a2/weight", r#"{"weight": 5}"#).status, 200);
    let body = format!(r#"{{"host": "127.0.0.1", "port": {}, "weight": 2}}"#, addrs[3].port());
    let added = request(lb.addr, "POST", "/lb/pools/api/backends/add", &body);
    assert_eq!(added.status, 201, "{}", added.text());
    let added_id = added.json()["id"].as_str().unwrap().to_string();
    let api_before = summary(&get(&lb, "/lb/pools/api/backends").1);
    let default_before = summary(&get(&lb, "/lb/backends").1);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["version"], 2, "a file with a named pool: {saved}");
    let saved_ids: Vec<&str> =
        saved["pools"]["api"]["backends"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(saved_ids, ["a1", "a2", &added_id]);
    assert_eq!(saved["backends"].as_array().unwrap().len(), 1, "the default pool's at the top level, as before");
    stop(lb);

    let lb = Lb::start(&addrs[..1], &settings);
    assert_eq!(summary(&get(&lb, "/lb/pools/api/backends").1), api_before, "every change to api survived");
    assert_eq!(summary(&get(&lb, "/lb/backends").1), default_before);
    assert!(lb.log().contains("pool api: 3 backend(s) restored from state file"), "{}", lb.log());
    // The pool's numbering survived too: the next id is never one handed out before.
    let body = format!(r#"{{"host": "127.0.0.1", "port": {}}}"#, unused_port());
    let next = request(lb.addr, "POST", "/lb/pools/api/backends/add", &body);
    assert_eq!(next.status, 201, "{}", next.text());
    assert_ne!(next.json()["id"], added_id.as_str());
    // A reload keeps the pool's table as the state file has it (the file's list does not win).
    let api_now = summary(&get(&lb, "/lb/pools/api/backends").1);
    lb.write_config(&addrs[..1], &settings);
    let reloaded = request(lb.addr, "POST", "/lb/config/reload", "");
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let changes = reloaded.json()["changes"].as_str().unwrap().to_string();
    assert_eq!(changes, "kept until a restart: pool api: backends (the state file keeps them)");
    assert_eq!(summary(&get(&lb, "/lb/pools/api/backends").1), api_now);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_old_state_file_is_the_default_pools_and_a_pool_no_longer_configured_is_skipped() {
    let (_children, addrs) = backends(3, &[]);
    let dir = common::unique_dir("pool-state-old");
    let state = dir.join("state.json");
    // As an lb-sync before pools wrote it.
    let old = format!(
        r#"{{
  "version": 1,
  "numbered": 4,
  "backends": [
    {{"id": "old1", "host": "127.0.0.1", "port": {}, "weight": 3, "state": "enabled"}},
    {{"id": "old2", "host": "127.0.0.1", "port": {}, "weight": 1, "state": "disabled"}}
  ]
}}
"#,
        addrs[0].port(),
        addrs[1].port()
    );
    std::fs::write(&state, &old).unwrap();
    let settings = format!(
        r#""state_file": "{}", "pools": {{"api": {{"backends": {}}}}}"#,
        state.display(),
        list(&[("a1", addrs[2])])
    );
    let lb = Lb::start(&addrs[2..], &settings);
    let default = get(&lb, "/lb/backends").1;
    let expected =
        [format!(r#""old1" {} 3 true false"#, addrs[0].port()), format!(r#""old2" {} 1 false false"#, addrs[1].port())];
    assert_eq!(summary(&default), expected, "the file's backends, not the configured one");
    assert_eq!(ids_enabled(&get(&lb, "/lb/pools/api/backends").1), [("a1".to_string(), true)], "api from the config");
    // A change anywhere writes every pool: the default pool's part stays as it was.
    assert_eq!(request(lb.addr, "POST", "/lb/pools/api/backends/a1/drain", "").status, 200);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let was: Value = serde_json::from_str(&old).unwrap();
    assert_eq!((&saved["numbered"], &saved["backends"]), (&was["numbered"], &was["backends"]));
    assert_eq!(saved["pools"]["api"]["backends"][0]["state"], "draining");
    stop(lb);

    // The pool leaves the configuration: its saved table is skipped with a warning, and leaves
    // the file at the next change.
    let lb = Lb::start(&addrs[2..], &format!(r#""state_file": "{}""#, state.display()));
    let warning = format!("state file {}: pool 'api' is not in the configuration: skipped", state.display());
    assert!(lb.log().contains(&warning), "{}", lb.log());
    assert_eq!(get(&lb, "/lb/pools/api").0, 404);
    assert_eq!(summary(&get(&lb, "/lb/backends").1), expected);
    assert_eq!(request(lb.addr, "POST", "/lb/backends/old2/enable", "").status, 200);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!((saved["version"].as_u64(), saved.get("pools")), (Some(1), None), "{saved}");
    stop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pool_a_reload_adds_back_comes_from_the_state_file_as_at_a_start() {
    let (_children, addrs) = backends(3, &[]);
    let dir = common::unique_dir("pool-state-reload");
    let state = dir.join("state.json");
    let saved = format!(
        r#"{{"version": 2, "numbered": 1, "backends": [{{"id": "backend1", "host": "127.0.0.1", "port": {}, "weight": 1, "state": "enabled"}}],
  "pools": {{"api": {{"numbered": 2, "backends": [
    {{"id": "a1", "host": "127.0.0.1", "port": {}, "weight": 1, "state": "disabled"}},
    {{"id": "a2", "host": "127.0.0.1", "port": {}, "weight": 7, "state": "enabled"}}]}}}}}}
"#,
        addrs[0].port(),
        addrs[1].port(),
        addrs[2].port()
    );
    std::fs::write(&state, &saved).unwrap();
    // Started without the pool: its saved table is skipped, and stays in the file meanwhile.
    let lb = Lb::start(&addrs[..1], &format!(r#""state_file": "{}""#, state.display()));
    assert!(lb.log().contains("pool 'api' is not in the configuration: skipped"), "{}", lb.log());
    // The pool comes back by a reload, its configured list one backend: the file's table wins.
    let settings = format!(
        r#""state_file": "{}", "pools": {{"api": {{"backends": {}}}}}"#,
        state.display(),
        list(&[("a1", addrs[1])])
    );
    lb.write_config(&addrs[..1], &settings);
    let resp = request(lb.addr, "POST", "/lb/config/reload", "");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let api = get(&lb, "/lb/pools/api/backends").1;
    assert_eq!(ids_enabled(&api), [("a1".to_string(), false), ("a2".to_string(), true)], "{api}");
    assert_eq!(get(&lb, "/lb/pools/api/backends/a2").1["weight"], 7);
    // The next change writes the restored table back, numbering included.
    assert_eq!(request(lb.addr, "POST", "/lb/backends/backend1/drain", "").status, 200);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(written["pools"]["api"]["numbered"], 2, "{written}");
    assert_eq!(written["pools"]["api"]["backends"].as_array().map(Vec::len), Some(2), "{written}");
    stop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}
