//! WebSocket (Upgrade) pass-through, with real processes: a raw-handshake client (masking its
//! frames, as a client must) echoes through `lb-sync` to `lb-backend`'s `/ws`; 200 tunnels stay
//! open on 4 workers while normal requests are served; a non-101 answer is relayed with its
//! body and the connection kept; the idle timeout, a close on either side and a half close each
//! end a tunnel as they should; a reader that stops reading stops the sender (backpressure);
//! the counters in `/lb/stats`, `/lb/backends` and `/lb/metrics` are exact; least_connections
//! counts an open tunnel; SIGTERM closes tunnels after a short drain. And a real WebSocket
//! library (Python's `websockets`, which checks the handshake and the framing) echoes too.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::lb::Lb;
use common::{api, backend, read_response, wait_until, ChildProcess, Conn, Resp};

/// RFC 6455 1.3's example key and the accept value it must get.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A WebSocket client over a raw socket: the handshake by hand, frames masked as RFC 6455 5.3
/// requires of a client, and frames read without any library.
struct Ws {
    reader: BufReader<TcpStream>,
    mask_seed: u32,
}

/// One frame as received.
#[derive(Debug, PartialEq)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Ws {
    /// Sends the handshake for `path`; returns the answer and, on a 101, the open socket.
    fn connect(addr: SocketAddr, path: &str) -> (Resp, Option<Ws>) {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        );
        Ws::handshake(addr, request.as_bytes())
    }

    fn handshake(addr: SocketAddr, request: &[u8]) -> (Resp, Option<Ws>) {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        (&stream).write_all(request).unwrap();
        let mut reader = BufReader::new(stream);
        let resp = read_response(&mut reader, false).expect("an answer to the handshake");
        let ws = (resp.status == 101).then_some(Ws { reader, mask_seed: 0x9E37_79B9 });
        (resp, ws)
    }

    fn open(addr: SocketAddr) -> Ws {
        let (resp, ws) = Ws::connect(addr, "/ws");
        assert_eq!(resp.status, 101, "{resp:?}");
        assert_eq!(resp.header("sec-websocket-accept"), Some(ACCEPT));
        ws.unwrap()
    }

    fn socket(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// A mask per frame (xorshift: any value will do, but not always the same).
    fn next_mask(&mut self) -> [u8; 4] {
        self.mask_seed ^= self.mask_seed << 13;
        self.mask_seed ^= self.mask_seed >> 17;
        self.mask_seed ^= self.mask_seed << 5;
        self.mask_seed.to_be_bytes()
    }

    fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mask = self.next_mask();
        let frame = common::ws::client_frame(fin, opcode, mask, payload);
        self.reader.get_mut().write_all(&frame).expect("send a frame");
    }

    fn recv(&mut self) -> Frame {
        self.try_recv().expect("a frame")
    }

    fn try_recv(&mut self) -> std::io::Result<Frame> {
        let (fin, opcode, payload) = common::ws::read_server_frame(&mut self.reader)?;
        Ok(Frame { fin, opcode, payload })
    }

    fn echo(&mut self, opcode: u8, payload: &[u8]) {
        self.send(true, opcode, payload);
        assert_eq!(self.recv(), Frame { fin: true, opcode, payload: payload.to_vec() });
    }

    /// Whether the other side closed (EOF or reset) within `limit`, with nothing more sent.
    fn closed_within(&mut self, limit: Duration) -> bool {
        self.socket().set_read_timeout(Some(limit)).unwrap();
        let mut byte = [0u8; 1];
        let closed = match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => panic!("a byte where the end was expected"),
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        };
        self.socket().set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        closed
    }
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    Conn::open(addr).get(path)
}

fn tunnels(lb: SocketAddr) -> (u64, u64) {
    let stats = api::stats(lb);
    (stats["tunnels"]["active"].as_u64().unwrap(), stats["tunnels"]["total"].as_u64().unwrap())
}

fn backend_entry(lb: SocketAddr, index: usize) -> serde_json::Value {
    get(lb, "/lb/backends").json()[index].clone()
}

