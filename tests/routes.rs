//! Routes (issue 26, items 2-3) through a real lb-sync to real lb-backend processes: a config of
//! four pools and fifteen routes (hosts exact and wildcard, prefixes, an exact path, a regex, a
//! method, a header, a query, a split, a strip, a replace, an add, a redirect and a deny). A
//! table of requests says, for each, which pool serves it and the path its backend reads, or
//! the answer lb-sync gives itself. Then a 95/5 split over 10,000 clients, a backend's
//! `Location` mapped back through a strip, and what an unknown pool and no route get.
//! Loopback only; every wait polls within a bound.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::lb::{lb_sync, Lb};
use common::{backends, ChildProcess, Conn, Resp};

/// The pools and their backends' ports.
struct Setup {
    lb: Lb,
    _backends: Vec<ChildProcess>,
    pool_of_port: HashMap<u16, &'static str>,
}

const POOLS: [&str; 4] = ["default", "api", "web", "canary"];

const ROUTES: &str = r#"[
  {"name": "api", "host": "api.example.com", "path_prefix": "/v1", "strip_prefix": "/v1", "pool": "api"},
  {"name": "api-post", "host": "api.example.com", "path_prefix": "/v1", "methods": ["POST"], "pool": "web"},
  {"name": "api-header", "host": "api.example.com", "path_prefix": "/v1", "headers": {"x-pool": "canary"}, "pool": "canary", "priority": 1},
  {"name": "sites", "host": "*.example.com", "pool": "web"},
  {"name": "eu-sites", "host": "*.eu.example.com", "pool": "canary"},
  {"name": "static", "path_prefix": "/static", "replace_prefix": "/assets", "pool": "web"},
  {"name": "items", "path_regex": "/items/[0-9]+", "pool": "api"},
  {"name": "item-42", "path": "/items/42", "pool": "canary"},
  {"name": "shop", "path_prefix": "/shop", "split": [{"pool": "default", "weight": 95}, {"pool": "canary", "weight": 5}]},
  {"name": "old", "path_prefix": "/old", "redirect": {"status": 301, "path": "/new"}},
  {"name": "private", "path_prefix": "/private", "respond": {"status": 403, "body": "forbidden"}},
  {"name": "search-beta", "path_prefix": "/search", "query": {"beta": "1"}, "pool": "canary"},
  {"name": "search", "path_prefix": "/search", "pool": "api"},
  {"name": "legacy", "path_prefix": "/legacy", "add_prefix": "/v0", "pool": "default"},
  {"name": "tagged", "path_prefix": "/tag", "pool": "web", "request_headers": {"set": {"X-Route": "tagged"}}, "response_headers": {"add": {"X-Served-Via": "tagged"}, "remove": ["X-Backend-Id"]}}
]"#;

