//! The built route table and its lookup. Routes are filed by host (exact names in one map,
//! wildcards by their suffix in another, routes without `host` apart), then by path (exact paths
//! and prefixes in one sorted list, regexes, routes without a path). A lookup tries the host
//! groups from the most specific down and, in each, the path kinds in precedence order, so the
//! first route that passes its other matchers is the winner: no scan of every route, and a
//! regex runs only when no exact path or prefix in its host group can win.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::checks::RouteWarning;
use super::config::RouteConfig;
use super::path::{longest_prefix_first, PathMatch};
use super::rank::{check_ties, host_entries};
use super::route::Route;
use super::{HostPattern, RouteError};
use crate::server::Header;

/// What a lookup reads of a request, borrowed from it.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The method, as sent.
    pub method: &'a str,
    /// The host, canonical ([`canonical_host`](super::canonical_host)); `None` without one.
    pub host: Option<&'a str>,
    /// The canonical path (no query).
    pub path: &'a str,
    /// The query string, without `?`; empty when there is none.
    pub query: &'a str,
    /// The request's header fields.
    pub headers: &'a [Header],
}

/// Host names hashed a word at a time (rustc's FxHash): the keys are the config's, so a
/// client's `Host` cannot build a collision chain, and SipHash's resistance is not needed on
/// the per-request path.
#[derive(Default)]
struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type NameMap<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

/// Routes filed under one host entry.
#[derive(Debug, Default)]
struct PathIndex {
    /// Exact paths and prefixes by their text, sorted.
    keyed: Vec<(Box<str>, Slot)>,
    /// Bit `n` set: some exact path or prefix is `n` bytes long (bit 127: 127 or more). A
    /// lookup searches only for the lengths filed, most often one or two of a path's prefixes.
    key_lengths: u128,
    /// Regex routes, in precedence order.
    regex: Vec<usize>,
    /// Routes without a path matcher, in precedence order.
    any: Vec<usize>,
}

fn length_bit(len: usize) -> u128 {
    1 << len.min(127)
}

/// Routes whose `path` or `path_prefix` is one text, each in precedence order.
#[derive(Debug, Default)]
struct Slot {
    exact: Vec<usize>,
    prefix: Vec<usize>,
}

impl PathIndex {
    fn slot(&self, key: &str) -> Option<&Slot> {
        self.keyed.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok().map(|i| &self.keyed[i].1)
    }

    fn slot_mut(&mut self, key: &str) -> &mut Slot {
        let i = match self.keyed.binary_search_by(|(k, _)| k.as_ref().cmp(key)) {
            Ok(i) => i,
            Err(i) => {
                self.keyed.insert(i, (key.into(), Slot::default()));
                i
            }
        };
        &mut self.keyed[i].1
    }

    fn file(&mut self, route: &Route, index: usize) {
        match &route.path {
            PathMatch::Any => self.any.push(index),
            PathMatch::Regex(_) => self.regex.push(index),
            PathMatch::Exact(path) => {
                self.key_lengths |= length_bit(path.len());
                self.slot_mut(path).exact.push(index);
            }
            PathMatch::Prefix(prefix) => {
                self.key_lengths |= length_bit(prefix.len());
                self.slot_mut(prefix).prefix.push(index);
            }
        }
    }

    /// Puts every list in precedence order: more matchers, then higher priority (equal ones
    /// are disjoint: the table refuses ties), then file order for a stable result.
    fn sort(&mut self, routes: &[Route]) {
        let order =
            |&i: &usize| (std::cmp::Reverse(routes[i].conditions.count()), std::cmp::Reverse(routes[i].priority), i);
        for (_, slot) in &mut self.keyed {
            slot.exact.sort_by_key(order);
            slot.prefix.sort_by_key(order);
        }
        self.regex.sort_by_key(order);
        self.any.sort_by_key(order);
    }
}

/// The routes of a configuration, checked and filed for lookup.
///
/// ```
/// use lb_sync::routing::{RequestView, RouteConfig, RouteTable};
/// let routes: Vec<RouteConfig> = serde_json::from_str(r#"[
///     {"name": "api", "host": "example.com", "path_prefix": "/api", "pool": "api"},
///     {"name": "site", "host": "example.com", "pool": "web"}
/// ]"#).unwrap();
/// let table = RouteTable::build(&routes).unwrap();
/// let request = |path| RequestView { method: "GET", host: Some("example.com"), path, query: "", headers: &[] };
/// assert_eq!(table.lookup(&request("/api/users")).unwrap().name, "api");
/// assert_eq!(table.lookup(&request("/apiv2")).unwrap().name, "site");
/// assert_eq!(table.pools_named(), ["api", "web"]);
/// ```
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact_hosts: NameMap<PathIndex>,
    wildcard_hosts: NameMap<PathIndex>,
    any_host: PathIndex,
    named_twice: Vec<RouteWarning>,
}

