//! `lb-backend`: the demo backend the scripts, tests and benchmarks run behind the balancer.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use lb_sync::demo_backend::DemoBackend;
use lb_sync::server::{bind, BodyBuffering, Certificates, Limits, Server, ServerConfig, TlsAcceptor, TlsListener};
use std::io::Write;

/// A demo backend: answers any path with JSON naming itself (`server_info.id`) and the request.
/// Query knobs: delay_ms, status, bytes (with chunked=1), echo=1, set_cookies=N, redirect=URL;
/// --delay-ms slows every request.
#[derive(FromArgs)]
struct Args {
    /// port to listen on
    #[argh(option)]
    port: u16,
    /// address to listen on (default 127.0.0.1)
    #[argh(option, default = "IpAddr::from([127, 0, 0, 1])")]
    host: IpAddr,
    /// id reported as server_info.id (default backend-<port>)
    #[argh(option)]
    id: Option<String>,
    /// worker threads (default 16: delays should not queue behind each other)
    #[argh(option, default = "16")]
    threads: usize,
    /// milliseconds added to every request (a slow backend; the delay_ms query knob adds to
    /// it), at most 120000 (default 0)
    #[argh(option, default = "0")]
    delay_ms: u64,
    /// log every request
    #[argh(switch)]
    debug: bool,
    /// also serve HTTPS on this port (with --tls-cert), same host
    #[argh(option)]
    tls_port: Option<u16>,
    /// PEM certificate chain for --tls-port
    #[argh(option)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (default: the --tls-cert file)
    #[argh(option)]
    tls_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    if args.delay_ms > 120_000 {
        eprintln!("lb-backend: --delay-ms must be 0-120000, got {}", args.delay_ms);
        return ExitCode::from(2);
    }
    let level = if args.debug { log::LevelFilter::Debug } else { log::LevelFilter::Info };
    let _ = simplelog::TermLogger::init(
        level,
        simplelog::Config::default(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let tls = match (args.tls_port, &args.tls_cert) {
        (None, None) => None,
        (Some(port), Some(cert)) => {
            let key = args.tls_key.clone().unwrap_or_else(|| cert.clone());
            match Certificates::load(&[(cert.clone(), key)]) {
                Ok(certificates) => Some(TlsListener {
                    bind: SocketAddr::new(args.host, port),
                    acceptor: TlsAcceptor::new(certificates),
                }),
                Err(e) => {
                    eprintln!("lb-backend: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        _ => {
            eprintln!("lb-backend: --tls-port and --tls-cert go together");
            return ExitCode::from(2);
        }
    };
    // It takes what the balancer in front lets through (the balancer's limits protect the
    // host): bodies up to 1 GiB, any client the whole temp-file cap.
    let config = ServerConfig {
        bind: SocketAddr::new(args.host, args.port),
        threads: args.threads,
        tls,
        limits: Limits { max_body_bytes: 1 << 30, ..Limits::default() },
        body_buffering: BodyBuffering { disk_free_share: 1.0, client_disk_share: 1.0, ..BodyBuffering::default() },
        ..ServerConfig::default()
    };
    let listener = match bind(config.bind, config.backlog) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("lb-backend: {e}");
            return ExitCode::from(1);
        }
    };
    // With --port 0 the kernel picks the port; the id and the ready line name the real one.
    let port = listener.local_addr().map_or(args.port, |a| a.port());
    let backend =
        DemoBackend::new(port, &args.host.to_string(), args.id).with_delay(Duration::from_millis(args.delay_ms));
    let id = backend.id().to_string();
    match Server::start_on(listener, config, backend) {
        Ok(server) => {
            // The ready line on stdout is what scripts and tests wait for; it ends with the plain
            // address.
            let tls = server.tls_addr().map_or(String::new(), |addr| format!(" (https on {addr})"));
            println!("{id}{tls} listening on {}", server.local_addr());
            let _ = std::io::stdout().flush();
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("lb-backend: cannot start: {e}");
            ExitCode::from(1)
        }
    }
}
