//! `https://` backends: requests and health checks over TLS, the certificate verified against
//! the built-in roots or `--upstream-ca`, a refused certificate answered `502` and counted as a
//! failed try that another backend may take. The certificates are made per test run with the
//! `openssl` command (a CA and a server certificate for `localhost`); the HTTPS backends are
//! rustls servers in this process.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use common::lb::Lb;
use common::{wait_until, Conn};

/// A CA and a server certificate it signed, for `DNS:localhost` only (not `127.0.0.1`: a
/// backend named by its address is a wrong hostname), in a directory removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki { dir: common::unique_dir("pki") };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        pki.openssl(&["req", "-x509"], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]);
        pki.openssl(&["req"], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
        std::fs::write(
            pki.dir.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        pki.openssl(
            &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"],
            &[],
            &["-out", "server.pem", "-days", "2", "-extfile", "server.ext"],
        );
        pki
    }

    fn openssl(&self, command: &[&str], key: &[&str], rest: &[&str]) {
        let mut cmd = Command::new("openssl");
        cmd.current_dir(&self.dir).args(command).args(key).args(rest);
        if command == ["req", "-x509"] {
            cmd.args(["-subj", "/CN=lb-sync test CA", "-addext", "basicConstraints=critical,CA:TRUE"]);
            cmd.args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        }
        let out = cmd.output().expect("the openssl command (Debian's openssl package) makes the test certificates");
        assert!(out.status.success(), "openssl {command:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_arg(&self) -> String {
        self.ca().to_str().unwrap().to_string()
    }

    /// A rustls server configuration with the server certificate; `tls12_only` offers TLS 1.2
    /// alone.
    fn server_config(&self, tls12_only: bool) -> Arc<ServerConfig> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(self.dir.join("server.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(self.dir.join("server.key")).unwrap();
        let versions: &[&rustls::SupportedProtocolVersion] =
            if tls12_only { &[&rustls::version::TLS12] } else { rustls::ALL_VERSIONS };
        let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A keep-alive HTTP/1.1 backend, over TLS or plain, in this process: answers `NAME PATH` (and
/// ` x-big=LENGTH` when the request has an `X-Big` header, ` BODY` when it has a body) with `200`, and `/health` with the status in `health`. It closes a connection idle for
/// `idle_close` (with a TLS close_notify), as servers' keep-alive timeouts do.
struct TestBackend {
    addr: SocketAddr,
    /// Requests answered (health checks aside).
    hits: Arc<AtomicUsize>,
    /// Connections accepted (each a TLS handshake for an HTTPS one).
    connections: Arc<AtomicUsize>,
    /// Connections it closed after they sat idle.
    idle_closed: Arc<AtomicUsize>,
    health: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TestBackend {
    fn https(name: &str, tls: Arc<ServerConfig>) -> TestBackend {
        TestBackend::start(name, Some(tls), Duration::from_secs(10))
    }

    fn http(name: &str) -> TestBackend {
        TestBackend::start(name, None, Duration::from_secs(10))
    }

    fn start(name: &str, tls: Option<Arc<ServerConfig>>, idle_close: Duration) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let idle_closed = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let (name, counters) = (name.to_string(), (hits.clone(), connections.clone(), idle_closed.clone()));
        let (health_status, stopping) = (health.clone(), stop.clone());
        let acceptor = std::thread::spawn(move || {
            for socket in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(socket) = socket else { continue };
                counters.1.fetch_add(1, Ordering::SeqCst);
                let (name, tls, health) = (name.clone(), tls.clone(), health_status.clone());
                let (hits, idle_closed) = (counters.0.clone(), counters.2.clone());
                std::thread::spawn(move || {
                    socket.set_read_timeout(Some(idle_close)).unwrap();
                    let served = match tls {
                        Some(config) => {
                            let Ok(connection) = ServerConnection::new(config) else { return };
                            let mut stream = StreamOwned::new(connection, socket);
                            let outcome = serve(&mut stream, &name, &hits, &health);
                            if matches!(outcome, Outcome::Idle) {
                                stream.conn.send_close_notify();
                                let _ = stream.flush();
                            }
                            outcome
                        }
                        None => serve(&mut &socket, &name, &hits, &health),
                    };
                    if matches!(served, Outcome::Idle) {
                        idle_closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        TestBackend { addr, hits, connections, idle_closed, health, stop, acceptor: Some(acceptor) }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

enum Outcome {
    /// The peer closed, or sent something this backend does not read (not TLS, not HTTP).
    Closed,
    /// Nothing came for the idle time.
    Idle,
}

/// Serves requests on one connection until the peer closes or it sits idle.
fn serve(stream: &mut (impl Read + Write), name: &str, hits: &AtomicUsize, health: &AtomicU16) -> Outcome {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Outcome::Closed,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Outcome::Idle,
            Err(_) => return Outcome::Closed,
        }
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        let mut length = 0usize;
        let mut big = String::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return Outcome::Closed;
            }
            if header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
                if name.eq_ignore_ascii_case("x-big") {
                    big = format!(" x-big={}", value.trim().len());
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return Outcome::Closed;
        }
        let (status, text) = if path == "/health" {
            (health.load(Ordering::SeqCst), "health".to_string())
        } else {
            hits.fetch_add(1, Ordering::SeqCst);
            let sent = if body.is_empty() { String::new() } else { format!(" {}", String::from_utf8_lossy(&body)) };
            (200, format!("{name} {path}{big}{sent}"))
        };
        let response = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{text}", text.len());
        let stream = reader.get_mut();
        if stream.write_all(response.as_bytes()).and_then(|()| stream.flush()).is_err() {
            return Outcome::Closed;
        }
    }
}

fn start(backends: &[String], settings: &str, ca: Option<&Pki>) -> Lb {
    let mut args: Vec<String> = backends.iter().flat_map(|b| ["--backend".to_string(), b.clone()]).collect();
    if let Some(pki) = ca {
        args.extend(["--upstream-ca".to_string(), pki.ca_arg()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Lb::start_with_args(&[], settings, &args)
}

fn get(lb: &Lb, path: &str) -> common::Resp {
    Conn::open(lb.addr).get(path)
}

fn backend_json(lb: &Lb, id: &str) -> serde_json::Value {
    let all = get(lb, "/lb/backends").json();
    all.as_array().unwrap().iter().find(|b| b["id"] == id).cloned().unwrap_or_else(|| panic!("no backend {id}: {all}"))
}

#[test]
fn requests_reach_an_https_backend_verified_with_the_upstream_ca() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let secure = TestBackend::https("secure", pki.server_config(false));
    let lb = start(&[format!("s=https://localhost:{}", secure.port())], "", Some(&pki));
    assert!(lb.ready_line.contains(&format!("s=https://localhost:{} (weight 1)", secure.port())), "{}", lb.ready_line);
    let mut conn = Conn::open(lb.addr);
    for i in 0..20 {
        let resp = conn.get(&format!("/item/{i}?q=1"));
        assert_eq!((resp.status, resp.text()), (200, format!("secure /item/{i}?q=1")));
    }
    // A POST body goes through TLS as well.
    conn.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(conn.response().text(), "secure /upload hello");
    assert_eq!(secure.hits(), 21);
    // Keep-alive to the backend: the pooled TLS connection is reused, not one handshake a
    // request (a second may open while the first is on its way back to the pool).
    assert!(secure.connections() <= 2, "{} TLS connections for 21 sequential requests", secure.connections());
    let json = backend_json(&lb, "s");
    assert_eq!((json["scheme"].as_str(), json["failed_requests"].as_u64()), (Some("https"), Some(0)));
    assert_eq!(get(&lb, "/lb/config").json()["upstream_ca"], pki.ca_arg());
}

#[test]
fn a_tls_1_2_only_backend_is_reached_too() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let old = TestBackend::https("old", pki.server_config(true));
    let lb = start(&[format!("https://localhost:{}", old.port())], "", Some(&pki));
    let resp = get(&lb, "/v12");
    assert_eq!((resp.status, resp.text()), (200, "old /v12".to_string()));
}

#[test]
fn a_body_streamed_to_an_https_backend_arrives_whole() {
    // With request_buffering off the body goes up as the client sends it, and between its
    // parts lb-sync looks for an early answer. Over TLS, bytes waiting on the socket may be
    // the backend's session tickets (TLS 1.3 sends them after the handshake): not an answer.
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let secure = TestBackend::https("secure", pki.server_config(false));
    let lb = start(&[format!("https://localhost:{}", secure.port())], r#""request_buffering": false"#, Some(&pki));
    let mut conn = Conn::open(lb.addr);
    for round in 0..3 {
        conn.send(b"POST /stream HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nfirst");
        std::thread::sleep(Duration::from_millis(300)); // the client's pace, not a wait for lb-sync
        conn.send(b"-half");
        let resp = conn.response();
        assert_eq!((resp.status, resp.text()), (200, "secure /stream first-half".to_string()), "round {round}");
    }
}

#[test]
fn heads_up_to_the_front_ends_limit_reach_an_https_backend_whole() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    // ureq's TLS layer writes the head into a buffer of its own, sized as the plain one.
    let pki = Pki::new();
    let secure = TestBackend::https("secure", pki.server_config(false));
    let lb = start(&[format!("big=https://localhost:{}", secure.port())], "", Some(&pki));
    let mut conn = Conn::open(lb.addr);
    for size in [17 * 1024, 32 * 1024] {
        let start = "GET /big HTTP/1.1\r\nHost: t\r\nX-Big: ";
        let value = "b".repeat(size - start.len() - 4);
        conn.send(format!("{start}{value}\r\n\r\n").as_bytes());
        let resp = conn.response();
        assert_eq!((resp.status, resp.text()), (200, format!("secure /big x-big={}", value.len())), "{size} bytes");
    }
    assert_eq!(backend_json(&lb, "big")["failed_requests"], 0);
}

#[test]
fn round_robin_over_an_http_and_an_https_backend_is_exact() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let secure = TestBackend::https("secure", pki.server_config(false));
    let plain = TestBackend::http("plain");
    let lb =
        start(&[format!("https://localhost:{}", secure.port()), format!("127.0.0.1:{}", plain.port())], "", Some(&pki));
    let mut conn = Conn::open(lb.addr);
    let answers: Vec<String> = (0..10).map(|i| conn.get(&format!("/{i}")).text()).collect();
    let expected: Vec<String> =
        (0..10).map(|i| format!("{} /{i}", if i % 2 == 0 { "secure" } else { "plain" })).collect();
    assert_eq!(answers, expected);
    assert_eq!((secure.hits(), plain.hits()), (5, 5));
}

#[test]
fn without_the_ca_the_certificate_is_refused_with_502_and_counted_as_a_failed_try() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let secure = TestBackend::https("secure", pki.server_config(false));
    // The built-in roots do not know the test CA.
    let lb = start(&[format!("s=https://localhost:{}", secure.port())], r#""max_tries": 1"#, None);
    let resp = get(&lb, "/secret");
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(secure.hits(), 0, "no request went over an unverified connection");
    assert!(
        lb.wait_log("backend s (127.0.0.1:", Duration::from_secs(5))
            && lb.log().contains("TLS handshake failed: invalid peer certificate: UnknownIssuer"),
        "log: {}",
        lb.log()
    );
    let stats = get(&lb, "/lb/stats").json();
    assert_eq!(stats["retries"]["failed_tries"]["tls"], 1, "{stats}");
    assert_eq!(backend_json(&lb, "s")["failed_requests"], 1);
}

#[test]
fn a_refused_certificate_sends_the_request_to_the_next_backend_as_a_refused_connection_does() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let secure = TestBackend::https("secure", pki.server_config(false));
    let plain = TestBackend::http("plain");
    let lb = start(
        &[format!("https://localhost:{}", secure.port()), format!("127.0.0.1:{}", plain.port())],
        r#""max_tries": 2"#,
        None,
    );
    // Round robin picks the HTTPS one first: its handshake fails, nothing was sent, so even a
    // POST goes on to the next backend.
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /order HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
    let resp = conn.response();
    assert_eq!((resp.status, resp.text()), (200, "plain /order hi".to_string()));
    assert_eq!((secure.hits(), plain.hits()), (0, 1));
    let retries = get(&lb, "/lb/stats").json()["retries"].clone();
    assert_eq!((retries["retries"].as_u64(), retries["failed_tries"]["tls"].as_u64()), (Some(1), Some(1)));
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let secure = TestBackend::https("secure", pki.server_config(false));
    // The certificate names localhost only; the backend is named by its address.
    let lb = start(&[format!("https://127.0.0.1:{}", secure.port())], r#""max_tries": 1"#, Some(&pki));
    assert_eq!(get(&lb, "/").status, 502);
    assert_eq!(secure.hits(), 0);
    assert!(
        lb.wait_log(
            "TLS handshake failed: invalid peer certificate: certificate not valid for name",
            Duration::from_secs(5)
        ),
        "log: {}",
        lb.log()
    );
}

#[test]
fn a_plain_http_server_behind_an_https_url_is_a_failed_handshake() {
    // lb-backend answers the ClientHello with a 400 and closes.
    let plain = common::backend(&[]);
    let lb = start(&[format!("https://localhost:{}", plain.addr().port())], r#""max_tries": 1"#, None);
    assert_eq!(get(&lb, "/").status, 502);
    assert_eq!(get(&lb, "/lb/stats").json()["retries"]["failed_tries"]["tls"], 1);
    assert!(lb.wait_log("TLS handshake failed: ", Duration::from_secs(5)), "log: {}", lb.log());
}

#[test]
fn a_handshake_that_never_ends_times_out_at_the_connect_timeout_and_goes_to_the_next_backend() {
    // Accepts (the kernel does) and never answers the ClientHello.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain = TestBackend::http("plain");
    let lb = start(
        &[format!("https://localhost:{}", silent.local_addr().unwrap().port()), format!("127.0.0.1:{}", plain.port())],
        r#""connect_timeout": 0.3, "request_timeout": 60, "max_tries": 2"#,
        None,
    );
    // Under the request timeout it would be a response timeout: 504, never retried.
    let resp = get(&lb, "/");
    assert_eq!((resp.status, resp.text()), (200, "plain /".to_string()));
    assert_eq!(get(&lb, "/lb/stats").json()["retries"]["failed_tries"]["connect_timeout"], 1);
}

#[test]
fn a_pooled_tls_connection_the_backend_closed_is_not_reused() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let secure = TestBackend::start("secure", Some(pki.server_config(false)), Duration::from_millis(200));
    let lb = start(&[format!("https://localhost:{}", secure.port())], r#""max_tries": 1"#, Some(&pki));
    let mut conn = Conn::open(lb.addr);
    for i in 0..5 {
        let resp = conn.get(&format!("/{i}"));
        assert_eq!((resp.status, resp.text()), (200, format!("secure /{i}")));
        // The backend closes the pooled connection (close_notify, then FIN) before the next.
        assert!(wait_until(Duration::from_secs(5), || secure.idle_closed.load(Ordering::SeqCst) == i + 1));
    }
    assert_eq!(secure.connections(), 5, "a new connection after each close");
}

#[test]
fn health_checks_over_tls_mark_an_https_backend_up_and_down() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let secure = TestBackend::https("secure", pki.server_config(false));
    let settings = r#""health_check_interval": 0.05, "health_check_rise": 1, "health_check_fall": 1"#;
    let lb = start(&[format!("s=https://localhost:{}", secure.port())], settings, Some(&pki));
    let health = || backend_json(&lb, "s");
    assert!(wait_until(Duration::from_secs(5), || health()["health"] == "up"), "{}", health());
    assert_eq!(health()["last_check"]["detail"], "status 200");
    secure.health.store(503, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(5), || health()["health"] == "down"), "{}", health());
    assert_eq!(health()["last_check"]["detail"], "status 503");
    assert_eq!(get(&lb, "/").status, 503, "no usable backend");
    secure.health.store(200, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(5), || health()["health"] == "up"), "{}", health());
    assert_eq!(get(&lb, "/x").text(), "secure /x");
}

#[test]
fn a_health_check_refuses_an_unverified_certificate() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let secure = TestBackend::https("secure", pki.server_config(false));
    let settings = r#""health_check_interval": 0.05, "health_check_rise": 1, "health_check_fall": 1"#;
    let lb = start(&[format!("s=https://localhost:{}", secure.port())], settings, None);
    let health = || backend_json(&lb, "s");
    assert!(wait_until(Duration::from_secs(5), || health()["health"] == "down"), "{}", health());
    assert_eq!(health()["last_check"]["detail"], "TLS: invalid peer certificate: UnknownIssuer");
    assert!(lb.wait_log("backend s (127.0.0.1:", Duration::from_secs(5)));
    assert!(lb.log().contains("is DOWN after 1 failed check(s) (first check): TLS: invalid peer certificate"));
}

#[test]
fn a_reload_that_sets_upstream_ca_is_used_by_requests_and_health_checks() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let secure = TestBackend::https("secure", pki.server_config(false));
    let settings = r#""health_check_interval": 0.05, "health_check_rise": 1, "health_check_fall": 1"#;
    let lb = start(&[format!("s=https://localhost:{}", secure.port())], settings, None);
    let health = || backend_json(&lb, "s");
    assert!(wait_until(Duration::from_secs(5), || health()["health"] == "down"), "{}", health());
    lb.write_config(&[], &format!(r#"{settings}, "upstream_ca": "{}""#, pki.ca_arg()));
    lb.signal("HUP");
    assert!(wait_until(Duration::from_secs(5), || health()["health"] == "up"), "{}", health());
    let resp = get(&lb, "/after");
    assert_eq!((resp.status, resp.text()), (200, "secure /after".to_string()));
    // A reload whose CA file went missing is refused; the running one stays.
    let missing = pki.dir.join("gone.pem");
    lb.write_config(&[], &format!(r#"{settings}, "upstream_ca": "{}""#, missing.display()));
    lb.signal("HUP");
    assert!(
        lb.wait_log(&format!("cannot read upstream_ca {}", missing.display()), Duration::from_secs(5)),
        "{}",
        lb.log()
    );
    assert_eq!(get(&lb, "/still").text(), "secure /still");
}

#[test]
fn an_https_backend_added_through_the_management_api_is_kept_in_the_state_file() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let secure = TestBackend::https("secure", pki.server_config(false));
    let plain = TestBackend::http("plain");
    let state = std::env::temp_dir().join(format!("lb-sync-https-state-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let settings = format!(r#""state_file": "{}""#, state.display());
    let lb = start(&[format!("p=127.0.0.1:{}", plain.port())], &settings, Some(&pki));
    let body = format!(r#"{{"id": "s", "host": "localhost", "port": {}, "scheme": "https"}}"#, secure.port());
    let mut conn = Conn::open(lb.addr);
    let request = format!("POST /lb/backends/add HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    conn.send(request.as_bytes());
    let resp = conn.response();
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert!(lb.wait_log(&format!("backend s added at https://localhost:{}", secure.port()), Duration::from_secs(5)));
    let answers: Vec<String> = (0..4).map(|i| conn.get(&format!("/{i}")).text()).collect();
    assert_eq!(answers, ["plain /0", "secure /1", "plain /2", "secure /3"]);
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["backends"][1]["scheme"], "https", "{saved}");
    assert!(saved["backends"][0].get("scheme").is_none(), "plain ones are written as before: {saved}");
    // A bad scheme is the caller's error.
    let bad = r#"{"host": "localhost", "port": 1, "scheme": "ftp"}"#;
    conn.send(
        format!("POST /lb/backends/add HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{bad}", bad.len()).as_bytes(),
    );
    let resp = conn.response();
    assert_eq!((resp.status, resp.text().contains("field 'scheme' must be")), (400, true), "{}", resp.text());
    drop(lb);
    let _ = std::fs::remove_file(&state);
}

#[test]
fn a_missing_or_unusable_upstream_ca_stops_the_start_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("lb-sync-https-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not-pem.txt");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let run = |ca: &Path, check: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lb-sync"));
        command.args(["--port", "0", "--host", "127.0.0.1", "--backend", "https://localhost:9"]);
        command.arg("--upstream-ca").arg(ca);
        if check {
            command.arg("--check-config");
        }
        let out = command.output().unwrap();
        // The last line (a start also logs the error first).
        let stderr = String::from_utf8_lossy(&out.stderr);
        (out.status.code(), stderr.trim().lines().last().unwrap_or_default().to_string())
    };
    let missing = dir.join("missing.pem");
    let expected = format!("cannot read upstream_ca {}: No such file or directory (os error 2)", missing.display());
    assert_eq!(run(&missing, false), (Some(1), format!("lb-sync: cannot start: {expected}")));
    assert_eq!(run(&missing, true), (Some(1), format!("lb-sync: {expected}")));
    let expected = format!("upstream_ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", not_pem.display());
    assert_eq!(run(&not_pem, true), (Some(1), format!("lb-sync: {expected}")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn backend_urls_parse_as_documented() {
    use lb_sync::config::{BackendConfig, Scheme};
    let parse = |text: &str| BackendConfig::parse(text).map(|b| (b.id, b.scheme, b.host, b.port, b.weight));
    assert_eq!(
        parse("a=https://api.example.com:8443:3"),
        Ok((Some("a".into()), Scheme::Https, "api.example.com".into(), 8443, 3))
    );
    assert_eq!(parse("https://api.example.com/"), Ok((None, Scheme::Https, "api.example.com".into(), 443, 1)));
    assert_eq!(parse("http://[::1]"), Ok((None, Scheme::Http, "::1".into(), 80, 1)));
    assert_eq!(parse("https://[::1]:8443"), Ok((None, Scheme::Https, "::1".into(), 8443, 1)));
    assert_eq!(parse("HTTPS://h:1"), Ok((None, Scheme::Https, "h".into(), 1, 1)));
    assert_eq!(parse("ftp://h:1").unwrap_err(), "backend 'ftp://h:1': scheme 'ftp' is not http or https");
    assert!(parse("https://h:1/api").unwrap_err().contains("without a path"));
    assert!(parse("https://").unwrap_err().contains("no host"));
    assert!(parse("https://h:0").unwrap_err().contains("port must be 1-65535"));
    assert!(parse("https://user@h:1").is_err());
}
