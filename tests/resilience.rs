//! Backend health end to end: active checks, circuit breakers, retries and their budget, slow
//! start, panic mode. Real processes are killed and restarted; misbehaving backends are real
//! servers on loopback.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, ChildProcess, Conn};
use lb_sync::balance::peak_ewma::now;
use lb_sync::balance::AlgorithmKind;
use lb_sync::balancer::LoadBalancer;
use lb_sync::config::{BackendConfig, Config};
use lb_sync::health::{BreakerConfig, BreakerState, ProbeError, TripCause};
use lb_sync::server::{bind, Handler, Request, Response, Server, ServerConfig};
use lb_sync::upstream::{apply_probe, Backend, BackendPolicy, BackendTable, HealthChecker, HealthConfig};

fn start_backend_process(port: u16) -> ChildProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lb-backend"));
    command.args(["--port", &port.to_string(), "--threads", "8"]);
    ChildProcess::start(command)
}

fn config(algorithm: AlgorithmKind, ports: &[u16], tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = {
        let mut adjusted = Config::default();
        adjusted.listener.host = "127.0.0.1".parse().unwrap();
        adjusted.listener.port = 0;
        adjusted.pool.algorithm = algorithm;
        adjusted.listener.threads = 16;
        adjusted.operations.access_log = false;
        adjusted.backends = ports.iter().map(|&p| BackendConfig::new("127.0.0.1", p, 1)).collect();
        adjusted
    };
    tweak(&mut config);
    config
}

fn backend_named(lb: &LoadBalancer, port: u16) -> Arc<Backend> {
    let snapshot = lb.shared().pools.default_pool().table.snapshot();
    Arc::clone(snapshot.backends.iter().find(|b| b.port == port).expect("configured"))
}

#[test]
fn killed_backend_costs_no_client_request_and_is_marked_down_then_up() {
    let backends: Vec<ChildProcess> = (0..3).map(|_| common::backend(&["--threads", "8"])).collect();
    let ports: Vec<u16> = backends.iter().map(|b| b.addr().port()).collect();
    let (interval, fall, rise) = (0.2, 3, 2);
    let lb = LoadBalancer::start(config(AlgorithmKind::RoundRobin, &ports, |c| {
        c.health.interval = Some(Duration::from_secs_f64(interval));
        c.health.timeout = Duration::from_secs_f64(0.5);
        c.health.fall = fall;
        c.health.rise = rise;
        c.pool.slow_start = None;
    }))
    .unwrap();
    let addr = lb.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, failures, served) = (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&served));
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let end = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let resp = conn.get("/");
                    if resp.status == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || served.load(Ordering::Relaxed) > 200));

    let victim_port = ports[1];
    let mut backends = backends;
    let victim = backends.remove(1);
    let killed_at = Instant::now();
    drop(victim);
    let victim_backend = backend_named(&lb, victim_port);
    assert!(wait_until(Duration::from_secs(5), || !victim_backend.is_healthy()), "never marked down");
    let down_after = killed_at.elapsed();
    // interval × fall, plus jitter and one probe timeout of slack.
    let bound = Duration::from_secs_f64(interval * 1.1 * f64::from(fall) + 0.5 + 0.3);
    assert!(down_after <= bound, "marked down after {down_after:?} (bound {bound:?})");

    let served_before_restart = served.load(Ordering::Relaxed);
    let _restarted = start_backend_process(victim_port);
    assert!(wait_until(Duration::from_secs(5), || victim_backend.is_healthy()), "never marked up again");
    assert!(victim_backend.last_check().is_some_and(|c| c.ok));
    let requests_before = victim_backend.counts().0;
    assert!(wait_until(Duration::from_secs(5), || victim_backend.counts().0 > requests_before + 20), "no traffic back");
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "clients saw failures");
    assert!(served.load(Ordering::Relaxed) > served_before_restart);
    eprintln!(
        "killed backend marked down after {down_after:?}; {} requests served, none failed",
        served.load(Ordering::Relaxed)
    );
    lb.stop(Duration::from_secs(2));
}

/// A backend whose behaviour the test switches: 0 answers 200, 1 answers 500, 2 answers 200
/// after 600 ms. It counts the requests it received.
struct Switchable {
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
}

impl Handler for Switchable {
    fn handle(&self, request: Request) -> Response {
        if request.path() == "/health" {
            return Response::text(200, "ok");
        }
        self.hits.fetch_add(1, Ordering::SeqCst);
        match self.mode.load(Ordering::SeqCst) {
            1 => Response::text(500, "broken"),
            2 => {
                std::thread::sleep(Duration::from_millis(600));
                Response::text(200, "slow but fine")
            }
            _ => Response::text(200, "fine"),
        }
    }
}

