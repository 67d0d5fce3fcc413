//! Request buffering off (`"request_buffering": false`, nginx's `proxy_request_buffering off`):
//! a body streams to the backend while the client sends it, a chunked one goes on chunked, a
//! body the client breaks off never reaches the backend as complete, a client slower than the
//! minimum rate is cut off with `400`, and a backend's early answer is relayed. Real lb-sync
//! processes and an in-process backend that reports what it receives as it receives it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::faults::answers_413_after_the_head;
use common::lb::Lb;
use common::{chunked, Conn};

/// What the recording backend saw of one request.
#[derive(Debug, PartialEq)]
enum Seen {
    /// The request head, lower-cased.
    Head(String),
    /// Body bytes (as received on the wire) so far.
    Bytes(usize),
    /// The body as received, complete by its framing; the backend answered 200.
    Complete(Vec<u8>),
    /// The connection ended before the body did.
    CutShort(usize),
}

/// A backend for one connection that reports every step on a channel. Complete means
/// `Content-Length` bytes, or a chunked body's last chunk.
fn recording_backend() -> (SocketAddr, Receiver<Seen>) {
    recording_backend_reading_every(Duration::ZERO)
}

/// The same, pausing before each read of the body (a backend slower than its client).
fn recording_backend_reading_every(pause: Duration) -> (SocketAddr, Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = stream.read(&mut buf).unwrap_or(0);
            if n == 0 {
                let _ = tx.send(Seen::CutShort(0));
                return;
            }
            got.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
        let length =
            head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse::<usize>().unwrap());
        let _ = tx.send(Seen::Head(head));
        let mut body = got.split_off(head_end);
        let complete = |body: &[u8]| match length {
            Some(n) => body.len() >= n,
            None => body.ends_with(b"0\r\n\r\n"),
        };
        while !complete(&body) {
            std::thread::sleep(pause);
            let n = stream.read(&mut buf).unwrap_or(0);
            if n == 0 {
                let _ = tx.send(Seen::CutShort(body.len()));
                return;
            }
            body.extend_from_slice(&buf[..n]);
            let _ = tx.send(Seen::Bytes(body.len()));
        }
        let answer = format!("received {} bytes", body.len());
        let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
        let _ = tx.send(Seen::Complete(body));
    });
    (addr, rx)
}

/// Waits for the backend to report something that `done` accepts; panics after 20 s.
fn wait_for(seen: &Receiver<Seen>, mut done: impl FnMut(&Seen) -> bool) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = seen.recv_timeout(left).expect("the backend reported nothing more");
        if done(&event) {
            return event;
        }
    }
}

/// With bodies up to 8 MiB (the default limit is 1 MiB).
const STREAMING: &str = r#""request_buffering": false, "threads": 4, "max_body_bytes": 8388608"#;

fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

