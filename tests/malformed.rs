//! A corpus of hostile requests sent to a real lb-sync: truncated lines, bad versions and
//! methods, control bytes, huge and repeated headers, every framing conflict, bad chunk
//! encodings, absolute-form and CONNECT targets. Each must get a 4xx (or, where RFC 9112/9110
//! name a 5xx for it, that: 501 for a transfer coding we do not know, 505 for HTTP/2 and up
//! spoken on an HTTP/1 connection) or a clean close; none may reach the backend; no worker may
//! die; and a normal client is served the whole time.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::{Fault, FaultyBackend};
use common::lb::Lb;
use common::Conn;

/// `(name, bytes)` of every hostile request.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: &[u8]| cases.push((name.to_string(), bytes.to_vec()));
    let ok_head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    // Truncated: every prefix of a valid request that stops before its head ends (the client
    // then closes its side), and a few that stop mid-line.
    for cut in 1..ok_head.len() - 1 {
        add(&format!("truncated after {cut} bytes"), &ok_head[..cut]);
    }
    add("truncated body (Content-Length 10, 3 sent)", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
    add("truncated chunked body", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab");
    add("no final chunk", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");

    // Versions.
    for version in [
        "HTTP/1.x",
        "HTTP/1",
        "HTTP/",
        "HTTP",
        "http/1.1",
        "HTTP/01.1",
        "HTTP/1.10",
        "HTTZ/1.1",
        "HTTP/1.1.1",
        "HTTP/-1.1",
        "HTTP/1.2",
        "HTTP/0.9",
        "HTTP/2.0",
        "HTTP/3.0",
        "HTTP/9.9",
        "HTTP/1.1 extra",
        "HTTP/\u{0}1.1",
        "HTTP/1.1\u{7f}",
    ] {
        add(&format!("version {version:?}"), format!("GET / {version}\r\nHost: a\r\n\r\n").as_bytes());
    }
    add("HTTP/0.9 request line", b"GET /\r\n\r\n");
    add("no target, no version", b"GET\r\nHost: a\r\n\r\n");

    // Methods that are not tokens.
    for method in
        ["G ET", "GET\u{0}", "GE(T", "GET@", "{GET}", "GET;", "\u{7f}GET", "GÉT", "GET\t", "[GET]", "GET\"", "GE/T"]
    {
        add(&format!("method {method:?}"), format!("{method} / HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    add("empty method", b" / HTTP/1.1\r\nHost: a\r\n\r\n");
    add("a method of 9000 bytes", format!("{} / HTTP/1.1\r\nHost: a\r\n\r\n", "G".repeat(9000)).as_bytes());

    // Control bytes in the target, header names and values.
    for byte in [0u8, 1, 8, 0x0b, 0x0c, 0x1b, 0x7f] {
        let mut target = b"GET /a".to_vec();
        target.push(byte);
        target.extend_from_slice(b"b HTTP/1.1\r\nHost: a\r\n\r\n");
        add(&format!("byte {byte:#04x} in the target"), &target);
        let mut name = b"GET / HTTP/1.1\r\nHost: a\r\nX-A".to_vec();
        name.push(byte);
        name.extend_from_slice(b"b: 1\r\n\r\n");
        add(&format!("byte {byte:#04x} in a header name"), &name);
        if byte != 0x0b && byte != 0x0c {
            let mut value = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a".to_vec();
            value.push(byte);
            value.extend_from_slice(b"b\r\n\r\n");
            add(&format!("byte {byte:#04x} in a header value"), &value);
        }
    }
    add("bare CR in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n");
    add("bare CR ending the request line", b"GET / HTTP/1.1\rHost: a\r\n\r\n");
    add("NUL before the request", b"\0GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    add("space before the first header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n");
    add("a space in the target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n");
    add("a tab in the target", b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n");

    // Huge and repeated headers.
    let huge = "x".repeat(40 * 1024);
    add("a 40 KiB header value", format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {huge}\r\n\r\n").as_bytes());
    add("a 40 KiB header name", format!("GET / HTTP/1.1\r\nHost: a\r\n{huge}: 1\r\n\r\n").as_bytes());
    add("a 9 KiB target", format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9 * 1024)).as_bytes());
    add("a 200 KiB target", format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(200 * 1024)).as_bytes());
    let many: String = (0..150).map(|i| format!("X-{i}: {i}\r\n")).collect();
    add("150 headers", format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes());
    let same: String = (0..101).map(|_| "Cookie: a=b\r\n".to_string()).collect();
    add("the same header 101 times", format!("GET / HTTP/1.1\r\nHost: a\r\n{same}\r\n").as_bytes());
    let hosts: String = (0..50).map(|i| format!("Host: h{i}\r\n")).collect();
    add("50 Host headers", format!("GET / HTTP/1.1\r\n{hosts}\r\n").as_bytes());
    add("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    add("no Host on HTTP/1.1", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n");
    add("a header line without a colon", b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n");
    add("a space before the colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n");
    add("a tab before the colon", b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n");
    add("an empty header name", b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n");
    add("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n");
    add(
        "a 1 MiB head of headers",
        format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X-A: 1\r\n".repeat(130_000)).as_bytes(),
    );
    add("Expect: something else", b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n");

    // Framing: every conflict, for a POST and a GET.
    let framings: &[(&str, &str)] = &[
        ("CL and TE", "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"),
        ("TE and CL", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
        ("two Content-Lengths that agree", "Content-Length: 3\r\nContent-Length: 3\r\n"),
        ("two Content-Lengths that differ", "Content-Length: 3\r\nContent-Length: 4\r\n"),
        ("a Content-Length list", "Content-Length: 3, 3\r\n"),
        ("a negative Content-Length", "Content-Length: -3\r\n"),
        ("a signed Content-Length", "Content-Length: +3\r\n"),
        ("a hex Content-Length", "Content-Length: 0x3\r\n"),
        ("an exponent Content-Length", "Content-Length: 3e0\r\n"),
        ("a fractional Content-Length", "Content-Length: 3.0\r\n"),
        ("an empty Content-Length", "Content-Length: \r\n"),
        ("a Content-Length with letters", "Content-Length: three\r\n"),
        ("a Content-Length over u64", "Content-Length: 99999999999999999999999\r\n"),
        ("a Content-Length over the body limit", "Content-Length: 1099511627776\r\n"),
        ("chunked twice", "Transfer-Encoding: chunked, chunked\r\n"),
        ("chunked in two fields", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
        ("chunked, then gzip", "Transfer-Encoding: chunked, gzip\r\n"),
        ("gzip alone", "Transfer-Encoding: gzip\r\n"),
        ("identity", "Transfer-Encoding: identity\r\n"),
        ("an unknown coding", "Transfer-Encoding: x-smuggle\r\n"),
        ("an empty Transfer-Encoding", "Transfer-Encoding: \r\n"),
        ("a comma for Transfer-Encoding", "Transfer-Encoding: ,\r\n"),
        ("an unknown coding xchunked", "Transfer-Encoding: xchunked\r\n"),
        ("an unknown coding chunked;q=1", "Transfer-Encoding: chunked;q=1\r\n"),
        ("gzip then chunked", "Transfer-Encoding: gzip, chunked\r\n"),
        ("a space before the Transfer-Encoding colon", "Transfer-Encoding : chunked\r\n"),
        ("a vertical tab in Transfer-Encoding", "Transfer-Encoding: \u{b}chunked\r\n"),
    ];
    for method in ["POST", "GET"] {
        for (name, framing) in framings {
            add(
                &format!("{method}: {name}"),
                format!("{method} / HTTP/1.1\r\nHost: a\r\n{framing}\r\n0\r\n\r\nabc").as_bytes(),
            );
        }
    }
    add("Transfer-Encoding on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");

    // Bad chunk encodings.
    let chunks: &[(&str, &[u8])] = &[
        ("a size that is not hex", b"g\r\nabc\r\n0\r\n\r\n"),
        ("a negative size", b"-3\r\nabc\r\n0\r\n\r\n"),
        ("a size over u64", b"FFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"),
        ("a 0x size", b"0x3\r\nabc\r\n0\r\n\r\n"),
        ("an empty size line", b"\r\nabc\r\n0\r\n\r\n"),
        ("data longer than its size", b"3\r\nabcdef\r\n0\r\n\r\n"),
        ("no CRLF after the data", b"3\r\nabc0\r\n\r\n"),
        ("a bare LF after the size", b"3\nabc\r\n0\r\n\r\n"),
        ("a bare LF after the data", b"3\r\nabc\n0\r\n\r\n"),
        ("a bare CR after the size", b"3\rabc\r\n0\r\n\r\n"),
        ("a size with a space inside", b"1 0\r\nabc\r\n0\r\n\r\n"),
        ("an extension with a control byte", b"3;a=\x01\r\nabc\r\n0\r\n\r\n"),
        ("an extension without a name", b"3;\r\nabc\r\n0\r\n\r\n"),
        ("a chunk larger than the body limit", b"FFFFFFFFFF\r\nabc\r\n"),
        ("a trailer line without a colon", b"3\r\nabc\r\n0\r\nNoColon\r\n\r\n"),
        ("a trailer with a control byte", b"3\r\nabc\r\n0\r\nX-A: \x01\r\n\r\n"),
        ("a last chunk with data", b"0\r\nabc\r\n\r\n"),
        ("a 20 KiB size line", &[b'0'; 20 * 1024]),
    ];
    for (name, body) in chunks {
        let mut request = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        add(&format!("chunked: {name}"), &request);
    }

    // Absolute-form and CONNECT targets the balancer must not forward.
    for target in [
        "ftp://a/",
        "http:/a",
        "http:a",
        "*",
        "http://",
        "https://",
        "http:///path",
        "http://user@a/",
        "http://user:pass@a/x",
        "mailto:x@y",
        "a/b",
        "?x",
        "#frag",
        "http//a/",
        "javascript:alert(1)",
    ] {
        add(&format!("GET {target}"), format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    for target in ["a:443", "127.0.0.1:22", "[::1]:80", "/", "http://a/"] {
        add(&format!("CONNECT {target}"), format!("CONNECT {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    add("OPTIONS * is not forwarded", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");

    // Other protocols and junk on the port.
    add("the HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    add("a TLS ClientHello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x00\x01\x02\x03\r\n\r\n");
    add("an SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n\r\n");
    add("only empty lines", b"\r\n\r\n\r\n\r\n");
    add("double spaces in the request line", b"GET  /  HTTP/1.1\r\nHost: a\r\n\r\n");
    add("tabs in the request line", b"GET\t/\tHTTP/1.1\r\nHost: a\r\n\r\n");
    add("a control byte in Host", b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n");
    add("a header name with a non-ASCII byte", "GET / HTTP/1.1\r\nHost: a\r\nHé: 1\r\n\r\n".as_bytes());
    let mut x: u32 = 0x9e37_79b9;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    add("4 KiB of noise", &noise);
    let mut noisy_head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    noisy_head.extend_from_slice(&noise[..512]);
    noisy_head.extend_from_slice(b"\r\n\r\n");
    add("noise among the headers", &noisy_head);
    cases
}

/// What came back for one hostile request.
#[derive(Debug, PartialEq)]
enum Answer {
    /// Closed (or reset) without a byte.
    Closed,
    /// One response with this status, then the close.
    Status(u16),
    /// Anything else: the bytes that came.
    Other(String),
}

fn send(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The server may close before taking it all: that is one of the allowed answers.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return Answer::Other(format!("no close within 15 s after {:?}", String::from_utf8_lossy(&answer)));
            }
            Err(_) => break, // a reset ends it too
        }
    }
    if answer.is_empty() {
        return Answer::Closed;
    }
    let mut reader = std::io::BufReader::new(&answer[..]);
    match common::read_response(&mut reader, false) {
        Ok(resp) if reader.fill_buf_is_empty() => Answer::Status(resp.status),
        _ => Answer::Other(String::from_utf8_lossy(&answer).into_owned()),
    }
}

trait Drained {
    fn fill_buf_is_empty(&mut self) -> bool;
}

impl<R: std::io::BufRead> Drained for R {
    fn fill_buf_is_empty(&mut self) -> bool {
        self.fill_buf().map_or(true, |b| b.is_empty())
    }
}

/// Whether `answer` is acceptable for the request named `name`.
fn acceptable(name: &str, answer: &Answer) -> bool {
    match answer {
        Answer::Closed => true,
        Answer::Status(status) if (400..500).contains(status) => true,
        // RFC 9112 6.1: a transfer coding the server does not understand gets 501.
        Answer::Status(501) => ["coding", "gzip", "identity", "chunked, then"].iter().any(|c| name.contains(c)),
        // RFC 9110 15.6.6: a major version we do not speak gets 505.
        Answer::Status(505) => ["HTTP/2.0", "HTTP/3.0", "HTTP/9.9", "HTTP/2 preface"].iter().any(|v| name.contains(v)),
        _ => false,
    }
}

#[test]
fn hostile_requests_get_a_4xx_or_a_clean_close_and_never_reach_a_backend() {
    let backend = FaultyBackend::start(Fault::Fine);
    let lb = Lb::start(&[backend.addr], r#""threads": 8, "client_header_timeout": 5"#);
    let threads_before = lb.threads();
    // A normal client, all the while.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let normal = {
        let (stop, served, addr) = (Arc::clone(&stop), Arc::clone(&served), lb.addr);
        std::thread::spawn(move || {
            let mut conn = Conn::open(addr);
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let resp = conn.get("/normal");
                if resp.status != 200 || started.elapsed() > Duration::from_secs(1) {
                    failures.push((resp.status, started.elapsed()));
                }
                served.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            failures
        })
    };
    assert!(common::wait_until(Duration::from_secs(5), || served.load(Ordering::Relaxed) > 10));
    let cases = corpus();
    let mut tally: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let mut wrong = Vec::new();
    // And a normal request on a kept-alive connection after every hostile one.
    let mut normal_conn = Conn::open(lb.addr);
    for (name, bytes) in &cases {
        let answer = send(lb.addr, bytes);
        let key = match &answer {
            Answer::Closed => "closed".to_string(),
            Answer::Status(s) => s.to_string(),
            Answer::Other(_) => "other".to_string(),
        };
        *tally.entry(key).or_insert(0) += 1;
        if !acceptable(name, &answer) {
            wrong.push(format!("{name}: {answer:?}"));
        }
        let resp = normal_conn.get("/between");
        assert_eq!(resp.status, 200, "after {name}");
    }
    stop.store(true, Ordering::Relaxed);
    let normal_failures = normal.join().unwrap();
    eprintln!(
        "{} hostile requests: {tally:?}; a normal client was served after each, and {} times alongside",
        cases.len(),
        served.load(Ordering::Relaxed)
    );
    assert!(wrong.is_empty(), "{} wrong answers:\n{}", wrong.len(), wrong.join("\n"));
    assert!(cases.len() >= 200, "the corpus has {} cases", cases.len());
    assert!(normal_failures.is_empty(), "the normal client was not served: {normal_failures:?}");
    let seen = backend.lines.lock().unwrap().clone();
    let strays: Vec<&String> =
        seen.iter().filter(|l| *l != "GET /normal HTTP/1.1" && *l != "GET /between HTTP/1.1").collect();
    assert!(strays.is_empty(), "hostile requests reached the backend: {strays:?}");
    assert_eq!(seen.iter().filter(|l| l.starts_with("GET /between")).count(), cases.len());
    // No worker died (a panic is caught and answered 500: none above), the process is whole.
    assert!(lb.log().lines().all(|l| !l.contains("panicked")), "{}", lb.log());
    assert_eq!(lb.threads(), threads_before, "threads before and after");
    assert_eq!(Conn::open(lb.addr).get("/after").status, 200);
}
