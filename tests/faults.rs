//! Fault injection against real processes: an `lb-sync` child in front of misbehaving backends
//! (see `common::faults`) and real `lb-backend` processes killed and restarted. What a client
//! sees in each case, and that other clients are not affected.

mod common;

use std::time::{Duration, Instant};

use common::faults::{Fault, FaultyBackend};
use common::lb::Lb;
use common::Conn;

fn stats(lb: &Lb) -> serde_json::Value {
    Conn::open(lb.addr).get("/lb/stats").json()
}

#[test]
fn a_response_timeout_is_not_retried_on_the_next_backend() {
    // Round robin over two: the first pick is the silent one.
    let silent = FaultyBackend::start(Fault::Silent);
    let fine = FaultyBackend::start(Fault::Fine);
    let lb = Lb::start(&[silent.addr, fine.addr], r#""request_timeout": 0.5, "max_tries": 3"#);
    let mut conn = Conn::open(lb.addr);
    let started = Instant::now();
    let resp = conn.get("/slow");
    let took = started.elapsed();
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!((silent.hits(), fine.hits()), (1, 0), "the timed-out GET went to no other backend");
    let retries = stats(&lb)["retries"].clone();
    assert_eq!((retries["tries"].as_u64(), retries["retries"].as_u64()), (Some(1), Some(0)));
    assert_eq!(retries["failed_tries"]["timeout"], 1);
    // The next request goes to the other backend (round robin), as usual.
    assert_eq!(conn.get("/next").status, 200);
    assert_eq!(fine.hits(), 1);
}

#[test]
fn a_reset_before_the_answer_is_retried_for_a_get_but_not_a_post() {
    let reset = FaultyBackend::start(Fault::Reset);
    let fine = FaultyBackend::start(Fault::Fine);
    let lb = Lb::start(&[reset.addr, fine.addr], r#""max_tries": 2, "breaker_consecutive_failures": 1000"#);
    let mut conn = Conn::open(lb.addr);
    assert_eq!(conn.get("/").status, 200, "GET: reset by the first, answered by the second");
    assert_eq!((reset.hits(), fine.hits()), (1, 1));
    // Round robin: this POST goes to the resetting backend first, and is not resent.
    conn.send(b"POST /order HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(conn.response().status, 502);
    assert_eq!((reset.hits(), fine.hits()), (2, 1), "a POST that reached a backend is never resent");
}
