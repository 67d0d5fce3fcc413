//! `GET /lb/history` (issue 19): requests sent in known seconds are found in those seconds,
//! exactly, for the whole balancer and for each backend, with their 5xx, failed tries and
//! latency; `?seconds=N`, `?since=T` and their errors; access as for the rest of the API; the
//! dashboard's chart library served with the page. Per pool (issue 26): a route's pool has its
//! requests in `pools` and in `?pool=NAME`, the default pool and its backends none. Real `lb-backend` processes on loopback;
//! every wait is a poll within a bound.
//!
//! A burst of requests is sent from 0.2 s into a whole second; when it is answered before
//! 0.8 s into the same second (clear of the sampler's boundaries) its second is known and the
//! test expects its count there exactly. A burst that slipped past, or during which the
//! process stalled or the wall clock was set (a [`Watch`] notices either: the sampler could
//! then have read late, or in another second), is only counted in the sums, and the round is
//! tried again in a later second.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{backend, wait_until, ChildProcess, Conn};
use lb_sync::balancer::LoadBalancer;
use lb_sync::config::{BackendConfig, Config};
use lb_sync::ops::history::SERIES_BYTES;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(10);

fn balancer(backends: &[SocketAddr], tweak: impl FnOnce(&mut Config)) -> LoadBalancer {
    let mut config = Config::default();
    config.listener.host = "127.0.0.1".parse().unwrap();
    config.listener.port = 0;
    config.listener.threads = 8;
    config.operations.access_log = false;
    // No probes: a backend that refuses stays in use, so its failures are the traffic's.
    config.health.interval = None;
    config.backends = backends
        .iter()
        .enumerate()
        .map(|(i, a)| BackendConfig { id: Some(format!("b{}", i + 1)), ..BackendConfig::new("127.0.0.1", a.port(), 1) })
        .collect();
    tweak(&mut config);
    LoadBalancer::start(config).unwrap()
}

