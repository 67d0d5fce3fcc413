//! An open-loop load generator, for `scripts/bench.sh algorithms`: REQUESTS `GET`s to URL at
//! RATE per second with Poisson gaps (each request's send time is fixed in advance, whatever
//! the answers do), sent by THREADS threads on keep-alive connections. A request's latency is
//! counted from the time it was due, not from when a free thread sent it, so a slow system
//! cannot hide its queue (wrk's closed loop would send fewer requests instead: coordinated
//! omission). Prints one line: `sent ok errors p50_ms p99_ms`.
//!
//! ```text
//! cargo run --release --example open_loop -- http://127.0.0.1:8080/ RATE REQUESTS [THREADS=400]
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: open_loop URL RATE REQUESTS [THREADS]";
    let url = args.first().cloned().unwrap_or_else(|| fail(usage));
    let number = |i: usize, default: Option<f64>| {
        args.get(i).and_then(|a| a.parse::<f64>().ok()).or(default).filter(|v| *v > 0.0).unwrap_or_else(|| fail(usage))
    };
    let (rate, requests, threads) = (number(1, None), number(2, None) as usize, number(3, Some(400.0)) as usize);
    // Due times: Poisson gaps from a fixed seed (SplitMix64), so runs compare.
    let mut due = Vec::with_capacity(requests);
    let (mut at, mut state) = (0.0f64, 0x5eed_u64);
    for _ in 0..requests {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
        at += -(1.0 - u).ln() / rate;
        due.push(Duration::from_secs_f64(at));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .max_idle_connections(threads)
        .max_idle_connections_per_host(threads)
        .http_status_as_error(false)
        .build()
        .into();
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(requests));
    let errors = AtomicUsize::new(0);
    let start = Instant::now() + Duration::from_millis(100);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut mine = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&offset) = due.get(k) else { break };
                    let when = start + offset;
                    if let Some(wait) = when.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let answer = agent.get(&url).call().and_then(|mut r| {
                        let ok = r.status().is_success();
                        r.body_mut().read_to_vec().map(|_| ok)
                    });
                    match answer {
                        Ok(true) => mine.push(when.elapsed().as_micros() as u64),
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
            });
        }
    });
    let mut latencies = latencies.into_inner().unwrap_or_else(|e| e.into_inner());
    latencies.sort_unstable();
    let at = |q: f64| {
        let rank = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
        latencies.get(rank).map_or(0.0, |&us| us as f64 / 1000.0)
    };
    println!("{requests} {} {} {:.1} {:.1}", latencies.len(), errors.load(Ordering::Relaxed), at(0.5), at(0.99));
}

fn fail(why: &str) -> ! {
    eprintln!("open_loop: {why}");
    std::process::exit(2)
}
