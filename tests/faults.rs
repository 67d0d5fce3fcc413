//! Fault injection against real processes: an `lb-sync` child in front of misbehaving backends
//! (see `common::faults`) and real `lb-backend` processes killed and restarted. What a client
//! sees in each case, and that other clients are not affected.

mod common;

use std::time::{Duration, Instant};

use common::faults::{Fault, FaultyBackend};
use common::lb::Lb;
use common::load::Load;
use common::{api, Conn};

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
    let retries = api::stats(lb.addr)["retries"].clone();
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

#[test]
fn a_silent_backend_gets_504_at_the_timeout_and_other_clients_are_served_meanwhile() {
    let silent = FaultyBackend::start(Fault::Silent);
    let fine = FaultyBackend::start(Fault::Fine);
    // At most 5 requests at once to one backend: the silent one cannot take every worker.
    let lb = Lb::start(
        &[silent.addr, fine.addr],
        r#""request_timeout": 2, "threads": 16, "backend_max_connections": 5, "breaker_consecutive_failures": 1000"#,
    );
    let addr = lb.addr;
    // Round robin: of 10 requests at once, 5 reach the silent backend and hang there.
    let stuck: Vec<_> = (0..10)
        .map(|i| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let status = Conn::open(addr).get(&format!("/stuck{i}")).status;
                (status, started.elapsed())
            })
        })
        .collect();
    assert!(
        common::wait_until(Duration::from_secs(5), || silent.hits() == 5),
        "{} on the silent backend",
        silent.hits()
    );
    // Meanwhile another client is served at once, every time: the silent backend is at its
    // cap, so every pick passes it over.
    let mut conn = Conn::open(addr);
    for _ in 0..50 {
        let started = Instant::now();
        assert_eq!(conn.get("/other").status, 200);
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    }
    assert_eq!(silent.hits(), 5, "the silent backend got nothing more");
    let mut statuses: Vec<u16> = Vec::new();
    for request in stuck {
        let (status, took) = request.join().unwrap();
        if status == 504 {
            assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(5), "504 after {took:?}");
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 504, 504, 504, 504, 504]);
    assert_eq!(api::stats(lb.addr)["retries"]["failed_tries"]["timeout"], 5);
}

#[test]
fn a_backend_that_closes_mid_body_gives_a_truncated_transfer_and_its_breaker_counts_it() {
    let broken = FaultyBackend::start(Fault::CloseMidBody);
    let lb = Lb::start(&[broken.addr], "");
    let mut conn = Conn::open(lb.addr);
    conn.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    // The head came through with the backend's length; the body stops short and the connection
    // is reset: no client can take it for a complete response.
    let result = common::read_response(&mut conn.reader, false);
    let error = result.expect_err("a truncated body must not read as a response");
    assert!(
        matches!(error.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset),
        "{error:?}"
    );
    let backends = Conn::open(lb.addr).get("/lb/backends").json();
    assert_eq!(backends[0]["circuit_breaker"]["failure_count"], 1, "{backends}");
    assert_eq!(backends[0]["failed_requests"], 1, "{backends}");
    assert!(lb.wait_log("response body cut short", Duration::from_secs(5)), "{}", lb.log());
    // Read as raw bytes: the head says 1000, and 100 came.
    let mut raw = Conn::open(lb.addr);
    raw.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    let bytes = raw.rest();
    let text = String::from_utf8_lossy(&bytes);
    let body_start = text.find("\r\n\r\n").expect("a head") + 4;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("Content-Length: 1000\r\n"), "{text}");
    assert_eq!(bytes.len() - body_start, 100);
}

