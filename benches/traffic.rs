//! Cost of one rate-limit check and of the sticky-cookie steps, on 1 thread.
//!
//! Rate limits: each check is at an instant 1 µs after the previous one and the rates are high
//! (10^6/s), so checks are allowed and every one writes its bucket (the costlier path; a
//! rejection writes nothing). `per_client/200000_keys` cycles through 200 000 random addresses
//! against the default table of 100 000 entries, full before measuring: a cycle twice the
//! table's size defeats any recency policy, so every check misses and evicts an entry (the
//! eviction path, as under a flood of spoofed addresses). Its rate is 1/s, so the entries it
//! evicts still owe tokens: none is dropped for being refilled.
//!
//! Sticky: resolving a cookie's token in an index of 3 and 100 backends, finding our cookie in
//! a typical `Cookie` header and taking it out of the header sent upstream (both per request
//! with sticky sessions on), computing one token (HMAC-SHA256) and building the index of 100
//! backends (once per membership change).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb_sync::traffic::{RateLimitConfig, RateLimiter, StickyCookie, StickyIndex};

const RATE: f64 = 1_000_000.0;
const STEP: Duration = Duration::from_micros(1);
const KEYS: usize = 200_000;

/// `n` pseudo-random IPv4 addresses (xorshift64*, fixed seed: the same keys every run).
fn random_ips(n: usize) -> Vec<IpAddr> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            IpAddr::V4(Ipv4Addr::from((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32))
        })
        .collect()
}

/// Checks `limiter` once per iteration, with the client at `keys[k]` for k = 0, 1, 2… (cycling)
/// and the clock 1 µs later each time.
fn bench_checks(c: &mut Criterion, name: &str, limiter: &RateLimiter, keys: &[IpAddr]) {
    let mut now = Instant::now();
    let mut k = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            now += STEP;
            k = if k + 1 == keys.len() { 0 } else { k + 1 };
            black_box(limiter.check(keys[k], now))
        });
    });
}

fn rate_limit(c: &mut Criterion) {
    let one_key = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))];
    let global = RateLimitConfig { rate: RATE, burst: 1000, ..RateLimitConfig::default() };
    let per_client = RateLimitConfig { client_rate: RATE, client_burst: 1000, ..RateLimitConfig::default() };
    let both = RateLimitConfig { rate: RATE, burst: 1000, ..per_client.clone() };

    bench_checks(c, "rate_limit/global_only", &RateLimiter::new(&global).unwrap(), &one_key);
    bench_checks(c, "rate_limit/per_client/1_key", &RateLimiter::new(&per_client).unwrap(), &one_key);
    bench_checks(c, "rate_limit/global_and_per_client/1_key", &RateLimiter::new(&both).unwrap(), &one_key);

    let keys = random_ips(KEYS);
    let flood = RateLimitConfig { client_rate: 1.0, client_burst: 1000, ..RateLimitConfig::default() };
    let limiter = RateLimiter::new(&flood).unwrap();
    let now = Instant::now();
    for &key in &keys {
        limiter.check(key, now);
    }
    assert!(limiter.entries() <= flood.max_clients);
    bench_checks(c, &format!("rate_limit/per_client/{KEYS}_keys"), &limiter, &keys);
    println!("per-client table after the run: {} entries of at most {}", limiter.entries(), flood.max_clients);
}

fn sticky(c: &mut Criterion) {
    let cookie = StickyCookie::new("lb", Some("bench secret"), Duration::from_secs(3600));
    let mut group = c.benchmark_group("sticky/resolve");
    for n in [3, 100] {
        let backends: Vec<(String, String)> =
            (0..n).map(|i| (format!("backend{i}"), format!("10.0.{}.{}:8080", i / 256, i % 256))).collect();
        let index = StickyIndex::new(
            &cookie,
            backends.iter().enumerate().map(|(i, (id, addr))| (i, id.as_str(), addr.as_str())),
        );
        let tokens: Vec<String> = (0..n).map(|i| index.token_for(i).unwrap().to_string()).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = if i + 1 == tokens.len() { 0 } else { i + 1 };
                black_box(index.resolve(black_box(&tokens[i])))
            });
        });
    }
    group.finish();

    let token = cookie.token("backend1", "10.0.0.1:8080");
    let header = format!(
        "_ga=GA1.2.1234567890.1700000000; session_id=5f2b8c9e0a1d4e7f9b3c; theme=dark; lb={token}; \
         _gid=GA1.2.987654321.1700000000"
    );
    c.bench_function("sticky/find_cookie", |b| {
        b.iter(|| black_box(cookie.find_cookie(std::iter::once(black_box(header.as_bytes())))));
    });
    c.bench_function("sticky/without_cookie", |b| {
        b.iter(|| black_box(cookie.without_cookie(black_box(header.as_bytes()))));
    });
    c.bench_function("sticky/token", |b| {
        b.iter(|| black_box(cookie.token(black_box("backend1"), black_box("10.0.0.1:8080"))));
    });
    // Once per membership change (the first request after it builds the index).
    let backends: Vec<(String, String)> =
        (0..100).map(|i| (format!("backend{i}"), format!("10.0.{}.{}:8080", i / 256, i % 256))).collect();
    c.bench_function("sticky/index_build/100", |b| {
        b.iter(|| {
            let entries = backends.iter().enumerate().map(|(i, (id, addr))| (i, id.as_str(), addr.as_str()));
            black_box(StickyIndex::new(&cookie, entries))
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = rate_limit, sticky
}
criterion_main!(benches);
