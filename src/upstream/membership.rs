//! The selection policy over one immutable view of the table: which backends an algorithm may
//! choose from, and what happens when too few are usable (breakers ignored, panic mode).

use std::sync::Arc;

use crate::balance::{Algorithm, AlgorithmKind, Member, PickContext};

use super::backend::Backend;

/// An immutable view of the table: every backend, and the algorithm built over the enabled ones.
pub struct Membership {
    /// All backends, in configured order.
    pub backends: Vec<Arc<Backend>>,
    /// `members[i]` is the index in `backends` of the algorithm's member `i`.
    members: Vec<usize>,
    algorithm: Box<dyn Algorithm>,
    panic_mode: bool,
}

/// How a pick was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickKind {
    /// A usable backend: its breaker must still admit the request.
    Usable,
    /// Only open breakers stood in the way: they are ignored rather than refuse everyone
    /// (nginx never marks its last server failed).
    BreakersIgnored,
    /// Nothing was usable and panic mode is on: any enabled backend.
    Panic,
}

impl Membership {
    pub(crate) fn build(kind: AlgorithmKind, backends: Vec<Arc<Backend>>, panic_mode: bool) -> Membership {
        let members: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].is_enabled()).collect();
        let algorithm_members: Vec<Member> =
            members.iter().map(|&i| Member::new(backends[i].id.clone(), backends[i].weight)).collect();
        Membership { algorithm: kind.build(&algorithm_members), members, backends, panic_mode }
    }

    fn select(&self, hash_key: &[u8], usable: &mut dyn FnMut(&Backend) -> bool) -> Option<&Arc<Backend>> {
        let in_flight = |i: usize| self.backends[self.members[i]].in_flight();
        let ctx = PickContext { hash_key, in_flight: &in_flight };
        let chosen = self.algorithm.select(&ctx, &mut |i| usable(&self.backends[self.members[i]]))?;
        Some(&self.backends[self.members[chosen]])
    }

    /// The algorithm's choice among the backends that are usable and accepted by `accept`
    /// (retries pass one that refuses the backends already tried). When only open breakers
    /// leave nothing, they are ignored; when nothing healthy is left and panic mode is on, any
    /// enabled backend is tried.
    pub fn pick(&self, hash_key: &[u8], mut accept: impl FnMut(&Backend) -> bool) -> Option<(&Arc<Backend>, PickKind)> {
        let ramping_ok = |b: &Backend| b.is_usable() && b.slow_start().admit();
        if let Some(b) = self.select(hash_key, &mut |b| ramping_ok(b) && accept(b)) {
            return Some((b, PickKind::Usable));
        }
        if let Some(b) = self.select(hash_key, &mut |b| b.is_usable() && accept(b)) {
            // Slow start declined every offer; a ramping backend still beats none.
            return Some((b, PickKind::Usable));
        }
        if let Some(b) = self.select(hash_key, &mut |b| b.is_enabled() && b.is_healthy() && accept(b)) {
            return Some((b, PickKind::BreakersIgnored));
        }
        if self.panic_mode {
            return self.select(hash_key, &mut |b| accept(b)).map(|b| (b, PickKind::Panic));
        }
        None
    }
}
