//! Fairness between clients: which client a request belongs to ([`ClientKey`]), and what each
//! client has now ([`ClientLoads`]): requests with the workers, requests held back because the
//! client already has its share of the workers, and open tunnels.
//!
//! The poller counts and decides (`poller/share.rs`); the table is shared (behind sharded
//! locks, not poller-local), so that several pollers could count one client together.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::head::RequestHead;

/// Says which client a request comes from, for the per-client limits ([`Limits::client_max_workers`],
/// [`Limits::client_max_in_flight`]). Called by the poller thread once per request: keep it
/// short, it must not block. Without one the client is the TCP peer's address.
///
/// ```
/// use lb_sync::server::{ClientKey, ServerConfig};
///
/// // Every request from 10.0.0.0/8 counts as one client.
/// let key = ClientKey::new(|peer, _head| match peer.ip() {
///     std::net::IpAddr::V4(v4) if v4.octets()[0] == 10 => "10.0.0.0".parse().unwrap(),
///     ip => ip,
/// });
/// let config = ServerConfig { client_key: Some(key), ..ServerConfig::default() };
/// # drop(config);
/// ```
///
/// [`Limits::client_max_workers`]: super::Limits::client_max_workers
/// [`Limits::client_max_in_flight`]: super::Limits::client_max_in_flight
#[derive(Clone)]
pub struct ClientKey(Arc<KeyFn>);

/// What a [`ClientKey`] calls.
type KeyFn = dyn Fn(SocketAddr, &RequestHead) -> IpAddr + Send + Sync;

impl ClientKey {
    /// A key calling `f` with the peer and the request head.
    pub fn new(f: impl Fn(SocketAddr, &RequestHead) -> IpAddr + Send + Sync + 'static) -> ClientKey {
        ClientKey(Arc::new(f))
    }

    /// The client of a request: `key`'s answer, or the peer's address without a key.
    pub(crate) fn of(key: Option<&ClientKey>, peer: SocketAddr, head: &RequestHead) -> IpAddr {
        match key {
            Some(key) => (key.0)(peer, head),
            // `::ffff:a.b.c.d` is the IPv4 client a.b.c.d, however it connected.
            None => match peer.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            },
        }
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey")
    }
}

/// What one client has now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Load {
    /// Requests given to the workers and not yet given back (queued for one, or served).
    pub serving: usize,
    /// Requests held back by the poller while the client has its share of the workers.
    pub held: usize,
    /// Open tunnels (upgraded connections): they hold no worker, but count against the hard
    /// limit.
    pub tunnels: usize,
}

impl Load {
    /// Everything the hard limit counts.
    pub fn in_flight(&self) -> usize {
        self.serving + self.held + self.tunnels
    }
}

/// What the poller decides for a complete request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// To the workers now (counted as serving).
    Serve,
    /// Held back until one of the client's requests comes back from a worker (counted as held).
    Hold,
    /// The client has its share and no more may be held: `503` (nothing counted).
    Full,
    /// The client is at its hard limit: `429` (nothing counted).
    OverLimit,
}

/// Shards of the table: one lock each, so that pollers (and tunnel ends) counting different
/// clients rarely meet.
const SHARDS: usize = 16;

/// Every client's [`Load`], while it has any (a client with nothing is forgotten at once: the
/// table holds at most one entry per connection and tunnel).
pub(crate) struct ClientLoads {
    shards: Vec<Mutex<HashMap<IpAddr, Load>>>,
    pick: RandomState,
    /// Requests held back, all clients together: a worker that gives a request back wakes the
    /// poller only while some are.
    held: AtomicUsize,
}

impl ClientLoads {
    pub fn new() -> ClientLoads {
        ClientLoads {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            pick: RandomState::new(),
            held: AtomicUsize::new(0),
        }
    }

    /// Decides for a new request of `client` under a share of `max_workers` (0: none) and a
    /// hard limit of `max_in_flight` (0: none), and counts it; `may_hold` is whether there is
    /// room for one more held request.
    pub fn admit(&self, client: IpAddr, max_workers: usize, max_in_flight: usize, may_hold: bool) -> Admission {
        let mut shard = self.shard(client);
        let load = shard.entry(client).or_default();
        if max_in_flight > 0 && load.in_flight() >= max_in_flight {
            // Not a new entry: a client at a limit of 1 or more has something counted.
            return Admission::OverLimit;
        }
        if max_workers > 0 && load.serving >= max_workers {
            if !may_hold {
                return Admission::Full;
            }
            load.held += 1;
            self.held.fetch_add(1, Ordering::SeqCst);
            Admission::Hold
        } else {
            load.serving += 1;
            Admission::Serve
        }
    }

    /// Whether `client` may have one more request with the workers under a share of
    /// `max_workers` (0: none).
    pub fn has_room(&self, client: IpAddr, max_workers: usize) -> bool {
        max_workers == 0 || self.shard(client).get(&client).is_none_or(|load| load.serving < max_workers)
    }

    /// Moves one of `client`'s held requests to serving if it has room under a share of
    /// `max_workers` (0: none), in one step: two pollers releasing the same client's requests
    /// at once cannot both take the last place.
    pub fn promote(&self, client: IpAddr, max_workers: usize) -> bool {
        let mut shard = self.shard(client);
        let Some(load) = shard.get_mut(&client) else { return false };
        if load.held == 0 || (max_workers > 0 && load.serving >= max_workers) {
            return false;
        }
        load.held -= 1;
        load.serving += 1;
        self.held.fetch_sub(1, Ordering::SeqCst);
        true
    }

