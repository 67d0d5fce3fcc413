//! The management API behind real front proxies on the same machine (issue 25): nginx with
//! `X-Forwarded-For $proxy_add_x_forwarded_for` and HAProxy with `option forwardfor` relay
//! outside clients from loopback, adding a forwarding field to each request, so without a token
//! lb-sync refuses every one of them, whatever the client sent: the attack of the issue
//! (`X-Forwarded-For: \xff`, which nginx merges into `\xff, 127.0.0.1`) included. The data path
//! through them still works.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::inproc::demo_backend;
use common::tools::{require, HAPROXY, NGINX};
use common::{unique_dir, unused_port, wait_until, ChildProcess, Conn};
use lb_sync::balancer::LoadBalancer;
use lb_sync::config::BackendConfig;

/// A front proxy started in the foreground, killed when dropped, once its port accepts.
fn start_front(mut command: Command, port: u16) -> ChildProcess {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let child = ChildProcess { child: command.spawn().expect("spawn the front proxy"), ready_line: String::new() };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let up = wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok());
    assert!(up, "the front proxy did not listen on {addr}");
    child
}

fn nginx(dir: &Path, port: u16, upstream: SocketAddr) -> ChildProcess {
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {dir}/nginx.pid; error_log {dir}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};\n\
           uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
           server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://{upstream};\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }} }}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut command = Command::new("nginx");
    command.arg("-p").arg(dir).arg("-c").arg(dir.join("nginx.conf"));
    start_front(command, port)
}

fn haproxy(dir: &Path, port: u16, upstream: SocketAddr) -> ChildProcess {
    let conf = format!(
        "global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
         frontend front\n  bind 127.0.0.1:{port}\n  option forwardfor\n  default_backend lb\n\
         backend lb\n  server lb {upstream}\n"
    );
    std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
    let mut command = Command::new("haproxy");
    command.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
    start_front(command, port)
}

/// The status of `GET target` through `front` with `extra` header lines.
fn status_via(front: SocketAddr, target: &str, extra: &[u8]) -> u16 {
    let mut conn = Conn::open(front);
    let mut raw = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n").into_bytes();
    raw.extend_from_slice(extra);
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    conn.send(&raw);
    conn.response().status
}

#[test]
fn clients_of_nginx_and_haproxy_on_this_machine_never_reach_the_api_without_a_token() {
    if !require(&[&NGINX, &HAPROXY]) {
        return;
    }
    let (_backend, backend_port) = demo_backend();
    let config = {
        let mut adjusted = common::inproc::config(vec![BackendConfig::new("127.0.0.1", backend_port, 1)]);
        adjusted.listener.threads = 4;
        adjusted
    };
    let lb = LoadBalancer::start(config).unwrap();
    let dir = unique_dir("front-proxies");
    let (nginx_port, haproxy_port) = (unused_port(), unused_port());
    let _nginx = nginx(&dir, nginx_port, lb.local_addr());
    let _haproxy = haproxy(&dir, haproxy_port, lb.local_addr());
    let attacks: [&[u8]; 6] = [
        b"",
        b"X-Forwarded-For: \xff\r\n",
        b"X-Forwarded-For: \xff\r\nX-Forwarded-For: 1.2.3.4\r\n",
        b"X_Forwarded_For: 127.0.0.1\r\n",
        b"Forwarded: for=127.0.0.1\r\n",
        b"X-Real-IP: 127.0.0.1\r\n",
    ];
    for front in [nginx_port, haproxy_port].map(|p| SocketAddr::from(([127, 0, 0, 1], p))) {
        assert_eq!(status_via(front, "/", b""), 200, "the data path through {front}");
        for attack in attacks {
            let status = status_via(front, "/lb/backends", attack);
            assert_eq!(status, 403, "through {front} with {:?}", String::from_utf8_lossy(attack));
        }
    }
    assert_eq!(status_via(lb.local_addr(), "/lb/backends", b""), 200, "a local curl still works");
    lb.stop(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
}
