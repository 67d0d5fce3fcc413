//! TLS termination with real clients: curl, Python's `ssl` and rustls against the HTTPS
//! listener of real `lb-sync` processes (and of the server in process), with certificates made
//! by each test (`openssl`). What a client sees: the certificate, the protocol, the answer and
//! its backend; what the backend sees: `X-Forwarded-Proto: https`; what an operator sees: a
//! clear refusal of a bad certificate at start, a reload that swaps it (or keeps the old one),
//! and handshakes that never hold a worker.
//!
//! The front end's HTTP conformance over TLS is in `conformance.rs` (`over_tls::*`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::lb::Lb;
use common::tls::{handshake, KeyKind, Leaf, Pki};
use common::{backend, read_response, tls_addr_in, Conn};
use lb_sync::demo_backend::DemoBackend;
use lb_sync::server::{Certificates, Server, ServerConfig, TlsAcceptor, TlsListener};

/// `"tls_port": 0, "tls_cert": ..., "tls_key": ...` for a config file.
fn tls_settings(leaf: &Leaf) -> String {
    format!(r#""tls_port": 0, "tls_cert": "{}", "tls_key": "{}""#, leaf.cert.display(), leaf.key.display())
}

/// An lb-sync child with an HTTPS listener in front of `backends`; its HTTPS address.
fn lb_with_tls(backends: &[SocketAddr], leaf: &Leaf, more: &str, args: &[&str]) -> (Lb, SocketAddr) {
    let settings = if more.is_empty() { tls_settings(leaf) } else { format!("{}, {more}", tls_settings(leaf)) };
    let lb = Lb::start_with_args(backends, &settings, args);
    let tls = tls_addr_in(&lb.ready_line);
    (lb, tls)
}

/// The DER of the certificate a new TLS connection to `addr` is served (SNI `name`).
fn served_certificate(addr: SocketAddr, client: &Arc<rustls::ClientConfig>, name: &str) -> Vec<u8> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A full handshake: a resumed session shows the certificate of the session it resumes.
    let mut config = (**client).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let tls = handshake(stream, &Arc::new(config), name).expect("handshake");
    tls.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

/// Which of `leaves` a DER certificate is (by file name), for readable failures.
fn which<'a>(der: &[u8], leaves: &[&'a Leaf]) -> &'a str {
    leaves
        .iter()
        .find(|leaf| leaf.der() == der)
        .map_or("an unknown certificate", |leaf| leaf.cert.file_stem().and_then(|s| s.to_str()).unwrap_or("?"))
}