fn switchable() -> (Server, u16, Arc<AtomicU8>, Arc<AtomicUsize>) {
    let listener = bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mode, hits) = (Arc::new(AtomicU8::new(0)), Arc::new(AtomicUsize::new(0)));
    let handler = Switchable { mode: Arc::clone(&mode), hits: Arc::clone(&hits) };
    let server = Server::start_on(listener, ServerConfig { threads: 16, ..ServerConfig::default() }, handler).unwrap();
    (server, port, mode, hits)
}

#[test]
fn breaker_trips_on_500s_half_opens_for_exactly_the_trial_count_and_closes_on_success() {
    let (_a, port_a, mode_a, hits_a) = switchable();
    let (_b, port_b, _mode_b, hits_b) = switchable();
    let lb = LoadBalancer::start(config(AlgorithmKind::RoundRobin, &[port_a, port_b], |c| {
        c.breaker.on_5xx = true;
        c.breaker.consecutive_failures = 3;
        c.breaker.half_open_trials = 2;
        // Long enough that the ten requests below fit in it on a loaded machine.
        c.breaker.cooldown = Duration::from_secs_f64(2.0);
        c.pool.slow_start = None;
    }))
    .unwrap();
    let addr = lb.local_addr();
    let a = backend_named(&lb, port_a);
    mode_a.store(1, Ordering::SeqCst);
    let mut conn = Conn::open(addr);
    // Round robin alternates: three 500s from A open its breaker.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(conn.get("/").status);
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 500).count(), 3);
    assert_eq!(a.breaker().state().as_str(), "open");
    let stats = conn.get("/lb/stats").json();
    assert_eq!(stats["circuit_breaker"]["state"], "open");
    // While open, A gets nothing.
    let before = hits_a.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(conn.get("/").status, 200);
    }
    assert_eq!(hits_a.load(Ordering::SeqCst), before, "an open breaker let requests through");

    // After the cool-down, A is healthy but slow: of 8 concurrent requests exactly 2 may try it.
    assert!(wait_until(Duration::from_secs(10), || a.breaker().state().as_str() == "half_open"));
    mode_a.store(2, Ordering::SeqCst);
    let (a_before, b_before) = (hits_a.load(Ordering::SeqCst), hits_b.load(Ordering::SeqCst));
    let burst: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                c.get("/").status
            })
        })
        .collect();
    let statuses: Vec<u16> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(hits_a.load(Ordering::SeqCst) - a_before, 2, "trial requests to the half-open backend");
    assert_eq!(hits_b.load(Ordering::SeqCst) - b_before, 6);
    assert_eq!(a.breaker().state().as_str(), "closed", "two good trials close it");
    assert_eq!(conn.get("/lb/stats").json()["circuit_breaker"]["state"], "closed");
    lb.stop(Duration::from_secs(2));
}

#[test]
fn a_circuit_that_closes_again_ramps_its_backend_from_a_fresh_estimate() {
    let (_a, port_a, mode_a, hits_a) = switchable();
    let (_b, port_b, _mode_b, _hits_b) = switchable();
    let lb = LoadBalancer::start(config(AlgorithmKind::RoundRobin, &[port_a, port_b], |c| {
        c.breaker.on_5xx = true;
        c.breaker.consecutive_failures = 1;
        c.breaker.half_open_trials = 1;
        c.breaker.cooldown = Duration::from_secs_f64(1.0);
        c.pool.slow_start = Some(Duration::from_secs_f64(60.0));
        // No checks: only the breaker can notice the recovery.
        c.health.interval = None;
    }))
    .unwrap();
    let a = backend_named(&lb, port_a);
    let mut conn = Conn::open(lb.local_addr());
    for _ in 0..2 {
        assert_eq!(conn.get("/").status, 200);
    }
    assert!(a.response_time().estimate(now()).is_some(), "measured");
    mode_a.store(1, Ordering::SeqCst);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(conn.get("/").status);
    }
    assert_eq!(a.breaker().state(), BreakerState::Open, "{statuses:?}");
    mode_a.store(0, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(5), || a.breaker().state() == BreakerState::HalfOpen));
    // Round robin offers A within two picks; its one good trial closes the circuit.
    let before = hits_a.load(Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(conn.get("/").status, 200);
        if hits_a.load(Ordering::SeqCst) > before {
            break;
        }
    }
    assert_eq!(hits_a.load(Ordering::SeqCst), before + 1, "one trial");
    assert_eq!(a.breaker().state(), BreakerState::Closed);
    assert!((100..200).contains(&a.slow_start().permille()), "ramping: {}", a.slow_start().permille());
    assert_eq!(a.response_time().estimate(now()), None, "the trial's answer and all before are forgotten");
    lb.stop(Duration::from_secs(1));
}

