//! `lb-sync route`: what the configuration does with a request, explained: the canonical host
//! and path the front end makes of it (or its `400` and why), every route in precedence order
//! with the first matcher that failed or why it lost, the winner, the path sent upstream, the
//! pool, its algorithm and the backend a fresh start picks first. Nothing is sent, no port is
//! bound and no health check runs. With `--expect cases.json` it checks a table of requests
//! instead (exit 1 on a miss, 2 on a bad file), for CI.
//!
//! ```
//! use lb_sync::config::{BackendConfig, Config};
//! use lb_sync::route_cli::{Probe, Tracer};
//! let config: Config = serde_json::from_str(r#"{
//!     "backends": [{"host": "127.0.0.1", "port": 9001}],
//!     "pools": {"api": {"backends": [{"host": "127.0.0.1", "port": 9002}]}},
//!     "routes": [{"name": "api", "path_prefix": "/api", "strip_prefix": "/api", "pool": "api"}]
//! }"#).unwrap();
//! let tracer = Tracer::new(config).unwrap();
//! let probe = |url: &str| Probe { method: "GET".into(), url: url.into(), headers: vec![], client: [127, 0, 0, 1].into() };
//! let trace = tracer.trace(&probe("http://example.com/api/../api/users"));
//! assert_eq!(trace.route.as_deref(), Some("api"));
//! assert_eq!(trace.own_status(), None);
//! assert_eq!(tracer.trace(&probe("/../x")).own_status(), Some(400));
//! ```

mod expect;
mod report;
mod trace;

use std::net::IpAddr;
use std::process::ExitCode;

use argh::FromArgs;

use crate::config::Config;

pub use expect::{check, read_cases, Case};
pub use report::{matchers, render};
pub use trace::{check_request, parse_header, Fate, Probe, Sent, Trace, Tracer};

/// Explains what lb-sync does with one request: the canonical host and path, every route in
/// precedence order and why it matches or not, the winner, the path sent upstream, the pool,
/// its algorithm and the first backend it picks. Sends nothing. Or, with --expect, checks a
/// JSON list of cases.
#[derive(FromArgs, Debug)]
#[argh(name = "route")]
pub struct RouteArgs {
    /// the lb-sync config file (default: none, so every request goes to the default pool)
    #[argh(option)]
    pub config: Option<String>,
    /// a header field of the request, 'Name: value'; repeatable
    #[argh(option, short = 'H')]
    pub header: Vec<String>,
    /// the client's address, for a split and ip_hash (default 127.0.0.1)
    #[argh(option)]
    pub client: Option<IpAddr>,
    /// a JSON list of cases {"method", "url", "headers"?, "client"?, "route"?, "pool"?,
    /// "upstream_path"?, "status"?} to check: one line each, exit 1 on a miss, 2 on a bad file
    #[argh(option)]
    pub expect: Option<String>,
    /// METHOD and URL: http://HOST/PATH, https://HOST/PATH or /PATH (with -H 'Host: ...')
    #[argh(positional)]
    pub request: Vec<String>,
}

/// Runs `lb-sync route ARGS`: 0 explained (or every case passed), 1 refused by the front end
/// (or a case missed), 2 a usage error, a bad configuration or a bad cases file.
pub fn main(command: &str, args: &[&str]) -> ExitCode {
    let args = match RouteArgs::from_args(&[command, "route"], args) {
        Ok(args) => args,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprintln!("{}", early.output.trim_end());
                    eprintln!("Run {command} route --help for usage.");
                    ExitCode::from(2)
                }
            };
        }
    };
    match run(&args) {
        Ok((output, passed)) => {
            print!("{output}");
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(message) => {
            eprintln!("lb-sync route: {message}");
            ExitCode::from(2)
        }
    }
}

/// What to print, and whether the request was served (or every case passed); `Err` is exit 2.
fn run(args: &RouteArgs) -> Result<(String, bool), String> {
    let config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    config.validate().map_err(|e| e.to_string())?;
    let tracer = Tracer::new(config)?;
    if let Some(file) = &args.expect {
        if !args.request.is_empty() || !args.header.is_empty() {
            return Err("--expect takes no METHOD URL or -H: the cases file holds the requests".into());
        }
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
        let cases = read_cases(&text).map_err(|e| format!("{file}: {e}"))?;
        return Ok(check(&tracer, &cases));
    }
    let [method, url] = args.request.as_slice() else {
        return Err("expected METHOD URL (or --expect FILE)".into());
    };
    check_request(method, url)?;
    let headers = args.header.iter().map(|h| parse_header(h)).collect::<Result<Vec<_>, _>>()?;
    let probe = Probe {
        method: method.clone(),
        url: url.clone(),
        headers,
        client: args.client.unwrap_or(IpAddr::from([127, 0, 0, 1])),
    };
    let trace = tracer.trace(&probe);
    let served = !matches!(trace.fate, Fate::Refused { .. });
    Ok((render(&trace, tracer.routes()), served))
}