fn start() -> Setup {
    let (children, addrs) = backends(5, &[]);
    let list = |addrs: &[SocketAddr]| {
        let items: Vec<String> =
            addrs.iter().map(|a| format!(r#"{{"id": "p{0}", "host": "127.0.0.1", "port": {0}}}"#, a.port())).collect();
        format!("[{}]", items.join(", "))
    };
    let settings = format!(
        r#""pools": {{"api": {{"backends": {}}}, "web": {{"backends": {}}}, "canary": {{"backends": {}}}}}, "routes": {ROUTES}"#,
        list(&addrs[1..3]),
        list(&addrs[3..4]),
        list(&addrs[4..5]),
    );
    let lb = Lb::start(&addrs[..1], &settings);
    let pools = ["default", "api", "api", "web", "canary"];
    let pool_of_port = addrs.iter().zip(pools).map(|(a, p)| (a.port(), p)).collect();
    Setup { lb, _backends: children, pool_of_port }
}

/// What a request must get.
enum Expect {
    /// Served by this pool, whose backend read this target (path and query).
    Pool(&'static str, &'static str),
    /// Answered by lb-sync: this status, and a `Location` when given.
    Answer(u16, Option<&'static str>),
}

fn send(addr: SocketAddr, method: &str, target: &str, host: &str, extra: &str) -> Resp {
    let mut conn = Conn::open(addr);
    let body = if method == "POST" { "Content-Length: 0\r\n" } else { "" };
    conn.send(
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}{body}Connection: close\r\n\r\n").as_bytes(),
    );
    conn.response()
}

impl Setup {
    /// The pool that served `resp` and the target its backend read.
    fn served(&self, resp: &Resp) -> (&'static str, String) {
        let json = resp.json();
        let port = json["server_info"]["port"].as_u64().unwrap() as u16;
        let query = json["request"]["query"].as_str().unwrap();
        let path = json["request"]["path"].as_str().unwrap();
        let target = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
        (self.pool_of_port[&port], target)
    }
}

#[test]
fn each_request_goes_where_its_most_specific_route_sends_it() {
    let setup = start();
    let cases: &[(&str, &str, &str, &str, Expect)] = &[
        ("GET", "/v1/users?id=7", "api.example.com", "", Expect::Pool("api", "/users?id=7")),
        ("GET", "/v1", "API.Example.com.:8080", "", Expect::Pool("api", "/")),
        ("POST", "/v1/users", "api.example.com", "", Expect::Pool("web", "/v1/users")),
        ("GET", "/v1/users", "api.example.com", "X-Pool: canary\r\n", Expect::Pool("canary", "/v1/users")),
        // The header matcher and the method matcher tie on count; the priority decides.
        ("POST", "/v1/users", "api.example.com", "X-Pool: canary\r\n", Expect::Pool("canary", "/v1/users")),
        // A header sent twice matches no header matcher (fail closed).
        ("GET", "/v1/x", "api.example.com", "X-Pool: canary\r\nX-Pool: canary\r\n", Expect::Pool("api", "/x")),
        // An underscore spelling is not the field the matcher names (and is dropped upstream).
        ("GET", "/v1/x", "api.example.com", "X_Pool: canary\r\n", Expect::Pool("api", "/x")),
        // Segment boundary: /v1x is not under /v1; the wildcard takes it.
        ("GET", "/v1x", "api.example.com", "", Expect::Pool("web", "/v1x")),
        ("GET", "/page", "www.example.com", "", Expect::Pool("web", "/page")),
        ("GET", "/page", "a.b.eu.example.com", "", Expect::Pool("canary", "/page")),
        // The wildcard takes subdomains only; the bare domain has no host route.
        ("GET", "/page", "example.com", "", Expect::Pool("default", "/page")),
        ("GET", "/static/app.js?v=2", "other.test", "", Expect::Pool("web", "/assets/app.js?v=2")),
        ("GET", "/items/7", "other.test", "", Expect::Pool("api", "/items/7")),
        ("GET", "/items/42", "other.test", "", Expect::Pool("canary", "/items/42")),
        ("GET", "/items/x", "other.test", "", Expect::Pool("default", "/items/x")),
        ("GET", "/old/page?a=1", "other.test", "", Expect::Answer(301, Some("http://other.test/new"))),
        ("GET", "/private/x", "other.test", "", Expect::Answer(403, None)),
        // Routes read the canonical path: a dot segment does not walk past the deny rule.
        ("GET", "/public/../private/x", "other.test", "", Expect::Answer(403, None)),
        ("GET", "/%70rivate", "other.test", "", Expect::Answer(403, None)),
        ("GET", "/search?beta=1", "other.test", "", Expect::Pool("canary", "/search?beta=1")),
        ("GET", "/search?q=x", "other.test", "", Expect::Pool("api", "/search?q=x")),
        ("GET", "/search?beta=1&beta=1", "other.test", "", Expect::Pool("api", "/search?beta=1&beta=1")),
        ("GET", "/legacy/a?x=1", "other.test", "", Expect::Pool("default", "/v0/legacy/a?x=1")),
        ("GET", "/nothing/here", "other.test", "", Expect::Pool("default", "/nothing/here")),
    ];
    for (method, target, host, extra, expect) in cases {
        let resp = send(setup.lb.addr, method, target, host, extra);
        let what = format!("{method} {target} (Host: {host}) {extra:?}");
        match expect {
            Expect::Pool(pool, upstream) => {
                assert_eq!(resp.status, 200, "{what}: {}", resp.text());
                assert_eq!(setup.served(&resp), (*pool, upstream.to_string()), "{what}");
            }
            Expect::Answer(status, location) => {
                assert_eq!(resp.status, *status, "{what}: {}", resp.text());
                assert_eq!(resp.header("location"), *location, "{what}");
                assert!(!resp.text().contains("server_info"), "{what}: a backend answered: {}", resp.text());
            }
        }
    }
    let denied = send(setup.lb.addr, "GET", "/private", "t", "");
    assert_eq!((denied.status, denied.text().as_str()), (403, "forbidden"));
    // Header edits both ways.
    let tagged = send(setup.lb.addr, "GET", "/tag/x", "t", "X-Route: forged\r\n");
    assert_eq!(tagged.json()["request"]["headers"]["x-route"], "tagged");
    assert_eq!(tagged.header("x-served-via"), Some("tagged"));
    assert_eq!(tagged.header("x-backend-id"), None);
    // Every pool served something.
    for pool in POOLS {
        let (status, json) = {
            let resp = common::api::request(setup.lb.addr, "GET", &format!("/lb/pools/{pool}"), "");
            (resp.status, resp.json())
        };
        assert_eq!(status, 200, "{pool}: {json}");
    }
}

#[test]
fn a_backends_location_comes_back_through_the_strip() {
    let setup = start();
    let resp = send(setup.lb.addr, "GET", "/v1/go?redirect=/login", "api.example.com", "");
    assert_eq!(resp.status, 302, "{}", resp.text());
    assert_eq!(resp.header("location"), Some("/v1/login"));
    let absolute = "http://api.example.com/login?next=%2F";
    let resp = send(setup.lb.addr, "GET", &format!("/v1/go?redirect={absolute}"), "api.example.com", "");
    assert_eq!(resp.header("location"), Some("http://api.example.com/v1/login?next=%2F"));
    let elsewhere = "https://login.example.net/start";
    let resp = send(setup.lb.addr, "GET", &format!("/v1/go?redirect={elsewhere}"), "api.example.com", "");
    assert_eq!(resp.header("location"), Some(elsewhere), "another host's Location is left alone");
}

#[test]
fn a_95_5_split_over_10000_clients_keeps_each_client_on_its_side() {
    let setup = start();
    let mut conn = Conn::open(setup.lb.addr);
    let mut sides: HashMap<String, &'static str> = HashMap::new();
    let mut canary = 0;
    for n in 0..10_000u32 {
        let client = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 0xff, n & 0xff);
        conn.send(format!("GET /shop HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {client}\r\n\r\n").as_bytes());
        let (pool, _) = setup.served(&conn.response());
        canary += usize::from(pool == "canary");
        sides.insert(client, pool);
    }
    eprintln!("95/5 split over 10,000 clients: {canary} to the canary");
    assert!((400..=600).contains(&canary), "canary took {canary} of 10,000 clients, 500 ± 100 expected");
    // The same clients again: each on the side it had.
    for (client, pool) in sides.iter().take(500) {
        conn.send(format!("GET /shop HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {client}\r\n\r\n").as_bytes());
        assert_eq!(setup.served(&conn.response()).0, *pool, "{client} changed sides");
    }
}

#[test]
fn routes_naming_an_unknown_pool_are_refused_and_no_route_without_a_default_pool_is_404() {
    let dir = common::unique_dir("routes");
    let config = dir.join("bad.json");
    std::fs::write(
        &config,
        r#"{"backends": [{"host": "127.0.0.1", "port": 9}], "routes": [{"name": "r", "pool": "gone"}]}"#,
    )
    .unwrap();
    let out = lb_sync(&["--config", config.to_str().unwrap(), "--check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("route 'r' names pool 'gone', which is not defined (pools: default)"), "{err}");

    let (_children, addrs) = backends(1, &[]);
    let settings = format!(
        r#""pools": {{"api": {{"backends": [{{"host": "127.0.0.1", "port": {}}}]}}}}, "routes": [{{"name": "api", "path_prefix": "/api", "pool": "api"}}]"#,
        addrs[0].port()
    );
    let lb = Lb::start(&[], &settings);
    assert_eq!(send(lb.addr, "GET", "/api/x", "t", "").status, 200);
    let none = send(lb.addr, "GET", "/other", "t", "");
    assert_eq!(none.status, 404);
    assert!(none.text().contains("no route matched"), "{}", none.text());
}

#[test]
fn a_routes_own_rate_limit_and_timeout_apply_to_its_requests_only() {
    let (_children, addrs) = backends(1, &[]);
    let routes = r#""routes": [
        {"name": "limited", "path_prefix": "/limited", "pool": "default", "client_rate_limit": 0.001, "client_rate_limit_burst": 2},
        {"name": "quick", "path_prefix": "/quick", "pool": "default", "request_timeout": 0.3, "max_tries": 1}
    ]"#;
    let lb = Lb::start(&addrs, routes);
    // Two admitted from a full bucket, then 429 with when to come back; other paths unlimited.
    let statuses: Vec<u16> = (0..3).map(|_| send(lb.addr, "GET", "/limited/x", "t", "").status).collect();
    assert_eq!(statuses, [200, 200, 429]);
    let refused = send(lb.addr, "GET", "/limited/x", "t", "");
    assert!(refused.header("retry-after").is_some(), "{:?}", refused.headers);
    assert!((0..5).all(|_| send(lb.addr, "GET", "/other", "t", "").status == 200));
    // The route's 0.3 s against the pool's 30 s: a 1 s answer is 504 on the route, 200 elsewhere.
    assert_eq!(send(lb.addr, "GET", "/quick?delay_ms=1000", "t", "").status, 504);
    assert_eq!(send(lb.addr, "GET", "/slow?delay_ms=1000", "t", "").status, 200);
    assert_eq!(send(lb.addr, "GET", "/quick?delay_ms=10", "t", "").status, 200);
}

#[test]
fn a_field_a_route_sets_or_removes_goes_in_its_underscore_spellings_too() {
    let (_children, addrs) = backends(1, &[]);
    let settings = r#""underscores_in_headers": true, "routes": [
        {"name": "tagged", "path_prefix": "/tag", "pool": "default",
         "request_headers": {"set": {"X-Route": "tagged"}, "remove": ["X-Debug"]}}
    ]"#;
    let lb = Lb::start(&addrs, settings);
    let resp = send(lb.addr, "GET", "/tag/x", "t", "X_Route: forged\r\nX_Debug: 1\r\nX_Other: kept\r\n");
    let headers = &resp.json()["request"]["headers"];
    assert_eq!(headers["x-route"], "tagged", "{headers}");
    assert!(headers.get("x_route").is_none() && headers.get("x_debug").is_none(), "{headers}");
    assert_eq!(headers["x_other"], "kept", "underscores_in_headers passes the others on: {headers}");
}
