//! `lb-sync`: the load balancer binary: flags and the config file, then `LoadBalancer::start`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use lb_sync::balance::AlgorithmKind;
use lb_sync::balancer::LoadBalancer;
use lb_sync::client_ip::Cidr;
use lb_sync::config::{seed_backends, BackendConfig, Config, RegistryUrl, UpstreamReuse};
use lb_sync::demo_backend::DemoBackend;
use lb_sync::logging::{AccessFormat, LogTarget, LogWriter, Logger};
use lb_sync::server::{Server, ServerConfig};

/// jemalloc rather than glibc's malloc: memory used by a burst returns to the system within
/// about a second of the burst (docs/memory.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An HTTP/1.1 load balancer. Flags override the --config file; with neither, the seed's three
/// backends on localhost:8001-8003 (weights 1, 2, 1) are used. `lb-sync simulate --help`: the
/// algorithms on a simulated workload. `lb-sync route --help`: what the routes do with a request.
#[derive(FromArgs)]
struct Args {
    /// address to listen on (default 0.0.0.0)
    #[argh(option)]
    host: Option<IpAddr>,
    /// port to listen on (default 8080)
    #[argh(option)]
    port: Option<u16>,
    /// round_robin | weighted_round_robin | ip_hash | least_connections | p2c | peak_ewma
    /// (default round_robin)
    #[argh(option)]
    algorithm: Option<AlgorithmKind>,
    /// forwarding worker threads (default 256)
    #[argh(option)]
    threads: Option<usize>,
    /// a backend as [ID=][http[s]://]HOST:PORT[:WEIGHT]; repeatable; replaces the configured
    /// ones; https:// ones are sent TLS, their certificate verified
    #[argh(option)]
    backend: Vec<String>,
    /// PEM file of the CAs that https:// backends' certificates are verified against (default:
    /// the built-in system roots)
    #[argh(option)]
    upstream_ca: Option<PathBuf>,
    /// JSON file with any of the settings (keys as in GET /lb/config)
    #[argh(option)]
    config: Option<String>,
    /// seconds between health checks, 0 = off (default 30)
    #[argh(option)]
    health_check_interval: Option<f64>,
    /// seconds between health checks of a backend not known to be up (not checked yet, down,
    /// failing, circuit open, or traffic could not connect to it) (default 1)
    #[argh(option)]
    health_check_fast_interval: Option<f64>,
    /// path of the health check (default /health)
    #[argh(option)]
    health_check_path: Option<String>,
    /// seconds a health probe may take (default 2)
    #[argh(option)]
    health_check_timeout: Option<f64>,
    /// good probes in a row that bring a backend back (default 2)
    #[argh(option)]
    health_check_rise: Option<u32>,
    /// failed probes in a row that take a backend down (default 3)
    #[argh(option)]
    health_check_fall: Option<u32>,
    /// seconds a backend may take to answer before 504 (default 30)
    #[argh(option)]
    request_timeout: Option<f64>,
    /// seconds to connect to a backend (default 5)
    #[argh(option)]
    connect_timeout: Option<f64>,
    /// consecutive failures that open a backend's circuit breaker (default 5)
    #[argh(option)]
    breaker_consecutive_failures: Option<u32>,
    /// seconds a circuit breaker stays open at first (default 5)
    #[argh(option)]
    breaker_cooldown: Option<f64>,
    /// count backend 5xx answers as breaker failures
    #[argh(switch)]
    breaker_on_5xx: bool,
    /// seconds over which a recovered backend ramps up, 0 = off (default 10)
    #[argh(option)]
    slow_start: Option<f64>,
    /// seconds over which a backend's response-time estimate decays, for peak_ewma (default 10)
    #[argh(option)]
    peak_ewma_window: Option<f64>,
    /// when no backend is usable, try them all anyway instead of 503
    #[argh(switch)]
    panic_mode: bool,
    /// most backends tried for one request (default 3)
    #[argh(option)]
    max_tries: Option<usize>,
    /// one log line per request: true or false (default true)
    #[argh(option)]
    access_log: Option<bool>,
    /// access log format: combined (nginx's, plus upstream address, upstream time, request
    /// time and request id) or json (default combined)
    #[argh(option)]
    access_log_format: Option<AccessFormat>,
    /// write the access log to this file instead of stderr
    #[argh(option)]
    access_log_file: Option<PathBuf>,
    /// write every other log line (startup, health, breakers, warnings, --debug) to this file
    /// instead of stderr
    #[argh(option)]
    log_file: Option<PathBuf>,
    /// seconds a sticky session lasts: the sticky cookie's Max-Age (default 3600)
    #[argh(option)]
    session_timeout: Option<u64>,
    /// requests per second for all clients together, then 429; 0 = off (default 0)
    #[argh(option)]
    rate_limit: Option<f64>,
    /// requests the global limit admits at once (default: one second's worth)
    #[argh(option)]
    rate_limit_burst: Option<u32>,
    /// requests per second for each client address, then 429; 0 = off (default 0)
    #[argh(option)]
    client_rate_limit: Option<f64>,
    /// requests each client may send at once (default: one second's worth)
    #[argh(option)]
    client_rate_limit_burst: Option<u32>,
    /// most workers one client (its address after --trusted-proxy) has at once; its other
    /// requests wait for them, 0 = off (default: half of --threads)
    #[argh(option)]
    client_max_workers: Option<usize>,
    /// most requests one client may have in process at once (tunnels too), then 429; 0 = off
    /// (default 0)
    #[argh(option)]
    client_max_in_flight: Option<usize>,
    /// sticky sessions: the name of the cookie that keeps a client on its backend (default off)
    #[argh(option)]
    sticky_cookie: Option<String>,
    /// key that makes sticky cookies unforgeable (better in the --config file: flags show in ps)
    #[argh(option)]
    sticky_secret: Option<String>,
    /// a CIDR whose X-Forwarded-For is believed; repeatable; replaces the default (loopback)
    #[argh(option)]
    trusted_proxy: Vec<String>,
    /// forward request headers whose names have underscores (default: dropped, as nginx's
    /// underscores_in_headers off)
    #[argh(switch)]
    underscores_in_headers: bool,
    /// accept %2F and %5C inside a path segment, passed on encoded (default: 400)
    #[argh(switch)]
    allow_encoded_slashes: bool,
    /// a protocol an Upgrade request may switch to; repeatable; replaces the default (websocket)
    #[argh(option)]
    upgrade_protocol: Vec<String>,
    /// bearer token required by the management API from every peer, loopback too (then open
    /// to non-loopback peers)
    #[argh(option)]
    admin_token: Option<String>,
    /// serve the management API and dashboard on this address only (e.g. 127.0.0.1:9090); the
    /// data port then proxies /lb/ like any path
    #[argh(option)]
    admin_listen: Option<SocketAddr>,
    /// keep runtime changes to the backends in this JSON file, read back at start
    #[argh(option)]
    state_file: Option<PathBuf>,
    /// share the backends with other instances through etcd: etcd://HOST:PORT/PREFIX (default
    /// unset: this instance's table is its own)
    #[argh(option)]
    registry: Option<RegistryUrl>,
    /// seconds between re-resolutions of backend host names, 0 = resolve once (default 30)
    #[argh(option)]
    dns_refresh_interval: Option<f64>,
    /// largest request body in bytes, then 413 (default 1048576: 1 MiB, nginx's)
    #[argh(option)]
    max_body_bytes: Option<u64>,
    /// most bytes of request body temp files together, whatever the free space (default 16 GiB)
    #[argh(option)]
    client_body_temp_cap: Option<u64>,
    /// share of the temp directory's free space at start that body temp files may take
    /// together (default 0.25)
    #[argh(option)]
    client_body_temp_free_share: Option<f64>,
    /// share of the body temp files' cap one client may take, then 429 (default 0.25)
    #[argh(option)]
    client_body_temp_client_share: Option<f64>,
    /// slowest upload in bytes/s after the first client_io_timeout seconds, then 408; 0 = off
    /// (default 500)
    #[argh(option)]
    request_body_min_rate: Option<u64>,
    /// which requests may reuse an idle backend connection: safe (a client connection's first
    /// request opens its own, HAProxy's default) or always (nginx's) (default safe)
    #[argh(option)]
    upstream_reuse: Option<UpstreamReuse>,
    /// seconds a stop (SIGTERM, SIGINT) lets requests in flight finish (default 30)
    #[argh(option)]
    shutdown_timeout: Option<f64>,
    /// seconds a tunnel (a WebSocket) may go without a byte either way before it is closed
    /// (default 3600)
    #[argh(option)]
    tunnel_idle_timeout: Option<f64>,
    /// port of an HTTPS listener beside the HTTP one (default none)
    #[argh(option)]
    tls_port: Option<u16>,
    /// PEM certificate chain of the HTTPS listener, leaf first (read again on SIGHUP)
    #[argh(option)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert: PKCS#8, PKCS#1 or SEC1 (default: the --tls-cert file)
    #[argh(option)]
    tls_key: Option<PathBuf>,
    /// seconds from accept to a complete TLS handshake (default 10)
    #[argh(option)]
    tls_handshake_timeout: Option<u64>,
    /// check the configuration (values, backend names resolve) and exit: 0 if good, 1 with the
    /// reason if not (as nginx -t)
    #[argh(switch)]
    check_config: bool,
    /// also start three demo backends on 127.0.0.1:8001-8003 in this process
    #[argh(switch)]
    demo: bool,
    /// debug logging: why each request went where it went
    #[argh(switch)]
    debug: bool,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

/// Merges the config file and the flags; `Err` is a usage error (exit 2).
fn build_config(args: &Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(host) = args.host {
        config.host = host;
    }
    if let Some(port) = args.port {
        config.port = port;
    }
    if let Some(algorithm) = args.algorithm {
        config.algorithm = algorithm;
    }
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    if !args.backend.is_empty() {
        config.backends = args.backend.iter().map(|b| BackendConfig::parse(b)).collect::<Result<_, _>>()?;
    }
    if args.demo && args.backend.is_empty() && args.config.is_none() {
        config.backends = seed_backends();
    }
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(v) = args.$field.clone() { config.$field = v; })* };
    }
    set!(health_check_interval, health_check_fast_interval, health_check_path, health_check_timeout);
    set!(health_check_rise, health_check_fall);
    set!(request_timeout, connect_timeout, max_tries, access_log, session_timeout, shutdown_timeout);
    set!(breaker_consecutive_failures, breaker_cooldown, slow_start, tunnel_idle_timeout);
    set!(rate_limit, rate_limit_burst, client_rate_limit, client_rate_limit_burst, dns_refresh_interval);
    set!(tls_handshake_timeout, peak_ewma_window, client_max_in_flight, upstream_reuse);
    set!(max_body_bytes, client_body_temp_cap, client_body_temp_free_share, client_body_temp_client_share);
    set!(request_body_min_rate);
    if args.client_max_workers.is_some() {
        config.client_max_workers = args.client_max_workers;
    }
    if args.registry.is_some() {
        config.registry.clone_from(&args.registry);
    }
    if let Some(name) = &args.sticky_cookie {
        config.sticky_cookie = Some(name.clone());
    }
    if let Some(secret) = &args.sticky_secret {
        config.sticky_secret = Some(secret.clone());
    }
    config.breaker_on_5xx |= args.breaker_on_5xx;
    config.panic_mode |= args.panic_mode;
    if !args.trusted_proxy.is_empty() {
        config.trusted_proxies = args.trusted_proxy.iter().map(|c| Cidr::parse(c)).collect::<Result<_, _>>()?;
    }
    config.underscores_in_headers |= args.underscores_in_headers;
    config.allow_encoded_slashes |= args.allow_encoded_slashes;
    if !args.upgrade_protocol.is_empty() {
        config.upgrade_protocols.clone_from(&args.upgrade_protocol);
    }
    if let Some(token) = &args.admin_token {
        config.admin_token = Some(token.clone());
    }
    if let Some(format) = args.access_log_format {
        config.access_log_format = format;
    }
    if args.admin_listen.is_some() {
        config.admin_listen = args.admin_listen;
    }
    if args.tls_port.is_some() {
        config.tls_port = args.tls_port;
    }
    for (flag, field) in [
        (&args.access_log_file, &mut config.access_log_file),
        (&args.log_file, &mut config.log_file),
        (&args.state_file, &mut config.state_file),
        (&args.upstream_ca, &mut config.upstream_ca),
        (&args.tls_cert, &mut config.tls_cert),
        (&args.tls_key, &mut config.tls_key),
    ] {
        if flag.is_some() {
            field.clone_from(flag);
        }
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The seed's three demo backends, in this process.
fn start_demo_backends() -> Result<Vec<Server>, String> {
    [8001u16, 8002, 8003]
        .iter()
        .map(|&port| {
            let config =
                ServerConfig { bind: SocketAddr::from(([127, 0, 0, 1], port)), threads: 8, ..ServerConfig::default() };
            Server::start(config, DemoBackend::new(port, "127.0.0.1", None))
                .map_err(|e| format!("cannot start the demo backend: {e}"))
        })
        .collect()
}

fn main() -> ExitCode {
    // First of all: from here no signal ends the process by its default action (SIGTERM, SIGINT
    // and SIGQUIT exit until the balancer has started, then stop it gracefully).
    let signals = match lb_sync::lifecycle::signals::Listener::new() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("lb-sync: cannot register signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let argv: Vec<String> = std::env::args().collect();
    let command = argv.first().map_or("lb-sync", |s| s.as_str());
    // `-h` as `--help`, as every other tool takes it (argh knows only the long form).
    let rest: Vec<&str> = argv.iter().skip(1).map(|arg| if arg == "-h" { "--help" } else { arg.as_str() }).collect();
    if rest.first() == Some(&"simulate") {
        return lb_sync::simulate::main(command, &rest[1..]);
    }
    if rest.first() == Some(&"route") {
        return lb_sync::route_cli::main(command, &rest[1..]);
    }
    let args = match Args::from_args(&[command], &rest) {
        Ok(args) => args,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprintln!("{}", early.output.trim_end());
                    eprintln!("Run {command} --help for usage.");
                    ExitCode::from(2)
                }
            };
        }
    };
    if args.version {
        println!("lb-sync {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if args.check_config {
        let checked = build_config(&args).and_then(|config| {
            let summary = lb_sync::lifecycle::check_config(&config)?;
            Ok((summary, lb_sync::lifecycle::config_warnings(&config)))
        });
        return match checked {
            Ok((summary, warnings)) => {
                // Warnings do not fail the check (as nginx -t's [warn]).
                for warning in warnings {
                    eprintln!("warning: {warning}");
                }
                println!("lb-sync: configuration ok: {summary}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("lb-sync: {message}");
                ExitCode::from(1)
            }
        };
    }
    let config = match build_config(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("lb-sync: {message}");
            return ExitCode::from(2);
        }
    };
    // The process log goes through a log thread (never blocking a worker), to --log-file or
    // stderr; other crates (ureq) only say warnings. The access log shares the writer when
    // both go to the same place, so their lines never interleave mid-line.
    let level = if args.debug { log::LevelFilter::Debug } else { log::LevelFilter::Info };
    let log_target = config.log_file.clone().map_or(LogTarget::Stderr, LogTarget::File);
    let log_writer = match LogWriter::start(log_target.clone()) {
        Ok(writer) => writer,
        Err(e) => {
            eprintln!("lb-sync: cannot open log file {log_target}: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = Logger::new(log_writer.handle(), level).other_crates(log::LevelFilter::Warn).install();
    signals.log_to(log_writer.handle());
    let access_target = config.access_log_file.clone().map_or(LogTarget::Stderr, LogTarget::File);
    let shared_access_log = (access_target == log_target).then(|| log_writer.handle());
    let _ = rlimit::increase_nofile_limit(u64::MAX);

    let _demo = if args.demo {
        match start_demo_backends() {
            Ok(servers) => servers,
            Err(message) => {
                eprintln!("lb-sync: {message}");
                return ExitCode::from(1);
            }
        }
    } else {
        Vec::new()
    };
    let algorithm = config.algorithm;
    let balancer = match LoadBalancer::start_with_log(config, shared_access_log) {
        Ok(balancer) => balancer,
        Err(e) => {
            // Once where the operator looks: on stderr, and in the log file when there is one.
            if log_target != LogTarget::Stderr {
                log::error!("cannot start: {e}");
            }
            log_writer.stop();
            eprintln!("lb-sync: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    // Started: from here a stop is graceful.
    signals.started();
    let backends: Vec<String> = balancer
        .shared()
        .pools
        .default_pool()
        .table
        .snapshot()
        .backends
        .iter()
        .map(|b| format!("{}={} (weight {})", b.id, b.address(), b.weight()))
        .collect();
    // The other listeners, after the data port's address that scripts read first.
    let mut others = balancer.admin_addr().map_or(String::new(), |addr| format!("; management API on {addr}"));
    if let Some(addr) = balancer.tls_addr() {
        others.push_str(&format!("; https on {addr}"));
    }
    // SIGHUP and POST /lb/config/reload read the config file and the flags again.
    balancer.control().set_source(Box::new(move || build_config(&args)));
    // The ready line on stdout is what scripts wait for.
    println!("lb-sync {} listening on {} -> {}{others}", algorithm, balancer.local_addr(), backends.join(", "));
    log::info!("lb-sync {} listening on {} -> {}{others}", algorithm, balancer.local_addr(), backends.join(", "));
    // What --check-config would warn of (a shadowed route, a pool no route reaches), as a reload does.
    for warning in lb_sync::lifecycle::config_warnings(&balancer.shared().config) {
        log::warn!("{warning}");
    }
    balancer.serve_until_signalled(signals, Some(log_writer));
    ExitCode::SUCCESS
}
