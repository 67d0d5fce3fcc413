//! Fairness between clients (`client_max_workers`, `client_max_in_flight`), in this process: a
//! balancer on loopback in front of a backend that counts the requests it has at once. Clients
//! are told apart by their address: 127.0.0.1 and 127.0.0.2 (a client socket bound before it
//! connects; loopback is all of 127.0.0.0/8).
//!
//! One client flooding slow requests gets its share of the workers and no more, all its
//! requests answered in turn, while another client's requests are answered at once all along;
//! past the queue capacity only its surplus gets `503`; the hard limit answers `429` +
//! `Retry-After` and counts an open tunnel; one heavy client
//! with a fast backend gets every answer; held uploads stream when their turn comes; a held
//! request goes as soon as its client is answered; a stop serves held requests within its grace
//! period.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lb_sync::balancer::LoadBalancer;
use lb_sync::config::{BackendConfig, Config};
use lb_sync::server::{bind, Handler, Request, Response, Server, ServerConfig};
use socket2::{Domain, Socket, Type};

use common::{inproc, read_response, wait_until, Conn, Resp};

/// How many requests the backend has, had at most, began and finished: `/slow` ones only.
#[derive(Default)]
struct Counts {
    now: AtomicUsize,
    max: AtomicUsize,
    started: AtomicUsize,
    done: AtomicUsize,
}

impl Counts {
    fn get(&self) -> (usize, usize, usize, usize) {
        let read = |n: &AtomicUsize| n.load(Ordering::SeqCst);
        (read(&self.now), read(&self.max), read(&self.started), read(&self.done))
    }
}

/// A backend: `/slow` reads the body, takes `delay`, and answers the body's length; anything
/// else answers `fast` at once.
struct CountingBackend {
    counts: Arc<Counts>,
    delay: Duration,
}

impl Handler for CountingBackend {
    fn handle(&self, request: Request) -> Response {
        if request.path() != "/slow" {
            return Response::text(200, "fast");
        }
        let counts = &self.counts;
        let now = counts.now.fetch_add(1, Ordering::SeqCst) + 1;
        counts.max.fetch_max(now, Ordering::SeqCst);
        counts.started.fetch_add(1, Ordering::SeqCst);
        let mut body = Vec::new();
        let read = request.into_body().read_to_end(&mut body);
        std::thread::sleep(self.delay);
        counts.now.fetch_sub(1, Ordering::SeqCst);
        counts.done.fetch_add(1, Ordering::SeqCst);
        match read {
            Ok(n) => Response::text(200, n.to_string()),
            Err(e) => Response::text(400, e.to_string()),
        }
    }
}

