//! HTTP/1.1 conformance of the front end, over real TCP against the real server: framing,
//! limits, timeouts, keep-alive, pipelining, bursts, idle connections, streaming, accept errors.
//!
//! Every test runs twice from one body: over plain TCP (`over_tcp::NAME`) and over TLS
//! (`over_tls::NAME`: the server's HTTPS listener, a certificate made for the test, a rustls
//! client), given a [`Transport`]; the list is at the end.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::{KeyKind, Pki};
use common::{chunked, proc_status, read_response, wait_until, ChildProcess, Conn};
use lb_sync::demo_backend::DemoBackend;
use lb_sync::server::{
    Certificates, Handler, Limits, Request, Response, Server, ServerConfig, TlsAcceptor, TlsListener,
};

/// How the tests reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Tcp,
    Tls,
}

/// Where a test connects, and with which TLS client (none over plain TCP).
#[derive(Clone)]
struct Client {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    fn open(&self) -> Conn {
        match &self.tls {
            None => Conn::open(self.addr),
            Some(tls) => Conn::open_tls(self.addr, tls),
        }
    }

    /// [`open`](Self::open), with a failed TLS handshake as an error.
    fn try_open(&self) -> io::Result<Conn> {
        let stream = TcpStream::connect(self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Conn::try_over(stream, self.tls.as_ref())
    }
}

/// An in-process server listening the transport's way; its certificates live as long as it.
struct TestServer {
    server: Server,
    client: Client,
    _pki: Option<Pki>,
}

impl TestServer {
    fn stop(self, grace: Duration) {
        self.server.stop(grace);
    }
}

/// An `lb-backend` child listening the transport's way.
struct TestBackend {
    child: ChildProcess,
    client: Client,
    _pki: Option<Pki>,
}

impl Transport {
    /// A certificate for `localhost` and the client that trusts it (TLS only).
    fn certificate(self) -> Option<(Pki, common::tls::Leaf)> {
        (self == Transport::Tls).then(|| {
            let pki = Pki::new();
            let leaf = pki.leaf("server", &["localhost"], KeyKind::EcPkcs8, 30);
            (pki, leaf)
        })
    }

    fn start(self, mut config: ServerConfig, handler: impl Handler) -> TestServer {
        let tls = self.certificate();
        if let Some((_, leaf)) = &tls {
            let certificates = Certificates::load(&[(leaf.cert.clone(), leaf.key.clone())]).unwrap();
            let bind = "127.0.0.1:0".parse().unwrap();
            config.tls = Some(TlsListener { bind, acceptor: TlsAcceptor::new(certificates) });
        }
        let server = Server::start(config, handler).unwrap();
        let addr = if tls.is_some() { server.tls_addr().unwrap() } else { server.local_addr() };
        let pki = tls.map(|(pki, _)| pki);
        let client = Client { addr, tls: pki.as_ref().map(Pki::client) };
        TestServer { server, client, _pki: pki }
    }

    /// `lb-backend --port 0 ARGS` (with an HTTPS listener over TLS), under `ulimit -n` when
    /// `nofile` is given.
    fn backend(self, args: &[&str], nofile: Option<u32>) -> TestBackend {
        let tls = self.certificate();
        let mut argv: Vec<String> = ["--port", "0"].iter().chain(args).map(|a| a.to_string()).collect();
        if let Some((_, leaf)) = &tls {
            let files = [leaf.cert.display().to_string(), leaf.key.display().to_string()];
            argv.extend(["--tls-port".into(), "0".into(), "--tls-cert".into(), files[0].clone(), "--tls-key".into()]);
            argv.push(files[1].clone());
        }
        let binary = env!("CARGO_BIN_EXE_lb-backend");
        let command = match nofile {
            None => {
                let mut command = Command::new(binary);
                command.args(&argv);
                command
            }
            Some(n) => {
                let mut command = Command::new("sh");
                command.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), binary]).args(&argv);
                command
            }
        };
        let child = ChildProcess::start(command);
        let addr = if tls.is_some() { child.tls_addr() } else { child.addr() };
        let pki = tls.map(|(pki, _)| pki);
        let client = Client { addr, tls: pki.as_ref().map(Pki::client) };
        TestBackend { child, client, _pki: pki }
    }
}