/// Runs curl against the HTTPS listener, trusting only the test CA; its stdout.
fn curl(pki: &Pki, url: &str, extra: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&pki.ca)
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("curl on PATH");
    assert!(output.status.success(), "curl {url}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn curl_gets_the_backend_answer_and_the_backend_sees_https() {
    if !common::tools::require(&[&common::tools::OPENSSL, &common::tools::CURL]) {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"], KeyKind::RsaPkcs8, 30);
    let b1 = backend(&["--id", "tls-b1"]);
    // The 5 MB upload below is over the default 1 MiB limit.
    let (lb, tls) = lb_with_tls(&[b1.addr()], &leaf, r#""max_body_bytes": 8388608"#, &[]);
    let url = format!("https://localhost:{}/some/path?x=1", tls.port());
    let answer: serde_json::Value = serde_json::from_str(&curl(&pki, &url, &[])).unwrap();
    assert_eq!(answer["server_info"]["id"], "tls-b1");
    assert_eq!(answer["request"]["path"], "/some/path");
    assert_eq!(answer["request"]["query"], "x=1");
    let headers = &answer["request"]["headers"];
    assert_eq!(headers["x-forwarded-proto"], "https", "{headers}");
    assert_eq!(headers["x-forwarded-host"], format!("localhost:{}", tls.port()));
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    // The same request on the plain port says http.
    let mut plain = Conn::open(lb.addr);
    assert_eq!(plain.get("/p").json()["request"]["headers"]["x-forwarded-proto"], "http");

    // Exact bodies both ways (a 5 MB upload echoed, a 3 MB download), TLS 1.2 and 1.3, and
    // HTTP/1.0 (ALPN http/1.0) too.
    let dir = &pki.dir;
    let upload: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("upload.bin"), &upload).unwrap();
    for version in [&["--tlsv1.2", "--tls-max", "1.2"][..], &["--tlsv1.3"]] {
        let echo_url = format!("https://localhost:{}/?echo=1", tls.port());
        let out = dir.join("echo.bin");
        let mut args = vec!["--data-binary", "@upload.bin", "-o", out.to_str().unwrap()];
        args.extend_from_slice(version);
        let output = Command::new("curl")
            .current_dir(dir)
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&pki.ca)
            .args(&args)
            .arg(&echo_url)
            .output()
            .unwrap();
        assert!(output.status.success(), "{version:?}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(std::fs::read(&out).unwrap() == upload, "{version:?}: the echo differs");
        let size = curl(&pki, &format!("https://localhost:{}/?bytes=3000000", tls.port()), &{
            let mut a = vec!["-o", "/dev/null", "-w", "%{size_download} %{http_code} %{ssl_verify_result}"];
            a.extend_from_slice(version);
            a
        });
        assert_eq!(size, "3000000 200 0", "{version:?}");
    }
    let old = curl(&pki, &format!("https://localhost:{}/old", tls.port()), &["--http1.0", "-i"]);
    assert!(old.starts_with("HTTP/1.1 200 OK\r\n") && old.contains("\r\nConnection: close\r\n"), "{old}");

    // The management API answers on the HTTPS port as on the plain one (loopback, no token).
    let stats: serde_json::Value =
        serde_json::from_str(&curl(&pki, &format!("https://localhost:{}/lb/stats", tls.port()), &[])).unwrap();
    assert!(stats["total_requests"].as_u64().unwrap() >= 6, "{stats}");
}

#[test]
fn python_ssl_client_over_tls_1_2_and_1_3() {
    if !common::tools::require(&[&common::tools::OPENSSL, &common::tools::PYTHON3]) {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"], KeyKind::EcSec1, 30);
    let b1 = backend(&["--id", "py-b1"]);
    let (_lb, tls) = lb_with_tls(&[b1.addr()], &leaf, "", &[]);
    // Each version: the protocol and ALPN it got, then a GET and a POST on one keep-alive
    // connection with http.client: their statuses, backends and what the backend saw.
    let script = r#"
import http.client, json, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
out = {}
for name, version in (("1.2", ssl.TLSVersion.TLSv1_2), ("1.3", ssl.TLSVersion.TLSv1_3)):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    answers = []
    for method, path, body in (("GET", "/py", None), ("POST", "/py-post", b"hello")):
        conn.request(method, path, body=body)
        response = conn.getresponse()
        answers.append((response.status, json.loads(response.read())))
    out[name] = {"version": conn.sock.version(), "alpn": conn.sock.selected_alpn_protocol(),
                 "status": [status for status, _ in answers],
                 "ids": [a["server_info"]["id"] for _, a in answers],
                 "proto": [a["request"]["headers"]["x-forwarded-proto"] for _, a in answers],
                 "post_body": answers[-1][1]["request"]["body"]}
    conn.close()
print(json.dumps(out))
"#;
    let output = Command::new("python3")
        .args(["-c", script, &tls.port().to_string(), pki.ca.to_str().unwrap()])
        .output()
        .expect("python3 on PATH");
    assert!(output.status.success(), "python: {}", String::from_utf8_lossy(&output.stderr));
    let got: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for (name, version) in [("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")] {
        let run = &got[name];
        assert_eq!(run["version"], version, "{got}");
        assert_eq!(run["alpn"], "http/1.1");
        assert_eq!(run["status"], serde_json::json!([200, 200]));
        assert_eq!(run["ids"], serde_json::json!(["py-b1", "py-b1"]));
        assert_eq!(run["proto"], serde_json::json!(["https", "https"]));
        assert_eq!(run["post_body"], "hello");
    }
}

/// A TLS server in this process serving the demo backend with `certificates`.
fn tls_server(certificates: Certificates) -> Server {
    let tls = TlsListener { bind: "127.0.0.1:0".parse().unwrap(), acceptor: TlsAcceptor::new(certificates) };
    let config =
        ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), threads: 4, tls: Some(tls), ..Default::default() };
    Server::start(config, DemoBackend::new(0, "127.0.0.1", Some("inproc".into()))).unwrap()
}

