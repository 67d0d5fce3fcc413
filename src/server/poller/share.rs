//! Each client's share of the workers ([`Limits::client_max_workers`]): a complete request of a
//! client that has its share with the workers is held here, its connection read no further,
//! until one of that client's own requests comes back from a worker; then its oldest held
//! request goes. Requests of clients under their share go to the queue at once, so they pass
//! the held ones: a client under its share never waits behind another client's surplus. The
//! hard limit ([`Limits::client_max_in_flight`]) answers `429` + `Retry-After`.
//!
//! A held request is waiting for a worker as a queued one is: no timeout (a queued request has
//! none either), given the grace period by a stop and dropped with the queued ones after it.
//! `queue_capacity` bounds requests queued and held together, but refuses (`503`) only the
//! requests that would be held: one client's surplus cannot fill the queue for the others.
//! A request whose body streams (request buffering off) is held before its body is read: the
//! client's sends stall until it goes. Refills of deliveries are never held (no client waits
//! behind them). A tunnel counts against the hard limit until it closes, not against the share
//! (it holds no worker).
//!
//! [`Limits::client_max_workers`]: crate::server::Limits::client_max_workers
//! [`Limits::client_max_in_flight`]: crate::server::Limits::client_max_in_flight

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::server::fairness::{Admission, ClientKey};
use crate::server::head::RequestHead;
use crate::server::spool::RequestBody;
use crate::server::tunnel::Tunnel;

use super::{Poller, State};

/// What a connection's latest request counts as in its client's load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Counted {
    /// Nothing (no request, or one given back).
    #[default]
    Nothing,
    /// With the workers.
    Serving,
    /// Held back for its client's share.
    Held,
}

/// The client of a connection's latest request (none while the limits are off), and what
/// that request counts as.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ClientSlot {
    key: Option<IpAddr>,
    counted: Counted,
}

/// A held request: whole, or its head with the first of a body that will stream (kept in the
/// connection's `pending`).
pub(super) enum HeldRequest {
    Whole { head: Box<RequestHead>, body: RequestBody },
    Upload,
}

struct Held {
    token: usize,
    request: HeldRequest,
}

/// The held requests, each client's oldest first.
#[derive(Default)]
pub(super) struct HeldRequests {
    by_client: HashMap<IpAddr, VecDeque<Held>>,
}

/// What becomes of a request the poller is about to give the workers.
pub(super) enum Verdict {
    /// It goes now.
    Go,
    /// Its client has its share: hold it.
    Hold(IpAddr),
    /// Refused (answered and closing).
    Refused,
}

impl Poller {
    /// The client of a request from `peer`, when a per-client limit is on.
    pub(super) fn client_of(&self, peer: std::net::SocketAddr, head: &RequestHead) -> Option<IpAddr> {
        let on = self.limits.client_max_workers > 0 || self.limits.client_max_in_flight > 0;
        on.then(|| ClientKey::of(self.client_key.as_ref(), peer, head))
    }

    /// Decides for a request of `client` on connection `token`, and counts it: the hard limit
    /// (`429`), the share (hold), the queue's capacity (`503`): requests queued and held
    /// together for one that would be held, queued ones for the others.
    pub(super) fn admit_request(&mut self, token: usize, client: Option<IpAddr>) -> Verdict {
        let queued = self.queued.load(Ordering::Relaxed);
        let admission = match client {
            Some(key) => {
                let may_hold = queued + self.loads.held() < self.queue_capacity;
                let limits = &self.limits;
                self.loads.admit(key, limits.client_max_workers, limits.client_max_in_flight, may_hold)
            }
            None => Admission::Serve,
        };
        let full = match admission {
            Admission::OverLimit => {
                log::debug!("{client:?}: at its limit of requests in process: answering 429");
                self.refuse(token, 429, "too many requests in process from this client", &[("Retry-After", "1")]);
                return Verdict::Refused;
            }
            Admission::Hold => return Verdict::Hold(client.expect("held by client")),
            Admission::Full => true,
            Admission::Serve if queued >= self.queue_capacity => {
                if let Some(key) = client {
                    self.loads.change(key, |load| load.serving -= 1);
                }
                true
            }
            Admission::Serve => false,
        };
        if full {
            // Told to the refusal hook; a warning per request here would flood the log.
            log::debug!("all workers busy and the queue is full: answering 503");
            self.refuse(token, 503, "server busy, retry later", &[("Retry-After", "1")]);
            return Verdict::Refused;
        }
        if let Some(conn) = self.connections.get_mut(&token) {
            let counted = if client.is_some() { Counted::Serving } else { Counted::Nothing };
            conn.client = ClientSlot { key: client, counted };
        }
        Verdict::Go
    }

