//! `lb-sync simulate --route NAME` (or `--split`): what a route's `split` does with a
//! population of clients, through the proxy's own [`split_pool`] and [`client_key`]: each
//! pool's share of the clients and of their requests against its weight, whether a client
//! ever changed sides between its requests, and with `--to` which clients a weight change
//! moves, from which pool to which. Every pool counts as usable (a fresh start's view).
//!
//! ```
//! use lb_sync::routing::SplitShare;
//! use lb_sync::simulate::{run_split, SplitScenario};
//!
//! let share = |pool: &str, weight| SplitShare { pool: pool.into(), weight };
//! let scenario = SplitScenario {
//!     route: None,
//!     shares: vec![share("stable", 95), share("canary", 5)],
//!     to: Some(vec![share("stable", 90), share("canary", 10)]),
//!     clients: 10_000,
//!     requests: 50_000,
//!     zipf: 0.0,
//!     seed: 1,
//! };
//! scenario.validate().unwrap();
//! let report = run_split(&scenario);
//! assert_eq!(report.changed_sides, 0);
//! let change = report.change.unwrap();
//! assert!(change.moves.iter().all(|m| (m.from.as_str(), m.to.as_str()) == ("stable", "canary")));
//! assert!((change.moved_share - 0.05).abs() < 0.01);
//! ```

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use crate::routing::{client_key, split_pool, RouteConfig, RouteTable, SplitShare};

use super::model::{client_ip, Clients};
use super::report::{columns, percent};
use super::scenario::{ScenarioError, MAX_CLIENTS, MAX_REQUESTS};

/// A split to simulate, and the clients that go through it.
#[derive(Clone, Debug)]
pub struct SplitScenario {
    /// The route the split is from, when it is from a config file.
    pub route: Option<String>,
    /// The split as it is.
    pub shares: Vec<SplitShare>,
    /// The split after a weight change (`--to`), in the order it would be written.
    pub to: Option<Vec<SplitShare>>,
    /// Distinct clients: 10.0.0.0 + n, keyed as the proxy keys a client.
    pub clients: u32,
    /// Requests, each from a client drawn as [`Scenario`](super::Scenario)'s are.
    pub requests: u64,
    /// Zipf exponent of the clients' popularity (0: uniform).
    pub zipf: f64,
    /// Seed of the draws.
    pub seed: u64,
}

/// One pool of a split: its weight, and what it got.
#[derive(Clone, Debug, Serialize)]
pub struct PoolShare {
    /// The pool.
    pub pool: String,
    /// Its weight in the split.
    pub weight: u32,
    /// Its weight over the total, 0-1.
    pub expected_share: f64,
    /// Clients whose key it takes.
    pub clients: u64,
    /// Their share of all clients, 0-1.
    pub client_share: f64,
    /// Requests it took (the split as it is only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Their share of all requests, 0-1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_share: Option<f64>,
}

/// Clients a weight change moves from one pool to another.
#[derive(Clone, Debug, Serialize)]
pub struct Move {
    /// The pool they were on.
    pub from: String,
    /// The pool they are on after the change.
    pub to: String,
    /// How many.
    pub clients: u64,
    /// Their share of all clients, 0-1.
    pub share: f64,
}

/// What `--to` does.
#[derive(Clone, Debug, Serialize)]
pub struct WeightChange {
    /// Each pool of the new split.
    pub pools: Vec<PoolShare>,
    /// Clients on another pool after the change.
    pub moved: u64,
    /// Their share of all clients, 0-1.
    pub moved_share: f64,
    /// The least share any split could move to go from the old weights to the new (half the
    /// sum of the differences of the expected shares), 0-1.
    pub least_share: f64,
    /// The share the split's hashing moves, expected over all clients (exact, from the
    /// weights), 0-1; `moved_share` is this measured over the clients.
    pub layout_share: f64,
    /// By pool and pool, most first.
    pub moves: Vec<Move>,
}

/// What a split simulation found.
#[derive(Clone, Debug, Serialize)]
pub struct SplitReport {
    /// The route, when from a config file.
    pub route: Option<String>,
    /// Distinct clients.
    pub clients: u32,
    /// Requests sent.
    pub requests: u64,
    /// Each pool of the split as it is.
    pub pools: Vec<PoolShare>,
    /// Clients that sent more than one request.
    pub repeat_clients: u64,
    /// Of those, clients whose requests went to more than one pool (a split that keeps its
    /// promise: 0).
    pub changed_sides: u64,
    /// With `--to`.
    pub change: Option<WeightChange>,
    /// Seed of the draws.
    pub seed: u64,
    /// Zipf exponent.
    pub zipf: f64,
}

