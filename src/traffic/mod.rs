//! Traffic policies that sit in front of backend selection: [`rate_limit`] (may this request go
//! on at all?) and [`sticky`] (does it belong to a backend already?).
//!
//! Both are pure: they see client addresses, instants and strings, never the server's request
//! types or the backend table, so they are tested alone. The proxy wires them in
//! (`proxy/policy.rs`): the limit is checked once the client address is known, before the
//! request is prepared; the cookie is read and taken out of the upstream headers, its backend
//! gets the first try while it is usable (resolved in the membership's own [`StickyIndex`]),
//! and the answer gets a `Set-Cookie` when the backend changed.
//!
//! ```
//! use std::net::IpAddr;
//! use std::time::{Duration, Instant};
//! use lb_sync::traffic::{RateLimitConfig, RateLimiter, StickyCookie, StickyIndex};
//!
//! let limiter = RateLimiter::new(&RateLimitConfig { client_rate: 10.0, ..RateLimitConfig::default() }).unwrap();
//! let client: IpAddr = "192.0.2.1".parse().unwrap();
//! assert!(limiter.check(client, Instant::now()).allowed);
//!
//! let cookie = StickyCookie::new("lb", None, Duration::from_secs(3600));
//! let index = StickyIndex::new(&cookie, [(0, "backend1", "127.0.0.1:8081")]);
//! let value = index.token_for(0).unwrap();
//! assert_eq!(index.resolve(value), Some(0));
//! ```

pub mod rate_limit;
pub mod sticky;

pub use rate_limit::{ClientLimiter, Decision, RateLimitConfig, RateLimitSnapshot, RateLimiter, TokenBucket};
pub use sticky::{StickyCookie, StickyIndex};
