//! Route lookup (`RouteTable::lookup`) at 10 and 1,000 routes, mostly host + prefix, some exact
//! paths, a few regexes, and wildcard hosts. Issue 26's target: 100 ns at 10, 300 ns at 1,000.
//! Four requests each: one a host's prefix takes, one an exact path takes, one that only a regex
//! takes (after its host group's exact paths and prefixes were tried), and one whose host only
//! a wildcard takes (after the exact-host map and a longer suffix missed). Also what every
//! request pays before a lookup: its target made canonical (a plain path is checked and
//! borrowed; a dotted, encoded one rebuilt) and its host made comparable; and a split's choice
//! of pool for a client (2 and 4 pools).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb_sync::routing::{canonical_host, client_key, split_pool, RequestView, RouteConfig, RouteTable, SplitShare};
use lb_sync::server::{canonical_target, Header, PathRules};

/// `n` routes: per host, three prefixes and one exact path; every 25th host a regex too; a
/// wildcard per 50 hosts; and a few routes without a host.
fn routes(n: usize) -> Vec<RouteConfig> {
    let mut json = Vec::new();
    let mut host = 0;
    while json.len() < n {
        let name = format!("svc{host}.example.com");
        for prefix in ["/api", "/static/", "/v2/items"] {
            json.push(format!(r#"{{"host": "{name}", "path_prefix": "{prefix}", "pool": "p{host}"}}"#));
        }
        json.push(format!(r#"{{"host": "{name}", "path": "/health", "pool": "p{host}"}}"#));
        if host % 25 == 0 {
            json.push(format!(r#"{{"host": "{name}", "path_regex": "/u/[0-9]+/profile", "pool": "p{host}"}}"#));
        }
        if host % 50 == 0 {
            json.push(format!(r#"{{"host": "*.zone{host}.example.com", "path_prefix": "/", "pool": "p{host}"}}"#));
            json.push(format!(r#"{{"path_prefix": "/shared{host}", "methods": ["GET"], "pool": "p{host}"}}"#));
        }
        host += 1;
    }
    json.truncate(n);
    let list: Vec<String> =
        json.iter().enumerate().map(|(i, route)| route.replacen('{', &format!(r#"{{"name": "r{i}", "#), 1)).collect();
    serde_json::from_str(&format!("[{}]", list.join(","))).unwrap()
}

fn bench(c: &mut Criterion) {
    let headers = [Header::new("User-Agent", "bench"), Header::new("Accept", "*/*")];
    let mut group = c.benchmark_group("route_lookup");
    for n in [10, 1_000] {
        let table = RouteTable::build(&routes(n)).unwrap();
        let host = if n == 10 { "svc0.example.com" } else { "svc200.example.com" };
        let cases = [
            ("prefix", "/api/users/42/orders"),
            ("exact", "/health"),
            ("regex", "/u/7/profile"),
            ("wildcard", "/api/users"),
        ];
        for (kind, path) in cases {
            let regex_host = match kind {
                "regex" => "svc0.example.com",
                "wildcard" => "a.b.zone0.example.com",
                _ => host,
            };
            let view = RequestView { method: "GET", host: Some(regex_host), path, query: "a=1", headers: &headers };
            assert!(table.lookup(&view).is_some(), "{n} {kind}");
            group.bench_with_input(BenchmarkId::new(kind, n), &view, |b, view| {
                b.iter(|| table.lookup(std::hint::black_box(view)).map(|r| r.position))
            });
        }
    }
    group.finish();
    let mut group = c.benchmark_group("request_side");
    let rules = PathRules::default();
    for (kind, target) in [("plain_path", "/api/users/42/orders?x=1"), ("dotted_path", "/a/./b/../%7euser//x?y=1")] {
        group.bench_with_input(kind, target, |b, target| {
            b.iter(|| canonical_target(std::hint::black_box(target), &rules).map(|t| t.len()))
        });
    }
    group.bench_function("host", |b| b.iter(|| canonical_host(std::hint::black_box("API.Example.com.:8080")).len()));
    group.finish();
    // A split's choice per request: the client's key, then one score per pool.
    let mut group = c.benchmark_group("split");
    for pools in [2usize, 4] {
        let shares: Vec<SplitShare> =
            (0..pools).map(|i| SplitShare { pool: format!("pool{i}"), weight: if i == 0 { 95 } else { 5 } }).collect();
        let client: std::net::IpAddr = "203.0.113.7".parse().unwrap();
        group.bench_with_input(BenchmarkId::new("pools", pools), &shares, |b, shares| {
            b.iter(|| {
                let key = client_key(std::hint::black_box(client));
                split_pool(shares, key.as_bytes(), |_| true).map(str::len)
            })
        });
    }
    group.finish();
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
