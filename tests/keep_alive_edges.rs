//! Edges of the poller/worker hand-off found in review, each once a real bug: a connection given
//! back without waking the poller while the socket still held input, a streamed empty body, and
//! a stop that ran the handlers of queued requests whose clients were already given up on.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{read_response, Conn};
use lb_sync::server::{Handler, Limits, Request, Response, Server, ServerConfig};

struct Path;
impl Handler for Path {
    fn handle(&self, request: Request) -> Response {
        Response::text(200, request.target().to_string())
    }
}

fn server(limits: Limits) -> Server {
    let config = ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), threads: 4, limits, ..ServerConfig::default() };
    Server::start(config, Path).unwrap()
}

/// A pipelined GET of exactly `size` bytes (padding in a header).
fn get_of_size(i: usize, size: usize) -> Vec<u8> {
    let base = format!("GET /p{i:04} HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n");
    let pad = size - base.len();
    format!("GET /p{i:04} HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n", "a".repeat(pad)).into_bytes()
}

#[test]
fn pipelined_requests_aligned_to_the_read_size_all_get_answers() {
    // 512 requests of 64 bytes: a 16 KiB read of the poller ends exactly on a request boundary
    // with more requests still in the socket, where no new readiness edge will come.
    let server = server(Limits { keep_alive_timeout: Duration::from_secs(5), ..Limits::default() });
    let mut conn = Conn::open(server.local_addr());
    conn.reader.get_ref().set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let raw: Vec<u8> = (0..512).flat_map(|i| get_of_size(i, 64)).collect();
    conn.send(&raw);
    for i in 0..512 {
        let resp = read_response(&mut conn.reader, false).unwrap_or_else(|e| panic!("response {i} of 512: {e}"));
        assert_eq!(resp.text(), format!("/p{i:04}\n"));
    }
    server.stop(Duration::from_secs(1));
}

#[test]
fn a_request_after_a_body_ending_on_a_read_boundary_is_answered() {
    let server = server(Limits { keep_alive_timeout: Duration::from_secs(5), ..Limits::default() });
    for round in 0..10 {
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
        // Head and body fill exactly the poller's first 16 KiB read; the next request follows.
        let head_base = "POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: ";
        let head_len = head_base.len() + 5 + 4;
        let body_len = 16 * 1024 - head_len;
        let mut raw = format!("{head_base}{body_len}\r\n\r\n").into_bytes();
        raw.extend(std::iter::repeat_n(b'x', body_len));
        raw.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n");
        stream.write_all(&raw).unwrap();
        let mut reader = std::io::BufReader::new(stream);
        assert_eq!(read_response(&mut reader, false).expect("first").text(), "/a\n");
        let second = read_response(&mut reader, false).unwrap_or_else(|e| panic!("round {round}: stalled: {e}"));
        assert_eq!(second.text(), "/b\n");
    }
    server.stop(Duration::from_secs(1));
}

#[test]
fn a_half_closed_client_gets_eof_right_after_its_response() {
    // `printf 'GET ...' | nc`: the FIN may be queued before the poller reads the head.
    let server = server(Limits { keep_alive_timeout: Duration::from_secs(30), ..Limits::default() });
    for i in 0..10 {
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(b"GET /h HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).unwrap_or_else(|e| panic!("client {i} got no EOF: {e}"));
        assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"), "client {i}");
    }
    server.stop(Duration::from_secs(1));
}

struct EmptyStream;
impl Handler for EmptyStream {
    fn handle(&self, _request: Request) -> Response {
        // What the proxy builds for a backend's answer with `Content-Length: 0`.
        Response::new(201).with_stream(std::io::empty(), Some(0))
    }
}

#[test]
fn a_streamed_body_of_length_zero_is_answered_not_reset() {
    let config = ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), threads: 2, ..ServerConfig::default() };
    let server = Server::start(config, EmptyStream).unwrap();
    let mut conn = Conn::open(server.local_addr());
    for _ in 0..3 {
        let resp = conn.get("/");
        assert_eq!((resp.status, resp.header("content-length")), (201, Some("0")));
    }
    server.stop(Duration::from_secs(1));
}

struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);
impl Handler for Counted {
    fn handle(&self, _request: Request) -> Response {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        Response::text(200, "late")
    }
}

#[test]
fn stop_does_not_run_the_queued_requests_of_clients_it_gave_up_on() {
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let config = ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), threads: 1, ..ServerConfig::default() };
    let server = Server::start(config, Counted(std::sync::Arc::clone(&ran))).unwrap();
    let mut conns = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.write_all(b"POST /side-effect HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").unwrap();
        conns.push(s);
    }
    assert!(common::wait_until(Duration::from_secs(5), || ran.load(std::sync::atomic::Ordering::SeqCst) >= 1));
    let started = Instant::now();
    server.stop(Duration::ZERO);
    // The one running finishes; the 7 queued ones are dropped unrun.
    assert!(ran.load(std::sync::atomic::Ordering::SeqCst) < 8, "queued handlers ran after the stop");
    assert!(started.elapsed() < Duration::from_secs(8), "stop(0) took {:?}", started.elapsed());
}
