//! The command line of `lb-sync simulate`: flags (argh) into a checked [`Scenario`], then the
//! run and its output. Every refusal is one line on stderr and exit status 2.

use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;

use crate::config::Config;

use super::scenario::{
    parse_algorithms, parse_backend, parse_event, parse_service, peak_ewma_window_refused, BackendSpec, Distribution,
    Scenario, ScenarioError,
};

/// Runs lb-sync's selection algorithms on a workload in simulated time (no sockets), through
/// the same pick path as the proxy, and prints what each did: shares against weights,
/// burstiness, requests in flight, latency, and for ip_hash the clients moved by each event.
/// The same seed gives the same output.
#[derive(FromArgs, Debug)]
#[argh(name = "simulate")]
pub struct SimulateArgs {
    /// an algorithm, a comma-separated list, or all (default): round_robin,
    /// weighted_round_robin, ip_hash, least_connections, p2c, peak_ewma, and for comparison
    /// seed_weighted_round_robin (the seed's: each backend repeated weight times)
    #[argh(option, default = "String::from(\"all\")")]
    pub algorithm: String,
    /// a backend as ID=WEIGHT; repeatable (default: the --config file's backends, else the
    /// seed's backend1=1, backend2=2, backend3=1)
    #[argh(option)]
    pub backend: Vec<String>,
    /// instead of listing them: N backends b1..bN of weight 1
    #[argh(option)]
    pub backends: Option<usize>,
    /// the lb-sync config file to take the backends, backend_max_connections,
    /// backend_queue_timeout, panic_mode and peak_ewma_window from
    #[argh(option)]
    pub config: Option<String>,
    /// requests to simulate (default 100000)
    #[argh(option, default = "100_000")]
    pub requests: u64,
    /// distinct client addresses (default 10000)
    #[argh(option, default = "10_000")]
    pub clients: u32,
    /// exponent of the Zipf popularity of clients, 0 = uniform (default 0)
    #[argh(option, default = "0.0")]
    pub zipf: f64,
    /// requests in flight: a closed loop of this many clients (as wrk -c), or with --load the
    /// proxy's workers (default 64)
    #[argh(option, default = "64")]
    pub concurrency: usize,
    /// open loop: Poisson arrivals at this share of the backends' capacity (0.8 = 80 %);
    /// default: closed loop
    #[argh(option)]
    pub load: Option<f64>,
    /// requests a backend serves at once, more wait in its queue (default 16, lb-backend's)
    #[argh(option, default = "16")]
    pub workers: usize,
    /// mean service times: a default and/or ID=DURATION, comma-separated (default 10ms), e.g.
    /// 10ms,b3=100ms
    #[argh(option, default = "String::from(\"10ms\")")]
    pub service: String,
    /// how service times vary around the mean: fixed, exponential (default), lognormal or
    /// lognormal:SIGMA
    #[argh(option, default = "String::from(\"exponential\")")]
    pub distribution: String,
    /// AT:ACTION:BACKEND, AT a request number or a time (2s); ACTION remove, add, down, up,
    /// or slow:ID=DURATION (e.g. 5000:remove:b2, 3s:slow:b3=200ms); repeatable. A backend
    /// whose first event is add starts outside the table
    #[argh(option)]
    pub event: Vec<String>,
    /// seed of every random draw (default 1)
    #[argh(option, default = "1")]
    pub seed: u64,
    /// requests one backend may have at once (default: as lb-sync, backend_max_connections
    /// or three quarters of threads: 192)
    #[argh(option)]
    pub max_connections: Option<usize>,
    /// seconds over which peak_ewma's response-time estimate decays (default 10)
    #[argh(option)]
    pub peak_ewma_window: Option<f64>,
    /// with nothing usable, try any backend in the table
    #[argh(switch)]
    pub panic_mode: bool,
    /// print JSON instead of tables
    #[argh(switch)]
    pub json: bool,
    /// print only the first line and the comparison of the algorithms
    #[argh(switch)]
    pub summary: bool,
    /// also draw each backend's share over time and the latency distribution per algorithm
    /// into this SVG file
    #[argh(option)]
    pub svg: Option<std::path::PathBuf>,
}

fn error(message: impl Into<String>) -> ScenarioError {
    ScenarioError(message.into())
}

