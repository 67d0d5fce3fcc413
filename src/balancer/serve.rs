//! The binary's life after start: serve until SIGTERM, SIGINT or SIGQUIT, reloading on SIGHUP
//! and reopening the log files on SIGUSR1 and SIGHUP; then a stop that ends the process within
//! `shutdown_timeout` + [`STOP_MARGIN`], whatever holds it.

use std::time::{Duration, Instant};

use crate::lifecycle::signals::{Listener, Request};
use crate::logging::{LogHandle, LogWriter};

use super::LoadBalancer;

/// How long past `shutdown_timeout` a stop may take in all (breaking what is left, joining the
/// threads, writing the last log lines) before the process exits anyway, naming what held it.
pub const STOP_MARGIN: Duration = Duration::from_millis(750);

impl LoadBalancer {
    /// Serves until SIGTERM, SIGINT or SIGQUIT, reloading the configuration from its source (set
    /// with [`Control::set_source`](crate::lifecycle::Control::set_source)) and reopening the
    /// log files on each SIGHUP, reopening them on each SIGUSR1 (see
    /// [`reopen_logs`](Self::reopen_logs); `process_log` is the binary's own log, reopened and
    /// finally stopped with the rest). Then stops gracefully within `shutdown_timeout` (see
    /// [`stop`](Self::stop)), and returns by `shutdown_timeout` + [`STOP_MARGIN`] after the
    /// signal: past it, the process exits (status 0, with a log line naming what held it). A
    /// second SIGTERM, SIGINT or SIGQUIT while stopping exits at once with status 1.
    pub fn serve_until_signalled(self, signals: Listener, process_log: Option<LogWriter>) {
        signals.started();
        let log_handle = process_log.as_ref().map(LogWriter::handle);
        let name = loop {
            match signals.wait() {
                Some(Request::Reload) => {
                    log::info!("SIGHUP: reloading the configuration");
                    let _ = self.control.reload_from_source();
                    self.reopen_and_say("SIGHUP", log_handle.as_ref());
                }
                Some(Request::Reopen) => self.reopen_and_say("SIGUSR1", log_handle.as_ref()),
                Some(Request::Stop(name)) => break name,
                None => return,
            }
        };
        let signalled = Instant::now();
        let grace = self.shared().config.listener.shutdown_timeout;
        let deadline = signalled + grace + STOP_MARGIN;
        let in_flight: usize =
            self.shared().pools.default_pool().table.snapshot().backends.iter().map(|b| b.in_flight()).sum();
        log::info!(
            "{name}: stopping: no new connections; {in_flight} request(s) to backends in flight get up to {:.1} s",
            grace.as_secs_f64()
        );
        let last_words = log_handle.clone();
        let _ = std::thread::Builder::new().name("signals-stopping".into()).spawn(move || loop {
            match signals.wait() {
                Some(Request::Stop(again)) => {
                    log::warn!("{again} while stopping: exiting now");
                    if let Some(log) = &last_words {
                        log.flush_within(Duration::from_millis(150));
                    }
                    std::process::exit(1);
                }
                Some(Request::Reload) => log::warn!("SIGHUP while stopping: ignored"),
                Some(Request::Reopen) => log::warn!("SIGUSR1 while stopping: ignored"),
                None => return,
            }
        });
        let (stopped, stop_done) = crossbeam_channel::bounded::<()>(0);
        let phase = self.stop_phase();
        let flush = log_handle.clone();
        let _ = std::thread::Builder::new().name("stop-deadline".into()).spawn(move || {
            if stop_done.recv_deadline(deadline) != Err(crossbeam_channel::RecvTimeoutError::Timeout) {
                return;
            }
            let held = *phase.lock().unwrap_or_else(|e| e.into_inner());
            log::error!(
                "stop: still {held} {:.2} s after {name} (shutdown_timeout {:.1} s + {:.2} s): exiting now",
                signalled.elapsed().as_secs_f64(),
                grace.as_secs_f64(),
                STOP_MARGIN.as_secs_f64()
            );
            if let Some(log) = flush {
                log.flush_within(Duration::from_millis(150));
            }
            std::process::exit(0);
        });
        self.stop(grace);
        log::info!("stopped after {:.1} s", signalled.elapsed().as_secs_f64());
        if let Some(log) = process_log {
            // What is left before the deadline, less a moment for the process to exit.
            let left = deadline.saturating_duration_since(Instant::now()).saturating_sub(Duration::from_millis(100));
            log.stop_within(left);
        }
        drop(stopped);
    }

    /// Reopens the log files and logs how it went (after the reopen: the line goes to the new
    /// file).
    fn reopen_and_say(&self, signal: &str, process_log: Option<&LogHandle>) {
        match self.reopen_logs(process_log) {
            Ok(reopened) if reopened.is_empty() => {
                log::info!("{signal}: no log file to reopen (the logs go to stderr)")
            }
            Ok(reopened) => log::info!("{signal}: log files reopened: {}", reopened.join(", ")),
            Err(failed) => log::error!("{signal}: cannot reopen {}", failed.join("; ")),
        }
    }
}
