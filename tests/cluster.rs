//! Three lb-sync processes sharing one etcd (`--registry`), in front of real lb-backend
//! processes: they behave as one. A change made on any instance is routed by all; ip_hash and the
//! sticky cookie give the same backend on every instance; losing etcd leaves them serving with
//! the last known table and reporting it, and a change made meanwhile is picked up once etcd is
//! back; two instances writing at once both land.
//!
//! Propagation is polled with generous deadlines (a loaded two-core machine must not fail these)
//! and the measured time is printed (`cargo test --release --test cluster -- --nocapture`);
//! the target is one second.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::api::{self, request};
use common::etcd::Etcd;
use common::lb::Lb;
use common::{backend, unused_port, wait_until, ChildProcess, Conn};
use serde_json::Value;

const PREFIX: &str = "/lb-sync/test";
/// The deadline of every propagation: far above the one-second target, so load cannot fail it.
const DEADLINE: Duration = Duration::from_secs(15);

/// One etcd, the backends and three instances (A seeds the registry with its configured
/// backends; B and C are configured with none: all they route over comes from etcd).
struct Cluster {
    lbs: Vec<Lb>,
    backends: Vec<ChildProcess>,
    etcd: Etcd,
}

impl Cluster {
    fn start(backends: usize, settings: &str) -> Cluster {
        let etcd = Etcd::start();
        let backends: Vec<ChildProcess> = (0..backends).map(|_| backend(&[])).collect();
        let addrs: Vec<SocketAddr> = backends.iter().map(ChildProcess::addr).collect();
        let settings =
            format!(r#""registry": "{}"{}{settings}"#, etcd.url(PREFIX), if settings.is_empty() { "" } else { ", " });
        let mut lbs = vec![Lb::start(&addrs, &settings)];
        lbs.push(Lb::start(&[], &settings));
        lbs.push(Lb::start(&[], &settings));
        let cluster = Cluster { lbs, backends, etcd };
        for lb in &cluster.lbs {
            assert_eq!(registry(lb.addr)["status"], "connected", "{}", lb.log());
            assert_eq!(ids(lb.addr).len(), addrs.len(), "every instance starts with the seeded table: {}", lb.log());
        }
        cluster
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.lbs[i].addr
    }

    /// The id lb-backend reports for backend `i` (`backend-PORT`).
    fn served_id(&self, i: usize) -> String {
        format!("backend-{}", self.backends[i].addr().port())
    }

    /// Backend `i`'s id in the table (`pPORT`, as the test config names them).
    fn id(&self, i: usize) -> String {
        format!("p{}", self.backends[i].addr().port())
    }
}

fn registry(addr: SocketAddr) -> Value {
    request(addr, "GET", "/lb/health", "").json()["registry"].clone()
}

fn ids(addr: SocketAddr) -> Vec<String> {
    api::backends(addr).iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
}

/// Which backend answered a `GET /` on `conn`.
fn served_by(conn: &mut Conn, headers: &str) -> String {
    conn.send(format!("GET / HTTP/1.1\r\nHost: test\r\n{headers}\r\n").as_bytes());
    let resp = conn.response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["server_info"]["id"].as_str().unwrap().to_string()
}

#[test]
fn an_add_on_one_instance_is_routed_by_the_others_within_a_second() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let cluster = Cluster::start(2, "");
    let late = backend(&[]);
    let late_id = format!("backend-{}", late.addr().port());
    let body = format!(r#"{{"id": "late", "host": "127.0.0.1", "port": {}}}"#, late.addr().port());
    let added = request(cluster.addr(0), "POST", "/lb/backends/add", &body);
    let written = Instant::now();
    assert_eq!(added.status, 201, "{}", added.text());
    assert_eq!(added.header("location"), Some("/lb/backends/late"));
    // The writing instance answered once it applied the change: round robin over three now.
    let mut a = Conn::open(cluster.addr(0));
    let round: Vec<String> = (0..3).map(|_| served_by(&mut a, "")).collect();
    assert!(round.contains(&late_id), "A routes to the added backend at once: {round:?}");
    for (name, i) in [("B", 1), ("C", 2)] {
        let mut conn = Conn::open(cluster.addr(i));
        let routed = wait_until(DEADLINE, || served_by(&mut conn, "") == late_id);
        assert!(routed, "{name} never routed to the backend added on A: {}", cluster.lbs[i].log());
        eprintln!("an add on A was routed by {name} {} ms after A answered", written.elapsed().as_millis());
    }
    // And the duplicate is refused everywhere, as without a registry.
    let again = request(cluster.addr(1), "POST", "/lb/backends/add", &body);
    assert_eq!(again.status, 409, "{}", again.text());
}

#[test]
fn a_disable_on_one_instance_stops_traffic_on_the_others() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let cluster = Cluster::start(3, "");
    let target = cluster.served_id(1);
    let mut conns: Vec<Conn> = (0..2).map(|i| Conn::open(cluster.addr(i))).collect();
    for conn in &mut conns {
        let before: Vec<String> = (0..6).map(|_| served_by(conn, "")).collect();
        assert!(before.contains(&target), "the second backend takes traffic before: {before:?}");
    }
    let disabled = request(cluster.addr(2), "POST", &format!("/lb/backends/{}/disable", cluster.id(1)), "");
    let written = Instant::now();
    assert_eq!(disabled.status, 200, "{}", disabled.text());
    assert_eq!(disabled.json()["backend"]["enabled"], false, "C answers once it applied it");
    for (i, conn) in conns.iter_mut().enumerate() {
        let off = wait_until(DEADLINE, || api::backend(cluster.addr(i), &cluster.id(1)).unwrap()["enabled"] == false);
        assert!(off, "instance {i} never saw the disable: {}", cluster.lbs[i].log());
        eprintln!("a disable on C reached instance {i} within {} ms", written.elapsed().as_millis());
        let after: Vec<String> = (0..30).map(|_| served_by(conn, "")).collect();
        assert!(!after.contains(&target), "instance {i} still sends to the disabled backend: {after:?}");
        assert!(after.contains(&cluster.served_id(0)) && after.contains(&cluster.served_id(2)), "{after:?}");
    }
}

