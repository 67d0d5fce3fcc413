//! Cost of the table changes that take a whole list of backends, at 100, 1,000 and 10,000
//! backends: a reload's match of the configured list to the table (`BackendTable::reconcile`,
//! with a list that changes nothing), and a registry's first read put into an empty table in
//! one batch (`BackendTable::apply`). Ids and addresses are found through maps, so the cost
//! grows with the list, not with its square or cube (scans made a reload of 20,000 backends
//! take 9 s, and a batch of 1,000 take 1.5 s).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb_sync::balance::AlgorithmKind;
use lb_sync::config::BackendConfig;
use lb_sync::upstream::{BackendPolicy, BackendState, BackendTable, Wanted};

/// `n` backends at distinct loopback addresses (IP literals: nothing to resolve).
fn backends(n: usize) -> Vec<(String, BackendConfig)> {
    (0..n)
        .map(|i| {
            let host = format!("127.0.{}.{}", i / 250, i % 250 + 1);
            (format!("b{i}"), BackendConfig::new(&host, 8000 + (i % 1000) as u16, 1))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("reconcile_unchanged");
    for n in [100, 1_000, 10_000] {
        let wanted = backends(n);
        let table = BackendTable::new(AlgorithmKind::RoundRobin, &wanted, BackendPolicy::default()).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| table.reconcile(AlgorithmKind::RoundRobin, &wanted, BackendPolicy::default()).unwrap());
        });
    }
    group.finish();

    // A registry's first read: every backend put into an empty table in one batch.
    let mut group = c.benchmark_group("apply_into_empty");
    for n in [100, 1_000, 10_000] {
        let batch: Vec<Wanted> = backends(n)
            .into_iter()
            .map(|(id, config)| Wanted::Put { id, config, state: BackendState::Enabled })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let table = BackendTable::new(AlgorithmKind::RoundRobin, &[], BackendPolicy::default()).unwrap();
                table.apply(&batch)
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
