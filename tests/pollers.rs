//! Several pollers (issue 27): each binds its own listening socket on the one address
//! (`SO_REUSEPORT`), owns the connections it accepted, and gets them back from the one worker
//! pool; the connection cap, the stop and the settings stay global. Real lb-sync and lb-backend
//! processes, and in-process servers where a test needs to see the pollers from inside.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::lb::{lb_sync, Lb};
use common::{backend, wait_until, Conn};
use lb_sync::server::{Handler, Limits, PollerGauges, Request, Response, Server, ServerConfig};

/// Each poller's entry in `/lb/stats`.
fn pollers(addr: SocketAddr) -> Vec<serde_json::Value> {
    let stats = Conn::open(addr).get("/lb/stats").json();
    stats["pollers"].as_array().unwrap_or_else(|| panic!("no pollers in {stats}")).clone()
}

fn sum(pollers: &[serde_json::Value], field: &str) -> u64 {
    pollers.iter().map(|p| p[field].as_u64().unwrap()).sum()
}

/// An in-process server's settings on an ephemeral loopback port with `threads` workers and
/// `pollers` pollers, and the gauges that read its pollers' counters.
fn in_process(threads: usize, pollers: usize) -> (ServerConfig, PollerGauges) {
    let gauges = PollerGauges::default();
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        threads,
        pollers,
        poller_gauges: gauges.clone(),
        ..ServerConfig::default()
    };
    (config, gauges)
}

