//! Why each route takes a request or not, for `lb-sync route`: every route in precedence order
//! with its verdict. The same rules as [`RouteTable::lookup`] (a property test holds them to
//! one winner), spelled out instead of taken as a shortcut.

use std::fmt;

use super::conditions::Mismatch;
use super::rank::{host_entries, HostRank, PathRank, Rank};
use super::table::{RequestView, RouteTable};

/// What one route made of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It takes the request.
    Wins,
    /// Every matcher passes, but a route ahead of it wins.
    Outranked {
        /// The winner's index in [`RouteTable::routes`].
        by: usize,
        /// The first step of precedence that decided, as `a more specific host`.
        because: &'static str,
    },
    /// The first matcher that failed, in the order host, path, method, headers, query.
    Fails(Mismatch),
}

/// One route's line of an explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explained {
    /// Its index in [`RouteTable::routes`].
    pub route: usize,
    /// Its precedence for this request: through the most specific of its hosts that matches,
    /// else the most specific it has.
    pub rank: Rank,
    /// What it made of the request.
    pub verdict: Verdict,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Wins => f.write_str("takes it"),
            Verdict::Outranked { because, .. } => write!(f, "matches, but loses to the winner: {because}"),
            Verdict::Fails(mismatch) => write!(f, "no: {mismatch}"),
        }
    }
}

/// The first step of precedence on which `winner` beats `loser`.
fn why_outranked(winner: &Rank, loser: &Rank) -> &'static str {
    if winner.host != loser.host {
        match winner.host {
            HostRank::Exact => "an exact host",
            HostRank::Wildcard(_) if loser.host == HostRank::Any => "a host",
            _ => "a longer wildcard host",
        }
    } else if winner.path != loser.path {
        match (winner.path, loser.path) {
            (PathRank::Exact, _) => "an exact path",
            (PathRank::Prefix(_), PathRank::Prefix(_)) => "a longer path_prefix",
            (PathRank::Prefix(_), _) => "a path_prefix",
            _ => "a path_regex",
        }
    } else if winner.matchers != loser.matchers {
        "more matchers (methods, headers, query)"
    } else {
        "a higher priority"
    }
}

impl RouteTable {
    /// Every route, in precedence order for `request`, with why it takes the request or not.
    /// The one that [`Verdict::Wins`] is the route [`lookup`](Self::lookup) returns.
    ///
    /// ```
    /// use lb_sync::routing::{RequestView, RouteConfig, RouteTable, Verdict};
    /// let routes: Vec<RouteConfig> = serde_json::from_str(r#"[
    ///     {"name": "site", "host": "example.com", "pool": "web"},
    ///     {"name": "api", "host": "example.com", "path_prefix": "/api", "pool": "api"}
    /// ]"#).unwrap();
    /// let table = RouteTable::build(&routes).unwrap();
    /// let view = RequestView { method: "GET", host: Some("example.com"), path: "/api/x", query: "", headers: &[] };
    /// let explained = table.explain(&view);
    /// assert_eq!(table.routes()[explained[0].route].name, "api");
    /// assert_eq!(explained[0].verdict, Verdict::Wins);
    /// assert_eq!(explained[1].verdict.to_string(), "matches, but loses to the winner: a path_prefix");
    /// ```
    pub fn explain(&self, request: &RequestView<'_>) -> Vec<Explained> {
        let mut explained: Vec<(Rank, usize, Option<Mismatch>)> = self
            .routes()
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let entries = host_entries(route);
                let taking = entries
                    .iter()
                    .filter(|h| h.is_none_or(|p| request.host.is_some_and(|host| p.matches(host))))
                    .map(|h| Rank::of(route, *h))
                    .max();
                let Some(rank) = taking else {
                    let best =
                        entries.iter().map(|h| Rank::of(route, *h)).max().unwrap_or_else(|| Rank::of(route, None));
                    return (best, i, Some(Mismatch::Host));
                };
                let mismatch = if route.path.matches(request.path) {
                    route.conditions.first_mismatch(request.method, request.headers, request.query)
                } else {
                    Some(Mismatch::Path)
                };
                (rank, i, mismatch)
            })
            .collect();
        // Greater rank first; equal ranks are disjoint routes (ties are refused at load).
        explained.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let winner = explained.iter().find(|(_, _, mismatch)| mismatch.is_none()).map(|&(rank, i, _)| (rank, i));
        explained
            .into_iter()
            .map(|(rank, route, mismatch)| {
                let verdict = match (mismatch, winner) {
                    (Some(mismatch), _) => Verdict::Fails(mismatch),
                    (None, Some((best, by))) if by != route => {
                        Verdict::Outranked { by, because: why_outranked(&best, &rank) }
                    }
                    (None, _) => Verdict::Wins,
                };
                Explained { route, rank, verdict }
            })
            .collect()
    }
}