#[test]
fn every_key_format_is_served_to_a_rustls_client_over_tls_1_2_and_1_3() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    for (tag, kind) in
        [("ec8", KeyKind::EcPkcs8), ("sec1", KeyKind::EcSec1), ("rsa8", KeyKind::RsaPkcs8), ("rsa1", KeyKind::RsaPkcs1)]
    {
        let leaf = pki.leaf(tag, &["localhost"], kind, 30);
        // The key also works from the certificate's own file (a combined PEM, as HAProxy's crt).
        let combined = pki.dir.join(format!("{tag}.combined.pem"));
        let pem = [std::fs::read(&leaf.cert).unwrap(), std::fs::read(&leaf.key).unwrap()].concat();
        std::fs::write(&combined, pem).unwrap();
        for pair in [(leaf.cert.clone(), leaf.key.clone()), (combined.clone(), combined.clone())] {
            let server = tls_server(Certificates::load(&[pair]).unwrap());
            let addr = server.tls_addr().unwrap();
            for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
                let client = pki.client_version(version);
                assert_eq!(which(&served_certificate(addr, &client, "localhost"), &[&leaf]), tag);
                let mut conn = Conn::open_tls(addr, &client);
                let resp = conn.get("/formats");
                assert_eq!((resp.status, resp.json()["server_info"]["id"].as_str()), (200, Some("inproc")), "{tag}");
                let common::Socket::Tls(tls) = conn.reader.get_ref() else { unreachable!() };
                assert_eq!(tls.conn.protocol_version(), Some(version.version), "{tag}");
                assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            }
            server.stop(Duration::from_secs(1));
        }
    }
}

#[test]
fn alpn_offers_http_1_1_and_refuses_h2_only_clients() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"], KeyKind::EcPkcs8, 30);
    let server = tls_server(Certificates::load(&[(leaf.cert.clone(), leaf.key.clone())]).unwrap());
    let addr = server.tls_addr().unwrap();
    let connect = |alpn: &[&[u8]]| {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        handshake(stream, &pki.client_with(alpn), "localhost").map(|tls| tls.conn.alpn_protocol().map(<[u8]>::to_vec))
    };
    assert_eq!(connect(&[b"h2", b"http/1.1"]).unwrap(), Some(b"http/1.1".to_vec()), "http/1.1 chosen over h2");
    assert_eq!(connect(&[b"http/1.0"]).unwrap(), Some(b"http/1.0".to_vec()));
    assert_eq!(connect(&[]).unwrap(), None, "no ALPN at all is fine");
    let refused = connect(&[b"h2"]).unwrap_err();
    assert!(refused.to_string().contains("NoApplicationProtocol"), "{refused}");
    server.stop(Duration::from_secs(1));
}

#[test]
fn sni_picks_a_certificate_by_its_names_exact_before_wildcard() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let default = pki.leaf("default", &["localhost"], KeyKind::EcPkcs8, 30);
    let wildcard = pki.leaf("wildcard", &["*.example.test"], KeyKind::EcPkcs8, 30);
    let www = pki.leaf("www", &["www.example.test"], KeyKind::RsaPkcs1, 30);
    let b1 = backend(&[]);
    let more = format!(
        r#""tls_sni_certificates": [{{"cert": "{}", "key": "{}"}}, {{"cert": "{}", "key": "{}"}}]"#,
        wildcard.cert.display(),
        wildcard.key.display(),
        www.cert.display(),
        www.key.display()
    );
    let (_lb, tls) = lb_with_tls(&[b1.addr()], &default, &more, &[]);
    let client = pki.client();
    let leaves = [&default, &wildcard, &www];
    assert_eq!(
        which(&served_certificate(tls, &client, "www.example.test"), &leaves),
        "www",
        "exact name, though listed last"
    );
    assert_eq!(which(&served_certificate(tls, &client, "api.example.test"), &leaves), "wildcard", "wildcard");
    assert_eq!(
        which(&served_certificate(tls, &client, "WWW.Example.Test"), &leaves),
        "www",
        "names are case-insensitive"
    );
    assert_eq!(which(&served_certificate(tls, &client, "localhost"), &leaves), "default");
    // No SNI (an IP address is never sent as SNI): the default.
    assert_eq!(which(&served_certificate(tls, &client, "127.0.0.1"), &leaves), "default");
    // A request over the SNI-picked certificate is served like any other.
    let stream = TcpStream::connect(tls).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut api = handshake(stream, &client, "api.example.test").unwrap();
    api.write_all(b"GET /sni HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n").unwrap();
    let resp = read_response(&mut std::io::BufReader::new(api), false).unwrap();
    assert_eq!(resp.json()["request"]["headers"]["host"], "api.example.test");
}

