//! Access and process logs written off the request path.
//!
//! - [`AccessRecord`] and [`AccessFormat`]: one line per request, nginx `combined` plus upstream,
//!   timing and request id, or JSON.
//! - [`RequestIdGenerator`] / [`next_request_id`]: 32-hex-digit ids, one atomic add each.
//! - [`LogWriter`]: one thread per log target writing lines that workers queue through a
//!   [`LogHandle`] without ever blocking (a full queue drops and counts).
//! - [`Logger`]: `log::Log` through a [`LogWriter`], for `--log-file`.
//! - [`RateLimitedWarn`]: one warning line per cause per interval.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use lb_sync::logging::{next_request_id, AccessFormat, AccessRecord, LogTarget, LogWriter};
//!
//! let access_log = LogWriter::start(LogTarget::Stderr)?;
//! let handle = access_log.handle(); // one clone per worker
//! let id = next_request_id();
//! let record = AccessRecord {
//!     client_ip: "192.0.2.1".parse().unwrap(),
//!     time: SystemTime::now(),
//!     method: "GET",
//!     target: "/",
//!     protocol: "HTTP/1.1",
//!     status: 200,
//!     body_bytes_sent: 13,
//!     referer: None,
//!     user_agent: Some("curl/8.5.0"),
//!     upstream_addr: Some("127.0.0.1:8001".parse().unwrap()),
//!     upstream_response_time: Some(Duration::from_millis(2)),
//!     request_time: Duration::from_millis(3),
//!     request_id: id.as_str(),
//!     route: None,
//!     pool: None,
//!     bytes_received: None,
//! };
//! handle.send(AccessFormat::Combined.format(&record));
//! assert_eq!(access_log.stop().written, 1);
//! # Ok::<(), std::io::Error>(())
//! ```

mod access;
mod logger;
mod rate_limit;
mod request_id;
mod timestamp;
mod writer;

pub use access::{AccessFormat, AccessRecord};
pub use logger::Logger;
pub use rate_limit::{RateLimitedWarn, MAX_CAUSES};
pub use request_id::{next_request_id, RequestId, RequestIdGenerator};
pub use writer::{LogHandle, LogTarget, LogWriter, LogWriterStats, DEFAULT_CAPACITY, WAIT_LIMIT};
