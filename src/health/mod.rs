//! The state machines of backend health, each knowing nothing of the backend table: the
//! active probe and its result, rise/fall counting of probes, the passive circuit breaker, and
//! the slow-start ramp after a recovery. [`crate::upstream`] keeps one of each per backend and
//! runs the checker that feeds them.

pub mod breaker;
pub mod probe;
pub mod rise_fall;
pub mod slow_start;

pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker, Ticket, TripCause};
pub use probe::{probe, probe_tls, CheckResult, ProbeError};
pub use rise_fall::RiseFall;
pub use slow_start::SlowStart;