/// A metric's value in `/lb/metrics` (the line that starts with `sample` and a space).
fn metric(lb: SocketAddr, sample: &str) -> f64 {
    let text = get(lb, "/lb/metrics").text();
    let line = text.lines().find(|l| l.starts_with(&format!("{sample} "))).unwrap_or_else(|| panic!("no {sample}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A one-connection upstream run by a thread of the test: reads the request head, answers
/// `answer`, then hands the socket to `then`. Returns the head it read through the channel.
fn fake_upstream(
    answer: &'static [u8],
    then: impl FnOnce(TcpStream) + Send + 'static,
) -> (SocketAddr, mpsc::Receiver<String>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, head) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut reader = BufReader::new(socket);
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            text.push_str(&line);
        }
        assert!(reader.buffer().is_empty(), "nothing follows the head before the answer");
        let mut socket = reader.into_inner();
        socket.write_all(answer).unwrap();
        let _ = heads.send(text);
        then(socket);
    });
    (addr, head, thread)
}

const SWITCHED: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Up: 1\r\n\r\n";

/// lb-sync with the access log on, no health checks.
fn lb_sync(backends: &[SocketAddr], settings: &str) -> Lb {
    let all = match settings {
        "" => r#""access_log": true"#.to_string(),
        _ if settings.contains("\"access_log\"") => settings.to_string(),
        _ => format!(r#""access_log": true, {settings}"#),
    };
    Lb::start(backends, &all)
}

#[test]
fn websocket_echo_through_lb_sync() {
    let backend = backend(&[]);
    let lb = lb_sync(&[backend.addr()], "");
    let (resp, ws) = Ws::connect(lb.addr, "/ws");
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(resp.header("upgrade"), Some("websocket"));
    assert_eq!(resp.header("connection"), Some("upgrade"));
    assert_eq!(resp.header("sec-websocket-accept"), Some(ACCEPT), "RFC 6455's example key");
    assert!(resp.header("content-length").is_none() && resp.header("transfer-encoding").is_none());
    let mut ws = ws.unwrap();
    ws.echo(TEXT, b"hello through the balancer");
    // Larger than every buffer on the way (and than one read), in both directions.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    ws.echo(BINARY, &big);
    ws.echo(BINARY, b"");
    // A fragmented message comes back fragment by fragment.
    ws.send(false, TEXT, b"frag");
    ws.send(true, 0x0, b"ment");
    assert_eq!(ws.recv(), Frame { fin: false, opcode: TEXT, payload: b"frag".to_vec() });
    assert_eq!(ws.recv(), Frame { fin: true, opcode: 0x0, payload: b"ment".to_vec() });
    ws.send(true, PING, b"are you there");
    assert_eq!(ws.recv(), Frame { fin: true, opcode: PONG, payload: b"are you there".to_vec() });
    ws.send(true, CLOSE, &1000u16.to_be_bytes());
    assert_eq!(ws.recv(), Frame { fin: true, opcode: CLOSE, payload: 1000u16.to_be_bytes().to_vec() });
    assert!(ws.closed_within(Duration::from_secs(5)), "the backend closes after its close frame");
    drop(ws);
    assert!(wait_until(Duration::from_secs(5), || tunnels(lb.addr) == (0, 1)), "{:?}", tunnels(lb.addr));
    // The access line is written when the tunnel closes: 101, the bytes each way, its life.
    assert!(lb.wait_log("\"GET /ws HTTP/1.1\" 101 ", Duration::from_secs(5)), "{}", lb.log());
    let line = lb.log().lines().find(|l| l.contains("\"GET /ws HTTP/1.1\" 101 ")).unwrap().to_string();
    let fields: Vec<&str> = line.split(' ').collect();
    let to_client: u64 = fields[9].parse().unwrap();
    let from_client: u64 = fields.last().unwrap().parse().unwrap();
    // Frame heads: 2 + 2 + 2 + 2 + 2 + 2 + 2 bytes to the client, 10 for the large frame; the
    // client's carry 4 bytes of mask more each.
    let payloads = 26 + big.len() as u64 + 4 + 4 + 13 + 2;
    assert_eq!(to_client, payloads + 7 * 2 + 8, "{line}");
    assert_eq!(from_client, payloads + 7 * 6 + 8, "{line}");
}

#[test]
fn two_hundred_tunnels_hold_no_worker_while_requests_are_served() {
    let backend = backend(&["--threads", "4"]);
    let lb = lb_sync(&[backend.addr()], r#""threads": 4, "access_log": false"#);
    let threads_before = lb.threads();
    let mut open: Vec<Ws> = (0..200).map(|_| Ws::open(lb.addr)).collect();
    // Every tunnel is open at once and still answers, and ordinary requests are served on the
    // 4 workers meanwhile: no tunnel holds one.
    for (i, ws) in open.iter_mut().enumerate() {
        ws.echo(TEXT, format!("tunnel {i}").as_bytes());
    }
    for _ in 0..50 {
        let resp = get(lb.addr, "/plain");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["request"]["path"], "/plain");
    }
    assert_eq!(lb.threads(), threads_before, "a tunnel costs no thread");
    assert_eq!(tunnels(lb.addr), (200, 200));
    let entry = backend_entry(lb.addr, 0);
    assert_eq!(entry["tunnels"], serde_json::json!({"active": 200, "total": 200}));
    assert_eq!(entry["active_connections"], 200, "each open tunnel counts as a connection of its backend");
    assert_eq!(entry["awaiting_answer"], 0, "but not against the connection cap");
    assert_eq!(metric(lb.addr, "lb_open_tunnels"), 200.0);
    assert_eq!(metric(lb.addr, "lb_tunnels_total"), 200.0);
    let id = entry["id"].as_str().unwrap().to_string();
    assert_eq!(metric(lb.addr, &format!("lb_backend_open_tunnels{{pool=\"default\",backend=\"{id}\"}}")), 200.0);
    assert_eq!(metric(lb.addr, &format!("lb_backend_tunnels_total{{pool=\"default\",backend=\"{id}\"}}")), 200.0);
    assert_eq!(metric(lb.addr, "lb_in_flight_requests"), 200.0);
    common::promtool_check(&get(lb.addr, "/lb/metrics").text());
    // The 101s are counted as answers (1xx), each once.
    assert_eq!(api::stats(lb.addr)["responses"]["1xx"], 200);
    // Half of them closed by the client, half by a close frame: all counted closed.
    for (i, mut ws) in open.drain(..).enumerate() {
        if i % 2 == 0 {
            ws.send(true, CLOSE, &1000u16.to_be_bytes());
            assert_eq!(ws.recv().opcode, CLOSE);
        }
    }
    assert!(wait_until(Duration::from_secs(10), || tunnels(lb.addr) == (0, 200)), "{:?}", tunnels(lb.addr));
    assert!(wait_until(Duration::from_secs(5), || backend_entry(lb.addr, 0)["active_connections"] == 0));
    assert_eq!(metric(lb.addr, "lb_open_tunnels"), 0.0);
}

#[test]
fn a_non_101_answer_is_relayed_with_its_body_and_the_connection_kept() {
    let backend = backend(&[]);
    let lb = lb_sync(&[backend.addr()], "");
    // lb-backend's echo answers 426 to an upgrade to anything but websocket.
    let mut conn = Conn::open(lb.addr);
    conn.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
    let resp = conn.response();
    assert_eq!(resp.status, 426);
    assert!(resp.text().starts_with("this is a WebSocket echo"), "{}", resp.text());
    assert_eq!(resp.header("content-length"), Some(resp.body.len().to_string().as_str()));
    assert!(resp.header("connection").is_none(), "kept alive: {resp:?}");
    // The same connection serves the next request, and a plain GET /ws gets the 426 too.
    let resp = conn.get("/ws");
    assert_eq!(resp.status, 426);
    assert!(resp.text().contains("Upgrade: websocket"));
    assert_eq!(conn.get("/after").json()["request"]["path"], "/after");
    // A handshake the backend refuses (no key): its 400 comes back, no tunnel is counted.
    let request = b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (resp, ws) = Ws::handshake(lb.addr, request);
    assert_eq!((resp.status, ws.is_none()), (400, true));
    assert!(resp.text().contains("Sec-WebSocket-Key"), "{}", resp.text());
    assert_eq!(tunnels(lb.addr), (0, 0));
    // Released just after the answer's last byte (not held as a tunnel would be).
    assert!(wait_until(Duration::from_secs(5), || backend_entry(lb.addr, 0)["active_connections"] == 0));
}

#[test]
fn non_101_answers_keep_their_framing_chunked_or_close_delimited() {
    let cases: [(&'static [u8], &str); 3] = [
        (
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nno ws\r\n6\r\n today\r\n0\r\n\r\n",
            "no ws today",
        ),
        (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\nuntil the close", "until the close"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain", "plain"),
    ];
    for (answer, body) in cases {
        let (addr, _head, upstream) = fake_upstream(answer, drop);
        let lb = lb_sync(&[addr], r#""max_tries": 1"#);
        let mut conn = Conn::open(lb.addr);
        conn.send(format!("GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\n\r\n").as_bytes());
        let resp = conn.response();
        assert_eq!(resp.text(), body, "{resp:?}");
        assert!(resp.header("connection").is_none(), "the client's connection is kept: {resp:?}");
        upstream.join().unwrap();
        assert_eq!(tunnels(lb.addr), (0, 0));
    }
}

#[test]
fn the_upgrade_request_keeps_upgrade_and_connection_and_gets_the_forwarded_headers() {
    let (addr, head, upstream) = fake_upstream(SWITCHED, |mut socket| {
        // The new protocol's first bytes before the client said anything.
        socket.write_all(b"server first").unwrap();
        let mut got = [0u8; 12];
        socket.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"client first");
    });
    let lb = lb_sync(&[addr], "");
    let request = format!(
        "GET /chat?room=1 HTTP/1.1\r\nHost: chat.example\r\nConnection: keep-alive, Upgrade, X-Hop\r\nX-Hop: drop me\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\nX-Forwarded-For: 203.0.113.9\r\n\r\nclient first"
    );
    let (resp, ws) = Ws::handshake(lb.addr, request.as_bytes());
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("x-up"), Some("1"));
    let mut ws = ws.unwrap();
    let mut got = [0u8; 12];
    ws.reader.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"server first");
    let head = head.recv_timeout(Duration::from_secs(10)).unwrap();
    let lines: Vec<&str> = head.lines().collect();
    assert_eq!(lines[0], "GET /chat?room=1 HTTP/1.1");
    let has = |name: &str| lines.iter().any(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")));
    let value = |name: &str| {
        lines.iter().find_map(|l| l.split_once(": ").filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v))
    };
    assert_eq!(value("connection"), Some("upgrade"));
    assert_eq!(value("upgrade"), Some("websocket"));
    assert_eq!(value("host"), Some("chat.example"));
    assert_eq!(value("sec-websocket-key"), Some(KEY));
    assert_eq!(value("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"), "a loopback peer is a trusted proxy");
    assert_eq!(value("x-forwarded-proto"), Some("http"));
    assert_eq!(value("x-forwarded-host"), Some("chat.example"));
    assert!(has("x-real-ip") && has("x-request-id"), "{head}");
    for hop in ["keep-alive", "te", "x-hop"] {
        assert!(!has(hop), "{hop} went upstream: {head}");
    }
    upstream.join().unwrap();
    assert!(ws.closed_within(Duration::from_secs(5)), "the upstream closed: so does the client's side");
}

