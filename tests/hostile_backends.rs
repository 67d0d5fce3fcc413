//! Backends that break HTTP/1.1's one-answer-per-request rule or its framing, in-process on
//! loopback behind an `lb-sync` child: a late or glued extra response reaches no later client
//! (the connection it came on is never reused, nor, for a while, any of that backend's), an
//! unasked-for `101` and a malformed chunked answer are a `502` at once.
//!
//! Every client reads with a timeout of a few seconds, far below the balancer's request timeout
//! (30 s), so a regression that hangs fails the test instead of stalling it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::lb::Lb;
use common::{api, read_response, wait_until, Conn};

/// What a client waits for any answer at most: a hang fails the test.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How late the unsolicited response comes.
const LATE: Duration = Duration::from_millis(300);

/// How a hostile backend misbehaves; besides, it answers each request with `200` and the
/// request's `id` (`GET /?id=...`) as the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hostile {
    /// Answers, then [`LATE`] later writes a second, unsolicited response on the connection,
    /// reading nothing meanwhile. A request that came in the meantime is answered right after
    /// the extra one, in the same write (so what the balancer sees does not depend on how fast
    /// this thread runs): to the balancer, the extra response is that request's answer.
    LateExtra,
    /// As [`Hostile::LateExtra`], for the first answer only: the extra response comes while the
    /// connection is idle in the balancer's pool.
    LateExtraOnce,
    /// Writes an extra response in the same write as the answer, right after it.
    GluedExtra,
    /// Answers chunked, with an extra response after the last chunk, in the same write.
    ExtraAfterChunkedEnd,
    /// Answers `101 Switching Protocols` to every request (none asks for an upgrade).
    Switches,
    /// Answers chunked with bare-LF chunk lines (`5\nhello\n0\n\n`).
    BareLfChunks,
    /// Answers chunked with a chunk-size line that is no number.
    BadChunkSize,
}

/// The unsolicited response: a complete `200` a client could take for its own.
fn extra_response(id: &str) -> Vec<u8> {
    let body = format!("extra after id={id}");
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// The honest answer to the request with this id.
fn answer(id: &str) -> Vec<u8> {
    let body = format!("id={id}");
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

struct HostileBackend {
    addr: SocketAddr,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    /// Requests read.
    requests: Arc<AtomicUsize>,
    /// Unsolicited responses written.
    extras: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// The server side of each connection, shut down when the test ends.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl HostileBackend {
    fn start(hostile: Hostile) -> HostileBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let extras = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (c, r, x, s, k) = (
            Arc::clone(&connections),
            Arc::clone(&requests),
            Arc::clone(&extras),
            Arc::clone(&stop),
            Arc::clone(&sockets),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        k.lock().unwrap().push(stream.try_clone().unwrap());
                        let (r, x) = (Arc::clone(&r), Arc::clone(&x));
                        std::thread::spawn(move || serve(stream, hostile, &r, &x));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        HostileBackend { addr, connections, requests, extras, stop, sockets, thread: Some(thread) }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn extras(&self) -> usize {
        self.extras.load(Ordering::SeqCst)
    }
}

impl Drop for HostileBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for socket in self.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The id of the first complete request head in `buf` (these tests send no bodies), taken out
/// of it.
fn take_request(buf: &mut Vec<u8>) -> Option<String> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let target = head.split(' ').nth(1).unwrap_or("");
    Some(target.split("id=").nth(1).unwrap_or("none").to_string())
}

/// Reads until a request head is complete; its id, or `None` at the end of the connection.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(id) = take_request(buf) {
            return Some(id);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A request that already arrived, without waiting for one.
fn request_waiting(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    stream.set_nonblocking(true).ok()?;
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        buf.extend_from_slice(&chunk[..n]);
    }
    stream.set_nonblocking(false).ok()?;
    take_request(buf)
}

fn serve(mut stream: TcpStream, hostile: Hostile, requests: &AtomicUsize, extras: &AtomicUsize) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    while let Some(mut id) = read_request(&mut stream, &mut buf) {
        requests.fetch_add(1, Ordering::SeqCst);
        let chunked =
            |lines: &str| format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{lines}").into_bytes();
        let mut out = match hostile {
            Hostile::LateExtra | Hostile::LateExtraOnce => answer(&id),
            Hostile::GluedExtra => [answer(&id), extra_response(&id)].concat(),
            Hostile::ExtraAfterChunkedEnd => {
                let body = format!("id={id}");
                [chunked(&format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())), extra_response(&id)].concat()
            }
            Hostile::Switches => {
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_vec()
            }
            Hostile::BareLfChunks => chunked("5\nhello\n0\n\n"),
            Hostile::BadChunkSize => chunked("zz\r\nhello\r\n0\r\n\r\n"),
        };
        loop {
            if stream.write_all(&out).is_err() {
                return;
            }
            let late = match hostile {
                Hostile::LateExtra => true,
                Hostile::LateExtraOnce => extras.load(Ordering::SeqCst) == 0,
                _ => false,
            };
            if !late {
                break;
            }
            std::thread::sleep(LATE);
            out = extra_response(&id);
            extras.fetch_add(1, Ordering::SeqCst);
            match request_waiting(&mut stream, &mut buf) {
                Some(next) => {
                    requests.fetch_add(1, Ordering::SeqCst);
                    out.extend_from_slice(&answer(&next));
                    id = next;
                }
                None => {
                    let _ = stream.write_all(&out);
                    break;
                }
            }
        }
    }
}

