//! Rise/fall (HAProxy's): `fall` failed probes in a row take a backend down, `rise` good ones
//! bring it back. One flapping probe changes nothing.

use std::sync::atomic::{AtomicU32, Ordering};

/// Consecutive good and failed probes of one backend, written by the prober threads.
///
/// ```
/// use lb_sync::health::RiseFall;
/// let runs = RiseFall::default();
/// assert_eq!(runs.record(false), (0, 1));
/// assert_eq!(runs.record(false), (0, 2));
/// assert_eq!(runs.record(true), (1, 0), "a good probe ends the failed run");
/// assert_eq!((runs.ok_run(), runs.failed_run()), (1, 0));
/// ```
#[derive(Debug, Default)]
pub struct RiseFall {
    ok: AtomicU32,
    failed: AtomicU32,
}

impl RiseFall {
    /// Failed probes in a row so far (0 after a good one).
    pub fn failed_run(&self) -> u32 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Good probes in a row so far (0 after a failed one).
    pub fn ok_run(&self) -> u32 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Counts one probe; returns the runs of good and failed probes after it.
    pub fn record(&self, ok: bool) -> (u32, u32) {
        if ok {
            self.failed.store(0, Ordering::Relaxed);
            (self.ok.fetch_add(1, Ordering::Relaxed) + 1, 0)
        } else {
            self.ok.store(0, Ordering::Relaxed);
            (0, self.failed.fetch_add(1, Ordering::Relaxed) + 1)
        }
    }
}
