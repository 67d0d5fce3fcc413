//! Latency histograms and the Prometheus text format, for `/lb/metrics` and latency in
//! `/lb/stats`.
//!
//! [`Histogram`] is recorded by the workers (atomics only) and read as a [`HistogramSnapshot`];
//! [`prometheus::TextEncoder`] writes snapshots and counters as a Prometheus scrape body.
//!
//! ```
//! use std::time::Duration;
//! use lb_sync::metrics::{prometheus::{TextEncoder, LATENCY_BOUNDS_SECONDS}, Histogram};
//!
//! let latency = Histogram::new();
//! latency.record(Duration::from_millis(12));
//! let snapshot = latency.snapshot();
//! let mut encoder = TextEncoder::new();
//! encoder
//!     .histogram("lb_request_duration_seconds", "Time from request head to response head.")?
//!     .histogram(&[("backend", "b1")], &snapshot, &LATENCY_BOUNDS_SECONDS)?;
//! assert!(encoder.finish().contains("lb_request_duration_seconds_count{backend=\"b1\"} 1\n"));
//! # Ok::<(), lb_sync::metrics::prometheus::ExpositionError>(())
//! ```

pub mod histogram;
pub mod prometheus;

pub use histogram::{Histogram, HistogramSnapshot};
