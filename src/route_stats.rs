//! Counters per route: the answers to the requests each route took, by status class (a
//! backend's or our own: redirect, respond, 429, 502, 503...), and their time to the response
//! head, for `/lb/routes`, `/lb/stats` and `/lb/metrics`. A route keeps its counters across a
//! reload while its name stays (as a pool keeps its own); a new name starts from zero.
//!
//! Requests no route took (while routes exist) are counted apart, as Envoy's `no_route`.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Histogram;
use crate::routing::{Route, RouteTable};
use crate::stats::Stats;

/// What the requests one route took got.
#[derive(Debug)]
pub struct RouteStats {
    /// The route's name (shared with the access log's lines, so they copy nothing).
    pub name: Arc<str>,
    /// Answers by status class; of those, the ones the balancer gave itself.
    pub answers: Stats,
    /// Time from taking a request to the response head, as the balancer-wide latency.
    pub latency: Histogram,
}

impl RouteStats {
    /// Fresh counters for the route named `name`.
    pub fn new(name: &str) -> RouteStats {
        RouteStats { name: name.into(), answers: Stats::default(), latency: Histogram::new() }
    }

    /// Counts one answer: `from_backend` when a backend's answer was relayed, else ours;
    /// `took` is the time to its head.
    ///
    /// ```
    /// use std::time::Duration;
    /// let stats = lb_sync::route_stats::RouteStats::new("api");
    /// stats.record(200, true, Duration::from_millis(3));
    /// stats.record(301, false, Duration::from_micros(40));
    /// let s = stats.answers.snapshot();
    /// assert_eq!((s.total, s.by_class, s.local_by_class), (2, [0, 1, 1, 0, 0], [0, 0, 1, 0, 0]));
    /// assert_eq!(stats.latency.snapshot().count(), 2);
    /// ```
    pub fn record(&self, status: u16, from_backend: bool, took: Duration) {
        if from_backend {
            self.answers.record(status);
        } else {
            self.answers.record_local(status);
        }
        self.latency.record(took);
    }
}

/// The counters of every route in a table, found by the route's position, and those of the
/// requests no route took.
///
/// ```
/// use lb_sync::route_stats::RouteCounters;
/// use lb_sync::routing::{RouteConfig, RouteTable};
/// let table = |json: &str| RouteTable::build(&serde_json::from_str::<Vec<RouteConfig>>(json).unwrap()).unwrap();
/// let before = table(r#"[{"name": "a", "pool": "x"}]"#);
/// let counters = RouteCounters::build(&before, None);
/// counters.of(&before.routes()[0]).record(200, true, std::time::Duration::ZERO);
/// // After a reload, "a" keeps its count and "b" starts from zero.
/// let after = table(r#"[{"name": "b", "path": "/b", "pool": "x"}, {"name": "a", "pool": "y"}]"#);
/// let kept = RouteCounters::build(&after, Some(&counters));
/// assert_eq!(kept.of(&after.routes()[1]).answers.snapshot().total, 1);
/// assert_eq!(kept.of(&after.routes()[0]).answers.snapshot().total, 0);
/// ```
#[derive(Debug)]
pub struct RouteCounters {
    /// One per route, in the table's (the config's) order.
    by_route: Vec<Arc<RouteStats>>,
    /// Requests no route took.
    unmatched: Arc<RouteStats>,
}

impl Default for RouteCounters {
    fn default() -> RouteCounters {
        RouteCounters { by_route: Vec::new(), unmatched: Arc::new(RouteStats::new("")) }
    }
}

impl RouteCounters {
    /// Counters for `table`'s routes: a route named as one in `previous` takes its counters,
    /// the others start from zero; the unmatched count is always kept.
    pub fn build(table: &RouteTable, previous: Option<&RouteCounters>) -> RouteCounters {
        let kept = |name: &str| previous.and_then(|p| p.by_route.iter().find(|s| &*s.name == name)).map(Arc::clone);
        RouteCounters {
            by_route: table
                .routes()
                .iter()
                .map(|route| kept(&route.name).unwrap_or_else(|| Arc::new(RouteStats::new(&route.name))))
                .collect(),
            unmatched: previous.map_or_else(|| Arc::new(RouteStats::new("")), |p| Arc::clone(&p.unmatched)),
        }
    }

    /// The counters of `route`, one of the table these were built for.
    ///
    /// # Panics
    /// When `route` is not of that table (its position is past the end).
    pub fn of(&self, route: &Route) -> &RouteStats {
        &self.by_route[route.position]
    }

    /// The counters of the requests no route took.
    pub fn unmatched(&self) -> &RouteStats {
        &self.unmatched
    }
}
