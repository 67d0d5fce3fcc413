//! Traffic asking the health checks for a probe: a worker that cannot connect to a backend marks
//! it (an atomic flag on the backend) and wakes the health scheduler through a one-slot channel,
//! instead of waiting for the backend's next interval. HAProxy's `observe layer4` with its
//! default `on-error fastinter`: a connection error seen by traffic brings the next check
//! forward.
//!
//! Cheap on purpose, since a dead backend fails many requests at once: the first failure sets
//! the flag and sends the wake-up, every later one until the probe begins finds the flag set
//! (one atomic load). The scheduler runs the probe no sooner than the fast interval after the
//! backend's previous probe, so traffic can bring probes forward, never make them more frequent.

use crossbeam_channel::{Receiver, Sender};

use super::backend::Backend;

/// The wake-up channel of one table's health checks (a checker restarted by a reload takes
/// over the same channel).
///
/// ```
/// use lb_sync::config::BackendConfig;
/// use lb_sync::upstream::{Backend, BackendPolicy, ProbeRequests};
/// let backend = Backend::new("b1".into(), &BackendConfig::new("127.0.0.1", 9, 1), &BackendPolicy::default(), Default::default()).unwrap();
/// let requests = ProbeRequests::default();
/// let wakeups = requests.wakeups();
/// requests.ask(&backend);
/// requests.ask(&backend);
/// assert!(backend.probe_wanted());
/// assert_eq!(wakeups.try_iter().count(), 1, "one wake-up for a burst of failures");
/// assert!(backend.take_probe_wanted(), "the scheduler takes it when the probe begins");
/// ```
#[derive(Debug)]
pub struct ProbeRequests {
    wake: Sender<()>,
    woken: Receiver<()>,
}

impl Default for ProbeRequests {
    fn default() -> ProbeRequests {
        // One slot: a wake-up already pending covers every backend marked since.
        let (wake, woken) = crossbeam_channel::bounded(1);
        ProbeRequests { wake, woken }
    }
}

impl ProbeRequests {
    /// Traffic could not connect to `backend`: asks for a probe of it. Never blocks.
    pub fn ask(&self, backend: &Backend) {
        if backend.want_probe() {
            let _ = self.wake.try_send(());
        }
    }

    /// What the health scheduler waits on besides its timer.
    pub fn wakeups(&self) -> Receiver<()> {
        self.woken.clone()
    }
}
