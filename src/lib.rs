//! lb-sync: an HTTP/1.1 load balancer, as a library.
//!
//! The data path reads top to bottom: [`server`] accepts and parses → [`router`] sends `/lb/`
//! to [`admin`] and everything else to [`proxy`] → the proxy picks a backend from the
//! [`upstream`] table with a [`balance`] algorithm, sends the request with the shared client,
//! streams the answer back and accounts for it in [`stats`]. Before it picks, the [`traffic`]
//! policies decide whether the request may go on at all (rate limits) and whether it belongs to
//! a backend already (sticky cookie). [`health`] holds the breaker, slow start and probe state
//! machines, [`state`] what every part shares, [`balancer`] puts it together, [`config`] holds
//! every setting, and [`registry`] shares the backends of several instances through etcd.
//!
//! Modules depend only downwards, in this order (no import circles): `server`, `balance`,
//! `client_ip`, `stats`, `health`, `traffic` → [`routing`] (the route table, issue 26) → `config` → `upstream` → `registry` → `ops` →
//! `pools`, `route_stats` → `state` → `proxy`, `admin` → `router`, `lifecycle` (reload, signals, `--check-config`) →
//! `balancer`;
//! `demo_backend` stands on `server` alone; [`simulate`] (`lb-sync simulate`) on `balance`,
//! `routing` and `config`.
//!
//! Embedding the balancer:
//!
//! ```no_run
//! use lb_sync::balancer::LoadBalancer;
//! use lb_sync::config::Config;
//!
//! let mut config = Config::default();
//! config.listener.port = 0;
//! let balancer = LoadBalancer::start(config).unwrap();
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
pub mod balance;
pub mod balancer;
pub mod client_ip;
pub mod config;
pub mod demo_backend;
pub mod health;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod pools;
pub mod proxy;
pub mod registry;
pub mod route_cli;
pub mod route_policy;
pub mod route_stats;
pub mod router;
pub mod routing;
pub mod server;
pub mod simulate;
pub mod state;
pub mod stats;
pub mod traffic;
pub mod upstream;