impl RouteTable {
    /// Builds the table: every route checked, names unique, no two routes tied (see
    /// [`rank`](super::rank)). Pools are not looked up (see [`pools_named`](Self::pools_named)).
    pub fn build(configs: &[RouteConfig]) -> Result<RouteTable, RouteError> {
        let mut routes = Vec::with_capacity(configs.len());
        let mut names = BTreeSet::new();
        for (position, config) in configs.iter().enumerate() {
            let route = Route::build(config, position)?;
            if !names.insert(route.name.clone()) {
                return Err(RouteError::Duplicate { route: route.name });
            }
            routes.push(route);
        }
        check_ties(&routes)?;
        let mut table = RouteTable { named_twice: super::checks::named_twice(configs), ..RouteTable::default() };
        for (index, route) in routes.iter().enumerate() {
            for host in host_entries(route) {
                let filed = match host {
                    None => &mut table.any_host,
                    Some(HostPattern::Exact(name)) => table.exact_hosts.entry(name.clone()).or_default(),
                    Some(HostPattern::Wildcard(suffix)) => table.wildcard_hosts.entry(suffix.clone()).or_default(),
                };
                filed.file(route, index);
            }
        }
        for index in table.exact_hosts.values_mut().chain(table.wildcard_hosts.values_mut()) {
            index.sort(&routes);
        }
        table.any_host.sort(&routes);
        table.routes = routes;
        Ok(table)
    }

    /// The routes, in the config's order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether there is no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every pool some route names (`pool` or `split`), sorted, once each: for the check that
    /// each exists.
    pub fn pools_named(&self) -> Vec<&str> {
        let pools: BTreeSet<&str> = self.routes.iter().flat_map(Route::pools).collect();
        pools.into_iter().collect()
    }

    /// The route that takes `request`, or `None` when none does.
    pub fn lookup(&self, request: &RequestView<'_>) -> Option<&Route> {
        if let Some(host) = request.host {
            if let Some(found) = self.exact_hosts.get(host).and_then(|index| self.search(index, request)) {
                return Some(found);
            }
            if !self.wildcard_hosts.is_empty() {
                // Longest suffix first: from the first dot on (at least one label before it).
                for (i, byte) in host.bytes().enumerate() {
                    if byte != b'.' || i == 0 {
                        continue;
                    }
                    let found = self.wildcard_hosts.get(&host[i + 1..]).and_then(|index| self.search(index, request));
                    if found.is_some() {
                        return found;
                    }
                }
            }
        }
        self.search(&self.any_host, request)
    }

    /// The winner among the routes filed under one host entry.
    fn search<'t>(&'t self, index: &PathIndex, request: &RequestView<'_>) -> Option<&'t Route> {
        let first = |list: &[usize]| {
            list.iter()
                .map(|&i| &self.routes[i])
                .find(|r| r.conditions.matches(request.method, request.headers, request.query))
        };
        let path = request.path;
        if index.key_lengths != 0 {
            let filed = |key: &str| index.key_lengths & length_bit(key.len()) != 0;
            if let Some(found) = filed(path).then(|| index.slot(path)).flatten().and_then(|slot| first(&slot.exact)) {
                return Some(found);
            }
            let found = longest_prefix_first(path, |prefix| {
                filed(prefix).then(|| index.slot(prefix)).flatten().and_then(|slot| first(&slot.prefix))
            });
            if found.is_some() {
                return found;
            }
        }
        let regex = index
            .regex
            .iter()
            .map(|&i| &self.routes[i])
            .find(|r| r.path.matches(path) && r.conditions.matches(request.method, request.headers, request.query));
        regex.or_else(|| first(&index.any))
    }

    /// What `--check-config` should say about the table: routes that can never match, regexes
    /// anchored by hand, prefixes probably meant with a segment boundary, routes that name one
    /// thing twice.
    pub fn warnings(&self) -> Vec<RouteWarning> {
        super::checks::warnings(&self.routes, &self.named_twice)
    }
}
