//! Behaviour of the selection algorithms, through the public API only.

use std::collections::HashMap;
use std::net::IpAddr;

use std::time::Duration;

use lb_sync::balance::failover::{self, PickKind, Standing};
use lb_sync::balance::{
    Algorithm, AlgorithmKind, IpHash, LeastConnections, Member, P2c, PeakEwma, PickContext, ResponseTime,
    ResponseTimes, RoundRobin, WeightedRoundRobin,
};

fn members(weights: &[u32]) -> Vec<Member> {
    weights.iter().enumerate().map(|(i, &w)| Member::new(format!("backend{}", i + 1), w)).collect()
}

fn picks(algo: &dyn Algorithm, count: usize) -> Vec<usize> {
    let ctx = PickContext::idle();
    (0..count).map(|_| algo.select(&ctx, &mut |_| true).unwrap()).collect()
}

fn counts(picks: &[usize], n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for &p in picks {
        counts[p] += 1;
    }
    counts
}

/// `threads` threads each doing `per_thread` picks at once; total per member.
fn concurrent_counts(algo: &dyn Algorithm, n: usize, threads: usize, per_thread: usize) -> Vec<usize> {
    let mut total = vec![0; n];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| counts(&picks(algo, per_thread), n))).collect();
        for handle in handles {
            for (t, c) in total.iter_mut().zip(handle.join().unwrap()) {
                *t += c;
            }
        }
    });
    total
}

fn ip_key(ip: &str) -> Vec<u8> {
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// 10.x.y.z for i in 0..count: distinct, deterministic client addresses.
fn client_ips(count: u32) -> Vec<[u8; 4]> {
    (0..count).map(|i| [10, (i >> 16) as u8, (i >> 8) as u8, i as u8]).collect()
}

fn pick_id<'m>(algo: &dyn Algorithm, members: &'m [Member], key: &[u8]) -> &'m str {
    let i = algo.select(&PickContext::with_key(key), &mut |_| true).unwrap();
    &members[i].id
}

// ---------------------------------------------------------------- round robin

#[test]
fn round_robin_sequence_is_0_1_2_0_1_2() {
    let rr = RoundRobin::new(&members(&[1, 1, 1]));
    assert_eq!(picks(&rr, 6), [0, 1, 2, 0, 1, 2]);
}

#[test]
fn round_robin_ignores_weights() {
    let rr = RoundRobin::new(&members(&[1, 5, 1]));
    assert_eq!(picks(&rr, 6), [0, 1, 2, 0, 1, 2]);
}

#[test]
fn round_robin_skipping_an_unusable_member_alternates_the_other_two_evenly() {
    let rr = RoundRobin::new(&members(&[1, 1, 1]));
    let ctx = PickContext::idle();
    let got: Vec<usize> = (0..8).map(|_| rr.select(&ctx, &mut |i| i != 1).unwrap()).collect();
    assert_eq!(got, [0, 2, 0, 2, 0, 2, 0, 2]);

    let rr = RoundRobin::new(&members(&[1, 1, 1]));
    let got: Vec<usize> = (0..600).map(|_| rr.select(&ctx, &mut |i| i != 2).unwrap()).collect();
    assert_eq!(counts(&got, 3), [300, 300, 0]);
}

#[test]
fn round_robin_8_threads_give_exact_counts() {
    let rr = RoundRobin::new(&members(&[1, 1, 1]));
    assert_eq!(concurrent_counts(&rr, 3, 8, 3000), [8000, 8000, 8000]);
}

// ------------------------------------------------------- weighted round robin

/// nginx's smooth weighted round robin (ngx_http_upstream_get_peer), step by
/// step: add each weight to its current weight, take the largest (first on
/// ties), subtract the total from it.
fn nginx_smooth(weights: &[u32], steps: usize) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..steps)
        .map(|_| {
            let mut best = 0;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += i64::from(w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best
        })
        .collect()
}

