//! The backends and everything about talking to them: each [`Backend`] with its live state, the
//! [`BackendTable`] and the selection policy over a [`Membership`] snapshot, the active
//! [`HealthChecker`] that keeps verdicts current (sooner when traffic asks, [`ProbeRequests`]),
//! the HTTP [`Forwarder`] that sends one request to one backend (each backend with a client and
//! idle connections of its own: `link.rs`, `pool.rs`; over TLS to `https://` ones, trusting
//! [`UpstreamTls`]; an upgrade
//! request on a connection of its own: `raw.rs`), the [`RetryBudget`] that bounds how often a
//! request is sent again, and the [`DnsRefresher`] that keeps backends' addresses current with
//! their host names.

mod answer_framing;
mod backend;
mod checker;
mod client;
mod dns;
mod exchange;
mod link;
mod membership;
mod pinned;
mod pool;
mod probe_requests;
mod raw;
mod retry_budget;
mod table;
mod tls;
mod transport;
pub(crate) use transport::early_answer_arrived;

pub use backend::{resolve, Backend, BackendPolicy, BackendState, HealthState, InFlight, ResolveError, SlotQueue};
pub use checker::{apply_probe, HealthChecker, HealthConfig};
pub use client::{ForwardError, ForwardTimeouts, Forwarder, PrepareError, Prepared};
pub use dns::{system_lookup, DnsRefresher, DnsStatus, Lookup, PoolTables, Resolver};
pub use exchange::AnswerBody;
pub use membership::{Membership, PickKind};
pub use pool::{ConnectionCounts, IdleLimits};
pub use probe_requests::ProbeRequests;
pub use raw::{OwnAnswer, OwnBody};
pub use retry_budget::RetryBudget;
pub use table::{distinct_addresses, BackendTable, Put, Reconciled, TableError, Wanted};
pub use tls::{TlsSetupError, UpstreamTls};
