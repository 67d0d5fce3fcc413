//! Overload: offered load far above capacity gets fast `503` with `Retry-After` (the worker
//! queue is full: answered by the poller at once, never queued), memory stays flat, and full
//! service returns the moment the load drops. Real processes: lb-sync with 4 workers and a
//! queue of 16 in front of an lb-backend that takes 50 ms per request (capacity: 80 requests a
//! second), against 200 clients sending as fast as they are answered.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lb::Lb;
use common::{backend, wait_until, Conn};

#[derive(Default)]
struct Seen {
    ok: Vec<Duration>,
    busy: Vec<Duration>,
    busy_without_retry_after: u64,
    other: Vec<String>,
}

fn hammer(addr: SocketAddr, stop: &AtomicBool, seen: &Mutex<Seen>) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut reader = match conn.take() {
            Some(reader) => reader,
            None => match TcpStream::connect(addr) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    BufReader::new(stream)
                }
                Err(e) => {
                    seen.lock().unwrap().other.push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let started = Instant::now();
        if reader.get_mut().write_all(b"GET /?delay_ms=50 HTTP/1.1\r\nHost: o\r\n\r\n").is_err() {
            continue;
        }
        match common::read_response(&mut reader, false) {
            Ok(resp) => {
                let took = started.elapsed();
                let close = resp.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let mut seen = seen.lock().unwrap();
                match resp.status {
                    200 => seen.ok.push(took),
                    503 => {
                        seen.busy.push(took);
                        if resp.header("retry-after") != Some("1") {
                            seen.busy_without_retry_after += 1;
                        }
                    }
                    other => seen.other.push(format!("status {other}")),
                }
                if !close {
                    conn = Some(reader);
                }
            }
            // A refused request's connection is closed after its answer; a read that finds it
            // closed before one is a failure.
            Err(e) => seen.lock().unwrap().other.push(format!("read: {e}")),
        }
    }
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort_unstable();
    values[((values.len() - 1) as f64 * p) as usize]
}

#[test]
fn far_above_capacity_fast_503s_flat_memory_and_full_service_when_the_load_drops() {
    let origin = backend(&["--threads", "64"]);
    let lb = Lb::start(
        &[origin.addr()],
        // The 200 clients share one address: they stand for many clients, so one may use every
        // worker (no share of them, tests/fairness.rs has that).
        r#""threads": 4, "queue_capacity": 16, "backend_max_connections": 4, "max_connections": 10000,
           "client_max_workers": 0"#,
    );
    // Before: one client, served in about 50 ms.
    assert_eq!(Conn::open(lb.addr).get("/?delay_ms=50").status, 200);
    let rss_before = lb.rss_kb();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let (stop, seen, addr) = (Arc::clone(&stop), Arc::clone(&seen), lb.addr);
            std::thread::spawn(move || hammer(addr, &stop, &seen))
        })
        .collect();
    let overload = Duration::from_secs(8);
    let started = Instant::now();
    let (mut rss, mut open) = (Vec::new(), Vec::new());
    while started.elapsed() < overload {
        std::thread::sleep(Duration::from_millis(250));
        rss.push(lb.rss_kb());
        open.push(std::fs::read_dir(format!("/proc/{}/fd", lb.pid())).unwrap().count());
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let dropped_at = Instant::now();

    // The moment the load drops: full service, at the backend's own pace.
    let mut conn = Conn::open(lb.addr);
    let mut after = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(conn.get("/?delay_ms=50").status, 200, "not served after the load dropped");
        after.push(t.elapsed());
    }
    let first_ok_after = dropped_at.elapsed();

    let mut seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    let (ok, busy) = (seen.ok.len(), seen.busy.len());
    let busy_p50 = percentile(&mut seen.busy, 0.5);
    let busy_p99 = percentile(&mut seen.busy, 0.99);
    let ok_rate = ok as f64 / overload.as_secs_f64();
    let warm = &rss[rss.len() / 4..];
    let (rss_warm, rss_max) = (warm[0], *warm.iter().max().unwrap());
    let after_max = *after.iter().max().unwrap();
    let open_max = *open.iter().max().unwrap();
    eprintln!(
        "overload, 200 clients for {overload:?} against a capacity of 80 req/s: {ok} served ({ok_rate:.0}/s), {busy} answered 503 \
         (p50 {busy_p50:?}, p99 {busy_p99:?}), {} other; RSS {rss_before} kB before, {rss_warm} -> max {rss_max} kB during; \
         at most {open_max} fds open; after the drop 20 GETs served, slowest {after_max:?}",
        seen.other.len()
    );
    assert!(seen.other.is_empty(), "{:?}", &seen.other[..seen.other.len().min(10)]);
    assert_eq!(seen.busy_without_retry_after, 0, "every 503 says Retry-After: 1");
    assert!(busy > 10 * ok, "far above capacity: {busy} refused, {ok} served");
    assert!(ok_rate > 40.0, "the capacity kept serving under overload: {ok_rate:.0}/s");
    // 200 clients, each with one connection at a time: refused connections are closed as their
    // clients go, not left to pile up (they did, to the fd limit, when accepting starved them).
    assert!(open_max < 1000, "{open_max} fds open for 200 clients");
    assert!(busy_p50 < Duration::from_millis(20), "503s are not fast: p50 {busy_p50:?}");
    assert!(busy_p99 < Duration::from_millis(200), "503s are not fast: p99 {busy_p99:?}");
    assert!(rss_max <= rss_warm + rss_warm / 4 + 4096, "memory grew under overload: {rss_warm} -> {rss_max} kB");
    assert!(after_max < Duration::from_millis(500), "slow after the drop: {after:?}");
    assert!(first_ok_after < Duration::from_secs(3));
    let stats = Conn::open(lb.addr).get("/lb/stats").json();
    assert_eq!(stats["queue_depth"], 0);
    assert!(wait_until(Duration::from_secs(2), || Conn::open(lb.addr).get("/lb/stats").json()["in_flight"] == 0));
}