#[test]
fn idle_timeout_closes_a_tunnel_and_traffic_keeps_it_open() {
    let backend = backend(&[]);
    let lb = lb_sync(&[backend.addr()], r#""tunnel_idle_timeout": 1"#);
    let mut ws = Ws::open(lb.addr);
    // Traffic every 200 ms for 2.5 s: well past the timeout counted from the start.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        ws.send(true, PING, b"");
        assert_eq!(ws.recv().opcode, PONG);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(tunnels(lb.addr), (1, 1));
    // Then silence: closed, both sides.
    assert!(ws.closed_within(Duration::from_secs(10)), "not closed when idle");
    assert!(wait_until(Duration::from_secs(5), || tunnels(lb.addr) == (0, 1)));
    assert!(wait_until(Duration::from_secs(5), || backend_entry(lb.addr, 0)["active_connections"] == 0));
}

#[test]
fn a_client_close_closes_the_upstream_side() {
    let (closed_tx, closed) = mpsc::channel();
    let (addr, _head, upstream) = fake_upstream(SWITCHED, move |mut socket| {
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest);
        let _ = closed_tx.send(rest);
    });
    let lb = lb_sync(&[addr], "");
    let (resp, ws) = Ws::connect(lb.addr, "/ws");
    assert_eq!(resp.status, 101);
    let mut ws = ws.unwrap();
    ws.send(true, TEXT, b"last words");
    drop(ws);
    let rest = closed.recv_timeout(Duration::from_secs(10)).expect("the upstream saw the end");
    assert_eq!(rest.len(), 2 + 4 + 10, "the frame arrived before the end");
    upstream.join().unwrap();
    assert!(wait_until(Duration::from_secs(5), || tunnels(lb.addr) == (0, 1)));
}