#[test]
fn weighted_1_2_1_schedule_equals_nginx_smooth_sequence() {
    let wrr = WeightedRoundRobin::new(&members(&[1, 2, 1]));
    let expected = nginx_smooth(&[1, 2, 1], 40);
    assert_eq!(picks(&wrr, 40), expected);
    // b2, b1, b3, b2, repeating.
    assert_eq!(expected[..8], [1, 0, 2, 1, 1, 0, 2, 1]);
}

#[test]
fn weighted_1_2_1_gives_5_10_5_over_20() {
    let wrr = WeightedRoundRobin::new(&members(&[1, 2, 1]));
    assert_eq!(counts(&picks(&wrr, 20), 3), [5, 10, 5]);
}

#[test]
fn weighted_1_2_1_never_picks_the_same_backend_3_times_in_a_row() {
    let wrr = WeightedRoundRobin::new(&members(&[1, 2, 1]));
    let got = picks(&wrr, 1000);
    assert!(got.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])));
}

#[test]
fn weighted_1_2_1_8_threads_give_exact_20000_40000_20000() {
    let wrr = WeightedRoundRobin::new(&members(&[1, 2, 1]));
    assert_eq!(concurrent_counts(&wrr, 3, 8, 10_000), [20_000, 40_000, 20_000]);
}

#[test]
fn weighted_5_1_1_matches_nginx_a_a_b_a_c_a_a() {
    let wrr = WeightedRoundRobin::new(&members(&[5, 1, 1]));
    let got = picks(&wrr, 14);
    assert_eq!(got[..7], [0, 0, 1, 0, 2, 0, 0]);
    assert_eq!(got, nginx_smooth(&[5, 1, 1], 14));
}

#[test]
fn weighted_schedules_equal_nginx_for_assorted_weights() {
    for weights in [&[1][..], &[3, 3], &[2, 4, 6], &[7, 3, 1, 1], &[10, 1], &[1, 2, 3, 4, 5, 6, 7, 8], &[100, 99, 1]] {
        let total: u32 = weights.iter().sum();
        let wrr = WeightedRoundRobin::new(&members(weights));
        let steps = 3 * total as usize;
        assert_eq!(picks(&wrr, steps), nginx_smooth(weights, steps), "{weights:?}");
    }
}

#[test]
fn weighted_weight_0_counts_as_1() {
    let wrr = WeightedRoundRobin::new(&members(&[0, 1]));
    assert_eq!(counts(&picks(&wrr, 10), 2), [5, 5]);
}

#[test]
fn weighted_skipping_a_member_keeps_the_others_ratio() {
    // 1:2:1 with backend1 down: backend2 and backend3 share 2:1.
    let wrr = WeightedRoundRobin::new(&members(&[1, 2, 1]));
    let ctx = PickContext::idle();
    let got: Vec<usize> = (0..300).map(|_| wrr.select(&ctx, &mut |i| i != 0).unwrap()).collect();
    assert_eq!(counts(&got, 3), [0, 200, 100]);

    // 1:2:1 with backend2 down: backend1 and backend3 alternate.
    let wrr = WeightedRoundRobin::new(&members(&[1, 2, 1]));
    let got: Vec<usize> = (0..6).map(|_| wrr.select(&ctx, &mut |i| i != 1).unwrap()).collect();
    assert_eq!(got, [0, 2, 0, 2, 0, 2]);

    // 5:1:1 with the heavy one down: the two light ones alternate.
    let wrr = WeightedRoundRobin::new(&members(&[5, 1, 1]));
    let got: Vec<usize> = (0..6).map(|_| wrr.select(&ctx, &mut |i| i != 0).unwrap()).collect();
    assert_eq!(counts(&got, 3), [0, 3, 3]);
}

// -------------------------------------------------------------------- ip_hash

