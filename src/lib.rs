//! lb-sync: an HTTP/1.1 load balancer, as a library.
//!
//! The data path reads top to bottom: [`server`] accepts and parses → [`proxy`] picks a backend
//! from the [`backend`] table with a [`balance`] algorithm → [`forward`] sends it with ureq →
//! the answer streams back → [`stats`] accounts for it. [`admin`] is the management API,
//! [`balancer`] puts it together, [`config`] holds every setting.
//!
//! Embedding the balancer:
//!
//! ```no_run
//! use lb_sync::balancer::LoadBalancer;
//! use lb_sync::config::Config;
//!
//! let balancer = LoadBalancer::start(Config { port: 0, ..Config::default() }).unwrap();
//! println!("listening on {}", balancer.local_addr());
//! balancer.stop(std::time::Duration::from_secs(5));
//! ```
//!
//! Using an algorithm alone:
//!
//! ```
//! use lb_sync::balance::{AlgorithmKind, Member, PickContext};
//!
//! let members = [Member::new("a", 1), Member::new("b", 2), Member::new("c", 1)];
//! let wrr = AlgorithmKind::WeightedRoundRobin.build(&members);
//! let picks: Vec<usize> = (0..4).map(|_| wrr.select(&PickContext::idle(), &mut |_| true).unwrap()).collect();
//! assert_eq!(picks, [1, 0, 2, 1]); // nginx's smooth order: b, a, c, b
//! ```
pub mod admin;
pub mod backend;
pub mod balance;
pub mod balancer;
pub mod breaker;
pub mod client_ip;
pub mod config;
pub mod demo_backend;
pub mod forward;
pub mod health;
pub mod proxy;
pub mod retry_budget;
pub mod server;
pub mod slow_start;
pub mod stats;
