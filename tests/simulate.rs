//! `lb-sync simulate`: shares, determinism, what events do to ip_hash's clients against the
//! closed-form expectation, the slow-backend comparison, and every invalid input refused with
//! one line and exit status 2.

use std::process::{Command, Output};
use std::time::Duration;

use lb_sync::balance::AlgorithmKind;
use lb_sync::simulate::{parse_algorithms, parse_event, run, AlgorithmReport, BackendSpec, Distribution, Scenario};

fn backend(id: &str, weight: u32, service_ms: u64) -> BackendSpec {
    BackendSpec { id: id.into(), weight, service: Duration::from_millis(service_ms), present: true }
}

fn scenario(algorithms: &str, backends: Vec<BackendSpec>, requests: u64) -> Scenario {
    Scenario {
        algorithms: parse_algorithms(algorithms).unwrap(),
        backends,
        requests,
        clients: 10_000,
        zipf: 0.0,
        concurrency: 64,
        load: None,
        workers: 16,
        distribution: Distribution::Exponential,
        events: Vec::new(),
        seed: 1,
        max_connections: 192,
        queue_timeout: Duration::from_secs(5),
        panic_mode: false,
        peak_ewma_window: Duration::from_secs(10),
    }
}

fn five(service_ms: u64) -> Vec<BackendSpec> {
    (1..=5).map(|i| backend(&format!("b{i}"), 1, service_ms)).collect()
}

fn with_events(mut s: Scenario, events: &[&str]) -> Scenario {
    let ids: Vec<String> = s.backends.iter().map(|b| b.id.clone()).collect();
    s.events = events.iter().map(|e| parse_event(e, &ids).unwrap()).collect();
    for (i, b) in s.backends.iter_mut().enumerate() {
        b.present = s.events.iter().find(|e| e.action.backend() == i).is_none_or(|e| !e.text.contains(":add:"));
    }
    s
}

fn requests(report: &AlgorithmReport) -> Vec<u64> {
    report.backends.iter().map(|b| b.requests).collect()
}

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lb-sync")).arg("simulate").args(args).output().expect("lb-sync runs")
}

// -------------------------------------------------------------------------- shares

#[test]
fn weighted_round_robin_gives_exact_weight_shares_and_never_three_in_a_row() {
    let s = scenario(
        "weighted_round_robin",
        vec![backend("b1", 1, 10), backend("b2", 2, 10), backend("b3", 1, 10)],
        40_000,
    );
    let report = run(&s, false);
    let wrr = &report.algorithms[0];
    assert_eq!(requests(wrr), [10_000, 20_000, 10_000]);
    assert_eq!(wrr.max_deviation, 0.0);
    assert_eq!((wrr.longest_run, wrr.longest_run_backend.as_str()), (2, "b2"));
    assert_eq!(wrr.completed, 40_000);
}

#[test]
fn the_seeds_weighted_round_robin_sends_a_backend_its_share_in_a_row() {
    let s = scenario(
        "weighted_round_robin,seed_weighted_round_robin",
        vec![backend("a", 10, 10), backend("b", 5, 10), backend("c", 1, 10)],
        1600,
    );
    let report = run(&s, false);
    let (smooth, seed) = (&report.algorithms[0], &report.algorithms[1]);
    assert_eq!(requests(smooth), [1000, 500, 100]);
    assert_eq!(requests(seed), [1000, 500, 100]);
    assert_eq!(smooth.longest_run, 2);
    assert_eq!((seed.longest_run, seed.longest_run_backend.as_str()), (10, "a"));
}

