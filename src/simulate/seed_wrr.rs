//! The seed's weighted round robin, for comparison only (lb-sync does not offer it): each
//! backend repeated `weight` times in a list, the list taken in turn. Over a whole turn the
//! shares are exact, as nginx's smooth version's; within it a backend's picks come in a burst
//! (weights 5:1:1 give five in a row), which is what the smooth version avoids.

use crate::balance::{Algorithm, Member, PickContext};

/// The expanded list, walked by a cursor; a refused entry passes to the next one.
#[derive(Debug)]
pub struct SeedWeightedRoundRobin {
    list: Vec<usize>,
    members: usize,
    cursor: std::sync::atomic::AtomicUsize,
}

impl SeedWeightedRoundRobin {
    /// The list of `members` (weights above 10 000 count as 10 000: the list stays small).
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
        let list = members
            .iter()
            .enumerate()
            .flat_map(|(i, m)| std::iter::repeat_n(i, m.weight.clamp(1, 10_000) as usize))
            .collect();
        SeedWeightedRoundRobin { list, members: members.len(), cursor: Default::default() }
    }
}

impl Algorithm for SeedWeightedRoundRobin {
    fn select(&self, _ctx: &PickContext<'_>, usable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        let start = self.cursor.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let first = self.list[start % self.list.len()];
        if usable(first) {
            return Some(first);
        }
        let mut offered = vec![false; self.members];
        offered[first] = true;
        for k in 1..self.list.len() {
            let i = self.list[(start + k) % self.list.len()];
            if !std::mem::replace(&mut offered[i], true) && usable(i) {
                return Some(i);
            }
        }
        None
    }

    fn name(&self) -> &'static str {
        "seed_weighted_round_robin"
    }
}
