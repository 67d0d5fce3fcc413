//! A running balancer's life after start: reloading its configuration without dropping a
//! connection or a request ([`Control::reload`]), checking a configuration without running it
//! ([`check_config`], `lb-sync --check-config`), and the signals that drive both
//! ([`signals`]: SIGTERM/SIGINT/SIGQUIT stop gracefully, SIGHUP reloads and reopens the logs,
//! SIGUSR1 reopens them, the other default-fatal ones are logged and ignored).
//!
//! What a reload applies, and when (nginx applies new settings to new connections; we apply
//! them to new requests, as no connection is ever restarted):
//!
//! | settings | take effect |
//! |---|---|
//! | backends, weights, `algorithm`, `panic_mode` | the next pick (the table's snapshot is swapped; a backend whose id, host and port are unchanged keeps its health, breaker and counters) |
//! | `breaker_*`, `slow_start`, `backend_max_connections`, `peak_ewma_window` | the next outcome or pick of each backend, in place |
//! | `request_timeout`, `connect_timeout`, `upstream_keepalive*`, `upstream_reuse` | the next request (a new HTTP client per backend; requests in flight keep the old one's) |
//! | `max_tries`, retries, rate limits, sticky cookie, `trusted_proxies`, `underscores_in_headers`, `upgrade_protocols`, `admin_prefix`, `admin_token`, `backend_queue_timeout`, `shutdown_timeout`, `tunnel_idle_timeout` | the next request (each request reads one configuration from start to end; an open tunnel keeps its idle timeout) |
//! | client limits and timeouts, `max_connections`, `queue_capacity`, body buffering sizes, `client_max_workers`, `client_max_in_flight`, `merge_slashes`, `allow_encoded_slashes` | each connection's next request or deadline, the next connection accepted, the next body byte |
//! | `health_check_*` | at once (the checker is restarted; verdicts are kept; turned off, a backend marked down comes back as a recovery) |
//! | `dns_refresh_interval` | at once (the next refresh is counted from the reload) |
//! | `tls_cert`, `tls_key`, `tls_sni_certificates` (the files are read again on every reload, so a renewed certificate is picked up; one that fails to load refuses the reload), `tls_handshake_timeout` | the next TLS handshake (connections already up keep theirs) |
//! | `host`, `port`, `threads`, `pollers`, `client_body_temp_path`, `admin_listen`, `access_log*`, `log_file`, `state_file`, `registry`, `tls_port` | at the next restart: a reload keeps the running value and logs that it did |
//!
//! With a `state_file` the management API owns every pool's backend list, with a `registry` the
//! registry does: a reload keeps each kept pool's (a pool it adds starts from the file, or from
//! the registry's keys).

mod check;
mod control;
mod generation;
pub mod signals;

pub use check::{check_config, config_warnings};
pub use control::{Control, ReloadReport};
pub use generation::RESTART_ONLY;
pub(crate) use generation::{
    backend_list, backend_policy, build_shared, health_config, registry_pools, tls_certificates, tuning,
};