/// Frozen: computed once with FNV-1a 64 + fmix64 on a 160-points-per-weight
/// ring (and checked against an independent implementation). A change here
/// means every deployed client would move: don't update it lightly.
const FROZEN_IP_TABLE: [(&str, &str); 17] = [
    ("10.0.0.1", "backend1"),
    ("10.0.0.2", "backend3"),
    ("10.0.0.3", "backend1"),
    ("127.0.0.1", "backend2"),
    ("192.168.1.1", "backend3"),
    ("192.168.1.100", "backend1"),
    ("172.16.0.5", "backend1"),
    ("8.8.8.8", "backend3"),
    ("1.1.1.1", "backend3"),
    ("203.0.113.9", "backend3"),
    ("198.51.100.23", "backend2"),
    ("255.255.255.255", "backend2"),
    ("0.0.0.0", "backend1"),
    ("::1", "backend2"),
    ("2001:db8::1", "backend3"),
    ("2001:db8::2", "backend3"),
    ("fe80::1", "backend2"),
];

#[test]
fn ip_hash_maps_a_frozen_table_of_addresses() {
    let members = members(&[1, 2, 1]);
    let ring = IpHash::new(&members);
    for (ip, expected) in FROZEN_IP_TABLE {
        assert_eq!(pick_id(&ring, &members, &ip_key(ip)), expected, "{ip}");
    }
}

#[test]
fn ip_hash_same_ip_gives_same_member_100_times() {
    let members = members(&[1, 2, 1]);
    let ring = IpHash::new(&members);
    for ip in ["10.1.2.3", "2001:db8::42"] {
        let key = ip_key(ip);
        let first = pick_id(&ring, &members, &key);
        for _ in 0..100 {
            assert_eq!(pick_id(&ring, &members, &key), first);
        }
        // A fresh ring (a restart) agrees too.
        assert_eq!(pick_id(&IpHash::new(&members), &members, &key), first);
    }
}

#[test]
fn ip_hash_removing_1_of_5_moves_only_its_clients_and_they_return() {
    let all = members(&[1, 1, 1, 1, 1]);
    let without: Vec<Member> = all.iter().filter(|m| m.id != "backend3").cloned().collect();
    let (full, reduced) = (IpHash::new(&all), IpHash::new(&without));
    let ips = client_ips(10_000);

    let before: Vec<&str> = ips.iter().map(|ip| pick_id(&full, &all, ip)).collect();
    let after: Vec<&str> = ips.iter().map(|ip| pick_id(&reduced, &without, ip)).collect();
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            moved += 1;
            assert_eq!(*b, "backend3", "a client of {b} moved to {a}");
        }
    }
    let fraction = f64::from(moved) / ips.len() as f64;
    assert!(fraction <= 0.2 + 0.03, "moved {fraction}");
    assert!(moved > 0);

    // Re-added (as a new snapshot, in another position): everyone is back.
    let mut readded = without.clone();
    readded.insert(0, all[2].clone());
    let again = IpHash::new(&readded);
    for (ip, b) in ips.iter().zip(&before) {
        assert_eq!(pick_id(&again, &readded, ip), *b);
    }
}

#[test]
fn ip_hash_weights_1_2_1_give_backend2_about_half() {
    let members = members(&[1, 2, 1]);
    let ring = IpHash::new(&members);
    let ips = client_ips(10_000);
    let share =
        ips.iter().filter(|ip| pick_id(&ring, &members, &ip[..]) == "backend2").count() as f64 / ips.len() as f64;
    assert!((0.45..=0.55).contains(&share), "backend2 share {share}");
}

#[test]
fn ip_hash_unusable_member_clients_go_elsewhere_and_others_stay() {
    let members = members(&[1, 1, 1, 1, 1]);
    let ring = IpHash::new(&members);
    let without: Vec<Member> = members.iter().filter(|m| m.id != "backend4").cloned().collect();
    let reduced = IpHash::new(&without);
    let mut rerouted = 0;
    for ip in client_ips(5_000) {
        let ctx = PickContext::with_key(&ip);
        let normal = ring.select(&ctx, &mut |_| true).unwrap();
        let failover = ring.select(&ctx, &mut |i| i != 3).unwrap();
        assert_ne!(failover, 3);
        if normal == 3 {
            rerouted += 1;
        } else {
            assert_eq!(failover, normal);
        }
        // Failover lands where removal would.
        assert_eq!(members[failover].id, pick_id(&reduced, &without, &ip));
    }
    assert!(rerouted > 0);
}

