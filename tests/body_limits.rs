//! What request bodies may hold (README: "Request bodies: what they may hold"): a body over
//! `max_body_bytes` gets `413` naming the limit, one client past its share of the temp files gets
//! `429` while another client's upload goes through (a client as every per-client limit counts
//! it: the peer, or what a trusted proxy says), and a crawling upload is cut with `408` and its
//! temp file freed. Real lb-sync processes and lb-backend children; the temp files are read
//! from `/proc/PID/fd` (each is unlinked when made: a link that ends in `(deleted)`).

mod common;

use std::io::{BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::lb::Lb;
use common::{chunked, read_response, wait_until, Conn};

/// Bytes of the (unlinked) temp files `pid` holds open in `dir`.
fn spooled_bytes(pid: u32, dir: &Path) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    let prefix = dir.to_string_lossy().to_string();
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                let target = target.to_string_lossy();
                target.starts_with(&prefix) && target.ends_with(" (deleted)")
            })
        })
        // stat through the link: the file's size, though it has no name any more.
        .map(|fd| std::fs::metadata(fd.path()).map_or(0, |m| m.len()))
        .sum()
}

/// A connection from `local` (any 127.x.y.z address is this host's loopback) to `addr`.
fn connect_from(local: IpAddr, addr: SocketAddr) -> Conn {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(local, 0).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.set_nodelay(true).unwrap();
    Conn::over(stream, None)
}

/// Requests the backends were sent, all together, from the management API.
fn requests_forwarded(lb: &Lb) -> u64 {
    let backends = Conn::open(lb.addr).get("/lb/backends").json();
    backends.as_array().unwrap().iter().map(|b| b["total_requests"].as_u64().unwrap()).sum()
}

#[test]
fn a_body_over_the_default_limit_gets_413_naming_the_limit_at_once_or_as_a_chunked_one_crosses_it() {
    let backend = common::backend(&[]);
    let lb = Lb::start(&[backend.addr()], "");
    let said = "request body too large: the limit is 1048576 bytes (setting max_body_bytes)\n";

    // A Content-Length one byte over: refused on its head, not a body byte sent.
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\n\r\n");
    let resp = conn.response();
    assert_eq!((resp.status, resp.text().as_str(), resp.header("connection")), (413, said, Some("close")));

    // A body of exactly the limit goes through.
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n");
    conn.send(&vec![b'x'; 1 << 20]);
    let resp = conn.response();
    assert_eq!((resp.status, resp.json()["request"]["body_bytes"].as_u64()), (200, Some(1 << 20)));

    // Chunked: the limit's worth, then one byte more, and no last chunk: refused as it crosses.
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let body = chunked(&vec![b'y'; (1 << 20) + 1], &[256 << 10, 256 << 10, 256 << 10, 256 << 10, 1]);
    let last_chunk = body.len() - b"0\r\nX-Trailer: yes\r\n\r\n".len();
    conn.send(&body[..last_chunk]);
    let resp = conn.response();
    assert_eq!((resp.status, resp.text().as_str()), (413, said));
    assert_eq!(requests_forwarded(&lb), 1, "only the body within the limit reached a backend");
}

