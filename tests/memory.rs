//! Memory comes back after bursts: lb-sync's resident memory after bursts of 500 slow readers
//! (each asks for a 20 MB response and reads a little of it) returns to within 40 MB of what it
//! was before them. With glibc's malloc it stayed 75 MB up on a 2-core machine (and 190 MB up
//! on a larger one: an arena per busy worker); lb-sync's jemalloc returns it (docs/memory.md).
//! Real processes: an lb-sync with its default 256 workers in front of an lb-backend.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::lb::Lb;
use common::{backend, wait_until, Conn};

const READERS: usize = 500;
const BURSTS: usize = 3;
const ALLOWED_GROWTH_KB: u64 = 40 * 1024;

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// READERS slow readers: each gets its answer started, reads a few kilobytes of it, then all
/// close without reading the rest.
fn burst(lb: &Lb) {
    let mut readers: Vec<TcpStream> = (0..READERS)
        .map(|i| {
            let mut stream = TcpStream::connect(lb.addr).unwrap();
            stream.write_all(format!("GET /big/{i}?bytes=20000000 HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
            stream
        })
        .collect();
    for reader in &mut readers {
        reader.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = [0u8; 12];
        reader.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        reader.set_nonblocking(true).unwrap();
    }
    // A slow read: the poller holds each delivery, and workers refill them as they drain.
    let mut chunk = [0u8; 4096];
    let mut received = 0;
    for _ in 0..5 {
        for reader in &mut readers {
            match reader.read(&mut chunk) {
                Ok(n) => received += n,
                Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(received > 0, "the slow readers read nothing");
}

#[test]
fn resident_memory_returns_after_bursts_of_slow_readers() {
    let origin = backend(&[]);
    let lb = Lb::start(&[origin.addr()], "");
    let mut warm = Conn::open(lb.addr);
    for i in 0..100 {
        assert_eq!(warm.get(&format!("/warm/{i}")).status, 200);
    }
    drop(warm);
    let pid = lb.pid();
    let files = open_files(pid);
    let before = lb.rss_kb();
    for _ in 0..BURSTS {
        burst(&lb);
        // Every client connection and every surplus backend connection closed (idle ones age out
        // after upstream_keepalive_timeout, 4 s).
        assert!(wait_until(Duration::from_secs(30), || open_files(pid) <= files), "{} files open", open_files(pid));
    }
    let returned = wait_until(Duration::from_secs(15), || lb.rss_kb() <= before + ALLOWED_GROWTH_KB);
    let after = lb.rss_kb();
    eprintln!("RSS before {before} kB, after {BURSTS} bursts of {READERS} slow readers {after} kB");
    assert!(returned, "RSS {before} kB before the bursts, {after} kB after");
}
