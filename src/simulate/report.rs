//! What a simulation found, per algorithm, and how it is printed: a table per algorithm, a
//! summary when there are several, or JSON (`--json`).

use std::fmt::Write as _;

use serde::Serialize;

use super::scenario::Scenario;

/// One backend under one algorithm.
#[derive(Clone, Debug, Serialize)]
pub struct BackendReport {
    /// Its id.
    pub id: String,
    /// Its weight.
    pub weight: u32,
    /// The share its weight gives it (of the requests picked while it was usable), 0-1.
    pub expected_share: f64,
    /// The share of the picks it got, 0-1.
    pub share: f64,
    /// Requests sent to it.
    pub requests: u64,
    /// Requests in flight to it (queued or served), averaged over simulated time.
    pub in_flight_mean: f64,
    /// The most at once.
    pub in_flight_max: usize,
    /// Median latency of its requests (arrival to answer), nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile, nanoseconds.
    pub p99_ns: u64,
}

/// How an event moved the clients of ip_hash, ketama against the seed's `hash % n`.
#[derive(Clone, Debug, Serialize)]
pub struct Remap {
    /// Share of all clients whose backend changed, with the ketama ring (lb-sync's ip_hash).
    pub ketama_moved: f64,
    /// The same with `hash(ip) % n` over the usable backends (the seed's).
    pub modulo_moved: f64,
    /// For a backend coming back: the share of the clients it had before it left that are on
    /// it again (ketama).
    pub ketama_back: Option<f64>,
    /// The same with `hash % n`.
    pub modulo_back: Option<f64>,
}

/// One event as it happened in a run.
#[derive(Clone, Debug, Serialize)]
pub struct EventReport {
    /// As given on the command line.
    pub text: String,
    /// The number of the request it came before (requests count from 0).
    pub request: u64,
    /// Simulated time, nanoseconds.
    pub time_ns: u64,
    /// Whether it changed anything (removing a backend already removed does not).
    pub changed: bool,
    /// ip_hash only, for membership and health events.
    pub remap: Option<Remap>,
}

/// What `--svg` draws: picks per window of requests, and the latency distribution.
#[derive(Clone, Debug)]
pub struct Series {
    /// Requests per window.
    pub window: u64,
    /// `picks[w][b]`: picks of backend b in window w.
    pub picks: Vec<Vec<u32>>,
    /// (latency ns, share of requests at most that fast), 201 points.
    pub latency_cdf: Vec<(u64, f64)>,
}

/// One algorithm's run.
#[derive(Clone, Debug, Serialize)]
pub struct AlgorithmReport {
    /// Its name.
    pub name: String,
    /// Per backend, in configured order.
    pub backends: Vec<BackendReport>,
    /// The largest |share - expected share| over the backends, 0-1.
    pub max_deviation: f64,
    /// Longest run of consecutive picks of one backend.
    pub longest_run: u64,
    /// Whose run it was.
    pub longest_run_backend: String,
    /// Requests answered.
    pub completed: u64,
    /// Requests refused for want of a usable backend (`503`).
    pub failed_refused: u64,
    /// Requests that waited `backend_queue_timeout` for a connection slot (`503`).
    pub failed_timeout: u64,
    /// Median latency, nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile, nanoseconds.
    pub p99_ns: u64,
    /// Simulated time to the last answer, nanoseconds.
    pub simulated_ns: u64,
    /// Backend states read per pick (in-flight counts, response times): the pick's cost in
    /// memory reads, the same on any machine.
    pub reads_per_pick: f64,
    /// The events, as they happened.
    pub events: Vec<EventReport>,
    /// For `--svg`.
    #[serde(skip)]
    pub series: Option<Series>,
}

/// A whole simulation.
#[derive(Clone, Debug)]
pub struct Report {
    /// One per algorithm, in the order asked.
    pub algorithms: Vec<AlgorithmReport>,
}

