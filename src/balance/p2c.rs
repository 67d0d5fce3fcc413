//! Power of two choices: two random candidates, the less loaded one wins.

use std::cmp::Ordering;

use super::random::{Draw, Stream};
use super::{effective_weight, Algorithm, Member, PickContext};

/// Power of two choices (Mitzenmacher's "two random choices"; Envoy's `LEAST_REQUEST`,
/// HAProxy's `random(2)`, nginx's `random two least_conn`, Traefik's `p2c`): each pick draws
/// two different members, in proportion to their weights, and takes the one with fewer
/// in-flight requests per unit of weight (compared exactly, by cross-multiplication); on a tie
/// the first drawn wins, so an idle system's shares follow the weights.
///
/// A pick reads two loads, whatever the number of members: O(1), where least_connections reads
/// them all. It needs no lock either: concurrent picks draw different pairs, so they do not
/// all pile onto the one least-loaded member (the herd that least_connections avoids with a
/// lock), and the choice of the less loaded of two random members keeps the worst load within
/// `log log n` of the mean (the "power of two choices").
///
/// When the winner is refused, the other members are offered in order of load ratio, each
/// once (the loser of the duel first among equals); only that failover path allocates.
///
/// ```
/// use lb_sync::balance::{Algorithm, Member, P2c, PickContext};
///
/// let members = [Member::new("a", 1), Member::new("b", 1)];
/// let p2c = P2c::with_seed(&members, 1);
/// let loads = [5, 0];
/// let ctx = PickContext { in_flight: &|i| loads[i], ..PickContext::idle() };
/// // With two members every pair is {a, b}: the idle one wins every time.
/// assert!((0..10).all(|_| p2c.select(&ctx, &mut |_| true) == Some(1)));
/// // Member 1 refused: member 0 is the only one left.
/// assert_eq!(p2c.select(&ctx, &mut |i| i != 1), Some(0));
/// ```
#[derive(Debug)]
pub struct P2c {
    weights: Box<[u32]>,
    draw: Draw,
    stream: Stream,
}

impl P2c {
    /// Power of two choices over `members`, drawing from each calling thread's own random stream (seeded from
    /// the process's random keys): what the proxy uses.
    #[must_use]
    pub fn new(members: &[Member]) -> Self {
        P2c { stream: Stream::per_thread(), ..P2c::with_seed(members, 0) }
    }

    /// The same with a fixed seed: the same seed draws the same pairs (the simulator's runs
    /// are reproducible).
    #[must_use]
    pub fn with_seed(members: &[Member], seed: u64) -> Self {
        P2c {
            weights: members.iter().map(|m| effective_weight(m.weight)).collect(),
            draw: Draw::new(members),
            stream: Stream::new(seed),
        }
    }

    /// How many members it picks from.
    pub(super) fn members(&self) -> usize {
        self.weights.len()
    }

    /// Compares the load ratios `load_a / weight_a` and `load_b / weight_b` exactly.
    fn compare(&self, ctx: &PickContext<'_>, a: usize, b: usize) -> Ordering {
        Ratio::order(&self.ratio(ctx, a), &self.ratio(ctx, b))
    }

    /// Member `i`'s load ratio now, as the failover sorts by it.
    fn ratio(&self, ctx: &PickContext<'_>, i: usize) -> Ratio {
        Ratio { load: (ctx.in_flight)(i) as u64, weight: self.weights[i] }
    }

    /// The pick of both power-of-two-choices algorithms, by any order (peak_ewma brings its
    /// own): draws a pair, offers the one `compare` ranks first (`Less` = better; the first
    /// drawn on a tie); when it is refused, offers the others by `rank` in `order` (a total order: lowest first), each
    /// once (the pair's loser first among equals).
    ///
    /// The failover reads each member's rank once and sorts the readings: a sort that compared
    /// live loads (which other workers change meanwhile), or costs decayed pairwise (which
    /// rounding can make intransitive), would not be a total order, and Rust's sort may panic
    /// on one that is not.
    pub(super) fn choose<K>(
        &self,
        compare: &impl Fn(usize, usize) -> Ordering,
        rank: &impl Fn(usize) -> K,
        order: &impl Fn(&K, &K) -> Ordering,
        usable: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        let n = self.weights.len();
        match n {
            0 => return None,
            1 => return usable(0).then_some(0),
            _ => {}
        }
        let (first, second) = self.draw.pair(&self.stream, n);
        let (winner, loser) = if compare(second, first) == Ordering::Less { (second, first) } else { (first, second) };
        if usable(winner) {
            return Some(winner);
        }
        // Failover: the others by rank, ties in scan order starting at the loser (so on equal
        // loads the loser is next, then the members after it).
        let mut rest: Vec<(K, usize)> =
            (loser..n).chain(0..loser).filter(|&i| i != winner).map(|i| (rank(i), i)).collect();
        // Stable: among equal ranks, scan order.
        rest.sort_by(|a, b| order(&a.0, &b.0));
        rest.into_iter().map(|(_, i)| i).find(|&i| usable(i))
    }
}