#[test]
fn ip_hash_spreads_the_clients_of_a_refused_member() {
    let members = members(&[1, 1, 1, 1, 1]);
    let ring = IpHash::new(&members);
    let mut destinations: HashMap<usize, usize> = HashMap::new();
    for ip in client_ips(10_000) {
        let ctx = PickContext::with_key(&ip);
        if ring.select(&ctx, &mut |_| true) == Some(0) {
            *destinations.entry(ring.select(&ctx, &mut |i| i != 0).unwrap()).or_default() += 1;
        }
    }
    // Not all dumped on one neighbour: every survivor takes some.
    assert_eq!(destinations.len(), 4, "{destinations:?}");
}

// ---------------------------------------------------------- least_connections

fn lc_pick(weights: &[u32], loads: &[usize]) -> usize {
    let lc = LeastConnections::new(&members(weights));
    let ctx = PickContext { hash_key: &[], in_flight: &|i| loads[i], response_times: None };
    lc.select(&ctx, &mut |_| true).unwrap()
}

#[test]
fn least_connections_picks_fewest_in_flight() {
    assert_eq!(lc_pick(&[1, 1, 1], &[5, 2, 9]), 1);
    assert_eq!(lc_pick(&[1, 1, 1], &[4, 6, 0]), 2);
    assert_eq!(lc_pick(&[1, 1, 1], &[0, 6, 4]), 0);
}

#[test]
fn least_connections_compares_in_flight_divided_by_weight() {
    // 3/2 < 2/1.
    assert_eq!(lc_pick(&[1, 2], &[2, 3]), 1);
    // 5/1 > 9/2.
    assert_eq!(lc_pick(&[1, 2], &[5, 9]), 1);
    // 4/1 < 9/2.
    assert_eq!(lc_pick(&[1, 2], &[4, 9]), 0);
    // Weight 0 counts as 1: 3/1 > 2/1.
    assert_eq!(lc_pick(&[0, 1], &[3, 2]), 1);
    // Huge loads and weights do not overflow.
    assert_eq!(lc_pick(&[u32::MAX, 1], &[usize::MAX, usize::MAX - 1]), 0);
}

#[test]
fn least_connections_ties_spread_round_robin_on_idle_system() {
    let lc = LeastConnections::new(&members(&[1, 1, 1]));
    assert_eq!(picks(&lc, 6), [0, 1, 2, 0, 1, 2]);
    // Equal ratios count as ties too: 2/2 == 1/1.
    let lc = LeastConnections::new(&members(&[2, 1]));
    let ctx = PickContext { hash_key: &[], in_flight: &|i| [2, 1][i], response_times: None };
    let got: Vec<usize> = (0..4).map(|_| lc.select(&ctx, &mut |_| true).unwrap()).collect();
    assert_eq!(got, [0, 1, 0, 1]);
}

#[test]
fn least_connections_skips_unusable_members_in_order_of_load() {
    let lc = LeastConnections::new(&members(&[1, 1, 1, 1]));
    let loads = [3, 0, 1, 2];
    let ctx = PickContext { hash_key: &[], in_flight: &|i| loads[i], response_times: None };
    assert_eq!(lc.select(&ctx, &mut |i| i != 1), Some(2));
    assert_eq!(lc.select(&ctx, &mut |i| i == 0 || i == 3), Some(3));
    assert_eq!(lc.select(&ctx, &mut |i| i == 0), Some(0));
    let mut offered = Vec::new();
    lc.select(&ctx, &mut |i| {
        offered.push(i);
        false
    });
    assert_eq!(offered, [1, 2, 3, 0]);
}

// -------------------------------------------------------------- AlgorithmKind

#[test]
fn algorithm_kind_parses_the_six_names() {
    assert_eq!("round_robin".parse(), Ok(AlgorithmKind::RoundRobin));
    assert_eq!("weighted_round_robin".parse(), Ok(AlgorithmKind::WeightedRoundRobin));
    assert_eq!("ip_hash".parse(), Ok(AlgorithmKind::IpHash));
    assert_eq!("least_connections".parse(), Ok(AlgorithmKind::LeastConnections));
    assert_eq!("p2c".parse(), Ok(AlgorithmKind::P2c));
    assert_eq!("peak_ewma".parse(), Ok(AlgorithmKind::PeakEwma));
    for kind in AlgorithmKind::ALL {
        assert_eq!(kind.name().parse(), Ok(kind));
        assert_eq!(kind.to_string(), kind.name());
    }
}