#[test]
fn a_body_reaches_the_backend_while_the_client_is_still_sending_it() {
    let (addr, seen) = recording_backend();
    let lb = Lb::start(&[addr], STREAMING);
    let body = pattern(300_000);
    let mut conn = Conn::open(lb.addr);
    conn.send(format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
    conn.send(&body[..100_000]);
    // The client holds back the rest until the backend has the first part: with buffering on,
    // the backend would see nothing until the body was whole, and this would time out.
    let Seen::Head(head) = wait_for(&seen, |s| matches!(s, Seen::Head(_))) else { unreachable!() };
    assert!(head.contains("content-length: 300000"), "the declared length goes on: {head}");
    wait_for(&seen, |s| matches!(s, Seen::Bytes(n) if *n >= 100_000));
    conn.send(&body[100_000..]);
    let Seen::Complete(received) = wait_for(&seen, |s| matches!(s, Seen::Complete(_))) else { unreachable!() };
    assert!(received == body, "the backend got the body exactly");
    let resp = conn.response();
    assert_eq!((resp.status, resp.text().as_str()), (200, "received 300000 bytes"));
}

#[test]
fn a_backend_slower_than_its_client_paces_the_upload_and_gets_every_byte() {
    // 4 MB read 16 KiB at a time with a pause before each read: the poller's channel fills
    // again and again, it stops reading the client and resumes when there is room.
    let (addr, seen) = recording_backend_reading_every(Duration::from_millis(1));
    let lb = Lb::start(&[addr], STREAMING);
    let body = pattern(4 << 20);
    let mut conn = Conn::open(lb.addr);
    let rss_before = common::proc_status(lb.pid(), "VmRSS");
    conn.send(format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
    conn.send(&body);
    let Seen::Complete(received) = wait_for(&seen, |s| matches!(s, Seen::Complete(_))) else { unreachable!() };
    assert!(received == body, "the backend got the body exactly");
    assert_eq!(conn.response().status, 200);
    let growth = common::proc_status(lb.pid(), "VmRSS").saturating_sub(rss_before);
    eprintln!("RSS growth while streaming 4 MB to a slow backend: {growth} kB");
    assert!(growth < 3 * 1024, "the upload was buffered, not paced: RSS +{growth} kB");
}

#[test]
fn a_chunked_body_streams_on_chunked() {
    let (addr, seen) = recording_backend();
    let lb = Lb::start(&[addr], STREAMING);
    let body = pattern(100_000);
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let wire = chunked(&body, &[30_000, 30_000, 40_000]);
    let first_two = wire.len() - (40_000 + 7 + 5); // the last chunk ("9c40\r\n...\r\n") and "0\r\n\r\n"
    conn.send(&wire[..first_two]);
    let Seen::Head(head) = wait_for(&seen, |s| matches!(s, Seen::Head(_))) else { unreachable!() };
    assert!(head.contains("transfer-encoding: chunked") && !head.contains("content-length"), "{head}");
    wait_for(&seen, |s| matches!(s, Seen::Bytes(n) if *n >= 60_000));
    conn.send(&wire[first_two..]);
    let Seen::Complete(received) = wait_for(&seen, |s| matches!(s, Seen::Complete(_))) else { unreachable!() };
    let decoded = common::read_chunked(&mut &received[..]).expect("valid chunked framing upstream");
    assert!(decoded == body, "the backend got the body exactly");
    assert_eq!(conn.response().status, 200);
}

#[test]
fn a_body_the_client_breaks_off_never_reaches_the_backend_as_complete() {
    let (addr, seen) = recording_backend();
    let lb = Lb::start(&[addr], STREAMING);
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n");
    conn.send(&pattern(50_000));
    wait_for(&seen, |s| matches!(s, Seen::Bytes(n) if *n >= 50_000));
    conn.reader.get_mut().shutdown(std::net::Shutdown::Write).unwrap();
    match wait_for(&seen, |s| matches!(s, Seen::CutShort(_) | Seen::Complete(_))) {
        Seen::CutShort(n) => assert_eq!(n, 50_000),
        other => panic!("the backend took a truncated body for complete: {other:?}"),
    }
    // The client is told (it may still read) and the connection ends.
    let resp = conn.response();
    assert_eq!(resp.status, 400);
    assert!(conn.is_closed());
    // Not the backend's failure: counted as a client abort (HAProxy's cli_abrt), once, and
    // the request once with the 400 the client got.
    let backends = Conn::open(lb.addr).get("/lb/backends").json();
    let b = &backends[0];
    assert_eq!(
        (&b["total_requests"], &b["failed_requests"], &b["client_aborts"], &b["circuit_breaker"]["failure_count"]),
        (&serde_json::json!(1), &serde_json::json!(0), &serde_json::json!(1), &serde_json::json!(0)),
        "{b}"
    );
    let stats = Conn::open(lb.addr).get("/lb/stats").json();
    assert_eq!(
        (&stats["total_requests"], &stats["answered_by_balancer"]["4xx"]),
        (&serde_json::json!(1), &serde_json::json!(1)),
        "{stats}"
    );
}

#[test]
fn a_client_slower_than_the_minimum_rate_is_cut_off() {
    // 1 s plus one second per 100 000 bytes: 10 bytes every 100 ms cannot keep up.
    let (addr, seen) = recording_backend();
    let lb = Lb::start(
        &[addr],
        r#""request_buffering": false, "threads": 4, "client_io_timeout": 1, "request_body_min_rate": 100000"#,
    );
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
    let started = Instant::now();
    let mut sent = 0;
    let mut cut = false;
    while !cut && Instant::now() < started + Duration::from_secs(10) {
        if conn.reader.get_mut().write_all(&[b'x'; 10]).is_err() {
            break;
        }
        sent += 10;
        // 100 ms between writes, watching what the backend sees meanwhile.
        let next_write = Instant::now() + Duration::from_millis(100);
        while let Ok(event) = seen.recv_timeout(next_write.saturating_duration_since(Instant::now())) {
            if let Seen::CutShort(n) = event {
                assert_eq!(n, sent, "the backend got what was sent, and no end");
                cut = true;
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "never cut off ({sent} bytes sent)");
    let resp = conn.response();
    assert_eq!((resp.status, resp.text().trim()), (400, "the request body was cut short"));
    assert!(conn.is_closed());
    eprintln!("cut off after {elapsed:?} and {sent} bytes");
}

#[test]
fn an_early_answer_is_relayed_and_the_rest_of_the_body_is_not_read_as_a_request() {
    let (addr, _) = answers_413_after_the_head();
    let lb = Lb::start(&[addr], STREAMING);
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
    // The rest of the body looks like a request: it must never be taken for one.
    let fake = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
    let _ = conn.reader.get_mut().write_all(&fake[..fake.len().min(20_000)]);
    let resp = conn.response();
    assert_eq!((resp.status, resp.text().as_str()), (413, "too large"));
    assert!(conn.is_closed(), "the connection ends after an early answer to a body left unread");
}

// ---- Found in review of the streaming uploads (commits 15aea88, f7a3707). ----

use lb_sync::server::{BodyBuffering, Handler, Limits, Request, Response, Server, ServerConfig};

/// Waits `pause` before reading a body whole; answers the body's length (or, without a body, the
/// target).
struct LateReader {
    pause: Duration,
}

impl Handler for LateReader {
    fn handle(&self, mut request: Request) -> Response {
        if request.target() != "/slow" {
            return Response::text(200, request.target().to_string());
        }
        std::thread::sleep(self.pause);
        let mut body = Vec::new();
        match request.body().read_to_end(&mut body) {
            Ok(_) => Response::text(200, format!("{} bytes", body.len())),
            Err(e) => Response::text(400, e.to_string()),
        }
    }
}

fn streaming_server(pause: Duration) -> Server {
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        threads: 4,
        limits: Limits { keep_alive_timeout: Duration::from_secs(5), ..Limits::default() },
        body_buffering: BodyBuffering { request_buffering: false, ..BodyBuffering::default() },
        ..ServerConfig::default()
    };
    Server::start(config, LateReader { pause }).unwrap()
}

/// Sends a streamed chunked body in pieces so that the channel is full (four pieces, each taken)
/// when the last chunk comes: its end waits in the poller for room (the upload has ended but is
/// still `Streaming`).
fn send_body_whose_end_waits_for_room(conn: &mut Conn) {
    let gap = Duration::from_millis(60);
    conn.send(b"POST /slow HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    std::thread::sleep(gap);
    for _ in 0..4 {
        let mut chunk = b"3E8\r\n".to_vec();
        chunk.extend_from_slice(&pattern(1000));
        chunk.extend_from_slice(b"\r\n");
        conn.send(&chunk);
        std::thread::sleep(gap);
    }
    conn.send(b"0\r\n\r\n");
    std::thread::sleep(gap);
}

#[test]
fn a_request_pipelined_after_a_streamed_body_whose_end_waited_for_room_is_answered() {
    // The readiness event of the pipelined request arrives while the connection is `Streaming`
    // with its end held: read_upload returned at once and the edge was lost, the worker gave the
    // connection back quietly (input_while_busy false), and the poller waited for an event that
    // had already come: the request was never answered, the connection closed at the
    // keep-alive timeout.
    let server = streaming_server(Duration::from_millis(800));
    let mut conn = Conn::open(server.local_addr());
    conn.reader.get_ref().set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    send_body_whose_end_waits_for_room(&mut conn);
    conn.send(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n");
    let first = conn.response();
    assert_eq!((first.status, first.text().as_str()), (200, "4000 bytes\n"));
    let second = common::read_response(&mut conn.reader, false)
        .unwrap_or_else(|e| panic!("the pipelined request was never answered: {e}"));
    assert_eq!(second.text(), "/next\n");
    server.stop(Duration::from_secs(1));
}

#[test]
fn a_client_that_half_closes_after_a_streamed_body_whose_end_waited_gets_eof_after_its_answer() {
    // The same lost edge with a FIN: the connection idled until the keep-alive timeout.
    let server = streaming_server(Duration::from_millis(800));
    let mut conn = Conn::open(server.local_addr());
    conn.reader.get_ref().set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    send_body_whose_end_waits_for_room(&mut conn);
    conn.reader.get_mut().shutdown(std::net::Shutdown::Write).unwrap();
    let first = conn.response();
    assert_eq!((first.status, first.text().as_str()), (200, "4000 bytes\n"));
    let started = Instant::now();
    assert!(conn.is_closed(), "EOF after the answer");
    assert!(started.elapsed() < Duration::from_secs(2), "EOF only after {:?}", started.elapsed());
    server.stop(Duration::from_secs(1));
}

#[test]
fn an_interim_1xx_from_the_backend_is_not_taken_for_an_early_answer() {
    // A backend may send 1xx (103 Early Hints, 102 Processing) before it reads the body (RFC
    // 9110 15.2). early_answer_arrived took any unread byte for a final answer: the rest of the
    // body was dropped, the backend waited for it, lb-sync waited for the final answer, and the
    // client got 504 after request_timeout (the backend a truncated body).
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap();
    let (tx, seen) = channel();
    std::thread::spawn(move || {
        let (mut stream, _) = backend.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let _ = stream.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n");
        let mut body = vec![0u8; 200_000];
        match stream.read_exact(&mut body) {
            Ok(()) => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ncomplete");
                let _ = tx.send(Seen::Complete(body));
            }
            Err(_) => {
                let _ = tx.send(Seen::CutShort(0));
            }
        }
    });
    let lb = Lb::start(&[addr], r#""request_buffering": false, "threads": 4, "request_timeout": 3"#);
    let body = pattern(200_000);
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n");
    conn.send(&body[..100_000]);
    // Longer than the 50 ms between two looks for an early answer.
    std::thread::sleep(Duration::from_millis(400));
    conn.send(&body[100_000..]);
    let resp = conn.response();
    assert_eq!((resp.status, resp.text().as_str()), (200, "complete"));
    match seen.recv_timeout(Duration::from_secs(5)) {
        Ok(Seen::Complete(received)) => assert!(received == body, "the backend got the body exactly"),
        other => panic!("the backend did not get the whole body: {other:?}"),
    }
}

/// Reads a request head (byte by byte, so nothing after it is taken), lower-cased.
fn read_head_of(stream: &mut std::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).to_lowercase())
}

#[test]
fn a_streamed_chunked_body_of_an_upgrade_request_goes_upstream_framed() {
    // Upgrade requests go on a connection of their own (send_own), which writes the body as it
    // reads it. A streamed chunked body has no length: the head went upstream with neither
    // Content-Length nor Transfer-Encoding, and the decoded body after it, which the backend
    // reads as the next request: a request smuggled past lb-sync (its X-Forwarded-For
    // rewriting, its routing and limits).
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap();
    let (tx, seen) = channel();
    std::thread::spawn(move || {
        let (mut stream, _) = backend.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let head = read_head_of(&mut stream).unwrap_or_default();
        let mut after = Vec::new();
        let _ = stream.read_to_end(&mut after);
        let _ = tx.send((head, String::from_utf8_lossy(&after).into_owned()));
    });
    let lb = Lb::start(&[addr], STREAMING);
    let mut conn = Conn::open(lb.addr);
    conn.send(
        b"POST /up HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    std::thread::sleep(Duration::from_millis(100));
    let smuggled = b"GET /admin HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n";
    conn.send(&chunked(smuggled, &[smuggled.len()]));
    let (head, after) = seen.recv_timeout(Duration::from_secs(10)).expect("the backend saw the request");
    assert!(
        head.contains("transfer-encoding: chunked") || head.contains("content-length:"),
        "the body went upstream unframed; head:\n{head}\nthen:\n{after}"
    );
    assert!(!after.starts_with("GET /admin"), "a request smuggled to the backend:\n{after}");
}

#[test]
fn a_streamed_body_of_an_upgrade_request_never_gets_zeros_from_another_connection() {
    // early_answer_arrived asks about the connection this worker thread last sent on through
    // the shared agent. send_own (upgrade requests) never updates it: a body streamed there,
    // waiting for its client, asked about a pooled idle connection of an earlier request, and
    // when that one had unread bytes (a backend's 408 on an idle keep-alive connection), the
    // rest of the declared length was made up with zeros and written to this backend, which
    // had not answered at all.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap();
    let (tx, seen) = channel();
    std::thread::spawn(move || {
        for stream in backend.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let Some(head) = read_head_of(&mut stream) else { return };
                if !head.contains("upgrade: websocket") {
                    // A plain GET: answered and kept alive, then, idle, a 408 the proxy never reads.
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = stream.write_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n");
                    std::thread::sleep(Duration::from_secs(10));
                    return;
                }
                let mut body = vec![0u8; 1000];
                let got = stream.read_exact(&mut body).map(|()| body);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
                let _ = tx.send(got.map_err(|e| e.to_string()));
            });
        }
    });
    // One worker: the GET and the upgrade request run on the same thread.
    let lb = Lb::start(&[addr], r#""request_buffering": false, "threads": 1"#);
    let mut conn = Conn::open(lb.addr);
    assert_eq!(conn.get("/plain").status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let mut up = Conn::open(lb.addr);
    up.send(
        b"POST /up HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 1000\r\n\r\n",
    );
    up.send(&[b'x'; 500]);
    std::thread::sleep(Duration::from_millis(300));
    up.send(&[b'x'; 500]);
    let body = seen.recv_timeout(Duration::from_secs(10)).expect("the backend got the request").expect("a body");
    let zeros = body.iter().filter(|&&b| b == 0).count();
    assert_eq!(zeros, 0, "the backend got {zeros} zero bytes it was never sent by the client");
    assert_eq!(up.response().status, 200);
}
