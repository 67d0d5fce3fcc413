//! No slow peer holds a worker: slow body senders, slow readers, slow heads and slow backends
//! each occupy the balancer while normal clients are served. Real processes on loopback: an
//! `lb-backend` and an `lb-sync` with a small worker pool (so a held worker would show at once).
//! Peers per case are 200 here (CI shares 2 cores); `scripts/bench.sh slow` runs 1000.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use common::faults::answers_413_after_the_head;
use common::lb::listening_addr;
use common::{backend, proc_status, unique_dir, wait_until, ChildProcess, Conn};

const PEERS: usize = 200;

/// An `lb-sync` child with `settings` (JSON object fields) in a config file of its own.
struct Balancer {
    child: ChildProcess,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Balancer {
    fn start(backends: &[SocketAddr], settings: &str) -> Balancer {
        let dir = unique_dir("slow");
        std::fs::create_dir_all(dir.join("bodies")).unwrap();
        let list: Vec<String> = backends
            .iter()
            .enumerate()
            .map(|(i, a)| format!(r#"{{"id": "b{i}", "host": "127.0.0.1", "port": {}}}"#, a.port()))
            .collect();
        let config = format!(
            r#"{{"host": "127.0.0.1", "port": 0, "access_log": false, "health_check_interval": 0,
                 "client_body_temp_path": "{}", "backends": [{}] {}}}"#,
            dir.join("bodies").display(),
            list.join(", "),
            settings
        );
        std::fs::write(dir.join("config.json"), config).unwrap();
        let mut command = common::lb::lb_command();
        command.arg("--config").arg(dir.join("config.json"));
        let child = ChildProcess::start(command);
        let addr = listening_addr(&child.ready_line).expect("address in the ready line");
        Balancer { child, addr, dir }
    }

    fn rss_kb(&self) -> u64 {
        proc_status(self.child.pid(), "VmRSS")
    }

    fn temp_files(&self) -> usize {
        std::fs::read_dir(self.dir.join("bodies")).unwrap().count()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 20 normal GETs, each on a new connection, each must be answered 200.
fn normal_gets_are_served(addr: SocketAddr) {
    for i in 0..20 {
        let mut conn = Conn::open(addr);
        // Generous for a loaded CI machine (200 slow readers first fill ~2 MB of socket buffers
        // each); a worker held by a slow peer would hold it for the 60 s client timeout.
        conn.reader.get_ref().set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let resp = conn.get(&format!("/normal/{i}"));
        assert_eq!(resp.status, 200, "normal GET {i} while slow peers are connected");
    }
}

/// `n` connections, each with one GET of `path(i)` sent and its answer not read.
fn requests_in_flight(addr: SocketAddr, n: usize, path: impl Fn(usize) -> String) -> Vec<Conn> {
    (0..n)
        .map(|i| {
            let mut conn = Conn::open(addr);
            conn.send(format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", path(i)).as_bytes());
            conn
        })
        .collect()
}

/// The first backend's `active_connections` in `/lb/backends`.
fn active_connections(addr: SocketAddr) -> serde_json::Value {
    Conn::open(addr).get("/lb/backends").json()[0]["active_connections"].clone()
}

/// Waits (bounded) until the first backend holds `n` requests.
fn wait_for_active(addr: SocketAddr, n: u64) -> bool {
    wait_until(Duration::from_secs(5), || active_connections(addr) == n)
}

fn open(addr: SocketAddr, first: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(first).unwrap();
    stream
}

#[test]
fn slow_body_senders_hold_no_worker_and_leave_no_temp_file() {
    let server = backend(&["--threads", "8"]);
    // Bodies beyond 1 KiB go to temp files, so 200 half-sent 60 KB bodies use the disk path.
    let lb = Balancer::start(&[server.addr()], r#", "threads": 4, "client_body_buffer_size": 1024"#);
    let before = lb.rss_kb();
    let head = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\n";
    let mut senders: Vec<TcpStream> = (0..PEERS)
        .map(|_| {
            let mut s = open(lb.addr, head);
            s.write_all(&[b'x'; 30_000]).unwrap();
            s
        })
        .collect();
    normal_gets_are_served(lb.addr);
    assert_eq!(lb.temp_files(), 0, "temp files are unlinked as soon as they are made");
    let grown = lb.rss_kb().saturating_sub(before);
    eprintln!("{PEERS} slow senders: RSS grew {grown} kB");
    assert!(grown < 128 * 1024, "RSS grew {grown} kB");
    // Each completes normally once it sends the rest.
    for sender in senders.iter_mut().take(5) {
        sender.write_all(&[b'y'; 30_000]).unwrap();
    }
    for sender in senders.iter_mut().take(5) {
        sender.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut resp = common::read_response(&mut std::io::BufReader::new(&*sender), false).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["request"]["body_bytes"], 60_000);
        resp.body.clear();
    }
    drop(senders);
    assert_eq!(lb.temp_files(), 0);
}

#[test]
fn slow_readers_of_a_20_mb_response_hold_no_worker() {
    let server = backend(&["--threads", "8"]);
    let lb = Balancer::start(&[server.addr()], r#", "threads": 4"#);
    let before = lb.rss_kb();
    let readers: Vec<TcpStream> = (0..PEERS)
        .map(|i| open(lb.addr, format!("GET /big/{i}?bytes=20000000 HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()))
        .collect();
    // Every slow reader got its response started (so each took its backend request and its
    // worker at some point), and none reads on.
    for mut reader in readers.iter().take(3) {
        let mut first = [0u8; 12];
        reader.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        reader.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
    }
    normal_gets_are_served(lb.addr);
    let grown = lb.rss_kb().saturating_sub(before);
    eprintln!("{PEERS} slow readers of 20 MB: RSS grew {grown} kB");
    assert!(grown < 128 * 1024, "RSS grew {grown} kB");
    drop(readers);
}

#[test]
fn slow_heads_hold_no_worker() {
    let server = backend(&[]);
    let lb = Balancer::start(&[server.addr()], r#", "threads": 4"#);
    let heads: Vec<TcpStream> =
        (0..PEERS).map(|_| open(lb.addr, b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Slow:")).collect();
    normal_gets_are_served(lb.addr);
    drop(heads);
}

#[test]
fn a_hundred_slow_backend_requests_delay_no_other_request() {
    // The default pool (256 workers) is sized for this; the backend has workers for all of them.
    let server = backend(&["--threads", "160"]);
    let lb = Balancer::start(&[server.addr()], "");
    let slow = requests_in_flight(lb.addr, 100, |i| format!("/slow/{i}?delay_ms=4000"));
    // All 100 are with the backend before the normal request starts.
    assert!(wait_for_active(lb.addr, 100));
    let mut conn = Conn::open(lb.addr);
    assert_eq!(conn.get("/normal").status, 200);
    // Answered while every slow one is still waiting for its backend.
    // The normal GET's own count ends just after its last byte is written, so a moment after.
    assert!(
        wait_until(Duration::from_secs(2), || active_connections(lb.addr) == 100),
        "the normal GET did not wait for the slow ones: {} in flight",
        active_connections(lb.addr)
    );
    drop(slow);
}

#[test]
fn a_blackholed_backend_takes_only_its_connection_cap_then_requests_go_elsewhere() {
    let good = backend(&["--threads", "8"]);
    // Accepts connections (the kernel does) and never answers.
    let blackhole = TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = Balancer::start(
        &[blackhole.local_addr().unwrap(), good.addr()],
        r#", "threads": 8, "backend_max_connections": 3, "request_timeout": 30"#,
    );
    // Round robin sends every other request to the blackhole until it holds its cap.
    let stuck = requests_in_flight(lb.addr, 6, |i| format!("/{i}"));
    assert!(wait_for_active(lb.addr, 3));
    for i in 0..20 {
        let resp = Conn::open(lb.addr).get(&format!("/after/{i}"));
        assert_eq!(resp.status, 200, "served by the good backend while the blackhole is full");
    }
    assert_eq!(active_connections(lb.addr), 3, "never over the cap");
    drop(stuck);
}

#[test]
fn a_full_backend_queues_requests_then_answers_503_at_the_queue_timeout() {
    let blackhole = TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = Balancer::start(
        &[blackhole.local_addr().unwrap()],
        r#", "threads": 8, "backend_max_connections": 2, "backend_queue_timeout": 0.3, "request_timeout": 30"#,
    );
    let _stuck = requests_in_flight(lb.addr, 2, |i| format!("/{i}"));
    assert!(wait_for_active(lb.addr, 2));
    let resp = Conn::open(lb.addr).get("/queued");
    assert_eq!((resp.status, resp.header("retry-after")), (503, Some("1")));
    assert!(resp.text().contains("connection limit"), "{}", resp.text());
}

#[test]
fn a_backend_that_answers_early_and_closes_has_its_answer_relayed() {
    // A backend that refuses an upload after its head, without reading the body, and closes
    // (its kernel then resets the connection): the client must get that answer, not a 502.
    let (addr, refuser) = answers_413_after_the_head();
    let size = 8 << 20;
    // A body over the default 1 MiB limit, so the backend is the one that refuses it.
    let lb = Balancer::start(&[addr], &format!(r#", "threads": 4, "max_body_bytes": {size}"#));
    let mut conn = Conn::open(lb.addr);
    conn.send(format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n").as_bytes());
    conn.send(&vec![b'u'; size]);
    let resp = conn.response();
    assert_eq!((resp.status, resp.text().as_str()), (413, "too large"));
    refuser.join().unwrap().unwrap();
}

#[test]
fn a_backend_answer_with_content_length_zero_is_relayed() {
    // 201 Created, an empty 200, a redirect: an empty body of declared length must not reset.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in backend.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                loop {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        let answer = b"HTTP/1.1 201 Created\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n";
                        if stream.write_all(answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let lb = Balancer::start(&[addr], r#", "threads": 4"#);
    let mut conn = Conn::open(lb.addr);
    for _ in 0..3 {
        let resp = conn.get("/create");
        assert_eq!((resp.status, resp.header("content-length"), resp.header("location")), (201, Some("0"), Some("/x")));
    }
}