#[test]
fn an_upstream_close_closes_the_client_side() {
    let (addr, _head, upstream) = fake_upstream(SWITCHED, |mut socket| {
        socket.write_all(b"bye").unwrap();
    });
    let lb = lb_sync(&[addr], "");
    let (resp, ws) = Ws::connect(lb.addr, "/ws");
    assert_eq!(resp.status, 101);
    let mut ws = ws.unwrap();
    upstream.join().unwrap();
    let mut got = [0u8; 3];
    ws.reader.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"bye");
    assert!(ws.closed_within(Duration::from_secs(10)));
    // The client's direction stays open (a half close) until the client closes too.
    assert_eq!(tunnels(lb.addr), (1, 1));
    drop(ws);
    assert!(wait_until(Duration::from_secs(5), || tunnels(lb.addr) == (0, 1)));
}

#[test]
fn a_half_close_is_passed_on_and_the_other_direction_keeps_flowing() {
    let (addr, _head, upstream) = fake_upstream(SWITCHED, |mut socket| {
        // The client's end of stream arrives as ours...
        let mut got = Vec::new();
        socket.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"request done");
        // ...and we can still answer through the tunnel.
        socket.write_all(b"answer after your end").unwrap();
    });
    let lb = lb_sync(&[addr], "");
    let (resp, ws) = Ws::connect(lb.addr, "/ws");
    assert_eq!(resp.status, 101);
    let mut ws = ws.unwrap();
    ws.reader.get_mut().write_all(b"request done").unwrap();
    ws.socket().shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    ws.reader.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"answer after your end");
    upstream.join().unwrap();
    assert!(wait_until(Duration::from_secs(5), || tunnels(lb.addr) == (0, 1)));
    assert!(lb.wait_log("\" 101 21 ", Duration::from_secs(5)), "21 bytes to the client: {}", lb.log());
}

