//! The balancer's life as an operator drives it, against real `lb-sync` and `lb-backend`
//! processes: SIGTERM/SIGINT finish what is in flight and exit 0, SIGHUP and
//! `POST /lb/config/reload` apply a new configuration without losing a request (or refuse a
//! bad one and keep running), and a stop is bounded whatever the backends do.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::faults::{Fault, FaultyBackend};
use common::lb::Lb;
use common::load::Load;
use common::{backends, wait_until, Conn};

/// The arguments of every lb-backend these tests start.
const BACKEND_ARGS: &[&str] = &["--threads", "64"];

fn post(addr: SocketAddr, path: &str) -> common::Resp {
    let mut conn = Conn::open(addr);
    conn.send(format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes());
    conn.response()
}

/// Hits per backend id over `n` GETs on one connection.
fn spread(addr: SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut conn = Conn::open(addr);
    let mut hits = std::collections::BTreeMap::new();
    for _ in 0..n {
        let resp = conn.get("/");
        assert_eq!(resp.status, 200);
        *hits.entry(resp.json()["server_info"]["id"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    hits
}

#[test]
fn sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0() {
    let (_children, addrs) = backends(1, BACKEND_ARGS);
    let mut lb = Lb::start(&addrs, r#""shutdown_timeout": 10"#);
    let addr = lb.addr;
    let in_flight: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                conn.get(&format!("/slow{i}?delay_ms=1500"))
            })
        })
        .collect();
    // All three have reached the backend (each holds a worker there) before the signal.
    let snapshot_in_flight = || Conn::open(addr).get("/lb/backends").json()[0]["active_connections"].as_u64();
    assert!(wait_until(Duration::from_secs(5), || snapshot_in_flight() == Some(3)));
    let idle = Conn::open(addr);
    let signalled = Instant::now();
    lb.signal("TERM");
    assert!(lb.wait_log("SIGTERM: stopping", Duration::from_secs(5)), "{}", lb.log());
    // No new connections once it stops, and the idle keep-alive connection is closed.
    assert!(wait_until(Duration::from_secs(2), || TcpStream::connect(addr).is_err()), "still accepting");
    let mut idle = idle;
    assert!(idle.is_closed(), "an idle connection stays open while stopping");
    for request in in_flight {
        let resp = request.join().unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("connection"), Some("close"), "answered while stopping");
        assert!(resp.json()["request"]["path"].as_str().unwrap().starts_with("/slow"));
    }
    let status = lb.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0), "{}", lb.log());
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(4), "exited {took:?} after the signal, the requests took 1.5 s");
    assert!(lb.log().contains("stopped after"), "{}", lb.log());
}

#[test]
fn sigint_stops_like_sigterm() {
    let (_children, addrs) = backends(1, BACKEND_ARGS);
    let mut lb = Lb::start(&addrs, "");
    assert_eq!(Conn::open(lb.addr).get("/").status, 200);
    lb.signal("INT");
    assert_eq!(lb.wait_exit(Duration::from_secs(10)).expect("exited").code(), Some(0));
    assert!(lb.log().contains("SIGINT: stopping"), "{}", lb.log());
}

