//! The seed's weighted round robin, for comparison only (lb-sync does not offer it): each
//! backend repeated `weight` times in a list, the list taken in turn. Over a whole turn the
//! shares are exact, as nginx's smooth version's; within it a backend's picks come in a burst
//! (weights 5:1:1 give five in a row), which is what the smooth version avoids.
//!
//! The list is not built: at 10 000 backends of the largest weight it would hold 10^8 entries
//! (800 MB). Each backend's entries are one run in it, so the entry at a position is found by
//! a binary search of where each run ends, and the entries after it, skipping the runs already
//! offered, are simply the next backends in order. Same picks, O(backends) memory.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::balance::{Algorithm, Member, PickContext};

/// Weights above this count as this: the shares between such backends are then not their
/// weights' (kept from when the list was built, so that the outputs stay as they were).
const MAX_SEED_WEIGHT: u32 = 10_000;

/// Where each backend's run ends in the (unbuilt) list, walked by a cursor; a refused entry
/// passes to the next one.
#[derive(Debug)]
pub struct SeedWeightedRoundRobin {
    /// `ends[i]`: the list's length up to and including backend `i`'s run.
    ends: Vec<usize>,
    cursor: AtomicUsize,
}

impl SeedWeightedRoundRobin {
    /// The list of `members` (weights above 10 000 count as 10 000).
    ///
    /// ```
    /// use lb_sync::balance::{Algorithm, Member, PickContext};
    /// use lb_sync::simulate::SeedWeightedRoundRobin;
    /// let members = [Member::new("b1", 1), Member::new("b2", 2), Member::new("b3", 1)];
    /// let seed = SeedWeightedRoundRobin::new(&members);
    /// let picks: Vec<_> = (0..4).map(|_| seed.select(&PickContext::idle(), &mut |_| true).unwrap()).collect();
    /// assert_eq!(picks, [0, 1, 1, 2]);
    /// ```
    #[must_use]
    pub fn new(members: &[Member]) -> Self {
        let mut end = 0;
        let ends = members
            .iter()
            .map(|m| {
                end += m.weight.clamp(1, MAX_SEED_WEIGHT) as usize;
                end
            })
            .collect();
        SeedWeightedRoundRobin { ends, cursor: AtomicUsize::new(0) }
    }

    /// The backend of the list's entry at `position` (below the list's length).
    fn at(&self, position: usize) -> usize {
        self.ends.partition_point(|&end| end <= position)
    }
}

impl Algorithm for SeedWeightedRoundRobin {
    fn select(&self, _ctx: &PickContext<'_>, usable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let total = *self.ends.last()?;
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let first = self.at(start % total);
        // Walking the list on from `first`'s entry meets the rest of its run, then each
        // other backend's run in turn: each backend once, in order, wrapping around.
        let n = self.ends.len();
        (0..n).map(|k| (first + k) % n).find(|&i| usable(i))
    }

    fn name(&self) -> &'static str {
        "seed_weighted_round_robin"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's algorithm as it reads: the list built, walked entry by entry, each backend
    /// offered once.
    fn listed(members: &[Member], start: usize, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let list: Vec<usize> = members
            .iter()
            .enumerate()
            .flat_map(|(i, m)| std::iter::repeat_n(i, m.weight.clamp(1, MAX_SEED_WEIGHT) as usize))
            .collect();
        let mut offered = vec![false; members.len()];
        (0..list.len())
            .map(|k| list[(start + k) % list.len()])
            .find(|&i| !std::mem::replace(&mut offered[i], true) && usable(i))
    }

    #[test]
    fn picks_are_the_built_lists_for_any_weights_and_usable_backends() {
        // The balancers' seeded SplitMix64: the same cases every run.
        let random = crate::balance::random::Stream::new(0x9E37_79B9_7F4A_7C15);
        for _ in 0..300 {
            let n = 1 + (random.next() % 8) as usize;
            // Weights 0 (counts as 1) to past the cap, so both clamps are crossed.
            let weights: Vec<u32> = (0..n)
                .map(|_| match random.next() % 4 {
                    0 => 0,
                    1 => 1,
                    2 => (random.next() % 7) as u32,
                    _ => MAX_SEED_WEIGHT - 2 + (random.next() % 5) as u32,
                })
                .collect();
            let members: Vec<Member> =
                weights.iter().enumerate().map(|(i, &w)| Member::new(format!("b{i}"), w)).collect();
            let seed = SeedWeightedRoundRobin::new(&members);
            let total = *seed.ends.last().unwrap();
            let down = random.next() & ((1 << n) - 1);
            let usable = |i: usize| down & (1 << i) == 0;
            for _ in 0..20 {
                let start = (random.next() % (2 * total as u64)) as usize;
                seed.cursor.store(start, Ordering::Relaxed);
                let got = seed.select(&PickContext::idle(), &mut |i| usable(i));
                assert_eq!(got, listed(&members, start, &usable), "weights {weights:?}, down {down:b}, at {start}");
            }
        }
    }

    #[test]
    fn the_largest_list_is_walked_without_being_built() {
        // 10 000 backends (the simulator's most) of the largest weight: 10^8 entries.
        let members: Vec<Member> = (0..10_000).map(|i| Member::new(format!("b{i}"), 1_000_000)).collect();
        let seed = SeedWeightedRoundRobin::new(&members);
        assert_eq!(seed.ends.capacity(), 10_000);
        let pick_at = |position: usize, usable: &mut dyn FnMut(usize) -> bool| {
            seed.cursor.store(position, Ordering::Relaxed);
            seed.select(&PickContext::idle(), usable)
        };
        let all = &mut |_| true;
        assert_eq!(pick_at(0, all), Some(0));
        assert_eq!(pick_at(9_999, all), Some(0));
        assert_eq!(pick_at(10_000, all), Some(1));
        assert_eq!(pick_at(100_000_000 - 1, all), Some(9_999));
        assert_eq!(pick_at(100_000_000, all), Some(0));
        // Only the backend before the cursor's is up: every other is offered once, then it.
        let mut offered = 0;
        assert_eq!(
            pick_at(50_000_000, &mut |i| {
                offered += 1;
                i == 4_999
            }),
            Some(4_999)
        );
        assert_eq!(offered, 10_000);
        assert_eq!(pick_at(7, &mut |_| false), None);
    }
}