#[test]
fn a_reader_that_stops_reading_stops_the_sender() {
    let (go_tx, go) = mpsc::channel::<()>();
    let (count_tx, count) = mpsc::channel();
    let (addr, _head, upstream) = fake_upstream(SWITCHED, move |mut socket| {
        // Read nothing until told: the tunnel must stop reading the client rather than buffer.
        go.recv().unwrap();
        let mut total = 0u64;
        let mut buf = [0u8; 64 * 1024];
        loop {
            match socket.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        let _ = count_tx.send(total);
    });
    let lb = lb_sync(&[addr], "");
    let (resp, ws) = Ws::connect(lb.addr, "/ws");
    assert_eq!(resp.status, 101);
    let ws = ws.unwrap();
    let mut socket = ws.reader.into_inner();
    socket.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0u64;
    // Bounded: 256 MiB would pass only if something buffered without limit.
    while sent < 256 << 20 {
        match socket.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => panic!("write failed: {e}"),
        }
    }
    eprintln!("the client could send {} KiB before the stalled upstream stopped it", sent / 1024);
    assert!(sent < 64 << 20, "{sent} bytes accepted with nobody reading: no backpressure");
    go_tx.send(()).unwrap();
    socket.shutdown(Shutdown::Write).unwrap();
    let total = count.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(total, sent, "every byte arrived, none twice");
    upstream.join().unwrap();
}

