//! Pingora's quick-start load balancer, the Rust anchor of lb-sync's benchmark.
//!
//! What <https://github.com/cloudflare/pingora/blob/main/docs/quick_start.md> builds, with
//! plain HTTP upstreams and the addresses from the command line: a `LoadBalancer<RoundRobin>`
//! over static backends, a `ProxyHttp` whose `upstream_peer` takes the next one, and
//! Pingora's own defaults for everything else (upstream keep-alive on, a work-stealing tokio
//! runtime with `--threads` workers). No health checks, no TLS, no per-request logging.
//!
//! ```text
//! pingora-lb --listen 127.0.0.1:8080 --threads 2 --backend 127.0.0.1:8001 --backend 127.0.0.1:8002
//! ```

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::LoadBalancer;
use pingora_proxy::{http_proxy_service, ProxyHttp, Session};

const USAGE: &str = "usage: pingora-lb --listen ADDR:PORT [--threads N] --backend ADDR:PORT [--backend ADDR:PORT ...]

Pingora's quick-start round-robin load balancer over plain HTTP backends.
  --listen ADDR:PORT    where to accept clients (e.g. 127.0.0.1:8080)
  --threads N           Pingora server threads (tokio workers), default 2
  --backend ADDR:PORT   one backend; repeat for each (round robin in address order)
SIGINT stops at once; SIGTERM stops accepting and exits within about a second.";

/// The command line, checked.
#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    threads: usize,
    backends: Vec<SocketAddr>,
}

/// Parses `--flag VALUE` and `--flag=VALUE` forms; every error names the flag at fault.
fn parse_args(argv: impl IntoIterator<Item = String>) -> std::result::Result<Args, String> {
    let mut listen = None;
    let mut threads = 2;
    let mut backends: Vec<SocketAddr> = Vec::new();
    let mut argv = argv.into_iter();
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg, None),
        };
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        if !matches!(flag.as_str(), "--listen" | "--threads" | "--backend") {
            return Err(format!("unknown argument {flag:?}"));
        }
        let value = match inline.or_else(|| argv.next()) {
            Some(value) => value,
            None => return Err(format!("{flag} needs a value")),
        };
        let address = || value.parse::<SocketAddr>().map_err(|_| format!("{flag} {value:?}: not an IP:PORT address"));
        match flag.as_str() {
            "--listen" => listen = Some(address()?),
            "--backend" => {
                let backend = address()?;
                // Pingora keeps backends in a set: a repeat would silently count once.
                if backends.contains(&backend) {
                    return Err(format!("--backend {backend} given twice"));
                }
                backends.push(backend);
            }
            _ => {
                threads = match value.parse::<usize>() {
                    Ok(n) if (1..=1024).contains(&n) => n,
                    _ => return Err(format!("--threads {value:?}: a whole number from 1 to 1024")),
                }
            }
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    if backends.is_empty() {
        return Err("at least one --backend is required".to_string());
    }
    Ok(Args { listen, threads, backends })
}

/// The quick start's proxy: every request goes to the balancer's next backend.
struct Lb(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // Round robin ignores the key; 256 is the quick start's bound on tries.
        let backend =
            self.0.select(b"", 256).ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no backend to select"))?;
        // Plain HTTP: no TLS, so no SNI.
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

/// Pingora reports through the `log` crate: warnings and errors (a backend refusing, a
/// listener failing) go to stderr; nothing per successful request is logged at that level.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("pingora-lb: {} {}: {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("pingora-lb: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Pingora binds inside its service thread and only panics there when it cannot: check
    // here first so a taken port is a clear error and exit status, not a silent proxy.
    if let Err(e) = TcpListener::bind(args.listen) {
        eprintln!("pingora-lb: cannot listen on {}: {e}", args.listen);
        return ExitCode::from(1);
    }
    log::set_logger(&StderrLog).expect("the only logger");
    log::set_max_level(log::LevelFilter::Warn);

    let conf = ServerConf {
        threads: args.threads,
        // SIGTERM is graceful in Pingora: listeners close, then it waits grace_period_seconds
        // (default 300 s) and graceful_shutdown_timeout_seconds (default 5 s). A benchmark's
        // proxy should stop when told, as nginx does on SIGTERM, so: no grace period, 1 s to
        // finish.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let upstreams = match LoadBalancer::<RoundRobin>::try_from_iter(args.backends.iter().copied()) {
        Ok(upstreams) => upstreams,
        Err(e) => {
            eprintln!("pingora-lb: backends: {e}");
            return ExitCode::from(2);
        }
    };
    let mut proxy = http_proxy_service(&server.configuration, Lb(Arc::new(upstreams)));
    proxy.add_tcp(&args.listen.to_string());
    server.add_service(proxy);
    eprintln!(
        "pingora-lb: listening on {} with {} threads, backends {}",
        args.listen,
        args.threads,
        args.backends.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(" ")
    );
    // Runs until SIGTERM or SIGINT, then exits the process with status 0.
    server.run_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> std::result::Result<Args, String> {
        parse_args(line.split_whitespace().map(str::to_string))
    }

    #[test]
    fn reads_every_flag_in_both_forms() {
        let args = parse("--listen 127.0.0.1:8080 --threads=4 --backend 127.0.0.1:1 --backend=127.0.0.1:2").unwrap();
        assert_eq!(args.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(args.threads, 4);
        assert_eq!(args.backends, ["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()]);
        assert_eq!(parse("--listen 127.0.0.1:1 --backend 127.0.0.1:2").unwrap().threads, 2);
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        assert_eq!(parse("--backend 127.0.0.1:1").unwrap_err(), "--listen is required");
        assert_eq!(parse("--listen 127.0.0.1:1").unwrap_err(), "at least one --backend is required");
        assert_eq!(parse("--listen localhost:1").unwrap_err(), "--listen \"localhost:1\": not an IP:PORT address");
        assert_eq!(
            parse("--listen 127.0.0.1:1 --threads 0 --backend 127.0.0.1:2").unwrap_err(),
            "--threads \"0\": a whole number from 1 to 1024"
        );
        assert_eq!(
            parse("--listen 127.0.0.1:1 --backend 127.0.0.1:2 --backend 127.0.0.1:2").unwrap_err(),
            "--backend 127.0.0.1:2 given twice"
        );
        assert_eq!(parse("--listen 127.0.0.1:1 --backend").unwrap_err(), "--backend needs a value");
        assert_eq!(parse("--port 1").unwrap_err(), "unknown argument \"--port\"");
        assert_eq!(parse("--help").unwrap_err(), "");
    }
}
