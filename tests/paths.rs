//! One canonical path is both matched and forwarded (issue 26, item 4): every case of the
//! confusion corpus (`tests/data/path_corpus.tsv`: the CVEs where a proxy matched one path and
//! the backend read another, and their variants) either reaches the backend as exactly the
//! canonical target the corpus names, is answered by the management API when its canonical
//! path is the admin prefix, or gets `400` (counted, and logged with the target as sent)
//! without the backend hearing of it. `scripts/path_corpus.py` runs the same corpus against
//! nginx.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::lb::Lb;
use common::{Conn, Resp};

/// A backend that answers each request with the request target exactly as it read it off the
/// wire (no parsing beyond the request line), and counts the requests.
struct EchoTarget {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl EchoTarget {
    fn start() -> EchoTarget {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        // Ends with the test process; each connection on a thread of its own.
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let counted = Arc::clone(&counted);
                std::thread::spawn(move || echo_targets(stream, &counted));
            }
        });
        EchoTarget { addr, requests }
    }
}

/// Keep-alive: reads heads (bodies are not sent in this test) and answers each with its target.
fn echo_targets(stream: TcpStream, requests: &AtomicUsize) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = Vec::new();
        if reader.read_until(b'\n', &mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == b"\r\n" {
                break;
            }
        }
        let line = String::from_utf8_lossy(&request_line).into_owned();
        let target = line.split(' ').nth(1).unwrap_or("").to_string();
        if !target.starts_with("/health") {
            requests.fetch_add(1, Ordering::SeqCst);
        }
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{target}", target.len());
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// One row of the corpus.
struct Case {
    target: String,
    host: String,
    expected: Expected,
    why: String,
}

enum Expected {
    Forwarded(String),
    Refused,
    Admin,
}

fn corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/path_corpus.tsv")).unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 4, "a corpus line has four fields: {line:?}");
            let expected = match fields[2] {
                "400" => Expected::Refused,
                "admin" => Expected::Admin,
                target => Expected::Forwarded(target.to_string()),
            };
            Case { target: fields[0].into(), host: fields[1].into(), expected, why: fields[3].into() }
        })
        .collect()
}

fn send(addr: SocketAddr, target: &str, host: &str) -> Resp {
    let mut conn = Conn::open(addr);
    conn.send(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    conn.response()
}

#[test]
fn every_confusion_case_reaches_the_backend_as_its_canonical_path_or_gets_400() {
    let cases = corpus();
    assert!(cases.len() >= 60, "the issue asks for at least 60 cases, the corpus has {}", cases.len());
    let backend = EchoTarget::start();
    let log_dir = common::unique_dir("paths");
    let access_log = log_dir.join("access.log");
    let settings = format!(r#""access_log": true, "access_log_file": "{}""#, access_log.display());
    let lb = Lb::start(&[backend.addr], &settings);
    let mut refused = 0;
    for case in &cases {
        let before = backend.requests.load(Ordering::SeqCst);
        let resp = send(lb.addr, &case.target, &case.host);
        let seen = backend.requests.load(Ordering::SeqCst) - before;
        let what = format!("GET {} (Host: {}): {}", case.target, case.host, case.why);
        match &case.expected {
            Expected::Forwarded(canonical) => {
                assert_eq!(resp.status, 200, "{what}: {}", resp.text());
                assert_eq!(resp.text(), *canonical, "{what}: the backend read another target");
                assert_eq!(seen, 1, "{what}");
            }
            Expected::Refused => {
                assert_eq!(resp.status, 400, "{what}: {}", resp.text());
                assert!(!resp.text().trim().is_empty(), "{what}: a 400 says why");
                assert_eq!(seen, 0, "{what}: the backend heard of a refused request");
                refused += 1;
            }
            Expected::Admin => {
                assert_eq!(resp.status, 200, "{what}: {}", resp.text());
                let list = resp.json();
                assert_eq!(list.as_array().map(Vec::len), Some(1), "{what}: the backend list: {list}");
                assert_eq!(seen, 0, "{what}: an admin path went to a backend");
            }
        }
    }
    // Counted as the balancer's own answers, and logged with the target as the client sent it.
    let stats = common::api::stats(lb.addr);
    let answered_4xx = stats["answered_by_balancer"]["4xx"].as_u64().unwrap();
    assert!(answered_4xx >= refused, "{refused} refusals, {answered_4xx} counted: {stats}");
    let logged = |text: &str| common::wait_until(Duration::from_secs(5), || read(&access_log).contains(text));
    assert!(logged("GET /public/..;/admin HTTP/1.1\" 400"), "access log:\n{}", read(&access_log));
    assert!(logged("GET /public/../admin HTTP/1.1\" 200"), "access log:\n{}", read(&access_log));
}

#[test]
fn encoded_slashes_pass_encoded_when_allowed_and_doubled_slashes_stay_when_merging_is_off() {
    let backend = EchoTarget::start();
    let lb = Lb::start(&[backend.addr], r#""allow_encoded_slashes": true, "merge_slashes": false"#);
    assert_eq!(send(lb.addr, "/api/group%2fproject/x", "t").text(), "/api/group%2Fproject/x");
    assert_eq!(send(lb.addr, "/a//b", "t").text(), "/a//b");
    assert_eq!(send(lb.addr, "/a//../b", "t").text(), "/a/b");
    // Allowed, an encoded slash still may not hide a dot segment from us.
    assert_eq!(send(lb.addr, "/admin%2F..", "t").status, 400);
    assert_eq!(send(lb.addr, "/x/..%2fadmin", "t").status, 400);
    let lb = Lb::start(&[backend.addr], "");
    assert_eq!(send(lb.addr, "/api/group%2fproject/x", "t").status, 400);
}

fn read(path: &std::path::Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}
