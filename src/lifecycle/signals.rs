//! The signals a running lb-sync answers, as an nginx user expects them. `signal-hook`'s
//! self-pipe (the handler only writes a byte) is read by a thread of its own, started before
//! anything else, which passes each request on to [`Listener::wait`]:
//!
//! - SIGTERM, SIGINT, SIGQUIT: stop gracefully (stop accepting, finish what is in flight up to
//!   `shutdown_timeout`, close idle connections, exit 0); nginx's QUIT is its graceful stop. A
//!   second one while stopping exits at once (status 1), for an operator who will not wait.
//!   One that comes while the balancer is still starting (reading its configuration, resolving
//!   backends, reaching a registry: nothing served yet) exits at once with 128 + the signal's
//!   number (143 for SIGTERM, as a shell reports a process the signal ended), rather than wait
//!   for a start that may take long.
//! - SIGHUP: reload the configuration and reopen the log files (nginx's and systemd's `reload`).
//! - SIGUSR1: reopen the log files (what logrotate's `postrotate` sends nginx).
//! - SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGXCPU, SIGXFSZ: each would end the
//!   process by default and none means anything here (nginx's USR2 is a binary upgrade, which
//!   lb-sync does not do): logged and ignored. SIGPIPE is ignored already (Rust's runtime), so
//!   a closed socket or pipe is an error on the write, never a death.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use libc::c_int;
use signal_hook::iterator::{Handle, Signals};

use crate::logging::LogHandle;

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM, SIGINT or SIGQUIT (named).
    Stop(&'static str),
    /// SIGHUP: reload, then reopen the log files.
    Reload,
    /// SIGUSR1: reopen the log files.
    Reopen,
}

/// Signals that stop gracefully.
const STOP: &[c_int] = &[libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];

/// Signals that would end the process by default and mean nothing here: logged and ignored.
#[cfg(target_os = "linux")]
pub const IGNORED: &[c_int] = &[
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGXCPU,
    libc::SIGXFSZ,
];
/// Signals that would end the process by default and mean nothing here: logged and ignored.
#[cfg(not(target_os = "linux"))]
pub const IGNORED: &[c_int] =
    &[libc::SIGUSR2, libc::SIGALRM, libc::SIGVTALRM, libc::SIGPROF, libc::SIGIO, libc::SIGXCPU, libc::SIGXFSZ];

/// The name of a signal this module handles (`SIGTERM`), or `"signal"`.
///
/// ```
/// assert_eq!(lb_sync::lifecycle::signals::name(libc::SIGUSR2), "SIGUSR2");
/// ```
pub fn name(signal: c_int) -> &'static str {
    #[cfg(target_os = "linux")]
    if signal == libc::SIGPWR {
        return "SIGPWR";
    }
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGALRM => "SIGALRM",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGIO => "SIGIO",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "signal",
    }
}

/// What an ignored signal's log line says.
fn ignored_line(signal: c_int) -> String {
    let what = name(signal);
    let hint = "SIGHUP reloads the configuration, SIGUSR1 reopens the log files, SIGTERM stops";
    if signal == libc::SIGUSR2 {
        format!("{what} ignored (no binary upgrade here: {hint})")
    } else {
        format!("{what} ignored (lb-sync does not use it: {hint})")
    }
}

/// The signals of interest, registered for as long as the process lives, and the thread that
/// reads them.
pub struct Listener {
    requests: Receiver<Request>,
    handle: Handle,
    phase: Arc<AtomicU8>,
    log: Arc<Mutex<Option<LogHandle>>>,
}

/// Where the process is, for a stop signal: [`STARTING`] until [`Listener::started`], then
/// [`SERVING`]; [`EXITING`] once a stop during the start won the race against it.
const STARTING: u8 = 0;
const SERVING: u8 = 1;
const EXITING: u8 = 2;

impl Listener {
    /// Registers every signal above and starts the thread that reads them: from now on none of
    /// them ends the process by its default action. Call it first thing in `main`.
    pub fn new() -> io::Result<Listener> {
        let mut wanted = vec![libc::SIGHUP, libc::SIGUSR1];
        wanted.extend_from_slice(STOP);
        wanted.extend_from_slice(IGNORED);
        let mut signals = Signals::new(wanted)?;
        let handle = signals.handle();
        let (sender, requests) = crossbeam_channel::unbounded();
        let phase = Arc::new(AtomicU8::new(STARTING));
        let log = Arc::new(Mutex::new(None));
        let (thread_phase, thread_log) = (Arc::clone(&phase), Arc::clone(&log));
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            for signal in signals.forever() {
                if !pass_on(signal, &sender, &thread_phase, &thread_log) {
                    return;
                }
            }
        })?;
        Ok(Listener { requests, handle, phase, log })
    }

    /// The process log, flushed (briefly) before a stop during the start exits.
    pub fn log_to(&self, log: LogHandle) {
        *self.log.lock().unwrap_or_else(|e| e.into_inner()) = Some(log);
    }

    /// The balancer has started: from now on a stop is graceful, through [`wait`](Self::wait).
    /// Before, SIGTERM, SIGINT and SIGQUIT exit at once. When one came just before and the
    /// process is exiting, this never returns (so nothing says "ready" on the way out).
    pub fn started(&self) {
        if self.phase.compare_exchange(STARTING, SERVING, Ordering::SeqCst, Ordering::SeqCst) == Err(EXITING) {
            loop {
                std::thread::park();
            }
        }
    }

    /// Waits for the next request; `None` once the [`handle`](Self::handle) closed it.
    pub fn wait(&self) -> Option<Request> {
        self.requests.recv().ok()
    }

    /// A handle that makes [`wait`](Self::wait) return no more signals once closed (tests).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

/// Handles one signal on the signals thread; false when no one listens any more.
fn pass_on(signal: c_int, requests: &Sender<Request>, phase: &AtomicU8, log: &Mutex<Option<LogHandle>>) -> bool {
    let request = match signal {
        libc::SIGHUP => Request::Reload,
        libc::SIGUSR1 => Request::Reopen,
        _ if STOP.contains(&signal) => {
            if phase.compare_exchange(STARTING, EXITING, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                // Nothing is served yet, and a start can take long (backend names that do
                // not resolve, a registry that does not answer): no reason to make it wait.
                log::info!("{} while starting: exiting", name(signal));
                if let Some(log) = log.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    log.flush_within(Duration::from_millis(150));
                }
                std::process::exit(128 + signal);
            }
            Request::Stop(name(signal))
        }
        _ => {
            log::warn!("{}", ignored_line(signal));
            return true;
        }
    };
    requests.send(request).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ignored_signal_has_its_name_and_usr2_says_why() {
        for &signal in IGNORED {
            assert!(name(signal).starts_with("SIG"), "{signal}");
            assert!(ignored_line(signal).starts_with(&format!("{} ignored (", name(signal))));
        }
        assert_eq!(
            ignored_line(libc::SIGUSR2),
            "SIGUSR2 ignored (no binary upgrade here: SIGHUP reloads the configuration, SIGUSR1 reopens the log files, SIGTERM stops)"
        );
    }
}