fn config(limits: Limits, threads: usize, queue_capacity: usize) -> ServerConfig {
    let pollers = common::pollers_under_test();
    ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        threads,
        pollers,
        queue_capacity,
        limits,
        ..ServerConfig::default()
    }
}

/// An in-process demo backend with the given limits.
fn demo(t: Transport, limits: Limits) -> TestServer {
    t.start(config(limits, 4, 1024), DemoBackend::new(0, "127.0.0.1", Some("demo".into())))
}

fn path_of(resp: &common::Resp) -> String {
    resp.json()["request"]["path"].as_str().unwrap().to_string()
}

fn keep_alive_serves_several_requests_on_one_connection(t: Transport) {
    let server = demo(t, Limits::default());
    let mut conn = server.client.open();
    let local = conn.reader.get_ref().local_addr().unwrap();
    for i in 0..5 {
        let resp = conn.get(&format!("/k{i}"));
        assert_eq!(resp.status, 200);
        assert_eq!(path_of(&resp), format!("/k{i}"));
        assert_eq!(resp.header("connection"), None, "1.1 keep-alive needs no Connection header");
    }
    assert_eq!(conn.reader.get_ref().local_addr().unwrap(), local);
    server.stop(Duration::from_secs(1));
}

fn ten_pipelined_requests_in_one_write_are_answered_in_order(t: Transport) {
    let server = demo(t, Limits::default());
    let mut conn = server.client.open();
    let raw: String = (0..10).map(|i| format!("GET /p{i} HTTP/1.1\r\nHost: t\r\n\r\n")).collect();
    conn.send(raw.as_bytes());
    for i in 0..10 {
        let resp = conn.response();
        assert_eq!(resp.status, 200);
        assert_eq!(path_of(&resp), format!("/p{i}"));
    }
    server.stop(Duration::from_secs(1));
}

fn pipelined_requests_with_bodies_stay_in_order(t: Transport) {
    let server = demo(t, Limits::default());
    let mut conn = server.client.open();
    let mut raw = Vec::new();
    raw.extend_from_slice(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    raw.extend_from_slice(b"POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    raw.extend_from_slice(b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n");
    conn.send(&raw);
    let a = conn.response().json();
    let b = conn.response().json();
    let c = conn.response().json();
    assert_eq!((a["request"]["path"].as_str(), a["request"]["body"].as_str()), (Some("/a"), Some("hello")));
    assert_eq!((b["request"]["path"].as_str(), b["request"]["body"].as_str()), (Some("/b"), Some("abc")));
    assert_eq!(c["request"]["path"], "/c");
    server.stop(Duration::from_secs(1));
}

fn thousand_sequential_requests_on_one_connection(t: Transport) {
    let server = demo(t, Limits::default());
    let mut conn = server.client.open();
    for i in 0..1000 {
        let resp = conn.get(&format!("/s{i}"));
        assert_eq!(resp.status, 200, "request {i}");
    }
    server.stop(Duration::from_secs(1));
}

fn burst_of_256_connections_is_all_answered(t: Transport) {
    let server = demo(t, Limits::default());
    let mut conns: Vec<Conn> = (0..256).map(|_| server.client.open()).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send(format!("GET /b{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let resp = conn.response();
        assert_eq!(resp.status, 200);
        assert_eq!(path_of(&resp), format!("/b{i}"));
    }
    server.stop(Duration::from_secs(1));
}

fn two_thousand_idle_keep_alive_connections_cost_no_threads(t: Transport) {
    let workers = 4;
    let TestBackend { child, client, .. } = &t.backend(&["--threads", &workers.to_string()], None);
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let mut conn = client.open();
        assert_eq!(conn.get("/warm").status, 200);
        idle.push(conn);
    }
    // Another client is served while the 2000 sit idle on keep-alive.
    let mut active = client.open();
    for i in 0..200 {
        assert_eq!(active.get(&format!("/busy{i}")).status, 200);
    }
    let threads = proc_status(child.pid(), "Threads");
    let rss_kb = proc_status(child.pid(), "VmRSS");
    eprintln!("2000 idle connections: {threads} threads, RSS {rss_kb} kB");
    // Workers + the poller + the main thread; nothing per connection.
    assert!(threads <= workers as u64 + 3, "{threads} threads for {workers} workers");
    // And the idle ones are still alive and usable.
    for conn in idle.iter_mut().step_by(97) {
        assert_eq!(conn.get("/again").status, 200);
    }
}

fn trickling_clients_get_408_while_others_are_served(t: Transport) {
    let limits = Limits { head_timeout: Duration::from_secs(2), ..Limits::default() };
    let server = demo(t, limits);
    let client = server.client.clone();
    let started = Instant::now();
    let tricklers: Vec<_> = (0..64)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut conn = client.open();
                conn.send(b"GET /slow HTTP/1.1\r\n");
                // One header line every 500 ms, never the end of the head.
                for i in 0..20 {
                    std::thread::sleep(Duration::from_millis(500));
                    if conn.reader.get_mut().write_all(format!("X-Line-{i}: v\r\n").as_bytes()).is_err() {
                        break;
                    }
                    if i == 6 {
                        break;
                    }
                }
                let resp = conn.response();
                (resp.status, conn.is_closed(), started.elapsed())
            })
        })
        .collect();
    // Meanwhile a normal client is answered as usual.
    std::thread::sleep(Duration::from_millis(300));
    let mut normal = client.open();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(normal.get("/fast").status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "normal request waited {:?}", t.elapsed());
    }
    for trickler in tricklers {
        let (status, closed, at) = trickler.join().unwrap();
        assert_eq!(status, 408);
        assert!(closed, "closed after 408");
        assert!(at >= Duration::from_millis(1900), "408 came at {at:?}, before the head timeout");
    }
    server.stop(Duration::from_secs(1));
}