fn refused_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn history(lb: SocketAddr, query: &str) -> Value {
    let response = Conn::open(lb).get(&format!("/lb/history{query}"));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Notices when this process stalls (a thread that asks to wake every 10 ms wakes 150 ms late)
/// or the wall clock is set (it moves 20 ms more or less than the monotonic clock between two
/// wake-ups), and the wall-clock seconds where that happened.
struct Watch {
    disturbed: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start() -> Watch {
        let (disturbed, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let thread = std::thread::spawn({
            let (disturbed, stop) = (Arc::clone(&disturbed), Arc::clone(&stop));
            move || {
                let (mut wall, mut steady) = (unix_now(), Instant::now());
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    let (now_wall, now_steady) = (unix_now(), Instant::now());
                    let gap = now_steady.duration_since(steady).as_secs_f64();
                    if gap > 0.15 || (now_wall - wall - gap).abs() > 0.02 {
                        let mut seconds = disturbed.lock().unwrap();
                        seconds.extend(wall.floor() as u64..=now_wall.max(wall).floor() as u64);
                    }
                    (wall, steady) = (now_wall, now_steady);
                }
            }
        });
        Watch { disturbed, stop, thread: Some(thread) }
    }

    /// Whether anything happened from `from` to `to` (wall-clock seconds).
    fn calm(&self, from: u64, to: u64) -> bool {
        !self.disturbed.lock().unwrap().iter().any(|s| (from..=to).contains(s))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits for 0.2 s into the next whole second.
fn into_next_second() {
    let now = unix_now();
    std::thread::sleep(Duration::from_secs_f64(now.floor() + 1.2 - now));
}

/// What one burst did: its requests, and the second they were all answered in when that is
/// certain (sent and answered between 0.2 s and 0.8 s into one second).
struct Burst {
    requests: u64,
    second: Option<u64>,
    /// Seconds it may have been counted in, when not certain.
    span: (u64, u64),
}

/// `n` GETs of `path` on one keep-alive connection, each answered `status`.
fn burst(lb: SocketAddr, path: &str, n: u64, status: u16) -> Burst {
    let mut conn = Conn::open(lb);
    let start = unix_now();
    for _ in 0..n {
        let response = conn.get(path);
        assert_eq!(response.status, status, "{path}: {}", response.text());
    }
    let end = unix_now();
    let second = start.floor();
    let certain = end.floor() == second && start - second >= 0.2 && end - second < 0.8;
    // The sampler reads just after a boundary: a count may fall in the second before.
    let span = (start.floor() as u64 - 1, end.floor() as u64 + 1);
    Burst { requests: n, second: certain.then_some(second as u64), span }
}

/// Waits until the history's last complete second is at least `second`.
fn history_through(lb: SocketAddr, second: u64) -> Value {
    let mut last = Value::Null;
    let reached = wait_until(LIMIT, || {
        last = history(lb, "");
        last["end"].as_u64().is_some_and(|end| end >= second)
    });
    assert!(reached, "the history did not reach second {second}: {last}");
    last
}

/// The value of `column` at `second` in `series` (an object of columns aligned with `time`).
fn at(h: &Value, series: &Value, column: &str, second: u64) -> Value {
    let start = h["start"].as_u64().unwrap();
    series[column][(second - start) as usize].clone()
}

fn backend_series<'a>(h: &'a Value, id: &str) -> &'a Value {
    h["backends"].as_array().unwrap().iter().find(|b| b["id"] == id).unwrap_or_else(|| panic!("no {id} in {h}"))
}

fn column_sum(series: &Value, column: &str) -> u64 {
    series[column].as_array().unwrap().iter().filter_map(Value::as_u64).sum()
}

/// Bursts of `sizes` one second apart (the second between stays quiet), tried again in later
/// seconds until at least two were certain (at most 10 rounds).
fn bursts(lb: SocketAddr, path: &str, sizes: &[u64], status: u16) -> Vec<Burst> {
    let watch = Watch::start();
    let mut sent = Vec::new();
    for _ in 0..10 {
        for &n in sizes {
            into_next_second();
            sent.push(burst(lb, path, n, status));
            into_next_second(); // a quiet second
        }
        // The sampler read at the burst second's start and end: both in a calm stretch.
        wait_until(LIMIT, || unix_now() >= sent.last().unwrap().span.1 as f64 + 0.5);
        for b in &mut sent {
            if b.second.is_some_and(|s| !watch.calm(s - 1, s + 1)) {
                b.second = None;
            }
        }
        if sent.iter().filter(|b| b.second.is_some()).count() >= 2 {
            return sent;
        }
    }
    panic!("no two bursts of {sizes:?} requests were answered within a second in 10 rounds");
}

/// The bursts' requests are in the history: exactly in their second when it is certain, every
/// other second without requests, and all of them in the sum; per backend, round robin's halves.
fn assert_bursts_in_history(lb: SocketAddr, sent: &[Burst], ids: &[&str]) -> Value {
    let last = sent.iter().map(|b| b.span.1).max().unwrap();
    let h = history_through(lb, last + 1);
    let total = &h["total"];
    let start = h["start"].as_u64().unwrap();
    let end = h["end"].as_u64().unwrap();
    assert_eq!(h["time"].as_array().unwrap().len() as u64, end - start + 1);
    for b in sent {
        if let Some(second) = b.second {
            assert_eq!(at(&h, total, "requests", second), b.requests, "second {second}: {h}");
            for id in ids {
                let mine = at(&h, backend_series(&h, id), "requests", second);
                assert_eq!(mine, b.requests / ids.len() as u64, "{id} in second {second}: {h}");
            }
        }
    }
    for second in start..=end {
        let in_a_burst = sent.iter().any(|b| match b.second {
            Some(s) => s == second,
            None => (b.span.0..=b.span.1).contains(&second),
        });
        if !in_a_burst {
            assert_eq!(at(&h, total, "requests", second), 0, "second {second} had no request: {h}");
            assert_eq!(at(&h, total, "p50_ms", second), Value::Null, "no latency without answers");
        }
    }
    let sent_in_all: u64 = sent.iter().map(|b| b.requests).sum();
    assert_eq!(column_sum(total, "requests"), sent_in_all, "every request, once: {h}");
    for id in ids {
        assert_eq!(column_sum(backend_series(&h, id), "requests"), sent_in_all / ids.len() as u64, "{id}: {h}");
    }
    h
}

#[test]
fn requests_are_found_in_the_seconds_they_were_answered_in() {
    let backends: Vec<ChildProcess> = (0..2).map(|_| backend(&[])).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(ChildProcess::addr).collect();
    let lb = balancer(&addrs, |_| {});
    let addr = lb.local_addr();
    let sent = bursts(addr, "/", &[8, 12], 200);
    let h = assert_bursts_in_history(addr, &sent, &["b1", "b2"]);
    let second = sent.iter().find_map(|b| b.second).unwrap();
    assert_eq!(at(&h, &h["total"], "status_5xx", second), 0);
    assert_eq!(at(&h, &h["total"], "failures", second), 0);
    assert!(at(&h, &h["total"], "p50_ms", second).as_f64().is_some_and(|ms| ms > 0.0), "{h}");
    // The whole, the default pool and its two backends: a fixed size each, whatever the traffic.
    assert_eq!(h["memory_bytes"], (4 * SERIES_BYTES) as u64);
    assert_eq!((h["interval_seconds"].as_u64(), h["window_seconds"].as_u64()), (Some(1), Some(900)));
    let stats = Conn::open(addr).get("/lb/stats").json();
    assert_eq!(stats["total_requests"], column_sum(&h["total"], "requests"), "the history adds up to the counters");
    lb.stop(LIMIT);
}

#[test]
fn a_second_of_5xx_holds_them_and_its_latency() {
    let backends: Vec<ChildProcess> = (0..2).map(|_| backend(&[])).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(ChildProcess::addr).collect();
    let lb = balancer(&addrs, |_| {});
    let addr = lb.local_addr();
    // 503s taking 30 ms or more each: a 5xx answer is relayed, not retried.
    let sent = bursts(addr, "/?status=503&delay_ms=30", &[4, 6], 503);
    let h = assert_bursts_in_history(addr, &sent, &["b1", "b2"]);
    for second in sent.iter().filter_map(|b| b.second) {
        let n = at(&h, &h["total"], "requests", second);
        assert_eq!(at(&h, &h["total"], "status_5xx", second), n, "{h}");
        for id in ["b1", "b2"] {
            let b = backend_series(&h, id);
            assert_eq!(at(&h, b, "status_5xx", second), at(&h, b, "requests", second), "{id}: {h}");
            assert_eq!(at(&h, b, "failures", second), 0, "an answer is not a failed try");
            assert!(at(&h, b, "p50_ms", second).as_f64().is_some_and(|ms| ms >= 30.0), "{id}: {h}");
        }
        let p50 = at(&h, &h["total"], "p50_ms", second).as_f64().unwrap();
        let p99 = at(&h, &h["total"], "p99_ms", second).as_f64().unwrap();
        assert!(p50 >= 30.0 && p99 >= p50, "{h}");
    }
    lb.stop(LIMIT);
}

#[test]
fn failed_tries_are_in_the_refusing_backends_second_and_in_all() {
    let live = backend(&[]);
    let refused = refused_addr();
    let lb = balancer(&[live.addr(), refused], |c| {
        c.pool.max_tries = 3;
        // Kept closed, so a round tried again still sends tries there.
        c.breaker.consecutive_failures = 1_000_000;
    });
    let addr = lb.local_addr();
    let watch = Watch::start();
    let mut certain = Vec::new();
    for _ in 0..10 {
        into_next_second();
        // Four GETs: the refusing backend's tries fail and go to the live one.
        let b = burst(addr, "/", 4, 200);
        into_next_second();
        wait_until(LIMIT, || unix_now() >= b.span.1 as f64 + 0.5);
        if let Some(second) = b.second.filter(|&s| watch.calm(s - 1, s + 1)) {
            certain.push(second);
            break;
        }
    }
    let second = *certain.first().expect("a burst answered within one second in 10 rounds");
    let h = history_through(addr, second + 1);
    let (total, good, bad) = (&h["total"], backend_series(&h, "b1"), backend_series(&h, "b2"));
    let failures = at(&h, bad, "failures", second).as_u64().unwrap();
    assert!(failures > 0, "{h}");
    assert_eq!(at(&h, bad, "requests", second), failures, "every try at it failed: {h}");
    assert_eq!(at(&h, bad, "p50_ms", second), Value::Null, "no answer, no latency");
    assert_eq!(at(&h, total, "failures", second), failures);
    assert_eq!(at(&h, total, "requests", second), 4, "the clients' requests, each answered once");
    assert_eq!(at(&h, good, "requests", second), 4);
    assert_eq!(at(&h, total, "status_5xx", second), 0, "retried: nobody saw a 5xx");
    lb.stop(LIMIT);
}

/// The pool named `name` in a whole answer's `pools`.
fn pool_series<'a>(h: &'a Value, name: &str) -> &'a Value {
    h["pools"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no pool {name} in {h}"))
}

