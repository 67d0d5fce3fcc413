//! Cost of one pick for each selection algorithm: 3, 100 and 1000 members
//! (weights 1 + i % 5), on 1 thread and on 8 contending threads. peak_ewma
//! reads a response-time estimate per member (10-100 ms, each measured at a
//! different time of the clock's first second; a pick reads them at 1 s).
//!
//! The 8-thread numbers are wall time divided by the total picks of all
//! threads (so, the inverse of aggregate throughput); on a machine with
//! fewer than 8 cores they include oversubscription.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb_sync::balance::{Algorithm, AlgorithmKind, Member, PickContext, ResponseTime, ResponseTimes};

const SIZES: [usize; 3] = [3, 100, 1000];
const THREADS: u64 = 8;

fn members(n: usize) -> Vec<Member> {
    (0..n).map(|i| Member::new(format!("10.0.{}.{}:8080", i / 256, i % 256), 1 + (i % 5) as u32)).collect()
}

/// Each member's response-time estimate, as the proxy keeps them.
struct Cells(Vec<ResponseTime>);

impl Cells {
    fn new(n: usize) -> Self {
        let cells: Vec<ResponseTime> = (0..n).map(|_| ResponseTime::new(Duration::from_secs(10))).collect();
        // Answers at different times, as in the proxy: comparing two costs decays one by the
        // other's age (an exp per pick).
        for (i, cell) in cells.iter().enumerate() {
            cell.observe(Duration::from_millis(10 + (i as u64 * 37) % 90), (i as u64 * 7_919) % 1_000_000_000);
        }
        Cells(cells)
    }
}

impl ResponseTimes for Cells {
    fn of(&self, i: usize) -> &ResponseTime {
        &self.0[i]
    }
    fn now(&self) -> u64 {
        1_000_000_000
    }
}

/// `picks` picks, each with a different hash key (an incrementing u32 as 4
/// bytes) and a fixed, uneven load per member.
fn run(algo: &dyn Algorithm, loads: &[usize], cells: &Cells, first_key: u32, picks: u64) {
    let in_flight = |i: usize| loads[i];
    let mut key = first_key;
    for _ in 0..picks {
        let bytes = key.to_be_bytes();
        let ctx = PickContext { hash_key: &bytes, in_flight: &in_flight, response_times: Some(cells) };
        black_box(algo.select(&ctx, &mut |i| black_box(i) != usize::MAX));
        key = key.wrapping_add(1);
    }
}

fn bench(c: &mut Criterion) {
    for (label, threads) in [("1_thread", 1), ("8_threads", THREADS)] {
        let mut group = c.benchmark_group(format!("pick/{label}"));
        for kind in AlgorithmKind::ALL {
            for n in SIZES {
                let members = members(n);
                let loads: Vec<usize> = (0..n).map(|i| (i * 7) % 13).collect();
                let cells = Cells::new(n);
                let algo = kind.build(&members);
                let algo = algo.as_ref();
                group.bench_with_input(BenchmarkId::new(kind.name(), n), &n, |b, _| {
                    if threads == 1 {
                        let mut key = 0u32;
                        b.iter(|| {
                            run(algo, &loads, &cells, key, 1);
                            key = key.wrapping_add(1);
                        });
                    } else {
                        b.iter_custom(|iters| {
                            let per_thread = iters.div_ceil(threads);
                            let start = Instant::now();
                            std::thread::scope(|s| {
                                for t in 0..threads {
                                    let (loads, cells) = (&loads, &cells);
                                    s.spawn(move || run(algo, loads, cells, (t as u32) << 28, per_thread));
                                }
                            });
                            start.elapsed()
                        });
                    }
                });
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