/// Sends `attack` followed by a valid request in one write; exactly one response with `status`
/// must come back, then the connection must close: the tail is never answered.
fn assert_rejected(client: &Client, attack: &[u8], status: u16) {
    let mut conn = client.open();
    let mut raw = attack.to_vec();
    raw.extend_from_slice(b"GET /tail HTTP/1.1\r\nHost: t\r\n\r\n");
    conn.send(&raw);
    let resp = conn.response();
    assert_eq!(resp.status, status, "attack {:?}: {}", String::from_utf8_lossy(attack), resp.text());
    assert_eq!(resp.header("connection"), Some("close"));
    let rest = conn.rest();
    assert!(
        rest.is_empty(),
        "tail answered after {:?}: {:?}",
        String::from_utf8_lossy(attack),
        String::from_utf8_lossy(&rest)
    );
}

fn framing_attacks_are_rejected_and_the_tail_never_answered(t: Transport) {
    let server = demo(t, Limits::default());
    let client = server.client.clone();
    let cases: &[(&[u8], u16)] = &[
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4, 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: four\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4 \x0b\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: foo\r\n\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n  b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: v\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nBad\x01Name: v\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: no host\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;a\nb\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: a\nY: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n folded: x\r\n\r\n", 400),
    ];
    for (attack, status) in cases {
        assert_rejected(&client, attack, *status);
    }
    server.stop(Duration::from_secs(1));
}

fn every_limit_gives_its_status(t: Transport) {
    let limits = Limits { max_body_bytes: 1000, ..Limits::default() };
    let server = demo(t, limits);
    let client = server.client.clone();
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    assert_rejected(&client, long_target.as_bytes(), 414);
    let big_head = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(33 * 1024));
    assert_rejected(&client, big_head.as_bytes(), 431);
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_rejected(&client, format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(), 431);
    assert_rejected(&client, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n", 413);
    let too_much = chunked(&[b'z'; 1500], &[700]);
    let mut raw = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(&too_much);
    assert_rejected(&client, &raw, 413);
    // Exactly at the limit is fine.
    let mut conn = client.open();
    conn.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n");
    conn.send(&[b'k'; 1000]);
    assert_eq!(conn.response().json()["request"]["body_bytes"], 1000);
    server.stop(Duration::from_secs(1));
}

fn stalled_body_gets_408_after_the_io_timeout(t: Transport) {
    let limits = Limits { io_timeout: Duration::from_millis(700), ..Limits::default() };
    let server = demo(t, limits);
    let mut conn = server.client.open();
    conn.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    let resp = conn.response();
    assert_eq!(resp.status, 408);
    assert!(conn.is_closed());
    server.stop(Duration::from_secs(1));
}