#[test]
fn least_connections_counts_an_open_tunnel() {
    let a = backend(&[]);
    let b = backend(&[]);
    let lb = lb_sync(&[a.addr(), b.addr()], r#""algorithm": "least_connections", "access_log": false"#);
    let mut ws = Ws::open(lb.addr);
    let tunnelled = if backend_entry(lb.addr, 0)["tunnels"]["active"] == 1 { 0 } else { 1 };
    let other: &ChildProcess = if tunnelled == 0 { &b } else { &a };
    let other_id = other.ready_line.split(' ').next().unwrap().to_string();
    for _ in 0..10 {
        let resp = get(lb.addr, "/");
        assert_eq!(resp.json()["server_info"]["id"], other_id.as_str(), "the backend with the tunnel is busier");
        // The answer's in-flight count ends just after its last byte: the next pick must see
        // 1 (the tunnel) against 0, not a tie.
        let idle = || backend_entry(lb.addr, 1 - tunnelled)["active_connections"] == 0;
        assert!(wait_until(Duration::from_secs(5), idle));
    }
    ws.echo(TEXT, b"still here");
}

#[test]
fn sigterm_closes_tunnels_after_a_short_drain() {
    let backend = backend(&[]);
    let mut lb = lb_sync(&[backend.addr()], r#""shutdown_timeout": 30"#);
    let mut ws = Ws::open(lb.addr);
    ws.echo(TEXT, b"before");
    let signalled = Instant::now();
    lb.signal("TERM");
    assert!(ws.closed_within(Duration::from_secs(10)), "the tunnel was not closed");
    let status = lb.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0), "{}", lb.log());
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(10), "a tunnel held the stop for {took:?} (shutdown_timeout is 30 s)");
    assert!(lb.log().contains("\"GET /ws HTTP/1.1\" 101 "), "its access line is written: {}", lb.log());
}

/// Python's `websockets` (its asyncio client: Debian 12 has 10.4, pip 15+; both have it).
const PYTHON_CLIENT: &str = r#"
import asyncio, sys, websockets

async def main(uri):
    async with websockets.connect(uri, max_size=None) as ws:
        await ws.send("hello from python")
        assert await ws.recv() == "hello from python"
        data = bytes(range(256)) * 1000
        await ws.send(data)
        assert await ws.recv() == data
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)
    assert ws.close_code == 1000, ws.close_code
    print("ok")

asyncio.run(main(sys.argv[1]))
"#;

#[test]
fn python_websockets_client_echoes_through_lb_sync() {
    if !common::tools::require(&[&common::tools::PYTHON_WEBSOCKETS]) {
        return;
    }
    let backend = backend(&[]);
    let lb = lb_sync(&[backend.addr()], "");
    let out = Command::new("python3")
        .args(["-c", PYTHON_CLIENT, &format!("ws://{}/ws", lb.addr)])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim() == "ok", "python websockets client: {said}");
    assert!(wait_until(Duration::from_secs(5), || tunnels(lb.addr) == (0, 1)), "{:?}", tunnels(lb.addr));
}

#[test]
fn an_upgrade_to_an_https_backend_is_refused_clearly_and_not_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let lb = Lb::start_with_args(&[], r#""access_log": true"#, &["--backend", &format!("https://127.0.0.1:{port}")]);
    let (resp, ws) = Ws::connect(lb.addr, "/ws");
    assert_eq!((resp.status, ws.is_none()), (501, true), "{resp:?}");
    assert!(resp.text().contains("https:// backend is not supported yet"), "{}", resp.text());
    assert!(listener.accept().is_err(), "nothing may reach the backend");
    let entry = backend_entry(lb.addr, 0);
    assert_eq!((entry["total_requests"].as_u64(), entry["failed_requests"].as_u64()), (Some(0), Some(0)), "{entry}");
    assert_eq!(entry["circuit_breaker"]["failure_count"], 0, "not the backend's failure: {entry}");
    assert_eq!(tunnels(lb.addr), (0, 0));
}
