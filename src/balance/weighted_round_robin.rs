//! nginx's smooth weighted round robin, precomputed and read lock-free.

use super::{effective_weight, Algorithm, Cursor, Member, Offered, PickContext};

/// Longest schedule kept (entries of 4 bytes: 4 MiB).
///
/// When the weights, divided by their gcd, sum to more than this, every
/// weight is scaled down proportionally (rounding down, but never below 1)
/// so the sum is about this; the shares then match the configured weights
/// only to within about one part in a million per member.
pub const MAX_SCHEDULE_LEN: usize = 1 << 20;

/// Smooth weighted round robin, as nginx's upstream module does it
/// (`ngx_http_upstream_round_robin.c`): at each step every member's current
/// weight grows by its weight, the largest (first on ties) is picked and
/// loses the total weight. Picks are interleaved (1:2:1 gives b2, b1, b3, b2,
/// not b2, b2, b1, b3) and exact: over `sum of weights` consecutive picks,
/// each member is picked exactly `weight` times.
///
/// The sequence nginx would produce is periodic, so it is computed once at
/// build time (length = sum of the weights divided by their gcd, capped at
/// [`MAX_SCHEDULE_LEN`]) and read with a shared atomic cursor: no lock, one
/// atomic add per pick, and exact counts over any number of threads when
/// every member is usable. When the member in turn is refused, the pick walks
/// on along the schedule, offering each distinct member once, and consumes
/// the positions it walked over, so the remaining members keep their relative
/// shares. The walk covers at most one period of the schedule.
///
/// ```
/// use lb_sync::balance::{Algorithm, Member, PickContext, WeightedRoundRobin};
///
/// let members = [Member::new("b1", 1), Member::new("b2", 2), Member::new("b3", 1)];
/// let wrr = WeightedRoundRobin::new(&members);
/// let ctx = PickContext::idle();
/// let picks: Vec<_> = (0..8).map(|_| wrr.select(&ctx, &mut |_| true).unwrap()).collect();
/// assert_eq!(picks, [1, 0, 2, 1, 1, 0, 2, 1]);
/// ```
#[derive(Debug)]
pub struct WeightedRoundRobin {
    /// One period of nginx's sequence, as member indices.
    schedule: Box<[u32]>,
    members: usize,
    cursor: Cursor,
}

impl WeightedRoundRobin {
    /// Smooth weighted round robin over `members` (weight 0 counts as 1).
    ///
    /// Building costs O(schedule length × number of distinct weights).
    ///
    /// # Panics
    ///
    /// If there are more than `u32::MAX` members.
    #[must_use]
    pub fn new(members: &[Member]) -> Self {
        assert!(u32::try_from(members.len()).is_ok(), "too many members");
        let weights = reduced_weights(members);
        WeightedRoundRobin {
            schedule: smooth_schedule(&weights).into_boxed_slice(),
            members: members.len(),
            cursor: Cursor::default(),
        }
    }
}

/// The weights divided by their gcd (same sequence, shorter period), then
/// scaled down if their sum exceeds [`MAX_SCHEDULE_LEN`].
fn reduced_weights(members: &[Member]) -> Vec<u64> {
    let mut weights: Vec<u64> = members.iter().map(|m| u64::from(effective_weight(m.weight))).collect();
    let g = weights.iter().copied().fold(0, gcd);
    if g > 1 {
        weights.iter_mut().for_each(|w| *w /= g);
    }
    let total: u64 = weights.iter().sum();
    let cap = MAX_SCHEDULE_LEN as u64;
    if total > cap {
        // No overflow: w < 2^32 and cap = 2^20.
        for w in &mut weights {
            *w = (*w * cap / total).max(1);
        }
        let g = weights.iter().copied().fold(0, gcd);
        if g > 1 {
            weights.iter_mut().for_each(|w| *w /= g);
        }
    }
    weights
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Members of one weight. They all gain the same amount per step, so among
/// them nginx always prefers the one picked fewest times, lowest index first:
/// they take turns in index order. Members before `next` have been picked
/// `picks + 1` times, the others `picks` times.
struct WeightClass {
    weight: u64,
    members: Vec<u32>,
    next: usize,
    picks: u64,
}

/// One period of nginx's smooth weighted round robin over `weights` (none
/// below 1). At step `s` (from 1), nginx's current weight of member `i` is
/// `s * w_i - total * picks_i`; the pick is the largest, lowest index on ties.
/// Grouping members by weight turns the per-step scan over all members into
/// one over the distinct weights.
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut classes: Vec<WeightClass> = Vec::new();
    let mut sorted: Vec<(u64, u32)> = weights.iter().enumerate().map(|(i, &w)| (w, i as u32)).collect();
    sorted.sort_unstable();
    for (w, i) in sorted {
        match classes.last_mut() {
            Some(class) if class.weight == w => class.members.push(i),
            _ => classes.push(WeightClass { weight: w, members: vec![i], next: 0, picks: 0 }),
        }
    }

    let mut schedule = Vec::with_capacity(total as usize);
    for step in 1..=total {
        let mut best: Option<(i128, u32, usize)> = None;
        for (c, class) in classes.iter().enumerate() {
            let current = i128::from(step) * i128::from(class.weight) - i128::from(total) * i128::from(class.picks);
            let member = class.members[class.next];
            let better = match best {
                None => true,
                Some((b_current, b_member, _)) => current > b_current || (current == b_current && member < b_member),
            };
            if better {
                best = Some((current, member, c));
            }
        }
        let Some((_, member, c)) = best else {
            break;
        };
        schedule.push(member);
        let class = &mut classes[c];
        class.next += 1;
        if class.next == class.members.len() {
            class.next = 0;
            class.picks += 1;
        }
    }
    schedule
}

