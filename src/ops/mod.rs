//! What operating a running balancer needs beside the data path: the latency histogram, the
//! queue-depth gauge, the access log, rate-limited warnings, the state file, the registry,
//! the DNS refresh's report and the last 15 minutes' history. One [`Operations`] lives in
//! [`Shared`](crate::state::Shared).

mod access;
pub mod history;
mod state_file;

/// Where the state file's `state` values come from (the registry writes the same ones).
pub use crate::upstream::BackendState;
pub use access::{refusal_line, AccessLog, PendingAccess};
pub use state_file::{SavedBackend, SavedPool, SavedState, StateFile, StateFileError};

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use crate::logging::RateLimitedWarn;
use crate::metrics::Histogram;
use crate::registry::Registry;
use crate::server::PollerGauges;
use crate::upstream::DnsStatus;
use history::History;

/// How often one cause of a warning that can fire per request is written.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Operational state shared by the workers, the front end's refusal hook and the API.
#[derive(Debug)]
pub struct Operations {
    /// Time from the worker taking a request to our response head, for every answer the proxy
    /// gave (a backend's, or our own 502, 503, 504).
    pub latency: Histogram,
    /// Requests waiting for a worker now (the front end counts in it).
    pub queue_depth: Arc<AtomicUsize>,
    /// Idle client connections closed to make room at `max_connections` (the front end counts
    /// in it).
    pub idle_closed: Arc<AtomicU64>,
    /// Each poller's connections, handshakes and queue (the front end counts in them).
    pub pollers: PollerGauges,
    /// Where access-log lines go, and in which format; `None` when the access log is off.
    pub access_log: Option<AccessLog>,
    /// One line per cause per [`WARN_INTERVAL`] for warnings that can fire on every request.
    pub warnings: RateLimitedWarn,
    /// Where runtime changes to the backends are kept, if anywhere.
    pub state_file: Option<StateFile>,
    /// The registry shared with other instances, when `registry` is set: management API
    /// changes go there.
    pub registry: Option<Arc<Registry>>,
    /// What the re-resolutions of backend host names did.
    pub dns: Arc<DnsStatus>,
    /// The last 15 minutes, second by second, filled by the balancer's history sampler.
    pub history: History,
}

impl Operations {
    /// Operations with the access log and state file given, fresh counters otherwise.
    pub fn new(access_log: Option<AccessLog>, state_file: Option<StateFile>) -> Operations {
        Operations {
            latency: Histogram::new(),
            queue_depth: Arc::new(AtomicUsize::new(0)),
            idle_closed: Arc::new(AtomicU64::new(0)),
            pollers: PollerGauges::default(),
            access_log,
            warnings: RateLimitedWarn::new(WARN_INTERVAL),
            state_file,
            registry: None,
            dns: Arc::default(),
            history: History::new(),
        }
    }
}