#[test]
fn a_routed_pool_has_its_own_history_and_the_whole_answer_keeps_its_shape() {
    let backends: Vec<ChildProcess> = (0..3).map(|_| backend(&[])).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(ChildProcess::addr).collect();
    // api's first backend has the id of default's: each keeps its own series.
    let api = |id: &str, i: usize| json!({"id": id, "host": "127.0.0.1", "port": addrs[i].port()});
    let lb = balancer(&addrs[..1], |config| {
        let extra: Config = serde_json::from_value(json!({
            "pools": {"api": {"backends": [api("b1", 1), api("a2", 2)]}},
            "routes": [{"name": "api", "path_prefix": "/api", "pool": "api"}],
        }))
        .unwrap();
        (config.pools, config.routes) = (extra.pools, extra.routes);
    });
    let addr = lb.local_addr();
    let sent = bursts(addr, "/api/x", &[8, 12], 200);
    let last = sent.iter().map(|b| b.span.1).max().unwrap();
    let whole = history_through(addr, last + 1);
    let pool = history(addr, "?pool=api");
    assert!(pool["end"].as_u64() >= whole["end"].as_u64(), "{pool}");
    let names: Vec<_> = whole["pools"].as_array().unwrap().iter().map(|p| (&p["name"], &p["in_config"])).collect();
    assert_eq!(names, [(&json!("default"), &json!(true)), (&json!("api"), &json!(true))], "{whole}");
    assert!(whole.get("pool").is_none() && pool.get("pools").is_none());
    assert_eq!(pool["pool"], "api");
    // The whole answer's backends stay the default pool's.
    let ids: Vec<_> = whole["backends"].as_array().unwrap().iter().map(|b| b["id"].clone()).collect();
    assert_eq!(ids, [json!("b1")]);
    let ids: Vec<_> = pool["backends"].as_array().unwrap().iter().map(|b| b["id"].clone()).collect();
    assert_eq!(ids, [json!("b1"), json!("a2")]);
    let sent_in_all: u64 = sent.iter().map(|b| b.requests).sum();
    for b in sent.iter().filter(|b| b.second.is_some()) {
        let second = b.second.unwrap();
        assert_eq!(at(&whole, &whole["total"], "requests", second), b.requests, "{whole}");
        assert_eq!(at(&whole, pool_series(&whole, "api"), "requests", second), b.requests, "{whole}");
        assert_eq!(at(&whole, pool_series(&whole, "default"), "requests", second), 0, "{whole}");
        assert_eq!(at(&pool, &pool["total"], "requests", second), b.requests, "{pool}");
        for id in ["b1", "a2"] {
            assert_eq!(at(&pool, backend_series(&pool, id), "requests", second), b.requests / 2, "{id}: {pool}");
        }
        assert!(at(&pool, &pool["total"], "p50_ms", second).as_f64().is_some_and(|ms| ms > 0.0), "{pool}");
    }
    assert_eq!(column_sum(pool_series(&whole, "api"), "requests"), sent_in_all, "{whole}");
    assert_eq!(column_sum(&pool["total"], "requests"), sent_in_all, "{pool}");
    assert_eq!(column_sum(pool_series(&whole, "default"), "requests"), 0);
    assert_eq!(column_sum(backend_series(&whole, "b1"), "requests"), 0, "default's b1 took none: {whole}");
    assert_eq!(column_sum(backend_series(&pool, "b1"), "requests"), sent_in_all / 2, "api's b1 half: {pool}");
    // The whole, two pools, three backends.
    assert_eq!(whole["memory_bytes"], (6 * SERIES_BYTES) as u64);
    let default = history(addr, "?pool=default");
    assert_eq!((default["pool"].as_str(), column_sum(&default["total"], "requests")), (Some("default"), 0));
    for (query, status, says) in
        [("?pool=nope", 404, "no pool 'nope'"), ("?pool=a%2Fb", 400, "pool must be a pool's name, not 'a%2Fb'")]
    {
        let response = Conn::open(addr).get(&format!("/lb/history{query}"));
        assert_eq!(response.status, status, "{query}: {}", response.text());
        assert!(response.json()["error"].as_str().unwrap().contains(says), "{query}: {}", response.text());
    }
    lb.stop(LIMIT);
}