#[test]
fn a_backend_that_answers_garbage_gets_502_and_a_get_goes_to_the_next() {
    let garbage = FaultyBackend::start(Fault::Garbage);
    let lb = Lb::start(&[garbage.addr], "");
    let resp = Conn::open(lb.addr).get("/");
    assert_eq!((resp.status, resp.text().as_str()), (502, "backend failed\n"));
    assert_eq!(api::stats(lb.addr)["retries"]["failed_tries"]["bad_response"], 1);
    drop(lb);
    let fine = FaultyBackend::start(Fault::Fine);
    let lb = Lb::start(&[garbage.addr, fine.addr], "");
    let mut conn = Conn::open(lb.addr);
    assert_eq!(conn.get("/").status, 200, "garbage from the first, the GET answered by the second");
    assert_eq!((garbage.hits(), fine.hits()), (2, 1));
    // Two POSTs, round robin: the one that reaches the garbage backend is not resent.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let (garbage_before, fine_before) = (garbage.hits(), fine.hits());
        let mut conn = Conn::open(lb.addr);
        conn.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
        let status = conn.response().status;
        let went = (garbage.hits() - garbage_before, fine.hits() - fine_before);
        assert_eq!(went, if status == 502 { (1, 0) } else { (0, 1) }, "status {status}");
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 502]);
}

#[test]
fn a_backend_that_answers_byte_by_byte_is_relayed_whole_while_others_are_served() {
    let slow = FaultyBackend::start(Fault::Trickle { delay_ms: 40 });
    let fine = FaultyBackend::start(Fault::Fine);
    let lb = Lb::start(&[slow.addr, fine.addr], r#""request_timeout": 3"#);
    let addr = lb.addr;
    // About 55 bytes of head and body, one every 40 ms: 2.2 s in all (the head in 1.5 s, within
    // the request timeout; the body never 3 s without a byte).
    let trickled = std::thread::spawn(move || {
        let started = Instant::now();
        let resp = Conn::open(addr).get("/trickle");
        (resp.status, resp.body, started.elapsed())
    });
    assert!(common::wait_until(Duration::from_secs(5), || slow.hits() == 1));
    let mut conn = Conn::open(addr);
    let mut quick = 0;
    while !trickled.is_finished() {
        let started = Instant::now();
        let resp = conn.get("/other");
        if resp.status == 200 && started.elapsed() < Duration::from_millis(500) {
            quick += 1;
        }
        assert_eq!(resp.status, 200);
        // Every other pick is the trickling backend; those take seconds.
    }
    let (status, body, took) = trickled.join().unwrap();
    assert_eq!((status, body.as_slice()), (200, common::faults::TRICKLE_BODY));
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(quick >= 1, "no other request was served while one trickled");
}

#[test]
fn a_backend_flapping_every_second_under_load_fails_no_get() {
    let stable: Vec<common::ChildProcess> = (0..2).map(|_| common::backend(&["--threads", "32"])).collect();
    let flapping = common::backend(&["--threads", "32"]);
    let flap_addr = flapping.addr();
    let mut addrs: Vec<std::net::SocketAddr> = stable.iter().map(|b| b.addr()).collect();
    addrs.push(flap_addr);
    let lb = Lb::start(
        &addrs,
        r#""health_check_interval": 0.5, "health_check_timeout": 0.3, "health_check_fall": 2, "health_check_rise": 1"#,
    );
    let load = Load::start(lb.addr, 16, "/", &[200]);
    assert!(common::wait_until(Duration::from_secs(10), || load.ok() >= 500));
    let mut flapping = Some(flapping);
    let mut restarts = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(1000));
        match flapping.take() {
            Some(child) => drop(child), // killed (SIGKILL) and reaped
            None => {
                let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lb-backend"));
                command.args(["--port", &flap_addr.port().to_string(), "--threads", "32"]);
                flapping = Some(common::ChildProcess::start(command));
                restarts += 1;
            }
        }
    }
    let report = load.stop();
    let requests =
        Conn::open(lb.addr).get(&format!("/lb/backends/p{}", flap_addr.port())).json()["total_requests"].clone();
    eprintln!("one of three backends killed and restarted every second for 8 s ({restarts} restarts): {report:?}; it got {requests} request(s)");
    assert_eq!(report.lost(), 0, "failed GETs: {report:?}");
    assert!(report.ok > 1000);
    assert!(restarts >= 3);
}
