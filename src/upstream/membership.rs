//! The selection policy over one immutable view of the table: which backends an algorithm may
//! choose from, what happens when too few are usable (breakers ignored, panic mode), and the
//! sticky-cookie tokens of this view's backends.

use std::sync::{Arc, Mutex, OnceLock};

use crate::balance::{Algorithm, AlgorithmKind, Member, PickContext};
use crate::traffic::{StickyCookie, StickyIndex};

use super::backend::{Backend, InFlight};

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

    fn select(&self, hash_key: &[u8], usable: &mut dyn FnMut(&Arc<Backend>) -> bool) -> Option<&Arc<Backend>> {
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
        self.pick_with(hash_key, &mut |b| accept(b))
    }

    fn pick_with(
        &self,
        hash_key: &[u8],
        accept: &mut dyn FnMut(&Arc<Backend>) -> bool,
    ) -> Option<(&Arc<Backend>, PickKind)> {
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
