//! Start order and restarts at the default settings (health checks every 30 s, fast probes every
//! 1 s, rise 2, fall 3, breaker cool-down 5 s, slow start 10 s), with real `lb-sync` and
//! `lb-backend` processes: a balancer started before its backends serves as soon as they
//! listen, and a backend killed under load costs no request and is back soon after its restart.
//! Each deadline below is the target, far shorter than the 30 s interval that brought backends
//! back before fast probes; the figures measured are printed.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::lb::Lb;
use common::load::Load;
use common::{backend_on, free_ports, wait_until, ChildProcess, Conn};

/// The defaults, spelled out: the test helper turns health checks off unless told.
const DEFAULTS: &str = r#""health_check_interval": 30"#;

/// The target for each recovery.
const TARGET: Duration = Duration::from_secs(5);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The `2xx` answers the balancer got from the backend on `port` (id `p<port>`).
fn answered(lb: &Lb, port: u16) -> u64 {
    let backend = Conn::open(lb.addr).get(&format!("/lb/backends/p{port}")).json();
    backend["responses"]["2xx"].as_u64().expect("a count of 2xx answers")
}

fn health(lb: &Lb, port: u16) -> String {
    let backend = Conn::open(lb.addr).get(&format!("/lb/backends/p{port}")).json();
    backend["health"].as_str().unwrap_or_default().to_string()
}

#[test]
fn started_a_second_before_its_backends_it_serves_within_seconds_of_their_start() {
    let ports = free_ports(3);
    let addrs: Vec<SocketAddr> = ports.iter().map(|&p| loopback(p)).collect();
    let lb = Lb::start(&addrs, DEFAULTS);
    // A client already asking (every 10 ms, a new connection each time), as at a real start:
    // its refused tries open the backends' breakers.
    let get = || Conn::open(lb.addr).get("/").status;
    let mut refused = 0;
    let knocking = Instant::now();
    while knocking.elapsed() < Duration::from_secs(1) {
        assert_ne!(get(), 200, "no backend listens yet");
        refused += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let backends: Vec<ChildProcess> = ports.iter().map(|&p| backend_on(p, &[])).collect();
    let listening = started.elapsed();

    let first = wait_until(TARGET, || get() == 200).then(|| started.elapsed());
    let left = TARGET.saturating_sub(started.elapsed());
    let all =
        wait_until(left, || get() == 200 && ports.iter().all(|&p| answered(&lb, p) > 0)).then(|| started.elapsed());
    eprintln!(
        "{refused} requests refused before the start; backends listening {listening:?} after it; first 200 after \
         {first:?}, all in use after {all:?}"
    );
    let log = lb.log();
    assert!(first.is_some(), "no 200 within {TARGET:?} of the backends' start\n{log}");
    assert!(all.is_some(), "not every backend in use within {TARGET:?}\n{log}");
    for port in &ports {
        assert_eq!(health(&lb, *port), "up");
    }
    assert_eq!(log.matches("(first check)").count(), 3, "{log}");
    assert_eq!(log.matches("is UP after 2 good check(s)").count(), 3, "{log}");
    drop(backends);
}

#[test]
fn a_backend_killed_under_load_costs_no_get_and_gets_traffic_again_soon_after_its_restart() {
    let mut backends: Vec<ChildProcess> = (0..3).map(|_| common::backend(&[])).collect();
    let ports: Vec<u16> = backends.iter().map(|b| b.addr().port()).collect();
    let addrs: Vec<SocketAddr> = ports.iter().map(|&p| loopback(p)).collect();
    let lb = Lb::start(&addrs, DEFAULTS);
    let load = Load::start(lb.addr, 4, "/", &[200]);
    assert!(wait_until(Duration::from_secs(10), || ports.iter().all(|&p| answered(&lb, p) > 20)));

    let victim = ports[1];
    let killed = Instant::now();
    drop(backends.remove(1));
    // Traffic's refused connections ask for a probe at once, and failed probes come every fast
    // interval: marked down long before the 30 s interval would have probed it again.
    let down = wait_until(Duration::from_secs(10), || health(&lb, victim) == "down").then(|| killed.elapsed());
    assert!(down.is_some(), "not marked down: {}", lb.log());
    // Dead for longer than the first breaker cool-down (5 s), so that a breaker left to itself
    // would have tried, failed and doubled it.
    let dead_for = Duration::from_secs(6);
    std::thread::sleep(dead_for.saturating_sub(killed.elapsed()));

    let before = answered(&lb, victim);
    let restarted = Instant::now();
    let again = backend_on(victim, &[]);
    let back = wait_until(TARGET, || answered(&lb, victim) > before).then(|| restarted.elapsed());
    // A little more load on the restarted backend (slow start ramps it) before the count.
    let served_then = load.ok();
    assert!(wait_until(Duration::from_secs(5), || load.ok() > served_then + 100));
    let report = load.stop();
    let log = lb.log();
    eprintln!(
        "killed: marked down after {down:?}; restarted after {dead_for:?}: traffic again after {back:?}; clients: {} \
         200s, {} lost",
        report.ok,
        report.lost()
    );
    assert_eq!(report.lost(), 0, "GETs lost to the kill or the restart: {report:?}\n{log}");
    assert!(back.is_some(), "no traffic within {TARGET:?} of the restart\n{log}");
    assert!(log.contains(&format!("backend p{victim} (127.0.0.1:{victim}) is UP after 2 good check(s)")), "{log}");
    // The breaker's line says what opened it.
    assert!(log.contains(&format!("backend p{victim}: circuit opened for 5s: ")), "{log}");
    assert!(!log.contains("after 0 consecutive failure"), "{log}");
    drop(again);
}
