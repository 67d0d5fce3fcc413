//! Traffic policies that sit in front of backend selection: [`rate_limit`] (may this request go
//! on at all?).
//!
//! Pure: it sees client addresses and instants, never the server's request types or the backend
//! table, so it is tested alone and wired into the data path by the caller (check the limit when
//! a request head is parsed).
//!
//! ```
//! use std::net::IpAddr;
//! use std::time::Instant;
//! use lb_sync::traffic::{RateLimitConfig, RateLimiter};
//!
//! let limiter = RateLimiter::new(&RateLimitConfig { client_rate: 10.0, ..RateLimitConfig::default() }).unwrap();
//! let client: IpAddr = "192.0.2.1".parse().unwrap();
//! assert!(limiter.check(client, Instant::now()).allowed);
//! ```

pub mod rate_limit;

pub use rate_limit::{ClientLimiter, Decision, RateLimitConfig, RateLimitSnapshot, RateLimiter, TokenBucket};