/// A client's connection with a short read timeout.
fn client(lb: &Lb) -> Conn {
    let conn = Conn::open(lb.addr);
    conn.reader.get_ref().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    conn
}

/// Each id's GET on a client connection of its own, one after another: the answers that were
/// not the client's own (`200` with its id), as `id: what it got`.
fn wrong_answers(lb: &Lb, ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut wrong = Vec::new();
    for id in ids {
        let mut conn = client(lb);
        conn.send(format!("GET /?id={id} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes());
        match read_response(&mut conn.reader, false) {
            Ok(resp) if resp.status == 200 && resp.body == format!("id={id}").as_bytes() => {}
            Ok(resp) => wrong.push(format!("{id}: {} {}", resp.status, resp.text())),
            Err(e) => wrong.push(format!("{id}: {e}")),
        }
    }
    wrong
}

fn ids(range: std::ops::Range<usize>) -> impl Iterator<Item = String> {
    range.map(|i| format!("c{i}"))
}

/// The backend's `upstream_connections` as `/lb/backends` shows them.
fn upstream_connections(lb: &Lb) -> serde_json::Value {
    api::backends(lb.addr)[0]["upstream_connections"].clone()
}

/// Reuse as nginx does (`upstream_reuse` always): the detections below are what protects clients.
const REUSE_ALWAYS: &str = r#""upstream_reuse": "always""#;

#[test]
fn a_late_extra_response_reaches_no_later_client() {
    // By default (`upstream_reuse` safe, HAProxy's) a client connection's first request never
    // goes on a connection another client used: none of the 51 gets another's answer.
    let backend = HostileBackend::start(Hostile::LateExtra);
    let lb = Lb::start(&[backend.addr], "");
    assert_eq!(wrong_answers(&lb, ids(0..51)), Vec::<String>::new());
    assert_eq!(backend.connections(), 51, "a connection each");
    drop(lb);

    // Reusing always, c1's request waits on c0's connection when c0's extra response comes:
    // nothing tells the two apart then. What follows the extra response (c1's own answer) shows
    // the backend out of step: no connection of it is reused from then on.
    let backend = HostileBackend::start(Hostile::LateExtra);
    let lb = Lb::start(&[backend.addr], REUSE_ALWAYS);
    let wrong = wrong_answers(&lb, ids(0..51));
    assert!(wrong.iter().all(|w| w.starts_with("c1: ")), "wrong answers: {wrong:?}");
    assert!(backend.extras() >= 1);
    let counted = upstream_connections(&lb);
    assert!(counted["unsolicited"].as_u64() >= Some(1), "{counted}");
    assert_eq!(counted["idle"], 0, "{counted}");
    assert!(backend.connections() >= 50, "c2..c50 each on a connection of their own: {}", backend.connections());
}

#[test]
fn a_keep_alive_client_reuses_backend_connections_after_its_first_request() {
    let honest = common::backend(&[]);
    let lb = Lb::start(&[honest.addr()], "");
    for _ in 0..2 {
        let mut conn = client(&lb);
        for i in 0..5 {
            conn.send(format!("GET /?n={i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            let resp = read_response(&mut conn.reader, false).expect("an answer");
            assert_eq!(resp.status, 200);
        }
    }
    // Each client connection's first request opened one; its later ones reused an idle one.
    let counted = upstream_connections(&lb);
    assert_eq!((counted["opened"].as_u64(), counted["reused"].as_u64()), (Some(2), Some(8)), "{counted}");
}

#[test]
fn an_extra_response_on_an_idle_connection_closes_it() {
    let backend = HostileBackend::start(Hostile::LateExtraOnce);
    let lb = Lb::start(&[backend.addr], REUSE_ALWAYS);
    assert_eq!(wrong_answers(&lb, ids(0..1)), Vec::<String>::new());
    // The extra response is on the idle connection before the next client comes.
    assert!(wait_until(Duration::from_secs(5), || backend.extras() == 1));
    assert_eq!(wrong_answers(&lb, ids(1..51)), Vec::<String>::new());
    let counted = upstream_connections(&lb);
    assert_eq!(counted["unsolicited"], 1, "{counted}");
    assert_eq!(counted["reused"], 0, "no connection reused after the backend was out of step: {counted}");
    assert_eq!(backend.connections(), 51);
}

#[test]
fn an_extra_response_glued_to_the_answer_reaches_no_client() {
    for hostile in [Hostile::GluedExtra, Hostile::ExtraAfterChunkedEnd] {
        let backend = HostileBackend::start(hostile);
        let lb = Lb::start(&[backend.addr], REUSE_ALWAYS);
        assert_eq!(wrong_answers(&lb, ids(0..50)), Vec::<String>::new(), "{hostile:?}");
        assert_eq!(backend.requests(), 50, "{hostile:?}");
        assert_eq!(backend.connections(), 50, "{hostile:?}: a connection each");
        let counted = upstream_connections(&lb);
        assert_eq!((counted["unsolicited"].as_u64(), counted["reused"].as_u64()), (Some(50), Some(0)), "{hostile:?}");
    }
}

#[test]
fn a_101_to_a_request_that_asked_for_no_upgrade_is_a_502() {
    let backend = HostileBackend::start(Hostile::Switches);
    let lb = Lb::start(&[backend.addr], "");
    let mut conn = client(&lb);
    conn.send(b"GET /?id=plain HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = read_response(&mut conn.reader, false).expect("an answer within the read timeout");
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(resp.header("upgrade"), None);
    assert_eq!(resp.header("content-length"), Some(resp.body.len().to_string().as_str()));
    // The client's connection is still good for its next request.
    conn.send(b"GET /lb/backends HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = read_response(&mut conn.reader, false).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()[0]["failed_requests"], 1, "the 101 is counted as the backend's failure");
}

#[test]
fn a_malformed_chunked_answer_is_a_502_at_once() {
    for hostile in [Hostile::BareLfChunks, Hostile::BadChunkSize] {
        let backend = HostileBackend::start(hostile);
        let lb = Lb::start(&[backend.addr], REUSE_ALWAYS);
        let mut conn = client(&lb);
        conn.send(b"GET /?id=x HTTP/1.1\r\nHost: t\r\n\r\n");
        let resp = read_response(&mut conn.reader, false).expect("an answer within the read timeout");
        assert_eq!(resp.status, 502, "{hostile:?}: {resp:?}");
        assert_eq!(backend.requests(), 1, "{hostile:?}");
        // An upgrade request goes on a connection of its own (raw.rs): its answer too.
        let mut conn = client(&lb);
        conn.send(b"GET /?id=y HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
        let resp = read_response(&mut conn.reader, false).expect("an answer within the read timeout");
        assert_eq!(resp.status, 502, "{hostile:?} to an upgrade request: {resp:?}");
    }
}

/// A backend for one connection that answers chunked: one good chunk, then, once `go` says so,
/// a bare-LF chunk line, and then holds the connection open.
fn breaks_after_the_first_chunk(go: mpsc::Receiver<()>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _ = read_request(&mut stream, &mut Vec::new());
        stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n").unwrap();
        if go.recv_timeout(Duration::from_secs(10)).is_ok() {
            let _ = stream.write_all(b"6\nsecond\n0\n\n");
        }
        // Held open: a balancer waiting for a CRLF would wait until its request timeout.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.read(&mut [0u8; 64]);
    });
    (addr, thread)
}

#[test]
fn a_chunked_answer_that_breaks_after_its_head_was_relayed_closes_the_client_at_once() {
    let (go, gate) = mpsc::channel();
    let (addr, backend) = breaks_after_the_first_chunk(gate);
    let lb = Lb::start(&[addr], "");
    let mut conn = client(&lb);
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let reader = &mut conn.reader;
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(reader, &mut line).unwrap() > 0, "closed in the head: {head:?}");
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    let mut first = [0u8; 10];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"5\r\nfirst\r\n");
    go.send(()).unwrap();
    // The rest: no final chunk, and the connection ends (a reset or a close) before the read
    // timeout, not at the balancer's request timeout.
    let mut rest = Vec::new();
    let ended = reader.read_to_end(&mut rest);
    assert!(
        !matches!(&ended, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "still open after {READ_TIMEOUT:?}: {ended:?}"
    );
    assert!(!rest.ends_with(b"0\r\n\r\n"), "a broken body must not look complete: {rest:?}");
    drop(lb);
    backend.join().unwrap();
}

#[test]
fn interim_answers_forever_are_cut_off_at_the_request_timeout() {
    // A backend that answers `102 Processing` every 100 ms (for up to 6 s) before its real
    // answer: each read is quick, but the wait for the answer's head is over after
    // request_timeout (1 s), as for a backend that trickles its head.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        read_request(&mut stream, &mut buf);
        for _ in 0..60 {
            if stream.write_all(b"HTTP/1.1 102 Processing\r\n\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    });
    let lb = Lb::start(&[addr], r#""request_timeout": 1, "max_tries": 1"#);
    let mut conn = client(&lb);
    conn.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = read_response(&mut conn.reader, false).expect("an answer within the read timeout");
    assert_eq!(resp.status, 504, "{resp:?}");
    drop(lb);
    backend.join().unwrap();
}
