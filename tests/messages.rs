//! What lb-sync says when something is wrong, as an operator reads it: a listen failure names
//! the address and the likely cause, a fatal error is printed once, `-h` is `--help`, two
//! backends at one address are refused at start, by `--check-config` and on reload with the
//! management API's words, and `/lb/config` shows the caps in force and where they came from.

mod common;

use std::net::{SocketAddr, TcpListener};

use common::lb::{lb_sync, Lb};
use common::{backend, temp_file, Conn};

/// Runs lb-sync expecting it to refuse to start: stderr must be exactly one line.
fn one_line_refusal(args: &[&str], status: i32) -> String {
    let output = lb_sync(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(status), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: printed once, got {stderr:?}");
    assert!(output.stdout.is_empty(), "{args:?}: no ready line");
    stderr.trim_end().to_string()
}

#[test]
fn a_port_in_use_names_the_address_and_the_likely_cause_once() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let said = one_line_refusal(&["--host", "127.0.0.1", "--port", &port, "--backend", "127.0.0.1:9"], 1);
    assert_eq!(
        said,
        format!(
            "lb-sync: cannot start: cannot listen on 127.0.0.1:{port}: address already in use (another lb-sync or \
             server? `ss -ltnp 'sport = :{port}'` shows which)"
        )
    );
    // The management API's own address, named as such.
    let admin = format!("127.0.0.1:{port}");
    let said = one_line_refusal(
        &["--host", "127.0.0.1", "--port", "0", "--backend", "127.0.0.1:9", "--admin-listen", &admin],
        1,
    );
    assert!(
        said.starts_with(&format!(
            "lb-sync: cannot start: cannot listen for the management API (admin_listen) on {admin}: address already in use"
        )),
        "{said}"
    );
    // With --log-file the error is in the file too, and still once on stderr.
    let log = temp_file("port-in-use.log", "");
    let said = one_line_refusal(
        &["--host", "127.0.0.1", "--port", &port, "--backend", "127.0.0.1:9", "--log-file", log.to_str().unwrap()],
        1,
    );
    assert!(said.contains("address already in use"), "{said}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.matches("cannot start: cannot listen on").count(), 1, "{logged}");
}

#[test]
fn dash_h_is_help() {
    let short = lb_sync(&["-h"]);
    let long = lb_sync(&["--help"]);
    assert_eq!(short.status.code(), Some(0), "{}", String::from_utf8_lossy(&short.stderr));
    assert_eq!(short.stdout, long.stdout);
    let text = String::from_utf8_lossy(&short.stdout);
    assert!(text.starts_with("Usage: ") && text.contains("--check-config"), "{text}");
}

#[test]
fn two_backends_at_one_address_are_refused_at_start_and_by_check_config_with_the_apis_words() {
    let words = "backend backend2: backend 'backend1' already has the address 127.0.0.1:8001";
    // The same address twice on the command line, and a name that resolves to it.
    for second in ["127.0.0.1:8001", "localhost:8001"] {
        let said = one_line_refusal(&["--port", "0", "--backend", "127.0.0.1:8001", "--backend", second], 1);
        assert_eq!(said, format!("lb-sync: cannot start: {words}"), "{second}");
    }
    let file = temp_file(
        "duplicate.json",
        r#"{"backends": [{"host": "127.0.0.1", "port": 8001}, {"host": "localhost", "port": 8001}]}"#,
    );
    let said = one_line_refusal(&["--config", file.to_str().unwrap(), "--check-config"], 1);
    assert_eq!(said, format!("lb-sync: {words}"));
}

#[test]
fn the_api_refuses_the_same_duplicate_with_409_and_a_reload_refuses_it_too() {
    let (one, two) = (backend(&[]), backend(&[]));
    let (a, b): (SocketAddr, SocketAddr) = (one.addr(), two.addr());
    let lb = Lb::start(&[a, b], "");
    let mut conn = Conn::open(lb.addr);
    let body = format!(r#"{{"id": "again", "host": "localhost", "port": {}}}"#, a.port());
    conn.send(
        format!("POST /lb/backends/add HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
    );
    let resp = conn.response();
    assert_eq!(resp.status, 409);
    let api = resp.json()["error"].as_str().unwrap().to_string();
    assert_eq!(api, format!("backend 'p{}' already has the address 127.0.0.1:{}", a.port(), a.port()));
    // A reload that lists one backend twice (by another name) is refused whole.
    let twice = format!(
        r#"{{"host": "127.0.0.1", "port": 0, "access_log": false, "health_check_interval": 0, "backends": [{{"id": "x", "host": "127.0.0.1", "port": {0}}}, {{"id": "y", "host": "localhost", "port": {0}}}]}}"#,
        b.port()
    );
    std::fs::write(lb.config_path(), twice).unwrap();
    let mut conn = Conn::open(lb.addr);
    conn.send(b"POST /lb/config/reload HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    let resp = conn.response();
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(
        resp.json()["error"],
        format!(
            "reload refused, the running configuration stays: backend y: backend 'x' already has the address 127.0.0.1:{}",
            b.port()
        )
    );
    let backends = Conn::open(lb.addr).get("/lb/backends").json();
    assert_eq!(backends.as_array().unwrap().len(), 2, "the running table stays: {backends}");
}

#[test]
fn lb_config_shows_the_caps_in_force_and_where_they_came_from() {
    let one = backend(&[]);
    let lb = Lb::start(
        &[one.addr()],
        r#""threads": 8, "rate_limit": 2.5, "client_rate_limit": 10, "client_rate_limit_burst": 4"#,
    );
    let config = Conn::open(lb.addr).get("/lb/config").json();
    assert_eq!(config["backend_max_connections"], 6, "{config}");
    assert_eq!(config["rate_limit_burst"], 3);
    assert_eq!(config["client_rate_limit_burst"], 4, "configured: shown as it is");
    assert_eq!(config["client_body_temp_path"], std::env::temp_dir().to_str().unwrap());
    let derived = &config["derived"];
    assert_eq!(derived["backend_max_connections"], "unset: 3/4 of threads (8)");
    assert_eq!(config["upstream_keepalive"], 8);
    assert_eq!(derived["upstream_keepalive"], "unset: one per worker (threads, 8)");
    assert_eq!(derived["rate_limit_burst"], "0: one second of rate_limit (2.5)");
    assert_eq!(derived["client_body_temp_path"], "unset: the system's temp dir");
    assert!(derived.get("client_rate_limit_burst").is_none(), "{derived}");
    assert!(derived.get("tls_key").is_none(), "{derived}");
    // A configured cap is shown as configured, with nothing derived.
    let lb = Lb::start(&[one.addr()], r#""threads": 8, "backend_max_connections": 3"#);
    let config = Conn::open(lb.addr).get("/lb/config").json();
    assert_eq!(config["backend_max_connections"], 3);
    assert!(config["derived"].get("backend_max_connections").is_none(), "{config}");
}
