//! `lb-sync`: the load balancer binary: flags and the config file, then `LoadBalancer::start`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use lb_sync::balance::AlgorithmKind;
use lb_sync::balancer::LoadBalancer;
use lb_sync::config::{seed_backends, BackendConfig, Config, ConfigFile, RegistryUrl, UpstreamReuse};
use lb_sync::demo_backend::DemoBackend;
use lb_sync::logging::{AccessFormat, LogTarget, LogWriter, Logger};
use lb_sync::server::{Server, ServerConfig};
use serde::Serialize;

/// jemalloc rather than glibc's malloc: memory used by a burst returns to the system within
/// about a second of the burst (docs/memory.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An HTTP/1.1 load balancer. Flags override the --config file; with neither, the seed's three
/// backends on localhost:8001-8003 (weights 1, 2, 1) are used. `lb-sync simulate --help`: the
/// algorithms on a simulated workload. `lb-sync route --help`: what the routes do with a request.
// Each flag not skipped by serde sets the setting `lb_sync::config::FLAGS` names for it (the
// test below holds the two together).
#[derive(FromArgs, Serialize)]
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
    /// poller threads, each with its own listening socket (default: one per CPU, at most 16)
    #[argh(option)]
    pollers: Option<usize>,
    /// a backend as [ID=][http[s]://]HOST:PORT[:WEIGHT]; repeatable; replaces the configured
    /// ones; https:// ones are sent TLS, their certificate verified
    #[argh(option)]
    #[serde(skip)]
    backend: Vec<String>,
    /// PEM file of the CAs that https:// backends' certificates are verified against (default:
    /// the built-in system roots)
    #[argh(option)]
    upstream_ca: Option<PathBuf>,
    /// JSON file with any of the settings (keys as in GET /lb/config)
    #[argh(option)]
    #[serde(skip)]
    config: Option<String>,
    /// seconds between health checks, 0 = off (default 30)
    #[argh(option)]
    #[serde(serialize_with = "float_flag")]
    health_check_interval: Option<f64>,
    /// seconds between health checks of a backend not known to be up (not checked yet, down,
    /// failing, circuit open, or traffic could not connect to it) (default 1)
    #[argh(option)]
    #[serde(serialize_with = "float_flag")]
    health_check_fast_interval: Option<f64>,
    /// path of the health check (default /health)
    #[argh(option)]
    health_check_path: Option<String>,
    /// seconds a health probe may take (default 2)
    #[argh(option)]
    #[serde(serialize_with = "float_flag")]
    health_check_timeout: Option<f64>,
    /// good probes in a row that bring a backend back (default 2)
    #[argh(option)]
    health_check_rise: Option<u32>,
    /// failed probes in a row that take a backend down (default 3)
    #[argh(option)]
    health_check_fall: Option<u32>,
    /// seconds a backend may take to answer before 504 (default 30)
    #[argh(option)]
    #[serde(serialize_with = "float_flag")]
    request_timeout: Option<f64>,
    /// seconds to connect to a backend (default 5)
    #[argh(option)]
    #[serde(serialize_with = "float_flag")]
    connect_timeout: Option<f64>,
    /// consecutive failures that open a backend's circuit breaker (default 5)
    #[argh(option)]
    breaker_consecutive_failures: Option<u32>,
    /// seconds a circuit breaker stays open at first (default 5)
    #[argh(option)]
    #[serde(serialize_with = "float_flag")]
    breaker_cooldown: Option<f64>,
    /// count backend 5xx answers as breaker failures
    #[argh(switch)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    breaker_on_5xx: bool,
    /// seconds over which a recovered backend ramps up, 0 = off (default 10)
    #[argh(option)]
    #[serde(serialize_with = "float_flag")]
    slow_start: Option<f64>,
    /// seconds over which a backend's response-time estimate decays, for peak_ewma (default 10)
    #[argh(option)]
    #[serde(serialize_with = "float_flag")]
    peak_ewma_window: Option<f64>,
    /// when no backend is usable, try them all anyway instead of 503
    #[argh(switch)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
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
    #[serde(serialize_with = "float_flag")]
    rate_limit: Option<f64>,
    /// requests the global limit admits at once (default: one second's worth)
    #[argh(option)]
    rate_limit_burst: Option<u32>,
    /// requests per second for each client address, then 429; 0 = off (default 0)
    #[argh(option)]
    #[serde(serialize_with = "float_flag")]
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
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    underscores_in_headers: bool,
    /// accept %2F and %5C inside a path segment, passed on encoded (default: 400)
    #[argh(switch)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
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
    #[serde(serialize_with = "float_flag")]
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
    #[serde(serialize_with = "float_flag")]
    client_body_temp_free_share: Option<f64>,
    /// share of the body temp files' cap one client may take, then 429 (default 0.25)
    #[argh(option)]
    #[serde(serialize_with = "float_flag")]
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
    #[serde(serialize_with = "float_flag")]
    shutdown_timeout: Option<f64>,
    /// seconds a tunnel (a WebSocket) may go without a byte either way before it is closed
    /// (default 3600)
    #[argh(option)]
    #[serde(serialize_with = "float_flag")]
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
    #[serde(skip)]
    check_config: bool,
    /// also start three demo backends on 127.0.0.1:8001-8003 in this process
    #[argh(switch)]
    #[serde(skip)]
    demo: bool,
    /// debug logging: why each request went where it went
    #[argh(switch)]
    #[serde(skip)]
    debug: bool,
    /// print the version and exit
    #[argh(switch)]
    #[serde(skip)]
    version: bool,
}

