//! Which pool of a `split` takes a request: weighted rendezvous hashing. Each pool draws a
//! score for a client's key ([`client_key`]: its address) from a hash of the two, scaled by
//! its weight, and the highest score wins, so a pool's share is its weight over the total and
//! the same client stays on its side. Raising one pool's weight (a canary from 5 % to 10 %)
//! raises only its scores: clients move only to it, and only as many as its new share needs;
//! adding or removing a pool moves only that pool's clients. The order the pools are written
//! in does not matter. A pool with no usable backend gives its clients, and only them, to the
//! usable pools, in proportion to their weights (each client's runner-up).

use std::net::IpAddr;

use super::action::SplitShare;
use crate::balance::hash::{fmix64, hash64};

/// The key a split hashes for a client: its address as text (as
/// [client_ip](crate::client_ip) reads it). The proxy, `lb-sync route` and `lb-sync simulate`
/// all key through this, so they put a client on the same side.
///
/// ```
/// use lb_sync::routing::client_key;
/// assert_eq!(client_key("203.0.113.7".parse().unwrap()), "203.0.113.7");
/// ```
pub fn client_key(client: IpAddr) -> String {
    client.to_string()
}

/// The pool of `shares` for a client whose key is `key`; `usable` says whether a pool has a
/// backend to take it. When no pool with weight is usable, the client's own pool (its pool
/// answers as it does with no backend). `None` only when every weight is 0.
///
/// ```
/// use lb_sync::routing::{split_pool, SplitShare};
/// let shares = [
///     SplitShare { pool: "stable".into(), weight: 95 },
///     SplitShare { pool: "canary".into(), weight: 5 },
/// ];
/// let pool = split_pool(&shares, b"203.0.113.7", |_| true).unwrap();
/// assert_eq!(split_pool(&shares, b"203.0.113.7", |_| true), Some(pool), "the same client, the same side");
/// assert_eq!(split_pool(&shares, b"203.0.113.7", |p| p != "canary"), Some("stable"));
/// ```
pub fn split_pool<'a>(shares: &'a [SplitShare], key: &[u8], usable: impl Fn(&str) -> bool) -> Option<&'a str> {
    let client = hash64(key);
    let best = |open: &dyn Fn(&SplitShare) -> bool| {
        shares
            .iter()
            .filter(|s| s.weight > 0 && open(s))
            .map(|s| (score(client, s), s))
            .max_by(|(a, _), (b, _)| a.total_cmp(b))
            .map(|(_, s)| s.pool.as_str())
    };
    best(&|s| usable(&s.pool)).or_else(|| best(&|_| true))
}

/// The pool's score for a client: `weight / -ln(u)`, `u` uniform in (0, 1) from the client's
/// and the pool's hashes. `-ln(u) / weight` is exponential with rate `weight`, and the least of
/// independent exponentials is pool `i`'s with probability `weight_i / total`.
fn score(client: u64, share: &SplitShare) -> f64 {
    let draw = fmix64(client ^ hash64(share.pool.as_bytes()));
    // The top 53 bits, as the midpoint of their interval: never 0, never 1.
    let u = ((draw >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(share.weight) / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[(&str, u32)]) -> Vec<SplitShare> {
        weights.iter().map(|&(pool, weight)| SplitShare { pool: pool.into(), weight }).collect()
    }

    fn clients() -> impl Iterator<Item = Vec<u8>> {
        (0..10_000u32).map(|n| format!("10.{}.{}.{}", n >> 16, (n >> 8) & 0xff, n & 0xff).into_bytes())
    }

    #[test]
    fn a_95_5_split_over_10000_clients_is_within_1_percent_and_every_client_stays() {
        let split = shares(&[("stable", 95), ("canary", 5)]);
        let mut canary = 0;
        for key in clients() {
            let pool = split_pool(&split, &key, |_| true).unwrap();
            canary += usize::from(pool == "canary");
            for _ in 0..3 {
                assert_eq!(split_pool(&split, &key, |_| true), Some(pool), "a client changed sides");
            }
        }
        eprintln!("95/5 over 10,000 clients: {canary} to the canary");
        assert!((400..=600).contains(&canary), "canary took {canary} of 10,000 clients, 500 ± 100 expected");
    }

    #[test]
    fn moving_the_canary_from_5_to_10_percent_moves_only_clients_that_must_move() {
        let before = shares(&[("stable", 95), ("canary", 5)]);
        let after = shares(&[("stable", 90), ("canary", 10)]);
        let mut moved = 0;
        for key in clients() {
            let (was, is) = (split_pool(&before, &key, |_| true), split_pool(&after, &key, |_| true));
            if was != is {
                assert_eq!((was, is), (Some("stable"), Some("canary")), "only stable clients move, to the canary");
                moved += 1;
            }
        }
        eprintln!("5 -> 10 %: {moved} of 10,000 clients moved, every one stable -> canary");
        assert!((400..=600).contains(&moved), "{moved} of 10,000 clients moved, 500 ± 100 expected");
    }

    #[test]
    fn a_pool_without_backends_gives_only_its_own_clients_away_by_weight() {
        let split = shares(&[("a", 50), ("b", 30), ("c", 20)]);
        let (mut to_a, mut to_b) = (0, 0);
        for key in clients() {
            let all_up = split_pool(&split, &key, |_| true).unwrap();
            let c_down = split_pool(&split, &key, |p| p != "c").unwrap();
            if all_up == "c" {
                to_a += usize::from(c_down == "a");
                to_b += usize::from(c_down == "b");
            } else {
                assert_eq!(c_down, all_up, "a client of a usable pool moved");
            }
        }
        // c's clients go 50:30 to a and b.
        let share_a = to_a as f64 / (to_a + to_b) as f64;
        assert!((0.575..=0.675).contains(&share_a), "{to_a} to a, {to_b} to b");
        // Nobody usable: each client stays with its own pool, which answers as it can.
        assert_eq!(split_pool(&split, b"x", |_| false), split_pool(&split, b"x", |_| true));
    }

    #[test]
    fn a_pool_added_takes_only_its_share_and_the_order_written_moves_nobody() {
        let before = shares(&[("a", 50), ("b", 30), ("c", 20)]);
        let added = shares(&[("c", 20), ("a", 50), ("d", 25), ("b", 30)]);
        let mut to_d = 0;
        for key in clients() {
            let (was, is) = (split_pool(&before, &key, |_| true).unwrap(), split_pool(&added, &key, |_| true).unwrap());
            if was != is {
                assert_eq!(is, "d", "a client moved from {was} to {is}, not to the new pool");
                to_d += 1;
            }
            let reordered = shares(&[("c", 20), ("b", 30), ("a", 50)]);
            assert_eq!(split_pool(&reordered, &key, |_| true), Some(was), "the order written moved a client");
        }
        // d's share of 125 is 20 %.
        assert!((1_800..=2_200).contains(&to_d), "{to_d} of 10,000 clients moved to d, 2,000 ± 200 expected");
    }

    #[test]
    fn zero_weights_take_nobody() {
        let split = shares(&[("stable", 1), ("dark", 0)]);
        assert!(clients().take(1000).all(|key| split_pool(&split, &key, |_| true) == Some("stable")));
        assert_eq!(split_pool(&shares(&[("a", 0)]), b"x", |_| true), None);
    }
}
