//! For the tests that drive the library in this process: a demo backend served by a `Server` on
//! an ephemeral loopback port, and a balancer's configuration on loopback.

use std::time::Duration;

use lb_sync::config::{BackendConfig, Config};
use lb_sync::demo_backend::DemoBackend;
use lb_sync::server::{bind, Limits, Server, ServerConfig};

/// A demo backend on an ephemeral loopback port, 8 worker threads; its id is `backend-<port>`.
/// It serves until the `Server` is dropped.
pub fn demo_backend() -> (Server, u16) {
    demo_backend_with(Limits::default(), Duration::ZERO)
}

/// [`demo_backend`] with these request `limits`, every answer taking `delay` more.
pub fn demo_backend_with(limits: Limits, delay: Duration) -> (Server, u16) {
    let listener = bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = ServerConfig { threads: 8, pollers: super::pollers_under_test(), limits, ..ServerConfig::default() };
    let backend = DemoBackend::new(port, "127.0.0.1", None).with_delay(delay);
    (Server::start_on(listener, config, backend).unwrap(), port)
}

/// A balancer's configuration with these backends: loopback, an ephemeral port, no access log
/// (a test reads the counters instead), every other setting at its default.
pub fn config(backends: Vec<BackendConfig>) -> Config {
    {
        let mut adjusted = Config::default();
        adjusted.listener.host = "127.0.0.1".parse().unwrap();
        adjusted.listener.port = 0;
        adjusted.operations.access_log = false;
        adjusted.backends = backends;
        adjusted
    }
}