fn idle_keep_alive_connection_is_closed_quietly(t: Transport) {
    let limits = Limits { keep_alive_timeout: Duration::from_millis(300), ..Limits::default() };
    let server = demo(t, limits);
    let mut conn = server.client.open();
    assert_eq!(conn.get("/").status, 200);
    let start = Instant::now();
    assert!(conn.rest().is_empty(), "no 408 on an idle keep-alive connection");
    assert!(start.elapsed() >= Duration::from_millis(250));
    server.stop(Duration::from_secs(1));
}

fn at_the_connection_limit_the_longest_idle_connection_makes_room(t: Transport) {
    let limits = Limits { max_connections: 4, ..Limits::default() };
    let server = demo(t, limits);
    let mut held: Vec<Conn> = (0..4).map(|_| server.client.open()).collect();
    // Connection 0 is idle longest: the others answer requests after its one (several each, so
    // that the worker that answered it has long handed it back to the poller).
    for i in [0, 1, 2, 3, 1, 2, 3, 1, 2, 3] {
        assert_eq!(held[i].get("/").status, 200);
    }
    let mut newcomer = server.client.open();
    assert_eq!(newcomer.get("/new").status, 200, "served while idle connections existed");
    assert!(held[0].is_closed(), "the connection idle longest was closed to make room");
    for (i, conn) in held.iter_mut().enumerate().skip(1) {
        assert_eq!(conn.get("/again").status, 200, "connection {i} was not closed");
    }
    server.stop(Duration::from_secs(1));
}

fn connections_over_the_limit_with_none_idle_get_503_and_close(t: Transport) {
    let limits = Limits { max_connections: 4, ..Limits::default() };
    let server = demo(t, limits);
    let mut held: Vec<Conn> = (0..4).map(|_| server.client.open()).collect();
    for conn in &mut held {
        assert_eq!(conn.get("/").status, 200);
        // A request head begun: the connection is busy, not idle.
        conn.send(b"GET /next HTTP/1.1\r\nHost: t\r\n");
    }
    match t {
        Transport::Tcp => {
            let mut extra = server.client.open();
            let resp = extra.response();
            assert_eq!(resp.status, 503);
            assert!(extra.is_closed());
        }
        // No answer can go before a handshake, and none is spent on a refused connection.
        Transport::Tls => assert!(server.client.try_open().is_err(), "closed before the handshake"),
    }
    for conn in &mut held {
        conn.send(b"\r\n");
        assert_eq!(conn.response().status, 200, "a busy connection is never closed for a new one");
    }
    drop(held);
    assert!(wait_until(Duration::from_secs(5), || {
        let Ok(mut conn) = server.client.try_open() else { return false };
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        read_response(&mut conn.reader, false).is_ok_and(|r| r.status == 200)
    }));
    server.stop(Duration::from_secs(1));
}

fn full_queue_answers_503_with_retry_after_at_once(t: Transport) {
    let server = t.start(config(Limits::default(), 1, 1), DemoBackend::new(0, "127.0.0.1", None));
    let client = server.client.clone();
    // One request occupies the only worker, one waits in the queue of one.
    let mut busy = client.open();
    busy.send(b"GET /?delay_ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n");
    std::thread::sleep(Duration::from_millis(200));
    let mut queued = client.open();
    queued.send(b"GET /?delay_ms=10 HTTP/1.1\r\nHost: t\r\n\r\n");
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = client.open();
    let start = Instant::now();
    let resp = refused.get("/");
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(start.elapsed() < Duration::from_millis(1000), "503 came only after {:?}", start.elapsed());
    assert_eq!(busy.response().status, 200);
    assert_eq!(queued.response().status, 200);
    server.stop(Duration::from_secs(1));
}