/// Runs lb-sync with `args` (after an ephemeral port and a dead backend) expecting a refusal:
/// its exit status and the one line it printed.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_lb-sync"))
        .args(["--host", "127.0.0.1", "--port", "0", "--backend", "127.0.0.1:9", "--health-check-interval", "0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.stdout.is_empty(), "{args:?}: started: {}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.trim_end().lines().last().unwrap_or("").to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (output.status.code(), last)
}

#[test]
fn a_bad_certificate_at_start_is_one_clear_line_naming_the_file() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let good = pki.leaf("good", &["localhost"], KeyKind::EcPkcs8, 30);
    let other = pki.leaf("other", &["localhost"], KeyKind::RsaPkcs1, 30);
    let expired = pki.leaf("expired", &["localhost"], KeyKind::EcPkcs8, -1);
    let end = common::tls::openssl(&["x509", "-in", expired.cert.to_str().unwrap(), "-noout", "-enddate"], None);
    let missing = pki.dir.join("missing.pem");
    let (cert, key) = (good.cert.to_str().unwrap(), good.key.to_str().unwrap());
    let missing_s = missing.to_str().unwrap();
    let dir = pki.dir.to_str().unwrap();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--tls-cert", missing_s, "--tls-key", key],
            format!("lb-sync: cannot start: TLS certificate {missing_s}: cannot read: No such file or directory (os error 2)"),
        ),
        (
            vec!["--tls-cert", dir, "--tls-key", key],
            format!("lb-sync: cannot start: TLS certificate {dir}: cannot read: Is a directory (os error 21)"),
        ),
        (
            vec!["--tls-cert", key, "--tls-key", key],
            format!("lb-sync: cannot start: TLS certificate {key}: no PEM certificate (BEGIN CERTIFICATE) in it"),
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", missing_s],
            format!("lb-sync: cannot start: TLS key {missing_s}: cannot read: No such file or directory (os error 2)"),
        ),
        (
            vec!["--tls-cert", cert],
            format!("lb-sync: cannot start: TLS key {cert}: no PEM private key in it (PKCS#8, RSA PRIVATE KEY or EC PRIVATE KEY)"),
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", other.key.to_str().unwrap()],
            format!("lb-sync: cannot start: TLS key {} does not match the certificate {cert}", other.key.display()),
        ),
    ];
    for (args, message) in &cases {
        let mut all = vec!["--tls-port", "0"];
        all.extend_from_slice(args);
        assert_eq!(refused(&all), (Some(1), message.clone()), "{args:?}");
    }
    // Expired: the date openssl wrote, in our words, and the serial.
    let (status, line) = refused(&[
        "--tls-port",
        "0",
        "--tls-cert",
        expired.cert.to_str().unwrap(),
        "--tls-key",
        expired.key.to_str().unwrap(),
    ]);
    let expected = format!("lb-sync: cannot start: TLS certificate {} expired on ", expired.cert.display());
    assert_eq!(status, Some(1));
    assert!(line.starts_with(&expected) && line.ends_with(&format!("(serial {})", expired.serial())), "{line} ({end})");
    // A port without a certificate is a configuration error (exit 2), as is a certificate
    // without a port; --check-config loads the certificate as a start would.
    assert_eq!(
        refused(&["--tls-port", "0"]),
        (Some(2), "lb-sync: tls_port is set but tls_cert is not: the HTTPS listener needs a certificate".to_string())
    );
    assert_eq!(
        refused(&["--tls-cert", cert]),
        (Some(2), "lb-sync: tls_cert, tls_key or tls_sni_certificates set without tls_port".to_string())
    );
    let (status, line) = refused(&[
        "--check-config",
        "--tls-port",
        "0",
        "--tls-cert",
        expired.cert.to_str().unwrap(),
        "--tls-key",
        expired.key.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(1));
    assert!(line.starts_with(&format!("lb-sync: TLS certificate {} expired on ", expired.cert.display())), "{line}");
}

