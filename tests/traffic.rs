//! Traffic control end to end over real sockets: the global and per-client rate limits (429,
//! Retry-After, X-RateLimit-*, nothing reaches a backend, refill, exact counters, a bounded
//! client table) and sticky sessions by cookie (stickiness, failover and re-issue, forged and
//! stale cookies, two balancers sharing cookies, the backend's own cookies, ip_hash).

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::lb::lb_sync;
use common::{served_by, wait_until, Conn, Resp};
use lb_sync::balance::AlgorithmKind;
use lb_sync::balancer::LoadBalancer;
use lb_sync::client_ip::Cidr;
use lb_sync::config::{BackendConfig, Config};
use lb_sync::demo_backend::DemoBackend;
use lb_sync::server::{bind, Handler, Request, Response, Server, ServerConfig};
use lb_sync::traffic::{RateLimitConfig, RateLimiter, StickyCookie};

const COOKIE: &str = "SRV";
const SECRET: &str = "test secret";

/// The demo backend, counting every request it is sent but health probes, and failing its
/// health checks while `sick` is set.
struct Counting {
    demo: DemoBackend,
    hits: Arc<AtomicUsize>,
    sick: Arc<AtomicBool>,
}

impl Handler for Counting {
    fn handle(&self, request: Request) -> Response {
        if request.path() == "/health" {
            if self.sick.load(Ordering::Relaxed) {
                return Response::text(503, "sick");
            }
        } else {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        self.demo.handle(request)
    }
}

/// An in-process demo backend on an ephemeral port (its id is `backend-<port>`), with the count
/// of requests that reached it.
struct Backend {
    server: Server,
    port: u16,
    hits: Arc<AtomicUsize>,
    sick: Arc<AtomicBool>,
}

impl Backend {
    fn start() -> Backend {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hits, sick) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let demo = DemoBackend::new(port, "127.0.0.1", None);
        let handler = Counting { demo, hits: Arc::clone(&hits), sick: Arc::clone(&sick) };
        let server =
            Server::start_on(listener, ServerConfig { threads: 4, ..ServerConfig::default() }, handler).unwrap();
        Backend { server, port, hits, sick }
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
    let backends = backends.iter().map(|b| BackendConfig::new("127.0.0.1", b.port, 1)).collect();
    {
        let mut adjusted = common::inproc::config(backends);
        adjusted.pool.algorithm = algorithm;
        adjusted.listener.threads = 4;
        adjusted.health.interval = None;
        adjusted
    }
}

fn sticky_config(algorithm: AlgorithmKind, backends: &[Backend]) -> Config {
    {
        let mut adjusted = config(algorithm, backends);
        adjusted.pool.sticky_cookie = Some(COOKIE.into());
        adjusted.pool.sticky_secret = Some(SECRET.into());
        adjusted
    }
}

/// `GET path` with extra header lines (each ending in CRLF).
fn get(conn: &mut Conn, path: &str, extra_headers: &str) -> Resp {
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra_headers}\r\n").as_bytes());
    conn.response()
}