/// The seed's list at its largest, 10 000 backends of the largest weight, would be 10^8
/// entries (800 MB): it is walked without being built, so the run fits in 400 MB of address
/// space (`ulimit -v`) and gives the list's picks, 10 000 in a row to each backend in turn.
#[test]
fn the_seeds_largest_list_runs_in_bounded_memory() {
    let dir = std::env::temp_dir().join(format!("lb-sync-simulate-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("big.json");
    let backends: Vec<String> = (1..=10_000)
        .map(|i| format!(r#"{{"id": "b{i}", "host": "127.0.0.1", "port": {i}, "weight": 1000000}}"#))
        .collect();
    std::fs::write(&config, format!(r#"{{"backends": [{}]}}"#, backends.join(","))).unwrap();
    let out = Command::new("sh")
        .args(["-c", r#"ulimit -v 400000 && exec "$0" "$@""#, env!("CARGO_BIN_EXE_lb-sync"), "simulate"])
        .args(["--config", config.to_str().unwrap(), "--algorithm", "seed_weighted_round_robin"])
        .args(["--requests", "20000", "--json"])
        .output()
        .expect("sh runs");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seed = &json["algorithms"][0];
    let counts: Vec<u64> =
        seed["backends"].as_array().unwrap().iter().map(|b| b["requests"].as_u64().unwrap()).collect();
    assert_eq!(counts.len(), 10_000);
    assert_eq!((counts[0], counts[1]), (10_000, 10_000));
    assert_eq!(counts[2..].iter().sum::<u64>(), 0);
    assert_eq!(seed["longest_run"], 10_000);
}

#[test]
fn round_robin_ignores_weights_and_the_deviation_says_so() {
    let s = scenario("round_robin", vec![backend("b1", 1, 10), backend("b2", 3, 10)], 10_000);
    let rr = &run(&s, false).algorithms[0];
    assert_eq!(requests(rr), [5000, 5000]);
    // 50 % against 25 % and 75 %.
    assert!((rr.max_deviation - 0.25).abs() < 1e-9, "{}", rr.max_deviation);
}

#[test]
fn load_aware_algorithms_share_equal_backends_evenly_and_report_their_reads() {
    let s = scenario("least_connections,p2c,peak_ewma", five(10), 50_000);
    let report = run(&s, false);
    for a in &report.algorithms {
        // peak_ewma follows each backend's recent peaks, which exponential service times make
        // differ for a while: evenly within 4 points, the others within 2.
        let within = if a.name == "peak_ewma" { 0.04 } else { 0.02 };
        for b in &a.backends {
            assert!((b.share - 0.2).abs() < within, "{}: {} got {}", a.name, b.id, b.share);
        }
    }
    let reads: Vec<f64> = report.algorithms.iter().map(|a| a.reads_per_pick).collect();
    assert_eq!(reads[0], 5.0, "least_connections reads every count");
    assert_eq!(reads[1], 2.0, "p2c reads two");
    assert!((4.0..4.01).contains(&reads[2]), "peak_ewma: two counts, two estimates (and a few medians): {}", reads[2]);
}

#[test]
fn p2c_reads_two_loads_a_pick_at_a_thousand_backends() {
    let backends: Vec<BackendSpec> = (0..1000).map(|i| backend(&format!("b{i}"), 1, 10)).collect();
    let s = scenario("p2c,least_connections", backends, 20_000);
    let report = run(&s, false);
    assert_eq!(report.algorithms[0].reads_per_pick, 2.0);
    assert_eq!(report.algorithms[1].reads_per_pick, 1000.0);
}

// -------------------------------------------------------------------- determinism

#[test]
fn the_same_seed_prints_the_same_and_another_seed_does_not() {
    let args = [
        "--backends",
        "10",
        "--requests",
        "50000",
        "--zipf",
        "1.1",
        "--event",
        "20000:remove:b4",
        "--event",
        "1s:slow:b2=40ms",
    ];
    let first = simulate(&args);
    let second = simulate(&args);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(first.stdout, second.stdout);
    let other = simulate(&[&args[..], &["--seed", "2"]].concat());
    assert_ne!(first.stdout, other.stdout);
    // Six algorithms, each with its table.
    let text = String::from_utf8(first.stdout).unwrap();
    for kind in AlgorithmKind::ALL {
        assert!(text.contains(&format!("\n{}: p50 ", kind.name())), "{text}");
    }
}

#[test]
fn json_holds_the_same_figures() {
    let out = simulate(&["--algorithm", "p2c", "--backends", "3", "--requests", "3000", "--json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p2c = &json["algorithms"][0];
    assert_eq!(p2c["name"], "p2c");
    let total: u64 = p2c["backends"].as_array().unwrap().iter().map(|b| b["requests"].as_u64().unwrap()).sum();
    assert_eq!(total, 3000);
    assert_eq!(p2c["completed"], 3000);
}

#[test]
fn svg_draws_the_charts() {
    let dir = std::env::temp_dir().join(format!("lb-sync-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.svg");
    let out =
        simulate(&["--algorithm", "round_robin,peak_ewma", "--requests", "2000", "--svg", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
    for text in ["round_robin: share of each window", "peak_ewma: share of each window", "latency distribution (CDF)"] {
        assert!(svg.contains(text), "{text}");
    }
}

// ----------------------------------------------------------------- ip_hash remaps

/// Removing one of n equal backends: ketama moves exactly that backend's clients (close to
/// 1/n of all) and brings every one of them back when it returns; `hash % n` moves about
/// (n - 1)/n, since a client keeps its backend only where `h % n` and `h % (n - 1)` name the
/// same one.
#[test]
fn removing_one_of_n_moves_one_nth_under_ketama_and_most_under_modulo() {
    for n in [3usize, 5, 10] {
        let backends: Vec<BackendSpec> = (1..=n).map(|i| backend(&format!("b{i}"), 1, 10)).collect();
        let s = with_events(scenario("ip_hash", backends, 30_000), &["10000:remove:b2", "20000:add:b2"]);
        let report = run(&s, false);
        let ip_hash = &report.algorithms[0];
        let (removed, added) = (&ip_hash.events[0], &ip_hash.events[1]);
        let (out, back) = (removed.remap.as_ref().unwrap(), added.remap.as_ref().unwrap());
        let n = n as f64;
        // 160 ring points per backend: each arc is 1/n give or take about 1/sqrt(160) of it.
        assert!((out.ketama_moved - 1.0 / n).abs() < 0.3 / n, "n={n}: ketama moved {}", out.ketama_moved);
        assert!((out.modulo_moved - (n - 1.0) / n).abs() < 0.03, "n={n}: % n moved {}", out.modulo_moved);
        // Only b2's clients moved, so the same ones move back, all of them.
        assert_eq!(back.ketama_moved, out.ketama_moved);
        assert_eq!(back.ketama_back, Some(1.0));
        assert_eq!(back.modulo_back, Some(1.0));
        assert!((back.modulo_moved - (n - 1.0) / n).abs() < 0.03);
        assert_eq!((removed.request, added.request), (10_000, 20_000));
    }
}

#[test]
fn a_down_backend_moves_only_its_clients_and_a_weight_counts_on_the_ring() {
    // b1 weight 3 of 5 in all: taking it down moves about 3/5 of the clients under ketama.
    let backends = vec![backend("b1", 3, 10), backend("b2", 1, 10), backend("b3", 1, 10)];
    let s = with_events(scenario("ip_hash", backends, 20_000), &["5000:down:b1", "15000:up:b1"]);
    let ip_hash = &run(&s, false).algorithms[0];
    let down = ip_hash.events[0].remap.as_ref().unwrap();
    assert!((down.ketama_moved - 0.6).abs() < 0.06, "{}", down.ketama_moved);
    assert_eq!(ip_hash.events[1].remap.as_ref().unwrap().ketama_back, Some(1.0));
    // While it was down it got nothing: its share is of the 10,000 requests around it.
    let b1 = &ip_hash.backends[0];
    assert!(b1.share < 0.35, "{}", b1.share);
}

#[test]
fn a_backend_whose_first_event_is_add_starts_outside_and_events_at_a_time_happen() {
    let s = with_events(scenario("round_robin", five(10), 20_000), &["10000:add:b5", "0.5s:remove:b1"]);
    let rr = &run(&s, false).algorithms[0];
    assert!(!s.backends[4].present);
    let b5 = &rr.backends[4];
    // Added halfway, then one of four (b1 gone by then): a quarter of the second half.
    assert_eq!(b5.requests, 2500);
    // Listed as they happened: the timed one first (0.5 s is long before request 10000).
    let texts: Vec<&str> = rr.events.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts, ["0.5s:remove:b1", "10000:add:b5"]);
    assert_eq!(rr.events[0].time_ns, 500_000_000);
    assert!(rr.events[0].request < 10_000);
    assert_eq!(rr.events[1].request, 10_000);
}

#[test]
fn with_every_backend_removed_requests_fail_and_the_run_still_ends() {
    let s = with_events(scenario("p2c", vec![backend("b1", 1, 10)], 10_000), &["5000:remove:b1"]);
    let p2c = &run(&s, false).algorithms[0];
    assert_eq!(p2c.failed_refused, 5000);
    assert_eq!(p2c.completed, 5000);
}

// ----------------------------------------------------------------- slow backend

#[test]
fn one_slow_backend_at_80_percent_load_peak_ewma_p99_is_at_most_half_round_robins() {
    let mut s = scenario(
        "round_robin,least_connections,p2c,peak_ewma",
        vec![backend("b1", 1, 10), backend("b2", 1, 10), backend("b3", 1, 100)],
        100_000,
    );
    s.load = Some(0.8);
    s.concurrency = 256;
    let report = run(&s, false);
    let p99 = |name: &str| report.algorithms.iter().find(|a| a.name == name).unwrap().p99_ns;
    assert!(p99("peak_ewma") * 2 <= p99("round_robin"), "peak_ewma {} rr {}", p99("peak_ewma"), p99("round_robin"));
    assert!(p99("least_connections") < p99("round_robin"));
    assert!(p99("p2c") < p99("round_robin"));
    // Round robin fills b3 up to its connection cap.
    let rr = &report.algorithms[0];
    assert_eq!(rr.backends[2].in_flight_max, 192);
}

#[test]
fn a_backend_slowed_by_an_event_loses_its_share_under_peak_ewma() {
    let s = with_events(scenario("peak_ewma", five(10), 60_000), &["20000:slow:b3=200ms"]);
    let peak = &run(&s, false).algorithms[0];
    // Before the event about a fifth of 20,000; after it, b3 is mostly avoided.
    let b3 = peak.backends[2].requests;
    assert!((4000..6000).contains(&b3), "{b3}");
}

// -------------------------------------------------------------------- bad input

#[test]
fn invalid_input_is_one_line_on_stderr_and_exit_status_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--algorithm", "random"], "unknown algorithm 'random' (expected one of: round_robin, weighted_round_robin, ip_hash, least_connections, p2c, peak_ewma, seed_weighted_round_robin or all)"),
        (&["--backend", "b1=0"], "backend b1: weight must be 1-1000000, got 0"),
        (&["--backend", "b1=2000000"], "backend b1: weight must be 1-1000000, got 2000000"),
        (&["--backend", "b1=heavy"], "backend 'b1=heavy': weight 'heavy' is not a whole number (expected ID=WEIGHT)"),
        (&["--backend", "b1", "--backend", "b1"], "backend id 'b1' is used twice"),
        (&["--event", "100:remove:b9"], "event '100:remove:b9' names no backend: b9 (backends: backend1, backend2, backend3)"),
        (&["--event", "100:explode:backend1"], "malformed event '100:explode:backend1' (expected AT:ACTION:BACKEND, AT a request number or a time such as 2s, ACTION remove, add, down, up or slow:ID=DURATION)"),
        (&["--event", "200000:remove:backend1"], "event '200000:remove:backend1' is at request 200000, past the last one (99999)"),
        (&["--requests", "0"], "--requests must be 1-100000000, got 0"),
        (&["--requests", "-3"], "Error parsing option '--requests' with value '-3': invalid digit found in string (see lb-sync simulate --help)"),
        (&["--service", "10 ms"], "malformed duration '10 ms' (expected a number and us, ms, s or m: 5ms, 1.5s)"),
        (&["--service", "backend1=fast"], "malformed duration 'fast' (expected a number and us, ms, s or m: 5ms, 1.5s)"),
        (&["--service", "b7=5ms"], "--service names no backend: b7 (backends: backend1, backend2, backend3)"),
        (&["--service", "0ms"], "backend backend1: service time must be above 0"),
        (&["--event", "1x:down:backend1"], "malformed duration '1x' (expected a number and us, ms, s or m: 5ms, 1.5s)"),
        (&["--distribution", "gaussian"], "unknown service time distribution 'gaussian' (expected fixed, exponential, lognormal or lognormal:SIGMA with SIGMA 0.01-3)"),
        (&["--clients", "0"], "--clients must be 1-1000000, got 0"),
        (&["--concurrency", "0"], "--concurrency must be 1-100000, got 0"),
        (&["--load", "0"], "--load must be above 0 and at most 10 (a share of capacity), got 0"),
        (&["--zipf", "-1"], "--zipf must be 0 (uniform) to 5, got -1"),
        (&["--backends", "0"], "--backends must be 1-10000, got 0"),
        (&["--config", "/nonexistent/lb.json"], "cannot read config file /nonexistent/lb.json: No such file or directory (os error 2)"),
        (&["--frobnicate"], "Unrecognized argument: --frobnicate (see lb-sync simulate --help)"),
    ];
    for (args, message) in cases {
        let out = simulate(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        // The program's path as invoked is in argh's messages: compare without it.
        let stderr = stderr.replace(env!("CARGO_BIN_EXE_lb-sync"), "lb-sync");
        assert_eq!(stderr, format!("lb-sync simulate: {message}\n"), "{args:?}");
    }
}

/// The bounds that `Scenario::validate` checks for the command line (and for a scenario
/// built in code) read the same as when the command line checked them itself.
#[test]
fn bounds_checked_by_validate_keep_their_command_line_words() {
    let cases: &[(&[&str], &str)] = &[
        (&["--peak-ewma-window", "0"], "--peak-ewma-window must be 0.001-3600 s, got 0"),
        (&["--peak-ewma-window", "5000"], "--peak-ewma-window must be 0.001-3600 s, got 5000"),
        (&["--peak-ewma-window", "-1"], "--peak-ewma-window must be 0.001-3600 s, got -1"),
        (&["--peak-ewma-window", "NaN"], "--peak-ewma-window must be 0.001-3600 s, got NaN"),
        (&["--max-connections", "0"], "--max-connections must be 1-1000000, got 0"),
        (&["--max-connections", "1000001"], "--max-connections must be 1-1000000, got 1000001"),
        (&["--backend", "a/b=3"], "backend 'a/b': the id must be 1-64 of A-Z a-z 0-9 . _ ~ -"),
    ];
    for (args, message) in cases {
        let out = simulate(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), format!("lb-sync simulate: {message}\n"), "{args:?}");
    }
}

#[test]
fn a_config_file_gives_the_backends_and_its_weight_range_is_checked() {
    let dir = std::env::temp_dir().join(format!("lb-sync-simulate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    std::fs::write(&good, r#"{"backends": [{"id": "api", "host": "127.0.0.1", "port": 9001, "weight": 3}, {"host": "127.0.0.1", "port": 9002}]}"#).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"backends": [{"host": "127.0.0.1", "port": 9001, "weight": 0}]}"#).unwrap();
    let out =
        simulate(&["--config", good.to_str().unwrap(), "--algorithm", "weighted_round_robin", "--requests", "400"]);
    let bad_out = simulate(&["--config", bad.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("  api            3") && text.contains("  backend2       1"), "{text}");
    assert!(text.contains("     300") && text.contains("     100"), "{text}");
    assert_eq!(bad_out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&bad_out.stderr),
        "lb-sync simulate: backend 127.0.0.1:9001: weight must be 1-1000000, got 0\n"
    );
}

// ------------------------------------------------------------------------ splits

/// Two pools and a route splitting between them 95/5, as a user writes a canary.
const SPLIT_CONFIG: &str = r#"{
  "backends": [],
  "pools": {
    "stable": {"backends": [{"host": "127.0.0.1", "port": 9001}, {"host": "127.0.0.1", "port": 9002}]},
    "canary": {"backends": [{"host": "127.0.0.1", "port": 9003}]}
  },
  "routes": [
    {"name": "checkout", "path_prefix": "/checkout",
     "split": [{"pool": "stable", "weight": 95}, {"pool": "canary", "weight": 5}]},
    {"name": "rest", "pool": "stable"}
  ]
}"#;

/// Runs `lb-sync simulate --config <SPLIT_CONFIG> ARGS...` (the file in a directory of this
/// call's own: tests run side by side).
fn simulate_split_config(args: &[&str]) -> Output {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lb-sync-simulate-split-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("split.json");
    std::fs::write(&path, SPLIT_CONFIG).unwrap();
    let mut all = vec!["--config", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = simulate(&all);
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

fn json(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn a_95_5_split_over_10000_clients_gives_each_pool_its_weight_within_1_percent_and_keeps_every_client() {
    let out = simulate_split_config(&["--route", "checkout", "--clients", "10000", "--requests", "100000", "--json"]);
    let report = json(&out);
    assert_eq!(report["route"], "checkout");
    let pools = report["pools"].as_array().unwrap();
    let found: Vec<(&str, f64, f64, f64)> = pools
        .iter()
        .map(|p| {
            let share = |k: &str| p[k].as_f64().unwrap();
            (p["pool"].as_str().unwrap(), share("expected_share"), share("client_share"), share("request_share"))
        })
        .collect();
    eprintln!("95/5 over 10,000 clients (pool, expected, clients, requests): {found:?}");
    assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), ["stable", "canary"]);
    for (pool, expected, clients, requests) in &found {
        assert!((clients - expected).abs() <= 0.01, "{pool}: {clients} of the clients, {expected} expected");
        assert!((requests - expected).abs() <= 0.01, "{pool}: {requests} of the requests, {expected} expected");
    }
    let counted: u64 = pools.iter().map(|p| p["clients"].as_u64().unwrap()).sum();
    assert_eq!(counted, 10_000);
    // 100,000 requests over 10,000 clients: nearly all of them come back, and none moves.
    assert!(report["repeat_clients"].as_u64().unwrap() > 9_900, "{}", report["repeat_clients"]);
    assert_eq!(report["changed_sides"], 0);
    // The same run in words.
    let text = simulate_split_config(&["--route", "checkout"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.starts_with("split stable 95, canary 5 (route 'checkout'): 10000 clients"), "{text}");
    assert!(text.contains("every client stayed on its side"), "{text}");
}

#[test]
fn moving_the_canary_from_5_to_10_percent_moves_5_percent_of_clients_all_from_stable_to_canary() {
    let out = simulate_split_config(&["--route", "checkout", "--to", "stable=90,canary=10", "--json"]);
    let change = json(&out)["change"].clone();
    let moved = change["moved_share"].as_f64().unwrap();
    eprintln!("5 -> 10 %: {} of 10,000 clients moved ({moved})", change["moved"]);
    assert!((moved - 0.05).abs() <= 0.01, "{moved} of the clients moved, 0.05 ± 0.01 expected");
    assert_eq!(change["least_share"].as_f64().unwrap(), 0.05);
    let moves = change["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!((moves[0]["from"].as_str(), moves[0]["to"].as_str()), (Some("stable"), Some("canary")));
    assert_eq!(moves[0]["clients"], change["moved"]);
    for pool in change["pools"].as_array().unwrap() {
        let (expected, got) = (pool["expected_share"].as_f64().unwrap(), pool["client_share"].as_f64().unwrap());
        assert!((got - expected).abs() <= 0.01, "{pool}");
    }
    let text = String::from_utf8(simulate_split_config(&["--route", "checkout", "--to", "stable=90,canary=10"]).stdout)
        .unwrap();
    assert!(text.contains("\nto stable 90, canary 10:\n"), "{text}");
    assert!(text.contains("the new weights need at least 5.0%") && text.contains("  stable -> canary "), "{text}");
    assert!(!text.contains("more than must move"), "{text}");
    // Written in the other order, the same split: the order of the pools moves nobody.
    let swapped = json(&simulate_split_config(&["--route", "checkout", "--to", "canary=10,stable=90", "--json"]));
    assert_eq!(swapped["change"]["moves"], change["moves"]);
}

#[test]
fn a_split_on_the_command_line_is_the_same_split_as_the_routes() {
    let from_file = json(&simulate_split_config(&["--route", "checkout", "--to", "stable=90,canary=10", "--json"]));
    let inline = json(&simulate(&["--split", "stable=95,canary=5", "--to", "stable=90,canary=10", "--json"]));
    assert_eq!(inline["route"], serde_json::Value::Null);
    assert_eq!(inline["pools"], from_file["pools"]);
    assert_eq!(inline["change"], from_file["change"]);
}

#[test]
fn bad_split_simulations_are_refused_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["--route", "rest"], "--route: route 'rest' sends to pool 'stable', not a split"),
        (&["--route", "nope"], "--route: FILE has no route 'nope' (routes: checkout, rest)"),
        (
            &["--route", "checkout", "--to", "stable=90,canry=10"],
            "--to: route 'checkout' names pool 'canry', which is not defined (pools: default, canary, stable)",
        ),
        (&["--route", "checkout", "--to", "stable=0,canary=0"], "--to: split: every weight is 0"),
        (&["--route", "checkout", "--to", "stable:90"], "--to: 'stable:90' is not POOL=WEIGHT (as stable=90,canary=10)"),
        (&["--route", "checkout", "--event", "1:remove:b1"], "--event is for the algorithms; a split's simulation takes --clients, --requests, --zipf, --seed, --to and --json"),
        (&["--route", "checkout", "--split", "a=1"], "--route and --split go separately"),
        (&["--split", "a=1"], "--split goes without --config (--route NAME takes a split from the file)"),
    ];
    for (args, message) in cases {
        let out = simulate_split_config(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = stderr.replace(std::env::temp_dir().to_str().unwrap(), "TMP");
        let stderr = with_file_as_placeholder(&stderr);
        assert_eq!(stderr, format!("lb-sync simulate: {message}\n"), "{args:?}");
    }
    let alone: &[(&[&str], &str)] = &[
        (&["--route", "checkout"], "--route needs --config FILE, the file the route is in"),
        (&["--to", "a=1"], "--to goes with --route or --split"),
        (&["--split", "a=1,a=2"], "--split: split names pool 'a' twice"),
        (&["--split", "a=1", "--clients", "0"], "--clients must be 1-1000000, got 0"),
    ];
    for (args, message) in alone {
        let out = simulate(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), format!("lb-sync simulate: {message}\n"), "{args:?}");
    }
}

/// `TMP/lb-sync-simulate-split-PID-N/split.json` as `FILE`.
fn with_file_as_placeholder(text: &str) -> String {
    match (text.find("TMP/"), text.find(".json")) {
        (Some(start), Some(end)) if start < end => format!("{}FILE{}", &text[..start], &text[end + ".json".len()..]),
        _ => text.to_string(),
    }
}
