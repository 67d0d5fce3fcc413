//! Embedding lb-sync: two demo backends and a weighted balancer in one program.
//!
//! `cargo run --release --example embed` prints which backend served each of 8 requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use lb_sync::balancer::LoadBalancer;
use lb_sync::config::{BackendConfig, Config};
use lb_sync::demo_backend::DemoBackend;
use lb_sync::server::{bind, Server, ServerConfig};

fn main() -> std::io::Result<()> {
    // Two backends on ports the kernel picks.
    let mut backends = Vec::new();
    let mut configs = Vec::new();
    for weight in [1, 3] {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 128)?;
        let port = listener.local_addr()?.port();
        backends.push(Server::start_on(listener, ServerConfig::default(), DemoBackend::new(port, "127.0.0.1", None))?);
        configs.push(BackendConfig::new("127.0.0.1", port, weight));
    }
    let balancer = LoadBalancer::start({
        let mut adjusted = Config::default();
        adjusted.listener.host = "127.0.0.1".parse().unwrap();
        adjusted.listener.port = 0;
        adjusted.pool.algorithm = "weighted_round_robin".parse().expect("a known algorithm");
        adjusted.backends = configs;
        adjusted.operations.access_log = false;
        adjusted
    })?;
    println!("balancer on {}", balancer.local_addr());

    for i in 0..8 {
        let mut stream = TcpStream::connect(balancer.local_addr())?;
        write!(stream, "GET /hello HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n")?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status)?;
        let mut rest = String::new();
        reader.read_to_string(&mut rest)?;
        let body = rest.split("\r\n\r\n").nth(1).unwrap_or("");
        let id = serde_json::from_str::<serde_json::Value>(body).ok().map(|v| v["server_info"]["id"].to_string());
        println!("request {i}: {} from {}", status.trim(), id.unwrap_or_default());
    }

    balancer.stop(Duration::from_secs(2));
    for backend in backends {
        backend.stop(Duration::from_secs(1));
    }
    Ok(())
}