/// A counting backend with plenty of workers (more than the balancer's), and its counts.
fn counting_backend(delay: Duration) -> (Server, SocketAddr, Arc<Counts>) {
    let listener = bind("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let handler = CountingBackend { counts: Arc::clone(&counts), delay };
    let server = Server::start_on(listener, ServerConfig { threads: 64, ..ServerConfig::default() }, handler).unwrap();
    (server, addr, counts)
}

/// A balancer with `threads` workers in front of `backend`, `settings` applied.
fn balancer(backend: SocketAddr, threads: usize, settings: impl FnOnce(&mut Config)) -> LoadBalancer {
    let mut config = {
        let mut adjusted = inproc::config(vec![BackendConfig::new("127.0.0.1", backend.port(), 1)]);
        adjusted.listener.threads = threads;
        adjusted.health.interval = None;
        adjusted
    };
    settings(&mut config);
    LoadBalancer::start(config).unwrap()
}

/// A connection to `addr` from the loopback address `from` (127.0.0.x).
fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(from.parse().unwrap(), 0).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn get_from(from: &str, addr: SocketAddr, path: &str) -> Resp {
    Conn::over(connect_from(from, addr), None).get(path)
}

/// `n` clients from `from`, each on a connection of its own sending one `GET /slow`; their
/// statuses.
fn flood(from: &'static str, addr: SocketAddr, n: usize) -> Vec<JoinHandle<u16>> {
    (0..n).map(|_| std::thread::spawn(move || get_from(from, addr, "/slow").status)).collect()
}

#[test]
fn one_client_flooding_slow_requests_gets_its_share_and_another_client_is_served_at_once() {
    // 8 workers, so a share of 4; 12 slow requests from one client run 4 at a time, in three
    // rounds of 2 s. Without a share they would take all 8 workers and the probe would wait.
    let (_backend, backend_addr, counts) = counting_backend(Duration::from_secs(2));
    let lb = balancer(backend_addr, 8, |_| {});
    let addr = lb.local_addr();
    let flood = flood("127.0.0.1", addr, 12);
    for round in 0..3 {
        assert!(
            wait_until(Duration::from_secs(20), || {
                let (now, _, started, done) = counts.get();
                now == 4 && started == 4 * (round + 1) && done == 4 * round
            }),
            "round {round}: {:?}",
            counts.get()
        );
        // Another client, twice in the round: answered while the round runs, before any of the
        // flood's held requests could have gone to a worker.
        for _ in 0..2 {
            let probe = get_from("127.0.0.2", addr, "/fast");
            assert_eq!((probe.status, probe.text().trim()), (200, "fast"));
            let (now, _, started, done) = counts.get();
            assert_eq!((now, started, done), (4, 4 * (round + 1), 4 * round), "round {round}: the probe waited");
        }
    }
    let statuses: Vec<u16> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(statuses, vec![200; 12], "every request of the flood is answered, none refused");
    assert_eq!(counts.get(), (0, 4, 12, 12), "at most its share at once");
    lb.stop(Duration::from_secs(5));
}

#[test]
fn the_hard_limit_answers_429_with_retry_after_and_counts_only_that_client() {
    let (_backend, backend_addr, counts) = counting_backend(Duration::from_millis(1500));
    let lb = balancer(backend_addr, 8, |config| config.client_limits.client_max_in_flight = 2);
    let addr = lb.local_addr();
    let flood = flood("127.0.0.1", addr, 2);
    assert!(wait_until(Duration::from_secs(10), || counts.get().0 == 2), "{:?}", counts.get());
    let mut third = Conn::over(connect_from("127.0.0.1", addr), None);
    let refused = third.get("/fast");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("connection"), Some("close"));
    assert!(third.is_closed());
    assert_eq!(get_from("127.0.0.2", addr, "/fast").status, 200, "another client is not limited");
    assert_eq!(flood.into_iter().map(|t| t.join().unwrap()).collect::<Vec<_>>(), [200, 200]);
    assert_eq!(get_from("127.0.0.1", addr, "/fast").status, 200, "under its limit again");
    let stats = common::api::stats(addr);
    assert_eq!(stats["answered_by_balancer"]["4xx"], 1, "the 429, counted: {stats}");
    lb.stop(Duration::from_secs(5));
}

#[test]
fn past_the_queue_capacity_only_the_heavy_clients_surplus_is_refused() {
    // 4 workers, a share of 2, a queue of 4: requests queued and held together are at most 4
    // for a client at its share; past that its requests get 503, another client's do not.
    let (_backend, backend_addr, counts) = counting_backend(Duration::from_millis(1500));
    let lb = balancer(backend_addr, 4, |config| config.listener.queue_capacity = 4);
    let addr = lb.local_addr();
    let first = flood("127.0.0.1", addr, 2);
    assert!(wait_until(Duration::from_secs(10), || counts.get().0 == 2), "{:?}", counts.get());
    let surplus: Vec<JoinHandle<Resp>> =
        (0..8).map(|_| std::thread::spawn(move || get_from("127.0.0.1", addr, "/slow"))).collect();
    assert!(wait_until(Duration::from_secs(10), || surplus.iter().filter(|t| t.is_finished()).count() == 4));
    assert_eq!(get_from("127.0.0.2", addr, "/fast").status, 200, "another client is not refused");
    let mut statuses: Vec<u16> = first.into_iter().map(|t| t.join().unwrap()).collect();
    for resp in surplus.into_iter().map(|t| t.join().unwrap()) {
        if resp.status == 503 {
            assert_eq!(resp.header("retry-after"), Some("1"), "{resp:?}");
        }
        statuses.push(resp.status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 503, 503, 503, 503]);
    assert_eq!(counts.get(), (0, 2, 6, 6));
    lb.stop(Duration::from_secs(5));
}

#[test]
fn a_tunnel_counts_against_the_hard_limit_until_it_closes() {
    let (_backend, port) = inproc::demo_backend();
    let lb =
        balancer(SocketAddr::from(([127, 0, 0, 1], port)), 8, |config| config.client_limits.client_max_in_flight = 1);
    let addr = lb.local_addr();
    let tunnel = connect_from("127.0.0.1", addr);
    let handshake = "GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    (&tunnel).write_all(handshake.as_bytes()).unwrap();
    let mut reader = std::io::BufReader::new(&tunnel);
    assert_eq!(read_response(&mut reader, false).unwrap().status, 101);
    assert_eq!(get_from("127.0.0.1", addr, "/").status, 429, "the open tunnel is the client's one request");
    assert_eq!(get_from("127.0.0.2", addr, "/").status, 200);
    tunnel.shutdown(std::net::Shutdown::Both).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || get_from("127.0.0.1", addr, "/").status == 200),
        "the closed tunnel still counts"
    );
    lb.stop(Duration::from_secs(5));
}

