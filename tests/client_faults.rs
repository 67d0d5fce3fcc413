//! A request's or a client's fault is never a backend's. Every head the front end accepts is
//! forwarded whole (one line of up to its 32 KiB limit, plus what the proxy adds to it); a head
//! over the limit gets the front end's `431`; a value the HTTP client cannot send gets `400`
//! before any backend is tried; and a client that goes away (mid-body, mid-answer) leaves every
//! backend's failure count, breaker and health as they were. In-process balancers and demo
//! backends over real sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::inproc::demo_backend_with;
use common::{api, served_by, wait_until, Conn};
use lb_sync::balance::AlgorithmKind;
use lb_sync::balancer::LoadBalancer;
use lb_sync::config::{BackendConfig, Config};
use lb_sync::server::{Limits, Server};
use serde_json::{json, Value};

/// The front end's head limit (request line and blank line included).
const HEAD_LIMIT: usize = 32 * 1024;

/// An in-process demo backend whose heads may be up to `max_head_bytes` long (the balancer adds
/// its X-Forwarded set to a head at the front end's limit); its id is `backend-<port>`.
fn demo_backend(max_head_bytes: usize) -> (Server, u16) {
    demo_backend_with(Limits { max_head_bytes, ..Limits::default() }, Duration::ZERO)
}

/// A balancer over these backends, round robin, default settings but for `tweak`.
fn balancer(ports: &[u16], tweak: impl FnOnce(&mut Config)) -> LoadBalancer {
    let backends = ports.iter().map(|&port| BackendConfig::new("127.0.0.1", port, 1)).collect();
    let mut config = {
        let mut adjusted = common::inproc::config(backends);
        adjusted.pool.algorithm = AlgorithmKind::RoundRobin;
        adjusted.listener.threads = 8;
        adjusted
    };
    tweak(&mut config);
    LoadBalancer::start(config).unwrap()
}

/// A GET whose head is exactly `size` bytes, made up to it by one `X-Big` header; and that
/// header's value.
fn head_of(size: usize) -> (Vec<u8>, String) {
    let start = "GET /big HTTP/1.1\r\nHost: test\r\nX-Big: ";
    let end = "\r\n\r\n";
    let value: String = (0..size - start.len() - end.len()).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    (format!("{start}{value}{end}").into_bytes(), value)
}

/// Each backend's counters that a failure would move, by id.
fn failure_counters(lb: SocketAddr) -> Vec<Value> {
    api::backends(lb)
        .iter()
        .map(|b| {
            json!({
                "id": b["id"],
                "failed_requests": b["failed_requests"],
                "breaker": b["circuit_breaker"]["state"],
                "breaker_failures": b["circuit_breaker"]["failure_count"],
                "down": b["health"] == "down",
                "usable": b["usable"],
            })
        })
        .collect()
}

/// What [`failure_counters`] reads of a backend nothing went wrong with.
fn untouched(id: &Value) -> Value {
    json!({ "id": id, "failed_requests": 0, "breaker": "closed", "breaker_failures": 0, "down": false, "usable": true })
}

fn assert_no_backend_failed(lb: SocketAddr) {
    let counters = failure_counters(lb);
    let expected: Vec<Value> = counters.iter().map(|c| untouched(&c["id"])).collect();
    assert_eq!(counters, expected);
    let stats = api::stats(lb);
    let failed_tries = stats["retries"]["failed_tries"].as_object().expect("failed_tries").clone();
    assert!(failed_tries.values().all(|v| v == 0), "no try failed: {failed_tries:?}");
}