/// Merges the config file and the flags; `Err` is a usage error (exit 2).
fn build_config(args: &Args) -> Result<Config, String> {
    let mut file = match &args.config {
        Some(path) => ConfigFile::from_file(path).map_err(|e| e.to_string())?,
        None => ConfigFile::default(),
    };
    if !args.backend.is_empty() {
        file.backends = args.backend.iter().map(|b| BackendConfig::parse(b)).collect::<Result<_, _>>()?;
    }
    if args.demo && args.backend.is_empty() && args.config.is_none() {
        file.backends = seed_backends();
    }
    // Every other flag given sets the setting the list names for it, as the file would.
    for (flag, value) in given_flags(args) {
        file.set_flag(&flag, value)?;
    }
    file.validate().map_err(|e| e.to_string())?;
    Config::try_from(file).map_err(|e| e.to_string())
}

/// A float flag as JSON: a number, or NaN and the infinities as text (JSON has no number for
/// them), which [`ConfigFile::set_flag`] reads back, so that validation refuses them.
fn float_flag<S: serde::Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(number) if !number.is_finite() => serializer.serialize_str(&number.to_string()),
        _ => value.serialize(serializer),
    }
}

/// The flags given that set a setting, as (flag, JSON value): a switch only when given (a
/// switch not given is left out of the JSON), an option when given, a repeatable option when
/// given at least once.
fn given_flags(args: &Args) -> Vec<(String, serde_json::Value)> {
    let Ok(serde_json::Value::Object(flags)) = serde_json::to_value(args) else { return Vec::new() };
    flags.into_iter().filter(|(_, value)| !value.is_null() && *value != serde_json::json!([])).collect()
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
    let log_target = config.operations.log_file.clone().map_or(LogTarget::Stderr, LogTarget::File);
    let log_writer = match LogWriter::start(log_target.clone()) {
        Ok(writer) => writer,
        Err(e) => {
            eprintln!("lb-sync: cannot open log file {log_target}: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = Logger::new(log_writer.handle(), level).other_crates(log::LevelFilter::Warn).install();
    signals.log_to(log_writer.handle());
    let access_target = config.operations.access_log_file.clone().map_or(LogTarget::Stderr, LogTarget::File);
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
    let algorithm = config.pool.algorithm;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags `--help` lists, dashes as underscores.
    fn flags_in_help() -> Vec<String> {
        let help = match Args::from_args(&["lb-sync"], &["--help"]) {
            Ok(_) => panic!("--help parses as a request for help"),
            Err(early) => early.output,
        };
        let mut flags: Vec<String> = help
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("--"))
            .filter_map(|line| line.split_whitespace().next())
            .map(|flag| flag.replace('-', "_"))
            .map(|flag| flag.trim_end_matches(',').to_string())
            .filter(|flag| flag != "help")
            .collect();
        flags.sort();
        flags.dedup();
        flags
    }

    #[test]
    fn every_flag_is_a_setting_of_the_list_and_every_listed_flag_exists() {
        // Not settings: what to read, what to do, and the backend list itself.
        let not_settings = ["backend", "check_config", "config", "debug", "demo", "version"];
        let settings: Vec<&str> = lb_sync::config::FLAGS.iter().map(|(flag, _)| *flag).collect();
        for flag in flags_in_help() {
            assert!(
                settings.contains(&flag.as_str()) != not_settings.contains(&flag.as_str()),
                "--{flag}: a setting's flag must be in config::FLAGS, any other in not_settings"
            );
        }
        let in_help = flags_in_help();
        for flag in settings {
            assert!(in_help.iter().any(|f| f == flag), "config::FLAGS names --{flag}, which lb-sync does not take");
        }
    }

    #[test]
    fn a_float_flag_given_nan_or_infinity_is_refused_never_ignored() {
        let floats = lb_sync::config::SETTINGS.iter().filter(|s| s.file_type == "f64");
        for flag in floats.filter_map(|s| s.flag) {
            for value in ["NaN", "inf", "-inf"] {
                let args = Args::from_args(&["lb-sync"], &[&format!("--{}", flag.replace('_', "-")), value]).unwrap();
                assert!(build_config(&args).is_err(), "--{flag} {value} must be refused");
            }
        }
    }

    #[test]
    fn flags_apply_through_the_list_as_the_file_would() {
        let args = Args::from_args(
            &["lb-sync"],
            &[
                "--max-tries",
                "5",
                "--panic-mode",
                "--trusted-proxy",
                "10.0.0.0/8",
                "--access-log",
                "false",
                "--health-check-interval",
                "0",
                "--client-max-workers",
                "0",
            ],
        )
        .unwrap();
        let config = build_config(&args).unwrap();
        assert_eq!((config.pool.max_tries, config.pool.panic_mode, config.operations.access_log), (5, true, false));
        assert_eq!(config.listener.trusted_proxies.len(), 1);
        assert_eq!(config.client_limits.client_max_workers, Some(0));
        let untouched = build_config(&Args::from_args(&["lb-sync"], &[]).unwrap()).unwrap();
        assert_eq!(untouched, Config::default());
        let bad = Args::from_args(&["lb-sync"], &["--trusted-proxy", "10.0.0.0/99"]).unwrap();
        assert!(build_config(&bad).is_err());
    }
}