#[test]
fn handshake_timeout_closes_silent_tls_clients_while_requests_are_served() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"], KeyKind::EcPkcs8, 30);
    let b1 = backend(&[]);
    let (lb, tls) = lb_with_tls(&[b1.addr()], &leaf, r#""tls_handshake_timeout": 3"#, &["--threads", "4"]);
    // 200 clients that connect and never finish a handshake: half send nothing, half the
    // first bytes of a ClientHello (a record header announcing 512 bytes) and stop.
    let opened = Instant::now();
    let mut silent: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut stream = TcpStream::connect(tls).unwrap();
            if i % 2 == 1 {
                stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
            }
            stream
        })
        .collect();
    // Meanwhile every request is answered at once, over TLS and over plain TCP, by 4 workers
    // (were handshakes to hold workers, requests would wait for the 3 s timeout).
    let client = pki.client();
    for i in 0..40 {
        let started = Instant::now();
        let mut conn = if i % 2 == 0 { Conn::open_tls(tls, &client) } else { Conn::open(lb.addr) };
        assert_eq!(conn.get(&format!("/during/{i}")).status, 200);
        assert!(started.elapsed() < Duration::from_secs(2), "request {i} took {:?}", started.elapsed());
    }
    assert!(opened.elapsed() < Duration::from_millis(2500), "the requests above must run before the timeout");
    // Still open before the timeout...
    for stream in &silent {
        stream.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let mut byte = [0u8; 1];
        let err = (&*stream).read(&mut byte).expect_err("nothing was sent, nothing closed yet");
        assert!(matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{err}");
    }
    // ...and every one closed by the server soon after it (EOF or reset, never data).
    for (i, stream) in silent.iter_mut().enumerate() {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        let waited = opened.elapsed();
        assert!(rest.is_empty() || rest[0] == 0x15, "client {i} got data that is not an alert: {rest:?}");
        assert!(waited >= Duration::from_millis(2900), "client {i} closed after {waited:?}, before the timeout");
        assert!(waited < Duration::from_secs(8), "client {i} closed only after {waited:?}");
    }
    // And the server is as good as before.
    assert_eq!(Conn::open_tls(tls, &client).get("/after").status, 200);
}

#[test]
fn sighup_serves_a_renewed_certificate_to_new_connections_and_keeps_it_when_the_next_is_bad() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let first = pki.leaf("first", &["localhost"], KeyKind::EcPkcs8, 30);
    let renewed = pki.leaf("renewed", &["localhost"], KeyKind::RsaPkcs8, 30);
    let expired = pki.leaf("expired", &["localhost"], KeyKind::EcPkcs8, -1);
    let live = Leaf { cert: pki.dir.join("live.pem"), key: pki.dir.join("live.key") };
    let install = |leaf: &Leaf| {
        std::fs::copy(&leaf.cert, &live.cert).unwrap();
        std::fs::copy(&leaf.key, &live.key).unwrap();
    };
    install(&first);
    let b1 = backend(&[]);
    let (lb, tls) = lb_with_tls(&[b1.addr()], &live, "", &[]);
    let client = pki.client();
    let leaves = [&first, &renewed, &expired];
    assert_eq!(which(&served_certificate(tls, &client, "localhost"), &leaves), "first");
    let mut kept = Conn::open_tls(tls, &client);
    assert_eq!(kept.get("/before").status, 200);

    // A renewal under the same file names, then SIGHUP: new connections get it.
    install(&renewed);
    lb.signal("HUP");
    assert!(
        lb.wait_log(
            &format!("TLS certificates for new connections: {} (serial {}", live.cert.display(), renewed.serial()),
            Duration::from_secs(10)
        ),
        "{}",
        lb.log()
    );
    assert_eq!(which(&served_certificate(tls, &client, "localhost"), &leaves), "renewed");
    // A connection made before goes on as it was.
    assert_eq!(kept.get("/after-reload").status, 200);

    // A bad one (expired; then a key that does not match): the reload is refused, named, and
    // the renewed certificate stays.
    install(&expired);
    lb.signal("HUP");
    let refusal =
        format!("reload refused, the running configuration stays: TLS certificate {} expired on", live.cert.display());
    assert!(lb.wait_log(&refusal, Duration::from_secs(10)), "{}", lb.log());
    assert_eq!(which(&served_certificate(tls, &client, "localhost"), &leaves), "renewed");
    std::fs::copy(&renewed.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    lb.signal("HUP");
    let mismatch = format!("TLS key {} does not match the certificate {}", live.key.display(), live.cert.display());
    assert!(lb.wait_log(&mismatch, Duration::from_secs(10)), "{}", lb.log());
    assert_eq!(which(&served_certificate(tls, &client, "localhost"), &leaves), "renewed");
    let mut conn = Conn::open_tls(tls, &client);
    assert_eq!(conn.get("/still").status, 200);
}

