//! The command line of `lb-sync simulate`: flags (argh) into a checked [`Scenario`], then the
//! run and its output. Every refusal is one line on stderr and exit status 2.

use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;

use crate::config::Config;
use crate::routing::{Action, RouteTable, SplitShare};

use super::scenario::{
    parse_algorithms, parse_backend, parse_event, parse_service, peak_ewma_window_refused, BackendSpec, Distribution,
    Scenario, ScenarioError,
};
use super::split::{parse_split, SplitScenario};

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
    /// instead of the algorithms: this route's split (from --config) over --clients clients
    /// and --requests requests: each pool's share against its weight, and whether every
    /// client stays on its side
    #[argh(option)]
    pub route: Option<String>,
    /// the same for a split written here, without a config file: POOL=WEIGHT,... (e.g.
    /// stable=95,canary=5)
    #[argh(option)]
    pub split: Option<String>,
    /// with --route or --split: the weights after a change, POOL=WEIGHT,... in the order the
    /// split would list them (e.g. stable=90,canary=10); prints the clients that move, from
    /// which pool to which
    #[argh(option)]
    pub to: Option<String>,
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

impl SimulateArgs {
    /// The first flag given that only the algorithms' simulation reads (a split's reads
    /// --clients, --requests, --zipf, --seed, --to and --json).
    fn algorithm_flag(&self) -> Option<&'static str> {
        [
            ("--algorithm", self.algorithm != "all"),
            ("--backend", !self.backend.is_empty()),
            ("--backends", self.backends.is_some()),
            ("--concurrency", self.concurrency != 64),
            ("--load", self.load.is_some()),
            ("--workers", self.workers != 16),
            ("--service", self.service != "10ms"),
            ("--distribution", self.distribution != "exponential"),
            ("--event", !self.event.is_empty()),
            ("--max-connections", self.max_connections.is_some()),
            ("--peak-ewma-window", self.peak_ewma_window.is_some()),
            ("--panic-mode", self.panic_mode),
            ("--summary", self.summary),
            ("--svg", self.svg.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }

    /// The split simulation these flags describe (`--route` or `--split`), checked: the
    /// route's split as the route table built it from the file, `--to` checked as a reload of
    /// the file with those weights would check it.
    pub fn split_scenario(&self) -> Result<SplitScenario, ScenarioError> {
        if let Some(flag) = self.algorithm_flag() {
            return Err(error(format!(
                "{flag} is for the algorithms; a split's simulation takes --clients, --requests, --zipf, --seed, --to and --json"
            )));
        }
        let (route, shares, to) = match (&self.route, &self.split, &self.config) {
            (Some(_), Some(_), _) => return Err(error("--route and --split go separately")),
            (Some(_), None, None) => return Err(error("--route needs --config FILE, the file the route is in")),
            (None, Some(_), Some(_)) => {
                return Err(error("--split goes without --config (--route NAME takes a split from the file)"))
            }
            (Some(name), None, Some(path)) => {
                let (shares, to) = route_split(path, name, self.to.as_deref())?;
                (Some(name.clone()), shares, to)
            }
            (None, Some(split), None) => {
                let to = self.to.as_deref().map(|to| parse_split("--to", to)).transpose()?;
                (None, parse_split("--split", split)?, to)
            }
            (None, None, _) => return Err(error("a split's simulation needs --route NAME or --split POOL=WEIGHT,...")),
        };
        let scenario = SplitScenario {
            route,
            shares,
            to,
            clients: self.clients,
            requests: self.requests,
            zipf: self.zipf,
            seed: self.seed,
        };
        scenario.validate()?;
        Ok(scenario)
    }
}

/// Route `name`'s split in the config file at `path`, and `to` as the same file with those
/// weights in that route would have it (refused as a reload would refuse it).
fn route_split(
    path: &str,
    name: &str,
    to: Option<&str>,
) -> Result<(Vec<SplitShare>, Option<Vec<SplitShare>>), ScenarioError> {
    let config = Config::from_file(path).map_err(|e| error(e.to_string()))?;
    let table = RouteTable::build(&config.routes).map_err(|e| error(e.to_string()))?;
    let Some(route) = table.routes().iter().find(|r| r.name == name) else {
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        let known = if names.is_empty() { "it has none".to_string() } else { format!("routes: {}", names.join(", ")) };
        return Err(error(format!("--route: {path} has no route '{name}' ({known})")));
    };
    let shares = match &route.action {
        Action::Split(shares) => shares.clone(),
        Action::Pool(pool) => {
            return Err(error(format!("--route: route '{name}' sends to pool '{pool}', not a split")))
        }
        Action::Redirect(_) => return Err(error(format!("--route: route '{name}' redirects, it has no split"))),
        Action::Respond(_) => return Err(error(format!("--route: route '{name}' responds itself, it has no split"))),
    };
    let Some(to) = to else { return Ok((shares, None)) };
    let to = parse_split("--to", to)?;
    let mut changed = config.clone();
    if let Some(route) = changed.routes.iter_mut().find(|r| r.name == name) {
        route.split = Some(to.clone());
    }
    changed.validate().map_err(|e| error(format!("--to: {e}")))?;
    Ok((shares, Some(to)))
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
    if args.route.is_some() || args.split.is_some() {
        return split_main(&args);
    }
    if args.to.is_some() {
        eprintln!("lb-sync simulate: --to goes with --route or --split");
        return ExitCode::from(2);
    }
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

/// `lb-sync simulate --route NAME` or `--split ...`.
fn split_main(args: &SimulateArgs) -> ExitCode {
    let scenario = match args.split_scenario() {
        Ok(scenario) => scenario,
        Err(e) => {
            eprintln!("lb-sync simulate: {e}");
            return ExitCode::from(2);
        }
    };
    let report = super::split::run_split(&scenario);
    let text = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default())
    } else {
        report.text(&scenario)
    };
    // A reader that went away (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    ExitCode::SUCCESS
}
