//! `GET /lb/history`: the last 15 minutes, one second at a time, as columns (one array per
//! value, aligned with `time`), the shape chart libraries take as they are.
//!
//! ```json
//! {"interval_seconds": 1, "window_seconds": 900, "start": 1764930000, "end": 1764930002,
//!  "memory_bytes": 94752,
//!  "time": [1764930000, 1764930001, 1764930002],
//!  "total": {"requests": [12, 0, 7], "status_5xx": [0, 0, 1], "failures": [0, 0, 2],
//!            "p50_ms": [0.412, null, 0.398], "p99_ms": [1.204, null, 0.951]},
//!  "backends": [{"id": "backend1", "in_table": true, "requests": [6, 0, 4], ...}],
//!  "pools": [{"name": "default", "in_config": true, "requests": [12, 0, 7], ...}]}
//! ```
//!
//! `total` is the whole balancer and `backends` the `default` pool's, as before pools; `pools`
//! has each pool's own total (its requests' answers, 5xx, failed tries and latency). With
//! `?pool=NAME`, the answer is that pool's: `"pool": NAME`, its total as `total`, its backends
//! as `backends`, no `pools`. With `?since=T`, only the seconds after `T` (the dashboard holds
//! the rest and appends them).

use serde_json::{json, Map, Value};

use crate::config::{is_valid_pool_name, DEFAULT_POOL};
use crate::ops::history::{History, Second, Window, WINDOW_SECONDS};

/// What `GET /lb/history` was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    /// `seconds=N`: the last N seconds (1-900; every second kept when absent).
    pub seconds: usize,
    /// `since=T`: of those, only the seconds after T (unix time), for a client that holds the
    /// rest.
    pub since: Option<u64>,
    /// `pool=NAME`: that pool's total and backends instead of the whole's and `default`'s.
    pub pool: Option<String>,
}

/// Reads `?seconds=N`, `?since=T` and `?pool=NAME`, each optional.
///
/// ```
/// use lb_sync::admin::history::{asked, Asked};
/// assert_eq!(asked(None), Ok(Asked { seconds: 900, since: None, pool: None }));
/// assert_eq!(asked(Some("seconds=60")), Ok(Asked { seconds: 60, since: None, pool: None }));
/// assert_eq!(
///     asked(Some("since=1764930000&seconds=60&pool=api")),
///     Ok(Asked { seconds: 60, since: Some(1764930000), pool: Some("api".into()) })
/// );
/// assert!(asked(Some("seconds=0")).is_err());
/// assert_eq!(asked(Some("since=-5")).unwrap_err(), "since must be a unix time in whole seconds, not '-5'");
/// assert_eq!(asked(Some("pool=default")).unwrap().pool.as_deref(), Some("default"));
/// assert!(asked(Some("pool=a%20b")).is_err());
/// assert!(asked(Some("until=5")).is_err());
/// ```
pub fn asked(query: Option<&str>) -> Result<Asked, String> {
    let mut asked = Asked { seconds: WINDOW_SECONDS, since: None, pool: None };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("seconds", value)) => {
                asked.seconds = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=WINDOW_SECONDS).contains(n))
                    .ok_or_else(|| format!("seconds must be an integer 1-{WINDOW_SECONDS}, not '{value}'"))?;
            }
            Some(("since", value)) => {
                let since = value.parse::<u64>();
                asked.since =
                    Some(since.map_err(|_| format!("since must be a unix time in whole seconds, not '{value}'"))?);
            }
            // Pool names need no percent-encoding: anything else names no pool.
            Some(("pool", value)) if value == DEFAULT_POOL || is_valid_pool_name(value) => {
                asked.pool = Some(value.to_string())
            }
            Some(("pool", value)) => return Err(format!("pool must be a pool's name, not '{value}'")),
            _ => {
                return Err(format!(
                    "unknown parameter '{pair}': the only ones are seconds=N (1-{WINDOW_SECONDS}), \
                     since=UNIX_SECONDS and pool=NAME"
                ))
            }
        }
    }
    Ok(asked)
}

/// Milliseconds, 3 decimals (to the microsecond the history keeps).
fn ms(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// The columns of one series: `null` where the second has no value (or no answer, for
/// latency).
fn columns(seconds: &[Option<Second>]) -> Map<String, Value> {
    let column = |value: &dyn Fn(&Second) -> Value| -> Value {
        Value::Array(seconds.iter().map(|s| s.as_ref().map_or(Value::Null, value)).collect())
    };
    let mut map = Map::new();
    map.insert("requests".into(), column(&|s| json!(s.requests)));
    map.insert("status_5xx".into(), column(&|s| json!(s.status_5xx)));
    map.insert("failures".into(), column(&|s| json!(s.failures)));
    map.insert("p50_ms".into(), column(&|s| json!(s.p50().map(ms))));
    map.insert("p99_ms".into(), column(&|s| json!(s.p99().map(ms))));
    map
}

/// The JSON of a window of the history: the whole's, with each pool's total under `pools`, or
/// (with `pool`) that pool's.
pub fn window_json(window: &Window, memory_bytes: usize, pool: Option<&str>) -> Value {
    let len = window.total.len() as u64;
    let backends: Vec<Value> = window
        .backends
        .iter()
        .map(|b| {
            let mut object = Map::new();
            object.insert("id".into(), json!(b.id));
            object.insert("in_table".into(), json!(b.in_table));
            object.extend(columns(&b.seconds));
            Value::Object(object)
        })
        .collect();
    let mut body = json!({
        "interval_seconds": 1,
        "window_seconds": WINDOW_SECONDS,
        "start": (len > 0).then_some(window.start),
        "end": (len > 0).then(|| window.start + len - 1),
        "memory_bytes": memory_bytes,
        "time": (window.start..window.start + len).collect::<Vec<_>>(),
        "total": Value::Object(columns(&window.total)),
        "backends": backends,
    });
    if let Some(pool) = pool {
        body["pool"] = json!(pool);
    } else {
        let pools: Vec<Value> = window
            .pools
            .iter()
            .map(|p| {
                let mut object = Map::new();
                object.insert("name".into(), json!(p.name));
                object.insert("in_config".into(), json!(p.in_config));
                object.extend(columns(&p.seconds));
                Value::Object(object)
            })
            .collect();
        body["pools"] = Value::Array(pools);
    }
    body
}

/// `GET /lb/history[?seconds=N][&since=T][&pool=NAME]`'s body; `None` for a pool the history
/// has no series of and `in_config` (whether a pool of that name is in force) says is not there.
/// A pool in force before its first sample reads as an empty window.
pub fn history_json(history: &History, asked: &Asked, in_config: impl Fn(&str) -> bool) -> Option<Value> {
    let memory = history.memory_bytes();
    let Some(pool) = &asked.pool else {
        return Some(window_json(&history.window_since(asked.seconds, asked.since), memory, None));
    };
    let window = match history.pool_window_since(pool, asked.seconds, asked.since) {
        Some(window) => window,
        None if in_config(pool) => Window { start: 0, total: Vec::new(), backends: Vec::new(), pools: Vec::new() },
        None => return None,
    };
    Some(window_json(&window, memory, Some(pool)))
}