fn error(message: impl Into<String>) -> ScenarioError {
    ScenarioError(message.into())
}

impl SplitScenario {
    /// Checks the counts (the shares are checked where they come from: the config's route
    /// table, or [`parse_split`]).
    ///
    /// ```
    /// use lb_sync::simulate::{parse_split, SplitScenario};
    /// let mut scenario = SplitScenario {
    ///     route: None, shares: parse_split("--split", "a=1,b=1").unwrap(), to: None,
    ///     clients: 0, requests: 1, zipf: 0.0, seed: 1,
    /// };
    /// assert_eq!(scenario.validate().unwrap_err().to_string(), "--clients must be 1-1000000, got 0");
    /// ```
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            return Err(error(format!("--clients must be 1-{MAX_CLIENTS}, got {}", self.clients)));
        }
        if !(1..=MAX_REQUESTS).contains(&self.requests) {
            return Err(error(format!("--requests must be 1-{MAX_REQUESTS}, got {}", self.requests)));
        }
        if !(0.0..=5.0).contains(&self.zipf) {
            return Err(error(format!("--zipf must be 0 (uniform) to 5, got {}", self.zipf)));
        }
        for shares in std::iter::once(&self.shares).chain(&self.to) {
            if shares.iter().all(|s| s.weight == 0) {
                return Err(error("a split needs a pool with a weight above 0"));
            }
        }
        Ok(())
    }
}

/// `POOL=WEIGHT,...` (`stable=90,canary=10`) as a split, checked as a route's `split` is at
/// load; `flag` names the option in errors.
///
/// ```
/// use lb_sync::simulate::parse_split;
/// let split = parse_split("--to", "stable=90,canary=10").unwrap();
/// assert_eq!((split[1].pool.as_str(), split[1].weight), ("canary", 10));
/// assert!(parse_split("--to", "stable=90,stable=10").is_err());
/// ```
pub fn parse_split(flag: &str, text: &str) -> Result<Vec<SplitShare>, ScenarioError> {
    let mut shares = Vec::new();
    for part in text.split(',') {
        let (pool, weight) = part
            .split_once('=')
            .ok_or_else(|| error(format!("{flag}: '{part}' is not POOL=WEIGHT (as stable=90,canary=10)")))?;
        let weight = weight
            .trim()
            .parse()
            .map_err(|_| error(format!("{flag}: the weight of '{pool}' must be a whole number, got '{weight}'")))?;
        shares.push(SplitShare { pool: pool.trim().to_string(), weight });
    }
    // The route table's own check of a split.
    let route = RouteConfig { name: "simulated".into(), split: Some(shares.clone()), ..Default::default() };
    RouteTable::build(std::slice::from_ref(&route))
        .map_err(|e| error(format!("{flag}: {}", e.to_string().trim_start_matches("route 'simulated': "))))?;
    Ok(shares)
}

/// The pool of `shares` for client `c`, through the proxy's key and split.
fn side(shares: &[SplitShare], c: u32) -> usize {
    let key = client_key(IpAddr::from(client_ip(c)));
    let pool = split_pool(shares, key.as_bytes(), |_| true).expect("validated: a weight above 0");
    shares.iter().position(|s| s.pool == pool).expect("split_pool names one of its shares")
}

fn total_weight(shares: &[SplitShare]) -> u128 {
    shares.iter().map(|s| u128::from(s.weight)).sum()
}

fn expected(shares: &[SplitShare]) -> Vec<f64> {
    let total = total_weight(shares) as f64;
    shares.iter().map(|s| f64::from(s.weight) / total).collect()
}

fn pools(shares: &[SplitShare], clients: &[u64], requests: Option<&[u64]>) -> Vec<PoolShare> {
    let all_clients: u64 = clients.iter().sum();
    let all_requests: u64 = requests.map_or(0, |r| r.iter().sum());
    shares
        .iter()
        .zip(expected(shares))
        .enumerate()
        .map(|(i, (share, expected_share))| PoolShare {
            pool: share.pool.clone(),
            weight: share.weight,
            expected_share,
            clients: clients[i],
            client_share: clients[i] as f64 / all_clients as f64,
            requests: requests.map(|r| r[i]),
            request_share: requests.map(|r| r[i] as f64 / all_requests as f64),
        })
        .collect()
}