#[test]
fn a_slow_reader_gets_a_large_response_whole_over_tls() {
    // The client reads in small sips through a small window, so the poller delivers most of
    // each answer (refilled by workers) as the socket drains; every answer must arrive whole
    // and the connection serve the next request. (That a response is done only once its last
    // records are sent is checked with a tiny send buffer in `server::stream`'s unit test.)
    const SIZE: usize = 6_000_000;
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"], KeyKind::EcPkcs8, 30);
    let server = tls_server(Certificates::load(&[(leaf.cert.clone(), leaf.key.clone())]).unwrap());
    let addr = server.tls_addr().unwrap();
    let stream = TcpStream::connect(addr).unwrap();
    socket2::SockRef::from(&stream).set_recv_buffer_size(16 * 1024).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn = Conn::over(stream, Some(&pki.client()));
    for round in 0..3 {
        conn.send(format!("GET /?bytes={SIZE} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let head = conn.head_response();
        assert_eq!(head.header("content-length"), Some(SIZE.to_string().as_str()));
        let mut left = SIZE;
        let mut buf = vec![0u8; 32 * 1024];
        let mut sips = 0;
        while left > 0 {
            let want = left.min(buf.len());
            let n =
                conn.reader.read(&mut buf[..want]).unwrap_or_else(|e| panic!("round {round}: {left} bytes short: {e}"));
            assert!(n > 0, "round {round}: body ended {left} bytes short");
            left -= n;
            sips += 1;
            if sips % 16 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    assert_eq!(conn.get("/next").status, 200);
    server.stop(Duration::from_secs(1));
}

#[test]
fn a_tls_client_that_stops_reading_is_cut_after_the_io_timeout_without_a_worker() {
    // A client asks for 50 MB over TLS and never reads: the worker hands the delivery to the
    // poller at once, and the poller resets it after client_io_timeout. Meanwhile the one
    // worker serves others.
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"], KeyKind::EcPkcs8, 30);
    let tls = TlsListener {
        bind: "127.0.0.1:0".parse().unwrap(),
        acceptor: TlsAcceptor::new(Certificates::load(&[(leaf.cert.clone(), leaf.key.clone())]).unwrap()),
    };
    let limits = lb_sync::server::Limits { io_timeout: Duration::from_secs(1), ..Default::default() };
    let config =
        ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), threads: 1, limits, tls: Some(tls), ..Default::default() };
    let server = Server::start(config, DemoBackend::new(0, "127.0.0.1", None)).unwrap();
    let addr = server.tls_addr().unwrap();
    let client = pki.client();
    let mut stuck = Conn::open_tls(addr, &client);
    stuck.send(b"GET /?bytes=50000000 HTTP/1.1\r\nHost: t\r\n\r\n");
    let started = Instant::now();
    for i in 0..10 {
        assert_eq!(Conn::open_tls(addr, &client).get(&format!("/other{i}")).status, 200);
    }
    assert!(started.elapsed() < Duration::from_millis(900), "the one worker was held: {:?}", started.elapsed());
    // The stuck client, reading now, gets part of the body and then a cut: an error (a reset,
    // or an end without close_notify), never a clean end, and at once, not at a timeout.
    std::thread::sleep(Duration::from_millis(1500));
    let mut got = Vec::new();
    let reading = Instant::now();
    let result = stuck.reader.read_to_end(&mut got);
    assert!(reading.elapsed() < Duration::from_secs(5), "the transfer was not cut: {:?}", reading.elapsed());
    match result {
        Ok(_) => panic!("a cut transfer ended cleanly after {} bytes", got.len()),
        Err(e) => assert!(!matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}"),
    }
    assert!(got.len() < 50_000_000, "all of it arrived");
    server.stop(Duration::from_secs(1));
}

#[test]
fn request_bodies_stream_over_tls_with_request_buffering_off() {
    // The poller reads the rest of the body (decrypting it) while a worker already sends it to
    // the backend: both use the connection's TLS session at once.
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"], KeyKind::EcPkcs8, 30);
    let b1 = backend(&["--id", "stream-b1"]);
    let settings = r#""request_buffering": false, "threads": 4, "max_body_bytes": 8388608"#;
    let (_lb, tls) = lb_with_tls(&[b1.addr()], &leaf, settings, &[]);
    let mut conn = Conn::open_tls(tls, &pki.client());
    for (round, size) in [4usize << 20, 300_000, 1].into_iter().enumerate() {
        conn.send(format!("POST /up{round} HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n").as_bytes());
        let block = vec![b'u'; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len());
            conn.send(&block[..n]);
            left -= n;
        }
        let answer = conn.response().json();
        assert_eq!(answer["request"]["body_bytes"], size as u64, "round {round}");
        assert_eq!(answer["request"]["headers"]["x-forwarded-proto"], "https");
    }
    // A chunked one, whose bytes the backend shows.
    conn.send(b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    conn.send(&common::chunked(b"streamed over tls", &[5, 3]));
    let answer = conn.response().json();
    assert_eq!(answer["request"]["body"], "streamed over tls");
    assert_eq!(answer["server_info"]["id"], "stream-b1");
}

/// A masked client frame (RFC 6455 5.2): FIN, `opcode`, `payload`.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    common::ws::client_frame(true, opcode, [0x5a, 0x13, 0xc7, 0x02], payload)
}

/// One unmasked server frame: (opcode, payload).
fn ws_read(reader: &mut impl Read) -> (u8, Vec<u8>) {
    let (_, opcode, payload) = common::ws::read_server_frame(reader).expect("a frame");
    (opcode, payload)
}

#[test]
fn a_websocket_over_tls_is_relayed_to_the_backend_in_plaintext() {
    // wss:// to lb-sync's HTTPS port, ws:// to lb-backend's /ws echo: the tunnel reads and
    // writes the client through its TLS session.
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"], KeyKind::EcPkcs8, 30);
    let b1 = backend(&[]);
    let (lb, tls) = lb_with_tls(&[b1.addr()], &leaf, "", &[]);
    let mut conn = Conn::open_tls(tls, &pki.client());
    conn.send(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let resp = conn.head_response();
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(resp.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    conn.send(&ws_frame(0x1, b"hello over wss"));
    assert_eq!(ws_read(&mut conn.reader), (0x1, b"hello over wss".to_vec()));
    // Larger than every buffer on the way, both ways.
    let big: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
    conn.send(&ws_frame(0x2, &big));
    let (opcode, echoed) = ws_read(&mut conn.reader);
    assert!(opcode == 0x2 && echoed == big, "the large frame came back whole");
    conn.send(&ws_frame(0x8, &1000u16.to_be_bytes()));
    assert_eq!(ws_read(&mut conn.reader), (0x8, 1000u16.to_be_bytes().to_vec()));
    // The backend closes after its close frame: passed on as close_notify, a clean end.
    let mut rest = Vec::new();
    assert_eq!(conn.reader.read_to_end(&mut rest).map_err(|e| e.kind()), Ok(0), "a clean TLS end: {rest:?}");
    drop(conn);
    let tunnels = || {
        let stats = Conn::open(lb.addr).get("/lb/stats").json();
        (stats["tunnels"]["active"].as_u64(), stats["tunnels"]["total"].as_u64())
    };
    assert!(common::wait_until(Duration::from_secs(5), || tunnels() == (Some(0), Some(1))), "{:?}", tunnels());

    // And a WebSocket library over TLS, where one is installed (CI installs it).
    if !common::tools::require(&[&common::tools::PYTHON_WEBSOCKETS]) {
        return;
    }
    let script = r#"
import asyncio, ssl, sys, websockets

async def main(uri, ca):
    ctx = ssl.create_default_context(cafile=ca)
    async with websockets.connect(uri, ssl=ctx, max_size=None) as ws:
        await ws.send("hello from python over tls")
        assert await ws.recv() == "hello from python over tls"
        data = bytes(range(256)) * 1000
        await ws.send(data)
        assert await ws.recv() == data
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)
    assert ws.close_code == 1000, ws.close_code
    print("ok")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &format!("wss://localhost:{}/ws", tls.port()), pki.ca.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim() == "ok", "python websockets over wss: {said}");
    assert!(common::wait_until(Duration::from_secs(5), || tunnels() == (Some(0), Some(2))), "{:?}", tunnels());
}

/// A TLS handshake under way when a stop begins is drained like an idle connection
/// (250 ms), also when the client finishes it within that time and then stays silent (a
/// browser's preconnect): the handshake's end gave it `head_timeout` (10 s) before, and the stop
/// waited for it until its grace period was over.
#[test]
fn a_handshake_finished_during_a_stop_does_not_hold_the_stop() {
    stop_with_a_handshake(true);
}

/// The control: the same client, its Finished never sent, is closed after the 250 ms drain.
#[test]
fn an_unfinished_handshake_is_drained_at_a_stop() {
    stop_with_a_handshake(false);
}

fn stop_with_a_handshake(finish: bool) {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"], KeyKind::EcPkcs8, 30);
    let server = tls_server(Certificates::load(&[(leaf.cert.clone(), leaf.key.clone())]).unwrap());
    let addr = server.tls_addr().unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(pki.client(), name).unwrap();
    // ClientHello out, the server's whole flight in: the client's Finished is queued, not sent.
    while client.wants_write() {
        client.write_tls(&mut tcp).unwrap();
    }
    while client.is_handshaking() && !client.wants_write() {
        client.read_tls(&mut tcp).unwrap();
        client.process_new_packets().unwrap();
    }
    let started = Instant::now();
    let stopper = std::thread::spawn(move || server.stop(Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(100));
    while finish && client.wants_write() {
        client.write_tls(&mut tcp).unwrap();
    }
    stopper.join().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "the stop took {took:?} for a silent client");
}

/// A request and the client's close_notify in one flight, its TCP left open (a client
/// that half-closes TLS after its request and reads to the end): the poller reads both at once
/// and serves the request; the connection must then close at once, not wait for a readiness
/// event that never comes (the close_notify is inside rustls already) until keep_alive_timeout.
#[test]
fn a_request_with_close_notify_is_closed_after_its_answer() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"], KeyKind::EcPkcs8, 30);
    let server = tls_server(Certificates::load(&[(leaf.cert.clone(), leaf.key.clone())]).unwrap());
    let addr = server.tls_addr().unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = handshake(tcp, &pki.client(), "localhost").unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        match tls.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e.kind()),
        }
    };
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    assert!(
        end != Err(std::io::ErrorKind::WouldBlock) && end != Err(std::io::ErrorKind::TimedOut),
        "no end of the connection {:?} after the answer: {end:?}",
        started.elapsed()
    );
    server.stop(Duration::from_secs(1));
}

#[test]
fn https_connections_are_spread_over_the_pollers_and_each_counts_its_handshakes() {
    if !common::tools::require(&[&common::tools::OPENSSL]) {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("site", &["localhost"], KeyKind::EcPkcs8, 30);
    let b1 = backend(&[]);
    let (lb, tls) = lb_with_tls(&[b1.addr()], &leaf, r#""pollers": 4"#, &[]);
    let client = pki.client();
    for i in 0..80 {
        let resp = Conn::open_tls(tls, &client).get(&format!("/tls/{i}"));
        assert_eq!(resp.status, 200, "connection {i}");
    }
    let stats = Conn::open(lb.addr).get("/lb/stats").json();
    let pollers = stats["pollers"].as_array().expect("pollers in /lb/stats");
    assert_eq!(pollers.len(), 4, "{stats}");
    let handshakes: Vec<u64> = pollers.iter().map(|p| p["tls_handshakes"].as_u64().unwrap()).collect();
    assert_eq!(handshakes.iter().sum::<u64>(), 80, "every handshake counted once: {handshakes:?}");
    assert!(handshakes.iter().all(|&n| n > 0), "each poller ran some of the 80 handshakes: {handshakes:?}");
}