#[test]
fn new_connections_are_spread_over_every_poller_and_each_serves_some() {
    let origin = backend(&[]);
    let lb = Lb::start(&[origin.addr()], r#""pollers": 4"#);
    for i in 0..200 {
        let mut conn = Conn::open(lb.addr);
        let resp = conn.get(&format!("/spread/{i}"));
        assert_eq!(resp.status, 200);
        assert!(resp.text().contains(&format!("\"path\":\"/spread/{i}\"")), "{}", resp.text());
    }
    let each = pollers(lb.addr);
    assert_eq!(each.len(), 4, "{each:?}");
    // The 200 connections and the one asking for the stats.
    assert_eq!(sum(&each, "accepted"), 201, "{each:?}");
    assert_eq!(sum(&each, "requests"), 201, "{each:?}");
    for (i, poller) in each.iter().enumerate() {
        assert!(poller["accepted"].as_u64().unwrap() > 0, "poller {i} accepted none of 200: {each:?}");
        assert!(poller["requests"].as_u64().unwrap() > 0, "poller {i} served none: {each:?}");
    }
}

#[test]
fn a_kept_alive_connection_always_comes_back_to_its_own_poller_while_the_others_are_busy() {
    let origin = backend(&[]);
    let lb = Lb::start(&[origin.addr()], r#""pollers": 4"#);
    // Busy neighbours: keep-alive connections on every poller, each checking its own answers.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let neighbours: Vec<_> = (0..8)
        .map(|n| {
            let (addr, stop) = (lb.addr, Arc::clone(&stop));
            thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let mut served = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && served < 20_000 {
                    let resp = conn.get(&format!("/n{n}/{served}"));
                    assert_eq!(resp.status, 200);
                    assert!(
                        resp.text().contains(&format!("\"path\":\"/n{n}/{served}\"")),
                        "neighbour {n} got another's answer"
                    );
                    served += 1;
                }
                served
            })
        })
        .collect();
    let mut conn = Conn::open(lb.addr);
    for i in 0..1000 {
        let resp = conn.get(&format!("/mine/{i}"));
        assert_eq!(resp.status, 200, "request {i}");
        assert!(
            resp.text().contains(&format!("\"path\":\"/mine/{i}\"")),
            "request {i} got another's answer: {}",
            resp.text()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let theirs: u64 = neighbours.into_iter().map(|t| t.join().expect("a neighbour failed")).sum();
    let each = pollers(lb.addr);
    assert_eq!(sum(&each, "requests"), 1000 + theirs + 1, "every request counted by the poller that read it: {each:?}");
    assert!(!conn.is_closed(), "the connection is still open after 1,000 requests");
}

#[test]
fn at_the_cap_the_connection_idle_longest_makes_room_whichever_poller_holds_it() {
    // Enough connections that the poller holding connection 0 holds others too: it learns that
    // connection 0 went idle when it next wakes (a kept-alive return does not wake it).
    const CAP: usize = 24;
    let origin = backend(&[]);
    let lb = Lb::start(&[origin.addr()], &format!(r#""pollers": 4, "max_connections": {CAP}"#));
    let mut held: Vec<Conn> = (0..CAP).map(|_| Conn::open(lb.addr)).collect();
    for (i, conn) in held.iter_mut().enumerate() {
        assert_eq!(conn.get(&format!("/held/{i}")).status, 200);
    }
    // Connection 0 has been idle longest; the others answered after it. Each poller publishes
    // its oldest idle connection at the end of a turn: wait until they have all had one.
    assert!(wait_until(Duration::from_secs(5), || {
        let open: u64 = held.iter_mut().skip(1).map(|c| u64::from(c.get("/again").status == 200)).sum();
        open == CAP as u64 - 1
    }));
    let mut newcomer = Conn::open(lb.addr);
    assert_eq!(newcomer.get("/new").status, 200, "a new client is served while idle connections exist");
    let mut oldest = held.remove(0);
    assert!(oldest.is_closed(), "the connection idle longest was closed, whichever poller held it");
    for (i, conn) in held.iter_mut().enumerate() {
        assert_eq!(conn.get("/still").status, 200, "held connection {} still works", i + 1);
    }
    // Every connection busy: each has begun its next request head. One more gets 503.
    held.push(newcomer);
    for conn in &mut held {
        conn.send(b"GET /next HTTP/1.1\r\nHost: t\r\n");
    }
    let mut refused = Conn::open(lb.addr);
    assert_eq!(refused.response().status, 503, "the cap counts every poller's connections");
    for (i, conn) in held.iter_mut().enumerate() {
        conn.send(b"\r\n");
        assert_eq!(conn.response().status, 200, "busy connection {i} was not closed for the refused one");
    }
}

/// Answers after a pause, so that requests are in flight when the stop comes.
struct Slow;

impl Handler for Slow {
    fn handle(&self, request: Request) -> Response {
        thread::sleep(Duration::from_millis(400));
        Response::text(200, request.path().to_string())
    }
}

#[test]
fn a_stop_with_several_pollers_drains_every_one() {
    let (config, gauges) = in_process(64, 4);
    let server = Server::start(config, Slow).unwrap();
    let addr = server.local_addr();
    // Requests in flight on every poller (the kernel picks the poller: open until each has some).
    let mut in_flight = Vec::new();
    while gauges.read().iter().any(|p| p.connections == 0) {
        assert!(in_flight.len() < 200, "200 connections and still a poller without one: {:?}", gauges.read());
        let mut conn = Conn::open(addr);
        conn.send(format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", in_flight.len()).as_bytes());
        in_flight.push(conn);
        let opened = in_flight.len();
        assert!(wait_until(Duration::from_secs(5), || gauges.read().iter().map(|p| p.requests).sum::<u64>()
            == opened as u64));
    }
    let stopper = thread::spawn(move || server.stop(Duration::from_secs(10)));
    for (i, conn) in in_flight.iter_mut().enumerate() {
        let resp = conn.response();
        assert_eq!((resp.status, resp.text()), (200, format!("/{i}\n")), "request {i} finished in the grace period");
        assert_eq!(resp.header("connection"), Some("close"));
    }
    assert_eq!(stopper.join().unwrap(), 0, "every thread ended");
    assert!(std::net::TcpStream::connect(addr).is_err(), "no poller listens after the stop");
}

#[test]
fn pollers_come_from_the_file_or_the_flag_are_checked_and_change_by_restart_only() {
    let origin = backend(&[]);
    let lb = Lb::start_with_args(&[origin.addr()], r#""pollers": 3"#, &[]);
    assert_eq!(pollers(lb.addr).len(), 3);
    assert_eq!(Conn::open(lb.addr).get("/lb/config").json()["pollers"], 3);
    // A reload keeps the running value and says so.
    let text = std::fs::read_to_string(lb.config_path()).unwrap();
    std::fs::write(lb.config_path(), text.replace(r#""pollers": 3"#, r#""pollers": 5"#)).unwrap();
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /lb/config/reload HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    let resp = conn.response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["changes"], "kept until a restart: pollers");
    assert_eq!(pollers(lb.addr).len(), 3);
    drop(lb);

    let flagged = Lb::start_with_args(&[origin.addr()], r#""pollers": 3"#, &["--pollers", "2"]);
    assert_eq!(pollers(flagged.addr).len(), 2, "the flag wins over the file");
    drop(flagged);

    let out = lb_sync(&["--pollers", "0", "--backend", "127.0.0.1:9", "--check-config"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pollers must be 1-64, got 0"), "{out:?}");
    let dir = common::unique_dir("pollers");
    let file = dir.join("config.json");
    std::fs::write(&file, common::lb::config_json(&[origin.addr()], r#""pollers": 65"#)).unwrap();
    let out = lb_sync(&["--config", file.to_str().unwrap(), "--check-config"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pollers must be 1-64, got 65"), "{out:?}");
}

/// Answers at once with the path.
struct Echo;

impl Handler for Echo {
    fn handle(&self, request: Request) -> Response {
        Response::text(200, request.path().to_string())
    }
}

#[test]
fn a_closing_answer_with_nothing_unread_closes_the_connection_at_once_as_nginx_does() {
    let (config, gauges) = in_process(2, 2);
    let server = Server::start(config, Echo).unwrap();
    let mut conn = Conn::open(server.local_addr());
    conn.send(b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let resp = conn.response();
    assert_eq!((resp.status, resp.text()), (200, "/last\n".to_string()));
    assert!(conn.is_closed(), "the server closed after its answer");
    // The client has not closed its side: a lingering server would hold the connection until it
    // did (or linger_timeout passed); with nothing unread there is nothing to linger for.
    assert!(
        wait_until(Duration::from_secs(1), || gauges.read().iter().all(|p| p.connections == 0)),
        "still open on the server: {:?}",
        gauges.read()
    );
    server.stop(Duration::from_secs(1));
}

/// Opens connections to `server` until `wanted[i]` of them stay on poller `i` (the kernel
/// picks: the others are closed again); in the order they were kept, with their pollers.
fn connections_on(server: &Server, gauges: &PollerGauges, wanted: [usize; 2]) -> Vec<(usize, Conn)> {
    let open_on = |i: usize| gauges.read()[i].connections;
    let mut kept = Vec::new();
    let mut missing = wanted;
    for _ in 0..200 {
        if missing == [0, 0] {
            return kept;
        }
        let before = [open_on(0), open_on(1)];
        let conn = Conn::open(server.local_addr());
        assert!(wait_until(Duration::from_secs(5), || open_on(0) + open_on(1) == before[0] + before[1] + 1));
        let on = usize::from(open_on(1) > before[1]);
        if missing[on] > 0 {
            missing[on] -= 1;
            kept.push((on, conn));
        } else {
            drop(conn);
            assert!(wait_until(Duration::from_secs(5), || open_on(on) == before[on]));
        }
    }
    panic!("{wanted:?} connections on the two pollers in 200 tries: {:?}", gauges.read());
}

/// Answers with the path, after a pause for paths under `/pause/`.
struct PausedEcho;

impl Handler for PausedEcho {
    fn handle(&self, request: Request) -> Response {
        if request.path().starts_with("/pause/") {
            thread::sleep(Duration::from_millis(30));
        }
        Response::text(200, request.path().to_string())
    }
}

#[test]
fn at_the_cap_a_connection_given_back_quietly_is_the_oldest_idle_for_every_poller() {
    // Poller 0 holds A, poller 1 holds B and X. A answers first, then B, then X: A has been idle
    // longest. Poller 0 has not woken since A's answer (a kept-alive connection goes back
    // without waking it; the pauses let a poller's own wake-up while a job waits for a worker
    // pass first), and poller 1 still lists X with its old mark from the accept, though X went
    // busy since. Wherever the newcomer lands, A must make room: that needs the worker's
    // lowering of poller 0's published time (newcomer on poller 1) and poller 1 publishing only
    // connections still idle (newcomer on poller 0). The kernel picks where the newcomer lands:
    // rounds go on until each poller has taken it at least twice.
    let mut landed = [0; 2];
    for round in 0..40 {
        if landed.iter().all(|&n| n >= 2) {
            break;
        }
        let (mut config, gauges) = in_process(2, 2);
        config.limits = Limits { max_connections: 3, ..Limits::default() };
        let server = Server::start(config, PausedEcho).unwrap();
        let kept = connections_on(&server, &gauges, [1, 2]);
        let [(_, mut a), (_, mut b), (_, mut x)]: [(usize, Conn); 3] = {
            let mut by_poller = kept;
            by_poller.sort_by_key(|(on, _)| *on);
            by_poller.try_into().unwrap_or_else(|_| unreachable!())
        };
        for (name, conn) in [("pause/A", &mut a), ("B", &mut b), ("pause/X", &mut x)] {
            let resp = conn.get(&format!("/{name}"));
            assert_eq!((resp.status, resp.text()), (200, format!("/{name}\n")), "round {round}");
        }
        let accepted = |i: usize| gauges.read()[i].accepted;
        let before = [accepted(0), accepted(1)];
        let mut newcomer = Conn::open(server.local_addr());
        let resp = newcomer.get("/new");
        assert_eq!((resp.status, resp.text()), (200, "/new\n".to_string()), "round {round}");
        let on = usize::from(accepted(1) > before[1]);
        landed[on] += 1;
        assert!(a.is_closed(), "round {round}, newcomer on poller {on}: A, idle longest, was not closed");
        for (name, conn) in [("B", &mut b), ("X", &mut x)] {
            let resp = conn.get("/again");
            assert_eq!(resp.status, 200, "round {round}, newcomer on poller {on}: {name} was closed instead of A");
        }
        drop((a, b, x, newcomer));
        assert_eq!(server.stop(Duration::from_secs(5)), 0);
    }
    assert!(
        landed.iter().all(|&n| n >= 2),
        "the newcomer landed on each poller at least twice in 40 rounds: {landed:?}"
    );
}

#[test]
fn a_poller_that_ends_its_stop_early_leaves_the_others_queued_requests_to_be_served() {
    let (config, gauges) = in_process(1, 2);
    let server = Server::start(config, Slow).unwrap();
    let addr = server.local_addr();
    let open_on = |i: usize| gauges.read()[i].connections;
    // Two idle connections on poller 1 and none on poller 0 (the kernel picks: keep what
    // lands on poller 1, close what lands on poller 0).
    let mut kept = Vec::new();
    for _ in 0..200 {
        if kept.len() == 2 {
            break;
        }
        let (before0, before1) = (open_on(0), open_on(1));
        let conn = Conn::open(addr);
        assert!(wait_until(Duration::from_secs(5), || open_on(0) + open_on(1) == before0 + before1 + 1));
        if open_on(1) > before1 {
            kept.push(conn);
        } else {
            drop(conn);
            assert!(wait_until(Duration::from_secs(5), || open_on(0) == before0));
        }
    }
    assert_eq!(kept.len(), 2, "two connections on poller 1 in 200 tries: {:?}", gauges.read());
    // The one worker serves the first; the second waits in the queue when the stop comes.
    for (i, conn) in kept.iter_mut().enumerate() {
        conn.send(format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    assert!(wait_until(Duration::from_secs(5), || gauges.read()[1].requests == 2));
    // Poller 0 has nothing to drain and ends at once; poller 1's queued request is still served.
    let stopper = thread::spawn(move || server.stop(Duration::from_secs(10)));
    for (i, conn) in kept.iter_mut().enumerate() {
        let resp = conn.response();
        assert_eq!((resp.status, resp.text()), (200, format!("/{i}\n")), "request {i} served within the grace period");
    }
    assert_eq!(stopper.join().unwrap(), 0);
}

#[test]
fn a_second_lb_sync_on_the_port_is_refused_though_the_first_listens_with_so_reuseport() {
    let origin = backend(&[]);
    let first = Lb::start(&[origin.addr()], r#""pollers": 2"#);
    let port = first.addr.port().to_string();
    let dir = common::unique_dir("second");
    let stderr = dir.join("stderr.log");
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_lb-sync"))
        .args(["--host", "127.0.0.1", "--port", &port, "--backend", "127.0.0.1:9"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = second.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = second.kill();
        let _ = second.wait();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(1), "the second lb-sync started on the first one's port");
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert!(said.contains(&format!("cannot listen on 127.0.0.1:{port}: address already in use")), "{said}");
    // The first one still has the port to itself.
    assert_eq!(pollers(first.addr).iter().map(|p| p["accepted"].as_u64().unwrap()).sum::<u64>(), 1);
}