#[test]
fn heads_up_to_the_front_ends_limit_reach_the_backend_whole() {
    let (_backend, port) = demo_backend(2 * HEAD_LIMIT);
    let lb = balancer(&[port], |_| {});
    let mut conn = Conn::open(lb.local_addr());
    for kib in [8, 16, 24, 32] {
        let (head, value) = head_of(kib * 1024);
        conn.send(&head);
        let resp = conn.response();
        assert_eq!(resp.status, 200, "{kib} KiB head: {}", resp.text());
        assert_eq!(served_by(&resp), format!("backend-{port}"));
        let seen = resp.json()["request"]["headers"]["x-big"].as_str().map(str::len);
        assert_eq!(seen, Some(value.len()), "{kib} KiB head: the backend saw the whole X-Big");
    }
    // The same 32 KiB in many lines.
    let mut head = String::from("GET /many HTTP/1.1\r\nHost: test\r\n");
    let mut i = 0;
    while HEAD_LIMIT - head.len() > 1100 {
        head.push_str(&format!("X-Pad-{i:02}: {}\r\n", "p".repeat(1000)));
        i += 1;
    }
    head.push_str(&format!("X-Last: {}\r\n\r\n", "l".repeat(HEAD_LIMIT - head.len() - 12)));
    assert_eq!(head.len(), HEAD_LIMIT);
    conn.send(head.as_bytes());
    let resp = conn.response();
    assert_eq!(resp.status, 200);
    let headers = &resp.json()["request"]["headers"];
    assert_eq!((0..i).filter(|i| headers[format!("x-pad-{i:02}")].as_str().map(str::len) == Some(1000)).count(), i);
    assert!(headers["x-last"].is_string());
    assert_no_backend_failed(lb.local_addr());
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_forwarded_for_chain_as_long_as_the_head_limit_is_extended_and_forwarded() {
    // The one line the proxy makes longer: a trusted peer's chain (loopback is trusted by
    // default) gets ", <peer>" appended.
    let (_backend, port) = demo_backend(2 * HEAD_LIMIT);
    let lb = balancer(&[port], |_| {});
    let start = "GET / HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: ";
    let mut chain = String::new();
    let mut n = 0u32;
    while start.len() + chain.len() + 4 + 17 <= HEAD_LIMIT {
        if !chain.is_empty() {
            chain.push_str(", ");
        }
        chain.push_str(&format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255));
        n += 1;
    }
    let head = format!("{start}{chain}\r\n\r\n");
    assert!(head.len() > HEAD_LIMIT - 20 && head.len() <= HEAD_LIMIT, "{}", head.len());
    let mut conn = Conn::open(lb.local_addr());
    conn.send(head.as_bytes());
    let resp = conn.response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = resp.json()["request"]["headers"]["x-forwarded-for"].as_str().unwrap_or_default().to_string();
    assert_eq!(seen, format!("{chain}, 127.0.0.1"));
    assert_no_backend_failed(lb.local_addr());
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_head_over_the_front_ends_limit_gets_its_431_and_no_backend_hears_of_it() {
    let (_backend, port) = demo_backend(2 * HEAD_LIMIT);
    let lb = balancer(&[port], |_| {});
    let (head, _) = head_of(HEAD_LIMIT + 1);
    let mut conn = Conn::open(lb.local_addr());
    conn.send(&head);
    assert_eq!(conn.response().status, 431);
    let backends = api::backends(lb.local_addr());
    assert_eq!(backends[0]["total_requests"], 0);
    assert_no_backend_failed(lb.local_addr());
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_hundred_17_kib_heads_leave_every_breaker_closed_and_health_200() {
    let backends: Vec<_> = (0..3).map(|_| demo_backend(HEAD_LIMIT)).collect();
    let ports: Vec<u16> = backends.iter().map(|b| b.1).collect();
    let lb = balancer(&ports, |_| {});
    let (head, value) = head_of(17 * 1024 + 300);
    let mut conn = Conn::open(lb.local_addr());
    for i in 0..100 {
        conn.send(&head);
        let resp = conn.response();
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(resp.json()["request"]["headers"]["x-big"].as_str().map(str::len), Some(value.len()));
    }
    assert_no_backend_failed(lb.local_addr());
    let requests: Vec<Value> = api::backends(lb.local_addr()).iter().map(|b| b["total_requests"].clone()).collect();
    assert_eq!(requests, [json!(34), json!(33), json!(33)]);
    let health = Conn::open(lb.local_addr()).get("/lb/health");
    assert_eq!((health.status, &health.json()["usable_backends"]), (200, &json!(3)), "{}", health.text());
    lb.stop(Duration::from_secs(1));
}

#[test]
fn an_authorization_value_the_client_library_cannot_send_is_refused_before_any_backend() {
    // ureq refuses an Authorization value that is not visible ASCII; before, each such request
    // was a failed try of every backend in turn, and five of them opened every breaker.
    let backends: Vec<_> = (0..3).map(|_| demo_backend(HEAD_LIMIT)).collect();
    let ports: Vec<u16> = backends.iter().map(|b| b.1).collect();
    let lb = balancer(&ports, |_| {});
    let mut conn = Conn::open(lb.local_addr());
    for _ in 0..10 {
        conn.send("GET / HTTP/1.1\r\nHost: test\r\nAuthorization: Basic été\r\n\r\n".as_bytes());
        let resp = conn.response();
        assert_eq!((resp.status, resp.text().trim()), (400, "value of 'authorization' cannot be forwarded"));
    }
    let requests: Vec<Value> = api::backends(lb.local_addr()).iter().map(|b| b["total_requests"].clone()).collect();
    assert_eq!(requests, [json!(0), json!(0), json!(0)]);
    assert_no_backend_failed(lb.local_addr());
    conn.send(b"GET / HTTP/1.1\r\nHost: test\r\nAuthorization: Basic dTpw\r\n\r\n");
    let resp = conn.response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["request"]["headers"]["authorization"], "Basic dTpw");
    lb.stop(Duration::from_secs(1));
}

/// Sends the head and a first part of a streamed body, waits until the request is at the
/// backend, and goes away: closing, or resetting (`SO_LINGER` 0).
fn go_away_mid_body(lb: SocketAddr, chunked: bool, reset: bool) {
    let mut conn = Conn::open(lb);
    if chunked {
        conn.send(b"POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n");
        conn.send(format!("1000\r\n{}\r\n", "a".repeat(0x1000)).as_bytes());
    } else {
        conn.send(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n");
        conn.send("a".repeat(5000).as_bytes());
    }
    let at_backend = wait_until(Duration::from_secs(10), || api::backends(lb)[0]["awaiting_answer"] == 1);
    assert!(at_backend, "the request never reached the backend");
    let socket = conn.reader.get_ref().tcp();
    if reset {
        socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO)).unwrap();
    }
    drop(conn);
}