/// Runs a validated [`SplitScenario`]: every request through [`split_pool`], then every
/// client through the old and the new split.
#[must_use]
pub fn run_split(scenario: &SplitScenario) -> SplitReport {
    let shares = &scenario.shares;
    let clients = Clients::new(scenario.clients, scenario.zipf);
    // Per client: the pool of its first request, and whether a later one went elsewhere.
    let mut first: Vec<Option<usize>> = vec![None; scenario.clients as usize];
    let mut sent = vec![0u32; scenario.clients as usize];
    let mut changed = vec![false; scenario.clients as usize];
    let mut requests = vec![0u64; shares.len()];
    for k in 0..scenario.requests {
        let c = clients.of(scenario.seed, k);
        let pool = side(shares, c);
        requests[pool] += 1;
        let slot = c as usize;
        sent[slot] = sent[slot].saturating_add(1);
        match first[slot] {
            None => first[slot] = Some(pool),
            Some(was) if was != pool => changed[slot] = true,
            Some(_) => {}
        }
    }
    let mut before = vec![0u64; shares.len()];
    for c in 0..scenario.clients {
        before[side(shares, c)] += 1;
    }
    let change = scenario.to.as_ref().map(|to| {
        let mut after = vec![0u64; to.len()];
        let mut moves = vec![vec![0u64; to.len()]; shares.len()];
        for c in 0..scenario.clients {
            let (was, is) = (side(shares, c), side(to, c));
            after[is] += 1;
            if shares[was].pool != to[is].pool {
                moves[was][is] += 1;
            }
        }
        weight_change(shares, to, &after, &moves, scenario.clients)
    });
    SplitReport {
        route: scenario.route.clone(),
        clients: scenario.clients,
        requests: scenario.requests,
        pools: pools(shares, &before, Some(&requests)),
        repeat_clients: sent.iter().filter(|&&n| n > 1).count() as u64,
        changed_sides: changed.iter().filter(|&&c| c).count() as u64,
        change,
        seed: scenario.seed,
        zipf: scenario.zipf,
    }
}

fn weight_change(
    shares: &[SplitShare],
    to: &[SplitShare],
    after: &[u64],
    moves: &[Vec<u64>],
    clients: u32,
) -> WeightChange {
    let all = f64::from(clients);
    let mut listed: Vec<Move> = Vec::new();
    for (from, row) in shares.iter().zip(moves) {
        for (into, &n) in to.iter().zip(row) {
            if n > 0 {
                listed.push(Move { from: from.pool.clone(), to: into.pool.clone(), clients: n, share: n as f64 / all });
            }
        }
    }
    listed.sort_by_key(|m| std::cmp::Reverse(m.clients));
    let moved: u64 = listed.iter().map(|m| m.clients).sum();
    // Half the total variation between the expected shares (what any split must move), in
    // whole numbers: |w/T - w'/T'| = |w T' - w' T| / (T T').
    let (total, new_total) = (total_weight(shares), total_weight(to));
    let weight_of =
        |list: &[SplitShare], pool: &str| u128::from(list.iter().find(|s| s.pool == pool).map_or(0, |s| s.weight));
    let names: Vec<&str> = shares.iter().chain(to).map(|s| s.pool.as_str()).collect();
    let mut differences: u128 = 0;
    for (i, name) in names.iter().enumerate() {
        if !names[..i].contains(name) {
            differences += (weight_of(shares, name) * new_total).abs_diff(weight_of(to, name) * total);
        }
    }
    let whole = total * new_total;
    WeightChange {
        pools: pools(to, after, None),
        moved,
        moved_share: moved as f64 / all,
        least_share: differences as f64 / (2 * whole) as f64,
        layout_share: rendezvous_moves(shares, to),
        moves: listed,
    }
}