#[test]
fn seconds_asks_for_the_last_n_and_bad_queries_are_refused() {
    let b = backend(&[]);
    let started = unix_now().floor() as u64;
    let lb = balancer(&[b.addr()], |_| {});
    let addr = lb.local_addr();
    let h = history(addr, "");
    let times = h["time"].as_array().unwrap();
    assert!(times.iter().all(|t| t.as_u64().unwrap() >= started), "a fresh balancer has no past: {h}");
    let reached =
        wait_until(LIMIT, || history(addr, "").get("time").and_then(Value::as_array).is_some_and(|t| t.len() >= 3));
    assert!(reached, "three seconds of history");
    let h = history(addr, "?seconds=2");
    let time: Vec<u64> = h["time"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    assert_eq!(time.len(), 2, "{h}");
    assert_eq!((h["start"].as_u64(), h["end"].as_u64()), (Some(time[0]), Some(time[1])));
    assert_eq!(time[1], time[0] + 1);
    for column in ["requests", "status_5xx", "failures", "p50_ms", "p99_ms"] {
        assert_eq!(h["total"][column].as_array().unwrap().len(), 2, "{column}: {h}");
        assert_eq!(h["backends"][0][column].as_array().unwrap().len(), 2, "{column}: {h}");
    }
    assert_eq!((h["backends"][0]["id"].as_str(), h["backends"][0]["in_table"].as_bool()), (Some("b1"), Some(true)));
    for (query, says) in [
        ("?seconds=0", "seconds must be an integer 1-900"),
        ("?seconds=901", "seconds must be an integer 1-900"),
        ("?seconds=ten", "seconds must be an integer 1-900"),
        ("?until=5", "unknown parameter 'until=5'"),
    ] {
        let response = Conn::open(addr).get(&format!("/lb/history{query}"));
        assert_eq!(response.status, 400, "{query}");
        assert!(response.json()["error"].as_str().unwrap().contains(says), "{query}: {}", response.text());
    }
    let mut conn = Conn::open(addr);
    conn.send(b"POST /lb/history HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n");
    let response = conn.response();
    assert_eq!((response.status, response.header("allow")), (405, Some("GET, HEAD, OPTIONS")));
    lb.stop(LIMIT);
}

/// `f(end)` with the history's last second `end`, read again after: tried again (within the
/// bound) until no second was completed meanwhile, so what `f` read is exact for that `end`.
fn at_a_still_end<T>(lb: SocketAddr, mut f: impl FnMut(u64) -> T) -> (Value, T) {
    let mut found = None;
    let still = wait_until(LIMIT, || {
        let whole = history(lb, "");
        let Some(end) = whole["end"].as_u64() else { return false };
        let got = f(end);
        found = Some((whole, got));
        history(lb, "")["end"].as_u64() == Some(end)
    });
    assert!(still, "the history's end moved on every try");
    found.unwrap()
}

/// The columns of `series` from index `from` on.
fn tail(series: &Value, from: usize) -> Value {
    let mut out = series.clone();
    for column in ["requests", "status_5xx", "failures", "p50_ms", "p99_ms"] {
        out[column] = Value::Array(series[column].as_array().unwrap()[from..].to_vec());
    }
    out
}

#[test]
fn since_gives_only_the_newer_seconds_and_every_backend_of_the_window() {
    let backends: Vec<ChildProcess> = (0..2).map(|_| backend(&[])).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(ChildProcess::addr).collect();
    let lb = balancer(&addrs, |_| {});
    let addr = lb.local_addr();
    let reached =
        wait_until(LIMIT, || history(addr, "").get("time").and_then(Value::as_array).is_some_and(|t| t.len() >= 4));
    assert!(reached, "four seconds of history");
    for _ in 0..6 {
        assert_eq!(Conn::open(addr).get("/").status, 200);
    }
    // b2 leaves the table: it stays in the window, and so in every answer, with `since` too.
    let mut conn = Conn::open(addr);
    conn.send(b"DELETE /lb/backends/b2/remove HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(conn.response().status, 200);
    // Read until a sample found nothing in flight, then let go: its last seconds are empty.
    let released = wait_until(LIMIT, || {
        let h = history(addr, "");
        let b2 = backend_series(&h, "b2")["requests"].as_array().unwrap().clone();
        b2.len() >= 2 && b2[b2.len() - 2..].iter().all(Value::is_null)
    });
    assert!(released, "b2's last two seconds empty after its removal");

    // The last two seconds: exactly those of the whole answer, for the whole and each backend.
    let (whole, newer) = at_a_still_end(addr, |end| history(addr, &format!("?since={}", end - 2)));
    let end = whole["end"].as_u64().unwrap();
    let n = whole["time"].as_array().unwrap().len();
    assert_eq!(newer["time"], serde_json::json!([end - 1, end]), "{newer}");
    assert_eq!((newer["start"].as_u64(), newer["end"].as_u64()), (Some(end - 1), Some(end)));
    assert_eq!(newer["total"], tail(&whole["total"], n - 2), "{newer}");
    let ids = |h: &Value| -> Vec<(String, bool)> {
        h["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["id"].as_str().unwrap().into(), b["in_table"] == true))
            .collect()
    };
    assert_eq!(ids(&newer), [("b1".to_string(), true), ("b2".to_string(), false)], "{newer}");
    assert_eq!(ids(&whole), ids(&newer));
    for (mine, all) in newer["backends"].as_array().unwrap().iter().zip(whole["backends"].as_array().unwrap()) {
        assert_eq!(*mine, tail(all, n - 2));
    }
    assert_eq!(newer["backends"][1]["requests"], serde_json::json!([null, null]), "b2 has nothing newer: {newer}");

    // Nothing newer: no second, the backends still listed with empty columns.
    let (_, none) = at_a_still_end(addr, |end| history(addr, &format!("?since={end}")));
    assert_eq!(
        (none["time"].as_array().map(Vec::len), none["start"].is_null(), none["end"].is_null()),
        (Some(0), true, true)
    );
    assert_eq!(ids(&none), [("b1".to_string(), true), ("b2".to_string(), false)], "{none}");
    assert_eq!(none["backends"][1]["requests"], serde_json::json!([]));
    assert_eq!(history(addr, &format!("?since={}", u64::MAX))["time"], serde_json::json!([]));

    // Before the window: the whole window; with seconds=N, the newer of the last N.
    let (whole, all) = at_a_still_end(addr, |_| history(addr, "?since=0"));
    assert_eq!(all, whole);
    let (whole, one) = at_a_still_end(addr, |end| history(addr, &format!("?seconds=1&since={}", end - 3)));
    assert_eq!(one["time"], serde_json::json!([whole["end"]]), "{one}");

    for query in ["?since=", "?since=soon", "?since=-1", "?since=1.5", "?since=18446744073709551616"] {
        let response = Conn::open(addr).get(&format!("/lb/history{query}"));
        assert_eq!(response.status, 400, "{query}");
        let value = query.trim_start_matches("?since=");
        assert_eq!(
            response.json()["error"],
            format!("since must be a unix time in whole seconds, not '{value}'"),
            "{query}: {}",
            response.text()
        );
    }
    lb.stop(LIMIT);
}

#[test]
fn history_needs_the_token_and_the_chart_library_does_not() {
    let b = backend(&[]);
    let lb = balancer(&[b.addr()], |c| c.operations.admin_token = Some("s3cret".into()));
    let addr = lb.local_addr();
    assert_eq!(Conn::open(addr).get("/lb/history").status, 401);
    let mut conn = Conn::open(addr);
    conn.send(b"GET /lb/history?seconds=1 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer s3cret\r\n\r\n");
    assert_eq!(conn.response().status, 200);
    // The page and its chart library hold no data: served before the access check.
    let js = Conn::open(addr).get("/lb/dashboard/uplot.js");
    assert_eq!((js.status, js.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
    assert_eq!(js.body, include_bytes!("../src/admin/vendor/uplot/uPlot.iife.min.js"));
    let css = Conn::open(addr).get("/lb/dashboard/uplot.css");
    assert_eq!((css.status, css.header("content-type")), (200, Some("text/css; charset=utf-8")));
    assert_eq!(css.body, include_bytes!("../src/admin/vendor/uplot/uPlot.min.css"));
    let page = Conn::open(addr).get("/lb/dashboard");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/dashboard/uplot.js") && page.text().contains("id=\"chart-requests\""));
    assert_eq!(Conn::open(addr).get("/lb/dashboard/other.js").status, 401, "nothing else is let through");
    lb.stop(LIMIT);
}
