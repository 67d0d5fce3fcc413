//! Headers that decide access or identity are read whole and fail closed (issue 25): the
//! management API never answers a forwarded request without a token, however the forwarding
//! field is spelt or encoded; a token is read from exactly one clean `Authorization`; the backend
//! hears who the client is from us (or a trusted proxy that reads cleanly), never from a field an
//! untrusted client made up, an underscore twin, or an `Upgrade` nobody allowed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::inproc::demo_backend;
use common::{Conn, Resp};
use lb_sync::balancer::LoadBalancer;
use lb_sync::client_ip::Cidr;
use lb_sync::config::{BackendConfig, Config};
use lb_sync::server::{bind, Handler, Request, Response, Server, ServerConfig};

fn balancer(backend_port: u16, tweak: impl FnOnce(&mut Config)) -> LoadBalancer {
    let backends = vec![BackendConfig::new("127.0.0.1", backend_port, 1)];
    let mut config = {
        let mut adjusted = common::inproc::config(backends);
        adjusted.listener.threads = 4;
        adjusted
    };
    tweak(&mut config);
    LoadBalancer::start(config).unwrap()
}

/// One request with `extra` header lines (raw bytes, each ending in CRLF) on a new connection.
fn send(addr: SocketAddr, target: &str, extra: &[u8]) -> Resp {
    let mut conn = Conn::open(addr);
    let mut raw = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n").into_bytes();
    raw.extend_from_slice(extra);
    raw.extend_from_slice(b"\r\n");
    conn.send(&raw);
    conn.response()
}

/// The header lines that say a proxy relayed the request: every spelling, encoding and split
/// the attack tools and front proxies produce.
const FORWARDED_VARIANTS: [&[u8]; 36] = [
    b"X-Forwarded-For: 1.2.3.4\r\n",
    b"X-Forwarded-For: \xff\r\n",
    b"X-Forwarded-For: \xff\r\nX-Forwarded-For: 1.2.3.4\r\n",
    b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: \xff\r\n",
    b"X-Forwarded-For: \xff, 1.2.3.4\r\n",
    b"X-Forwarded-For: 127.0.0.1\r\n",
    b"X-Forwarded-For: \r\n",
    b"X-Forwarded-For:1.2.3.4\r\n",
    b"X-Forwarded-For: \t1.2.3.4\t\r\n",
    b"x-forwarded-for: 1.2.3.4\r\n",
    b"X-FORWARDED-FOR: 1.2.3.4\r\n",
    b"X_Forwarded_For: 1.2.3.4\r\n",
    b"x_forwarded_for: 1.2.3.4\r\n",
    b"X-Forwarded_For: 1.2.3.4\r\n",
    b"X-Forwarded-For: caf\xc3\xa9\r\n",
    b"Forwarded: for=1.2.3.4\r\n",
    b"Forwarded: for=\"[2001:db8::1]\";proto=https\r\n",
    b"forwarded: \xff\r\n",
    b"X-Real-IP: 1.2.3.4\r\n",
    b"X_Real_IP: 1.2.3.4\r\n",
    b"X-Real-Ip: \x80\r\n",
    b"X-Forwarded-Host: evil.example\r\n",
    b"X-Forwarded-Proto: https\r\n",
    b"X-Forwarded-Port: 443\r\n",
    b"X_Forwarded_Server: front\r\n",
    b"Via: 1.1 front\r\n",
    b"True-Client-IP: 1.2.3.4\r\n",
    b"CF-Connecting-IP: 1.2.3.4\r\n",
    b"X-Client-IP: 1.2.3.4\r\n",
    b"Client-IP: 1.2.3.4\r\n",
    b"Fastly-Client-IP: 1.2.3.4\r\n",
    b"X-Cluster-Client-IP: 1.2.3.4\r\n",
    b"X-Original-Forwarded-For: 1.2.3.4\r\n",
    b"Accept: */*\r\nUser-Agent: curl/8\r\nX-Forwarded-For: 1.2.3.4\r\nAccept-Language: en\r\n",
    // obs-fold and a space before the colon are refused by the parser (400) before any check.
    b"X-Forwarded-For: 1.2.3.4\r\n 5.6.7.8\r\n",
    b"X-Forwarded-For : 1.2.3.4\r\n",
];