#[test]
fn sigterm_under_load_loses_no_request() {
    let (_children, addrs) = backends(2, BACKEND_ARGS);
    let mut lb = Lb::start(&addrs, r#""shutdown_timeout": 10"#);
    // Every request spends 100 ms at a backend: at any moment nearly every client has one in
    // flight when the signal comes.
    let load = Load::start(lb.addr, 16, "/?delay_ms=100", &[200]);
    assert!(wait_until(Duration::from_secs(10), || load.ok() >= 200), "load never got going");
    lb.signal("TERM");
    let status = lb.wait_exit(Duration::from_secs(15)).expect("exited");
    let report = load.join();
    eprintln!("SIGTERM under load (16 clients): {report:?}");
    assert_eq!(status.code(), Some(0));
    assert_eq!(report.lost(), 0, "requests lost on SIGTERM: {report:?}");
    assert_eq!(report.refused, 16, "each client ends on a refused connection once the listener is closed");
}

#[test]
fn sigterm_under_fast_keep_alive_load_loses_no_request() {
    // Short requests: many connections are idle between two requests when the signal comes.
    // An idle one is closed; a request that was already on its way over it is read and served
    // first, so only one sent after the close can meet the closed connection, and a client
    // resends that (RFC 9112 9.3.1). Every request sent is answered.
    let (_children, addrs) = backends(2, BACKEND_ARGS);
    for round in 0..3 {
        let mut lb = Lb::start(&addrs, r#""shutdown_timeout": 10"#);
        let load = Load::start(lb.addr, 32, "/", &[200]);
        assert!(wait_until(Duration::from_secs(10), || load.ok() >= 2000), "load never got going");
        lb.signal("TERM");
        let status = lb.wait_exit(Duration::from_secs(15)).expect("exited");
        let report = load.join();
        eprintln!("SIGTERM under fast load (32 clients), round {round}: {report:?}");
        assert_eq!(status.code(), Some(0));
        assert_eq!(report.lost(), 0, "requests lost on SIGTERM: {report:?}");
    }
}

#[test]
fn sighup_under_load_applies_weights_backends_and_algorithm_and_loses_no_request() {
    let (_children, addrs) = backends(3, BACKEND_ARGS);
    let lb = Lb::start(&addrs[..2], r#""algorithm": "round_robin""#);
    let load = Load::start(lb.addr, 16, "/?delay_ms=5", &[200]);
    assert!(wait_until(Duration::from_secs(10), || load.ok() >= 200));
    let steps: [(&[SocketAddr], &str); 5] = [
        (&addrs[..3], r#""algorithm": "round_robin""#),
        (&addrs[..3], r#""algorithm": "least_connections", "request_timeout": 5"#),
        (&addrs[1..3], r#""algorithm": "weighted_round_robin", "max_connections": 500"#),
        (&addrs[..2], r#""algorithm": "ip_hash", "keep_alive_timeout": 5, "queue_capacity": 100"#),
        (&addrs[..3], r#""algorithm": "round_robin""#),
    ];
    for (i, (backends, settings)) in steps.iter().enumerate() {
        lb.write_config(backends, settings);
        let before = load.ok();
        lb.signal("HUP");
        let reloads = i + 1;
        assert!(
            wait_until(Duration::from_secs(5), || lb.log().matches("configuration reloaded").count() == reloads),
            "{}",
            lb.log()
        );
        assert!(
            wait_until(Duration::from_secs(10), || load.ok() >= before + 100),
            "traffic stalled after reload {reloads}"
        );
    }
    let report = load.stop();
    eprintln!("5 reloads under load (16 clients): {report:?}");
    assert_eq!(report.lost(), 0, "requests lost on SIGHUP: {report:?}");
    assert_eq!(report.resent, 0, "no connection was closed by a reload");
    // The last configuration is in force: round robin over all three.
    let config = Conn::open(lb.addr).get("/lb/config").json();
    assert_eq!(config["algorithm"], "round_robin");
    assert_eq!(config["backends"].as_array().unwrap().len(), 3);
    let hits = spread(lb.addr, 30);
    assert_eq!(hits.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{hits:?}");
    let log = lb.log();
    let removed = format!("backends removed: p{}", addrs[0].port());
    assert!(log.contains(&removed), "{log}");
    assert!(log.contains("settings changed: algorithm, request_timeout"), "{log}");
}

#[test]
fn a_reload_changes_weights_and_removes_a_backend_for_the_next_pick() {
    let (_children, addrs) = backends(2, BACKEND_ARGS);
    let lb = Lb::start(&addrs, r#""algorithm": "weighted_round_robin""#);
    let ids = |hits: &std::collections::BTreeMap<String, usize>| hits.values().copied().collect::<Vec<_>>();
    assert_eq!(ids(&spread(lb.addr, 20)), [10, 10]);
    let weighted = format!(
        r#"{{"host": "127.0.0.1", "port": 0, "access_log": false, "health_check_interval": 0, "algorithm": "weighted_round_robin", "backends": [{{"id": "p{0}", "host": "127.0.0.1", "port": {0}, "weight": 3}}, {{"id": "p{1}", "host": "127.0.0.1", "port": {1}, "weight": 1}}]}}"#,
        addrs[0].port(),
        addrs[1].port()
    );
    std::fs::write(lb.config_path(), weighted).unwrap();
    let resp = post(lb.addr, "/lb/config/reload");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["changes"], format!("backends reweighted: p{}", addrs[0].port()));
    let hits = spread(lb.addr, 20);
    let of = |a: SocketAddr| hits[&format!("backend-{}", a.port())];
    assert_eq!((of(addrs[0]), of(addrs[1])), (15, 5), "weights 3:1");
    let backends = Conn::open(lb.addr).get("/lb/backends").json();
    assert_eq!((backends[0]["weight"].as_u64(), backends[1]["weight"].as_u64()), (Some(3), Some(1)));
    assert!(backends[0]["total_requests"].as_u64().unwrap() > 10, "counters kept across the reload");
    // Nothing changed: a reload says so.
    let resp = post(lb.addr, "/lb/config/reload");
    assert_eq!(resp.json()["changes"], "no change");
    // GET is not how to reload.
    assert_eq!(Conn::open(lb.addr).get("/lb/config/reload").status, 405);
}

#[test]
fn an_invalid_reload_is_refused_with_its_reason_and_the_old_configuration_keeps_running() {
    let (_children, addrs) = backends(2, BACKEND_ARGS);
    let lb = Lb::start(&addrs, r#""max_tries": 2"#);
    let original = std::fs::read_to_string(lb.config_path()).unwrap();
    let cases = [
        (r#"{"max_connections": 0"#, "EOF while parsing an object"),
        (r#"{"max_connections": 0}"#, "max_connections must be 1-1000000, got 0"),
        (r#"{"backends": [{"host": "no-such-host.invalid", "port": 80}]}"#, "cannot resolve no-such-host.invalid"),
        (r#"{"max_tries": 100000}"#, "max_tries must be 1-100, got 100000"),
        (
            r#"{"rate_limit": 5, "rate_limit_burst": 0, "client_rate_limit_burst": 3}"#,
            "client_rate_limit_burst is 3 but client_rate_limit is 0",
        ),
    ];
    for (i, (json, reason)) in cases.iter().enumerate() {
        std::fs::write(lb.config_path(), json).unwrap();
        let resp = post(lb.addr, "/lb/config/reload");
        assert_eq!(resp.status, 400, "{json}");
        let error = resp.json()["error"].as_str().unwrap().to_string();
        assert!(error.starts_with("reload refused, the running configuration stays: "), "{error}");
        assert!(error.contains(reason), "{json}: {error}");
        // The same by SIGHUP: logged, and the process keeps running.
        lb.signal("HUP");
        assert!(
            wait_until(Duration::from_secs(5), || lb.log().matches("reload refused").count() == 2 * (i + 1)),
            "{}",
            lb.log()
        );
        let config = Conn::open(lb.addr).get("/lb/config").json();
        assert_eq!((config["max_tries"].as_u64(), config["backends"].as_array().unwrap().len()), (Some(2), 2));
        assert_eq!(spread(lb.addr, 4).len(), 2, "both backends still serve");
    }
    assert!(lb.log().lines().any(|l| l.contains("reload refused") && l.contains("max_connections must be 1-1000000")));
    std::fs::write(lb.config_path(), original).unwrap();
    assert_eq!(post(lb.addr, "/lb/config/reload").status, 200);
}

#[test]
fn restart_only_settings_are_kept_and_named() {
    let (_children, addrs) = backends(1, BACKEND_ARGS);
    let lb = Lb::start(&addrs, r#""threads": 8"#);
    let text = std::fs::read_to_string(lb.config_path()).unwrap();
    let changed =
        text.replace(r#""threads": 8"#, r#""threads": 16, "max_tries": 1"#).replace(r#""port": 0"#, r#""port": 1"#);
    std::fs::write(lb.config_path(), changed).unwrap();
    let resp = post(lb.addr, "/lb/config/reload");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["changes"], "settings changed: max_tries; kept until a restart: port, threads");
    let config = Conn::open(lb.addr).get("/lb/config").json();
    assert_eq!(
        (config["threads"].as_u64(), config["port"].as_u64(), config["max_tries"].as_u64()),
        (Some(8), Some(0), Some(1))
    );
    assert_eq!(Conn::open(lb.addr).get("/").status, 200, "still on its port");
}

#[test]
fn reloaded_limits_and_timeouts_apply_to_the_next_request() {
    let silent = FaultyBackend::start(Fault::Silent);
    let lb = Lb::start(&[silent.addr], r#""request_timeout": 30, "max_body_bytes": 1000"#);
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n");
    conn.send(&[b'x'; 100]);
    let pending = std::thread::spawn(move || common::read_response(&mut conn.reader, false).map(|r| r.status));
    assert!(wait_until(Duration::from_secs(5), || silent.hits() == 1));
    lb.write_config(&[silent.addr], r#""request_timeout": 0.3, "max_body_bytes": 10"#);
    lb.signal("HUP");
    assert!(lb.wait_log("configuration reloaded", Duration::from_secs(5)), "{}", lb.log());
    assert!(lb.log().contains("settings changed: request_timeout, max_body_bytes"), "{}", lb.log());
    // The new limit on a new request on a new connection...
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n");
    assert_eq!(conn.response().status, 413);
    // ...and the new timeout: 504 after 0.3 s, not 30.
    let started = Instant::now();
    assert_eq!(Conn::open(lb.addr).get("/").status, 504);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // The request sent before the reload keeps its configuration (30 s): it is still waiting.
    assert!(!pending.is_finished());
    drop(lb);
    assert!(pending.join().unwrap().is_err(), "no answer: the balancer was killed");
}

#[test]
fn a_stop_is_bounded_even_when_backends_never_answer() {
    let silent = FaultyBackend::start(Fault::Silent);
    let mut lb = Lb::start(&[silent.addr], r#""request_timeout": 600, "shutdown_timeout": 1"#);
    let addr = lb.addr;
    let stuck: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                conn.send(b"GET /never HTTP/1.1\r\nHost: t\r\n\r\n");
                conn.rest()
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || silent.hits() == 4));
    let signalled = Instant::now();
    lb.signal("TERM");
    let status = lb.wait_exit(Duration::from_secs(15)).expect("exited");
    let took = signalled.elapsed();
    eprintln!("stop with 4 requests to a silent backend, shutdown_timeout 1 s: exited after {took:?}");
    assert_eq!(status.code(), Some(0), "{}", lb.log());
    assert!(took >= Duration::from_millis(900), "the grace period was not given: {took:?}");
    assert!(took < Duration::from_secs(4), "the backend's silence held the stop: {took:?}");
    for client in stuck {
        let answer = String::from_utf8_lossy(&client.join().unwrap()).into_owned();
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 50"), "{answer}");
    }
}

#[test]
fn the_library_stop_is_bounded_too() {
    use lb_sync::balancer::LoadBalancer;
    use lb_sync::config::{BackendConfig, Config};
    let silent = FaultyBackend::start(Fault::Silent);
    let config = {
        let mut adjusted = Config::default();
        adjusted.listener.host = "127.0.0.1".parse().unwrap();
        adjusted.listener.port = 0;
        adjusted.listener.threads = 4;
        adjusted.operations.access_log = false;
        adjusted.health.interval = None;
        adjusted.pool.request_timeout = Duration::from_secs_f64(600.0);
        adjusted.backends = vec![BackendConfig::new("127.0.0.1", silent.addr.port(), 1)];
        adjusted
    };
    let lb = LoadBalancer::start(config).unwrap();
    let addr = lb.local_addr();
    let client = std::thread::spawn(move || {
        let mut conn = Conn::open(addr);
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        conn.rest()
    });
    assert!(wait_until(Duration::from_secs(5), || silent.hits() == 1));
    let started = Instant::now();
    lb.stop(Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(3), "stop took {:?}", started.elapsed());
    let _ = client.join();
}

#[test]
fn with_a_state_file_a_reload_keeps_the_backends_the_api_manages() {
    let (_children, addrs) = backends(2, BACKEND_ARGS);
    let state = std::env::temp_dir().join(format!("lb-sync-lifecycle-state-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let settings = format!(r#""state_file": "{}", "algorithm": "round_robin""#, state.display());
    let lb = Lb::start(&addrs[..1], &settings);
    // The API adds the second backend; the state file keeps it.
    let mut conn = Conn::open(lb.addr);
    let body = format!(r#"{{"id": "added", "host": "127.0.0.1", "port": {}}}"#, addrs[1].port());
    conn.send(
        format!("POST /lb/backends/add HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
    );
    assert_eq!(conn.response().status, 201);
    // The file still lists one backend, and asks for least connections.
    lb.write_config(&addrs[..1], &settings.replace("round_robin", "least_connections"));
    let resp = post(lb.addr, "/lb/config/reload");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["changes"],
        "settings changed: algorithm; kept until a restart: backends (the state file keeps them)"
    );
    let config = Conn::open(lb.addr).get("/lb/config").json();
    assert_eq!(config["algorithm"], "least_connections");
    assert_eq!(config["backends"].as_array().unwrap().len(), 2, "the API's backend stays");
    let _ = std::fs::remove_file(&state);
}

#[test]
fn a_stop_breaks_a_body_still_read_from_a_connection_that_a_reload_left_behind() {
    // A reload with new client settings makes a new forwarder, and the backend's first request
    // after it replaces the backend's client; a worker still reading an answer's body from a
    // connection of the old one must be reached by a stop all the same.
    let stalling = FaultyBackend::start(Fault::StallMidBody);
    let mut lb = Lb::start(&[stalling.addr], r#""request_timeout": 600, "shutdown_timeout": 1"#);
    let mut stalled = TcpStream::connect(lb.addr).unwrap();
    std::io::Write::write_all(&mut stalled, b"GET /stalled HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    // The head and the first 100 bytes of 1000 reach the client; the rest never comes.
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n")
        || got.len() < got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4 + 100
    {
        let n = std::io::Read::read(&mut stalled, &mut buf).expect("the head and the first bytes");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));

    stalling.set(Fault::Fine);
    lb.write_config(&[stalling.addr], r#""request_timeout": 599, "shutdown_timeout": 1"#);
    lb.signal("HUP");
    assert!(lb.wait_log("configuration reloaded", Duration::from_secs(5)), "{}", lb.log());
    // A client setting changed, so the reload made a new forwarder.
    assert!(lb.log().contains("settings changed: request_timeout"), "{}", lb.log());
    // The new forwarder's first request to the backend gives it a client of its own.
    assert_eq!(Conn::open(lb.addr).get("/after").status, 200);

    let signalled = Instant::now();
    lb.signal("TERM");
    let status = lb.wait_exit(Duration::from_secs(15)).expect("exited");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", lb.log());
    assert!(took < Duration::from_secs(4), "the old connection's read held the stop: {took:?}\n{}", lb.log());
    // Not cut off by the stop's own bound (shutdown_timeout + 0.75 s, "exiting now"): the
    // worker's read was broken and it finished.
    assert!(!lb.log().contains("still finishing") && !lb.log().contains("left behind"), "{}", lb.log());
    // The client sees the answer cut short (closed or reset), never completed.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stalled, &mut rest);
    assert!(got.len() + rest.len() < got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4 + 1000);
}
