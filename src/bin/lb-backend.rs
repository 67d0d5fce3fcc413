//! `lb-backend`: the demo backend the scripts, tests and benchmarks run behind the balancer.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use argh::FromArgs;
use lb_sync::demo_backend::DemoBackend;
use lb_sync::server::{bind, Server, ServerConfig};
use std::io::Write;

/// A demo backend: answers any path with JSON naming itself (`server_info.id`) and the request.
/// Query knobs: delay_ms, status, bytes (with chunked=1), echo=1, set_cookies=N, redirect=URL.
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
    /// log every request
    #[argh(switch)]
    debug: bool,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    let level = if args.debug { log::LevelFilter::Debug } else { log::LevelFilter::Info };
    let _ = simplelog::TermLogger::init(
        level,
        simplelog::Config::default(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let config =
        ServerConfig { bind: SocketAddr::new(args.host, args.port), threads: args.threads, ..ServerConfig::default() };
    let listener = match bind(config.bind, config.backlog) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("lb-backend: cannot listen on {}: {e}", config.bind);
            return ExitCode::from(1);
        }
    };
    // With --port 0 the kernel picks the port; the id and the ready line name the real one.
    let port = listener.local_addr().map_or(args.port, |a| a.port());
    let backend = DemoBackend::new(port, &args.host.to_string(), args.id);
    let id = backend.id().to_string();
    match Server::start_on(listener, config, backend) {
        Ok(server) => {
            // The ready line on stdout is what scripts and tests wait for.
            println!("{id} listening on {}", server.local_addr());
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
