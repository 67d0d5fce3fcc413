//! The selection policy over one immutable view of the table: which backends an algorithm may
//! choose from, what happens when too few are usable (breakers ignored, panic mode), and the
//! sticky-cookie tokens of this view's backends.

use std::sync::{Arc, Mutex, OnceLock};

use crate::balance::failover::{self, Standing};
use crate::balance::peak_ewma;
use crate::balance::{Algorithm, AlgorithmKind, Member, PickContext, ResponseTime, ResponseTimes};
use crate::traffic::{StickyCookie, StickyIndex};

use super::backend::{Backend, InFlight};

pub use crate::balance::failover::PickKind;

/// An immutable view of the table: every backend, and the algorithm built over the enabled ones.
pub struct Membership {
    /// All backends, in configured order.
    pub backends: Vec<Arc<Backend>>,
    /// `members[i]` is the index in `backends` of the algorithm's member `i`.
    members: Vec<usize>,
    algorithm: Box<dyn Algorithm>,
    kind: AlgorithmKind,
    panic_mode: bool,
    /// Held by least_connections from its look at the loads to the increment of its choice's
    /// count, so that picks at the same moment do not all choose the same backend (nginx's
    /// least_conn runs under its peers' lock too). Other algorithms take no lock.
    pick_lock: Option<Mutex<()>>,
    /// Sticky-cookie token ↔ index in `backends`, made on first use: once per membership
    /// change, never per request.
    sticky: OnceLock<StickyIndex>,
}

/// The algorithm's members as the failover walk sees them: the backends behind the indices,
/// their standing and their response times (read by peak_ewma, on the proxy's clock).
struct Members<'a> {
    membership: &'a Membership,
    /// The clock, read once per pick and only for peak_ewma.
    now: u64,
}

impl Members<'_> {
    fn backend(&self, i: usize) -> &Arc<Backend> {
        &self.membership.backends[self.membership.members[i]]
    }
}

impl Standing for Members<'_> {
    fn enabled(&self, i: usize) -> bool {
        self.backend(i).is_enabled()
    }
    fn healthy(&self, i: usize) -> bool {
        self.backend(i).is_healthy()
    }
    fn breaker_allows(&self, i: usize) -> bool {
        self.backend(i).breaker().allows()
    }
    fn ramp_admits(&self, i: usize) -> bool {
        self.backend(i).slow_start().admit()
    }
}

impl ResponseTimes for Members<'_> {
    fn of(&self, i: usize) -> &ResponseTime {
        self.backend(i).response_time()
    }
    fn now(&self) -> u64 {
        self.now
    }
}

impl Membership {
    pub(crate) fn build(kind: AlgorithmKind, backends: Vec<Arc<Backend>>, panic_mode: bool) -> Membership {
        let members: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].is_enabled()).collect();
        let algorithm_members: Vec<Member> =
            members.iter().map(|&i| Member::new(backends[i].id.clone(), backends[i].weight())).collect();
        let algorithm = kind.build(&algorithm_members);
        let pick_lock = (kind == AlgorithmKind::LeastConnections).then(|| Mutex::new(()));
        Membership { algorithm, members, backends, kind, panic_mode, pick_lock, sticky: OnceLock::new() }
    }

    /// The algorithm this view was built with.
    pub fn algorithm(&self) -> AlgorithmKind {
        self.kind
    }

    /// Whether panic mode is on in this view.
    pub fn panic_mode(&self) -> bool {
        self.panic_mode
    }

    /// The algorithm's choice among the backends that are usable and accepted by `accept`
    /// (retries pass one that refuses the backends already tried). When only open breakers
    /// leave nothing, they are ignored; when nothing healthy is left and panic mode is on, any
    /// enabled backend is tried.
    pub fn pick(&self, hash_key: &[u8], mut accept: impl FnMut(&Backend) -> bool) -> Option<(&Arc<Backend>, PickKind)> {
        self.pick_with(hash_key, &mut |b| accept(b))
    }

    /// The one pick path ([`failover::pick`]) over these backends.
    fn pick_with(
        &self,
        hash_key: &[u8],
        accept: &mut dyn FnMut(&Arc<Backend>) -> bool,
    ) -> Option<(&Arc<Backend>, PickKind)> {
        let now = if self.kind == AlgorithmKind::PeakEwma { peak_ewma::now() } else { 0 };
        let members = Members { membership: self, now };
        let in_flight = |i: usize| members.backend(i).in_flight();
        let response_times = (self.kind == AlgorithmKind::PeakEwma).then_some(&members as &dyn ResponseTimes);
        let ctx = PickContext { hash_key, in_flight: &in_flight, response_times };
        let (i, kind) = failover::pick(self.algorithm.as_ref(), &ctx, self.panic_mode, &members, &mut |i| {
            accept(members.backend(i))
        })?;
        Some((&self.backends[self.members[i]], kind))
    }

    /// [`pick`](Self::pick) and [`Backend::try_begin`] as one step: the chosen backend's
    /// connection slot and in-flight count are taken before any other pick can look at its
    /// load (least_connections), and a backend at its connection cap is passed over like an
    /// unusable one. `None` when every acceptable backend is unusable or at its cap.
    pub fn pick_and_begin(
        &self,
        hash_key: &[u8],
        mut accept: impl FnMut(&Backend) -> bool,
    ) -> Option<(&Arc<Backend>, InFlight, PickKind)> {
        let _one_at_a_time = self.pick_lock.as_ref().map(|lock| lock.lock().unwrap_or_else(|e| e.into_inner()));
        let mut begun = None;
        let (backend, kind) = self.pick_with(hash_key, &mut |b| {
            if !accept(b) {
                return false;
            }
            begun = b.try_begin();
            begun.is_some()
        })?;
        Some((backend, begun?, kind))
    }

    /// The index of `backend` in `backends`, if it is one of them.
    pub fn position(&self, backend: &Backend) -> Option<usize> {
        self.backends.iter().position(|b| std::ptr::eq(Arc::as_ptr(b), backend))
    }

    /// The sticky-cookie tokens of these backends (each from its id and its configured
    /// `host:port`), computed on the first call and kept with this membership. A change of
    /// membership swaps in a new one, so the index follows every change and a request never
    /// rebuilds it. The balancer has one cookie: every call must pass the same.
    pub fn sticky_index(&self, cookie: &StickyCookie) -> &StickyIndex {
        self.sticky.get_or_init(|| {
            let addresses: Vec<String> = self.backends.iter().map(|b| configured_address(&b.host, b.port)).collect();
            let entries = self.backends.iter().zip(&addresses).enumerate();
            StickyIndex::new(cookie, entries.map(|(i, (b, address))| (i, b.id.as_str(), address.as_str())))
        })
    }
}

/// `host:port` as configured (`[::1]:8001` for an IPv6 literal): what a token is made of, the
/// same on every instance with the same configuration whatever the host resolves to there.
fn configured_address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
