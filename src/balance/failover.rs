//! Which member a request goes to when some are unusable: the algorithm's order of preference,
//! walked by what the caller knows of each member (enabled, healthy, breaker, slow start, and
//! whatever else it refuses: already tried, at its connection cap).
//!
//! This is the one definition of the fallbacks, shared by the proxy (over its backends) and
//! `lb-sync simulate` (over simulated ones): slow start declines first; a ramping backend still
//! beats none; then open breakers are ignored rather than refuse everyone (nginx never marks its
//! last server failed); then, in panic mode, any enabled member (Envoy's panic threshold).
//!
//! ```
//! use lb_sync::balance::failover::{pick, PickKind, Standing};
//! use lb_sync::balance::{AlgorithmKind, Member, PickContext};
//!
//! struct Fleet([bool; 3]); // healthy?
//! impl Standing for Fleet {
//!     fn enabled(&self, _: usize) -> bool { true }
//!     fn healthy(&self, i: usize) -> bool { self.0[i] }
//!     fn breaker_allows(&self, _: usize) -> bool { true }
//!     fn ramp_admits(&self, _: usize) -> bool { true }
//! }
//! let members = [Member::new("a", 1), Member::new("b", 1), Member::new("c", 1)];
//! let rr = AlgorithmKind::RoundRobin.build(&members);
//! let fleet = Fleet([true, false, true]);
//! let ctx = PickContext::idle();
//! let picks: Vec<_> = (0..4).map(|_| pick(rr.as_ref(), &ctx, false, &fleet, &mut |_| true).unwrap()).collect();
//! assert_eq!(picks, [(0, PickKind::Usable), (2, PickKind::Usable), (0, PickKind::Usable), (2, PickKind::Usable)]);
//! // Nothing healthy: none, or (panic mode) any enabled member.
//! let down = Fleet([false; 3]);
//! assert_eq!(pick(rr.as_ref(), &ctx, false, &down, &mut |_| true), None);
//! assert_eq!(pick(rr.as_ref(), &ctx, true, &down, &mut |_| true).map(|p| p.1), Some(PickKind::Panic));
//! ```

use super::{Algorithm, PickContext};

/// How a pick was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickKind {
    /// A usable member: its breaker must still admit the request.
    Usable,
    /// Only open breakers stood in the way: they are ignored rather than refuse everyone
    /// (nginx never marks its last server failed).
    BreakersIgnored,
    /// Nothing was usable and panic mode is on: any enabled member.
    Panic,
}

/// What the caller knows of member `i` (an index into the slice the algorithm was built from).
/// Each is asked only when the walk reaches it, in this order, so a side effect (slow start
/// counts its offers) happens exactly as often as the proxy always did.
pub trait Standing {
    /// Enabled (not disabled, not draining).
    fn enabled(&self, i: usize) -> bool;
    /// Not marked down by the health checks.
    fn healthy(&self, i: usize) -> bool;
    /// Its circuit breaker is not open.
    fn breaker_allows(&self, i: usize) -> bool;
    /// Its slow-start ramp accepts this offer (always, when it is not ramping).
    fn ramp_admits(&self, i: usize) -> bool;

    /// Enabled, healthy and its breaker not open: what a request may be sent to.
    fn usable(&self, i: usize) -> bool {
        self.enabled(i) && self.healthy(i) && self.breaker_allows(i)
    }
}

/// The algorithm's choice among the usable members that `accept` also takes (the proxy refuses
/// the backends a request already tried and those at their connection cap), falling back as
/// the module says. `None`: nothing acceptable.
pub fn pick(
    algorithm: &dyn Algorithm,
    ctx: &PickContext<'_>,
    panic_mode: bool,
    standing: &dyn Standing,
    accept: &mut dyn FnMut(usize) -> bool,
) -> Option<(usize, PickKind)> {
    if let Some(i) = algorithm.select(ctx, &mut |i| standing.usable(i) && standing.ramp_admits(i) && accept(i)) {
        return Some((i, PickKind::Usable));
    }
    if let Some(i) = algorithm.select(ctx, &mut |i| standing.usable(i) && accept(i)) {
        // Slow start declined every offer; a ramping member still beats none.
        return Some((i, PickKind::Usable));
    }
    if let Some(i) = algorithm.select(ctx, &mut |i| standing.enabled(i) && standing.healthy(i) && accept(i)) {
        return Some((i, PickKind::BreakersIgnored));
    }
    if panic_mode {
        return algorithm.select(ctx, accept).map(|i| (i, PickKind::Panic));
    }
    None
}