    /// Holds a request of `client` until the client has room: the connection waits as a busy
    /// one does (no deadline, input only noted).
    pub(super) fn hold(&mut self, token: usize, client: IpAddr, request: HeldRequest) {
        let Some(conn) = self.connections.get_mut(&token) else {
            self.loads.change(client, |load| load.held -= 1);
            return;
        };
        conn.state = State::Busy;
        conn.client = ClientSlot { key: Some(client), counted: Counted::Held };
        conn.input_while_busy.store(false, Ordering::SeqCst);
        self.held.by_client.entry(client).or_default().push_back(Held { token, request });
    }

    /// A worker gave connection `token` back: its request no longer counts as serving. Returns
    /// the client, whose held requests may go now ([`Poller::release_held`]).
    pub(super) fn served(&mut self, token: usize) -> Option<IpAddr> {
        let conn = self.connections.get_mut(&token)?;
        if conn.client.counted != Counted::Serving {
            return None; // a refill, or the limits were off
        }
        conn.client.counted = Counted::Nothing;
        let key = conn.client.key?;
        self.loads.change(key, |load| load.serving -= 1);
        Some(key)
    }

    /// Gives `client`'s oldest held requests to the workers while it has room. The client's
    /// load is every poller's: when it has room left and other pollers hold its requests, they
    /// are told to look (each gives its own; which poller's goes first is not kept in order).
    pub(super) fn release_held(&mut self, client: IpAddr) {
        while let Some(queue) = self.held.by_client.get_mut(&client) {
            let Some(&Held { token, .. }) = queue.front() else {
                self.held.by_client.remove(&client);
                break;
            };
            // Closed while it waited (a stop): its count went with it.
            let waiting = self.connections.get(&token).is_some_and(|conn| conn.client.counted == Counted::Held);
            if waiting && !self.loads.promote(client, self.limits.client_max_workers) {
                return;
            }
            let Held { request, .. } = queue.pop_front().expect("looked at above");
            if queue.is_empty() {
                self.held.by_client.remove(&client);
            }
            if !waiting {
                continue;
            }
            if let Some(conn) = self.connections.get_mut(&token) {
                conn.client.counted = Counted::Serving;
            }
            match request {
                HeldRequest::Whole { head, body } => self.submit(token, *head, body, true),
                HeldRequest::Upload => self.stream_upload(token),
            }
        }
        if self.loads.load(client).held > 0 && self.loads.has_room(client, self.limits.client_max_workers) {
            for (i, poller) in self.pollers.iter().enumerate().filter(|(i, _)| *i != self.me) {
                log::trace!("client {client} has room: poller {i} looks at its held requests");
                poller.look_at_held.store(true, Ordering::SeqCst);
                poller.wake();
            }
        }
    }

    /// Another poller said a client whose requests this one may hold has room: gives each
    /// held client's requests the room it has.
    pub(super) fn look_at_held_again(&mut self) {
        if !self.pollers[self.me].look_at_held.swap(false, Ordering::SeqCst) {
            return;
        }
        let clients: Vec<IpAddr> = self.held.by_client.keys().copied().collect();
        for client in clients {
            self.release_held(client);
        }
    }

    /// Counts a tunnel against its client's hard limit until it closes.
    pub(super) fn count_tunnel(&mut self, client: IpAddr, tunnel: &mut Tunnel) {
        self.loads.change(client, |load| load.tunnels += 1);
        let loads = Arc::clone(&self.loads);
        tunnel.on_close(move |_| loads.change(client, |load| load.tunnels -= 1));
    }

    /// A connection closes: what its request counted goes (a held one stays in its client's
    /// queue, skipped when its turn comes).
    pub(super) fn forget_client(&mut self, slot: ClientSlot) {
        let Some(key) = slot.key else { return };
        match slot.counted {
            Counted::Serving => self.loads.change(key, |load| load.serving -= 1),
            Counted::Held => self.loads.change(key, |load| load.held -= 1),
            Counted::Nothing => {}
        }
    }

    /// The client of connection `token`'s latest request, if it was counted.
    pub(super) fn client_slot(&self, token: usize) -> Option<ClientSlot> {
        self.connections.get(&token).map(|conn| conn.client)
    }

    /// Closes every connection whose request is held (a stop past its grace period: as the
    /// queued ones, they are given up on unrun).
    pub(super) fn drop_held(&mut self) {
        let tokens: Vec<usize> =
            self.held.by_client.drain().flat_map(|(_, queue)| queue.into_iter().map(|held| held.token)).collect();
        for token in tokens {
            if self.connections.get(&token).is_some_and(|conn| conn.client.counted == Counted::Held) {
                self.close(token);
            }
        }
    }
}

impl ClientSlot {
    /// The client, when its request was counted.
    pub(super) fn key(&self) -> Option<IpAddr> {
        self.key
    }
}