#[test]
fn a_client_that_goes_away_mid_body_is_not_a_backend_failure() {
    let (_backend, port) = demo_backend(HEAD_LIMIT);
    let lb = balancer(&[port], |c| c.listener.request_buffering = false);
    let cases = [(false, false), (false, true), (true, false), (true, true)];
    for (n, (chunked, reset)) in cases.into_iter().enumerate() {
        go_away_mid_body(lb.local_addr(), chunked, reset);
        let counted =
            wait_until(Duration::from_secs(10), || api::backends(lb.local_addr())[0]["client_aborts"] == n + 1);
        assert!(counted, "chunked {chunked}, reset {reset}: {:?}", api::backends(lb.local_addr()));
    }
    let b = &api::backends(lb.local_addr())[0];
    assert_eq!((&b["total_requests"], &b["client_aborts"]), (&json!(4), &json!(4)), "{b}");
    assert_no_backend_failed(lb.local_addr());
    // And the backend still gets the next upload.
    let mut conn = Conn::open(lb.local_addr());
    conn.send(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello");
    let resp = conn.response();
    assert_eq!((resp.status, &resp.json()["request"]["body_bytes"]), (200, &json!(5)));
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_client_that_goes_away_before_or_during_its_answer_is_not_a_backend_failure() {
    let (_backend, port) = demo_backend(HEAD_LIMIT);
    let lb = balancer(&[port], |_| {});
    for (i, reset) in [false, true].into_iter().enumerate() {
        // Gone while the backend works on it (the first one may still be at work).
        let mut conn = Conn::open(lb.local_addr());
        conn.send(b"POST /slow?delay_ms=2000 HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello");
        let sent =
            wait_until(Duration::from_secs(10), || api::backends(lb.local_addr())[0]["total_requests"] == 2 * i + 1);
        assert!(sent, "reset {reset}: {:?}", api::backends(lb.local_addr()));
        if reset {
            socket2::SockRef::from(conn.reader.get_ref().tcp()).set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(conn);
        // Gone in the middle of a 20 MB answer.
        let mut conn = Conn::open(lb.local_addr());
        conn.send(b"GET /big?bytes=20000000 HTTP/1.1\r\nHost: test\r\n\r\n");
        let mut some = [0u8; 4096];
        std::io::Read::read_exact(&mut conn.reader, &mut some).unwrap();
        if reset {
            socket2::SockRef::from(conn.reader.get_ref().tcp()).set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(conn);
    }
    // Each answer was counted as one (its head came), and nothing else.
    let answered = wait_until(Duration::from_secs(10), || api::backends(lb.local_addr())[0]["responses"]["2xx"] == 4);
    let ended = wait_until(Duration::from_secs(10), || api::backends(lb.local_addr())[0]["active_connections"] == 0);
    assert!(answered && ended, "{:?}", api::backends(lb.local_addr()));
    assert_no_backend_failed(lb.local_addr());
    lb.stop(Duration::from_secs(1));
}