#[test]
fn checks_turned_off_bring_a_down_backend_back_ramping_from_a_fresh_estimate() {
    let (_a, port, _mode, _hits) = switchable();
    // One check at the start, then none for an hour.
    let settings = |c: &mut Config| {
        c.health.interval = Some(Duration::from_secs_f64(3600.0));
        c.health.fast_interval = Duration::from_secs_f64(3600.0);
        c.pool.slow_start = Some(Duration::from_secs_f64(60.0));
    };
    let lb = LoadBalancer::start(config(AlgorithmKind::RoundRobin, &[port], settings)).unwrap();
    let a = backend_named(&lb, port);
    assert!(wait_until(Duration::from_secs(5), || a.health().as_str() == "up"), "the first check");
    assert_eq!(Conn::open(lb.local_addr()).get("/").status, 200);
    assert!(a.response_time().estimate(now()).is_some(), "measured");
    a.set_healthy(false);
    let off = config(AlgorithmKind::RoundRobin, &[port], |c| {
        settings(c);
        c.health.interval = None;
    });
    lb.reload(off).unwrap();
    assert!(Arc::ptr_eq(&backend_named(&lb, port), &a), "kept by the reload");
    assert_eq!(a.health().as_str(), "up");
    assert!((100..200).contains(&a.slow_start().permille()), "ramping: {}", a.slow_start().permille());
    assert_eq!(a.response_time().estimate(now()), None);
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_lone_backend_is_never_ejected_by_its_breaker_alone() {
    let (_a, port, mode, hits) = switchable();
    let lb = LoadBalancer::start(config(AlgorithmKind::RoundRobin, &[port], |c| {
        c.breaker.on_5xx = true;
        c.breaker.consecutive_failures = 2;
    }))
    .unwrap();
    mode.store(1, Ordering::SeqCst);
    let mut conn = Conn::open(lb.local_addr());
    for _ in 0..6 {
        assert_eq!(conn.get("/").status, 500, "the backend's own answer, not 503");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 6);
    assert_eq!(backend_named(&lb, port).breaker().state().as_str(), "open");
    lb.stop(Duration::from_secs(1));
}

fn table(ports: &[u16], policy: BackendPolicy) -> Arc<BackendTable> {
    let backends: Vec<(String, BackendConfig)> =
        ports.iter().enumerate().map(|(i, &p)| (format!("b{i}"), BackendConfig::new("127.0.0.1", p, 1))).collect();
    Arc::new(BackendTable::new(AlgorithmKind::RoundRobin, &backends, policy).unwrap())
}

#[test]
fn one_failed_probe_between_successes_does_not_flip_state() {
    let table = table(&[9], BackendPolicy::default());
    let backend = Arc::clone(&table.snapshot().backends[0]);
    let config = HealthConfig { rise: 2, fall: 3, ..HealthConfig::default() };
    let ok = Ok(200);
    let bad = Err(ProbeError::Status(503));
    assert_eq!(backend.health().as_str(), "unknown", "not probed yet");
    assert_eq!(apply_probe(&backend, &config, &ok), Some(true), "the first probe decides");
    for result in [&bad, &ok, &bad, &bad, &ok, &bad, &ok] {
        assert_eq!(apply_probe(&backend, &config, result), None);
        assert!(backend.is_healthy());
    }
    for _ in 0..2 {
        apply_probe(&backend, &config, &bad);
    }
    assert_eq!(apply_probe(&backend, &config, &bad), Some(false), "the third failure in a row");
    assert_eq!(apply_probe(&backend, &config, &ok), None);
    assert_eq!(apply_probe(&backend, &config, &bad), None);
    assert_eq!(apply_probe(&backend, &config, &ok), None, "one good probe is not a rise of 2");
    assert_eq!(apply_probe(&backend, &config, &ok), Some(true));
}

#[test]
fn a_backend_not_probed_yet_goes_down_on_its_first_failed_probe() {
    let table = table(&[9], BackendPolicy::default());
    let backend = Arc::clone(&table.snapshot().backends[0]);
    let config = HealthConfig { rise: 2, fall: 3, ..HealthConfig::default() };
    assert!(backend.is_healthy() && backend.is_usable(), "used until proven otherwise");
    assert_eq!(apply_probe(&backend, &config, &Err(ProbeError::Status(503))), Some(false));
    assert_eq!(backend.health().as_str(), "down");
    assert_eq!(apply_probe(&backend, &config, &Ok(200)), None, "then rise applies");
    assert_eq!(apply_probe(&backend, &config, &Ok(200)), Some(true));
}

#[test]
fn probes_run_concurrently_so_five_blackholes_cost_one_timeout() {
    // 15 healthy demo backends and 5 that accept connections and never answer.
    let healthy: Vec<ChildProcess> = (0..15).map(|_| common::backend(&["--threads", "1"])).collect();
    let mut ports: Vec<u16> = healthy.iter().map(|b| b.addr().port()).collect();
    let holes: Vec<TcpListener> = (0..5).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ports.extend(holes.iter().map(|l| l.local_addr().unwrap().port()));
    let table = table(&ports, BackendPolicy::default());
    let timeout = Duration::from_millis(1000);
    let config = HealthConfig { interval: Duration::from_secs(60), timeout, probers: 16, ..HealthConfig::default() };
    let started = Instant::now();
    let checker = HealthChecker::start(Arc::clone(&table), config).unwrap();
    let snapshot = table.snapshot();
    assert!(wait_until(Duration::from_secs(10), || snapshot.backends.iter().all(|b| b.last_check().is_some())));
    let took = started.elapsed();
    checker.stop();
    let failed: Vec<String> =
        snapshot.backends.iter().filter_map(|b| b.last_check().filter(|c| !c.ok).map(|c| c.detail)).collect();
    assert_eq!(failed.len(), 5, "{failed:?}");
    assert!(failed.iter().all(|d| d.contains("timed out")), "{failed:?}");
    eprintln!("20 probes, 5 blackholed, timeout {timeout:?}: all results after {took:?}");
    assert!(took < timeout * 3, "probes waited for each other: {took:?}");
}

/// A backend that answers everything with 200 and counts the health probes it gets.
struct CountsProbes(Arc<AtomicUsize>);

impl Handler for CountsProbes {
    fn handle(&self, request: Request) -> Response {
        if request.path() == "/health" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Response::text(200, "ok")
    }
}

#[test]
fn traffic_asks_for_a_probe_and_a_breaker_open_means_fast_probes() {
    let listener = bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
    let port = listener.local_addr().unwrap().port();
    let probes = Arc::new(AtomicUsize::new(0));
    let _server = Server::start_on(listener, ServerConfig::default(), CountsProbes(Arc::clone(&probes))).unwrap();
    let breaker =
        BreakerConfig { consecutive_failures: 1, cooldown: Duration::from_secs(60), ..BreakerConfig::default() };
    let table = table(&[port], BackendPolicy { breaker, ..BackendPolicy::default() });
    let backend = Arc::clone(&table.snapshot().backends[0]);
    // Up after the first probe, the next one is a minute away (fast interval 1 s).
    let config = HealthConfig { interval: Duration::from_secs(60), ..HealthConfig::default() };
    let checker = HealthChecker::start(Arc::clone(&table), config).unwrap();
    assert!(wait_until(Duration::from_secs(5), || backend.health().as_str() == "up"));
    assert_eq!(probes.load(Ordering::SeqCst), 1);

    // A connect failure seen by traffic asks for a probe: it comes within the fast interval,
    // not a minute later. Once asked, more asks change nothing until it has begun.
    table.probe_requests().ask(&backend);
    table.probe_requests().ask(&backend);
    assert!(wait_until(Duration::from_secs(5), || probes.load(Ordering::SeqCst) == 2), "no probe came");
    assert!(wait_until(Duration::from_secs(1), || !backend.probe_wanted()));
    // The backend counted the probe before answering it: wait until its answer is taken in
    // (an asked probe that passes ends an open breaker's cool-down, which the next step must
    // not see).
    assert!(wait_until(Duration::from_secs(1), || backend.rise_fall().ok_run() == 2));

    // Its breaker opened by what a probe cannot disprove (a 5xx, a response timeout): it is
    // probed every fast interval, and the passing probes leave the cool-down alone.
    assert!(backend.breaker().record_failure(backend.breaker().admit().unwrap()));
    let before = probes.load(Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(5), || probes.load(Ordering::SeqCst) >= before + 2), "not probed fast");
    assert_eq!(backend.breaker().state(), BreakerState::Open);
    assert_eq!(backend.breaker().last_cause(), Some(TripCause::ConsecutiveFailures(1)));

    // Traffic could not connect, and the probe that asks for passes: a restart. The cool-down
    // ends; the breaker's trials decide.
    table.probe_requests().ask(&backend);
    assert!(wait_until(Duration::from_secs(5), || backend.breaker().state() == BreakerState::HalfOpen));
    assert_eq!(backend.health().as_str(), "up");
    checker.stop();
}