    /// Changes `client`'s load with `change`; the entry goes once it is all zero.
    pub fn change(&self, client: IpAddr, change: impl FnOnce(&mut Load)) {
        let mut shard = self.shard(client);
        let load = shard.entry(client).or_default();
        let held = load.held;
        change(load);
        match load.held.cmp(&held) {
            std::cmp::Ordering::Greater => self.held.fetch_add(load.held - held, Ordering::SeqCst),
            std::cmp::Ordering::Less => self.held.fetch_sub(held - load.held, Ordering::SeqCst),
            std::cmp::Ordering::Equal => 0,
        };
        if *load == Load::default() {
            shard.remove(&client);
        }
    }

    /// `client`'s load now.
    pub fn load(&self, client: IpAddr) -> Load {
        self.shard(client).get(&client).copied().unwrap_or_default()
    }

    /// Requests held back now, all clients together.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Whether a worker that just gave a request back (sent it, then fenced) must wake the
    /// poller it gave it to: some request is held back, and no other worker woke that poller
    /// (`woken`, its flag) since it last looked.
    pub fn wake_for_held(&self, woken: &AtomicBool) -> bool {
        self.held.load(Ordering::SeqCst) > 0 && !woken.swap(true, Ordering::SeqCst)
    }

    /// A poller is about to look at the requests given back to it (`woken`, its flag): a later
    /// one wakes it again.
    pub fn looking_at_returns(woken: &AtomicBool) {
        woken.store(false, Ordering::SeqCst);
        // Pairs with the worker's fence between its return and its look: a worker that saw the
        // poller woken already sent its return before this, and the look after sees it.
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    fn shard(&self, client: IpAddr) -> MutexGuard<'_, HashMap<IpAddr, Load>> {
        let i = (self.pick.hash_one(client) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn past_its_share_a_client_is_held_and_others_are_not() {
        let loads = ClientLoads::new();
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert_eq!(loads.admit(a, 2, 0, true), Admission::Serve);
        assert_eq!(loads.admit(a, 2, 0, true), Admission::Serve);
        assert_eq!(loads.admit(a, 2, 0, true), Admission::Hold);
        assert_eq!(loads.admit(b, 2, 0, true), Admission::Serve);
        assert_eq!(loads.admit(a, 2, 0, false), Admission::Full, "no room to hold more");
        assert_eq!(loads.admit(b, 2, 0, false), Admission::Serve, "a client under its share is not held");
        assert_eq!(loads.held(), 1);
        assert_eq!(loads.load(a), Load { serving: 2, held: 1, tunnels: 0 });
        loads.change(b, |l| l.serving -= 2);
        assert!(!loads.has_room(a, 2));
        // One comes back: the held one goes in its place.
        loads.change(a, |l| l.serving -= 1);
        assert!(loads.has_room(a, 2));
        loads.change(a, |l| {
            l.held -= 1;
            l.serving += 1;
        });
        assert_eq!(loads.held(), 0);
        assert_eq!(loads.admit(a, 0, 0, true), Admission::Serve, "no share: never held");
    }

    #[test]
    fn workers_wake_the_poller_once_per_look_and_only_for_held_requests() {
        let loads = ClientLoads::new();
        let (first, second) = (AtomicBool::new(false), AtomicBool::new(false));
        let a = ip("10.0.0.1");
        assert!(!loads.wake_for_held(&first), "nothing held");
        assert_eq!(loads.admit(a, 1, 0, true), Admission::Serve);
        assert_eq!(loads.admit(a, 1, 0, true), Admission::Hold);
        assert!(loads.wake_for_held(&first));
        assert!(!loads.wake_for_held(&first), "woken already, not looked yet");
        assert!(loads.wake_for_held(&second), "each poller is woken on its own");
        ClientLoads::looking_at_returns(&first);
        assert!(loads.wake_for_held(&first));
    }

    #[test]
    fn the_hard_limit_counts_held_requests_and_tunnels() {
        let loads = ClientLoads::new();
        let a = ip("::1");
        assert_eq!(loads.admit(a, 1, 3, true), Admission::Serve);
        assert_eq!(loads.admit(a, 1, 3, true), Admission::Hold);
        loads.change(a, |l| l.tunnels += 1);
        assert_eq!(loads.admit(a, 1, 3, true), Admission::OverLimit);
        assert_eq!(loads.load(a).in_flight(), 3, "a refusal counts nothing");
        loads.change(a, |l| l.tunnels -= 1);
        assert_eq!(loads.admit(a, 1, 3, true), Admission::Hold);
    }

    #[test]
    fn a_client_with_nothing_is_forgotten() {
        let loads = ClientLoads::new();
        let a = ip("192.0.2.7");
        assert_eq!(loads.admit(a, 0, 0, true), Admission::Serve);
        loads.change(a, |l| l.serving -= 1);
        assert_eq!(loads.admit(a, 0, 0, true), Admission::Serve);
        loads.change(a, |l| l.serving -= 1);
        assert!(loads.shards.iter().all(|s| s.lock().unwrap().is_empty()));
        assert_eq!(loads.admit(ip("192.0.2.8"), 0, 0, true), Admission::Serve);
    }

    #[test]
    fn an_ipv4_mapped_peer_is_its_ipv4_client() {
        let head = crate::server::parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &Default::default()).unwrap();
        let crate::server::ParseOutcome::Complete(head, _) = head else { panic!("complete") };
        let peer: SocketAddr = "[::ffff:192.0.2.1]:4000".parse().unwrap();
        assert_eq!(ClientKey::of(None, peer, &head), ip("192.0.2.1"));
        let fixed = ClientKey::new(|_, _| "203.0.113.5".parse().unwrap());
        assert_eq!(ClientKey::of(Some(&fixed), peer, &head), ip("203.0.113.5"));
    }
}