#[test]
fn no_forwarded_request_reaches_the_management_api_without_a_token() {
    let (_backend, port) = demo_backend();
    let lb = balancer(port, |_| {});
    let addr = lb.local_addr();
    assert_eq!(send(addr, "/lb/backends", b"").status, 200, "loopback without forwarding fields: the seed's curl");
    let mut reached = Vec::new();
    for variant in FORWARDED_VARIANTS {
        for target in ["/lb/backends", "http://localhost/lb/backends"] {
            let status = send(addr, target, variant).status;
            if status != 403 && status != 400 {
                reached.push(format!("{status} for {target} with {:?}", String::from_utf8_lossy(variant)));
            }
        }
    }
    assert!(reached.is_empty(), "reached the API: {reached:#?}");
    // The refusal says what to do.
    let refused = send(addr, "/lb/backends", b"X-Forwarded-For: \xff\r\n");
    assert!(refused.text().contains("--admin-token"), "{}", refused.text());
    // A forwarded request cannot change anything either.
    let mut conn = Conn::open(addr);
    conn.send(b"POST /lb/backends/backend1/disable HTTP/1.1\r\nHost: l\r\nX-Forwarded-For: \xff, 1.2.3.4\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(conn.response().status, 403);
    let backends = send(addr, "/lb/backends", b"").json();
    assert_eq!(backends[0]["enabled"], true, "{backends}");
    lb.stop(Duration::from_secs(1));
}

#[test]
fn the_token_is_read_from_exactly_one_clean_authorization_field() {
    let (_backend, port) = demo_backend();
    let lb = balancer(port, |c| c.operations.admin_token = Some("s3cret".into()));
    let addr = lb.local_addr();
    let cases: [(&[u8], u16); 11] = [
        (b"Authorization: Bearer s3cret\r\n", 200),
        (b"Authorization: bearer s3cret\r\n", 200),
        (b"Authorization: Bearer s3cret\r\nX-Forwarded-For: 1.2.3.4\r\n", 200),
        (b"Authorization: Bearer s3cret\r\nAuthorization: Bearer wrong\r\n", 401),
        (b"Authorization: Bearer wrong\r\nAuthorization: Bearer s3cret\r\n", 401),
        (b"Authorization: Bearer s3cret\r\nAuthorization: Bearer s3cret\r\n", 401),
        (b"Authorization: Bearer s3cret\xff\r\n", 401),
        (b"Authorization: Bearer \xffs3cret\r\n", 401),
        (b"Authorization: Basic czNjcmV0\r\n", 401),
        (b"Authorization: Bearers3cret\r\n", 401),
        (b"Authorization_: Bearer s3cret\r\n", 401),
    ];
    for (lines, status) in cases {
        let answer = send(addr, "/lb/stats", lines);
        assert_eq!(answer.status, status, "{:?}: {}", String::from_utf8_lossy(lines), answer.text());
    }
    lb.stop(Duration::from_secs(1));
}

/// The request headers the demo backend saw, by lowercase name.
fn seen_by_backend(addr: SocketAddr, extra: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    let answer = send(addr, "/", extra);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    json["request"]["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
        .collect()
}

#[test]
fn underscore_fields_are_dropped_and_never_read_as_their_dashed_twins() {
    let (_backend, port) = demo_backend();
    let strict = balancer(port, |_| {});
    let spoof = b"X_Real_IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\nX_Custom: kept?\r\nX-Custom-Dash: kept\r\n";
    let seen = seen_by_backend(strict.local_addr(), spoof);
    assert_eq!(seen.get("x_real_ip"), None, "{seen:?}");
    assert_eq!(seen.get("x_forwarded_for"), None);
    assert_eq!(seen.get("x_custom"), None, "any underscore name is dropped by default");
    assert_eq!(seen["x-custom-dash"], "kept");
    assert_eq!(seen["x-real-ip"], "127.0.0.1", "X_Forwarded_For is not read as X-Forwarded-For");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    strict.stop(Duration::from_secs(1));

    let lenient = balancer(port, |c| c.listener.underscores_in_headers = true);
    let seen = seen_by_backend(lenient.local_addr(), spoof);
    assert_eq!(seen["x_custom"], "kept?", "underscores_in_headers passes other names on");
    assert_eq!(seen.get("x_real_ip"), None, "the twins of the fields we set are dropped even then");
    assert_eq!(seen.get("x_forwarded_for"), None);
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    lenient.stop(Duration::from_secs(1));
}

#[test]
fn an_untrusted_peer_cannot_tell_the_backend_who_the_client_is() {
    let (_backend, port) = demo_backend();
    let untrusted = balancer(port, |c| c.listener.trusted_proxies = vec![Cidr::parse("10.0.0.0/8").unwrap()]);
    let claims = b"Forwarded: for=6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nX-Forwarded-Port: 1\r\n\
        X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nCF-Connecting-IP: 6.6.6.6\r\nVia: 1.1 x\r\n";
    let seen = seen_by_backend(untrusted.local_addr(), claims);
    for claim in ["forwarded", "true-client-ip", "x-forwarded-port", "cf-connecting-ip"] {
        assert_eq!(seen.get(claim), None, "{claim} from an untrusted peer reached the backend: {seen:?}");
    }
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "localhost");
    assert_eq!(seen["via"], "1.1 x", "Via says nothing about the client and passes");
    untrusted.stop(Duration::from_secs(1));

    let trusted = balancer(port, |_| {});
    let seen = seen_by_backend(trusted.local_addr(), claims);
    assert_eq!(seen["forwarded"], "for=6.6.6.6", "a trusted proxy's fields pass");
    assert_eq!(seen["true-client-ip"], "6.6.6.6");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "evil");
    trusted.stop(Duration::from_secs(1));
}