#[test]
fn slow_start_share_grows_over_the_window() {
    let window = Duration::from_millis(1000);
    let table = table(&[9001, 9002], BackendPolicy { slow_start: window, ..BackendPolicy::default() });
    let snapshot = table.snapshot();
    let recovering = Arc::clone(&snapshot.backends[0]);
    let share = |picks: usize| {
        let n = (0..picks).filter(|_| Arc::ptr_eq(snapshot.pick(&[], |_| true).unwrap().0, &recovering)).count();
        n as f64 / picks as f64
    };
    assert!((share(1000) - 0.5).abs() < 0.01, "even split before");
    // Down, then back up through the health rule: the ramp begins.
    let config = HealthConfig { rise: 1, fall: 1, ..HealthConfig::default() };
    apply_probe(&recovering, &config, &Err(ProbeError::TimedOut));
    assert_eq!(share(100), 0.0, "no traffic while down");
    apply_probe(&recovering, &config, &Ok(200));
    let early = share(1000);
    std::thread::sleep(window / 2);
    let middle = share(1000);
    assert!(wait_until(window * 2, || recovering.slow_start().permille() == 1000));
    let late = share(1000);
    eprintln!("slow start share of the recovering backend: {early:.3} -> {middle:.3} -> {late:.3}");
    assert!(early < 0.15, "early share {early}");
    assert!(middle > early + 0.1, "middle share {middle} after early {early}");
    assert!((late - 0.5).abs() < 0.01, "full share at the end: {late}");
}

