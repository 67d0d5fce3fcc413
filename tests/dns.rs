//! Backend host names are re-resolved every `dns_refresh_interval`, off the request path: a
//! changed address is applied (requests go to the new one, weight and state kept), a failed
//! lookup keeps the last address and is reported in `/lb/stats` and `/lb/metrics`.
//!
//! No real DNS: the balancer runs in process and its resolver is replaced
//! ([`LoadBalancer::set_resolver`]) by one the test drives. The backend is configured as
//! `localhost:PORT1` (which the system resolver gives at start); the test's resolver then says
//! `localhost` is at `127.0.0.1:PORT2`, as a name's record would change. A named pool's names
//! are refreshed as the default pool's are.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{backend, wait_until, Conn};
use lb_sync::balancer::LoadBalancer;
use lb_sync::config::{BackendConfig, Config};
use lb_sync::upstream::{Lookup, ResolveError};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(10);

/// A resolver the test sets: the addresses it gives, or an error; and the hosts it was asked.
#[derive(Default)]
struct Records {
    answer: Mutex<Option<Vec<SocketAddr>>>,
    asked: Mutex<Vec<String>>,
}

/// A balancer over `backends` that looks names up every 50 ms with `records`, no health checks.
fn start(backends: Vec<BackendConfig>, records: &Arc<Records>) -> LoadBalancer {
    start_with(common::inproc::config(backends), records)
}

/// [`start`] with the rest of `config` (pools, routes).
fn start_with(mut config: Config, records: &Arc<Records>) -> LoadBalancer {
    config.health.interval = None;
    config.operations.dns_refresh_interval = Some(Duration::from_millis(50));
    let lb = LoadBalancer::start(config).unwrap();
    let records = Arc::clone(records);
    lb.set_resolver(Arc::new(move |host: &str, _port: u16| -> Lookup {
        records.asked.lock().unwrap().push(host.to_string());
        records.answer.lock().unwrap().clone().ok_or_else(|| ResolveError::NoAddress { host: host.to_string() })
    }));
    lb
}

