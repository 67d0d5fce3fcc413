//! The backend table under concurrency: least connections picks and counts in one step, table
//! changes are swapped in whole without readers waiting, and a reload's reconcile keeps the live
//! state of what did not change.

use std::sync::{Arc, Barrier};

use lb_sync::balance::AlgorithmKind;
use lb_sync::config::BackendConfig;
use lb_sync::upstream::{BackendPolicy, BackendTable};

fn table(kind: AlgorithmKind, ports: &[u16]) -> Arc<BackendTable> {
    let backends: Vec<(String, BackendConfig)> =
        ports.iter().enumerate().map(|(i, &p)| (format!("b{i}"), BackendConfig::new("127.0.0.1", p, 1))).collect();
    Arc::new(BackendTable::new(kind, &backends, BackendPolicy::default()).unwrap())
}

#[test]
fn concurrent_least_connections_picks_never_herd() {
    let table = table(AlgorithmKind::LeastConnections, &[9001, 9002, 9003, 9004]);
    for round in 0..20 {
        let snapshot = table.snapshot();
        let start = Arc::new(Barrier::new(64));
        let picks: Vec<_> = (0..64)
            .map(|_| {
                let (snapshot, start) = (Arc::clone(&snapshot), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    // The guard is kept: the request is in flight until the thread is joined. The
                    // yield between the look at the loads and the increment widens the window
                    // another pick would slip into if they were two steps.
                    let accept = |_: &lb_sync::upstream::Backend| {
                        std::thread::yield_now();
                        true
                    };
                    snapshot.pick_and_begin(&[], accept).map(|(_, in_flight, _)| in_flight).expect("a pick")
                })
            })
            .collect();
        let held: Vec<_> = picks.into_iter().map(|t| t.join().unwrap()).collect();
        let loads: Vec<usize> = snapshot.backends.iter().map(|b| b.in_flight()).collect();
        assert_eq!(loads, [16, 16, 16, 16], "round {round}: 64 simultaneous picks over 4 idle backends");
        drop(held);
        assert!(snapshot.backends.iter().all(|b| b.in_flight() == 0));
    }
}

#[test]
fn a_pick_passes_over_a_backend_at_its_cap_and_takes_its_slot() {
    let backends = [("a".to_string(), BackendConfig::new("127.0.0.1", 9001, 1))];
    let policy = BackendPolicy { max_connections: 2, ..BackendPolicy::default() };
    let table = BackendTable::new(AlgorithmKind::RoundRobin, &backends, policy).unwrap();
    let snapshot = table.snapshot();
    let first = snapshot.pick_and_begin(&[], |_| true).expect("room for two");
    let second = snapshot.pick_and_begin(&[], |_| true).expect("room for two");
    assert!(snapshot.pick_and_begin(&[], |_| true).is_none(), "at its cap of 2");
    drop(first);
    assert!(snapshot.pick_and_begin(&[], |_| true).is_some(), "a slot freed");
    drop(second);
}

#[test]
fn reconcile_keeps_unchanged_backends_and_their_state() {
    let table = table(AlgorithmKind::RoundRobin, &[9001, 9002, 9003]);
    let before = table.snapshot();
    let (kept, moved) = (Arc::clone(&before.backends[0]), Arc::clone(&before.backends[1]));
    kept.set_healthy(false);
    kept.record_request();
    let wanted = vec![
        ("b0".to_string(), BackendConfig::new("127.0.0.1", 9001, 5)),
        ("b1".to_string(), BackendConfig::new("127.0.0.1", 9102, 1)),
        ("b9".to_string(), BackendConfig::new("localhost", 9009, 1)),
    ];
    let policy = BackendPolicy { max_connections: 7, ..BackendPolicy::default() };
    let report = table.reconcile(AlgorithmKind::WeightedRoundRobin, &wanted, policy).unwrap();
    assert_eq!(report.added, ["b9"]);
    assert_eq!(report.removed, ["b2"]);
    assert_eq!(report.replaced, ["b1"]);
    assert_eq!(report.reweighted, ["b0"]);
    assert!(report.algorithm_changed);
    let after = table.snapshot();
    assert_eq!(table.algorithm(), AlgorithmKind::WeightedRoundRobin);
    assert!(Arc::ptr_eq(&after.backends[0], &kept), "same id, host and port: the same backend");
    assert_eq!((kept.weight(), kept.is_healthy(), kept.counts().0), (5, false, 1), "new weight, state kept");
    assert!(!Arc::ptr_eq(&after.backends[1], &moved), "a new address: a new backend");
    assert_eq!(after.backends[1].port, 9102);
    assert_eq!(after.backends[2].addr.to_string(), "127.0.0.1:9009", "resolved");
    // The snapshot taken before is untouched: requests that hold it finish with it.
    assert_eq!(before.backends.len(), 3);
    assert_eq!(before.algorithm(), AlgorithmKind::RoundRobin);

    // An unresolvable host refuses the whole change.
    let broken = vec![
        ("b0".to_string(), BackendConfig::new("127.0.0.1", 9001, 1)),
        ("bad".to_string(), BackendConfig::new("no-such-host.invalid", 80, 1)),
    ];
    let error = table.reconcile(AlgorithmKind::RoundRobin, &broken, BackendPolicy::default()).unwrap_err();
    assert!(error.to_string().starts_with("backend bad: cannot resolve no-such-host.invalid"), "{error}");
    assert!(Arc::ptr_eq(&table.snapshot(), &after), "nothing changed");
}

#[test]
fn readers_load_snapshots_while_changes_are_swapped_in() {
    let table = table(AlgorithmKind::WeightedRoundRobin, &[9001, 9002]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every reader is picking before the first change: the changes must meet readers.
    let started = Arc::new(std::sync::Barrier::new(5));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (table, stop, started) = (Arc::clone(&table), Arc::clone(&stop), Arc::clone(&started));
            std::thread::spawn(move || {
                let mut picks = 0u64;
                loop {
                    let snapshot = table.snapshot();
                    assert!(snapshot.pick(&[], |_| true).is_some());
                    picks += 1;
                    if picks == 1 {
                        started.wait();
                    }
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                }
                picks
            })
        })
        .collect();
    started.wait();
    for i in 0..200u16 {
        let added = table.add(&BackendConfig::new("127.0.0.1", 10_000 + i, 3)).unwrap();
        table.set_enabled(&added.id, i % 2 == 0).unwrap();
        if i % 3 == 0 {
            table.remove(&added.id).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let picks: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(picks > 0);
    assert_eq!(table.snapshot().backends.len(), 2 + 200 - 67);
}