#[test]
fn retry_budget_bounds_tries_when_every_backend_fails() {
    let dead: Vec<u16> =
        (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let lb = LoadBalancer::start(config(AlgorithmKind::RoundRobin, &dead, |c| {
        c.pool.max_tries = 3;
        c.pool.retry_budget_ratio = 0.2;
        c.pool.retry_budget_min = 2;
        c.breaker.consecutive_failures = 1000;
        c.health.interval = None;
    }))
    .unwrap();
    let mut conn = Conn::open(lb.local_addr());
    for _ in 0..50 {
        assert_eq!(conn.get("/").status, 502);
    }
    let retries = conn.get("/lb/stats").json()["retries"].clone();
    let (tries, retried, denied) = (
        retries["tries"].as_u64().unwrap(),
        retries["retries"].as_u64().unwrap(),
        retries["denied_by_budget"].as_u64().unwrap(),
    );
    eprintln!("50 requests, all backends refusing: {tries} tries, {retried} retries, {denied} denied by the budget");
    assert_eq!(tries, 50 + retried);
    assert!(retried <= 10, "20% of 50 requests: {retried} retries");
    assert!(denied >= 30, "the budget refused the rest: {denied}");
    assert_eq!(retries["failed_tries"]["refused"], tries);
    lb.stop(Duration::from_secs(1));
}

#[test]
fn with_nothing_healthy_503_at_once_or_panic_mode_tries_anyway() {
    let (_a, port, _mode, hits) = switchable();
    for panic_mode in [false, true] {
        let lb = LoadBalancer::start(config(AlgorithmKind::RoundRobin, &[port], |c| {
            c.pool.panic_mode = panic_mode;
            c.health.interval = None;
        }))
        .unwrap();
        backend_named(&lb, port).set_healthy(false);
        let before = hits.load(Ordering::SeqCst);
        let status = Conn::open(lb.local_addr()).get("/").status;
        if panic_mode {
            assert_eq!((status, hits.load(Ordering::SeqCst) - before), (200, 1));
        } else {
            assert_eq!((status, hits.load(Ordering::SeqCst) - before), (503, 0));
        }
        lb.stop(Duration::from_secs(1));
    }
}

#[test]
fn a_large_post_streamed_to_a_refused_backend_still_reaches_another() {
    let (_a, port, _mode, hits) = switchable();
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let lb =
        LoadBalancer::start(config(AlgorithmKind::RoundRobin, &[dead, port], |c| c.pool.retry_body_max_bytes = 10))
            .unwrap();
    let mut conn = Conn::open(lb.local_addr());
    for _ in 0..2 {
        conn.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n");
        conn.send(&[b'p'; 100]);
        assert_eq!(conn.response().status, 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    lb.stop(Duration::from_secs(1));
}