#[test]
fn one_heavy_client_with_a_fast_backend_gets_every_answer_within_its_share() {
    // 4 workers, a share of 2, and 16 keep-alive connections from one client.
    let (_backend, backend_addr, counts) = counting_backend(Duration::ZERO);
    let lb = balancer(backend_addr, 4, |_| {});
    let addr = lb.local_addr();
    let clients: Vec<JoinHandle<usize>> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                let mut conn = Conn::over(connect_from("127.0.0.1", addr), None);
                (0..100).filter(|_| conn.get("/slow").status == 200).count()
            })
        })
        .collect();
    let answered: usize = clients.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(answered, 1600);
    let (now, max, started, done) = counts.get();
    assert_eq!((now, started, done), (0, 1600, 1600));
    assert!((1..=2).contains(&max), "at most the share at once, got {max}");
    lb.stop(Duration::from_secs(5));
}

#[test]
fn held_uploads_stream_when_their_turn_comes() {
    // Request buffering off: a held upload's body is not read until it goes to a worker.
    let (_backend, backend_addr, counts) = counting_backend(Duration::from_millis(300));
    let lb = balancer(backend_addr, 4, |config| config.listener.request_buffering = false);
    let addr = lb.local_addr();
    const SIZE: usize = 200_000;
    let uploads: Vec<JoinHandle<(u16, String)>> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let stream = connect_from("127.0.0.1", addr);
                let head = format!("POST /slow HTTP/1.1\r\nHost: test\r\nContent-Length: {SIZE}\r\n\r\n");
                (&stream).write_all(head.as_bytes()).unwrap();
                let writer = stream.try_clone().unwrap();
                let body = std::thread::spawn(move || (&writer).write_all(&vec![b'a' + i as u8; SIZE]));
                let resp = read_response(&mut std::io::BufReader::new(&stream), false).unwrap();
                body.join().unwrap().unwrap();
                (resp.status, resp.text().trim().to_string())
            })
        })
        .collect();
    for upload in uploads {
        assert_eq!(upload.join().unwrap(), (200, SIZE.to_string()));
    }
    let (now, max, started, done) = counts.get();
    assert_eq!((now, max, started, done), (0, 2, 6, 6));
    lb.stop(Duration::from_secs(5));
}

#[test]
fn a_stop_serves_the_held_requests_within_its_grace_period() {
    // 4 workers, a share of 2: five slow requests from one client, two at a time.
    let (_backend, backend_addr, counts) = counting_backend(Duration::from_millis(400));
    let lb = balancer(backend_addr, 4, |_| {});
    let addr = lb.local_addr();
    let mut conns: Vec<Conn> = (0..5).map(|_| Conn::over(connect_from("127.0.0.1", addr), None)).collect();
    for conn in &mut conns {
        conn.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n");
    }
    assert!(wait_until(Duration::from_secs(10), || counts.get().0 == 2), "{:?}", counts.get());
    // Sent before the stop: each is read and served (the held ones in turn), told to close.
    let stop = std::thread::spawn(move || lb.stop(Duration::from_secs(10)));
    for conn in &mut conns {
        let resp = conn.response();
        assert_eq!((resp.status, resp.header("connection")), (200, Some("close")), "{resp:?}");
    }
    stop.join().unwrap();
    assert_eq!(counts.get(), (0, 2, 5, 5));
}

#[test]
fn a_held_request_goes_when_its_client_is_answered_not_at_the_pollers_next_timer() {
    // 2 workers, a share of 1: ten 100 ms requests from one client on kept-alive connections
    // that stay quiet after their answers, so only the worker's return can wake the poller for
    // the next held one (its own timer would, up to a second later: 5 s or more in all).
    let (_backend, backend_addr, counts) = counting_backend(Duration::from_millis(100));
    let lb = balancer(backend_addr, 2, |_| {});
    let addr = lb.local_addr();
    let mut conns: Vec<Conn> = (0..10).map(|_| Conn::over(connect_from("127.0.0.1", addr), None)).collect();
    let start = std::time::Instant::now();
    for conn in &mut conns {
        conn.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n");
    }
    for conn in &mut conns {
        assert_eq!(conn.response().status, 200);
    }
    let took = start.elapsed();
    assert_eq!(counts.get(), (0, 1, 10, 10), "one at a time");
    assert!(took < Duration::from_secs(4), "ten 100 ms requests in turn took {took:?}");
    lb.stop(Duration::from_secs(5));
}
