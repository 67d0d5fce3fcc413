//! lb-sync: an HTTP/1.1 load balancer.
pub mod balance;
pub mod server;
