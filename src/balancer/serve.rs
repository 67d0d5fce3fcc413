//! The binary's life after start: serve until SIGTERM or SIGINT, reloading on SIGHUP.

use std::time::{Duration, Instant};

use crate::lifecycle::signals::{Listener, Request};

use super::LoadBalancer;

impl LoadBalancer {
    /// Serves until SIGTERM or SIGINT, reloading the configuration from its source (set with
    /// [`Control::set_source`](crate::lifecycle::Control::set_source)) on each SIGHUP; then
    /// stops gracefully within `shutdown_timeout` (see [`stop`](Self::stop)). A second SIGTERM
    /// or SIGINT while stopping exits the process at once with status 1. `signals` should be
    /// registered before the balancer says it is ready, so that no signal finds the default
    /// action (death) in place.
    pub fn serve_until_signalled(self, mut signals: Listener) {
        let name = loop {
            match signals.wait() {
                Some(Request::Reload) => {
                    log::info!("SIGHUP: reloading the configuration");
                    let _ = self.control.reload_from_source();
                }
                Some(Request::Stop(name)) => break name,
                None => return,
            }
        };
        let grace = Duration::from_secs_f64(self.shared().config.shutdown_timeout);
        let in_flight: usize = self.shared().table.snapshot().backends.iter().map(|b| b.in_flight()).sum();
        log::info!(
            "{name}: stopping: no new connections; {in_flight} request(s) to backends in flight get up to {:.1} s",
            grace.as_secs_f64()
        );
        let _ = std::thread::Builder::new().name("signals".into()).spawn(move || loop {
            match signals.wait() {
                Some(Request::Stop(again)) => {
                    log::warn!("{again} while stopping: exiting now");
                    std::process::exit(1);
                }
                Some(Request::Reload) => log::warn!("SIGHUP while stopping: ignored"),
                None => return,
            }
        });
        let started = Instant::now();
        self.stop(grace);
        log::info!("stopped after {:.1} s", started.elapsed().as_secs_f64());
    }
}