impl Algorithm for WeightedRoundRobin {
    fn select(&self, _ctx: &PickContext<'_>, usable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let pos = self.cursor.next() % len;
        let first = self.schedule[pos] as usize;
        if usable(first) {
            return Some(first);
        }
        if self.members == 1 {
            return None;
        }
        // Failover: walk one period forward from here, offering each member
        // not yet offered; a period holds every member, so this ends with
        // either a pick or every member refused exactly once.
        let mut offered = Offered::new(self.members);
        offered.insert(first);
        let mut refused = 1;
        let ahead = self.schedule[pos + 1..].iter().chain(&self.schedule[..pos]);
        for (k, &member) in (1..).zip(ahead) {
            let member = member as usize;
            if !offered.insert(member) {
                continue;
            }
            if usable(member) {
                // As if each walked-over position had been a refused pick,
                // so the survivors keep their weight ratios.
                self.cursor.advance(k);
                return Some(member);
            }
            refused += 1;
            if refused == self.members {
                break;
            }
        }
        None
    }

    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nginx's loop, step by step (`ngx_http_upstream_get_peer`).
    fn nginx(weights: &[u64], steps: usize) -> Vec<u32> {
        let mut current = vec![0i128; weights.len()];
        let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
        (0..steps)
            .map(|_| {
                let mut best: Option<usize> = None;
                for (i, &w) in weights.iter().enumerate() {
                    current[i] += i128::from(w);
                    if best.is_none_or(|b| current[i] > current[b]) {
                        best = Some(i);
                    }
                }
                let b = best.unwrap();
                current[b] -= total;
                b as u32
            })
            .collect()
    }

    /// Deterministic xorshift, so the test needs no dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn schedule_equals_nginx_for_many_weight_sets() {
        let mut state = 0x9e3779b97f4a7c15;
        for _ in 0..300 {
            let n = 1 + (xorshift(&mut state) % 12) as usize;
            let max = [2, 5, 20, 100][(xorshift(&mut state) % 4) as usize];
            let weights: Vec<u64> = (0..n).map(|_| 1 + xorshift(&mut state) % max).collect();
            let total: u64 = weights.iter().sum();
            assert_eq!(smooth_schedule(&weights), nginx(&weights, total as usize), "weights {weights:?}");
        }
    }

    #[test]
    fn gcd_reduction_keeps_the_sequence() {
        let members: Vec<Member> = [6, 12, 6].iter().map(|&w| Member::new("m", w)).collect();
        assert_eq!(reduced_weights(&members), [1, 2, 1]);
        let members: Vec<Member> = [0, 0].iter().map(|&w| Member::new("m", w)).collect();
        assert_eq!(reduced_weights(&members), [1, 1]);
    }

    #[test]
    fn huge_weights_are_scaled_to_the_cap() {
        let members = [Member::new("a", u32::MAX), Member::new("b", u32::MAX - 1), Member::new("c", 1)];
        let weights = reduced_weights(&members);
        let total: u64 = weights.iter().sum();
        assert!(total <= MAX_SCHEDULE_LEN as u64 + 3, "{total}");
        assert_eq!(weights[2], 1);
        let wrr = WeightedRoundRobin::new(&members);
        assert_eq!(wrr.schedule.len() as u64, total);
    }
}