/// The share of clients whose pool changes from `old` to `new`, expected over all clients,
/// under [`split_pool`]'s weighted rendezvous hashing. A client scores `E_i / w_i` per pool
/// (`E_i` exponential, fixed per client and pool; the least wins) and stays on pool `i` when `i`
/// wins under both weights: given `E_i = t`, every other pool must draw above
/// `t · max(w_k / w_i, w'_k / w'_i)`, so `P(stay on i) = 1 / (1 + Σ_k max(w_k / w_i, w'_k / w'_i))`
/// for a pool with weight in both (a pool in one split only has weight 0 in the other).
fn rendezvous_moves(old: &[SplitShare], new: &[SplitShare]) -> f64 {
    let weight =
        |list: &[SplitShare], pool: &str| f64::from(list.iter().find(|s| s.pool == pool).map_or(0, |s| s.weight));
    let mut names: Vec<&str> = old.iter().chain(new).map(|s| s.pool.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let stay: f64 = names
        .iter()
        .filter(|&&i| weight(old, i) > 0.0 && weight(new, i) > 0.0)
        .map(|&i| {
            let others: f64 = names
                .iter()
                .filter(|&&k| k != i)
                .map(|&k| (weight(old, k) / weight(old, i)).max(weight(new, k) / weight(new, i)))
                .sum();
            1.0 / (1.0 + others)
        })
        .sum();
    (1.0 - stay).max(0.0)
}

/// The pools' table: weight, expected share, clients (and requests when `with_requests`).
fn pool_table(pools: &[PoolShare], with_requests: bool) -> String {
    let mut header = vec!["pool", "weight", "expected", "clients", "share"];
    if with_requests {
        header.extend(["requests", "share"]);
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for p in pools {
        let mut row = vec![
            p.pool.clone(),
            p.weight.to_string(),
            percent(p.expected_share),
            p.clients.to_string(),
            percent(p.client_share),
        ];
        if with_requests {
            row.extend([p.requests.unwrap_or(0).to_string(), percent(p.request_share.unwrap_or(0.0))]);
        }
        rows.push(row);
    }
    columns(&rows, "  ")
}

/// `stable 95, canary 5`.
fn describe(shares: &[SplitShare]) -> String {
    shares.iter().map(|s| format!("{} {}", s.pool, s.weight)).collect::<Vec<_>>().join(", ")
}

impl SplitReport {
    /// The tables, as `lb-sync simulate --route` prints them.
    #[must_use]
    pub fn text(&self, scenario: &SplitScenario) -> String {
        let mut out = String::new();
        let route = self.route.as_ref().map_or(String::new(), |r| format!(" (route '{r}')"));
        let popularity = if self.zipf > 0.0 { format!("Zipf {}", self.zipf) } else { "uniform".into() };
        let _ = writeln!(
            out,
            "split {}{route}: {} clients (10.0.0.0 + n, keyed by address as the proxy keys them), {} requests ({popularity}), seed {}",
            describe(&scenario.shares),
            self.clients,
            self.requests,
            self.seed
        );
        out.push_str(&pool_table(&self.pools, true));
        if self.changed_sides == 0 {
            let _ = writeln!(
                out,
                "  every client stayed on its side: {} clients sent more than one request, none changed pool",
                self.repeat_clients
            );
        } else {
            let _ = writeln!(
                out,
                "  {} of {} clients that sent more than one request changed pool between requests",
                self.changed_sides, self.repeat_clients
            );
        }
        let Some(change) = &self.change else { return out };
        let _ = writeln!(out, "\nto {}:", describe(scenario.to.as_deref().unwrap_or_default()));
        out.push_str(&pool_table(&change.pools, false));
        let _ = writeln!(
            out,
            "  moved: {} of {} clients ({}; {} expected); the new weights need at least {}",
            change.moved,
            self.clients,
            percent(change.moved_share),
            percent(change.layout_share),
            percent(change.least_share)
        );
        // A thousandth of a percent: the exact shares' rounding, not a layout that moves more.
        if change.layout_share > change.least_share + 1e-5 {
            out.push_str("  more than must move: clients move toward the pools whose weight rose most against the rest; change one pool's weight at a time (adding or removing a pool included) to move only what must\n");
        }
        if !change.moves.is_empty() {
            let mut rows = vec![vec!["moved".to_string(), "clients".into(), "share".into()]];
            for m in &change.moves {
                rows.push(vec![format!("{} -> {}", m.from, m.to), m.clients.to_string(), percent(m.share)]);
            }
            out.push_str(&columns(&rows, "  "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(shares: &str, to: Option<&str>) -> SplitScenario {
        SplitScenario {
            route: None,
            shares: parse_split("--split", shares).unwrap(),
            to: to.map(|to| parse_split("--to", to).unwrap()),
            clients: 10_000,
            requests: 30_000,
            zipf: 0.0,
            seed: 1,
        }
    }

    #[test]
    fn a_weight_change_moves_only_what_must_move_and_says_so() {
        let report = run_split(&scenario("stable=95,canary=5", Some("stable=90,canary=10")));
        let change = report.change.unwrap();
        assert!((change.least_share - 0.05).abs() < 1e-9, "{}", change.least_share);
        assert!((change.layout_share - 0.05).abs() < 1e-9, "{}", change.layout_share);
        assert_eq!(change.moves.len(), 1);
        assert_eq!(change.pools.iter().map(|p| p.clients).sum::<u64>(), 10_000);
        assert_eq!(report.pools.iter().map(|p| p.clients).sum::<u64>(), 10_000);
        assert_eq!(report.pools.iter().map(|p| p.requests.unwrap()).sum::<u64>(), 30_000);
    }

    #[test]
    fn the_order_the_pools_are_written_in_moves_nobody() {
        let report = run_split(&scenario("stable=95,canary=5", Some("canary=5,stable=95")));
        let change = report.change.unwrap();
        assert_eq!((change.moved, change.layout_share), (0, 0.0));
        let change = run_split(&scenario("stable=95,canary=5", Some("canary=10,stable=90"))).change.unwrap();
        assert!((change.layout_share - 0.05).abs() < 1e-9, "{}", change.layout_share);
    }

    #[test]
    fn a_pool_added_or_removed_moves_only_its_own_clients() {
        // a=50,b=30,c=20 plus d at 20 %: only d's new clients move, from every pool.
        let change = run_split(&scenario("a=50,b=30,c=20", Some("a=50,b=30,c=20,d=25"))).change.unwrap();
        assert!((change.least_share - 0.2).abs() < 1e-9);
        assert!((change.layout_share - 0.2).abs() < 1e-9, "{}", change.layout_share);
        assert!((change.moved_share - 0.2).abs() < 0.015, "{}", change.moved_share);
        assert!(change.moves.iter().all(|m| m.to == "d"), "{:?}", change.moves);
        let change = run_split(&scenario("a=50,b=30,c=20", Some("a=50,b=30"))).change.unwrap();
        assert!((change.layout_share - 0.2).abs() < 1e-9, "{}", change.layout_share);
        assert!(change.moves.iter().all(|m| m.from == "c"), "{:?}", change.moves);
    }

    #[test]
    fn two_weights_changed_at_once_move_more_than_must_and_the_exact_share_is_measured() {
        // b gives 10 % to c: b's clients may land on a and a's on c.
        let change = run_split(&scenario("a=50,b=30,c=20", Some("a=50,b=20,c=30"))).change.unwrap();
        assert!((change.least_share - 0.1).abs() < 1e-9);
        assert!(change.layout_share > change.least_share + 0.01, "{}", change.layout_share);
        assert!(
            (change.moved_share - change.layout_share).abs() < 0.015,
            "{} {}",
            change.moved_share,
            change.layout_share
        );
        // One pool added and one removed: the same.
        let change = run_split(&scenario("a=50,b=50", Some("a=50,c=50"))).change.unwrap();
        assert!((change.least_share - 0.5).abs() < 1e-9);
        assert!(
            (change.moved_share - change.layout_share).abs() < 0.015,
            "{} {}",
            change.moved_share,
            change.layout_share
        );
    }

    #[test]
    fn bad_splits_are_refused_as_the_route_table_refuses_them() {
        for (text, why) in [
            ("stable", "--split: 'stable' is not POOL=WEIGHT (as stable=90,canary=10)"),
            ("a=x", "--split: the weight of 'a' must be a whole number, got 'x'"),
            ("a=0,b=0", "--split: split: every weight is 0"),
            ("a=1,a=2", "--split: split names pool 'a' twice"),
            ("a b=1", "--split: split pool 'a b' is not a pool name ([A-Za-z0-9_.-]+)"),
            ("a=2000000", "--split: split weight of 'a' must be 0-1000000, got 2000000"),
        ] {
            assert_eq!(parse_split("--split", text).unwrap_err().to_string(), why, "{text}");
        }
    }
}
