//! Plain round robin.

use super::{Algorithm, Cursor, Member, PickContext};

/// Plain round robin over the members, weights ignored.
///
/// A shared atomic cursor gives each pick the next member in turn, so with
/// every member usable the counts are exact over any number of threads (each
/// pick consumes exactly one cursor value). When the member in turn is
/// refused, the pick walks on to the following members and consumes the
/// positions it walked over: with member 2 of 3 down, the remaining two
/// alternate evenly (0, 2, 0, 2) instead of member 0 taking member 2's share
/// too. A pick costs one atomic add, two when it fails over.
///
/// ```
/// use lb_sync::balance::{Algorithm, Member, PickContext, RoundRobin};
///
/// let members: Vec<_> = ["a", "b", "c"].iter().map(|id| Member::new(*id, 1)).collect();
/// let rr = RoundRobin::new(&members);
/// let ctx = PickContext::idle();
/// let picks: Vec<_> = (0..6).map(|_| rr.select(&ctx, &mut |_| true).unwrap()).collect();
/// assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
/// ```
#[derive(Debug)]
pub struct RoundRobin {
    members: usize,
    cursor: Cursor,
}

impl RoundRobin {
    /// Round robin over `members` (only their number matters).
    #[must_use]
    pub fn new(members: &[Member]) -> Self {
        RoundRobin { members: members.len(), cursor: Cursor::default() }
    }
}

impl Algorithm for RoundRobin {
    fn select(&self, _ctx: &PickContext<'_>, usable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let n = self.members;
        if n == 0 {
            return None;
        }
        let start = self.cursor.next() % n;
        if usable(start) {
            return Some(start);
        }
        // Failover: offer the following members once each. Consuming the
        // skipped positions in one add keeps the survivors evenly shared.
        for k in 1..n {
            let i = (start + k) % n;
            if usable(i) {
                self.cursor.advance(k);
                return Some(i);
            }
        }
        None
    }

    fn name(&self) -> &'static str {
        "round_robin"
    }
}
