//! Traffic control end to end over real sockets: the global and per-client rate limits (429,
//! Retry-After, X-RateLimit-*, nothing reaches a backend, refill, exact counters, a bounded
//! client table).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, Conn, Resp};
use lb_sync::balance::AlgorithmKind;
use lb_sync::balancer::LoadBalancer;
use lb_sync::client_ip::Cidr;
use lb_sync::config::{BackendConfig, Config};
use lb_sync::demo_backend::DemoBackend;
use lb_sync::server::{bind, Handler, Request, Response, Server, ServerConfig};
use lb_sync::traffic::{RateLimitConfig, RateLimiter};

/// The demo backend, counting every request it is sent.
struct Counting {
    demo: DemoBackend,
    hits: Arc<AtomicUsize>,
}

impl Handler for Counting {
    fn handle(&self, request: Request) -> Response {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.demo.handle(request)
    }
}

/// An in-process demo backend on an ephemeral port (its id is `backend-<port>`), with the count
/// of requests that reached it.
struct Backend {
    _server: Server,
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Backend {
    fn start() -> Backend {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let handler = Counting { demo: DemoBackend::new(port, "127.0.0.1", None), hits: Arc::clone(&hits) };
        let server =
            Server::start_on(listener, ServerConfig { threads: 4, ..ServerConfig::default() }, handler).unwrap();
        Backend { _server: server, port, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

fn backends(n: usize) -> Vec<Backend> {
    (0..n).map(|_| Backend::start()).collect()
}

/// The configuration of a balancer in front of `backends` (ids `backend1`, `backend2`... in
/// order), no health checks (they would count as hits), no access log.
fn config(algorithm: AlgorithmKind, backends: &[Backend]) -> Config {
    Config {
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        algorithm,
        threads: 4,
        access_log: false,
        health_check_interval: 0.0,
        backends: backends.iter().map(|b| BackendConfig::new("127.0.0.1", b.port, 1)).collect(),
        ..Config::default()
    }
}

/// `GET path` with extra header lines (each ending in CRLF).
fn get(conn: &mut Conn, path: &str, extra_headers: &str) -> Resp {
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra_headers}\r\n").as_bytes());
    conn.response()
}

/// The rate-limit headers of a response: (X-RateLimit-Limit, X-RateLimit-Remaining).
fn quota(resp: &Resp) -> (Option<&str>, Option<&str>) {
    (resp.header("x-ratelimit-limit"), resp.header("x-ratelimit-remaining"))
}

fn rate_limiter_stats(conn: &mut Conn) -> (u64, u64, u64) {
    let stats = conn.get("/lb/stats").json();
    let limiter = &stats["rate_limiter"];
    assert_eq!(limiter["type"], "token_bucket", "{stats}");
    let field = |name: &str| limiter[name].as_u64().unwrap_or_else(|| panic!("no {name} in {limiter}"));
    (field("total_requests"), field("allowed_requests"), field("rejected_requests"))
}

#[test]
fn global_limit_allows_the_burst_then_429_until_a_token_is_due() {
    let backends = backends(1);
    let lb = LoadBalancer::start(Config {
        rate_limit: 20.0,
        rate_limit_burst: 5,
        ..config(AlgorithmKind::RoundRobin, &backends)
    })
    .unwrap();
    let mut conn = Conn::open(lb.local_addr());
    let (mut allowed, mut rejected) = (0, 0);

    // The burst: five at once, counting down.
    let started = Instant::now();
    for remaining in (0..5).rev() {
        let resp = conn.get("/");
        assert_eq!(resp.status, 200);
        let (limit, left) = quota(&resp);
        assert_eq!(limit, Some("5"), "allowed answers carry the quota");
        let left: u32 = left.unwrap().parse().unwrap();
        // Exact unless the machine stalled long enough for a token to come back (50 ms).
        if started.elapsed() < Duration::from_millis(50) {
            assert_eq!(left, remaining);
        } else {
            assert!(left >= remaining);
        }
        allowed += 1;
    }
    // Then 429 until the next token: one every 50 ms.
    let resp = conn.get("/");
    let elapsed = started.elapsed();
    if elapsed < Duration::from_millis(50) {
        assert_eq!(resp.status, 429, "the sixth request within the burst's 50 ms");
    }
    if resp.status == 429 {
        assert_eq!(resp.header("retry-after"), Some("1"), "50 ms rounded up to whole seconds, at least 1");
        assert_eq!(quota(&resp), (Some("5"), Some("0")));
        assert_eq!(resp.text().trim(), "too many requests");
        rejected += 1;
    } else {
        allowed += 1;
    }
    let mut more_rejected = 0;
    for _ in 0..20 {
        match conn.get("/").status {
            429 => more_rejected += 1,
            200 => allowed += 1,
            other => panic!("status {other}"),
        }
    }
    rejected += more_rejected;
    // 20 requests back to back take far less than the 50 ms x 20 it would take to refill for them.
    assert!(more_rejected >= 10, "only {more_rejected} of 20 rejected");
    assert_eq!(backends[0].hits(), allowed, "no rejected request reached the backend");

    // A token is due within 50 ms: poll until one is allowed (bounded).
    let mut refilled_after = None;
    let waiting = Instant::now();
    assert!(wait_until(Duration::from_secs(2), || {
        let resp = conn.get("/");
        if resp.status == 200 {
            allowed += 1;
            refilled_after = Some(waiting.elapsed());
            true
        } else {
            rejected += 1;
            false
        }
    }));
    assert!(refilled_after.unwrap() < Duration::from_secs(1), "refilled after {refilled_after:?}");
    assert_eq!(backends[0].hits(), allowed);
    assert_eq!(rate_limiter_stats(&mut conn), ((allowed + rejected) as u64, allowed as u64, rejected as u64));
    lb.stop(Duration::from_secs(1));
}

#[test]
fn per_client_limits_are_independent_and_keyed_by_the_trusted_client_address() {
    let backends = backends(1);
    // A token every 4 s: nothing refills during the test.
    let limited = |c: Config| Config { client_rate_limit: 0.25, client_rate_limit_burst: 2, ..c };
    let lb = LoadBalancer::start(limited(config(AlgorithmKind::RoundRobin, &backends))).unwrap();
    let mut conn = Conn::open(lb.local_addr());
    let from = |conn: &mut Conn, client: &str| get(conn, "/", &format!("X-Forwarded-For: {client}\r\n"));

    // Loopback is a trusted proxy by default: X-Forwarded-For names the client.
    for remaining in ["1", "0"] {
        let resp = from(&mut conn, "203.0.113.1");
        assert_eq!((resp.status, quota(&resp)), (200, (Some("2"), Some(remaining))));
    }
    let resp = from(&mut conn, "203.0.113.1");
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("4"), "a token every 4 s");
    // Another client has its own full bucket.
    for remaining in ["1", "0"] {
        let resp = from(&mut conn, "203.0.113.2");
        assert_eq!((resp.status, quota(&resp)), (200, (Some("2"), Some(remaining))));
    }
    assert_eq!(from(&mut conn, "203.0.113.2").status, 429);
    assert_eq!(from(&mut conn, "203.0.113.1").status, 429, "the first is still limited");
    assert_eq!(backends[0].hits(), 4);
    assert_eq!(rate_limiter_stats(&mut conn), (7, 4, 3));
    lb.stop(Duration::from_secs(1));

    // Loopback not trusted: its X-Forwarded-For is ignored, every request is 127.0.0.1's.
    let untrusted = LoadBalancer::start(Config {
        trusted_proxies: vec![Cidr::parse("10.0.0.0/8").unwrap()],
        ..limited(config(AlgorithmKind::RoundRobin, &backends))
    })
    .unwrap();
    let mut conn = Conn::open(untrusted.local_addr());
    let first = from(&mut conn, "198.51.100.1");
    assert_eq!((first.status, quota(&first)), (200, (Some("2"), Some("1"))));
    assert_eq!(first.json()["request"]["headers"]["x-real-ip"], "127.0.0.1");
    let second = from(&mut conn, "198.51.100.2");
    assert_eq!((second.status, quota(&second)), (200, (Some("2"), Some("0"))), "the same bucket");
    for client in ["198.51.100.3", "10.9.9.9", "203.0.113.1"] {
        assert_eq!(from(&mut conn, client).status, 429, "{client} did not pick a fresh bucket");
    }
    assert_eq!(conn.get("/").status, 429);
    assert_eq!(backends[0].hits(), 6);
    untrusted.stop(Duration::from_secs(1));
}

#[test]
fn rate_limiter_counters_are_exact_and_the_management_api_is_never_limited() {
    let backends = backends(2);
    let lb = LoadBalancer::start(Config {
        rate_limit: 0.25,
        rate_limit_burst: 3,
        ..config(AlgorithmKind::RoundRobin, &backends)
    })
    .unwrap();
    let mut conn = Conn::open(lb.local_addr());
    assert_eq!(rate_limiter_stats(&mut conn), (0, 0, 0));
    let mut statuses = Vec::new();
    for i in 0..10 {
        statuses.push(conn.get(&format!("/n{i}")).status);
        // Management requests between them are neither limited nor counted.
        assert_eq!(conn.get("/lb/health").status, 200);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);
    let (total, allowed, rejected) = rate_limiter_stats(&mut conn);
    assert_eq!((total, allowed, rejected), (10, 3, 7));
    assert_eq!(total, allowed + rejected);
    assert_eq!(backends.iter().map(Backend::hits).sum::<usize>(), 3);
    let stats = conn.get("/lb/stats").json();
    assert_eq!(stats["total_requests"], 10, "429s are answered requests too");
    lb.stop(Duration::from_secs(1));

    // Off: every request is allowed and counted; no quota headers.
    let lb = LoadBalancer::start(config(AlgorithmKind::RoundRobin, &backends)).unwrap();
    let mut conn = Conn::open(lb.local_addr());
    for _ in 0..7 {
        let resp = conn.get("/");
        assert_eq!((resp.status, quota(&resp)), (200, (None, None)));
    }
    assert_eq!(rate_limiter_stats(&mut conn), (7, 7, 0));
    lb.stop(Duration::from_secs(1));
}

#[test]
fn backend_rate_limit_headers_pass_unmixed_with_ours() {
    /// A backend with its own API limit headers.
    struct OwnLimits;
    impl Handler for OwnLimits {
        fn handle(&self, _: Request) -> Response {
            Response::text(200, "ok")
                .with_header("X-RateLimit-Limit", "5000")
                .with_header("X-RateLimit-Remaining", "4999")
        }
    }
    let listener = bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
    let port = listener.local_addr().unwrap().port();
    let _backend =
        Server::start_on(listener, ServerConfig { threads: 2, ..ServerConfig::default() }, OwnLimits).unwrap();
    let lb = LoadBalancer::start(Config {
        rate_limit: 0.25,
        rate_limit_burst: 1,
        backends: vec![BackendConfig::new("127.0.0.1", port, 1)],
        ..config(AlgorithmKind::RoundRobin, &[])
    })
    .unwrap();
    let mut conn = Conn::open(lb.local_addr());
    let resp = conn.get("/");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers_named("x-ratelimit-limit"), ["5000"]);
    assert_eq!(resp.headers_named("x-ratelimit-remaining"), ["4999"]);
    let resp = conn.get("/");
    assert_eq!((resp.status, quota(&resp)), (429, (Some("1"), Some("0"))), "our 429 has ours");
    lb.stop(Duration::from_secs(1));
}

/// Resident memory of this process in kB.
fn rss_kb() -> u64 {
    common::proc_status(std::process::id(), "VmRSS")
}

#[test]
fn two_hundred_thousand_client_addresses_leave_the_table_at_its_cap_with_bounded_memory() {
    let config = RateLimitConfig { client_rate: 1.0, client_burst: 1, ..RateLimitConfig::default() };
    let limiter = RateLimiter::new(&config).unwrap();
    let cap = config.max_clients;
    assert_eq!(cap, 100_000);
    let now = Instant::now();
    // Distinct addresses spread over the whole space (a multiplicative hash of a counter).
    let client = |n: u32| IpAddr::V4(Ipv4Addr::from(n.wrapping_mul(2_654_435_761)));
    let before_kb = rss_kb();
    for n in 0..200_000 {
        assert!(limiter.check(client(n), now).allowed, "a new client has a full bucket");
    }
    let full_kb = rss_kb();
    assert_eq!(limiter.entries(), cap, "200 000 clients, the table holds its cap");
    // 200 000 more: the table is already full, so it must not grow at all.
    for n in 200_000..400_000 {
        limiter.check(client(n), now);
    }
    let after_kb = rss_kb();
    assert_eq!(limiter.entries(), cap);
    assert_eq!(limiter.total_requests(), 400_000);
    eprintln!("per-client table of {cap}: RSS {before_kb} kB -> {full_kb} kB full -> {after_kb} kB after 200 000 more");
    // About 80 bytes an entry: 8 MB. Other tests of this file run beside it, hence the slack.
    assert!(full_kb.saturating_sub(before_kb) < 40 * 1024, "the full table took {} kB", full_kb - before_kb);
    assert!(after_kb.saturating_sub(full_kb) < 8 * 1024, "a full table grew {} kB", after_kb - full_kb);
}

#[test]
fn traffic_settings_are_validated_with_one_line_errors() {
    let bad: [(&[&str], &str); 4] = [
        (&["--rate-limit", "-1"], "rate_limit must be a number of requests per second"),
        (&["--client-rate-limit", "NaN"], "client_rate_limit must be"),
        (&["--rate-limit-burst", "5"], "rate_limit_burst is 5 but rate_limit is 0"),
        (&["--client-rate-limit", "1", "--client-rate-limit-burst", "4000000000"], "client_rate_limit_burst must be"),
    ];
    for (args, message) in bad {
        let out = Command::new(env!("CARGO_BIN_EXE_lb-sync")).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let config: Config = serde_json::from_str(r#"{"rate_limit_max_clients": 0}"#).unwrap();
    assert!(config.validate().unwrap_err().to_string().starts_with("rate_limit_max_clients must be 1-"));
    let config: Config = serde_json::from_str(
        r#"{"rate_limit": 100, "rate_limit_burst": 200, "client_rate_limit": 0.5, "client_rate_limit_burst": 3,
            "rate_limit_max_clients": 5000}"#,
    )
    .unwrap();
    config.validate().unwrap();
    let limits = config.rate_limits();
    assert_eq!((limits.rate, limits.burst, limits.client_rate, limits.client_burst), (100.0, 200, 0.5, 3));
    assert_eq!(limits.max_clients, 5000);
}