fn get(addr: SocketAddr, path: &str) -> Value {
    let resp = Conn::open(addr).get(path);
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

fn served_by(addr: SocketAddr) -> String {
    get(addr, "/")["server_info"]["id"].as_str().unwrap().to_string()
}

#[test]
fn a_changed_address_is_applied_with_weight_and_state_kept() {
    let (old, new) = (backend(&[]), backend(&[]));
    let records = Arc::new(Records::default());
    *records.answer.lock().unwrap() = Some(vec![old.addr()]);
    let named = BackendConfig { id: Some("named".into()), ..BackendConfig::new("localhost", old.addr().port(), 3) };
    let lb = start(vec![named], &records);
    let addr = lb.local_addr();
    let (old_id, new_id) = (format!("backend-{}", old.addr().port()), format!("backend-{}", new.addr().port()));
    assert_eq!(served_by(addr), old_id);
    assert!(wait_until(DEADLINE, || records.asked.lock().unwrap().len() >= 2), "the name is looked up every 50 ms");
    assert_eq!(served_by(addr), old_id, "an unchanged answer moves nothing");
    assert_eq!(get(addr, "/lb/stats")["dns"]["address_changes"], 0);

    *records.answer.lock().unwrap() = Some(vec![new.addr()]);
    assert!(wait_until(DEADLINE, || served_by(addr) == new_id), "requests go to the new address");
    let backend = &get(addr, "/lb/backends")[0];
    assert_eq!(
        (backend["host"].as_str(), backend["address"].as_str()),
        (Some("localhost"), Some(&*new.addr().to_string()))
    );
    assert_eq!(backend["weight"], 3, "weight kept");
    let stats = get(addr, "/lb/stats");
    assert_eq!(stats["dns"]["address_changes"], 1, "{}", stats["dns"]);
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_failed_lookup_keeps_the_last_address_and_is_reported() {
    let b = backend(&[]);
    let records = Arc::new(Records::default());
    let named = BackendConfig { id: Some("named".into()), ..BackendConfig::new("localhost", b.addr().port(), 1) };
    let literal = BackendConfig { id: Some("literal".into()), ..BackendConfig::new("127.0.0.1", 9, 1) };
    let lb = start(vec![named, literal], &records);
    let addr = lb.local_addr();
    // Every lookup fails from the start.
    let reported = wait_until(DEADLINE, || get(addr, "/lb/stats")["dns"]["failing"]["named"].is_string());
    assert!(reported, "{}", get(addr, "/lb/stats")["dns"]);
    let dns = get(addr, "/lb/stats")["dns"].clone();
    let why = dns["failing"]["named"].as_str().unwrap();
    assert_eq!(why, format!("localhost has no address; keeping {}", b.addr()));
    assert!(dns["failed_lookups"].as_u64().unwrap() >= 1);
    assert!(dns["failing"].get("literal").is_none(), "an address literal is never looked up");
    assert!(records.asked.lock().unwrap().iter().all(|h| h == "localhost"), "{:?}", records.asked.lock().unwrap());
    let backend = &get(addr, "/lb/backends")[0];
    assert_eq!(backend["address"].as_str(), Some(&*b.addr().to_string()), "the last address is kept");
    let metrics = Conn::open(addr).get("/lb/metrics").text();
    let failures = metrics.lines().find_map(|l| l.strip_prefix("lb_dns_lookup_failures_total ")).unwrap();
    assert!(failures.parse::<u64>().unwrap() >= 1, "{metrics}");
    // The named backend still serves (the literal one is refused: its port 9 is closed).
    let mut conn = Conn::open(addr);
    assert!((0..4).any(|_| conn.get("/").status == 200));
    // A good answer again clears the report.
    *records.answer.lock().unwrap() = Some(vec![b.addr()]);
    assert!(wait_until(DEADLINE, || get(addr, "/lb/stats")["dns"]["failing"].as_object().unwrap().is_empty()));
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_named_pools_host_names_are_refreshed_too() {
    let (old, new, literal) = (backend(&[]), backend(&[]), backend(&[]));
    let records = Arc::new(Records::default());
    *records.answer.lock().unwrap() = Some(vec![old.addr()]);
    let mut config = common::inproc::config(vec![BackendConfig::new("127.0.0.1", literal.addr().port(), 1)]);
    config.pools = serde_json::from_value(serde_json::json!({
        "api": {"backends": [{"id": "named", "host": "localhost", "port": old.addr().port(), "weight": 3}]}
    }))
    .unwrap();
    config.routes =
        serde_json::from_value(serde_json::json!([{"name": "api", "path_prefix": "/api", "pool": "api"}])).unwrap();
    let lb = start_with(config, &records);
    let addr = lb.local_addr();
    let (old_id, new_id) = (format!("backend-{}", old.addr().port()), format!("backend-{}", new.addr().port()));
    let literal_id = format!("backend-{}", literal.addr().port());
    let served_at = |path: &str| get(addr, path)["server_info"]["id"].as_str().unwrap().to_string();
    assert_eq!(served_at("/api/x"), old_id);

    *records.answer.lock().unwrap() = Some(vec![new.addr()]);
    assert!(wait_until(DEADLINE, || served_at("/api/x") == new_id), "the pool's requests go to the new address");
    let moved = &get(addr, "/lb/pools/api/backends")[0];
    assert_eq!(
        (moved["id"].as_str(), moved["host"].as_str(), moved["address"].as_str()),
        (Some("named"), Some("localhost"), Some(&*new.addr().to_string()))
    );
    assert_eq!(moved["weight"], 3, "weight kept");
    assert_eq!(served_at("/"), literal_id, "the default pool is untouched");
    assert_eq!(get(addr, "/lb/stats")["dns"]["address_changes"], 1);
    assert!(records.asked.lock().unwrap().iter().all(|h| h == "localhost"), "an address literal is never looked up");

    // A failing lookup is reported under the pool's name, and the address is kept.
    *records.answer.lock().unwrap() = None;
    let failing = || get(addr, "/lb/stats")["dns"]["failing"].clone();
    assert!(wait_until(DEADLINE, || failing()["api/named"].is_string()), "{}", failing());
    assert_eq!(failing()["api/named"], format!("localhost has no address; keeping {}", new.addr()));
    assert_eq!(failing().as_object().unwrap().len(), 1, "{}", failing());
    assert_eq!(served_at("/api/x"), new_id);
    lb.stop(Duration::from_secs(1));
}