#[test]
fn algorithm_kind_unknown_name_error_lists_valid_names() {
    let err = "random".parse::<AlgorithmKind>().unwrap_err();
    assert_eq!(err.name(), "random");
    assert_eq!(
        err.to_string(),
        "unknown algorithm 'random' (expected one of: round_robin, weighted_round_robin, \
         ip_hash, least_connections, p2c, peak_ewma)"
    );
    assert!("RoundRobin".parse::<AlgorithmKind>().is_err());
    assert!("".parse::<AlgorithmKind>().is_err());
}

#[test]
fn algorithm_kind_names_and_display_names() {
    let table = [
        (AlgorithmKind::RoundRobin, "round_robin", "RoundRobinBalancer"),
        (AlgorithmKind::WeightedRoundRobin, "weighted_round_robin", "WeightedRoundRobinBalancer"),
        (AlgorithmKind::IpHash, "ip_hash", "IPHashBalancer"),
        (AlgorithmKind::LeastConnections, "least_connections", "LeastConnectionsBalancer"),
        (AlgorithmKind::P2c, "p2c", "P2CBalancer"),
        (AlgorithmKind::PeakEwma, "peak_ewma", "PeakEWMABalancer"),
    ];
    for (kind, name, display) in table {
        assert_eq!(kind.name(), name);
        assert_eq!(kind.display_name(), display);
        assert_eq!(kind.build(&members(&[1, 2])).name(), name);
    }
    assert_eq!(AlgorithmKind::ALL.len(), 6);
}

// ------------------------------------------------------------------------ all

fn all_algorithms(members: &[Member]) -> Vec<Box<dyn Algorithm>> {
    AlgorithmKind::ALL.iter().map(|k| k.build(members)).collect()
}

#[test]
fn every_member_offered_at_most_once_when_all_refuse() {
    for weights in [&[1][..], &[1, 2, 1], &[5, 1, 1], &[3; 10], &[1, 7, 2, 9, 4]] {
        let members = members(weights);
        let n = members.len();
        for algo in all_algorithms(&members) {
            for round in 0..20u32 {
                let key = round.to_be_bytes();
                let loads = |i: usize| (i * 7 + round as usize) % 5;
                let ctx = PickContext { hash_key: &key, in_flight: &loads, response_times: None };
                let mut offered = vec![0; n];
                let got = algo.select(&ctx, &mut |i| {
                    offered[i] += 1;
                    false
                });
                assert_eq!(got, None);
                assert_eq!(offered, vec![1; n], "{} {weights:?}", algo.name());
            }
        }
    }
}

#[test]
fn every_member_offered_at_most_once_with_many_members() {
    // Beyond the 256 members an algorithm tracks without allocating.
    let weights: Vec<u32> = (0..300).map(|i| 1 + i % 5).collect();
    let members = members(&weights);
    for algo in all_algorithms(&members) {
        let mut offered = vec![0; members.len()];
        let ctx = PickContext::with_key(&[1, 2, 3, 4]);
        assert_eq!(
            algo.select(&ctx, &mut |i| {
                offered[i] += 1;
                false
            }),
            None
        );
        assert!(offered.iter().all(|&c| c == 1), "{}", algo.name());
        // Only the last one usable: found, nobody offered twice.
        let mut offered = vec![0; members.len()];
        assert_eq!(
            algo.select(&ctx, &mut |i| {
                offered[i] += 1;
                i == 299
            }),
            Some(299)
        );
        assert!(offered.iter().all(|&c| c <= 1), "{}", algo.name());
    }
}

