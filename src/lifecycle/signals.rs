//! The signals a running lb-sync answers, through `signal-hook`'s self-pipe (the handler only
//! writes a byte; everything else runs on the thread that waits here).
//!
//! - SIGTERM, SIGINT: stop gracefully (stop accepting, finish what is in flight up to
//!   `shutdown_timeout`, close idle connections, exit 0). A second one while stopping exits
//!   at once (status 1), for an operator who will not wait.
//! - SIGHUP: reload the configuration (nginx's and systemd's `reload`).

use std::io;

use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM or SIGINT (named).
    Stop(&'static str),
    /// SIGHUP.
    Reload,
}

/// The signals of interest, registered for as long as it lives.
pub struct Listener {
    signals: Signals,
}

impl Listener {
    /// Registers SIGTERM, SIGINT and SIGHUP: from now on they no longer end the process.
    pub fn new() -> io::Result<Listener> {
        Ok(Listener { signals: Signals::new([SIGTERM, SIGINT, SIGHUP])? })
    }

    /// Waits for the next signal; `None` once the [`handle`](Self::handle) closed it.
    pub fn wait(&mut self) -> Option<Request> {
        self.signals.forever().find_map(|signal| match signal {
            SIGHUP => Some(Request::Reload),
            SIGINT => Some(Request::Stop("SIGINT")),
            SIGTERM => Some(Request::Stop("SIGTERM")),
            _ => None,
        })
    }

    /// A handle that makes [`wait`](Self::wait) return no more signals once closed (tests).
    pub fn handle(&self) -> signal_hook::iterator::Handle {
        self.signals.handle()
    }
}
