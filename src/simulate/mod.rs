//! `lb-sync simulate`: the real selection algorithms and the real pick path, on a workload you
//! describe, in simulated time: no sockets, no servers, the same output for the same seed.
//!
//! A discrete-event model ([`model`]): requests arrive (a closed loop of `concurrency`
//! clients, as `wrk -c` sends, or Poisson arrivals at a share of the backends' capacity), are
//! picked for by [`crate::balance::failover::pick`] over the algorithm lb-sync would build for
//! the same table, queue for one of their backend's `workers`, are served for a time drawn
//! around the backend's mean, and finish. Events at a request number or a time remove, add,
//! take down, bring up or slow down a backend. What it does not model: failed requests (the
//! simulated backends always answer), so no breaker opens and no retry happens; slow start
//! (its ramp follows the wall clock).
//!
//! ```
//! use lb_sync::simulate::{parse_algorithms, run, BackendSpec, Distribution, Scenario};
//! use std::time::Duration;
//!
//! let backend = |id: &str, weight| BackendSpec { id: id.into(), weight, service: Duration::from_millis(10), present: true };
//! let scenario = Scenario {
//!     algorithms: parse_algorithms("weighted_round_robin").unwrap(),
//!     backends: vec![backend("b1", 1), backend("b2", 2), backend("b3", 1)],
//!     requests: 2000,
//!     clients: 100,
//!     zipf: 0.0,
//!     concurrency: 8,
//!     load: None,
//!     workers: 4,
//!     distribution: Distribution::Exponential,
//!     events: vec![],
//!     seed: 1,
//!     max_connections: 192,
//!     queue_timeout: Duration::from_secs(5),
//!     panic_mode: false,
//!     peak_ewma_window: Duration::from_secs(10),
//! };
//! scenario.validate().unwrap();
//! let report = run(&scenario, false);
//! let wrr = &report.algorithms[0];
//! assert_eq!(wrr.backends.iter().map(|b| b.requests).collect::<Vec<_>>(), [500, 1000, 500]);
//! assert_eq!(wrr.longest_run, 2); // b2, b1, b3, b2 | b2, ...
//! ```

mod cli;
mod model;
mod report;
mod scenario;
mod seed_wrr;
mod split;
mod svg;

pub use cli::{main, SimulateArgs};
pub use report::{AlgorithmReport, BackendReport, EventReport, Remap, Report, Series};
pub use scenario::{
    parse_algorithms, parse_backend, parse_duration, parse_event, parse_service, Action, At, BackendSpec, Contender,
    Distribution, Event, Scenario, ScenarioError, Services,
};
pub use seed_wrr::SeedWeightedRoundRobin;
pub use split::{parse_split, run_split, Move, PoolShare, SplitReport, SplitScenario, WeightChange};
pub use svg::draw;

/// Runs every algorithm of `scenario` (one that [`Scenario::validate`] accepted) on the same workload (on as many threads as there are
/// cores: each run is single-threaded and deterministic, so the report does not depend on
/// how they were spread); `series` keeps what `--svg` draws.
#[must_use]
pub fn run(scenario: &Scenario, series: bool) -> Report {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(scenario.algorithms.len()).max(1);
    let mut slots: Vec<Option<AlgorithmReport>> = vec![None; scenario.algorithms.len()];
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&contender) = scenario.algorithms.get(i) else { break };
                        done.push((i, model::Model::new(scenario, contender, series).run()));
                    }
                    done
                })
            })
            .collect();
        for worker in workers {
            // A run that panicked is a bug: let it show.
            for (i, report) in worker.join().expect("a simulation thread panicked") {
                slots[i] = Some(report);
            }
        }
    });
    Report { algorithms: slots.into_iter().map(|r| r.expect("every algorithm ran")).collect() }
}