#[test]
fn the_only_usable_member_is_found() {
    let members = members(&[1, 2, 1, 3]);
    for algo in all_algorithms(&members) {
        for target in 0..members.len() {
            for _ in 0..10 {
                let ctx = PickContext::with_key(&[9, 9, 9, 9]);
                assert_eq!(algo.select(&ctx, &mut |i| i == target), Some(target));
            }
        }
    }
}

#[test]
fn empty_membership_selects_none() {
    for algo in all_algorithms(&[]) {
        let mut calls = 0;
        let got = algo.select(&PickContext::with_key(&[1, 2, 3, 4]), &mut |_| {
            calls += 1;
            true
        });
        assert_eq!(got, None, "{}", algo.name());
        assert_eq!(calls, 0);
    }
}

#[test]
fn single_member_refused_selects_none() {
    for algo in all_algorithms(&members(&[3])) {
        assert_eq!(algo.select(&PickContext::idle(), &mut |_| false), None);
        assert_eq!(algo.select(&PickContext::idle(), &mut |_| true), Some(0));
    }
}

#[test]
fn algorithms_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn Algorithm>();
    assert_send_sync::<RoundRobin>();
    assert_send_sync::<WeightedRoundRobin>();
    assert_send_sync::<IpHash>();
    assert_send_sync::<LeastConnections>();
    assert_send_sync::<P2c>();
    assert_send_sync::<PeakEwma>();
    assert_send_sync::<ResponseTime>();
}

// ------------------------------------------------------------------------ p2c

