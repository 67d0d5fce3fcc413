//! Fewest in-flight requests per unit of weight.

use std::cmp::Ordering;

use super::{effective_weight, Algorithm, Cursor, Member, PickContext};

/// Least connections, weighted: prefers the member with the fewest in-flight
/// requests per unit of weight (`ctx.in_flight(i) / weight`), compared
/// exactly by cross-multiplication (no floats, no rounding).
///
/// Ties are broken round robin: each pick starts its scan at the next value
/// of a shared cursor and keeps the first minimum in scan order, so an idle
/// system still spreads sequential requests 0, 1, 2, 0, 1, 2 instead of
/// sending them all to member 0.
///
/// The common pick reads every member's load once and offers one member. If
/// that one is refused, the others are offered in order of preference (load
/// ratio, then scan order), each once; only that failover path allocates.
///
/// ```
/// use lb_sync::balance::{Algorithm, LeastConnections, Member, PickContext};
///
/// let members = [Member::new("a", 1), Member::new("b", 2)];
/// let lc = LeastConnections::new(&members);
/// let loads = [2, 3];
/// let ctx = PickContext { hash_key: &[], in_flight: &|i| loads[i], response_times: None };
/// // 3 / 2 < 2 / 1: member 1 is less loaded for its weight.
/// assert_eq!(lc.select(&ctx, &mut |_| true), Some(1));
/// // Member 1 refused: member 0 is next in preference.
/// assert_eq!(lc.select(&ctx, &mut |i| i != 1), Some(0));
/// ```
#[derive(Debug)]
pub struct LeastConnections {
    weights: Box<[u32]>,
    cursor: Cursor,
}

impl LeastConnections {
    /// Least connections over `members` (weight 0 counts as 1).
    #[must_use]
    pub fn new(members: &[Member]) -> Self {
        LeastConnections {
            weights: members.iter().map(|m| effective_weight(m.weight)).collect(),
            cursor: Cursor::default(),
        }
    }

    /// Compares the load ratios `load_a / weight_a` and `load_b / weight_b`
    /// (u128: the products cannot overflow).
    fn compare(&self, a: usize, load_a: usize, b: usize, load_b: usize) -> Ordering {
        let lhs = load_a as u128 * u128::from(self.weights[b]);
        let rhs = load_b as u128 * u128::from(self.weights[a]);
        lhs.cmp(&rhs)
    }
}

impl Algorithm for LeastConnections {
    fn select(&self, ctx: &PickContext<'_>, usable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.next() % n;
        let mut best = start;
        let mut best_load = (ctx.in_flight)(start);
        // Scan order start+1, ..., n-1, 0, ..., start-1 (two ranges: no
        // division per member).
        for i in (start + 1..n).chain(0..start) {
            let load = (ctx.in_flight)(i);
            // Strictly less: on ties the earlier one in scan order stays.
            if self.compare(i, load, best, best_load) == Ordering::Less {
                best = i;
                best_load = load;
            }
        }
        if usable(best) {
            return Some(best);
        }
        // Failover: the others in order of preference, each offered once.
        let mut rest: Vec<(usize, usize, usize)> = (start..n)
            .chain(0..start)
            .enumerate()
            .filter(|&(_, i)| i != best)
            .map(|(rank, i)| (i, (ctx.in_flight)(i), rank))
            .collect();
        rest.sort_unstable_by(|&(a, load_a, rank_a), &(b, load_b, rank_b)| {
            self.compare(a, load_a, b, load_b).then(rank_a.cmp(&rank_b))
        });
        rest.into_iter().map(|(i, _, _)| i).find(|&i| usable(i))
    }

    fn name(&self) -> &'static str {
        "least_connections"
    }
}