/// Milliseconds for the tables: two decimals below 10 ms, one below 1 s, none above.
fn ms(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

pub(super) fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The first line: what was simulated.
fn describe(s: &Scenario) -> String {
    let present = s.backends.iter().filter(|b| b.present).count();
    let clients = if s.zipf > 0.0 { format!("Zipf {}", s.zipf) } else { "uniform".into() };
    let arrivals = match s.load {
        None => format!("closed loop, {} in flight", s.concurrency),
        Some(load) => {
            format!("Poisson arrivals at {:.0}% of capacity, at most {} in flight", load * 100.0, s.concurrency)
        }
    };
    let mut means: Vec<String> = Vec::new();
    for b in &s.backends {
        means.push(format!("{} {}", b.id, ms(b.service.as_nanos() as u64).replace(' ', "")));
    }
    let services = if means.len() > 6 {
        let first = &s.backends[0].service;
        if s.backends.iter().all(|b| b.service == *first) {
            format!("all {}", ms(first.as_nanos() as u64).replace(' ', ""))
        } else {
            format!("{}, ...", means[..3].join(", "))
        }
    } else {
        means.join(", ")
    };
    format!(
        "{present} backends, {} requests from {} clients ({clients}), {arrivals}, {} workers per backend, {} service times ({services}), seed {}",
        s.requests,
        s.clients,
        s.workers,
        s.distribution.describe(),
        s.seed
    )
}

/// Rows of text in aligned columns (left-aligned first column, the others right-aligned).
pub(super) fn columns(rows: &[Vec<String>], indent: &str) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str("  ");
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Most backend rows a table shows; the rest are summed up in one line.
const MAX_ROWS: usize = 12;

impl Report {
    /// The tables, as `lb-sync simulate` prints them.
    #[must_use]
    pub fn text(&self, scenario: &Scenario) -> String {
        let mut out = describe(scenario);
        out.push('\n');
        for a in &self.algorithms {
            out.push('\n');
            out.push_str(&a.text());
        }
        if self.algorithms.len() > 1 {
            out.push('\n');
            out.push_str(&self.comparison());
        }
        out
    }

    /// The first line and the comparison table only (`--summary`).
    #[must_use]
    pub fn summary(&self, scenario: &Scenario) -> String {
        format!("{}\n\n{}", describe(scenario), self.comparison())
    }

    /// One line per algorithm.
    fn comparison(&self) -> String {
        {
            let mut rows = vec![vec![
                "algorithm".to_string(),
                "max dev".into(),
                "longest run".into(),
                "p50".into(),
                "p99".into(),
                "reads/pick".into(),
            ]];
            for a in &self.algorithms {
                rows.push(vec![
                    a.name.clone(),
                    percent(a.max_deviation),
                    a.longest_run.to_string(),
                    ms(a.p50_ns),
                    ms(a.p99_ns),
                    format!("{:.1}", a.reads_per_pick),
                ]);
            }
            columns(&rows, "")
        }
    }

    /// The same as JSON (times in nanoseconds, shares 0-1).
    #[must_use]
    pub fn json(&self, scenario: &Scenario) -> serde_json::Value {
        serde_json::json!({
            "scenario": describe(scenario),
            "seed": scenario.seed,
            "requests": scenario.requests,
            "algorithms": self.algorithms,
        })
    }
}

impl AlgorithmReport {
    /// Its table.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        let seconds = self.simulated_ns as f64 / 1e9;
        let rate = if seconds > 0.0 { self.completed as f64 / seconds } else { 0.0 };
        let _ = write!(
            out,
            "{}: p50 {}, p99 {}, max deviation {}, longest run {} ({}), {:.1} reads/pick, {:.0} req/s over {:.1} s simulated",
            self.name,
            ms(self.p50_ns),
            ms(self.p99_ns),
            percent(self.max_deviation),
            self.longest_run,
            self.longest_run_backend,
            self.reads_per_pick,
            rate,
            seconds
        );
        if self.failed_refused + self.failed_timeout > 0 {
            let _ = write!(
                out,
                ", failed {} (no usable backend {}, slot wait timed out {})",
                self.failed_refused + self.failed_timeout,
                self.failed_refused,
                self.failed_timeout
            );
        }
        out.push('\n');
        let mut rows = vec![vec![
            "backend".to_string(),
            "weight".into(),
            "expected".into(),
            "share".into(),
            "requests".into(),
            "in flight".into(),
            "max".into(),
            "p50".into(),
            "p99".into(),
        ]];
        for b in self.backends.iter().take(MAX_ROWS) {
            rows.push(vec![
                b.id.clone(),
                b.weight.to_string(),
                percent(b.expected_share),
                percent(b.share),
                b.requests.to_string(),
                format!("{:.1}", b.in_flight_mean),
                b.in_flight_max.to_string(),
                ms(b.p50_ns),
                ms(b.p99_ns),
            ]);
        }
        out.push_str(&columns(&rows, "  "));
        if self.backends.len() > MAX_ROWS {
            let _ = writeln!(out, "  ... and {} more backends (--json lists them all)", self.backends.len() - MAX_ROWS);
        }
        let remaps: Vec<&EventReport> = self.events.iter().filter(|e| e.remap.is_some()).collect();
        if !remaps.is_empty() {
            let mut rows = vec![vec![
                "event".to_string(),
                "at request".into(),
                "moved: ketama".into(),
                "hash % n".into(),
                "came back: ketama".into(),
                "hash % n".into(),
            ]];
            let back = |x: Option<f64>| x.map_or("-".to_string(), percent);
            for e in remaps {
                let r = e.remap.as_ref().expect("filtered");
                rows.push(vec![
                    e.text.clone(),
                    e.request.to_string(),
                    percent(r.ketama_moved),
                    percent(r.modulo_moved),
                    back(r.ketama_back),
                    back(r.modulo_back),
                ]);
            }
            out.push_str("  clients (all of them) whose backend changed at each event:\n");
            out.push_str(&columns(&rows, "  "));
        }
        let others: Vec<&EventReport> = self.events.iter().filter(|e| e.remap.is_none()).collect();
        if !others.is_empty() {
            let list: Vec<String> = others
                .iter()
                .map(|e| {
                    let unchanged = if e.changed { "" } else { ", no change" };
                    format!("{} (at {:.2} s{unchanged})", e.text, e.time_ns as f64 / 1e9)
                })
                .collect();
            let _ = writeln!(out, "  events: {}", list.join("; "));
        }
        out
    }
}