#[test]
fn one_client_past_its_share_of_the_temp_files_gets_429_while_another_client_uploads() {
    let backend = common::backend(&[]);
    let dir = common::unique_dir("spool-share");
    // Every body to a temp file; 400 KiB of them in all, a quarter (102 400 bytes) per client.
    let settings = format!(
        r#""client_body_buffer_size": 0, "client_body_temp_path": "{}", "client_body_temp_cap": 409600,
            "client_body_temp_free_share": 1, "client_body_temp_client_share": 0.25"#,
        dir.display()
    );
    let lb = Lb::start(&[backend.addr()], &settings);
    let start_line =
        format!("request body temp files in {}: at most 400.0 KiB together, 100.0 KiB per client", dir.display());
    assert!(lb.wait_log(&start_line, Duration::from_secs(5)), "{}", lb.log());
    let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());

    // Client A holds 80 000 bytes of a 90 000-byte body.
    let mut held = connect_from(a, lb.addr);
    held.send(b"POST /held HTTP/1.1\r\nHost: t\r\nContent-Length: 90000\r\n\r\n");
    held.send(&[b'a'; 80_000]);
    assert!(wait_until(Duration::from_secs(10), || spooled_bytes(lb.pid(), &dir) == 80_000), "A's body spooled");

    // Its second upload would take it past 102 400 bytes: 429, to be retried.
    let mut more = connect_from(a, lb.addr);
    more.send(b"POST /more HTTP/1.1\r\nHost: t\r\nContent-Length: 50000\r\n\r\n");
    more.send(&[b'm'; 50_000]);
    let resp = more.response();
    assert_eq!((resp.status, resp.header("retry-after")), (429, Some("1")));
    assert!(resp.text().contains("share"), "{}", resp.text());

    // Client B's upload of the same size goes through meanwhile, and so does one that A, a
    // trusted proxy (loopback is, by default), relays for a client of its own.
    let mut other = connect_from(b, lb.addr);
    other.send(b"POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 50000\r\n\r\n");
    other.send(&[b'b'; 50_000]);
    let resp = other.response();
    assert_eq!((resp.status, resp.json()["request"]["body_bytes"].as_u64()), (200, Some(50_000)));
    let mut relayed = connect_from(a, lb.addr);
    relayed.send(b"POST /relayed HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 192.0.2.7\r\nContent-Length: 50000\r\n\r\n");
    relayed.send(&[b'r'; 50_000]);
    let resp = relayed.response();
    assert_eq!((resp.status, resp.json()["request"]["body_bytes"].as_u64()), (200, Some(50_000)));

    // A's first body, within its share, completes.
    held.send(&[b'a'; 10_000]);
    let resp = held.response();
    assert_eq!((resp.status, resp.json()["request"]["body_bytes"].as_u64()), (200, Some(90_000)));
    assert!(wait_until(Duration::from_secs(10), || spooled_bytes(lb.pid(), &dir) == 0), "every temp file freed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_crawling_upload_is_cut_with_408_and_its_temp_file_is_gone() {
    let backend = common::backend(&[]);
    let dir = common::unique_dir("spool-crawl");
    // A second of grace, then 1 000 bytes/s; every body to a temp file.
    let settings = format!(
        r#""client_body_buffer_size": 0, "client_body_temp_path": "{}", "client_io_timeout": 1,
            "request_body_min_rate": 1000"#,
        dir.display()
    );
    let lb = Lb::start(&[backend.addr()], &settings);

    let stream = TcpStream::connect(lb.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer.write_all(b"POST /crawl HTTP/1.1\r\nHost: t\r\nContent-Length: 10000\r\n\r\n").unwrap();
    writer.write_all(&[b'c'; 100]).unwrap();
    assert!(wait_until(Duration::from_secs(10), || spooled_bytes(lb.pid(), &dir) == 100), "the body spooled");
    // A byte every 100 ms: never idle for the 1 s of client_io_timeout, far below the rate.
    let crawler = std::thread::spawn(move || {
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(100));
            if writer.write_all(b"c").is_err() {
                return;
            }
        }
    });
    let resp = read_response(&mut BufReader::new(&stream), false).expect("an answer");
    let said = "request body sent too slowly: the minimum is 1000 bytes/s after the first 1 s (setting request_body_min_rate)\n";
    assert_eq!((resp.status, resp.text().as_str()), (408, said));
    assert!(wait_until(Duration::from_secs(10), || spooled_bytes(lb.pid(), &dir) == 0), "its temp file is gone");
    drop(stream);
    crawler.join().unwrap();

    // An upload at full speed is not held to anything but the limit.
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /fast HTTP/1.1\r\nHost: t\r\nContent-Length: 10000\r\n\r\n");
    conn.send(&[b'f'; 10_000]);
    assert_eq!(conn.response().status, 200);
    assert_eq!(requests_forwarded(&lb), 1, "the crawling one never reached a backend");
    let _ = std::fs::remove_dir_all(&dir);
}