fn post(conn: &mut Conn, path: &str) -> Resp {
    conn.send(format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes());
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
    let lb = LoadBalancer::start({
        let mut adjusted = config(AlgorithmKind::RoundRobin, &backends);
        adjusted.client_limits.rate_limit = 20.0;
        adjusted.client_limits.rate_limit_burst = 5;
        adjusted
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
    let limited = |c: Config| {
        let mut adjusted = c;
        adjusted.client_limits.client_rate_limit = 0.25;
        adjusted.client_limits.client_rate_limit_burst = 2;
        adjusted
    };
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
    let untrusted = LoadBalancer::start({
        let mut adjusted = limited(config(AlgorithmKind::RoundRobin, &backends));
        adjusted.listener.trusted_proxies = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        adjusted
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
    let lb = LoadBalancer::start({
        let mut adjusted = config(AlgorithmKind::RoundRobin, &backends);
        adjusted.client_limits.rate_limit = 0.25;
        adjusted.client_limits.rate_limit_burst = 3;
        adjusted
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
    let lb = LoadBalancer::start({
        let mut adjusted = config(AlgorithmKind::RoundRobin, &[]);
        adjusted.client_limits.rate_limit = 0.25;
        adjusted.client_limits.rate_limit_burst = 1;
        adjusted.backends = vec![BackendConfig::new("127.0.0.1", port, 1)];
        adjusted
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

/// Our cookie's `Set-Cookie` in a response, if any.
fn our_set_cookie(resp: &Resp) -> Option<String> {
    let ours: Vec<&str> = resp.headers_named("set-cookie").into_iter().filter(|v| v.starts_with("SRV=")).collect();
    assert!(ours.len() <= 1, "our cookie set twice: {ours:?}");
    ours.first().map(|v| v.to_string())
}

/// The value in `SRV=VALUE; ...`.
fn cookie_value(set_cookie: &str) -> String {
    set_cookie.strip_prefix("SRV=").unwrap().split(';').next().unwrap().to_string()
}

fn with_cookie(value: &str) -> String {
    format!("Cookie: theme=dark; {COOKIE}={value}; lang=en\r\n")
}

/// One request with `cookie` (if any): who answered, and the cookie value set (if any).
fn sticky_get(conn: &mut Conn, cookie: Option<&str>) -> (String, Option<String>) {
    let resp = get(conn, "/", &cookie.map(with_cookie).unwrap_or_default());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let set = our_set_cookie(&resp).map(|c| cookie_value(&c));
    (served_by(&resp), set)
}

#[test]
fn a_session_stays_on_its_backend_and_moves_once_when_that_backend_is_disabled() {
    let backends = backends(3);
    let lb = LoadBalancer::start(sticky_config(AlgorithmKind::RoundRobin, &backends)).unwrap();
    let mut conn = Conn::open(lb.local_addr());
    let id_of = |served: &str| {
        let i = backends.iter().position(|b| format!("backend-{}", b.port) == served).unwrap();
        format!("backend{}", i + 1)
    };

    let resp = conn.get("/");
    let set_cookie = our_set_cookie(&resp).expect("a first answer sets the cookie");
    let home = served_by(&resp);
    let value = cookie_value(&set_cookie);
    assert_eq!(set_cookie, format!("SRV={value}; Max-Age=3600; Path=/; HttpOnly"));
    assert_eq!(value.len(), 32, "128 bits in hex");
    for port in backends.iter().map(|b| b.port) {
        assert!(!value.contains(&port.to_string()), "the cookie reveals a port");
    }
    assert!(!value.contains("127.0.0.1") && !value.contains("backend"));

    // 100 requests with the cookie: one backend, no cookie sent again; cookieless requests
    // between them are still balanced.
    let mut others = BTreeSet::new();
    for i in 0..100 {
        assert_eq!(sticky_get(&mut conn, Some(&value)), (home.clone(), None), "request {i}");
        if i % 10 == 0 {
            others.insert(sticky_get(&mut conn, None).0);
        }
    }
    assert_eq!(others.len(), 3, "round robin goes on for requests without the cookie: {others:?}");

    // Its backend disabled: balanced again, once, with a new cookie; then it stays there.
    assert_eq!(post(&mut conn, &format!("/lb/backends/{}/disable", id_of(&home))).status, 200);
    let (new_home, new_value) = sticky_get(&mut conn, Some(&value));
    let new_value = new_value.expect("the cookie is issued again");
    assert_ne!(new_home, home);
    assert_ne!(new_value, value);
    for _ in 0..20 {
        assert_eq!(sticky_get(&mut conn, Some(&new_value)), (new_home.clone(), None));
    }
    // The old backend back: the session stays where its cookie now says.
    assert_eq!(post(&mut conn, &format!("/lb/backends/{}/enable", id_of(&home))).status, 200);
    for _ in 0..6 {
        assert_eq!(sticky_get(&mut conn, Some(&new_value)), (new_home.clone(), None));
    }
    // And the old cookie leads to the old backend again.
    assert_eq!(sticky_get(&mut conn, Some(&value)), (home.clone(), None));
    lb.stop(Duration::from_secs(1));
}

#[test]
fn the_token_is_an_hmac_of_id_and_address_and_never_reaches_the_backend() {
    let backends = backends(1);
    let lb = LoadBalancer::start(sticky_config(AlgorithmKind::RoundRobin, &backends)).unwrap();
    let mut conn = Conn::open(lb.local_addr());
    let (_, value) = sticky_get(&mut conn, None);
    let expected = StickyCookie::new(COOKIE, Some(SECRET), Duration::from_secs(1))
        .token("backend1", &format!("127.0.0.1:{}", backends[0].port));
    assert_eq!(value.as_deref(), Some(expected.as_str()));
    // The backend sees the client's other cookies, not ours (HAProxy's `indirect`).
    let resp = get(&mut conn, "/", &with_cookie(&expected));
    assert_eq!(resp.json()["request"]["headers"]["cookie"], "theme=dark; lang=en");
    let resp = get(&mut conn, "/", &format!("Cookie: {COOKIE}={expected}\r\n"));
    assert!(resp.json()["request"]["headers"].get("cookie").is_none(), "a Cookie header of ours alone is dropped");
    lb.stop(Duration::from_secs(1));
}

#[test]
fn forged_and_stale_cookies_are_balanced_as_usual_and_replaced() {
    let backends = backends(3);
    let lb = LoadBalancer::start(sticky_config(AlgorithmKind::RoundRobin, &backends)).unwrap();
    let mut conn = Conn::open(lb.local_addr());
    let address = |i: usize| format!("127.0.0.1:{}", backends[i].port);
    let other_secret = StickyCookie::new(COOKIE, Some("a guess"), Duration::from_secs(1));
    let no_secret = StickyCookie::new(COOKIE, None, Duration::from_secs(1));
    let ours = StickyCookie::new(COOKIE, Some(SECRET), Duration::from_secs(1));
    let forged = [
        "garbage".to_string(),
        String::new(),
        "0".repeat(32),
        other_secret.token("backend2", &address(1)),
        no_secret.token("backend2", &address(1)),
        ours.token("backend2", "127.0.0.1:1"), // a backend2 that moved
    ];
    let mut seen = BTreeSet::new();
    for value in &forged {
        let (served, set) = sticky_get(&mut conn, Some(value));
        let set = set.unwrap_or_else(|| panic!("{value:?} was honoured"));
        // The new cookie names the backend that answered.
        assert_eq!(sticky_get(&mut conn, Some(&set)), (served.clone(), None));
        seen.insert(served);
    }
    assert!(seen.len() >= 2, "forged cookies are balanced as usual (round robin), not sent to one: {seen:?}");

    // A stale cookie: its backend was removed.
    let (gone, value) = sticky_get(&mut conn, None);
    let value = value.unwrap();
    let index = backends.iter().position(|b| format!("backend-{}", b.port) == gone).unwrap();
    let resp = {
        conn.send(format!("DELETE /lb/backends/backend{}/remove HTTP/1.1\r\nHost: t\r\n\r\n", index + 1).as_bytes());
        conn.response()
    };
    assert_eq!(resp.status, 200);
    let (served, set) = sticky_get(&mut conn, Some(&value));
    assert_ne!(served, gone);
    let set = set.expect("a new cookie for the removed backend's client");
    assert_eq!(sticky_get(&mut conn, Some(&set)), (served, None));
    lb.stop(Duration::from_secs(1));
}

#[test]
fn two_balancers_with_the_same_configuration_honour_each_others_cookies() {
    let backends = backends(3);
    let first = LoadBalancer::start(sticky_config(AlgorithmKind::RoundRobin, &backends)).unwrap();
    let second = LoadBalancer::start(sticky_config(AlgorithmKind::RoundRobin, &backends)).unwrap();
    let other_secret = LoadBalancer::start({
        let mut adjusted = sticky_config(AlgorithmKind::RoundRobin, &backends);
        adjusted.pool.sticky_secret = Some("another secret".into());
        adjusted
    })
    .unwrap();
    let mut a = Conn::open(first.local_addr());
    let mut b = Conn::open(second.local_addr());
    let mut c = Conn::open(other_secret.local_addr());
    // One cookie per backend from the first balancer (round robin: three requests).
    let sessions: Vec<(String, String)> = (0..3)
        .map(|_| {
            let (served, set) = sticky_get(&mut a, None);
            (served, set.unwrap())
        })
        .collect();
    assert_eq!(sessions.iter().map(|s| &s.0).collect::<BTreeSet<_>>().len(), 3);
    for (home, value) in &sessions {
        for _ in 0..10 {
            assert_eq!(sticky_get(&mut b, Some(value)), (home.clone(), None), "the second balancer honours it");
        }
    }
    // A balancer with another secret does not know these cookies: it balances and re-issues.
    let (_, set) = sticky_get(&mut c, Some(&sessions[1].1));
    assert!(set.is_some_and(|v| v != sessions[1].1));
    first.stop(Duration::from_secs(1));
    second.stop(Duration::from_secs(1));
    other_secret.stop(Duration::from_secs(1));
}

#[test]
fn the_backends_own_set_cookie_headers_pass_beside_ours() {
    let backends = backends(2);
    let lb = LoadBalancer::start(sticky_config(AlgorithmKind::RoundRobin, &backends)).unwrap();
    let mut conn = Conn::open(lb.local_addr());
    let resp = conn.get("/?set_cookies=2");
    let set_cookies = resp.headers_named("set-cookie");
    assert_eq!(set_cookies.len(), 3, "{set_cookies:?}");
    assert_eq!(set_cookies[..2], ["cookie0=value0; Path=/", "cookie1=value1; Path=/"]);
    let value = cookie_value(set_cookies[2]);
    let resp = get(&mut conn, "/?set_cookies=2", &with_cookie(&value));
    assert_eq!(resp.headers_named("set-cookie"), ["cookie0=value0; Path=/", "cookie1=value1; Path=/"]);
    lb.stop(Duration::from_secs(1));
}

#[test]
fn with_ip_hash_a_valid_cookie_wins_and_without_one_ip_hash_picks() {
    let backends = backends(3);
    let lb = LoadBalancer::start(sticky_config(AlgorithmKind::IpHash, &backends)).unwrap();
    let mut conn = Conn::open(lb.local_addr());
    let from = |conn: &mut Conn, client: &str, cookie: Option<&str>| {
        let mut headers = format!("X-Forwarded-For: {client}\r\n");
        headers.push_str(&cookie.map(with_cookie).unwrap_or_default());
        let resp = get(conn, "/", &headers);
        (served_by(&resp), our_set_cookie(&resp).map(|c| cookie_value(&c)))
    };
    // Without a cookie: ip_hash's pick, and the cookie names it.
    let (hashed, value) = from(&mut conn, "192.168.1.100", None);
    let value = value.expect("a cookie for ip_hash's pick");
    for _ in 0..5 {
        assert_eq!(from(&mut conn, "192.168.1.100", None).0, hashed, "ip_hash alone is stable");
    }
    // Another client address that ip_hash sends elsewhere...
    let elsewhere = (1..=200)
        .map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1))
        .find(|ip| from(&mut conn, ip, None).0 != hashed)
        .expect("some address hashes to another backend");
    // ...still lands on the cookie's backend: the cookie wins, and is not sent again.
    for _ in 0..5 {
        assert_eq!(from(&mut conn, &elsewhere, Some(&value)), (hashed.clone(), None));
    }
    // A client whose cookie is invalid is hashed, and gets a cookie for where it was hashed.
    let (served, set) = from(&mut conn, &elsewhere, Some("forged"));
    assert_ne!(served, hashed);
    assert_eq!(from(&mut conn, "192.168.1.100", set.as_deref()), (served, None));
    lb.stop(Duration::from_secs(1));
}

#[test]
fn an_unhealthy_or_open_circuited_sticky_backend_is_left_and_the_cookie_reissued() {
    let backends = backends(2);
    let lb = LoadBalancer::start({
        let mut adjusted = sticky_config(AlgorithmKind::RoundRobin, &backends);
        adjusted.health.interval = Some(Duration::from_secs_f64(0.05));
        adjusted.health.rise = 1;
        adjusted.health.fall = 1;
        adjusted.breaker.consecutive_failures = 1;
        adjusted.breaker.cooldown = Duration::from_secs_f64(60.0);
        adjusted
    })
    .unwrap();
    let mut conn = Conn::open(lb.local_addr());
    let (names, homes): (Vec<String>, Vec<String>) = (0..2)
        .map(|_| {
            let (served, set) = sticky_get(&mut conn, None);
            (served, set.unwrap())
        })
        .unzip();
    let healthy = |conn: &mut Conn, i: usize| conn.get("/lb/backends").json()[i]["healthy"].as_bool().unwrap();
    // backend1 fails its health checks: its session moves to backend2, with a new cookie.
    backends[0].sick.store(true, Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(5), || !healthy(&mut conn, 0)));
    let (served, set) = sticky_get(&mut conn, Some(&homes[0]));
    assert_eq!((served.as_str(), set.as_deref()), (names[1].as_str(), Some(homes[1].as_str())));
    assert_eq!(sticky_get(&mut conn, Some(&homes[1])), (names[1].clone(), None));
    // Healthy again: its cookie leads to it again.
    backends[0].sick.store(false, Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(5), || healthy(&mut conn, 0)));
    assert_eq!(sticky_get(&mut conn, Some(&homes[0])), (names[0].clone(), None));

    // backend2's breaker opens (one failure opens it here), while backend2 still answers: its
    // session goes to backend1, and backend2 is not even tried.
    let hits_before = backends[1].hits();
    let snapshot = lb.shared().pools.default_pool().table.snapshot();
    let breaker = snapshot.backends[1].breaker();
    breaker.record_failure(breaker.admit().unwrap());
    assert_eq!(conn.get("/lb/backends").json()[1]["circuit_breaker"]["state"], "open");
    let (served, set) = sticky_get(&mut conn, Some(&homes[1]));
    assert_eq!((served.as_str(), set.as_deref()), (names[0].as_str(), Some(homes[0].as_str())));
    assert_eq!(backends[1].hits(), hits_before, "the open-circuited backend got no request");
    lb.stop(Duration::from_secs(1));
}

#[test]
fn a_session_waits_for_its_backend_at_its_connection_cap_until_the_queue_timeout() {
    let backends = backends(2);
    let names: Vec<String> = backends.iter().map(|b| format!("backend-{}", b.port)).collect();
    for queue_timeout in [5.0, 0.2] {
        let lb = LoadBalancer::start({
            let mut adjusted = sticky_config(AlgorithmKind::RoundRobin, &backends);
            adjusted.pool.backend_max_connections = Some(1);
            adjusted.pool.backend_queue_timeout = Duration::from_secs_f64(queue_timeout);
            adjusted
        })
        .unwrap();
        let addr = lb.local_addr();
        let mut conn = Conn::open(addr);
        let (first, value) = sticky_get(&mut conn, None);
        assert_eq!(first, names[0], "round robin starts with backend1");
        let value = value.unwrap();
        // A slow request of the session holds backend1's one connection slot.
        let slow = {
            let value = value.clone();
            std::thread::spawn(move || served_by(&get(&mut Conn::open(addr), "/?delay_ms=800", &with_cookie(&value))))
        };
        let busy = |conn: &mut Conn| conn.get("/lb/backends").json()[0]["active_connections"] == 1;
        assert!(wait_until(Duration::from_secs(5), || busy(&mut conn)));
        let started = Instant::now();
        let (served, set) = sticky_get(&mut conn, Some(&value));
        let waited = started.elapsed();
        if queue_timeout > 1.0 {
            // It waits for its own backend rather than leave it.
            assert_eq!((served.as_str(), set), (names[0].as_str(), None), "waited {waited:?}");
        } else {
            // Still full at the queue timeout: balanced elsewhere, and the cookie moves.
            assert_eq!(served, names[1], "waited {waited:?}");
            assert!(waited >= Duration::from_millis(200), "waited {waited:?}");
            assert!(set.is_some_and(|v| v != value));
        }
        assert_eq!(slow.join().unwrap(), names[0]);
        lb.stop(Duration::from_secs(1));
    }
}

#[test]
fn a_failing_sticky_backend_is_retried_elsewhere_and_the_cookie_reissued() {
    let mut backends = backends(2);
    let lb = LoadBalancer::start(sticky_config(AlgorithmKind::RoundRobin, &backends)).unwrap();
    let mut conn = Conn::open(lb.local_addr());
    let (first, value) = sticky_get(&mut conn, None);
    let value = value.unwrap();
    assert_eq!(first, format!("backend-{}", backends[0].port), "round robin starts with backend1");
    // backend1 goes away: its port refuses connections (and its pooled ones are closed).
    backends.remove(0).server.stop(Duration::ZERO);
    let survivor = format!("backend-{}", backends[0].port);
    let (served, set) = sticky_get(&mut conn, Some(&value));
    assert_eq!(served, survivor, "the normal retry path answered");
    let set = set.expect("the cookie names the backend that answered");
    assert_eq!(sticky_get(&mut conn, Some(&set)), (survivor, None));
    let stats = conn.get("/lb/stats").json();
    assert!(stats["retries"]["retries"].as_u64().unwrap() >= 1, "{stats}");
    lb.stop(Duration::from_secs(1));
}

#[test]
fn traffic_settings_are_validated_with_one_line_errors() {
    let bad: [(&[&str], &str); 7] = [
        (&["--rate-limit", "-1"], "rate_limit must be a number of requests per second"),
        (&["--client-rate-limit", "NaN"], "client_rate_limit must be"),
        (&["--rate-limit-burst", "5"], "rate_limit_burst is 5 but rate_limit is 0"),
        (&["--client-rate-limit", "1", "--client-rate-limit-burst", "4000000000"], "client_rate_limit_burst must be"),
        (&["--sticky-cookie", "a;b"], "sticky_cookie must be a cookie name"),
        (&["--sticky-secret", "s"], "sticky_secret is set but sticky_cookie is not"),
        (&["--sticky-cookie", "SRV", "--sticky-secret", ""], "sticky_secret must not be empty"),
    ];
    for (args, message) in bad {
        let out = lb_sync(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let config: Config = serde_json::from_str(r#"{"rate_limit_max_clients": 0}"#).unwrap();
    assert!(config.validate().unwrap_err().to_string().starts_with("rate_limit_max_clients must be 1-"));
    let config: Config = serde_json::from_str(
        r#"{"rate_limit": 100, "rate_limit_burst": 200, "client_rate_limit": 0.5, "client_rate_limit_burst": 3,
            "rate_limit_max_clients": 5000, "sticky_cookie": "SERVERID", "sticky_secret": "k"}"#,
    )
    .unwrap();
    config.validate().unwrap();
    let limits = config.rate_limits();
    assert_eq!((limits.rate, limits.burst, limits.client_rate, limits.client_burst), (100.0, 200, 0.5, 3));
    assert_eq!(limits.max_clients, 5000);
}

#[test]
fn the_running_configuration_hides_the_sticky_secret() {
    let backends = backends(1);
    let lb = LoadBalancer::start({
        let mut adjusted = sticky_config(AlgorithmKind::RoundRobin, &backends);
        adjusted.client_limits.rate_limit = 50.0;
        adjusted
    })
    .unwrap();
    let mut conn = Conn::open(lb.local_addr());
    let config = conn.get("/lb/config").json();
    assert_eq!(config["sticky_cookie"], COOKIE);
    assert_eq!(config["sticky_secret"], "(set)");
    assert_eq!(config["rate_limit"], 50.0);
    assert_eq!(config["rate_limit_max_clients"], 100_000);
    assert!(!conn.get("/lb/config").text().contains(SECRET));
    lb.stop(Duration::from_secs(1));
}