#[test]
fn a_trusted_proxys_fields_count_only_when_they_read_cleanly() {
    let (_backend, port) = demo_backend();
    let lb = balancer(port, |_| {});
    let addr = lb.local_addr();
    let seen = seen_by_backend(addr, b"X-Forwarded-For: \xff, 203.0.113.9\r\n");
    assert_eq!((seen["x-forwarded-for"].as_str(), seen["x-real-ip"].as_str()), (Some("127.0.0.1"), Some("127.0.0.1")));
    let seen = seen_by_backend(addr, b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: \x80\r\n");
    assert_eq!((seen["x-forwarded-for"].as_str(), seen["x-real-ip"].as_str()), (Some("127.0.0.1"), Some("127.0.0.1")));
    let seen = seen_by_backend(addr, b"X-Forwarded-Proto: https\r\nX-Forwarded-Proto: http\r\n");
    assert_eq!(seen["x-forwarded-proto"], "http", "two claims: our own scheme");
    let seen = seen_by_backend(addr, b"X-Forwarded-Proto: gopher\r\n");
    assert_eq!(seen["x-forwarded-proto"], "http");
    let seen = seen_by_backend(addr, b"X-Forwarded-Host: a/b?c\r\n");
    assert_eq!(seen["x-forwarded-host"], "localhost", "not an authority: our Host");
    lb.stop(Duration::from_secs(1));
}

/// A backend that answers with every `X-Request-Id` line it got, joined by `|` (the demo
/// backend's JSON keeps one value per name, so it could not show a second line).
struct RequestIds;

impl Handler for RequestIds {
    fn handle(&self, request: Request) -> Response {
        let ids: Vec<String> = request
            .headers()
            .iter()
            .filter(|h| h.is("x-request-id"))
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
            .collect();
        Response::text(200, ids.join("|"))
    }
}

#[test]
fn the_backend_gets_one_request_id() {
    let listener = bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = Server::start_on(listener, ServerConfig::default(), RequestIds).unwrap();
    let lb = balancer(port, |_| {});
    let addr = lb.local_addr();
    assert_eq!(send(addr, "/", b"X-Request-Id: abc-1\r\n").text().trim_end(), "abc-1", "one sane id is passed on");
    for odd in [&b"X-Request-Id: a\r\nX-Request-Id: b\r\n"[..], b"X-Request-Id: caf\xc3\xa9\r\n"] {
        let ids = send(addr, "/", odd).text().trim_end().to_string();
        assert!(!ids.contains('|') && !ids.is_empty(), "ours alone goes up: {ids:?}");
        assert!(!["a", "b"].contains(&ids.as_str()) && ids.is_ascii(), "{ids:?}");
    }
    lb.stop(Duration::from_secs(1));
    backend.stop(Duration::from_secs(1));
}

#[test]
fn host_must_be_an_authority() {
    let (_backend, port) = demo_backend();
    let lb = balancer(port, |_| {});
    let addr = lb.local_addr();
    for host in [&b""[..], b"a/b?c", b"a b", b"user@host", b"host:port", b"[::1", b"\xff"] {
        let mut conn = Conn::open(addr);
        let mut raw = b"GET / HTTP/1.1\r\nHost: ".to_vec();
        raw.extend_from_slice(host);
        raw.extend_from_slice(b"\r\n\r\n");
        conn.send(&raw);
        assert_eq!(conn.response().status, 400, "Host: {:?}", String::from_utf8_lossy(host));
    }
    for host in ["example.com", "example.com.", "EXAMPLE.com:8080", "127.0.0.1:80", "[::1]:8080", "a_b-c~d"] {
        let mut conn = Conn::open(addr);
        conn.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        assert_eq!(conn.response().status, 200, "Host: {host}");
    }
    lb.stop(Duration::from_secs(1));
}

#[test]
fn an_h2c_upgrade_is_answered_as_a_plain_request() {
    let (_backend, port) = demo_backend();
    let lb = balancer(port, |_| {});
    let h2c = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";
    let answer = send(lb.local_addr(), "/", h2c);
    assert_eq!(answer.status, 200, "no 101: {}", answer.text());
    let seen: Vec<String> =
        answer.json()["request"]["headers"].as_object().unwrap().keys().map(|k| k.to_ascii_lowercase()).collect();
    for name in ["upgrade", "http2-settings"] {
        assert!(!seen.iter().any(|s| s == name), "the backend saw {name}: {seen:?}");
    }
    let connection = answer.json()["request"]["headers"]["connection"].as_str().map(str::to_ascii_lowercase);
    assert!(!connection.unwrap_or_default().contains("upgrade"), "Connection: upgrade reached the backend");
    // Also when it hides behind a second Upgrade line or an allowed name's prefix.
    let hidden = b"Connection: upgrade\r\nUpgrade: h2c\r\nUpgrade: websocketx\r\n";
    assert_eq!(send(lb.local_addr(), "/", hidden).status, 200);
    lb.stop(Duration::from_secs(1));
    let odd = {
        let mut adjusted = Config::default();
        adjusted.listener.upgrade_protocols = vec!["web socket".into()];
        adjusted
    };
    let refused = odd.validate().unwrap_err().to_string();
    assert!(refused.contains("upgrade_protocols"), "{refused}");
}