/// A load ratio `load / weight` (weight >= 1).
#[derive(Clone, Copy, Debug)]
struct Ratio {
    load: u64,
    weight: u32,
}

impl Ratio {
    /// Exactly, by cross-multiplication (a total order of the values read).
    fn order(a: &Ratio, b: &Ratio) -> Ordering {
        (u128::from(a.load) * u128::from(b.weight)).cmp(&(u128::from(b.load) * u128::from(a.weight)))
    }
}

impl Algorithm for P2c {
    fn select(&self, ctx: &PickContext<'_>, usable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        self.choose(&|a, b| self.compare(ctx, a, b), &|i| self.ratio(ctx, i), &Ratio::order, usable)
    }

    fn name(&self) -> &'static str {
        "p2c"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights.iter().enumerate().map(|(i, &w)| Member::new(format!("m{i}"), w)).collect()
    }

    #[test]
    fn idle_shares_follow_the_weights() {
        let weights = [1, 2, 1];
        let p2c = P2c::with_seed(&members(&weights), 3);
        let ctx = PickContext::idle();
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[p2c.select(&ctx, &mut |_| true).unwrap()] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let expected = 10_000 * w;
            assert!(counts[i].abs_diff(expected) < expected / 20, "{counts:?}");
        }
    }

    #[test]
    fn the_less_loaded_of_the_pair_wins() {
        let p2c = P2c::with_seed(&members(&[1; 10]), 5);
        // Member 0 is far busier than the others: it can only win a duel it is not in... never.
        let loads = |i: usize| if i == 0 { 100 } else { 1 };
        let ctx = PickContext { in_flight: &loads, ..PickContext::idle() };
        assert!((0..1000).all(|_| p2c.select(&ctx, &mut |_| true) != Some(0)));
    }

    #[test]
    fn a_failover_while_loads_change_offers_each_member_once() {
        // Other workers change the loads while a failover sorts: each read here is another
        // value. A sort that compared live loads was no total order (Rust's sort may panic on
        // one); the failover reads each member's load once.
        let p2c = P2c::with_seed(&members(&[1; 200]), 11);
        let reads = std::cell::Cell::new(0u64);
        let in_flight = |_: usize| {
            reads.set(reads.get() + 1);
            (crate::balance::random::splitmix64(reads.get()) % 50) as usize
        };
        let ctx = PickContext { in_flight: &in_flight, ..PickContext::idle() };
        for _ in 0..20 {
            let mut offered = Vec::new();
            assert_eq!(
                p2c.select(&ctx, &mut |i| {
                    offered.push(i);
                    false
                }),
                None
            );
            offered.sort_unstable();
            assert_eq!(offered, (0..200).collect::<Vec<_>>(), "each member offered once");
        }
    }

    #[test]
    fn a_refused_winner_falls_back_in_order_of_load() {
        let p2c = P2c::with_seed(&members(&[1; 5]), 9);
        let loads = [4usize, 3, 2, 1, 0];
        let ctx = PickContext { in_flight: &|i| loads[i], ..PickContext::idle() };
        for _ in 0..50 {
            let mut offered = Vec::new();
            let got = p2c.select(&ctx, &mut |i| {
                offered.push(i);
                false
            });
            assert_eq!(got, None);
            let mut sorted = offered.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3, 4], "each member offered once");
            // After the winner, strictly in order of load.
            assert!(offered[1..].windows(2).all(|w| loads[w[0]] < loads[w[1]]), "{offered:?}");
        }
    }
}