#[test]
fn the_same_500_client_ips_map_to_the_same_backends_on_all_three() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let cluster = Cluster::start(3, r#""algorithm": "ip_hash""#);
    // A fourth backend, weight 2, added on B: the ring is built from the shared membership.
    let fourth = backend(&[]);
    let body = format!(r#"{{"host": "127.0.0.1", "port": {}, "weight": 2}}"#, fourth.addr().port());
    let added = request(cluster.addr(1), "POST", "/lb/backends/add", &body);
    assert_eq!(added.status, 201, "{}", added.text());
    for i in 0..3 {
        assert!(wait_until(DEADLINE, || ids(cluster.addr(i)).len() == 4), "instance {i}: {:?}", ids(cluster.addr(i)));
    }
    let maps: Vec<Vec<String>> = (0..3)
        .map(|i| {
            let mut conn = Conn::open(cluster.addr(i));
            (0..500)
                .map(|n| served_by(&mut conn, &format!("X-Forwarded-For: 10.{}.{}.7\r\n", n / 250, n % 250)))
                .collect()
        })
        .collect();
    let mut used: Vec<&String> = maps[0].iter().collect();
    used.sort();
    used.dedup();
    assert_eq!(used.len(), 4, "500 clients spread over all four backends: {used:?}");
    for i in 1..3 {
        let differ = (0..500).filter(|&n| maps[0][n] != maps[i][n]).count();
        assert_eq!(differ, 0, "instance {i} maps {differ} of 500 client IPs elsewhere than A");
    }
}

#[test]
fn a_sticky_cookie_from_a_is_honoured_by_b() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let cluster =
        Cluster::start(3, r#""sticky_cookie": "SRV", "sticky_secret": "shared by the instances of the cluster""#);
    let mut a = Conn::open(cluster.addr(0));
    a.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    let first = a.response();
    let home = first.json()["server_info"]["id"].as_str().unwrap().to_string();
    let set_cookie = first.header("set-cookie").expect("A sets the sticky cookie").to_string();
    let value = set_cookie.split(';').next().unwrap().to_string();
    assert!(value.starts_with("SRV="), "{set_cookie}");
    let mut b = Conn::open(cluster.addr(1));
    let unstuck: Vec<String> = (0..6).map(|_| served_by(&mut b, "")).collect();
    let mut spread = unstuck.clone();
    spread.sort();
    spread.dedup();
    assert!(spread.len() >= 2, "without the cookie B balances: {unstuck:?}");
    for i in 0..12 {
        assert_eq!(served_by(&mut b, &format!("Cookie: {value}\r\n")), home, "request {i} on B with A's cookie");
    }
    let mut c = Conn::open(cluster.addr(2));
    assert_eq!(served_by(&mut c, &format!("Cookie: {value}\r\n")), home, "and on C");
}

#[test]
fn with_etcd_stopped_all_three_keep_serving_and_report_it_then_pick_up_a_change_made_meanwhile() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let mut cluster = Cluster::start(3, "");
    let late = backend(&[]);
    let late_id = format!("backend-{}", late.addr().port());
    cluster.etcd.stop();
    for i in 0..3 {
        let addr = cluster.addr(i);
        let reported = wait_until(DEADLINE, || registry(addr)["status"] == "disconnected");
        assert!(reported, "instance {i} never reported etcd gone: {}", cluster.lbs[i].log());
        let status = registry(addr);
        assert!(status["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{status}");
        let stats = request(addr, "GET", "/lb/stats", "").json();
        assert_eq!(stats["registry"]["status"], "disconnected");
        let metrics = request(addr, "GET", "/lb/metrics", "").text();
        assert!(metrics.contains("\nlb_registry_connected 0\n"), "{metrics}");
        let mut conn = Conn::open(addr);
        let served: Vec<String> = (0..6).map(|_| served_by(&mut conn, "")).collect();
        assert!((0..3).all(|b| served.contains(&cluster.served_id(b))), "instance {i} serves on: {served:?}");
        // A change cannot be made without etcd: refused, nothing changed.
        let refused = request(addr, "POST", &format!("/lb/backends/{}/disable", cluster.id(0)), "");
        assert_eq!(refused.status, 503, "{}", refused.text());
        assert!(refused.text().contains("nothing was changed"), "{}", refused.text());
    }
    // A change made through etcd directly while the instances cannot reach it (etcd is up on
    // another port for the test only), then compacted: following the old watch would miss it;
    // only a fresh read sees it.
    let home = cluster.etcd.restart_elsewhere();
    let value = format!(r#"{{"host": "127.0.0.1", "port": {}, "weight": 1, "state": "enabled"}}"#, late.addr().port());
    cluster.etcd.put(&format!("{PREFIX}/backends/late"), &value);
    let disabled =
        format!(r#"{{"host": "127.0.0.1", "port": {}, "state": "disabled"}}"#, cluster.backends[0].addr().port());
    cluster.etcd.put(&format!("{PREFIX}/backends/{}", cluster.id(0)), &disabled);
    cluster.etcd.compact();
    for i in 0..3 {
        assert_eq!(registry(cluster.addr(i))["status"], "disconnected", "instance {i} is still cut off");
    }
    cluster.etcd.restart_at(home);
    let changed = Instant::now();
    for i in 0..3 {
        let addr = cluster.addr(i);
        let mut conn = Conn::open(addr);
        let picked_up = wait_until(DEADLINE, || {
            registry(addr)["status"] == "connected"
                && api::backend(addr, &cluster.id(0)).is_some_and(|b| b["enabled"] == false)
                && served_by(&mut conn, "") == late_id
        });
        assert!(picked_up, "instance {i} never picked up the change: {}", cluster.lbs[i].log());
        eprintln!("instance {i} picked up the change {} ms after etcd came back", changed.elapsed().as_millis());
        let status = registry(addr);
        assert!(status["reconnects"].as_u64().unwrap() >= 1, "{status}");
        let served: Vec<String> = (0..9).map(|_| served_by(&mut conn, "")).collect();
        assert!(!served.contains(&cluster.served_id(0)), "the first backend is disabled: {served:?}");
    }
}

#[test]
fn two_instances_writing_at_once_both_land() {
    if !common::tools::require(&[&common::tools::ETCD]) {
        return;
    }
    let cluster = Arc::new(Cluster::start(2, ""));
    const ROUNDS: usize = 5;
    let barrier = Arc::new(Barrier::new(2));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (cluster, barrier) = (Arc::clone(&cluster), Arc::clone(&barrier));
            std::thread::spawn(move || {
                (0..ROUNDS)
                    .map(|_| {
                        let body = format!(r#"{{"host": "127.0.0.1", "port": {}}}"#, unused_port());
                        barrier.wait();
                        let added = request(cluster.addr(w), "POST", "/lb/backends/add", &body);
                        assert_eq!(added.status, 201, "{}", added.text());
                        added.json()["id"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let mut added: Vec<String> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    added.sort();
    added.dedup();
    assert_eq!(added.len(), 2 * ROUNDS, "every add got its own id: {added:?}");
    // Two changes to the same backend at the same instant (a read-modify-write each): both land.
    for round in 0..3 {
        let barrier = Arc::new(Barrier::new(2));
        let weight = 5 + round;
        let first = cluster.id(0);
        let changes = [
            ("POST", format!("/lb/backends/{first}/weight"), format!(r#"{{"weight": {weight}}}"#)),
            ("POST", format!("/lb/backends/{first}/disable"), String::new()),
        ];
        let threads: Vec<_> = changes
            .into_iter()
            .enumerate()
            .map(|(w, (method, path, body))| {
                let (cluster, barrier) = (Arc::clone(&cluster), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    request(cluster.addr(w), method, &path, &body)
                })
            })
            .collect();
        for thread in threads {
            let resp = thread.join().unwrap();
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
        for i in 0..3 {
            let addr = cluster.addr(i);
            let both = wait_until(DEADLINE, || {
                api::backend(addr, &first).is_some_and(|b| b["weight"] == weight && b["enabled"] == false)
            });
            assert!(both, "instance {i}, round {round}: {:?}", api::backend(addr, &first));
        }
        let enabled = request(cluster.addr(2), "POST", &format!("/lb/backends/{first}/enable"), "");
        assert_eq!(enabled.status, 200, "{}", enabled.text());
    }
    let expected = 2 + 2 * ROUNDS;
    for i in 0..3 {
        assert!(
            wait_until(DEADLINE, || ids(cluster.addr(i)).len() == expected),
            "instance {i}: {:?}",
            ids(cluster.addr(i))
        );
    }
    let stored = cluster.etcd.list(&format!("{PREFIX}/backends/"));
    assert_eq!(stored.len(), expected, "{stored:?}");
    assert_eq!(cluster.etcd.get(&format!("{PREFIX}/numbered")).as_deref(), Some(expected.to_string().as_str()));
    let conflicts: u64 = (0..3).map(|i| registry(cluster.addr(i))["write_conflicts"].as_u64().unwrap()).sum();
    eprintln!("{conflicts} write(s) lost a race and were retried on a fresh read");
}
