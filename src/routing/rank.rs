//! Precedence: which of several routes that take a request wins, by how specific each is, never
//! by its place in the file. Compared in order, the first difference decides:
//!
//! 1. the host: an exact name, then the wildcard with the longest suffix, then no `host`;
//! 2. the path: `path`, then the longest `path_prefix`, then `path_regex`, then none;
//! 3. more matchers among `methods` (one, whatever its length), `headers` and `query` (one each);
//! 4. a higher `priority` (default 0).
//!
//! Two routes equal on all four that can take the same request are refused when the table is
//! built ([`check_ties`]): their order would be the file's, which nobody reading the table
//! sees. Only provably disjoint routes may tie.

use std::collections::HashMap;

use super::host::HostPattern;
use super::path::PathMatch;
use super::route::Route;
use super::RouteError;

/// How specific a host pattern is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostRank {
    /// No `host`.
    Any,
    /// A wildcard, by the labels of its suffix.
    Wildcard(usize),
    /// An exact name.
    Exact,
}

/// How specific a path matcher is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathRank {
    /// No path matcher.
    Any,
    /// `path_regex`.
    Regex,
    /// `path_prefix`, by its length.
    Prefix(usize),
    /// `path`.
    Exact,
}

/// A route's precedence for one of its host patterns: greater wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    /// Step 1.
    pub host: HostRank,
    /// Step 2.
    pub path: PathRank,
    /// Step 3.
    pub matchers: usize,
    /// Step 4.
    pub priority: i32,
}

impl Rank {
    /// The rank of `route` when it takes a request through `host` (`None`: it has no `host`).
    pub fn of(route: &Route, host: Option<&HostPattern>) -> Rank {
        let host = match host {
            None => HostRank::Any,
            Some(HostPattern::Exact(_)) => HostRank::Exact,
            Some(pattern) => HostRank::Wildcard(pattern.suffix_labels()),
        };
        Rank { host, path: path_rank(&route.path), matchers: route.conditions.count(), priority: route.priority }
    }
}

/// Step 2's rank of a path matcher.
pub fn path_rank(path: &PathMatch) -> PathRank {
    match path {
        PathMatch::Any => PathRank::Any,
        PathMatch::Regex(_) => PathRank::Regex,
        PathMatch::Prefix(prefix) => PathRank::Prefix(prefix.len()),
        PathMatch::Exact(_) => PathRank::Exact,
    }
}

/// The host entries of a route: each pattern, or one `None` for a route without `host`.
pub(crate) fn host_entries(route: &Route) -> Vec<Option<&HostPattern>> {
    if route.hosts.is_empty() {
        vec![None]
    } else {
        route.hosts.iter().map(Some).collect()
    }
}

/// What two routes must share to tie: the same host entry, the same path matcher (any two
/// regexes alike), the same number of matchers and the same priority.
#[derive(Clone, PartialEq, Eq, Hash)]
struct TieKey<'a> {
    host: Option<&'a HostPattern>,
    path: PathKey<'a>,
    matchers: usize,
    priority: i32,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum PathKey<'a> {
    Any,
    Regex,
    Prefix(&'a str),
    Exact(&'a str),
}

fn path_key(path: &PathMatch) -> PathKey<'_> {
    match path {
        PathMatch::Any => PathKey::Any,
        PathMatch::Regex(_) => PathKey::Regex,
        PathMatch::Prefix(p) => PathKey::Prefix(p),
        PathMatch::Exact(p) => PathKey::Exact(p),
    }
}

/// Refuses two routes that rank equal and can take the same request: same host entry, same
/// path matcher, as many matchers, the same priority, and nothing that proves them disjoint
/// (different method lists, one header or parameter with values that exclude each other, two
/// regexes whose literal starts differ).
pub fn check_ties(routes: &[Route]) -> Result<(), RouteError> {
    let mut buckets: HashMap<TieKey<'_>, Vec<usize>> = HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        for host in host_entries(route) {
            let key = TieKey {
                host,
                path: path_key(&route.path),
                matchers: route.conditions.count(),
                priority: route.priority,
            };
            buckets.entry(key).or_default().push(i);
        }
    }
    let mut clashes: Vec<(usize, usize, String)> = Vec::new();
    for (key, members) in &buckets {
        for (n, &a) in members.iter().enumerate() {
            for &b in &members[n + 1..] {
                let (first, second) = (&routes[a], &routes[b]);
                let disjoint = first.conditions.disjoint(&second.conditions) || first.path.disjoint(&second.path);
                if !disjoint {
                    let host = key.host.map_or("any host".to_string(), |h| format!("host {h}"));
                    clashes.push((a.min(b), a.max(b), host));
                }
            }
        }
    }
    // The first clash in file order, so the message is the same on every run.
    match clashes.into_iter().min() {
        None => Ok(()),
        Some((a, b, host)) => {
            Err(RouteError::Tie { first: routes[a].name.clone(), second: routes[b].name.clone(), host })
        }
    }
}

/// Whether `route`, through each of its host entries, is always beaten by one other route that
/// takes every request it takes (so it can never match). Returns the names that shadow it.
pub(crate) fn shadowed_by(routes: &[Route], index: usize) -> Option<Vec<&str>> {
    let route = &routes[index];
    let mut by = Vec::new();
    for host in host_entries(route) {
        let rank = Rank::of(route, host);
        let winner = routes.iter().enumerate().find(|&(j, other)| {
            j != index
                && host_entries(other).iter().any(|&other_host| {
                    let covers_host = match (host, other_host) {
                        (_, None) => true,
                        (Some(h), Some(o)) => h.within(o),
                        (None, Some(_)) => false,
                    };
                    covers_host
                        && route.path.within(&other.path)
                        && other.conditions.implied_by(&route.conditions)
                        && Rank::of(other, other_host) > rank
                })
        });
        match winner {
            Some((_, other)) => by.push(other.name.as_str()),
            None => return None,
        }
    }
    by.sort_unstable();
    by.dedup();
    Some(by)
}