#[test]
fn p2c_same_seed_same_picks() {
    let members = members(&[1, 2, 3, 1, 1]);
    let loads = |i: usize| i % 3;
    let ctx = PickContext { in_flight: &loads, ..PickContext::idle() };
    let run = |seed| {
        let algo = AlgorithmKind::P2c.build_seeded(&members, seed);
        (0..200).map(|_| algo.select(&ctx, &mut |_| true).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn p2c_never_picks_the_most_loaded_of_many() {
    // The busiest member loses every duel it is drawn into.
    let members = members(&[1; 50]);
    let algo = P2c::with_seed(&members, 11);
    let loads = |i: usize| if i == 17 { 1000 } else { i % 4 };
    let ctx = PickContext { in_flight: &loads, ..PickContext::idle() };
    assert!((0..5000).all(|_| algo.select(&ctx, &mut |_| true) != Some(17)));
}

#[test]
fn p2c_reads_two_loads_per_pick_whatever_the_size() {
    for n in [3, 100, 1000] {
        let members = members(&vec![1; n]);
        let algo = P2c::with_seed(&members, 1);
        let reads = std::cell::Cell::new(0usize);
        let loads = |i: usize| {
            reads.set(reads.get() + 1);
            i % 7
        };
        let ctx = PickContext { in_flight: &loads, ..PickContext::idle() };
        for _ in 0..100 {
            algo.select(&ctx, &mut |_| true);
        }
        assert_eq!(reads.get(), 200, "n = {n}");
    }
}

// ------------------------------------------------------------------ peak_ewma

struct Cells(Vec<ResponseTime>, u64);

impl ResponseTimes for Cells {
    fn of(&self, i: usize) -> &ResponseTime {
        &self.0[i]
    }
    fn now(&self) -> u64 {
        self.1
    }
}

fn cells(millis: &[u64]) -> Cells {
    let cells = Cells((0..millis.len()).map(|_| ResponseTime::new(Duration::from_secs(10))).collect(), 0);
    for (cell, &ms) in cells.0.iter().zip(millis) {
        cell.observe(Duration::from_millis(ms), 0);
    }
    cells
}

#[test]
fn peak_ewma_prefers_the_fast_member_until_its_queue_costs_more() {
    let algo = PeakEwma::with_seed(&members(&[1, 1]), 3);
    let cells = cells(&[10, 100]);
    // 10 ms × (k + 1) against 100 ms × 1: the fast one until it has 10 in flight.
    for (fast_load, expected) in [(0, 0), (5, 0), (8, 0), (10, 1), (20, 1)] {
        let loads = |i: usize| if i == 0 { fast_load } else { 0 };
        let ctx = PickContext { in_flight: &loads, response_times: Some(&cells), ..PickContext::idle() };
        assert_eq!(algo.select(&ctx, &mut |_| true), Some(expected), "fast member with {fast_load} in flight");
    }
}

#[test]
fn peak_ewma_divides_the_cost_by_the_weight() {
    let algo = PeakEwma::with_seed(&members(&[1, 4]), 3);
    // 30 ms for member 1 but weight 4: 7.5 < 10.
    let cells = cells(&[10, 30]);
    let ctx = PickContext { response_times: Some(&cells), ..PickContext::idle() };
    assert!((0..20).all(|_| algo.select(&ctx, &mut |_| true) == Some(1)));
}

#[test]
fn peak_ewma_without_response_times_is_p2c() {
    let members = members(&[1, 2, 1, 3]);
    let (peak, p2c) = (PeakEwma::with_seed(&members, 8), P2c::with_seed(&members, 8));
    let loads = |i: usize| (i * 5) % 3;
    let ctx = PickContext { in_flight: &loads, ..PickContext::idle() };
    for _ in 0..500 {
        assert_eq!(peak.select(&ctx, &mut |_| true), p2c.select(&ctx, &mut |_| true));
    }
}

// ------------------------------------------------------------------- failover

/// Members' standing for [`failover::pick`], with the slow-start offers it was asked.
struct Fleet {
    enabled: Vec<bool>,
    healthy: Vec<bool>,
    breaker: Vec<bool>,
    ramp: Vec<bool>,
    ramp_asked: std::cell::RefCell<Vec<usize>>,
}

impl Fleet {
    fn all_good(n: usize) -> Fleet {
        Fleet {
            enabled: vec![true; n],
            healthy: vec![true; n],
            breaker: vec![true; n],
            ramp: vec![true; n],
            ramp_asked: Default::default(),
        }
    }
}

impl Standing for Fleet {
    fn enabled(&self, i: usize) -> bool {
        self.enabled[i]
    }
    fn healthy(&self, i: usize) -> bool {
        self.healthy[i]
    }
    fn breaker_allows(&self, i: usize) -> bool {
        self.breaker[i]
    }
    fn ramp_admits(&self, i: usize) -> bool {
        self.ramp_asked.borrow_mut().push(i);
        self.ramp[i]
    }
}

#[test]
fn failover_skips_down_members_and_ignores_breakers_only_when_nothing_else_is_left() {
    let members = members(&[1, 1, 1]);
    let rr = AlgorithmKind::RoundRobin.build(&members);
    let ctx = PickContext::idle();
    let mut fleet = Fleet::all_good(3);
    fleet.healthy[0] = false;
    fleet.breaker[1] = false;
    // Member 2 is the only usable one.
    for _ in 0..3 {
        assert_eq!(failover::pick(rr.as_ref(), &ctx, false, &fleet, &mut |_| true), Some((2, PickKind::Usable)));
    }
    // Member 2 refused by the caller (already tried): an open breaker is ignored, a down member is not.
    assert_eq!(failover::pick(rr.as_ref(), &ctx, false, &fleet, &mut |i| i != 2), Some((1, PickKind::BreakersIgnored)));
    // Panic mode: even the down one.
    assert_eq!(failover::pick(rr.as_ref(), &ctx, true, &fleet, &mut |i| i == 0), Some((0, PickKind::Panic)));
    assert_eq!(failover::pick(rr.as_ref(), &ctx, false, &fleet, &mut |i| i == 0), None);
}

#[test]
fn failover_takes_a_ramping_member_when_slow_start_declines_every_offer() {
    let members = members(&[1, 1]);
    let rr = AlgorithmKind::RoundRobin.build(&members);
    let mut fleet = Fleet::all_good(2);
    fleet.ramp = vec![false, false];
    let got = failover::pick(rr.as_ref(), &PickContext::idle(), false, &fleet, &mut |_| true);
    assert_eq!(got.map(|p| p.1), Some(PickKind::Usable));
    assert_eq!(fleet.ramp_asked.borrow().len(), 2, "each member's ramp asked once");
}