fn chunked_bodies_in_and_out_with_odd_sizes_and_extensions(t: Transport) {
    let server = demo(t, Limits::default());
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for sizes in [&[1usize, 7, 31, 4096][..], &[1], &[65_536, 3], &[100_000]] {
        let mut conn = server.client.open();
        conn.send(b"POST /?echo=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
        conn.send(&chunked(&data, sizes));
        let resp = conn.response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        assert!(resp.body == data, "echo differs for chunk sizes {sizes:?}");
        // And counted, on the same connection.
        conn.send(b"PUT /count HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
        conn.send(&chunked(&data, sizes));
        assert_eq!(conn.response().json()["request"]["body_bytes"], 100_000);
    }
    let mut conn = server.client.open();
    let resp = conn.get("/?bytes=70000&chunked=1");
    assert_eq!((resp.status, resp.body.len()), (200, 70_000));
    server.stop(Duration::from_secs(1));
}

fn expect_100_continue_is_answered_before_the_body(t: Transport) {
    let limits = Limits { max_body_bytes: 100, ..Limits::default() };
    let server = demo(t, limits);
    let mut conn = server.client.open();
    conn.send(b"POST /?echo=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(conn.response().status, 100, "interim response before the body is sent");
    conn.send(b"hello");
    let resp = conn.response();
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"hello"[..]));
    // A body over the limit is refused without 100, so the client never sends it.
    let mut conn = server.client.open();
    conn.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(conn.response().status, 413);
    // A counting handler reads the body too: 100 first, then the final answer.
    let mut conn = server.client.open();
    conn.send(b"PUT /c HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(conn.response().status, 100);
    conn.send(b"abc");
    assert_eq!(conn.response().json()["request"]["body_bytes"], 3);
    server.stop(Duration::from_secs(1));
}

fn http_1_0_with_and_without_keep_alive(t: Transport) {
    let server = demo(t, Limits::default());
    let mut conn = server.client.open();
    conn.send(b"GET /old HTTP/1.0\r\n\r\n");
    let resp = conn.response();
    assert_eq!((resp.status, resp.header("connection")), (200, Some("close")));
    assert!(conn.is_closed());

    let mut conn = server.client.open();
    conn.send(b"GET /ka1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let resp = conn.response();
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    conn.send(b"GET /ka2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(path_of(&conn.response()), "/ka2");
    // Unknown length on 1.0: close-delimited, never chunked.
    conn.send(b"GET /?bytes=5000&chunked=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let resp = conn.response();
    assert_eq!((resp.header("transfer-encoding"), resp.body.len()), (None, 5000));
    assert_eq!(resp.header("connection"), Some("close"));
    server.stop(Duration::from_secs(1));
}

fn head_has_no_body_and_the_connection_stays_in_sync(t: Transport) {
    let server = demo(t, Limits::default());
    let mut conn = server.client.open();
    conn.send(b"HEAD /?bytes=1234 HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = conn.head_response();
    assert_eq!((resp.status, resp.header("content-length")), (200, Some("1234")));
    conn.send(b"HEAD /?bytes=99&chunked=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(conn.head_response().status, 200);
    assert_eq!(path_of(&conn.get("/after-head")), "/after-head");
    server.stop(Duration::from_secs(1));
}

/// A handler whose response body fails half-way, as a backend that dies mid-transfer.
struct BreaksMidway;

struct Broken {
    sent: bool,
}

impl Read for Broken {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if std::mem::replace(&mut self.sent, true) {
            Err(io::Error::other("source failed"))
        } else {
            buf[..4].copy_from_slice(b"part");
            Ok(4)
        }
    }
}

impl Handler for BreaksMidway {
    fn handle(&self, request: Request) -> Response {
        let length = if request.path() == "/sized" { Some(100) } else { None };
        Response::new(200).with_stream(Broken { sent: false }, length)
    }
}

fn a_failing_close_delimited_body_ends_in_a_reset_not_a_clean_close(t: Transport) {
    let server = t.start(config(Limits::default(), 2, 8), BreaksMidway);
    let mut conn = server.client.open();
    conn.send(b"GET /unsized HTTP/1.0\r\n\r\n");
    let mut raw = Vec::new();
    let result = conn.reader.read_to_end(&mut raw);
    assert_eq!(
        result.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset),
        "got {:?}",
        String::from_utf8_lossy(&raw)
    );
    server.stop(Duration::from_secs(1));
}

fn expect_100_continue_is_answered_by_the_front_end_so_the_connection_stays_in_sync(t: Transport) {
    // Bodies are read by the poller before the handler runs (as nginx does), so the client is
    // always asked for its body, and a handler that ignores it still leaves the connection in
    // sync for the next request.
    let server = demo(t, Limits::default());
    let mut conn = server.client.open();
    conn.send(b"POST /?redirect=/elsewhere HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(conn.response().status, 100);
    conn.send(b"hello");
    let resp = conn.response();
    assert_eq!((resp.status, resp.header("connection")), (302, None), "kept alive");
    assert_eq!(conn.get("/next").status, 200, "the next request on the same connection");
    server.stop(Duration::from_secs(1));
}

fn a_body_source_failing_midway_is_a_visibly_broken_transfer(t: Transport) {
    let server = t.start(config(Limits::default(), 2, 8), BreaksMidway);
    let mut conn = server.client.open();
    let err = conn.get_result("/chunked");
    assert!(err.is_err(), "no final chunk: {err:?}");
    let mut conn = server.client.open();
    let err = conn.get_result("/sized");
    assert!(err.is_err(), "short of Content-Length: {err:?}");
    server.stop(Duration::from_secs(1));
}

trait GetResult {
    fn get_result(&mut self, path: &str) -> io::Result<common::Resp>;
}

impl GetResult for Conn {
    fn get_result(&mut self, path: &str) -> io::Result<common::Resp> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        read_response(&mut self.reader, false)
    }
}

/// Writes `total` bytes of `x` in 1 MiB writes.
fn write_filler(stream: &mut impl Write, total: u64) {
    let block = vec![b'x'; 1 << 20];
    let mut left = total;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        stream.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
}

fn one_gib_streams_through_in_constant_memory(t: Transport) {
    const GIB: u64 = 1 << 30;
    let TestBackend { child, client, .. } = &t.backend(&["--threads", "2"], None);
    let mut conn = client.open();
    assert_eq!(conn.get("/warm").status, 200);
    let before_kb = proc_status(child.pid(), "VmRSS");

    conn.send(format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {GIB}\r\n\r\n").as_bytes());
    write_filler(conn.reader.get_mut(), GIB);
    assert_eq!(conn.response().json()["request"]["body_bytes"], GIB);

    conn.send(b"POST /upload-chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let stream = conn.reader.get_mut();
    let block = vec![b'y'; 1 << 20];
    for _ in 0..1024 {
        stream.write_all(b"100000\r\n").unwrap();
        stream.write_all(&block).unwrap();
        stream.write_all(b"\r\n").unwrap();
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    assert_eq!(conn.response().json()["request"]["body_bytes"], GIB);

    conn.send(format!("GET /?bytes={GIB} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let resp = conn.head_response();
    assert_eq!(resp.header("content-length"), Some(GIB.to_string().as_str()));
    let mut left = GIB;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = conn.reader.read(&mut buf[..left.min(1 << 20) as usize]).unwrap();
        assert!(n > 0, "download ended {left} bytes short");
        left -= n as u64;
    }
    let peak_kb = proc_status(child.pid(), "VmHWM");
    eprintln!("1 GiB up (length), up (chunked) and down: RSS before {before_kb} kB, peak {peak_kb} kB");
    assert!(peak_kb.saturating_sub(before_kb) < 32 * 1024, "grew {} kB", peak_kb - before_kb);
    assert_eq!(conn.get("/after").status, 200);
}

fn accept_errors_are_survived(t: Transport) {
    // A child with room for very few descriptors: accepts fail with EMFILE under a burst.
    let TestBackend { child, client, .. } = &t.backend(&["--threads", "2"], Some(24));
    let addr = client.addr;
    let burst: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(burst);
    // Once descriptors are free again the same process still accepts and answers.
    let answered = wait_until(Duration::from_secs(10), || {
        let Ok(stream) = TcpStream::connect(addr) else {
            return false;
        };
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let Ok(mut conn) = Conn::try_over(stream, client.tls.as_ref()) else {
            return false;
        };
        conn.send(b"GET /alive HTTP/1.1\r\nHost: t\r\n\r\n");
        read_response(&mut conn.reader, false).is_ok_and(|r| r.status == 200)
    });
    assert!(answered, "the port stopped accepting after EMFILE");
    assert!(child_alive(child));
}

fn child_alive(child: &ChildProcess) -> bool {
    std::path::Path::new(&format!("/proc/{}", child.pid())).exists()
}

fn stop_finishes_in_flight_requests_closes_idle_ones_and_joins(t: Transport) {
    let server = demo(t, Limits::default());
    let client = server.client.clone();
    let mut idle = client.open();
    assert_eq!(idle.get("/").status, 200);
    let opener = client.clone();
    let in_flight = std::thread::spawn(move || {
        let mut conn = opener.open();
        conn.send(b"GET /?delay_ms=600 HTTP/1.1\r\nHost: t\r\n\r\n");
        conn.response()
    });
    std::thread::sleep(Duration::from_millis(200));
    server.stop(Duration::from_secs(5));
    let resp = in_flight.join().unwrap();
    assert_eq!((resp.status, resp.header("connection")), (200, Some("close")));
    assert!(idle.is_closed(), "idle connection closed by stop");
    assert!(TcpStream::connect(client.addr).is_err(), "no longer accepting");
}

fn stop_breaks_requests_that_outlive_the_grace_period(t: Transport) {
    let server = demo(t, Limits::default());
    let client = server.client.clone();
    let mut conn = client.open();
    conn.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly part");
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    server.stop(Duration::from_millis(300));
    assert!(start.elapsed() < Duration::from_secs(5), "stop waited {:?}", start.elapsed());
    let _ = conn.rest();
}

fn a_response_finished_by_the_poller_leaves_the_connection_ready_for_the_next_request(t: Transport) {
    // 20 MB does not fit the socket buffers: the worker hands the rest to the poller, workers
    // refill it as the client reads, and the last refill ends the response.
    const SIZE: u64 = 20_000_000;
    let server = demo(t, Limits::default());
    let mut conn = server.client.open();
    conn.send(format!("GET /?bytes={SIZE} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let resp = conn.head_response();
    assert_eq!(resp.header("content-length"), Some(SIZE.to_string().as_str()));
    let mut left = SIZE;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let n = conn.reader.read(&mut buf[..left.min(1 << 16) as usize]).unwrap();
        assert!(n > 0, "body ended {left} bytes short");
        left -= n as u64;
    }
    assert_eq!(conn.get("/after").status, 200, "the same connection serves the next request");
    server.stop(Duration::from_secs(1));
}

/// Each test as two `#[test]`s: over plain TCP and over TLS.
macro_rules! over_tcp_and_tls {
    ($($test:ident),* $(,)?) => {
        mod over_tcp {
            $(#[test]
            fn $test() {
                super::$test(super::Transport::Tcp)
            })*
        }
        mod over_tls {
            $(#[test]
            fn $test() {
                if crate::common::tools::require(&[&crate::common::tools::OPENSSL]) {
                    super::$test(super::Transport::Tls)
                }
            })*
        }
    };
}

over_tcp_and_tls!(
    keep_alive_serves_several_requests_on_one_connection,
    ten_pipelined_requests_in_one_write_are_answered_in_order,
    pipelined_requests_with_bodies_stay_in_order,
    thousand_sequential_requests_on_one_connection,
    burst_of_256_connections_is_all_answered,
    two_thousand_idle_keep_alive_connections_cost_no_threads,
    trickling_clients_get_408_while_others_are_served,
    framing_attacks_are_rejected_and_the_tail_never_answered,
    every_limit_gives_its_status,
    stalled_body_gets_408_after_the_io_timeout,
    idle_keep_alive_connection_is_closed_quietly,
    at_the_connection_limit_the_longest_idle_connection_makes_room,
    connections_over_the_limit_with_none_idle_get_503_and_close,
    full_queue_answers_503_with_retry_after_at_once,
    chunked_bodies_in_and_out_with_odd_sizes_and_extensions,
    expect_100_continue_is_answered_before_the_body,
    http_1_0_with_and_without_keep_alive,
    head_has_no_body_and_the_connection_stays_in_sync,
    a_failing_close_delimited_body_ends_in_a_reset_not_a_clean_close,
    expect_100_continue_is_answered_by_the_front_end_so_the_connection_stays_in_sync,
    a_body_source_failing_midway_is_a_visibly_broken_transfer,
    one_gib_streams_through_in_constant_memory,
    accept_errors_are_survived,
    stop_finishes_in_flight_requests_closes_idle_ones_and_joins,
    stop_breaks_requests_that_outlive_the_grace_period,
    a_response_finished_by_the_poller_leaves_the_connection_ready_for_the_next_request,
);
