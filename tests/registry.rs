//! One lb-sync with a registry (`--registry etcd://...`) and a real etcd: seeding, the
//! management API's answers (the same as without a registry, the change made in etcd),
//! corrupt values refused and reported by key without disturbing the rest, a registry that is
//! not there yet at start, a reload that leaves the registry's backends alone, and the metrics
//! under `promtool`; a named pool's keys under `PREFIX/pools/POOL/` (its own seeding, writes and
//! numbering; a pool the configuration lacks ignored until a reload defines it). The behaviour of
//! several instances together is in `cluster.rs`.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::api::{self, request};
use common::etcd::Etcd;
use common::lb::Lb;
use common::{backend, unused_port, wait_until, ChildProcess, Conn};
use serde_json::Value;

const PREFIX: &str = "/lb-sync/one";
const DEADLINE: Duration = Duration::from_secs(15);

fn health(addr: SocketAddr) -> Value {
    request(addr, "GET", "/lb/health", "").json()
}

fn stored(etcd: &Etcd, id: &str) -> Option<Value> {
    etcd.get(&format!("{PREFIX}/backends/{id}")).map(|v| serde_json::from_str(&v).unwrap())
}

fn with_registry(etcd: &Etcd, backends: &[SocketAddr], extra: &str) -> Lb {
    Lb::start(backends, &format!(r#""registry": "{}"{extra}"#, etcd.url(PREFIX)))
}

#[test]
fn an_empty_prefix_is_seeded_once_then_read_as_it_is() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let etcd = Etcd::start();
    let b: Vec<ChildProcess> = (0..3).map(|_| backend(&[])).collect();
    let first = with_registry(&etcd, &[b[0].addr(), b[1].addr()], "");
    // As a set: an instance that loads the table orders it by creation (the seeded backends,
    // written together, by id).
    let ids = |lb: &Lb| {
        let mut ids: Vec<String> =
            api::backends(lb.addr).iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    let mut seeded = vec![format!("p{}", b[0].addr().port()), format!("p{}", b[1].addr().port())];
    seeded.sort();
    assert_eq!(ids(&first), seeded);
    assert_eq!(etcd.list(&format!("{PREFIX}/backends/")).len(), 2);
    assert_eq!(etcd.get(&format!("{PREFIX}/numbered")).as_deref(), Some("2"));
    assert_eq!(stored(&etcd, &seeded[0]).unwrap()["state"], "enabled");
    // A second instance configured otherwise takes the registry's table, and writes nothing.
    let second = with_registry(&etcd, &[b[2].addr()], "");
    assert_eq!(ids(&second), seeded);
    assert!(second.ready_line.contains(&seeded[0]), "the ready line shows the registry's table: {}", second.ready_line);
    // Emptied through the API, the prefix stays empty for an instance that starts later.
    for id in &seeded {
        assert_eq!(request(first.addr, "DELETE", &format!("/lb/backends/{id}/remove"), "").status, 200);
    }
    assert!(etcd.list(&format!("{PREFIX}/backends/")).is_empty());
    let third = with_registry(&etcd, &[b[2].addr()], "");
    assert!(ids(&third).is_empty(), "not seeded again: {:?}", ids(&third));
    assert!(wait_until(DEADLINE, || ids(&second).is_empty()), "{:?}", ids(&second));
}

#[test]
fn the_management_api_answers_as_without_a_registry_and_writes_to_etcd() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let etcd = Etcd::start();
    let b: Vec<ChildProcess> = (0..3).map(|_| backend(&[])).collect();
    let lb = with_registry(&etcd, &[b[0].addr(), b[1].addr()], "");
    let first = format!("p{}", b[0].addr().port());

    let body = format!(r#"{{"host": "127.0.0.1", "port": {}, "weight": 3}}"#, b[2].addr().port());
    let added = request(lb.addr, "POST", "/lb/backends/add", &body);
    assert_eq!(added.status, 201, "{}", added.text());
    assert_eq!(added.header("location"), Some("/lb/backends/backend3"), "the next backend<N> after the 2 seeded");
    assert_eq!(added.json()["weight"], 3);
    let value = stored(&etcd, "backend3").unwrap();
    assert_eq!(
        value,
        serde_json::json!({"host": "127.0.0.1", "port": b[2].addr().port(), "weight": 3, "state": "enabled"})
    );

    let duplicate = request(lb.addr, "POST", "/lb/backends/add", &body);
    assert_eq!(
        (duplicate.status, duplicate.json()["error"].as_str().unwrap()),
        (409, &*format!("backend 'backend3' already has the address 127.0.0.1:{}", b[2].addr().port()))
    );
    let same_id = format!(r#"{{"id": "{first}", "host": "127.0.0.1", "port": {}}}"#, unused_port());
    assert_eq!(request(lb.addr, "POST", "/lb/backends/add", &same_id).status, 409);
    assert_eq!(request(lb.addr, "POST", "/lb/backends/add", r#"{"host": "127.0.0.1"}"#).status, 400);
    let unresolvable = r#"{"host": "no-such-host.invalid", "port": 80}"#;
    assert_eq!(request(lb.addr, "POST", "/lb/backends/add", unresolvable).status, 400);
    for (method, path) in [
        ("POST", "/lb/backends/nope/enable"),
        ("POST", "/lb/backends/nope/drain"),
        ("DELETE", "/lb/backends/nope/remove"),
    ] {
        let resp = request(lb.addr, method, path, "");
        assert_eq!((resp.status, resp.text()), (404, r#"{"error":"no backend with id 'nope'"}"#.to_string()), "{path}");
    }
    assert_eq!(request(lb.addr, "POST", "/lb/backends/nope/weight", r#"{"weight": 2}"#).status, 404);

    let weighted = request(lb.addr, "POST", &format!("/lb/backends/{first}/weight"), r#"{"weight": 4}"#);
    assert_eq!(weighted.status, 200, "{}", weighted.text());
    assert_eq!(weighted.json()["backend"]["weight"], 4, "answered once applied here");
    assert_eq!(stored(&etcd, &first).unwrap()["weight"], 4);
    let drained = request(lb.addr, "POST", &format!("/lb/backends/{first}/drain"), "");
    assert_eq!(drained.json()["backend"]["draining"], true);
    assert_eq!(stored(&etcd, &first).unwrap()["state"], "draining");
    assert_eq!(
        request(lb.addr, "POST", &format!("/lb/backends/{first}/enable"), "").json()["backend"]["enabled"],
        true
    );
    assert_eq!(stored(&etcd, &first).unwrap()["state"], "enabled");

    let removed = request(lb.addr, "DELETE", "/lb/backends/backend3/remove", "");
    assert_eq!(removed.status, 200, "{}", removed.text());
    assert!(api::backend(lb.addr, "backend3").is_none() && stored(&etcd, "backend3").is_none());
    // Ids are never reused, whoever hands them out next.
    let again = request(lb.addr, "POST", "/lb/backends/add", &body);
    assert_eq!(again.json()["id"], "backend4");
}

#[test]
fn a_corrupt_value_is_refused_and_reported_without_disturbing_the_rest() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let etcd = Etcd::start();
    let b: Vec<ChildProcess> = (0..3).map(|_| backend(&[])).collect();
    let lb = with_registry(&etcd, &[b[0].addr(), b[1].addr()], "");
    let kept = format!("p{}", b[1].addr().port());
    let good = format!(r#"{{"host": "127.0.0.1", "port": {}}}"#, b[2].addr().port());
    let key = |id: &str| format!("{PREFIX}/backends/{id}");
    etcd.put(&key("garbled"), "{not json");
    etcd.put(&key(&kept), r#"{"host": "127.0.0.1", "port": 0, "weight": 5}"#);
    etcd.put(&key("a b"), &good);
    etcd.put(&key("good"), &good);
    let addr = lb.addr;
    assert!(wait_until(DEADLINE, || api::backend(addr, "good").is_some()), "the good one is applied: {}", lb.log());
    let rejected = health(addr)["registry"]["rejected"].clone();
    assert!(rejected[key("garbled")].as_str().unwrap().contains("not JSON"), "{rejected}");
    assert_eq!(rejected[key(&kept)], "port must be 1-65535", "{rejected}");
    assert!(rejected[key("a b")].as_str().unwrap().contains("not a backend id"), "{rejected}");
    assert_eq!(rejected.as_object().unwrap().len(), 3, "{rejected}");
    // The backend whose value went bad keeps its last good state; the rest route as before.
    let kept_now = api::backend(addr, &kept).unwrap();
    assert_eq!(
        (kept_now["port"].as_u64(), kept_now["weight"].as_u64()),
        (Some(u64::from(b[1].addr().port())), Some(1))
    );
    let mut conn = Conn::open(addr);
    let mut served: Vec<String> =
        (0..9).map(|_| conn.get("/").json()["server_info"]["id"].as_str().unwrap().to_string()).collect();
    served.sort();
    served.dedup();
    assert_eq!(served.len(), 3, "all three backends serve: {served:?}");
    let stats = request(addr, "GET", "/lb/stats", "").json();
    assert_eq!(stats["registry"]["rejected"], rejected);
    let metrics = request(addr, "GET", "/lb/metrics", "").text();
    assert!(metrics.contains("\nlb_registry_rejected_values 3\n"), "{metrics}");
    // The log names the key and why.
    assert!(lb.wait_log(&format!("{} refused: port must be 1-65535", key(&kept)), DEADLINE), "{}", lb.log());
    // A corrupt backend cannot be changed through the API, but it can be removed.
    let change = request(addr, "POST", &format!("/lb/backends/{kept}/weight"), r#"{"weight": 2}"#);
    assert_eq!(change.status, 409, "{}", change.text());
    // Fixed in etcd, or deleted: no longer reported.
    etcd.put(&key(&kept), &format!(r#"{{"host": "127.0.0.1", "port": {}, "weight": 5}}"#, b[1].addr().port()));
    assert!(wait_until(DEADLINE, || api::backend(addr, &kept).is_some_and(|b| b["weight"] == 5)));
    assert_eq!(request(addr, "DELETE", "/lb/backends/garbled/remove", "").status, 200);
    let left = health(addr)["registry"]["rejected"].clone();
    assert_eq!(left.as_object().unwrap().keys().collect::<Vec<_>>(), [&key("a b")], "{left}");
}

#[test]
fn a_registry_not_there_at_start_is_reported_and_joined_when_it_comes() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let mut etcd = Etcd::start();
    let home = etcd.restart_elsewhere();
    let url = format!("etcd://{home}{PREFIX}");
    let b = backend(&[]);
    let lb = Lb::start(&[b.addr()], &format!(r#""registry": "{url}""#));
    let addr = lb.addr;
    let status = health(addr)["registry"].clone();
    assert_eq!(status["status"], "disconnected", "{status}");
    assert!(status["last_error"].as_str().unwrap().contains("cannot reach etcd"), "{status}");
    assert_eq!(request(addr, "GET", "/", "").status, 200, "serves its configured backends meanwhile");
    etcd.restart_at(home);
    assert!(wait_until(DEADLINE, || health(addr)["registry"]["status"] == "connected"), "{}", lb.log());
    assert_eq!(etcd.list(&format!("{PREFIX}/backends/")).len(), 1, "seeded once it could");
}

#[test]
fn a_reload_leaves_the_registrys_backends_alone() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let etcd = Etcd::start();
    let b: Vec<ChildProcess> = (0..3).map(|_| backend(&[])).collect();
    let lb = with_registry(&etcd, &[b[0].addr(), b[1].addr()], "");
    let body = format!(r#"{{"id": "added", "host": "127.0.0.1", "port": {}}}"#, b[2].addr().port());
    assert_eq!(request(lb.addr, "POST", "/lb/backends/add", &body).status, 201);
    lb.write_config(
        &[b[0].addr()],
        &format!(r#""registry": "{}", "algorithm": "least_connections""#, etcd.url(PREFIX)),
    );
    let reloaded = request(lb.addr, "POST", "/lb/config/reload", "");
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let changes = reloaded.json()["changes"].as_str().unwrap().to_string();
    assert!(changes.contains("backends (the registry keeps them)") && changes.contains("algorithm"), "{changes}");
    assert_eq!(api::backends(lb.addr).len(), 3, "the registry's three backends stay");
    assert_eq!(request(lb.addr, "GET", "/lb/stats", "").json()["load_balancer"], "LeastConnectionsBalancer");
}

#[test]
fn state_file_and_registry_together_are_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_lb-sync"))
        .args([
            "--port",
            "0",
            "--backend",
            "127.0.0.1:9",
            "--registry",
            "etcd://127.0.0.1:2379/x",
            "--state-file",
            "/tmp/x",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim_end(),
        "lb-sync: state_file and registry cannot both be set: the registry keeps the runtime changes"
    );
}

#[test]
fn metrics_with_a_registry_pass_promtool_check_metrics() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let etcd = Etcd::start();
    let b = backend(&[]);
    let lb = with_registry(&etcd, &[b.addr()], "");
    assert_eq!(request(lb.addr, "GET", "/", "").status, 200);
    let text = request(lb.addr, "GET", "/lb/metrics", "").text();
    for family in [
        "\nlb_registry_connected 1\n",
        "\nlb_registry_rejected_values 0\n",
        "\nlb_registry_reconnects_total 0\n",
        "\nlb_registry_write_conflicts_total 0\n",
        "\nlb_dns_lookups_total ",
        "\nlb_dns_lookup_failures_total 0\n",
    ] {
        assert!(text.contains(family), "no {family:?} in\n{text}");
    }
    assert!(text.contains("\nlb_registry_revision "), "{text}");
    common::promtool_check(&text);
}

/// The port of the backend that answered a request to `path`.
fn port_serving(addr: SocketAddr, path: &str) -> u64 {
    let resp = Conn::open(addr).get(path);
    assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    resp.json()["server_info"]["port"].as_u64().unwrap()
}

/// The ids of a backend list from the API.
fn ids_at(addr: SocketAddr, path: &str) -> Vec<String> {
    let resp = request(addr, "GET", path, "");
    assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    resp.json().as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_named_pools_keys_are_under_its_prefix_and_reach_that_pool_only() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let etcd = Etcd::start();
    let b: Vec<ChildProcess> = (0..5).map(|_| backend(&[])).collect();
    let port = |i: usize| u64::from(b[i].addr().port());
    let value = |i: usize| format!(r#"{{"host": "127.0.0.1", "port": {}}}"#, port(i));
    let pools = |extra_pool: &str| {
        format!(
            r#", "pools": {{"api": {{"backends": [{{"id": "a1", "host": "127.0.0.1", "port": {}}}]}}{extra_pool}}},
               "routes": [{{"name": "api", "path_prefix": "/api", "pool": "api"}}]"#,
            port(1)
        )
    };
    let lb = with_registry(&etcd, &[b[0].addr()], &pools(""));
    let addr = lb.addr;
    // Each pool seeded under its own keys: the default pool's as before pools.
    let api_key = |id: &str| format!("{PREFIX}/pools/api/backends/{id}");
    assert_eq!(etcd.list(&format!("{PREFIX}/backends/")).len(), 1);
    assert_eq!(etcd.get(&format!("{PREFIX}/numbered")).as_deref(), Some("1"));
    let seeded: Value = serde_json::from_str(&etcd.get(&api_key("a1")).unwrap()).unwrap();
    assert_eq!(seeded, serde_json::json!({"host": "127.0.0.1", "port": port(1), "weight": 1, "state": "enabled"}));
    assert_eq!(etcd.get(&format!("{PREFIX}/pools/api/numbered")).as_deref(), Some("1"));

    // A backend written under the pool's prefix joins that pool alone.
    etcd.put(&api_key("a2"), &value(2));
    assert!(wait_until(DEADLINE, || ids_at(addr, "/lb/pools/api/backends") == ["a1", "a2"]), "{}", lb.log());
    assert_eq!(ids_at(addr, "/lb/backends"), [format!("p{}", port(0))]);
    // One written under the old keys joins the default pool alone.
    etcd.put(&format!("{PREFIX}/backends/d2"), &value(3));
    assert!(wait_until(DEADLINE, || ids_at(addr, "/lb/backends").len() == 2), "{}", lb.log());
    assert_eq!(ids_at(addr, "/lb/pools/api/backends"), ["a1", "a2"]);
    // Requests follow: the route's to a1 and a2, the rest to the default pool's two.
    let (mut api, mut rest) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        api.push(port_serving(addr, "/api/x"));
        rest.push(port_serving(addr, "/other"));
    }
    api.sort_unstable();
    api.dedup();
    rest.sort_unstable();
    rest.dedup();
    let sorted = |mut ports: Vec<u64>| {
        ports.sort_unstable();
        ports
    };
    assert_eq!((api, rest), (sorted(vec![port(1), port(2)]), sorted(vec![port(0), port(3)])));

    // The API's writes to a named pool go under its prefix, numbered by the pool's own count.
    let added = request(addr, "POST", "/lb/pools/api/backends/add", &value(4));
    assert_eq!(added.status, 201, "{}", added.text());
    assert_eq!(added.header("location"), Some("/lb/pools/api/backends/backend2"));
    assert!(etcd.get(&api_key("backend2")).is_some());
    assert_eq!(etcd.get(&format!("{PREFIX}/pools/api/numbered")).as_deref(), Some("2"));
    assert!(etcd.get(&format!("{PREFIX}/backends/backend2")).is_none(), "nothing under the default pool's keys");
    let drained = request(addr, "POST", "/lb/pools/api/backends/a1/drain", "");
    assert_eq!((drained.status, drained.json()["backend"]["draining"].as_bool()), (200, Some(true)));
    assert_eq!(serde_json::from_str::<Value>(&etcd.get(&api_key("a1")).unwrap()).unwrap()["state"], "draining");
    let removed = request(addr, "DELETE", "/lb/pools/api/backends/a2/remove", "");
    assert_eq!(removed.status, 200, "{}", removed.text());
    assert!(etcd.get(&api_key("a2")).is_none());
    assert_eq!(ids_at(addr, "/lb/pools/api/backends"), ["a1", "backend2"]);
    assert_eq!(ids_at(addr, "/lb/backends").len(), 2, "the default pool is untouched");

    // Keys of a pool the configuration does not define are ignored, with one warning; keys
    // under pools/default are refused (the default pool's are the top level's).
    etcd.put(&format!("{PREFIX}/pools/ghost/backends/g1"), &value(2));
    etcd.put(&format!("{PREFIX}/pools/ghost/backends/g2"), &value(3));
    etcd.put(&format!("{PREFIX}/pools/default/backends/x"), &value(2));
    let ignored = || health(addr)["registry"]["ignored_pools"].clone();
    let why = || health(addr)["registry"]["rejected"][format!("{PREFIX}/pools/default/backends/x")].clone();
    assert!(
        wait_until(DEADLINE, || ignored() == serde_json::json!(["ghost"]) && why().is_string()),
        "{}",
        health(addr)
    );
    let why = why().as_str().unwrap().to_string();
    assert!(why.contains(&format!("the default pool's backends are {PREFIX}/backends/ID")), "{why}");
    let warning = "keys of pool 'ghost', which the configuration does not define, are ignored";
    assert!(lb.wait_log(warning, DEADLINE), "{}", lb.log());
    assert_eq!(lb.log().matches(warning).count(), 1, "logged once: {}", lb.log());
    assert_eq!(request(addr, "GET", "/lb/pools/ghost", "").status, 404, "no pool is made from the registry");
    assert_eq!(ids_at(addr, "/lb/backends").len(), 2);

    // A reload that defines the pool reads its keys at once (its configured backend is not
    // written: the pool's keys were there).
    lb.write_config(
        &[b[0].addr()],
        &format!(
            r#""registry": "{}"{}"#,
            etcd.url(PREFIX),
            pools(&format!(r#", "ghost": {{"backends": [{{"host": "127.0.0.1", "port": {}}}]}}"#, port(4)))
        ),
    );
    let reloaded = request(addr, "POST", "/lb/config/reload", "");
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(ids_at(addr, "/lb/pools/ghost/backends"), ["g1", "g2"]);
    assert_eq!(ignored(), serde_json::json!([]));
    assert!(etcd.get(&format!("{PREFIX}/pools/ghost/numbered")).is_none(), "not seeded over its keys");
    assert_eq!(ids_at(addr, "/lb/pools/api/backends"), ["a1", "backend2"], "a kept pool keeps the registry's");
}
