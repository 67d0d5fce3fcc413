//! lb-sync: an HTTP/1.1 load balancer.
//!
//! - [`server`]: the HTTP/1.1 front end (poller thread + fixed worker pool, strict framing).
//! - [`balance`]: the selection algorithms, usable alone.
//! - [`demo_backend`]: the demo backend served by `lb-backend` and `lb-sync --demo`.
pub mod balance;
pub mod demo_backend;
pub mod server;