impl SimulateArgs {
    /// The scenario these flags describe, checked by [`Scenario::validate`] (the only checks
    /// here are the ones that must come before a scenario can be built: `--backends` before
    /// it makes the list, names that must match a backend).
    pub fn scenario(&self) -> Result<Scenario, ScenarioError> {
        let config = match &self.config {
            Some(path) => Config::from_file(path).map_err(|e| error(e.to_string()))?,
            None => Config::default(),
        };
        let listed: Vec<(String, u32)> = match self.backends {
            Some(_) if !self.backend.is_empty() => return Err(error("--backends and --backend go separately")),
            Some(n) if !(1..=super::scenario::MAX_BACKENDS).contains(&n) => {
                return Err(error(format!("--backends must be 1-{}, got {n}", super::scenario::MAX_BACKENDS)))
            }
            Some(n) => (1..=n).map(|i| (format!("b{i}"), 1)).collect(),
            None if self.backend.is_empty() => {
                config.backend_ids().into_iter().zip(config.backends.iter().map(|b| b.weight)).collect()
            }
            None => self.backend.iter().map(|b| parse_backend(b)).collect::<Result<_, _>>()?,
        };
        let ids: Vec<String> = listed.iter().map(|(id, _)| id.clone()).collect();
        let (default_service, services) = parse_service(&self.service)?;
        let default_service = default_service.unwrap_or(Duration::from_millis(10));
        if let Some((id, _)) = services.iter().find(|(id, _)| !ids.contains(id)) {
            return Err(error(format!("--service names no backend: {id} (backends: {})", ids.join(", "))));
        }
        let events = self.event.iter().map(|e| parse_event(e, &ids)).collect::<Result<Vec<_>, _>>()?;
        let backends = listed
            .iter()
            .enumerate()
            .map(|(i, (id, weight))| BackendSpec {
                id: id.clone(),
                weight: *weight,
                service: services.iter().rev().find(|(s, _)| s == id).map_or(default_service, |(_, d)| *d),
                // A backend whose first event adds it starts outside the table.
                present: events
                    .iter()
                    .find(|e| e.action.backend() == i)
                    .is_none_or(|e| !matches!(e.action, super::scenario::Action::Add(_))),
            })
            .collect();
        let window = self.peak_ewma_window.unwrap_or(config.pool.peak_ewma_window.as_secs_f64());
        // Only what cannot be a Duration at all (negative, NaN) is refused here, in the same
        // words; the range is `Scenario::validate`'s.
        let window = Duration::try_from_secs_f64(window).map_err(|_| peak_ewma_window_refused(window))?;
        let scenario = Scenario {
            algorithms: parse_algorithms(&self.algorithm)?,
            backends,
            requests: self.requests,
            clients: self.clients,
            zipf: self.zipf,
            concurrency: self.concurrency,
            load: self.load,
            workers: self.workers,
            distribution: Distribution::parse(&self.distribution)?,
            events,
            seed: self.seed,
            max_connections: self.max_connections.unwrap_or_else(|| config.backend_connection_cap()),
            queue_timeout: config.pool.backend_queue_timeout,
            panic_mode: self.panic_mode || config.pool.panic_mode,
            peak_ewma_window: window,
        };
        scenario.validate()?;
        Ok(scenario)
    }
}

/// `lb-sync simulate ARGS...`: `command` is the program's name as invoked.
pub fn main(command: &str, args: &[&str]) -> ExitCode {
    let name = format!("{command} simulate");
    let args = match SimulateArgs::from_args(&[&name], args) {
        Ok(args) => args,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    let lines: Vec<&str> = early.output.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                    eprintln!("lb-sync simulate: {} (see {name} --help)", lines.join(" "));
                    ExitCode::from(2)
                }
            };
        }
    };
    let scenario = match args.scenario() {
        Ok(scenario) => scenario,
        Err(e) => {
            eprintln!("lb-sync simulate: {e}");
            return ExitCode::from(2);
        }
    };
    let report = super::run(&scenario, args.svg.is_some());
    if let Some(path) = &args.svg {
        if let Err(e) = super::svg::draw(&report, path) {
            eprintln!("lb-sync simulate: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json(&scenario)).unwrap_or_default());
    } else if args.summary {
        print!("{}", report.summary(&scenario));
    } else {
        print!("{}", report.text(&scenario));
    }
    ExitCode::SUCCESS
}
