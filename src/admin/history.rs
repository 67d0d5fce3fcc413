//! `GET /lb/history`: the last 15 minutes, one second at a time, as columns (one array per
//! value, aligned with `time`), the shape chart libraries take as they are.
//!
//! ```json
//! {"interval_seconds": 1, "window_seconds": 900, "start": 1764930000, "end": 1764930002,
//!  "memory_bytes": 94752,
//!  "time": [1764930000, 1764930001, 1764930002],
//!  "total": {"requests": [12, 0, 7], "status_5xx": [0, 0, 1], "failures": [0, 0, 2],
//!            "p50_ms": [0.412, null, 0.398], "p99_ms": [1.204, null, 0.951]},
//!  "backends": [{"id": "backend1", "in_table": true, "requests": [6, 0, 4], ...}]}
//! ```
//!
//! With `?since=T`, only the seconds after `T` (the dashboard holds the rest and appends them).

use serde_json::{json, Map, Value};

use crate::ops::history::{History, Second, Window, WINDOW_SECONDS};

/// What `GET /lb/history` was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asked {
    /// `seconds=N`: the last N seconds (1-900; every second kept when absent).
    pub seconds: usize,
    /// `since=T`: of those, only the seconds after T (unix time), for a client that holds the
    /// rest.
    pub since: Option<u64>,
}

/// Reads `?seconds=N` and `?since=T`, each optional.
///
/// ```
/// use lb_sync::admin::history::{asked, Asked};
/// assert_eq!(asked(None), Ok(Asked { seconds: 900, since: None }));
/// assert_eq!(asked(Some("seconds=60")), Ok(Asked { seconds: 60, since: None }));
/// assert_eq!(asked(Some("since=1764930000&seconds=60")), Ok(Asked { seconds: 60, since: Some(1764930000) }));
/// assert!(asked(Some("seconds=0")).is_err());
/// assert_eq!(asked(Some("since=-5")).unwrap_err(), "since must be a unix time in whole seconds, not '-5'");
/// assert!(asked(Some("until=5")).is_err());
/// ```
pub fn asked(query: Option<&str>) -> Result<Asked, String> {
    let mut asked = Asked { seconds: WINDOW_SECONDS, since: None };
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
            _ => {
                return Err(format!(
                "unknown parameter '{pair}': the only ones are seconds=N (1-{WINDOW_SECONDS}) and since=UNIX_SECONDS"
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

/// The JSON of a window of the history.
pub fn window_json(window: &Window, memory_bytes: usize) -> Value {
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
    json!({
        "interval_seconds": 1,
        "window_seconds": WINDOW_SECONDS,
        "start": (len > 0).then_some(window.start),
        "end": (len > 0).then(|| window.start + len - 1),
        "memory_bytes": memory_bytes,
        "time": (window.start..window.start + len).collect::<Vec<_>>(),
        "total": Value::Object(columns(&window.total)),
        "backends": backends,
    })
}

/// `GET /lb/history[?seconds=N][&since=T]`'s body.
pub fn history_json(history: &History, asked: Asked) -> Value {
    window_json(&history.window_since(asked.seconds, asked.since), history.memory_bytes())
}
